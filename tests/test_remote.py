"""multi-run.py --server URL against a real server with accounts on: the same console lines
as a local run, and one clear error line for a missing, wrong or read-only token."""

import os
import subprocess
import sys
import time

import pytest

from app.accounts import Accounts
from app.store import Store
from tests.helpers import ROOT, ServerProcess, make_workspace, task_env, wait_for

pytestmark = pytest.mark.slow


def multi_run(ws, *args, **extra):
    env = task_env(SLOTRUN_SIM_TIME=0.2)
    for name in ("SLOTRUN_TOKEN", "SLOTRUN_WORKSPACE", "SLOTRUN_FAKE_GPUS"):
        env.pop(name, None)
    env.update(extra)
    return subprocess.run([sys.executable, os.path.join(ROOT, "multi-run.py"), *args], cwd=ws,
                          env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server (one CPU slot) with a member's and a viewer's token."""
    base = tmp_path_factory.mktemp("remote")
    ws = make_workspace(base / "server-ws")
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    acc.add_user("mia", "member", "pw-mia-123")
    acc.add_user("vic", "viewer", "pw-vic-123")
    srv = ServerProcess(base / "server.log", task_env(
        PYTHONUNBUFFERED=1, SLOTRUN_AUTH="true", SLOTRUN_CPU_SLOTS=1, SLOTRUN_SIM_TIME=0.2,
        SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu")), ws, ready_status=401)
    srv.base = base
    srv.member = acc.create_token("mia", "cli")[1]
    srv.viewer = acc.create_token("vic", "cli")[1]
    try:
        yield srv
    finally:
        srv.stop()


def test_remote_run_prints_what_a_local_run_prints(server):
    local_ws = make_workspace(server.base / "local-ws")
    local = multi_run(local_ws, "-c", "exp-1", "-gpu", "false", "-d", "1", "-check", "false")
    assert local.returncode == 0, local.stderr
    remote = multi_run(str(server.base), "-c", "exp-1", "-gpu", "false", "-check", "false",
                       "--server", server.url, SLOTRUN_TOKEN=server.member)
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert remote.stdout.splitlines() == local.stdout.splitlines()
    assert remote.stdout.splitlines()[-1] == "Summary: 3 succeeded, 0 failed, 0 skipped"
    assert remote.stderr == ""
    # The batch ran on the server, as the token's user.
    batches = server.api("GET", "/batches", token=server.member).json()["batches"]
    assert batches[0]["owner"] == "mia" and batches[0]["counts"]["succeeded"] == 3
    # Run again: the server skips what is complete, as a local run does.
    again = multi_run(str(server.base), "-c", "exp-1-1", "-gpu", "false", "-check", "false",
                      "--server", server.url, SLOTRUN_TOKEN=server.member)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "Skip configs/exp-1/exp-1-1.yaml (results already complete; -w true reruns it)",
        "Summary: 0 succeeded, 0 failed, 1 skipped"]


@pytest.mark.parametrize("token, words", [
    (None, "set SLOTRUN_TOKEN to an API token of the server"),
    ("srt_1_not-a-real-token", "refused the token in SLOTRUN_TOKEN"),
    ("viewer", "is a viewer (read-only) and may not start batches"),
])
def test_remote_run_with_a_bad_token_says_so_in_one_line(server, token, words):
    env = {} if token is None else {
        "SLOTRUN_TOKEN": server.viewer if token == "viewer" else token}
    r = multi_run(str(server.base), "-c", "exp-1", "-gpu", "false", "-check", "false",
                  "--server", server.url, **env)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    if token and token != "viewer":
        assert token not in r.stderr  # the secret is never echoed


def test_remote_run_follows_a_bulk_notice_instead_of_hanging(tmp_path):
    """Over 1000 changes in one flush reach clients as one "tasks" notice, not one "task"
    event each: the command fetches the batch's states then, and ends without waiting."""
    from tests.test_server import Recorder

    ws = make_workspace(tmp_path / "ws")
    folder = os.path.join(ws, "configs", "bulk")
    os.makedirs(folder)
    for i in range(2500):
        with open(os.path.join(folder, f"b-{i}.yaml"), "w") as f:
            f.write("model_params:\n  name: circle\n  radius: 1.0\n")
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    acc.add_user("mia", "member", "pw-mia-123")
    token = acc.create_token("mia", "cli")[1]
    srv = ServerProcess(tmp_path / "server.log", task_env(
        PYTHONUNBUFFERED=1, SLOTRUN_AUTH="true", SLOTRUN_CPU_SLOTS=0,
        SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu")), ws, ready_status=401)
    rec = proc = None
    try:
        rec = Recorder(srv.url, auth={"token": token})
        env = task_env()
        for name in ("SLOTRUN_WORKSPACE", "SLOTRUN_FAKE_GPUS"):
            env.pop(name, None)
        env["SLOTRUN_TOKEN"] = token
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "configs/bulk/", "-gpu",
             "false", "-check", "false", "--server", srv.url], cwd=str(tmp_path), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def batch():
            b = srv.api("GET", "/batches", token=token).json()["batches"]
            return b and b[0]["id"]

        batch_id = wait_for(batch, 30)
        wait_for(lambda: rec.named("tasks"), 10)  # the submit's notice (2500 queued)
        seen = len(rec.named("tasks"))
        r = srv.api("POST", f"/batches/{batch_id}/cancel", token=token,
                    headers={"Content-Type": "application/json"})
        assert r.json()["cancelled"] == 2500
        out, err = proc.communicate(timeout=20)  # well under the 30 s periodic resync
        assert any(batch_id in n["batches"] for n in rec.named("tasks")[seen:]), \
            "the ends were not sent as a bulk notice: the test did not test it"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if rec is not None:
            rec.close()
        srv.stop()
    assert proc.returncode == 1, err
    assert out.splitlines()[-1] == "Summary: 0 succeeded, 0 failed, 0 skipped, 2500 cancelled"
