"""Shared test helpers: polling with a timeout, workspaces, free ports."""

import os
import shutil
import socket
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
