"""Errors as the web shows them: JSON ``{"error": ...}`` under /api (or for a client that
prefers JSON), an error page in the browser, and a redirect to the login page for a
stranger's page request. The message always names what would have been valid.
"""

import logging
from urllib.parse import quote

from flask import current_app, g, jsonify, redirect, render_template, request
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from ..errors import SlotrunError
from .auth import safe_next

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {
    400: "bad request: the request could not be understood",
    404: "not found: no such page or API route",
    405: "method not allowed",
    429: "too many attempts: wait and try again",
}


def wants_json():
    """Return True when the error should be JSON (API paths, or a client that prefers JSON)."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def error_response(status, message, headers=None):
    """Return the error as JSON or as the error page, with ``status`` and ``headers``."""
    if wants_json():
        response = jsonify(error=message)
    else:
        try:
            page = current_app.extensions["slotrun_error_page"]
            html = render_template("error.html", status=status, message=message,
                                   bootstrap=page())
        except Exception:  # noqa: BLE001 - an error page must render even without templates
            log.exception("rendering the error page failed")
            html = (f"<!doctype html><title>slotrun · {status}</title><h1>{status}</h1>"
                    f"<p>{escape(message)}</p><p><a href='/'>Back to the dashboard</a></p>")
        response = current_app.response_class(html, mimetype="text/html")
    response.status_code = status
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


def register(app, page_context):
    """Render every error of ``app`` as JSON or a page; ``page_context()`` returns what the
    error page starts from (the pages' bootstrap)."""
    app.extensions["slotrun_error_page"] = page_context
    too_large = f"request body too large: at most {app.config['MAX_CONTENT_LENGTH'] // 1024} KiB"

    @app.errorhandler(SlotrunError)
    def _slotrun_error(e):
        if e.status == 401:
            if not wants_json():
                g.slotrun_authorized = "sign-in"  # the redirect to the login page is the answer
                target = request.full_path if request.query_string else request.path
                return redirect(f"{request.script_root}/login?next={quote(safe_next(target))}")
            return error_response(401, e.message, {"WWW-Authenticate": 'Bearer realm="slotrun"'})
        return error_response(e.status, e.message)

    @app.errorhandler(HTTPException)
    def _http_error(e):
        if e.response is not None:
            return e.response  # already answered (a login over its limit: views.login_refused)
        headers = {}
        if e.code == 405 and getattr(e, "valid_methods", None):
            methods = sorted(set(e.valid_methods))
            headers["Allow"] = ", ".join(methods)
            message = f"method {request.method} not allowed here; allowed: {', '.join(methods)}"
        elif e.code == 413:
            message = too_large
        else:
            message = _HTTP_MESSAGES.get(e.code) or (e.name or "error").lower()
        return error_response(e.code or 500, message, headers)

    @app.errorhandler(Exception)
    def _unexpected(e):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error: the request failed; the details are in the "
                                   "server's log")
