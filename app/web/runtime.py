"""The engine runtime: one store, device inventory and engine per workspace per process.

Every app built in this process for the same workspace shares one ``Runtime`` (tests build
several apps; gunicorn builds one). The registry counts its users and stops the engine
when the last app closes, so two engines never race for one workspace.
"""

import logging
import os
import threading
import time

from ..devices import open_inventory
from ..executors import claim_orphans
from ..executors.ray_inventory import make_inventory, watch_nodes
from ..notify import Notifier, StorePreferences
from ..paths import state_db
from ..scheduler import Engine
from ..store import NotifyStore, Store

log = logging.getLogger(__name__)

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
        self.claim_orphans = False  # set by a served app (not under test): see ensure_started
        self.engine = None
        self.notifier = None
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
                if self.claim_orphans:  # the serving process reaps its tasks' orphans
                    claim_orphans(self.settings)
                # Told of every engine event; sends from its own threads, never the engine's.
                notifier = Notifier(self.settings, self.store,
                                    StorePreferences(NotifyStore(self.store))).start()
                self.notifier = notifier
                self._listeners = self._listeners + [notifier.publish]  # (the lock is held)
                engine = Engine(self.settings, self.store, self.inventory, publish=self.publish)
                try:
                    engine.start()
                except BaseException:
                    self._listeners = [f for f in self._listeners if f is not notifier.publish]
                    notifier.stop()
                    self.notifier = None
                    raise
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
            notifier, self.notifier = self.notifier, None
        if watcher is not None:
            watcher.stop()
        if engine is not None:
            engine.stop(kill_tasks=False)
        if notifier is not None:
            self.remove_listener(notifier.publish)
            notifier.stop()
        try:
            self.inventory.close()
        except Exception:  # noqa: BLE001 - closing a driver must not stop the shutdown
            log.exception("closing the device inventory failed")


def acquire_runtime(settings):
    """Return the workspace's runtime, created on first use, counting one more user."""
    key = os.path.realpath(settings["workspace"])
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            rt = _RUNTIMES[key] = Runtime(settings)
        rt.users += 1
        return rt


def release_runtime(rt):
    """Count one user less; the last one stops the engine."""
    key = os.path.realpath(rt.workspace)
    with _RUNTIMES_LOCK:
        rt.users -= 1
        last = rt.users <= 0
        if last:
            _RUNTIMES.pop(key, None)
    if last:
        rt.stop()
