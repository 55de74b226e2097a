"""The HTML pages: the dashboard, a task's page, and the account pages (login, set-up,
one's API tokens, the admin's users page). The dashboard's data comes from the API."""

import hmac
import logging
import os
import time

from flask import Blueprint, make_response, redirect, render_template, request, url_for

from ..accounts import INVITE_HOURS, ROLES, can
from ..errors import Conflict, NotFound, SlotrunError
from ..task import ACTIVE_STATES, FINAL_STATES, RETRYABLE_STATES, STATES
from .access import authorize, public
from .auth import (csrf_token, current_user, forget_name_failures, recheck_sockets, safe_next,
                   sign_in, sign_in_failed, sign_out)
from .errors import error_response, wants_json
from .events import LOG_TAIL_LINES
from .extension import VERSION, get_slotrun

log = logging.getLogger(__name__)

bp = Blueprint("views", __name__)


def bootstrap(**extra):
    """Return the small JSON the page scripts start from (settings, user, names)."""
    s = get_slotrun()
    settings = s.settings
    root = request.script_root
    user = current_user()
    role = user["role"] if user else None
    data = {
        "api": f"{root}/api/v1",
        "socketio_path": f"{root}/socket.io",
        "page_size": int(settings["page_size"]),
        "device_refresh": float(settings["device_refresh"]),
        "log_push_interval": float(settings["log_push_interval"]),
        "log_tail": LOG_TAIL_LINES,
        "max_regex_length": int(settings["max_regex_length"]),
        "states": list(STATES),
        "final_states": sorted(FINAL_STATES),
        "active_states": sorted(ACTIVE_STATES),
        "retryable_states": sorted(RETRYABLE_STATES),
        "user": {"name": user["name"], "role": role} if user else None,
        "read_only": role == "viewer",
        # What the page may offer; the server checks every call again anyway.
        "permissions": {a: bool(user) and can(user, a, user["name"])
                        for a in ("submit", "slots", "queue", "priority", "users")},
        "auth": s.auth,
        "server_time": time.time(),
        "kill_grace": float(settings["kill_grace"]),
        # The sample demo family, offered to a new user while the queue is empty.
        "demo_pattern": "demo/" if os.path.isdir(os.path.join(
            settings["workspace"], settings["configs_dir"], "demo")) else None,
        "version": VERSION,
        "batch": None,
        "task": None,
    }
    if s.auth:
        token = csrf_token()
        data.update(csrf_token=token, login_url=f"{root}/login",
                    logout_url=f"{root}/logout" if user else None,
                    account_url=f"{root}/account" if user else None,
                    users_url=f"{root}/users" if role == "admin" else None,
                    # A session's socket proves it comes from this page (see auth.sign_in_socket).
                    socket_auth={"csrf": token})
    else:
        data.update(users_url=f"{root}/users")
    data.update(extra)
    return data


# -- the dashboard --------------------------------------------------------------------------------

@bp.get("/")
def index():
    """Render the dashboard."""
    authorize("page.view")
    return render_template("index.html", bootstrap=bootstrap(), batch_id=None)


@bp.get("/batches/<id:batch_id>")
def batch_page(batch_id):
    """Render the dashboard filtered to one batch."""
    b = get_slotrun().store.get_batch(batch_id)
    authorize("page.view", b)
    return render_template("index.html", bootstrap=bootstrap(batch=batch_id), batch_id=batch_id)


@bp.get("/tasks/<id:task_id>")
def task_page(task_id):
    """Render a task's page."""
    t = get_slotrun().store.get_task(task_id)
    authorize("page.view", t)
    return render_template("task.html", bootstrap=bootstrap(task=task_id), task_id=task_id)


# -- signing in and out ---------------------------------------------------------------------------

def _form(name, limit=1100):
    value = request.form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""


def _page(template, status=200, **context):
    response = render_template(template, bootstrap=bootstrap(), **context)
    return response, status, {"Cache-Control": "no-store"}


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    """Show the login form; sign in with a user name and password."""
    authorize("auth.login")
    s = get_slotrun()
    target = safe_next(request.values.get("next") or "/")
    if not s.auth:
        return redirect(target)
    if request.method == "GET":
        if current_user() is not None:
            return redirect(target)
        return _page("login.html", next=target, name="", error=None,
                     setup=not s.accounts.has_users())
    name = _form("name", 64).strip()
    password = _form("password")
    address = request.remote_addr or "?"
    user = s.accounts.authenticate(name, password) if name and password else None
    if user is None:
        sign_in_failed()
        log.info("failed login for %r from %s", name[:64], address)
        return _page("login.html", 401, next=target, name=name,
                     error="wrong user name or password", setup=not s.accounts.has_users())
    forget_name_failures()
    sign_in(user)
    log.info("%s signed in from %s", user["name"], address)
    return redirect(target, 303)


def login_refused(wait):
    """Answer a login over the limit of failed attempts (429, Retry-After ``wait`` s)."""
    name = _form("name", 64).strip()
    log.warning("login refused for %r from %s: too many failed attempts", name[:64],
                request.remote_addr or "?")
    message = f"too many failed logins: try again in {wait} s"
    if wants_json():
        return error_response(429, message, {"Retry-After": str(wait)})
    target = safe_next(request.values.get("next") or "/")
    body, status, headers = _page("login.html", 429, next=target, name=name, error=message,
                                  setup=False)
    return make_response(body, status, {**headers, "Retry-After": str(wait)})


@bp.post("/logout")
@public
def logout():
    """Sign out: forget the session."""
    authorize("auth.logout")
    sign_out()
    return redirect(url_for("views.login"), 303)


@bp.route("/setup", methods=["GET", "POST"])
@public
def setup():
    """Create the first admin with the one-time link printed on the server's console."""
    authorize("auth.setup")
    s = get_slotrun()
    if not s.auth or s.setup_token is None or s.accounts.has_users():
        raise NotFound("the server is already set up: log in instead (an admin adds users "
                       "on the Users page or with slotrun users add NAME)")
    given = request.values.get("token", "")
    address = request.remote_addr or "?"
    if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "replace"),
                                                             s.setup_token.encode()):
        sign_in_failed()
        return _page("setup.html", 403, token="", name="", error=(
            "this set-up link is not valid: use the link printed on the server's console "
            "(a restarted server prints a new one)"), valid=False)
    if request.method == "GET":
        return _page("setup.html", token=given, name="", error=None, valid=True)
    name = _form("name", 64).strip()
    password, again = _form("password"), _form("password2")
    error = None
    if password != again:
        error = "the two passwords differ"
    else:
        with s.setup_lock:
            if s.setup_token is None or s.accounts.has_users():
                raise NotFound("the server is already set up: log in instead")
            try:
                user = s.accounts.add_user(name, "admin", password)
            except SlotrunError as e:
                error = e.message
            else:
                s.setup_token = None
    if error:
        return _page("setup.html", 400, token=given, name=name, error=error, valid=True)
    sign_in(user)
    log.info("first admin %s created from %s", user["name"], address)
    return redirect(url_for("views.index"), 303)


def setup_refused(wait):
    """Answer a set-up attempt over the limit of failed attempts from one address (429)."""
    return error_response(429, f"too many failed attempts: try again in {wait} s",
                          {"Retry-After": str(wait)})


# -- one's own account: API tokens and password ---------------------------------------------------

def _me():
    """Return the signed-in user's account row (auth on) or None (auth off)."""
    s = get_slotrun()
    if not s.auth:
        return None
    return s.accounts.user(current_user()["name"])


def _account_page(status=200, new_token=None, message=None, error=None):
    s = get_slotrun()
    me = _me()
    tokens = s.accounts.list_tokens(me["name"]) if me else []
    return _page("account.html", status, me=me, tokens=tokens, new_token=new_token,
                 message=message, error=error)


@bp.get("/account")
def account():
    """Show the signed-in user's API tokens and the password form."""
    authorize("account.read")
    return _account_page()


@bp.post("/account/tokens")
def token_create():
    """Create an API token for the signed-in user; the page shows it once."""
    authorize("token.create")
    me = _me()
    if me is None:
        raise Conflict("auth is turned off on this server: API tokens are not used")
    label = _form("label", 100).strip() or "token"
    token_id, token = get_slotrun().accounts.create_token(me["name"], label)
    log.info("%s created API token %s", me["name"], token_id)
    return _account_page(201, new_token={"id": token_id, "label": label, "token": token})


@bp.post("/account/tokens/<id:token_id>/revoke")
def token_revoke(token_id):
    """Revoke one of the signed-in user's API tokens."""
    authorize("token.revoke")
    me = _me()
    if me is None:
        raise Conflict("auth is turned off on this server: API tokens are not used")
    s = get_slotrun()
    s.accounts.revoke_token(me["name"], token_id)
    recheck_sockets(s, lambda e: e.get("token_id") == token_id)
    log.info("%s revoked API token %s", me["name"], token_id)
    return redirect(url_for("views.account"), 303)


@bp.post("/account/password")
def password_change():
    """Change the signed-in user's password (the current one is asked again)."""
    authorize("password.change")
    me = _me()
    if me is None:
        raise Conflict("auth is turned off on this server: there is no password to change")
    s = get_slotrun()
    if s.accounts.authenticate(me["name"], _form("current")) is None:
        return _account_page(400, error="the current password is wrong")
    new, again = _form("password"), _form("password2")
    if new != again:
        return _account_page(400, error="the two new passwords differ")
    try:
        s.accounts.set_password(me["name"], new)
    except SlotrunError as e:
        return _account_page(400, error=e.message)
    sign_in(me)  # this session goes on; the others end
    recheck_sockets(s)
    log.info("%s changed their password", me["name"])
    return _account_page(message="Password changed. Other sessions are signed out.")


# -- users (admins) -------------------------------------------------------------------------------

def _users_page(status=200, message=None, error=None, new_invite=None, form=None):
    s = get_slotrun()
    return _page("users.html", status, users=s.accounts.list_users(), roles=ROLES,
                 invites=s.invites.pending(), hours=INVITE_HOURS, message=message, error=error,
                 new_invite=new_invite, form=form or {})


@bp.get("/users")
def users():
    """List the users with their roles, and the pending invites (admins only)."""
    authorize("user.read")
    return _users_page()


def _join_url(secret):
    """Return the absolute address of an invite link (as this request reached the server)."""
    return url_for("views.join", token=secret, _external=True)


@bp.post("/users/invites")
def invite_create():
    """Create a one-time link for a teammate to join with a role (admins only)."""
    authorize("invite.create")
    s = get_slotrun()
    form = {"role": _form("role", 20), "name": _form("name", 64).strip(), "hours": _form("hours", 5)}
    hours = int(form["hours"]) if form["hours"].isdigit() else form["hours"]
    try:
        invite, secret = s.invites.create(form["role"], current_user()["name"],
                                          name=form["name"] or None, hours=hours)
    except SlotrunError as e:
        return _users_page(e.status, error=e.message, form=form)
    log.info("%s created invite %s (%s)", current_user()["name"], invite["id"], invite["role"])
    return _users_page(201, new_invite={**invite, "url": _join_url(secret), "hours": hours})


@bp.post("/users/invites/<id:invite_id>/revoke")
def invite_revoke(invite_id):
    """Make an invite link stop working (admins only)."""
    authorize("invite.revoke")
    get_slotrun().invites.revoke(invite_id)
    log.info("%s revoked invite %s", current_user()["name"], invite_id)
    return redirect(url_for("views.users"), 303)


@bp.route("/join", methods=["GET", "POST"])
@public
def join():
    """Create one's own account with an invite link (once, until it expires)."""
    authorize("auth.join")
    s = get_slotrun()
    if not s.auth:
        raise NotFound("auth is turned off on this server: there are no accounts to join")
    given = request.values.get("token", "")
    address = request.remote_addr or "?"
    try:
        invite = s.invites.find(given)
    except SlotrunError as e:
        if e.status == 404:
            sign_in_failed()  # a guessed link counts as a failed sign-in from this address
        return _page("join.html", e.status, invite=None, token="", name="", error=e.message)
    if request.method == "GET":
        return _page("join.html", invite=invite, token=given, name=invite["name"] or "",
                     error=None)
    name = (invite["name"] or _form("name", 64)).strip()
    password, again = _form("password"), _form("password2")
    try:
        if password != again:
            raise SlotrunError("the two passwords differ")
        user = s.invites.accept(given, name, password)
    except SlotrunError as e:
        return _page("join.html", 400 if e.status == 404 else e.status, invite=invite,
                     token=given, name=name, error=e.message)
    sign_in(user)
    log.info("%s joined as %s with invite %s from %s", user["name"], user["role"],
             invite["id"], address)
    return redirect(url_for("views.index"), 303)


def _user_arg(name):
    if not isinstance(name, str) or len(name) > 64:
        raise NotFound("no such user")
    return name


@bp.post("/users/<name>/role")
def user_role(name):
    """Change a user's role (admins only; never the last admin's)."""
    authorize("user.update")
    s = get_slotrun()
    name = _user_arg(name)
    s.accounts.user(name)  # unknown: 404
    role = _form("role", 20)
    try:
        s.accounts.set_role(name, role)
    except SlotrunError as e:
        if e.status == 404:
            raise
        return _users_page(e.status, error=e.message)
    recheck_sockets(s)
    log.info("%s made %s %s", current_user()["name"], name, role)
    return redirect(url_for("views.users"), 303)


@bp.post("/users/<name>/remove")
def user_remove(name):
    """Remove a user and its tokens (admins only; never the last admin)."""
    authorize("user.remove")
    s = get_slotrun()
    name = _user_arg(name)
    s.accounts.user(name)
    try:
        s.accounts.remove_user(name)
    except SlotrunError as e:
        if e.status == 404:
            raise
        return _users_page(e.status, error=e.message)
    recheck_sockets(s)
    log.info("%s removed user %s", current_user()["name"], name)
    return redirect(url_for("views.users"), 303)
