"""The web layer: the Flask app factory, the per-process engine runtime, and the access hook.

Only this package imports Flask and Flask-SocketIO. ``build_app`` wires the JSON API
(``api``), the HTML pages (``views``) and the Socket.IO events (``events``) onto one app,
and starts the workspace's engine exactly once per process.
"""

import getpass
import logging
import os
import secrets
import threading
import time

from flask import Flask, current_app, g, has_request_context, jsonify, render_template, request
from flask_socketio import SocketIO
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from .. import settings as settings_mod
from ..errors import SlotrunError

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = "0.1.0"
MAX_CONTENT_LENGTH = 1024 * 1024  # a batch is a pattern, not a list: 1 MiB is plenty

# Every action a route or Socket.IO event may ask ``authorize`` about. Accounts (roles,
# ownership) will decide on these names; an unknown name is a programming error.
ACTIONS = frozenset({
    "page.view", "status.read", "config.read", "device.read", "device.update",
    "batch.read", "batch.create", "batch.cancel", "task.read", "task.cancel", "task.retry",
    "log.read", "files.read", "queue.pause", "queue.resume", "socket.connect", "log.follow",
})

_OS_USER = None


def current_user():
    """Return the name of the user making this request (for now: the server's OS user)."""
    global _OS_USER
    if _OS_USER is None:
        try:
            _OS_USER = getpass.getuser()
        except (KeyError, OSError):
            _OS_USER = f"uid{os.getuid()}"
    return _OS_USER


def authorize(action, resource=None):
    """Check that the current user may do ``action`` on ``resource``; raise Forbidden if not.

    The single place where access is decided: every route and every Socket.IO event calls
    it with the record it acts on (a task or batch dict carries its ``owner``). Until
    accounts exist every action is allowed. A route that never calls it is refused with a
    500 (see ``_require_authorize``), so a new route cannot skip the check silently.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if has_request_context():
        g.slotrun_authorized = action
    return True


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
        from ..devices import open_inventory
        from ..scheduler import state_dir
        from ..store import Store

        self.settings = settings
        self.workspace = settings["workspace"]
        self.store = Store(os.path.join(state_dir(self.workspace), "state.db"))
        self.inventory = open_inventory(settings.get("fake_gpus") or None)
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
                from ..scheduler import Engine

                engine = Engine(self.settings, self.store, self.inventory, publish=self.publish)
                engine.start()
                self.started_at = time.time()
                self.engine = engine
                log.info("engine started for workspace %s (pid %s)", self.workspace, os.getpid())
        return self.engine

    def stop(self):
        """Stop the engine (running tasks keep running and are re-adopted next time)."""
        with self._lock:
            engine, self.engine = self.engine, None
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
        _release_runtime(self.runtime)


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
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.config.update({k: v for k, v in config.items() if not k.islower()})
    app.json.sort_keys = False  # keep fields in their documented order (id first)
    app.url_map.converters["id"] = IdConverter
    # A doubled slash must not be redirected into a results path ("//etc/passwd"): 404 instead.
    app.url_map.merge_slashes = False

    # The default (same origin only) is kept on purpose: never "*".
    socketio = SocketIO(app, async_mode="threading", logger=False, engineio_logger=False)
    runtime = _acquire_runtime(settings)
    slotrun = Slotrun(settings, runtime, socketio)
    app.extensions["slotrun"] = slotrun

    from . import api, events, insight, views

    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(insight.bp, url_prefix="/api/v1")
    app.register_blueprint(views.bp)
    _register_errors(app)
    events.register(socketio, slotrun)
    insight.register(socketio, slotrun)

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

    @app.after_request
    def _require_authorize(response):
        if (request.endpoint in (None, "static") or request.method == "OPTIONS"
                or response.status_code >= 400 or g.get("slotrun_authorized")):
            return response
        log.error("route %s answered without calling authorize(); refused", request.endpoint)
        return _error_response(500, "internal error: this route has no access rule")

    return app


def _should_start_engine(app):
    explicit = app.config.get("START_ENGINE")
    if explicit is not None:
        return bool(explicit)
    # Under a reloader the watching parent only restarts the child; the child (or the first
    # request anywhere) starts the engine, so two engines never race for the workspace.
    return not (app.debug and os.environ.get("WERKZEUG_RUN_MAIN") != "true")


def _secret_key(workspace):
    from ..scheduler import state_dir

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
}


def _register_errors(app):
    @app.errorhandler(SlotrunError)
    def _slotrun_error(e):
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
