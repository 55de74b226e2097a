"""Shared test helpers: polling with a timeout, workspaces, free ports, a real server process
and Debian's Chromium for the browser tests."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSER_TIMEOUT_MS = 20000  # what a page's action or expect() may wait for before failing


def wait_for(condition, timeout=10.0, interval=0.01, message=None):
    """Poll ``condition()`` until it returns a truthy value; return that value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def make_workspace(path, configs=True):
    """Copy run.py, models/ and (optionally) the sample configs into a fresh workspace."""
    os.makedirs(path, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "run.py"), os.path.join(path, "run.py"))
    shutil.copytree(os.path.join(ROOT, "models"), os.path.join(path, "models"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    if configs:
        shutil.copytree(os.path.join(ROOT, "configs"), os.path.join(path, "configs"))
    else:
        os.makedirs(os.path.join(path, "configs"), exist_ok=True)
    return str(path)


def free_port():
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_env(**extra):
    """Return an environment for child processes: fast simulated models, repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("SLOTRUN_SIM_TIME", "0.2")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class ServerProcess:
    """A real server subprocess on a loopback port; its output goes to a file (a full pipe
    would block it).

    By default it runs ``python -m app serve --port PORT [--workspace WORKSPACE] EXTRA_ARGS``
    from the repository root; ``argv`` replaces that command (e.g. gunicorn), ``cwd`` the folder.
    It counts as up once ``GET /api/v1/status`` answers ``ready_status`` (200 with accounts off,
    401 with accounts on). ``stop()`` sends ``stop_signal``; ``start()`` starts it again.
    """

    def __init__(self, log_path, env, workspace=None, port=None, *, extra_args=(), argv=None,
                 cwd=ROOT, ready_status=200, stop_signal=signal.SIGTERM, start=True):
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.workspace = workspace
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.ready_status = ready_status
        self.stop_signal = stop_signal
        if argv is None:
            argv = [sys.executable, "-m", "app", "serve", "--port", str(self.port)]
            if workspace is not None:
                argv += ["--workspace", str(workspace)]
            argv += list(extra_args)
        self.argv = argv
        self.proc = None
        if start:
            self.start()

    def start(self, timeout=30):
        """Start the server and wait until its API answers; a server that fails is stopped."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for(self._ready, timeout, interval=0.1, message="server did not start")
        except BaseException as e:
            self.stop()  # never leave a half-started server behind
            if isinstance(e, AssertionError):
                raise AssertionError(f"{e}\n{self.output()}") from None
            raise

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}: {self.output()}")
        try:
            return requests.get(self.url + "/api/v1/status", timeout=5).status_code == \
                self.ready_status
        except requests.RequestException:  # not listening yet, or slow to answer on a busy host
            return False

    def output(self):
        """Return what the server printed so far."""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def api(self, method, path, token=None, **kwargs):
        """Call the JSON API (with a bearer token when given); return the response."""
        if token:
            kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"Bearer {token}"}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.url + "/api/v1" + path, **kwargs)

    def json_api(self, method, path, body=None, token=None, timeout=10):
        """Call the JSON API with an optional JSON body; return (status, parsed JSON)."""
        r = self.api(method, path, token=token, timeout=timeout,
                     data=None if body is None else json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        return r.status_code, json.loads(r.content or b"null")

    def stop(self):
        """Stop the server the way its operator would; return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                # gunicorn bounds its own stop by graceful_timeout (kill_grace + 15 s, 20 s by
                # default): wait past it, so that a slow stop on a loaded machine is told
                # apart from a stop that never comes.
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# -- Debian's Chromium for the browser tests (Playwright's own browser download is not used) ---

CHROMIUM = "/usr/bin/chromium"
# Flags checked on the project's machines (see shared ENVIRONMENT-NOTES): without the
# background-networking ones Chromium keeps trying to reach outside hosts.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def launch_chromium(playwright):
    """Launch Debian's Chromium headless through a Playwright instance; return the browser."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def close_apps(apps):
    """Stop the tasks still running in test apps, then close the apps (fixture teardown)."""
    for app in apps:
        s = app.extensions["slotrun"]
        engine = s.runtime.engine
        if engine is not None:
            for t in list(engine.view.running):
                try:
                    engine.cancel_task(t)
                except Exception:  # noqa: BLE001 - it finished meanwhile
                    pass
            wait_for(lambda: not engine.view.running, 15, message="tasks still running at teardown")
        s.close()


@contextlib.contextmanager
def checked_page(browser, **context_options):
    """Yield a fresh page in its own context; JavaScript errors on it fail the test."""
    # Playwright is optional (the browser tests skip without it): imported where used.
    from playwright.sync_api import expect

    # expect() waits 5 s by default: on a loaded 2-core machine a page's fetch or live update
    # can take longer. Waiting longer costs nothing when the condition holds.
    expect.set_options(timeout=BROWSER_TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 860}, **context_options)
    pg = context.new_page()
    pg.set_default_timeout(BROWSER_TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()
    # A failed request (a 404 answer the page handles) is logged too: only real errors count.
    bad = [e for e in errors if not e.startswith("Failed to load resource")
           and "websocket" not in e.lower()]
    assert not bad, f"JavaScript errors on the page: {bad}"
