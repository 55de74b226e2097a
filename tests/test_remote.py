"""multi-run.py --server URL against a real server with accounts on: the same console lines
as a local run, and one clear error line for a missing, wrong or read-only token."""

import os
import subprocess
import sys

import pytest

from app.accounts import Accounts
from app.store import Store
from tests.helpers import ROOT, ServerProcess, make_workspace, task_env

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
