"""A real server on a loopback port, driven over HTTP and a real Socket.IO websocket client.

One test runs ``python -m app serve`` (the Werkzeug server), one runs the README's gunicorn
command; both on 4 simulated GPUs in a fresh workspace.
"""

import http.client
import io
import os
import sys
import threading
import zipfile

import pytest
import requests
import socketio

from tests.helpers import ServerProcess, free_port, task_env, wait_for

pytestmark = pytest.mark.slow

LINES_CMD = ('{python} -c "import time\nfor i in range(30):\n    print(\'line\', i, flush=True)\n'
             '    time.sleep(0.02)"')


class Recorder:
    """A python-socketio client over websocket that keeps every event it receives."""

    def __init__(self, url, **kwargs):
        self.events = []
        self.lock = threading.Lock()
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", self._any)
        self.client.connect(url, transports=["websocket"], wait_timeout=10, **kwargs)

    def _any(self, event, *args):
        with self.lock:
            self.events.append((event, args[0] if args else None))

    def named(self, name):
        """Return the payloads received so far for one event name."""
        with self.lock:
            return [p for e, p in self.events if e == name]

    def tasks(self):
        """Return every task change received so far (the items of each "task_list")."""
        return [t for x in self.named("task_list") for t in x["tasks"]]

    def close(self):
        """Disconnect."""
        if self.client.connected:
            self.client.disconnect()


@pytest.fixture
def env(workspace, tmp_path):
    """The environment of a server with 4 simulated GPUs on the test's workspace."""
    # Accounts off (loopback only): the two-user runs with accounts are in test_access.
    return task_env(SLOTRUN_FAKE_GPUS=4, SLOTRUN_SIM_TIME=0.2, SLOTRUN_WORKSPACE=workspace,
                    SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"), PYTHONUNBUFFERED=1,
                    SLOTRUN_AUTH="false")


def task_states(rec, ids):
    """Return {task id: [states seen]} once every task has reached a final state."""
    states = {}
    for t in rec.tasks():
        states.setdefault(t["id"], []).append(t["state"])
    done = set(states) >= ids and all(
        states[i][-1] in ("succeeded", "failed", "cancelled", "interrupted") for i in ids)
    return states if done else None


def test_real_server_end_to_end(env, workspace, tmp_path):
    port = free_port()
    server = ServerProcess(tmp_path / "server.log", env, workspace, port)
    rec = None
    try:
        rec = Recorder(server.url)
        assert rec.client.transport() == "websocket"
        wait_for(lambda: rec.named("devices"), 5)
        assert [d["id"] for d in rec.named("devices")[0]["devices"]] == \
            ["gpu0", "gpu1", "gpu2", "gpu3", "cpu"]

        # Submit over HTTP; every state change of every task arrives over Socket.IO.
        r = server.api("POST", "/batches", json={"pattern": "exp", "use_gpu": True})
        assert r.status_code == 201, r.text
        batch = r.json()
        ids = {t["id"] for t in batch["tasks"]}
        assert len(ids) == 11
        states = wait_for(lambda: task_states(rec, ids), 30, message="not every task finished")
        assert all(s == ["queued", "running", "succeeded"] for s in states.values()), states
        finished = wait_for(lambda: [b for b in rec.named("batch")
                                     if b["id"] == batch["id"] and b["finished"]], 5)
        assert finished[-1]["counts"]["succeeded"] == 11

        # Follow a log from before its task starts until it ends.
        assert server.api("POST", "/queue/pause", json={}).json() == {"paused": True}
        r = server.api("POST", "/batches", json={"pattern": "exp-1-1", "use_gpu": False,
                                                 "overwrite": True, "command": LINES_CMD})
        tid = r.json()["tasks"][0]["id"]
        assert rec.client.call("follow", {"task": tid}, timeout=10) == {"ok": True, "task": tid}
        server.api("POST", "/queue/resume", json={})
        wait_for(lambda: task_states(rec, {tid}), 20)
        full = server.api("GET", f"/tasks/{tid}/log/download").text
        assert full == "".join(f"line {i}\n" for i in range(30))

        def pushed():
            logs = [m for m in rec.named("log") if m["task"] == tid]
            start = max(i for i, m in enumerate(logs) if m["reset"])
            return "".join(m["data"] for m in logs[start:])

        wait_for(lambda: pushed() == full, 5, message="the followed tail never matched the log")

        # The batch's results, as one streamed zip.
        r = requests.get(f"{server.url}/api/v1/batches/{batch['id']}/results.zip", timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            names = set(z.namelist())
            assert z.read("exp-1/exp-1-1/area.txt").strip() == b"3.141592653589793"
        configs = [t["config"] for t in batch["tasks"]]
        expected = {f"{c[len('configs/'):-len('.yaml')]}/{f}" for c in configs
                    for f in (".done", "area.txt", "meta.json", "metrics.json")}
        assert names == expected

        # Raw paths (no client-side normalisation) cannot leave the results folder.
        for raw in ("../../../../etc/passwd", "%2e%2e/%2e%2e/exp-1-2/area.txt", "..%2f..%2fx"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/api/v1/tasks/{tid}/files/{raw}")
            resp = conn.getresponse()
            assert resp.status == 404, raw
            assert b"root:" not in resp.read()
            conn.close()

        # A page from another origin may not open a Socket.IO connection.
        with pytest.raises(socketio.exceptions.ConnectionError):
            Recorder(server.url, headers={"Origin": "http://evil.example"})
    finally:
        if rec is not None:
            rec.close()
        code = server.stop()
    assert code == 0, server.output()
    assert "slotrun dashboard on http://127.0.0.1:" in server.output()


def test_gunicorn_serves_websockets_and_one_engine(env, workspace, tmp_path):
    port = free_port()
    server = ServerProcess(tmp_path / "gunicorn.log", env, port=port, argv=[
        sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "50",
        "-b", f"127.0.0.1:{port}", "app:create_app()"])
    rec = None
    try:
        status = server.api("GET", "/status").json()
        worker = status["engine"]["pid"]
        assert worker != server.proc.pid  # the engine lives in the worker, not the master
        with open(os.path.join(workspace, ".slotrun", "engine.lock")) as f:
            assert f.read().startswith(f"pid {worker}:")

        rec = Recorder(server.url)
        assert rec.client.transport() == "websocket"
        r = server.api("POST", "/batches", json={"pattern": "exp-1"})
        assert r.status_code == 201, r.text
        ids = {t["id"] for t in r.json()["tasks"]}
        states = wait_for(lambda: task_states(rec, ids), 30, message="tasks did not finish")
        assert all(s[-1] == "succeeded" for s in states.values()), states
        wait_for(lambda: rec.named("queue") and rec.named("queue")[-1]["counts"]["succeeded"] == 3,
                 5)
        assert server.api("GET", "/status").json()["engine"]["pid"] == worker
    finally:
        if rec is not None:
            rec.close()
        server.stop()


def test_restart_keeps_running_tasks_and_clients_catch_up(env, workspace, tmp_path):
    port = free_port()
    server = ServerProcess(tmp_path / "first.log", env, workspace, port)
    try:
        r = server.api("POST", "/batches", json={
            "pattern": "exp-1-1", "use_gpu": False,
            "command": '{python} -c "import time; time.sleep(3); print(\'slept\')"'})
        tid = r.json()["tasks"][0]["id"]
        wait_for(lambda: server.api("GET", f"/tasks/{tid}").json()["state"] == "running", 10)
    finally:
        assert server.stop() == 0, server.output()
    # The task outlived the server; the next server re-adopts it and reports its end live.
    server = ServerProcess(tmp_path / "second.log", env, workspace, port)
    rec = None
    try:
        rec = Recorder(server.url)
        state = server.api("GET", f"/tasks/{tid}").json()["state"]
        assert state in ("running", "succeeded")
        wait_for(lambda: server.api("GET", f"/tasks/{tid}").json()["state"] == "succeeded", 15)
        assert server.api("GET", f"/tasks/{tid}/log").json()["data"] == "slept\n"
        assert server.api("GET", f"/tasks/{tid}").json()["attempts"] == 1
        if state == "running":  # it ended while this client watched: the end came live
            wait_for(lambda: any(t["id"] == tid and t["state"] == "succeeded"
                                 for t in rec.tasks()), 5)
    finally:
        if rec is not None:
            rec.close()
        server.stop()
