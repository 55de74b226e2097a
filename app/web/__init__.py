"""The web layer: the only package that imports Flask and Flask-SocketIO.

One file per concern:

- ``factory``: ``build_app``, the Flask app with its blueprints, hooks and engine
- ``runtime``: the workspace's store, devices and engine, one per process, shared by apps
- ``extension``: the ``Slotrun`` object of one app (``get_slotrun()``): what routes share
- ``auth``: who is asking (sessions, API tokens, CSRF, Socket.IO sign-ins)
- ``access``: what they may do (``ACTIONS``, ``authorize``, the request hooks)
- ``errors``: errors as JSON under /api, as a page in the browser
- ``secret_key``, ``redaction``: the session key file; secrets kept out of the logs
- ``api``: the JSON API under /api/v1; ``views``: the HTML pages
- ``events``: Socket.IO handlers, the event emitter and the log pusher threads
- ``insight``: device history, batch timelines and memory suggestions
- ``sweeps_api``, ``results_api``, ``sweep_pages``: sweeps, results tables and their pages
- ``notify_api``: each user's notification settings (webhook, e-mail, events)

This module only re-exports what code outside the package uses.
"""

from .access import ACTIONS, authorize, public
from .auth import csrf_token, current_user, safe_next
from .errors import wants_json
from .extension import VERSION, get_slotrun
from .factory import build_app

__all__ = ["ACTIONS", "VERSION", "authorize", "build_app", "csrf_token", "current_user",
           "get_slotrun", "public", "safe_next", "wants_json"]
