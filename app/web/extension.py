"""The slotrun extension of one Flask app (``app.extensions["slotrun"]``): what its routes,
pages and Socket.IO events share.

It holds the settings, the workspace's engine runtime, the Socket.IO server, the web
threads (emitter, log pusher, insight) and the sign-in state (accounts, the set-up link,
the connected clients' sign-ins). ``get_slotrun()`` finds it from a request.
"""

import getpass
import os
import threading
import time
from urllib.parse import quote

from flask import current_app

from ..accounts import Accounts, Invites
from ..version import __version__
from .runtime import release_runtime

VERSION = __version__  # for the pages and the API; the one number is app/version.py


class Slotrun:
    """What the routes and events of one app share: settings, runtime, Socket.IO, threads."""

    def __init__(self, settings, runtime, socketio):
        self.settings = settings
        self.runtime = runtime
        self.socketio = socketio
        self.clients = set()  # connected Socket.IO sids
        self.emitter = None
        self.logs = None
        self.insight = None
        self._figures = None
        self._figures_at = 0.0
        self._figures_lock = threading.Lock()
        self._closed = False
        self.auth = bool(settings.get("auth", True))
        self.secret_key = None
        self.local_user = {"id": None, "name": _os_user(), "role": "admin"}
        self.setup_token = None  # the one-time first-admin link, while no user exists
        self.setup_lock = threading.Lock()
        self.sockets = {}  # sid -> how the client signed in (never the token itself)
        self.sockets_lock = threading.Lock()
        self._accounts = None
        self._invites = None

    @property
    def accounts(self):
        """Return the workspace's users and tokens."""
        if self._accounts is None:
            self._accounts = Accounts(self.runtime.store)
        return self._accounts

    @property
    def invites(self):
        """Return the workspace's invite links."""
        if self._invites is None:
            self._invites = Invites(self.runtime.store)
        return self._invites

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

    def shutdown(self):
        """Close every browser's live connection, then this app (running tasks keep running)."""
        for sid in list(self.clients):
            try:
                self.socketio.server.disconnect(sid, namespace="/")
            except Exception:  # noqa: BLE001 - it may have gone meanwhile
                pass
        self.close()

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
        if self.insight is not None:
            self.insight.stop()
        release_runtime(self.runtime)


def _os_user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def get_slotrun():
    """Return the current app's Slotrun object."""
    return current_app.extensions["slotrun"]
