"""The tasks table for a team, through the API: owner and text filters, each task's last log
line, bulk cancel and retry on a filter (ownership applied task by task), the cancel answer,
the summary the tiles are drawn from, and what is pushed live (last lines, GPU memory).

Real engines and task processes on a fresh workspace with accounts on: an admin (ada) and two
members (mia, otto).
"""

import os

import pytest

from app import create_app
from tests.helpers import wait_for

USERS = {"ada": "admin", "mia": "member", "otto": "member", "vic": "viewer"}
SLEEP = '{python} -c "import time; time.sleep(60)"'  # runs until cancelled
FAIL = ('{python} -c "import sys; print(\'step 1/3\', flush=True); '
        'sys.exit(\'ValueError: radius must be positive, not -2\')"')


@pytest.fixture
def team(workspace, monkeypatch):
    """An app with accounts on, 2 simulated GPUs, four users and their API tokens."""
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    app = create_app({"TESTING": True, "workspace": workspace, "auth": True,
                      "log_push_interval": 0.05, "device_refresh": 0.2, "kill_grace": 2})
    s = app.extensions["slotrun"]
    for name, role in USERS.items():
        s.accounts.add_user(name, role, f"pw-{name}-123")
    tokens = {name: s.accounts.create_token(name, "team")[1] for name in USERS}
    client = app.test_client()

    def call(method, path, who, body=None, **kwargs):
        """Call the API as ``who``; return the response."""
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        if method == "GET":
            return client.get("/api/v1" + path, headers=headers, **kwargs)
        return client.open("/api/v1" + path, method=method, json=body or {}, headers=headers)

    app.call = call
    app.tokens = tokens
    try:
        yield app
    finally:
        engine = s.runtime.engine
        if engine is not None:
            for t in list(engine.view.running):
                try:
                    engine.cancel_task(t)
                except Exception:  # noqa: BLE001 - it ended meanwhile
                    pass
            wait_for(lambda: not engine.view.running, 15, message="tasks still running at teardown")
        s.close()


def submit(app, who, **body):
    r = app.call("POST", "/batches", who, {"overwrite": True, **body})
    assert r.status_code == 201, r.json
    return r.json


def states(app, batch):
    tasks = app.call("GET", f"/batches/{batch['id']}?per_page=100", "ada").json["tasks"]
    return {t["id"]: t["state"] for t in tasks}


def finished(app, batch):
    return wait_for(lambda: app.call("GET", f"/batches/{batch['id']}", "ada").json["finished"],
                    30, interval=0.05, message=f"batch {batch['id']} did not finish")


def test_owner_and_text_filters_page_on_the_server(team):
    a = submit(team, "mia", pattern="exp-1", use_gpu=False)
    b = submit(team, "otto", pattern="exp-2-1", use_gpu=False)
    finished(team, a)
    finished(team, b)
    listed = team.call("GET", "/tasks", "vic", query_string={"owner": "mia"}).json
    assert listed["total"] == 3 and {t["owner"] for t in listed["tasks"]} == {"mia"}
    # The text is a case-insensitive substring of the config path (not a pattern).
    listed = team.call("GET", "/tasks", "vic", query_string={"q": "EXP-2-1-"}).json
    assert sorted(t["config"] for t in listed["tasks"]) == [
        "configs/exp-2/exp-2-1-1.yaml", "configs/exp-2/exp-2-1-2.yaml"]
    assert team.call("GET", "/tasks", "vic", query_string={"q": "exp_1"}).json["total"] == 0
    assert team.call("GET", "/tasks", "vic", query_string={"q": "%"}).json["total"] == 0
    both = team.call("GET", "/tasks", "vic", query_string={
        "owner": "otto", "q": "1-2", "state": "succeeded", "per_page": 1}).json
    assert (both["total"], both["pages"], both["tasks"][0]["config"]) == (
        1, 1, "configs/exp-2/exp-2-1-2.yaml")
    # Everyone who submitted work, for the owner filter.
    assert team.call("GET", "/owners", "vic").json == {"owners": [
        {"name": "mia", "batches": 1, "tasks": 3}, {"name": "otto", "batches": 1, "tasks": 2}]}
    # Bad values are named, not guessed at.
    r = team.call("GET", "/tasks", "vic", query_string={"q": "x" * 201})
    assert r.status_code == 400 and "at most 200 characters" in r.json["error"]
    r = team.call("GET", "/tasks", "vic", query_string={"owner": "o" * 65})
    assert r.status_code == 400 and "owner must be a user name" in r.json["error"]
    assert team.call("GET", "/tasks", "vic", query_string={"owner": "nobody"}).json["total"] == 0


def test_each_task_carries_its_last_log_line_or_why_it_failed(team):
    ok = submit(team, "mia", pattern="exp-1-1", use_gpu=False)
    bad = submit(team, "mia", pattern="exp-1-2", use_gpu=False, command=FAIL)
    finished(team, ok)
    finished(team, bad)
    rows = {t["config"]: t for t in team.call("GET", "/tasks", "vic").json["tasks"]}
    done = rows["configs/exp-1/exp-1-1.yaml"]
    assert done["last_line"].startswith("done in ") and done["state"] == "succeeded"
    failed = rows["configs/exp-1/exp-1-2.yaml"]
    assert failed["state"] == "failed"
    assert failed["message"] == "exit code 1: ValueError: radius must be positive, not -2"
    assert failed["last_line"] == "ValueError: radius must be positive, not -2"
    one = team.call("GET", f"/tasks/{failed['id']}", "vic").json
    assert one["last_line"] == failed["last_line"]
    # A task that never started has no log, so no line.
    team.call("POST", "/queue/pause", "ada")
    waiting = submit(team, "mia", pattern="exp-1-3", use_gpu=False)
    row = team.call("GET", f"/tasks?batch={waiting['id']}", "vic").json["tasks"][0]
    assert (row["state"], row["last_line"]) == ("queued", None)


def test_bulk_cancel_acts_on_a_filter_and_only_on_a_members_own_tasks(team):
    team.call("POST", "/queue/pause", "ada")
    mine = submit(team, "mia", pattern="exp-2", command=SLEEP)  # 4 tasks
    theirs = submit(team, "otto", pattern="exp-2-1", command=SLEEP)  # 2 tasks
    filt = {"q": "exp-2-1"}  # 2 of mia's, 2 of otto's
    # A dry run counts without acting.
    r = team.call("POST", "/tasks/cancel", "mia", {**filt, "dry_run": True})
    assert r.status_code == 200, r.json
    assert r.json == {"action": "cancel", "matched": 4, "affected": 2, "not_yours": 2,
                      "other_state": 0, "queued": 2, "running": 0, "dry_run": True}
    assert set(states(team, mine).values()) == {"queued"}
    # The member's cancel touches her own two and says how many it skipped.
    r = team.call("POST", "/tasks/cancel", "mia", filt)
    assert r.json == {"action": "cancel", "matched": 4, "affected": 2, "not_yours": 2,
                      "other_state": 0, "queued": 2, "running": 0, "dry_run": False}
    got = states(team, mine)
    cancelled = [t for t in mine["tasks"] if "exp-2-1-" in t["config"]]
    assert {got[t["id"]] for t in cancelled} == {"cancelled"}
    assert sorted(got.values()) == ["cancelled", "cancelled", "queued", "queued"]
    assert set(states(team, theirs).values()) == {"queued"}
    # Running tasks are stopped; an admin acts on everyone's.
    team.call("POST", "/queue/resume", "ada")
    wait_for(lambda: team.call("GET", "/status", "ada").json["counts"]["running"] == 2, 20,
             interval=0.05, message="two tasks did not start")
    r = team.call("POST", "/tasks/cancel", "ada", {})
    assert r.json["affected"] == 4 and r.json["running"] == 2 and r.json["queued"] == 2
    assert r.json["not_yours"] == 0 and r.json["other_state"] == 2  # the two cancelled before
    wait_for(lambda: set(states(team, mine).values()) | set(states(team, theirs).values())
             == {"cancelled"}, 20, interval=0.05, message="not everything was cancelled")
    # Nothing left to cancel: an answer, not an error.
    r = team.call("POST", "/tasks/cancel", "mia", {"owner": "mia"})
    assert (r.status_code, r.json["affected"], r.json["other_state"]) == (200, 0, 4)


def test_bulk_retry_and_the_bulk_calls_failure_cases(team):
    bad = submit(team, "mia", pattern="exp-3", use_gpu=False, command=FAIL)
    other = submit(team, "otto", pattern="exp-1-1", use_gpu=False, command=FAIL)
    finished(team, bad)
    finished(team, other)
    team.call("POST", "/queue/pause", "ada")
    r = team.call("POST", "/tasks/retry", "mia", {"state": "failed"})
    assert r.json == {"action": "retry", "matched": 5, "affected": 4, "not_yours": 1,
                      "other_state": 0, "dry_run": False}
    assert set(states(team, bad).values()) == {"queued"}
    assert set(states(team, other).values()) == {"failed"}
    # Retried in id order, at the end of the queue.
    queued = team.call("GET", "/tasks?state=queued&sort=id&order=asc", "ada").json["tasks"]
    assert [t["id"] for t in queued] == sorted(t["id"] for t in bad["tasks"])
    # Viewers may not; bad bodies are named; an unknown batch is a 404.
    assert team.call("POST", "/tasks/retry", "vic", {}).status_code == 403
    r = team.call("POST", "/tasks/cancel", "mia", {"owner": "mia", "colour": "red"})
    assert r.status_code == 400 and "unknown field 'colour'" in r.json["error"]
    r = team.call("POST", "/tasks/cancel", "mia", {"state": "lost"})
    assert r.status_code == 400 and "state must be one of queued" in r.json["error"]
    r = team.call("POST", "/tasks/cancel", "mia", {"batch": 99999})
    assert r.status_code == 404 and "batch 99999 not found" in r.json["error"]
    r = team.call("POST", "/tasks/cancel", "mia", {"dry_run": "yes"})
    assert r.status_code == 400 and "dry_run must be true or false" in r.json["error"]
    r = team.call("POST", "/tasks/retry", "mia", {"batch": 0})
    assert r.status_code == 400
    assert team.call("GET", "/tasks/cancel", "mia").status_code == 405


def test_cancel_answers_the_task_once_it_has_stopped(team):
    b = submit(team, "mia", pattern="exp-1-1", command=SLEEP)
    tid = b["tasks"][0]["id"]
    wait_for(lambda: team.call("GET", f"/tasks/{tid}", "mia").json["state"] == "running", 20,
             interval=0.05)
    r = team.call("POST", f"/tasks/{tid}/cancel", "mia")
    assert r.status_code == 200
    assert r.json["state"] == "cancelled" and r.json["message"] == "cancelled while running"
    assert r.json["finished_at"] is not None
    assert team.call("GET", f"/tasks/{tid}", "mia").json["state"] == "cancelled"


def test_the_summary_counts_only_the_slots_a_waiting_task_could_use(team):
    s = team.extensions["slotrun"]
    # Both GPUs busy, GPU tasks waiting, the CPU slot idle: no free slot for them.
    b = submit(team, "mia", pattern="exp-2", command=SLEEP)
    wait_for(lambda: team.call("GET", "/status", "mia").json["counts"]["running"] == 2, 20,
             interval=0.05)
    status = team.call("GET", "/status", "mia").json
    assert status["slots"] == {"used": 2, "total": 3, "free": 1, "waiting": 2, "usable": 2,
                               "usable_used": 2, "usable_free": 0}
    assert (status["counts"]["running"], status["counts"]["queued"]) == (2, 2)
    # The "queue" event a page draws its tiles from carries the same figures.
    sio = s.socketio.test_client(team, auth={"token": team.tokens["mia"]})
    try:
        queue = [e["args"][0] for e in sio.get_received() if e["name"] == "queue"][-1]
        assert queue["slots"] == status["slots"] and queue["counts"] == status["counts"]
    finally:
        sio.disconnect()
    team.call("POST", "/tasks/cancel", "mia", {"batch": b["id"]})
    wait_for(lambda: team.call("GET", "/status", "mia").json["slots"]["waiting"] == 0
             and not team.call("GET", "/status", "mia").json["slots"]["used"], 20, interval=0.05)
    assert team.call("GET", "/status", "mia").json["slots"]["free"] == 3


MEMORY_CONFIG = """\
model_params:
  name: circle
  radius: 1.0
  sim_time: 3
  progress_steps: 6
  gpu_memory: [[0, 1GiB], [0.3, 3GiB]]
"""


def test_followers_get_the_tasks_memory_and_every_page_its_last_lines(team, workspace,
                                                                       monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "3")  # long enough to be sampled
    os.makedirs(os.path.join(workspace, "configs", "mem"))
    with open(os.path.join(workspace, "configs", "mem", "mem-1.yaml"), "w") as f:
        f.write(MEMORY_CONFIG)
    s = team.extensions["slotrun"]
    sio = s.socketio.test_client(team, auth={"token": team.tokens["vic"]})
    try:
        b = submit(team, "mia", pattern="mem-1")
        tid = b["tasks"][0]["id"]
        wait_for(lambda: team.call("GET", f"/tasks/{tid}", "vic").json["state"] == "running",
                 20, interval=0.05)
        assert sio.emit("follow", {"task": tid}, callback=True)["ok"]
        received = []

        def seen(name):
            received.extend(sio.get_received())
            return [e["args"][0] for e in received if e["name"] == name]

        # The engine's memory samples reach the task page's followers: no polling.
        memory = wait_for(lambda: [m for m in seen("memory") if m["memory_now"]
                                   and m["memory_now"] >= 3 * 1024**3], 20, interval=0.05,
                          message="no memory event with the task's 3 GiB")
        assert memory[-1]["task"] == tid and memory[-1]["memory_peak"] >= 3 * 1024**3
        # Every page hears the running tasks' last lines, all in one message per look.
        lines = wait_for(lambda: [m["lines"][str(tid)] for m in seen("lines")
                                  if str(tid) in m["lines"]
                                  and m["lines"][str(tid)].startswith("step ")], 20,
                         interval=0.05, message="no lines event with a step line")
        assert lines[-1].startswith("step ")
        finished(team, b)
    finally:
        sio.disconnect()
