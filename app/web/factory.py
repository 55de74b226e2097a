"""The app factory: ``build_app`` makes the Flask app with its API, pages, Socket.IO events,
sign-in rules and error pages, and starts the workspace's engine once per process."""

import logging
import os
import secrets
import sys
import time
from datetime import timedelta

from flask import Flask
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from .. import pattern_helper
from .. import settings as settings_mod
from . import api, events, insight, notify_api, results_api, sweep_pages, sweeps_api, views
from . import errors as web_errors
from .access import check_access, require_authorize
from .auth import (LOGIN_LIMIT_PER_ADDRESS, LOGIN_LIMIT_PER_NAME, LOGIN_WINDOW, Sessions,
                   init_auth, limit_sign_ins)
from .extension import Slotrun
from .redaction import install_log_redaction
from .runtime import acquire_runtime
from .secret_key import load_secret_key
from .websocket_close import install_websocket_close_hook

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_CONTENT_LENGTH = 1024 * 1024  # a batch is a pattern, not a list: 1 MiB is plenty
SESSION_LIFETIME = timedelta(hours=12)  # idle limit: every request pushes it forward


class IdConverter(IntegerConverter):
    """A positive id that fits SQLite's integer (larger numbers never match: 404)."""

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=2**63 - 1)


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
        SECRET_KEY=settings.get("secret_key") or load_secret_key(settings["workspace"]),
        # Cookies are shared by every port of a host: one name per port keeps two servers apart.
        SESSION_COOKIE_NAME=f"slotrun_session_{settings.get('port', 5000)}",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        SESSION_REFRESH_EACH_REQUEST=True,
    )
    app.config.update({k: v for k, v in config.items() if not k.islower()})
    app.session_interface = Sessions()
    app.json.sort_keys = False  # keep fields in their documented order (id first)
    app.add_template_filter(_timestamp, "timestamp")
    app.url_map.converters["id"] = IdConverter
    # A doubled slash must not be redirected into a results path ("//etc/passwd"): 404 instead.
    app.url_map.merge_slashes = False

    # The default (same origin only) is kept on purpose: never "*".
    socketio = SocketIO(app, async_mode="threading", logger=False, engineio_logger=False)
    if settings.get("trust_proxy"):
        # Only behind a reverse proxy that sets these headers: X-Forwarded-Proto then makes
        # the session cookie Secure, X-Forwarded-For is the address logins are limited by.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    install_log_redaction()
    install_websocket_close_hook()
    runtime = acquire_runtime(settings)
    slotrun = Slotrun(settings, runtime, socketio)
    slotrun.secret_key = app.config["SECRET_KEY"]
    app.extensions["slotrun"] = slotrun
    init_auth(app)
    if slotrun.auth and not slotrun.accounts.has_users():
        slotrun.setup_token = secrets.token_urlsafe(24)
        if app.config.get("ANNOUNCE_SETUP", not app.testing):
            # Under gunicorn this reaches its error log; `slotrun serve` prints its own.
            print(f"slotrun: no account exists yet; create the first admin at "
                  f"{slotrun.setup_url('http://HOST:PORT')} (or run: slotrun users add "
                  "NAME --role admin)", file=sys.stderr, flush=True)

    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(insight.bp, url_prefix="/api/v1")
    app.register_blueprint(sweeps_api.bp, url_prefix="/api/v1")
    app.register_blueprint(results_api.bp, url_prefix="/api/v1")
    app.register_blueprint(notify_api.bp, url_prefix="/api/v1")
    app.register_blueprint(views.bp)
    app.register_blueprint(sweep_pages.bp)
    web_errors.register(app, views.bootstrap)
    events.register(socketio, slotrun)
    insight.register(socketio, slotrun)

    if not app.testing:
        pattern_helper.warm()
        runtime.claim_orphans = True
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
        check_access(slotrun, app)

    @app.after_request
    def _after(response):
        _security_headers(response)
        return require_authorize(response)

    # After the hooks above, so that a stranger or a missing CSRF token is refused first.
    limit_sign_ins(app, views.login_refused, views.setup_refused,
                   per_name=app.config.get("LOGIN_LIMIT_PER_NAME", LOGIN_LIMIT_PER_NAME),
                   per_address=app.config.get("LOGIN_LIMIT_PER_ADDRESS", LOGIN_LIMIT_PER_ADDRESS),
                   window=app.config.get("LOGIN_WINDOW", LOGIN_WINDOW))
    return app


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
