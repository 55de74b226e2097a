"""``serve`` on gunicorn and the installed ``slotrun`` command, as a user runs them.

A real ``python -m app serve`` on a loopback port: one clean start-up message, the engine in
the one worker, SIGTERM with a browser's websocket open and a task running (the server stops
cleanly, the task runs on and the next server re-adopts it), and the development server behind
--dev. The console command declared in pyproject.toml: ``slotrun serve``, ``slotrun run``
(the multi-run.py options), ``slotrun users``, ``slotrun token``.
"""

import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
import socketio

from app.gunicorn_app import SlotrunWorker
from tests.helpers import ROOT, ServerProcess, free_port, make_workspace, task_env, wait_for

pytestmark = pytest.mark.slow

SLEEP = '{python} -c "import time; time.sleep(4); print(\'slept\')"'
# Ray gives up on a cluster that does not answer after one short try, not after a minute.
RAY_FAIL_FAST = {"RAY_NUM_REDIS_GET_RETRIES": "1", "RAY_py_gcs_connect_timeout_s": "2",
                 "RAY_gcs_rpc_server_connect_timeout_s": "1"}
CHATTER = ("development server", "production deployment", "Starting gunicorn", "Listening at",
           "Booting worker", "Using worker", "Serving Flask app")


@pytest.fixture
def env(workspace, tmp_path):
    return task_env(SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"),
                    SLOTRUN_AUTH="false", SLOTRUN_KILL_GRACE=2)


def test_serve_is_gunicorn_with_one_message_and_stops_cleanly_on_sigterm(env, workspace, tmp_path):
    server = ServerProcess(tmp_path / "serve.log", env, workspace)
    rec = None
    try:
        out = server.output().strip().splitlines()
        assert out == [f"slotrun dashboard on {server.url}/ (workspace {workspace}, 2 simulated GPU(s)); "
                       "Ctrl-C stops the server, running tasks keep running",
                       "auth is off: everyone on this machine acts as the admin "
                       f"{getpass.getuser()} (the server answers local connections only)"], out
        status = server.api("GET", "/status").json()
        assert status["engine"]["pid"] != server.proc.pid  # in the one worker, not the master
        # A browser's websocket stays open, and a task runs, while the server is stopped.
        rec = socketio.Client(reconnection=False)
        rec.connect(server.url, transports=["websocket"], wait_timeout=10)
        r = server.api("POST", "/batches", json={"pattern": "exp-1-1", "use_gpu": False,
                                                 "overwrite": True, "command": SLEEP})
        tid = r.json()["tasks"][0]["id"]
        def started():
            """Return the task's pid once it runs (the pid is written just after the state)."""
            t = server.api("GET", f"/tasks/{tid}").json()
            return t["state"] == "running" and t["attempts_list"] and t["attempts_list"][0]["pid"]

        pid = wait_for(started, 10)
    finally:
        code = server.stop()  # SIGTERM; the helper would SIGKILL it after 30 s
        if rec is not None:
            rec.disconnect()
    assert code == 0, server.output()
    log = server.output()
    for line in CHATTER:
        assert line not in log, log
    assert "Traceback" not in log, log
    os.kill(pid, 0)  # the task's process outlived the server
    with open(os.path.join(workspace, ".slotrun", "engine.lock")) as f:
        assert f"pid {status['engine']['pid']}" in f.read()
    # The next server re-adopts it and records its end.
    server = ServerProcess(tmp_path / "again.log", env, workspace)
    try:
        wait_for(lambda: server.api("GET", f"/tasks/{tid}").json()["state"] == "succeeded", 15)
        task = server.api("GET", f"/tasks/{tid}").json()
        assert task["attempts"] == 1 and task["last_line"] == "slept"
    finally:
        assert server.stop() == 0


def test_the_development_server_is_behind_dev(env, workspace, tmp_path):
    server = ServerProcess(tmp_path / "dev.log", env, workspace, extra_args=("--dev",))
    try:
        assert server.api("GET", "/status").json()["engine"]["pid"] == server.proc.pid
        assert requests.get(server.url + "/", timeout=10).status_code == 200
        # A second server on the same workspace is refused in one line, before gunicorn starts.
        r = subprocess.run([sys.executable, "-m", "app", "serve", "--workspace", workspace],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"error: workspace {workspace} is already in use by another "
                                   "slotrun engine (pid "), r.stderr
    finally:
        assert server.stop() == 0
    assert server.output().startswith("slotrun dashboard on ")


def test_serve_refuses_bad_options_in_one_line(env, workspace, tmp_path):
    for args, message in ((["--threads", "0"], "--threads must be from 1 to 10000, not 0"),
                          (["--port", "70000"], "--port must be from 1 to 65535, not 70000")):
        r = subprocess.run([sys.executable, "-m", "app", "serve", "--workspace", workspace, *args],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stderr.strip()) == (2, f"error: {message}"), r.stderr


@pytest.mark.parametrize("answering", [False, True], ids=["nothing-listens", "not-a-ray-head"])
def test_serve_with_a_ray_cluster_that_does_not_answer_says_so_in_one_line(env, workspace,
                                                                          answering):
    pytest.importorskip("ray")
    port = free_port()
    listener = None
    if answering:
        # Something accepts the connection but is no Ray head: the preflight's knock passes,
        # and the worker's ray.init fails.
        listener = socket.create_server(("", port))
        threading.Thread(target=lambda: [listener.accept()[0].close() for _ in range(100)],
                         daemon=True).start()
    try:
        r = subprocess.run([sys.executable, "-m", "app", "serve", "--workspace", workspace,
                            "--port", str(free_port()), "--executor", "ray",
                            "--ray-address", f"127.0.0.1:{port}"],
                           env={**env, **RAY_FAIL_FAST}, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    finally:
        if listener is not None:
            listener.close()
    errors = [line for line in r.stderr.splitlines()
              if not re.match(r"\[\d{4}-\d\d-\d\d [\d:,]+ W \d+ \d+\]", line)]  # Ray's retries
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert errors[0].startswith(f"error: cannot connect to the Ray cluster at '127.0.0.1:{port}'")
    assert "Traceback" not in r.stderr and "[ERROR]" not in r.stderr and not r.stdout, r.stderr
    if not answering:
        assert "Connection refused" in errors[0] and "ray start --head" in errors[0]


def installed_slotrun():
    """Return the path of the installed ``slotrun`` command, or skip."""
    path = shutil.which("slotrun") or os.path.join(os.path.dirname(sys.executable), "slotrun")
    if not os.path.exists(path):
        pytest.skip("the slotrun command is not installed (pip install -e .)")
    return path


def test_the_slotrun_command(workspace, tmp_path):
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"] == {"slotrun": "app.cli:console"}
    slotrun = installed_slotrun()
    env = task_env()
    env.pop("SLOTRUN_FAKE_GPUS", None)
    ws = make_workspace(tmp_path / "elsewhere")

    def run(*args, stdin=None):
        return subprocess.run([slotrun, *args], env=env, cwd=ws, input=stdin, capture_output=True,
                              text=True, timeout=60)

    r = run("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: slotrun ")
    for command in ("run", "serve", "users", "token"):
        assert re.search(rf"^\s+{command}\s", r.stdout, re.M), command
    # slotrun run takes multi-run.py's options, in the current folder: no path to a script.
    r = run("run", "-c", "exp-1-[12]", "-gpu", "false", "-check", "false")
    assert r.returncode == 0, r.stderr
    assert "Summary: 2 succeeded, 0 failed, 0 skipped" in r.stdout
    r = run("run", "-c", "exp-(")
    assert r.returncode == 2 and r.stderr.startswith("error: invalid regular expression")
    assert run("users", "add", "ada", "--role", "admin", "--password-stdin",
               stdin="pw-ada-1234\n").returncode == 0
    assert run("users", "list").stdout == "ada\tadmin\n"
    token = run("token", "create", "ada").stdout.strip().splitlines()[-1]
    assert token.startswith("srt_")
    r = run("serve", "--help")
    assert r.returncode == 0 and "--dev" in r.stdout and "--threads" in r.stdout


def test_a_stop_signal_while_a_request_is_handed_to_the_pool_stops_the_worker():
    """SIGTERM may land while the worker's main thread holds its thread pool's lock (handing a
    request over): the handler must end the worker, not wait for that lock forever."""
    worker = SlotrunWorker.__new__(SlotrunWorker)  # gunicorn's worker, as far as the handlers use it
    worker.alive = True
    worker.tpool = ThreadPoolExecutor(max_workers=1)
    worker.cfg = SimpleNamespace(worker_int=lambda w: None)
    ended = []

    def main_thread():
        for handler in (worker.handle_exit, worker.handle_quit):
            try:
                with worker.tpool._shutdown_lock:  # where submit() is when the signal lands
                    handler(15, None)
            except SystemExit as e:
                ended.append(e.code)

    t = threading.Thread(target=main_thread, daemon=True)  # a deadlock must not hang the suite
    t.start()
    t.join(5)
    assert ended == [0, 0] and not worker.alive
    worker.tpool.shutdown(wait=False)
