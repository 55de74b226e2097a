"""``slotrun serve`` on gunicorn: one worker with threads, the engine in the worker.

A ``gunicorn.app.base.BaseApplication`` subclass keeps ``serve``'s own options (no gunicorn
command line to learn) and the rules of the deployment the README documents: exactly one
worker, because the engine lives in it; never ``preload`` (the app, and so the engine, is built
in the worker, not in the master); threads, because each open browser holds one for its
websocket. SIGTERM stops it as Ctrl-C does: the worker closes the browsers' connections,
stops the engine (running tasks keep running, to be re-adopted by the next server) and exits.
A start-up error found in the worker (a Ray cluster that does not answer as one) is handed to
the serving process through a pipe and raised there: one ``error: ...`` line, as for the errors
found before the fork, instead of a traceback and gunicorn's own shutdown lines.
"""

import os
import select
import signal
import sys
import time

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from . import create_app
from .errors import SlotrunError


class SlotrunWorker(ThreadWorker):
    """gunicorn's threaded worker, stopping at once on SIGTERM as on SIGINT and SIGQUIT.

    Its graceful stop would wait for every open connection, and a browser's websocket stays
    open as long as the page does: the server would hang for ``graceful_timeout``. Its own
    immediate stop shuts the thread pool down inside the signal handler; a signal that lands
    while the main thread is handing a request to the pool (holding the pool's lock) then
    waits for that lock forever, and the server never stops. Here the handler only ends the
    worker; the exit hook shuts the pool down, outside the handler.
    """

    def handle_exit(self, sig, frame):
        """Stop now (SIGTERM)."""
        self._stop_now()

    def handle_quit(self, sig, frame):
        """Stop now (SIGINT, SIGQUIT)."""
        self._stop_now()

    def _stop_now(self):
        self.alive = False
        self.cfg.worker_int(self)
        sys.exit(0)  # unwinds whatever the main thread was in, releasing its locks


def _worker_exit(server, worker):
    """Close the app in the exiting worker: its browsers' connections, then its engine."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
    tpool = getattr(worker, "tpool", None)
    if tpool is not None:
        tpool.shutdown(wait=False)  # no new requests; the running ones end as browsers go
    app = getattr(worker, "slotrun_app", None)
    if app is not None:
        app.extensions["slotrun"].shutdown()


def _post_worker_init(worker):
    """Keep the worker's app where the exit hook finds it, and give the worker its signals
    back: the app's start-up may have taken them (``ray.init`` installs handlers of Ray's
    own for SIGTERM and SIGINT, which print a signal dump and end the worker with status
    15, bypassing the stop above)."""
    worker.slotrun_app = worker.wsgi
    worker.init_signals()


class GunicornServer(BaseApplication):
    """The dashboard served by gunicorn, configured from ``serve``'s options."""

    def __init__(self, config, settings, threads, access_log, log_level, announce):
        self.app_config = config
        self.settings = settings
        self.options = {
            "bind": [_bind(config["host"], config["port"])],
            "workers": 1,  # the engine lives in the worker: exactly one
            "worker_class": SlotrunWorker,
            "threads": threads,
            "preload_app": False,  # the engine must start in the worker, never in the master
            "timeout": 60,
            "graceful_timeout": int(float(settings["kill_grace"])) + 15,
            "loglevel": log_level,  # "warning": no start-up chatter of gunicorn's own
            "accesslog": "-" if access_log else None,
            "errorlog": "-",
            "proc_name": "slotrun",
            "worker_exit": _worker_exit,
            "post_worker_init": _post_worker_init,
        }
        self.announce = announce
        self._boot_error_r, self._boot_error_w = os.pipe()
        self._serving_pid = os.getpid()
        super().__init__(prog="slotrun serve")

    def run(self):
        """Serve until stopped; raise a start-up error of the worker here, as a SlotrunError."""
        try:
            super().run()
        except SystemExit:
            if os.getpid() != self._serving_pid:
                raise  # the worker's own exit, on its way out of the forked call stack
            message = self._boot_error()
            if message:
                raise SlotrunError(message) from None
            raise

    def _boot_error(self):
        """Return the start-up error the worker sent, or None."""
        ready, _, _ = select.select([self._boot_error_r], [], [], 0)
        return os.read(self._boot_error_r, 4096).decode(errors="replace") if ready else None

    def load_config(self):
        """Apply the options (not gunicorn's command line, nor a config file)."""
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        """Build the app, and with it the engine, in the worker; print the start-up message."""
        try:
            app = create_app(self.app_config)
        except SlotrunError as e:
            # A worker that fails to boot makes gunicorn print a traceback and its own lines:
            # the serving process stops instead (SIGTERM), then reports the message.
            # Ray's handler would make the worker's end an error of gunicorn's: exit quietly.
            signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
            os.write(self._boot_error_w, e.message.encode()[:4096])
            os.kill(os.getppid(), signal.SIGTERM)
            while True:
                time.sleep(1)  # until the serving process's SIGTERM ends this worker
        self.announce(app)
        return app


def _bind(host, port):
    """Return gunicorn's bind address ("[::1]:5000" for IPv6)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
