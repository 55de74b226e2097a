"""The web layer: the Flask app factory, the per-process engine runtime, and the access hook.

Only this package imports Flask and Flask-SocketIO. ``build_app`` wires the JSON API
(``api``), the HTML pages (``views``) and the Socket.IO events (``events``) onto one app,
and starts the workspace's engine exactly once per process.
"""

import getpass
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import sys
import threading
import time
from datetime import timedelta
from urllib.parse import quote

from flask import (Flask, current_app, g, has_request_context, jsonify, redirect, render_template,
                   request, session)
from flask.sessions import SecureCookieSessionInterface
from flask_socketio import SocketIO
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from .. import settings as settings_mod
from ..accounts import Accounts, RateLimiter, can
from ..devices import open_inventory
from ..errors import Forbidden, SlotrunError, Unauthorized
from ..executors.ray_inventory import make_inventory, watch_nodes
from ..paths import state_db, state_dir
from ..scheduler import Engine
from ..store import Store

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = "0.1.0"
MAX_CONTENT_LENGTH = 1024 * 1024  # a batch is a pattern, not a list: 1 MiB is plenty

SESSION_LIFETIME = timedelta(hours=12)  # idle limit: every request pushes it forward
SESSION_MAX_AGE = 7 * 24 * 3600  # a session older than this must sign in again, used or not
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_LIMIT_PER_NAME = 5  # failed logins per user name per window
LOGIN_LIMIT_PER_ADDRESS = 20  # failed logins (any name) per client address per window
LOGIN_WINDOW = 300  # seconds

# Every action a route or Socket.IO event may ask ``authorize`` about, and the accounts action
# (``app.accounts.can``) it needs; None: open to anyone (the login and set-up pages). An
# unknown name is a programming error.
ACTIONS = {
    "page.view": "read", "status.read": "read", "config.read": "read", "device.read": "read",
    "batch.read": "read", "task.read": "read", "log.read": "read", "files.read": "read",
    "socket.connect": "read", "log.follow": "read",
    "batch.create": "submit", "sweep.create": "submit", "sweep.preview": "read",
    "results.read": "read",
    "batch.cancel": "cancel", "task.cancel": "cancel", "task.retry": "retry",
    "device.update": "slots", "queue.pause": "queue", "queue.resume": "queue",
    "batch.priority": "priority",
    "account.read": "tokens", "token.create": "tokens", "token.revoke": "tokens",
    "password.change": "tokens",
    "user.read": "users", "user.create": "users", "user.update": "users", "user.remove": "users",
    "auth.login": None, "auth.logout": None, "auth.setup": None,
}

# What a refused action was, for the 403 message.
_DOING = {
    "submit": "start batches", "cancel": "cancel", "retry": "retry", "slots": "change slot limits",
    "queue": "pause or resume the queue", "priority": "change a batch's priority",
    "users": "manage users", "tokens": "manage API tokens", "read": "see the queue",
}


def public(view):
    """Mark a view as open to visitors who are not signed in (login, set-up)."""
    view.slotrun_public = True
    return view


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
        user = s.socket_user(sid)
    else:
        user = _http_user(s)
    g.slotrun_user = user
    return user


def authorize(action, resource=None):
    """Check that the current user may do ``action`` on ``resource``; raise if not.

    The single place where access is decided: every route and every Socket.IO event calls
    it with the record it acts on (a task or batch dict carries its ``owner``). Nobody
    signed in: Unauthorized (401); signed in without the right: Forbidden (403). A route
    that never calls it is refused with a 500 (see ``_require_authorize``), so a new route
    cannot skip the check silently.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if has_request_context():
        g.slotrun_authorized = action
    need = ACTIONS[action]
    if need is None:
        return True
    user = current_user()
    if user is None:
        raise Unauthorized(_sign_in_message())
    owner = resource.get("owner") if isinstance(resource, dict) else None
    if not can(user, need, owner):
        raise Forbidden(_refusal(user, need, action, owner))
    return True


def _sign_in_message():
    if has_request_context() and g.get("slotrun_via") == "token":
        return ("the API token is not valid (revoked, or mistyped); create one with: "
                "python -m app token create NAME")
    return ("sign in first: log in at /login, or send Authorization: Bearer TOKEN "
            "(create one with: python -m app token create NAME)")


def _refusal(user, need, action, owner):
    role = user.get("role")
    doing = _DOING.get(need, need)
    if role == "viewer":
        return f"not allowed: {user['name']} is a viewer (read-only) and may not {doing}"
    if need in ("cancel", "retry"):
        what = action.split(".")[0]
        return (f"not allowed: only {owner or 'its owner'} (the owner) or an admin may {doing} "
                f"this {what}")
    return f"not allowed: only an admin may {doing}"


def _http_user(s):
    header = request.headers.get("Authorization")
    if header is not None:
        g.slotrun_via = "token"
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return _public_user(s.accounts.user_for_token(token.strip()))
    if "uid" not in session:
        return None
    g.slotrun_via = "session"
    return s.session_user(session)


def _public_user(u):
    if u is None:
        return None
    return {"id": u["id"], "name": u["name"], "role": u["role"]}


def bearer_token(auth=None):
    """Return the API token of this request (Authorization header or Socket.IO ``auth``)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return auth["token"]
    return None


def csrf_token():
    """Return this session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 20:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf():
    """Refuse (403) a state-changing browser request without this session's CSRF token."""
    sent = request.headers.get("X-CSRFToken")
    if sent is None and request.mimetype in ("application/x-www-form-urlencoded",
                                             "multipart/form-data"):
        sent = request.form.get("csrf_token")
    expected = session.get("csrf")
    if not sent or not isinstance(expected, str) or not hmac.compare_digest(
            sent.encode("utf-8", "replace"), expected.encode()):
        raise Forbidden("the CSRF token is missing or wrong: reload the page and try again "
                        "(scripts: send Authorization: Bearer TOKEN instead of a cookie)")


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


def _fingerprint(key, password_hash):
    """Return a keyed digest of a password hash: a password change ends older sessions."""
    return hmac.new(key.encode(), password_hash.encode(), hashlib.sha256).hexdigest()[:32]


class _RedactSecrets(logging.Filter):
    """Blank tokens and passwords out of logged request lines (e.g. /setup?token=...)."""

    PATTERN = re.compile(r"((?:token|password|csrf_token)=)[^&\s\"']+", re.I)

    def filter(self, record):
        """Rewrite the record's message and string arguments; always keep the record."""
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):  # gunicorn's access log passes its atoms so
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        return True

    def _clean(self, value):
        return self.PATTERN.sub(r"\1[redacted]", value) if isinstance(value, str) else value


def install_log_redaction():
    """Attach the secret-redacting filter to the request loggers (once)."""
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSecrets) for f in logger.filters):
            logger.addFilter(_RedactSecrets())


class _Sessions(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is Secure whenever the request came over https."""

    def get_cookie_secure(self, app):
        """Return True when configured, or when this request came over https."""
        if app.config.get("SESSION_COOKIE_SECURE"):
            return True
        return has_request_context() and request.is_secure


class IdConverter(IntegerConverter):
    """A positive id that fits SQLite's integer (larger numbers never match: 404)."""

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=2**63 - 1)


# -- the engine runtime: one per workspace per process ------------------------------------------

_RUNTIMES = {}
_RUNTIMES_LOCK = threading.Lock()


class Runtime:
    """A workspace's store, device inventory and engine, shared by every app in this process."""

    def __init__(self, settings):
        self.settings = settings
        self.workspace = settings["workspace"]
        self.store = Store(state_db(self.workspace))
        if settings.get("executor", "local") == "ray":
            self.inventory = make_inventory(settings)  # every node's GPUs, "NODE/gpuI"
        else:
            self.inventory = open_inventory(settings.get("fake_gpus") or None)
        self.node_watcher = None
        self.engine = None
        self.started_at = None
        self.users = 0
        self._listeners = []
        self._lock = threading.Lock()

    def publish(self, event, payload):
        """Hand an engine event to every app's emitter (called on the scheduler thread)."""
        for listener in self._listeners:
            listener(event, payload)

    def add_listener(self, fn):
        """Receive engine events with ``fn(event, payload)``; ``fn`` must never block."""
        with self._lock:
            self._listeners = self._listeners + [fn]

    def remove_listener(self, fn):
        """Stop sending engine events to ``fn``."""
        with self._lock:
            self._listeners = [f for f in self._listeners if f is not fn]

    def ensure_started(self):
        """Start the engine if it is not running yet (once per process)."""
        if self.engine is not None:
            return self.engine
        with self._lock:
            if self.engine is None:
                engine = Engine(self.settings, self.store, self.inventory, publish=self.publish)
                engine.start()
                if self.settings.get("executor", "local") == "ray":
                    # nodes joining or leaving the cluster appear / disappear live
                    self.node_watcher = watch_nodes(engine, self.inventory,
                                                    float(self.settings["device_refresh"]))
                self.started_at = time.time()
                self.engine = engine
                log.info("engine started for workspace %s (pid %s)", self.workspace, os.getpid())
        return self.engine

    def stop(self):
        """Stop the engine (running tasks keep running and are re-adopted next time)."""
        with self._lock:
            engine, self.engine = self.engine, None
            watcher, self.node_watcher = self.node_watcher, None
        if watcher is not None:
            watcher.stop()
        if engine is not None:
            engine.stop(kill_tasks=False)
        try:
            self.inventory.close()
        except Exception:  # noqa: BLE001 - closing a driver must not stop the shutdown
            log.exception("closing the device inventory failed")


def _acquire_runtime(settings):
    key = os.path.realpath(settings["workspace"])
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            rt = _RUNTIMES[key] = Runtime(settings)
        rt.users += 1
        return rt


def _release_runtime(rt):
    key = os.path.realpath(rt.workspace)
    with _RUNTIMES_LOCK:
        rt.users -= 1
        last = rt.users <= 0
        if last:
            _RUNTIMES.pop(key, None)
    if last:
        rt.stop()


# -- the per-app extension object ----------------------------------------------------------------

class Slotrun:
    """What the routes and events of one app share: settings, runtime, Socket.IO, threads."""

    def __init__(self, settings, runtime, socketio):
        self.settings = settings
        self.runtime = runtime
        self.socketio = socketio
        self.clients = set()  # connected Socket.IO sids
        self.emitter = None
        self.logs = None
        self._figures = None
        self._figures_at = 0.0
        self._figures_lock = threading.Lock()
        self._closed = False
        self.auth = bool(settings.get("auth", True))
        self.secret_key = None
        self.local_user = {"id": None, "name": _os_user(), "role": "admin"}
        self.login_by_name = RateLimiter(LOGIN_LIMIT_PER_NAME, LOGIN_WINDOW)
        self.login_by_address = RateLimiter(LOGIN_LIMIT_PER_ADDRESS, LOGIN_WINDOW)
        self.setup_token = None  # the one-time first-admin link, while no user exists
        self.setup_lock = threading.Lock()
        self.sockets = {}  # sid -> how the client signed in (never the token itself)
        self._sockets_lock = threading.Lock()
        self._accounts = None

    @property
    def accounts(self):
        """Return the workspace's users and tokens."""
        if self._accounts is None:
            self._accounts = Accounts(self.runtime.store)
        return self._accounts

    def session_user(self, sess):
        """Return the user a session cookie (or a socket's copy of it) signs in, or None."""
        uid = sess.get("uid")
        since = sess.get("since")
        if not isinstance(uid, int) or not isinstance(since, (int, float)):
            return None
        if time.time() - since > SESSION_MAX_AGE:
            return None
        row = self.accounts.db.get_user(user_id=uid)
        if row is None or not hmac.compare_digest(
                str(sess.get("pwh", "")), _fingerprint(self.secret_key, row["password_hash"])):
            return None
        return {"id": row["id"], "name": row["name"], "role": row["role"]}

    def start_session(self, sess, user):
        """Sign ``user`` in on a (cleared) session: new CSRF token, fresh lifetime."""
        row = self.accounts.db.get_user(user_id=user["id"])
        sess.clear()
        sess.permanent = True
        sess["uid"] = row["id"]
        sess["since"] = time.time()
        sess["pwh"] = _fingerprint(self.secret_key, row["password_hash"])
        sess["csrf"] = secrets.token_urlsafe(32)

    def remember_socket(self, sid, entry):
        """Keep how a Socket.IO client signed in, to check it again on every event."""
        with self._sockets_lock:
            self.sockets[sid] = entry

    def forget_socket(self, sid):
        """Forget a disconnected Socket.IO client."""
        with self._sockets_lock:
            self.sockets.pop(sid, None)

    def socket_user(self, sid):
        """Return the user of a connected Socket.IO client as it is now, or None."""
        entry = self.sockets.get(sid)
        if entry is None:
            return None
        if entry["via"] == "local":
            return self.local_user
        if entry["via"] == "token":
            row = self.accounts.db.get_token(entry["token_id"])
            if row is None:
                return None
            return {"id": row["user_id"], "name": row["user_name"], "role": row["role"]}
        return self.session_user(entry)

    def recheck_sockets(self, match=None):
        """Disconnect Socket.IO clients whose sign-in no longer holds (or that ``match``)."""
        if not self.auth:
            return
        with self._sockets_lock:
            entries = list(self.sockets.items())
        for sid, entry in entries:
            try:
                gone = match(entry) if match is not None else self.socket_user(sid) is None
            except Exception:  # noqa: BLE001 - one bad entry must not stop the check
                log.exception("checking a Socket.IO client's sign-in failed")
                gone = True
            if gone:
                self.forget_socket(sid)
                try:
                    self.socketio.server.disconnect(sid, namespace="/")
                except Exception:  # noqa: BLE001 - it may have gone meanwhile
                    pass

    def setup_url(self, base):
        """Return the one-time first-admin link under ``base`` (None once a user exists)."""
        if self.setup_token is None:
            return None
        return f"{base.rstrip('/')}/setup?token={quote(self.setup_token)}"

    @property
    def store(self):
        """Return the workspace's store."""
        return self.runtime.store

    @property
    def engine(self):
        """Return the running engine (starting it on first use)."""
        return self.runtime.ensure_started()

    def device_figures(self, max_age=1.0):
        """Return the devices' figures as dicts, re-read when older than ``max_age`` seconds."""
        with self._figures_lock:
            now = time.monotonic()
            if self._figures is None or now - self._figures_at >= max_age:
                self._figures = [d.to_dict() for d in self.runtime.inventory.snapshot()]
                self._figures_at = now
            return self._figures

    def close(self):
        """Stop this app's threads and release the engine (stopped when no app uses it)."""
        if self._closed:
            return
        self._closed = True
        if self.emitter is not None:
            self.runtime.remove_listener(self.emitter.publish)
            self.emitter.stop()
        if self.logs is not None:
            self.logs.stop()
        insight = getattr(self, "insight", None)
        if insight is not None:
            insight.stop()
        _release_runtime(self.runtime)


def _os_user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def get_slotrun():
    """Return the current app's Slotrun object."""
    return current_app.extensions["slotrun"]


# -- the factory ---------------------------------------------------------------------------------

def build_app(config=None):
    """Return the Flask app with its API, pages, Socket.IO events and (started) engine.

    ``config``: upper-case keys go to Flask's config (TESTING, START_ENGINE ...); lower-case
    keys override slotrun settings (workspace, page_size, log_push_interval ...).
    """
    config = dict(config or {})
    overrides = {k: v for k, v in config.items() if k.islower()}
    settings = settings_mod.load(overrides)

    app = Flask("app", root_path=ROOT, template_folder="templates", static_folder="static")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        JSON_SORT_KEYS=False,
        SECRET_KEY=settings.get("secret_key") or _secret_key(settings["workspace"]),
        # Cookies are shared by every port of a host: one name per port keeps two servers apart.
        SESSION_COOKIE_NAME=f"slotrun_session_{settings.get('port', 5000)}",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        SESSION_REFRESH_EACH_REQUEST=True,
    )
    app.config.update({k: v for k, v in config.items() if not k.islower()})
    app.session_interface = _Sessions()
    app.json.sort_keys = False  # keep fields in their documented order (id first)
    app.add_template_filter(_timestamp, "timestamp")
    app.url_map.converters["id"] = IdConverter
    # A doubled slash must not be redirected into a results path ("//etc/passwd"): 404 instead.
    app.url_map.merge_slashes = False

    # The default (same origin only) is kept on purpose: never "*".
    socketio = SocketIO(app, async_mode="threading", logger=False, engineio_logger=False)
    if settings.get("trust_proxy"):
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Only behind a reverse proxy that sets these headers: X-Forwarded-Proto then makes
        # the session cookie Secure, X-Forwarded-For is the address logins are limited by.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    install_log_redaction()
    runtime = _acquire_runtime(settings)
    slotrun = Slotrun(settings, runtime, socketio)
    slotrun.secret_key = app.config["SECRET_KEY"]
    window = app.config.get("LOGIN_WINDOW", LOGIN_WINDOW)
    slotrun.login_by_name = RateLimiter(app.config.get("LOGIN_LIMIT_PER_NAME",
                                                       LOGIN_LIMIT_PER_NAME), window)
    slotrun.login_by_address = RateLimiter(app.config.get("LOGIN_LIMIT_PER_ADDRESS",
                                                          LOGIN_LIMIT_PER_ADDRESS), window)
    app.extensions["slotrun"] = slotrun
    if slotrun.auth and not slotrun.accounts.has_users():
        slotrun.setup_token = secrets.token_urlsafe(24)
        if app.config.get("ANNOUNCE_SETUP", not app.testing):
            # Under gunicorn this reaches its error log; `python -m app serve` prints its own.
            print(f"slotrun: no account exists yet; create the first admin at "
                  f"{slotrun.setup_url('http://HOST:PORT')} (or run: python -m app users add "
                  "NAME --role admin)", file=sys.stderr, flush=True)

    from . import api, events, insight, results_api, sweep_pages, sweeps_api, views

    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(insight.bp, url_prefix="/api/v1")
    app.register_blueprint(sweeps_api.bp, url_prefix="/api/v1")
    app.register_blueprint(results_api.bp, url_prefix="/api/v1")
    app.register_blueprint(views.bp)
    app.register_blueprint(sweep_pages.bp)
    _register_errors(app)
    events.register(socketio, slotrun)
    insight.register(socketio, slotrun)

    if not app.testing:
        api.warm_pattern_helper()
    if _should_start_engine(app):
        try:
            runtime.ensure_started()
        except BaseException:
            slotrun.close()
            raise

    @app.before_request
    def _engine_running():
        # Started lazily where it was not started above (e.g. a reloader's parent never serves).
        runtime.ensure_started()

    @app.before_request
    def _authenticate():
        _check_access(slotrun, app)

    @app.after_request
    def _require_authorize(response):
        _security_headers(response)
        if (request.endpoint in (None, "static") or request.method == "OPTIONS"
                or response.status_code >= 400 or g.get("slotrun_authorized")):
            return response
        log.error("route %s answered without calling authorize(); refused", request.endpoint)
        return _error_response(500, "internal error: this route has no access rule")

    return app


def _check_access(slotrun, app):
    """Before any route: who is asking, may strangers see this at all, and the CSRF check."""
    if not slotrun.auth:
        # Without accounts only this machine may connect, whatever address is bound.
        if not is_loopback(request.remote_addr):
            raise Forbidden("this server runs with auth turned off, so it answers only local "
                            "connections")
        return
    user = current_user()
    view = app.view_functions.get(request.endpoint) if request.endpoint else None
    public_view = request.endpoint == "static" or getattr(view, "slotrun_public", False)
    if user is None and view is not None and not public_view:
        raise Unauthorized(_sign_in_message())
    if request.method not in SAFE_METHODS and g.get("slotrun_via") != "token" \
            and request.endpoint is not None:
        # Bearer-token calls are exempt: a browser never adds that header on its own.
        check_csrf()


def _security_headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    # The set-up link carries its token in the address: never pass it on as a Referer.
    headers.setdefault("Referrer-Policy", "same-origin")


def _timestamp(seconds):
    """Return Unix seconds as local "YYYY-MM-DD HH:MM" (for the account pages)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(seconds)))
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _should_start_engine(app):
    explicit = app.config.get("START_ENGINE")
    if explicit is not None:
        return bool(explicit)
    # Under a reloader the watching parent only restarts the child; the child (or the first
    # request anywhere) starts the engine, so two engines never race for the workspace.
    return not (app.debug and os.environ.get("WERKZEUG_RUN_MAIN") != "true")


def _secret_key(workspace):
    folder = state_dir(workspace)
    path = os.path.join(folder, "secret_key")
    try:
        with open(path, encoding="ascii") as f:
            key = f.read().strip()
        if key:
            return key
    except OSError:
        pass
    os.makedirs(folder, exist_ok=True)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or key
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key)
    return key


# -- errors: JSON under /api, a page in the browser ------------------------------------------------

def wants_json():
    """Return True when the error should be JSON (API paths, or a client that prefers JSON)."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def _error_response(status, message, headers=None):
    if wants_json():
        response = jsonify(error=message)
    else:
        try:
            from .views import bootstrap

            html = render_template("error.html", status=status, message=message,
                                   bootstrap=bootstrap())
        except Exception:  # noqa: BLE001 - an error page must render even without templates
            log.exception("rendering the error page failed")
            from markupsafe import escape

            html = (f"<!doctype html><title>slotrun · {status}</title><h1>{status}</h1>"
                    f"<p>{escape(message)}</p><p><a href='/'>Back to the dashboard</a></p>")
        response = current_app.response_class(html, mimetype="text/html")
    response.status_code = status
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


_HTTP_MESSAGES = {
    400: "bad request: the request could not be understood",
    404: "not found: no such page or API route",
    405: "method not allowed",
    413: f"request body too large: at most {MAX_CONTENT_LENGTH // 1024} KiB",
    429: "too many attempts: wait and try again",
}


def _register_errors(app):
    @app.errorhandler(SlotrunError)
    def _slotrun_error(e):
        if e.status == 401:
            if not wants_json():
                g.slotrun_authorized = "sign-in"  # the redirect to the login page is the answer
                target = request.full_path if request.query_string else request.path
                return redirect(f"{request.script_root}/login?next={quote(safe_next(target))}")
            return _error_response(401, e.message, {"WWW-Authenticate": 'Bearer realm="slotrun"'})
        return _error_response(e.status, e.message)

    @app.errorhandler(HTTPException)
    def _http_error(e):
        headers = {}
        if e.code == 405 and getattr(e, "valid_methods", None):
            methods = sorted(set(e.valid_methods))
            headers["Allow"] = ", ".join(methods)
            message = f"method {request.method} not allowed here; allowed: {', '.join(methods)}"
        else:
            message = _HTTP_MESSAGES.get(e.code) or (e.name or "error").lower()
        return _error_response(e.code or 500, message, headers)

    @app.errorhandler(Exception)
    def _unexpected(e):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(500, "internal error: the request failed; the details are in the "
                                    "server's log")
