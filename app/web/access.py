"""What a user may do: the actions every route and event names, ``authorize``, and the
request hooks that refuse strangers, check CSRF and refuse a route that skipped its check.
"""

import logging

from flask import g, has_request_context, request

from ..accounts import can
from ..errors import Forbidden, Unauthorized
from .auth import check_csrf, current_user, is_loopback, signed_in_by_token
from .errors import error_response

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Every action a route or Socket.IO event may ask ``authorize`` about, and the accounts action
# (``app.accounts.can``) it needs; None: open to anyone (the login and set-up pages). An
# unknown name is a programming error.
ACTIONS = {
    "page.view": "read", "status.read": "read", "config.read": "read", "device.read": "read",
    "batch.read": "read", "task.read": "read", "log.read": "read", "files.read": "read",
    "socket.connect": "read", "log.follow": "read",
    "batch.create": "submit", "sweep.create": "submit", "sweep.preview": "read",
    "results.read": "read", "notify.read": "tokens", "notify.update": "tokens",
    "notify.test": "tokens",
    "batch.cancel": "cancel", "task.cancel": "cancel", "task.retry": "retry",
    "device.update": "slots", "queue.pause": "queue", "queue.resume": "queue",
    "batch.priority": "priority",
    "account.read": "tokens", "token.create": "tokens", "token.revoke": "tokens",
    "password.change": "tokens",
    "user.read": "users", "user.update": "users", "user.remove": "users",
    "invite.create": "users", "invite.revoke": "users",
    "auth.login": None, "auth.logout": None, "auth.setup": None, "auth.join": None,
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


def authorize(action, resource=None):
    """Check that the current user may do ``action`` on ``resource``; raise if not.

    The single place where access is decided: every route and every Socket.IO event calls
    it with the record it acts on (a task or batch dict carries its ``owner``). Nobody
    signed in: Unauthorized (401); signed in without the right: Forbidden (403). A route
    that never calls it is refused with a 500 (see ``require_authorize``), so a new route
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
        raise Unauthorized(sign_in_message())
    owner = resource.get("owner") if isinstance(resource, dict) else None
    if not can(user, need, owner):
        raise Forbidden(_refusal(user, need, action, owner))
    return True


def sign_in_message():
    """Return what a stranger should do: sign in, or fix the API token sent."""
    if signed_in_by_token():
        return ("the API token is not valid (revoked, or mistyped); create one with: "
                "slotrun token create NAME")
    return ("sign in first: log in at /login, or send Authorization: Bearer TOKEN "
            "(create one with: slotrun token create NAME)")


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


def check_access(slotrun, app):
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
        raise Unauthorized(sign_in_message())
    if request.method not in SAFE_METHODS and not signed_in_by_token() \
            and request.endpoint is not None:
        # Bearer-token calls are exempt: a browser never adds that header on its own.
        check_csrf()


def require_authorize(response):
    """After any route: refuse (500) an answer from a route that never called ``authorize``."""
    if (request.endpoint in (None, "static") or request.method == "OPTIONS"
            or response.status_code >= 400 or g.get("slotrun_authorized")):
        return response
    log.error("route %s answered without calling authorize(); refused", request.endpoint)
    return error_response(500, "internal error: this route has no access rule")
