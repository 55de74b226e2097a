"""Who is asking: sessions, API tokens, CSRF tokens, login limits and the sign-ins of
Socket.IO clients, on the Flask ecosystem's kept libraries.

- Flask-Login loads the user of a session cookie (``user_loader``) or of an
  ``Authorization: Bearer`` token (``request_loader``); a token wins over the cookie.
  The session's user id carries a keyed digest of the password hash, so a password
  change ends every other session (Flask-Login's "alternative token" pattern), and the
  session records when it signed in, so it ends after ``SESSION_MAX_AGE`` however used.
- Flask-WTF's ``CSRFProtect`` issues and checks the CSRF token of every state-changing
  request signed by the cookie (the form field, or the ``X-CSRFToken`` header of the
  page's JSON calls); bearer-token calls are exempt: a browser never adds that header.
- Flask-Limiter counts failed sign-ins per user name and per client address in a moving
  window and answers 429 with Retry-After; its storage is in memory, which is right for
  the one-worker server (a second worker would count on its own).

With the ``auth`` setting off, everyone is the server's OS user with the admin role and
only loopback clients are answered. What a signed-in user may do is decided in ``access``.
"""

import hashlib
import hmac
import ipaddress
import logging
import math
import time
from dataclasses import dataclass

from flask import current_app, g, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, UserMixin, login_user, logout_user
from flask_login import current_user as login_user_proxy
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf, validate_csrf
from wtforms.validators import ValidationError

from ..errors import Forbidden, Unauthorized
from .extension import get_slotrun

log = logging.getLogger(__name__)

SESSION_MAX_AGE = 7 * 24 * 3600  # a session older than this must sign in again, used or not
LOGIN_LIMIT_PER_NAME = 5  # failed logins per user name per window
LOGIN_LIMIT_PER_ADDRESS = 20  # failed sign-ins (any name, or the set-up link) per client address
LOGIN_WINDOW = 300  # seconds
NAME_SCOPE = "sign-in-name"
ADDRESS_SCOPE = "sign-in-address"


@dataclass(frozen=True, eq=False)
class SignedIn(UserMixin):
    """A signed-in user as Flask-Login holds it."""

    uid: int
    name: str
    role: str
    session_id: str = ""  # "UID:DIGEST" in the session cookie; empty for a token's user

    def get_id(self):
        """Return the id the session keeps: it changes with the password."""
        return self.session_id

    def as_dict(self):
        """Return the {id, name, role} the routes and events use."""
        return {"id": self.uid, "name": self.name, "role": self.role}


def init_auth(app):
    """Attach Flask-Login and Flask-WTF's CSRF protection to ``app``."""
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # checked in access.check_access
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # a page's token lives with its session
    # No Referer check on https: the token and the SameSite cookie are the defence, as before,
    # and a proxy that drops the header would break every form.
    app.config.setdefault("WTF_CSRF_SSL_STRICT", False)
    CSRFProtect(app)
    manager = LoginManager(app)
    # The session is bound to the password (get_id), not to the client's address or browser.
    manager.session_protection = None
    manager.user_loader(_load_session_user)
    manager.request_loader(_load_token_user)


def current_user():
    """Return the user of this request or Socket.IO event ({id, name, role}), or None.

    A bearer token (``Authorization: Bearer ...``) wins over the session cookie. With the
    ``auth`` setting off, everyone is the server's OS user with the admin role.
    """
    if not has_request_context():
        return None
    if "slotrun_user" in g:
        return g.slotrun_user
    s = get_slotrun()
    sid = getattr(request, "sid", None)
    if not s.auth:
        user = s.local_user
    elif sid is not None:
        user = socket_user(s, sid)
    else:
        who = login_user_proxy._get_current_object()
        user = who.as_dict() if who.is_authenticated else None
    g.slotrun_user = user
    return user


def signed_in_by_token():
    """Return True when this request came with an ``Authorization`` header (not a cookie)."""
    return (has_request_context() and getattr(request, "sid", None) is None
            and "Authorization" in request.headers)


def _load_session_user(session_id):
    if "Authorization" in request.headers:
        return None  # a bearer token wins over the cookie (see _load_token_user)
    return session_user(get_slotrun(), session_id, session.get("since"))


def _load_token_user(req):
    header = req.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    u = get_slotrun().accounts.user_for_token(token.strip())
    return None if u is None else SignedIn(u["id"], u["name"], u["role"])


def bearer_token(auth=None):
    """Return the API token of this request (Authorization header or Socket.IO ``auth``)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return auth["token"]
    return None


# -- sessions -------------------------------------------------------------------------------------

def _session_id(s, row):
    """Return "UID:DIGEST": a keyed digest of the password hash ends older sessions."""
    digest = hmac.new(s.secret_key.encode(), row["password_hash"].encode(),
                      hashlib.sha256).hexdigest()[:32]
    return f"{row['id']}:{digest}"


def session_user(s, session_id, since):
    """Return the user a session (or a socket's copy of it) signs in, or None."""
    if not isinstance(session_id, str) or not isinstance(since, (int, float)):
        return None
    if time.time() - since > SESSION_MAX_AGE:
        return None
    uid, _, _ = session_id.partition(":")
    if not uid.isdigit() or len(uid) > 19:
        return None
    row = s.accounts.db.get_user(user_id=int(uid))
    if row is None or not hmac.compare_digest(session_id, _session_id(s, row)):
        return None
    return SignedIn(row["id"], row["name"], row["role"], session_id)


def sign_in(user):
    """Sign ``user`` in on a cleared session: new CSRF token, fresh lifetime.

    Called after a login, the first admin's set-up, and a password change (which keeps
    this session and ends every other one).
    """
    s = get_slotrun()
    row = s.accounts.db.get_user(user_id=user["id"])
    session.clear()
    # Flask-WTF keeps this request's token in g: the new session must get a new one.
    g.pop(current_app.config["WTF_CSRF_FIELD_NAME"], None)
    session.permanent = True
    login_user(SignedIn(row["id"], row["name"], row["role"], _session_id(s, row)))
    session["since"] = time.time()


def sign_out():
    """Forget this session."""
    logout_user()
    session.clear()


class Sessions(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is Secure whenever the request came over https."""

    def get_cookie_secure(self, app):
        """Return True when configured, or when this request came over https."""
        if app.config.get("SESSION_COOKIE_SECURE"):
            return True
        return has_request_context() and request.is_secure


# -- CSRF -----------------------------------------------------------------------------------------

def csrf_token():
    """Return this session's CSRF token for a page (created on first use)."""
    return generate_csrf()


def check_csrf():
    """Refuse (403) a state-changing browser request without this session's CSRF token."""
    try:
        current_app.extensions["csrf"].protect()
    except CSRFError:
        raise Forbidden("the CSRF token is missing or wrong: reload the page and try again "
                        "(scripts: send Authorization: Bearer TOKEN instead of a cookie)") from None


def _csrf_matches(sent):
    try:
        validate_csrf(sent)
    except ValidationError:
        return False
    return True


# -- login limits ---------------------------------------------------------------------------------

def limit_sign_ins(app, refuse_login, refuse_setup, per_name, per_address, window):
    """Count failed sign-ins on the login, set-up and join pages (Flask-Limiter, in memory).

    A failure is counted only where the page says so (``sign_in_failed``), never for a
    refused attempt; a success forgets the name's failures (``forget_name_failures``).
    ``refuse_login(wait)`` / ``refuse_setup(wait)`` answer an attempt over the limit.
    """
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://",
                      strategy="moving-window")
    app.extensions["slotrun_limiter"] = limiter
    by_name = f"{per_name} per {window} second"
    by_address = f"{per_address} per {window} second"

    def failed(response):
        return g.get("slotrun_sign_in_failed", False)

    def refusal(refuse):
        return lambda limit: refuse(max(1, math.ceil(limit.reset_at - time.time())))

    login = app.view_functions["views.login"]
    login = limiter.shared_limit(by_address, ADDRESS_SCOPE, methods=["POST"], deduct_when=failed,
                                 on_breach=refusal(refuse_login))(login)
    login = limiter.limit(by_name, key_func=_login_name, scope=NAME_SCOPE, methods=["POST"],
                          deduct_when=failed, on_breach=refusal(refuse_login))(login)
    app.view_functions["views.login"] = login
    for page in ("views.setup", "views.join"):  # the one-time links: guesses count too
        view = app.view_functions[page]
        app.view_functions[page] = limiter.shared_limit(
            by_address, ADDRESS_SCOPE, deduct_when=failed, on_breach=refusal(refuse_setup))(view)


def _login_name():
    name = request.form.get("name", "")
    return (name[:64].strip().lower() if isinstance(name, str) else "") or "\0"


def sign_in_failed():
    """Count this request as a failed sign-in (a wrong password, a wrong set-up link)."""
    g.slotrun_sign_in_failed = True


def forget_name_failures():
    """Forget the failed logins of this request's user name (after a successful login)."""
    limiter = current_app.extensions["slotrun_limiter"]
    for limit in limiter.current_limits:
        if NAME_SCOPE in limit.request_args[-1]:
            limiter.limiter.clear(limit.limit, *limit.request_args)


# -- Socket.IO clients ----------------------------------------------------------------------------

def sign_in_socket(s, sid, auth):
    """Decide who a connecting client is, remember it for its events; raise if nobody.

    A token (``Authorization: Bearer`` or ``auth={"token": ...}``) signs in any client. A
    browser's session cookie counts only with the page's CSRF token in ``auth`` (so only
    the dashboard's own pages use it) and, for a websocket, with an ``Origin`` header: a
    websocket without one comes from a script, which must use a token. Cross-origin
    requests never get here: the Socket.IO server refuses them (same origin only).
    """
    if not s.auth:
        if not is_loopback(request.remote_addr):
            raise Unauthorized("this server runs with auth turned off, so it answers only "
                               "local connections")
        _remember_socket(s, sid, {"via": "local"})
        g.slotrun_user = s.local_user
        return
    token = bearer_token(auth)
    if token is not None:
        user = s.accounts.user_for_token(token)
        if user is None:
            raise Unauthorized("the API token is not valid (revoked, or mistyped)")
        _remember_socket(s, sid, {"via": "token", "token_id": user["token_id"],
                                  "uid": user["id"]})
        g.slotrun_user = {"id": user["id"], "name": user["name"], "role": user["role"]}
        return
    websocket = request.environ.get("HTTP_UPGRADE", "").lower() == "websocket" \
        or request.args.get("transport") == "websocket"
    if websocket and not request.headers.get("Origin"):
        raise Unauthorized("a websocket without an Origin header must sign in with a token "
                           "(Authorization: Bearer TOKEN or auth={\"token\": TOKEN})")
    user = session_user(s, session.get("_user_id"), session.get("since"))
    if user is None:
        raise Unauthorized("sign in first: log in at /login, or connect with a token")
    sent = auth.get("csrf") if isinstance(auth, dict) else None
    if not _csrf_matches(sent):
        raise Unauthorized("a session's Socket.IO connection must send the page's CSRF token "
                           "as auth={\"csrf\": ...}")
    _remember_socket(s, sid, {"via": "session", "session_id": user.session_id,
                              "since": session.get("since")})
    g.slotrun_user = user.as_dict()


def _remember_socket(s, sid, entry):
    """Keep how a Socket.IO client signed in (never the token itself), to check it again."""
    with s.sockets_lock:
        s.sockets[sid] = entry


def forget_socket(s, sid):
    """Forget a disconnected Socket.IO client."""
    with s.sockets_lock:
        s.sockets.pop(sid, None)


def socket_user(s, sid):
    """Return the user of a connected Socket.IO client as it is now, or None."""
    entry = s.sockets.get(sid)
    if entry is None:
        return None
    if entry["via"] == "local":
        return s.local_user
    if entry["via"] == "token":
        row = s.accounts.db.get_token(entry["token_id"])
        if row is None:
            return None
        return {"id": row["user_id"], "name": row["user_name"], "role": row["role"]}
    user = session_user(s, entry["session_id"], entry["since"])
    return None if user is None else user.as_dict()


def recheck_sockets(s, match=None):
    """Disconnect Socket.IO clients whose sign-in no longer holds (or that ``match``)."""
    if not s.auth:
        return
    with s.sockets_lock:
        entries = list(s.sockets.items())
    for sid, entry in entries:
        try:
            gone = match(entry) if match is not None else socket_user(s, sid) is None
        except Exception:  # noqa: BLE001 - one bad entry must not stop the check
            log.exception("checking a Socket.IO client's sign-in failed")
            gone = True
        if gone:
            forget_socket(s, sid)
            try:
                s.socketio.server.disconnect(sid, namespace="/")
            except Exception:  # noqa: BLE001 - it may have gone meanwhile
                pass


# -- addresses ------------------------------------------------------------------------------------

def is_loopback(host):
    """Return True for a loopback address or name (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def safe_next(target):
    """Return ``target`` if it is a path on this site, else "/" (no open redirects)."""
    if (not isinstance(target, str) or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target) or len(target) > 2000):
        return "/"
    return target
