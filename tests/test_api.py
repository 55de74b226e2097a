"""The JSON API and the Socket.IO events, through Flask's and Flask-SocketIO's test clients.

Every test runs a real engine on a fresh workspace (simulated GPUs where needed); sample
tasks take 0.2 s.
"""

import io
import os
import time
import zipfile

import pytest

from app import create_app
from tests.helpers import close_apps, wait_for

FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


@pytest.fixture
def make_app(workspace, monkeypatch):
    """Build apps on the test's workspace; every engine is stopped at the end."""
    apps = []

    def make(gpus=4, **overrides):
        if gpus:
            monkeypatch.setenv("SLOTRUN_FAKE_GPUS", str(gpus))
        else:
            monkeypatch.delenv("SLOTRUN_FAKE_GPUS", raising=False)
        # Accounts are tested in test_access / test_security: here everyone is the local admin.
        config = {"TESTING": True, "workspace": workspace, "log_push_interval": 0.05,
                  "device_refresh": 0.2, "auth": False}
        config.update(overrides)
        app = create_app(config)
        apps.append(app)
        return app

    yield make
    close_apps(apps)


@pytest.fixture
def app(make_app):
    """An app with 4 simulated GPUs."""
    return make_app()


@pytest.fixture
def client(app):
    """Flask's test client of ``app``."""
    return app.test_client()


def submit(client, **body):
    """Start a batch and return its JSON (asserting 201)."""
    r = client.post("/api/v1/batches", json=body)
    assert r.status_code == 201, r.json
    return r.json


def wait_batch(client, batch_id, timeout=20):
    """Wait until a batch has no queued or running task; return its JSON."""
    return wait_for(lambda: (lambda b: b if b["finished"] else None)(
        client.get(f"/api/v1/batches/{batch_id}").json), timeout,
        message=f"batch {batch_id} did not finish")


def error_of(r, status):
    """Assert a JSON error with this status; return its message."""
    assert r.status_code == status, (r.status_code, r.data[:300])
    assert r.is_json, r.data[:300]
    assert set(r.json) == {"error"}
    return r.json["error"]


# -- configs --------------------------------------------------------------------------------------

def test_configs_preview_uses_the_multi_run_rule(client, workspace):
    r = client.get("/api/v1/configs", query_string={"pattern": "exp-1"})
    assert r.status_code == 200
    assert r.json["configs"] == ["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml",
                                 "configs/exp-1/exp-1-3.yaml"]  # the base file is never a task
    assert r.json["count"] == 3 and r.json["complete"] == []
    r = client.get("/api/v1/configs", query_string={"pattern": r"exp-(2|3)-1-\d*"})
    assert r.json["count"] == 4
    assert client.get("/api/v1/configs?pattern=nothing-like-this").json["configs"] == []


def test_configs_bad_patterns(client, workspace):
    assert "pattern is required" in error_of(client.get("/api/v1/configs"), 400)
    assert "invalid regular expression" in error_of(
        client.get("/api/v1/configs", query_string={"pattern": "exp-(1"}), 400)
    msg = error_of(client.get("/api/v1/configs", query_string={"pattern": "x" * 501}), 400)
    assert "at most 500" in msg
    # A catastrophic pattern against a long name is refused within the time bound.
    os.makedirs(os.path.join(workspace, "configs", "long"))
    with open(os.path.join(workspace, "configs", "long", "a" * 60 + ".yaml"), "w") as f:
        f.write("model_params: {name: circle, radius: 1}\n")
    t0 = time.monotonic()
    msg = error_of(client.get("/api/v1/configs", query_string={"pattern": "(a|aa)+$"}), 400)
    # Bounded by regex_timeout (0.5 s); unbounded, 60 a's would take hours. Slack for busy CI.
    assert time.monotonic() - t0 < 10
    assert "took longer than" in msg


# -- devices --------------------------------------------------------------------------------------

def test_devices_list_and_set_slots(client):
    devices = client.get("/api/v1/devices").json["devices"]
    assert [d["id"] for d in devices] == ["gpu0", "gpu1", "gpu2", "gpu3", "cpu"]
    for d in devices:
        for key in ("id", "kind", "name", "slots", "running", "memory_total", "memory_used",
                    "memory_free", "utilization", "node"):
            assert key in d, key
    assert devices[0]["kind"] == "gpu" and devices[-1]["kind"] == "cpu"
    r = client.patch("/api/v1/devices/gpu2", json={"slots": 3})
    assert r.status_code == 200 and r.json["id"] == "gpu2" and r.json["slots"] == 3
    after = {d["id"]: d["slots"] for d in client.get("/api/v1/devices").json["devices"]}
    assert after["gpu2"] == 3 and after["gpu0"] == 1
    assert client.patch("/api/v1/devices/cpu", json={"slots": 0}).json["slots"] == 0


@pytest.mark.parametrize("body, status, fragment", [
    ({"slots": "3"}, 400, "slots must be a whole number"),
    ({"slots": 2.5}, 400, "slots must be a whole number"),
    ({"slots": True}, 400, "slots must be a whole number"),
    ({"slots": -1}, 400, "from 0 to 1000"),
    ({"slots": 1001}, 400, "from 0 to 1000"),
    ({}, 400, "slots is required"),
    ({"slots": 1, "limit": 2}, 400, "valid fields: slots"),
    ([1], 400, "must be a JSON object"),
])
def test_device_patch_bad_input(client, body, status, fragment):
    assert fragment in error_of(client.patch("/api/v1/devices/gpu0", json=body), status)


def test_device_patch_unknown_device_and_not_json(client):
    msg = error_of(client.patch("/api/v1/devices/gpu9", json={"slots": 1}), 404)
    assert "gpu0" in msg and "cpu" in msg  # names the valid ids
    assert "Content-Type: application/json" in error_of(
        client.patch("/api/v1/devices/gpu0", data="slots=1"), 415)
    error_of(client.patch("/api/v1/devices/gpu0", data="{not json",
                          content_type="application/json"), 400)


# -- batches and tasks ----------------------------------------------------------------------------

def test_batch_runs_to_completion_and_is_listed(client):
    b = submit(client, pattern="exp", use_gpu=True, devices=["gpu1", "gpu3"])
    assert len(b["tasks"]) == 11 and b["total"] == 11
    assert {t["state"] for t in b["tasks"]} == {"queued"}
    assert set(b["tasks"][0]) == {"id", "config", "state"}
    done = wait_batch(client, b["id"])
    assert done["counts"]["succeeded"] == 11 and done["done"] == 11 and done["failed"] == 0
    assert done["devices"] == ["gpu1", "gpu3"] and done["eta"] is None
    assert len(done["tasks"]) == 11 and done["tasks_total"] == 11
    assert {t["device"] for t in done["tasks"]} <= {"gpu1", "gpu3"}

    listed = client.get("/api/v1/batches").json
    assert listed["total"] == 1 and listed["batches"][0]["id"] == b["id"]
    assert listed["batches"][0]["counts"]["succeeded"] == 11

    page = client.get("/api/v1/tasks", query_string={"batch": b["id"], "per_page": 4,
                                                     "page": 2}).json
    assert page["total"] == 11 and page["pages"] == 3 and page["page"] == 2
    assert len(page["tasks"]) == 4
    first = client.get("/api/v1/tasks?per_page=4").json["tasks"]
    assert [t["id"] for t in first] == sorted((t["id"] for t in b["tasks"]), reverse=True)[:4]
    assert client.get("/api/v1/tasks?state=failed").json["total"] == 0
    assert client.get("/api/v1/tasks?state=succeeded").json["total"] == 11

    t = client.get(f"/api/v1/tasks/{b['tasks'][0]['id']}").json
    for key in ("id", "batch", "config", "state", "device", "started_at", "finished_at",
                "exit_code"):
        assert key in t, key
    assert t["exit_code"] == 0 and t["state"] == "succeeded"
    assert t["config_text"].startswith("base: exp-1-base.yaml")
    assert t["command"] == f"python run.py -c {t['config']} --overwrite False -d 0"
    assert t["attempts_list"][0]["run_dir"] == f".slotrun/runs/{t['id']}-1"

    wide = client.get(f"/api/v1/batches/{b['id']}?per_page=2&state=succeeded").json
    assert len(wide["tasks"]) == 2 and wide["pages"] == 6


def test_cpu_batch_skips_complete_results_unless_overwrite(client):
    b = submit(client, pattern="exp-1-1", use_gpu=False)
    assert wait_batch(client, b["id"])["tasks"][0]["device"] == "cpu"
    again = submit(client, pattern="exp-1-1", use_gpu=False)
    assert again["tasks"][0]["state"] == "skipped" and again["counts"] == {"skipped": 1}
    assert client.get("/api/v1/configs?pattern=exp-1-1").json["complete"] == \
        ["configs/exp-1/exp-1-1.yaml"]
    forced = submit(client, pattern="exp-1-1", use_gpu=False, overwrite=True)
    assert forced["tasks"][0]["state"] == "queued"
    assert wait_batch(client, forced["id"])["counts"]["succeeded"] == 1


@pytest.mark.parametrize("body, fragment", [
    ({}, "pattern is required"),
    ({"pattern": 3}, "pattern must be a string"),
    ({"pattern": "exp(", "use_gpu": True}, "invalid regular expression"),
    ({"pattern": "x" * 501}, "at most 500"),
    ({"pattern": "exp", "gpu": True}, "valid fields: pattern, use_gpu, devices, overwrite"),
    ({"pattern": "exp", "idempotency_key": 5}, "idempotency_key must be a string or null"),
    ({"pattern": "exp", "use_gpu": "yes"}, "use_gpu must be true or false"),
    ({"pattern": "exp", "overwrite": 1}, "overwrite must be true or false"),
    ({"pattern": "exp", "devices": "gpu1"}, "devices must be a list"),
    ({"pattern": "exp", "devices": []}, "non-empty list"),
    ({"pattern": "exp", "devices": [1]}, "non-empty list"),
    ({"pattern": "exp", "devices": ["gpu7"]}, "valid: gpu0, gpu1, gpu2, gpu3"),
    ({"pattern": "exp", "use_gpu": False, "devices": ["gpu0"]}, "device 'cpu' only"),
    ({"pattern": "exp", "priority": "high"}, "priority must be a whole number"),
    ({"pattern": "exp", "priority": 10**6}, "from -1000 to 1000"),
    ({"pattern": "exp", "max_retries": -1}, "from 0 to 100"),
    ({"pattern": "exp", "memory": "lots"}, "not a memory size"),
    ({"pattern": "exp", "memory": -5}, "memory must be from 0 to"),
    ({"pattern": "exp", "memory": 10**30}, "memory must be from 0 to"),
    ({"pattern": "exp", "memory": "1e30GiB"}, "memory must be from 0 to"),
    ({"pattern": "exp", "priority": 10**30}, "from -1000 to 1000"),
    ({"pattern": "exp", "command": "{python} run.py -c {cfg}"}, "valid: {python}, {config}"),
    ({"pattern": "exp", "command": ""}, "non-empty string"),
    ({"pattern": "no-such-config"}, "no config in configs/ matches"),
])
def test_batch_bad_input(client, body, fragment):
    assert fragment in error_of(client.post("/api/v1/batches", json=body), 400)
    assert client.get("/api/v1/batches").json["total"] == 0


def test_idempotency_key_makes_a_retried_submit_return_the_same_batch(client):
    body = {"pattern": "exp-1", "use_gpu": False}
    first = client.post("/api/v1/batches", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and first.json["replayed"] is False
    again = client.post("/api/v1/batches", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.json["replayed"] is True
    assert again.json["id"] == first.json["id"]
    assert [t["id"] for t in again.json["tasks"]] == [t["id"] for t in first.json["tasks"]]
    # The key may come as a field too; another key is another batch.
    field = client.post("/api/v1/batches", json={**body, "idempotency_key": "k-1"})
    assert field.status_code == 200 and field.json["id"] == first.json["id"]
    other = client.post("/api/v1/batches", json=body, headers={"Idempotency-Key": "k-2"})
    assert other.status_code == 201 and other.json["id"] != first.json["id"]
    assert client.get("/api/v1/batches").json["total"] == 2
    # The same key for a different batch is refused, and creates nothing.
    r = client.post("/api/v1/batches", json={"pattern": "exp-2", "use_gpu": False},
                    headers={"Idempotency-Key": "k-1"})
    assert "was used for batch" in error_of(r, 409)
    for bad in ("", "x" * 201, "tab\there"):
        r = client.post("/api/v1/batches", json={**body, "idempotency_key": bad})
        assert "1 to 200 printable characters" in error_of(r, 400)
    r = client.post("/api/v1/batches", json={**body, "idempotency_key": "a"},
                    headers={"Idempotency-Key": "b"})
    assert "differ" in error_of(r, 400)
    assert client.get("/api/v1/batches").json["total"] == 2


def test_batch_gpu_without_gpus_is_refused(make_app):
    client = make_app(gpus=0).test_client()
    assert "SLOTRUN_FAKE_GPUS" in error_of(client.post("/api/v1/batches",
                                                       json={"pattern": "exp-1-1"}), 400)
    b = submit(client, pattern="exp-1-1", use_gpu=False)
    assert wait_batch(client, b["id"])["counts"]["succeeded"] == 1


def test_batch_and_task_unknown_ids(client):
    for url in ("/api/v1/batches/42", "/api/v1/tasks/42", "/api/v1/tasks/42/log",
                "/api/v1/tasks/42/log/download", "/api/v1/tasks/42/files/",
                "/api/v1/tasks/42/files/a.txt", "/api/v1/tasks/42/results.zip",
                "/api/v1/batches/42/results.zip", "/api/v1/tasks?batch=42",
                "/api/v1/tasks/99999999999999999999", "/api/v1/tasks/0", "/api/v1/tasks/-1",
                "/api/v1/tasks/abc"):
        error_of(client.get(url), 404)
    for url in ("/api/v1/batches/42/cancel", "/api/v1/tasks/42/cancel", "/api/v1/tasks/42/retry"):
        error_of(client.post(url, json={}), 404)


@pytest.mark.parametrize("query, fragment", [
    ("page=0", "page must be a whole number from 1"),
    ("page=abc", "page must be a whole number"),
    ("page=-2", "page must be a whole number"),
    ("per_page=0", "per_page must be a whole number from 1 to 1000"),
    ("per_page=5000", "from 1 to 1000"),
    ("state=done", "state must be one of queued, running, succeeded, failed"),
    ("batch=x", "batch must be a whole number"),
    ("page=1e3", "page must be a whole number"),
])
def test_task_list_bad_query(client, query, fragment):
    assert fragment in error_of(client.get(f"/api/v1/tasks?{query}"), 400)


SORT_KEYS = ("id", "config", "batch", "state", "device", "started_at", "duration", "exit_code")
STATE_ORDER = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted", "skipped")


def _sort_value(t, key):
    """Return a task's value for a sort key as the API defines it (None: sorts last)."""
    if key == "state":
        return STATE_ORDER.index(t["state"])
    if key == "device":
        return None if t["device"] is None else (t["device"], t["slot"])
    return t[key]


def _expected_order(tasks, key, order):
    """Return the task ids in the API's order: by the key, then id; missing values last."""
    desc = order == "desc"
    have = sorted((t for t in tasks if _sort_value(t, key) is not None),
                  key=lambda t: (_sort_value(t, key), t["id"]), reverse=desc)
    missing = sorted((t for t in tasks if _sort_value(t, key) is None),
                     key=lambda t: t["id"], reverse=desc)
    return [t["id"] for t in have + missing]


@pytest.fixture
def mixed_tasks(client):
    """Eleven finished tasks on four GPUs plus three queued ones (the queue paused)."""
    done = submit(client, pattern="exp", devices=["gpu0", "gpu1", "gpu2", "gpu3"])
    wait_batch(client, done["id"])
    client.post("/api/v1/queue/pause", json={})
    submit(client, pattern="exp-1")
    tasks = client.get("/api/v1/tasks?per_page=1000").json["tasks"]
    assert len(tasks) == 14 and sum(t["started_at"] is None for t in tasks) == 3
    yield tasks
    client.post("/api/v1/queue/resume", json={})


@pytest.mark.parametrize("key", SORT_KEYS)
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_task_list_sorts_across_pages(client, mixed_tasks, key, order):
    full = client.get("/api/v1/tasks", query_string={"sort": key, "order": order,
                                                     "per_page": 1000}).json
    assert (full["sort"], full["order"]) == (key, order)
    ids = [t["id"] for t in full["tasks"]]
    assert ids == _expected_order(mixed_tasks, key, order)
    # Pages of 4 follow one another: together they are the whole list, once each.
    paged = []
    for page in range(1, 5):
        r = client.get("/api/v1/tasks", query_string={"sort": key, "order": order,
                                                      "per_page": 4, "page": page}).json
        assert r["total"] == 14 and r["pages"] == 4
        paged += [t["id"] for t in r["tasks"]]
    assert paged == ids
    # Filters still apply, in the same order.
    done = client.get("/api/v1/tasks", query_string={"sort": key, "order": order,
                                                     "state": "succeeded"}).json["tasks"]
    assert [t["id"] for t in done] == [i for i in ids if i in {t["id"] for t in done}]
    assert len(done) == 11


def test_task_list_sort_defaults(client, mixed_tasks):
    newest = sorted((t["id"] for t in mixed_tasks), reverse=True)
    default = client.get("/api/v1/tasks").json
    assert [t["id"] for t in default["tasks"]] == newest
    assert (default["sort"], default["order"]) == ("id", "desc")
    assert [t["id"] for t in client.get("/api/v1/tasks?sort=&order=").json["tasks"]] == newest
    by_config = client.get("/api/v1/tasks?sort=config").json  # any other key: ascending
    assert by_config["order"] == "asc"
    assert [t["id"] for t in by_config["tasks"]] == _expected_order(mixed_tasks, "config", "asc")
    assert [t["id"] for t in client.get("/api/v1/tasks?order=asc").json["tasks"]] == newest[::-1]


@pytest.mark.parametrize("query, fragment", [
    ("sort=name", "sort must be one of id, config, batch, state, device, started_at, duration, "
                  "exit_code; not 'name'"),
    ("sort=-id", "sort must be one of id, config"),
    ("sort=id;DROP TABLE tasks", "sort must be one of"),
    ("sort=batch_id", "sort must be one of"),
    ("order=up", "order must be asc or desc; not 'up'"),
    ("order=DESC", "order must be asc or desc"),
    ("sort=config&order=descending", "order must be asc or desc"),
])
def test_task_list_bad_sort(client, query, fragment):
    assert fragment in error_of(client.get(f"/api/v1/tasks?{query}"), 400)


def test_batch_finished_at_is_when_its_last_task_ended(client):
    client.post("/api/v1/queue/pause", json={})
    b = submit(client, pattern="exp-1")
    dropped = b["tasks"][0]["id"]
    assert client.post(f"/api/v1/tasks/{dropped}/cancel", json={}).json["state"] == "cancelled"
    waiting = client.get(f"/api/v1/batches/{b['id']}").json
    assert waiting["finished_at"] is None and waiting["finished"] is False
    client.post("/api/v1/queue/resume", json={})
    done = wait_batch(client, b["id"])
    ends = [t["finished_at"] for t in done["tasks"]]
    assert done["finished_at"] == max(ends) and done["finished_at"] > done["created_at"]
    listed = client.get("/api/v1/batches").json["batches"][0]
    assert listed["id"] == b["id"] and listed["finished_at"] == max(ends)
    # A retry makes the batch active again: no end until that task has finished too.
    client.post("/api/v1/queue/pause", json={})
    assert client.post(f"/api/v1/tasks/{dropped}/retry", json={}).json["state"] == "queued"
    assert client.get(f"/api/v1/batches/{b['id']}").json["finished_at"] is None
    client.post("/api/v1/queue/resume", json={})
    again = wait_batch(client, b["id"])
    assert again["finished_at"] > done["finished_at"]
    assert again["finished_at"] == max(t["finished_at"] for t in again["tasks"])
    # A batch whose tasks were all skipped ended when it was created.
    skipped = submit(client, pattern="exp-1-1", use_gpu=False)
    assert skipped["counts"] == {"skipped": 1}
    summary = client.get(f"/api/v1/batches/{skipped['id']}").json
    assert summary["finished"] and summary["finished_at"] == pytest.approx(
        summary["created_at"], abs=1)


def test_cancel_and_retry(make_app, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "30")  # tasks run until cancelled
    client = make_app(gpus=0).test_client()
    b = submit(client, pattern="exp-1", use_gpu=False)
    ids = [t["id"] for t in b["tasks"]]
    running = wait_for(lambda: client.get("/api/v1/tasks?state=running").json["tasks"])[0]
    queued = [i for i in ids if i != running["id"]]

    r = client.post(f"/api/v1/tasks/{queued[0]}/cancel", json={})
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    assert "only queued or running" in error_of(
        client.post(f"/api/v1/tasks/{queued[0]}/cancel", json={}), 409)
    assert "only cancelled, failed, interrupted" in error_of(
        client.post(f"/api/v1/tasks/{queued[1]}/retry", json={}), 409)
    r = client.post(f"/api/v1/tasks/{queued[0]}/retry", json={})
    assert r.status_code == 200 and r.json["state"] == "queued"

    # An empty body is fine, but only as JSON: a cross-site form post is refused.
    assert "Content-Type: application/json" in error_of(
        client.post(f"/api/v1/tasks/{running['id']}/cancel"), 415)
    assert client.get(f"/api/v1/tasks/{running['id']}").json["state"] == "running"
    client.post(f"/api/v1/tasks/{running['id']}/cancel", content_type="application/json")
    assert wait_for(lambda: client.get(f"/api/v1/tasks/{running['id']}").json["state"]
                    == "cancelled", 15)
    r = client.post(f"/api/v1/batches/{b['id']}/cancel", json={})
    assert r.status_code == 200 and r.json["id"] == b["id"]
    done = wait_batch(client, b["id"])
    assert done["counts"]["cancelled"] == 3 and done["active"] == 0
    error_of(client.post(f"/api/v1/tasks/{running['id']}/cancel", data="x",
                         content_type="application/json"), 400)


def test_pause_and_resume(client):
    assert client.post("/api/v1/queue/pause", json={}).json == {"paused": True}
    assert client.get("/api/v1/status").json["paused"] is True
    b = submit(client, pattern="exp-1")
    # A slot change is handled by the scheduler after the submit: nothing started meanwhile.
    client.patch("/api/v1/devices/gpu0", json={"slots": 2})
    assert client.get("/api/v1/tasks?state=queued").json["total"] == 3
    assert client.post("/api/v1/queue/resume", json={}).json == {"paused": False}
    assert wait_batch(client, b["id"])["counts"]["succeeded"] == 3
    status = client.get("/api/v1/status").json
    assert status["counts"]["succeeded"] == 3 and status["total"] == 3
    assert status["batches"] == 1 and status["paused"] is False
    assert status["engine"]["running"] and status["engine"]["gpus"] == 4
    assert status["engine"]["simulated"] is True
    assert "/" not in status["engine"]["workspace"]  # no internal path


# -- logs -----------------------------------------------------------------------------------------

def test_log_tail_offset_and_download(client, workspace):
    b = submit(client, pattern="exp-1-1")
    wait_batch(client, b["id"])
    tid = b["tasks"][0]["id"]
    full = client.get(f"/api/v1/tasks/{tid}/log?tail=1000").json
    lines = full["data"].splitlines()
    assert lines[0].startswith("config configs/exp-1/exp-1-1.yaml")
    assert lines[-1].startswith("done in")
    assert full["attempt"] == 1 and full["truncated"] is False
    last = client.get(f"/api/v1/tasks/{tid}/log?tail=1").json
    assert last["data"] == lines[-1] + "\n" and last["offset"] == full["offset"]
    part = client.get(f"/api/v1/tasks/{tid}/log?offset=7").json
    assert part["data"] == full["data"][7:] and part["offset"] == full["size"]
    d = client.get(f"/api/v1/tasks/{tid}/log/download")
    assert d.status_code == 200 and d.data.decode() == full["data"]
    assert "attachment" in d.headers["Content-Disposition"]
    assert client.get(f"/api/v1/tasks/{tid}/log/download?attempt=1").data == d.data

    for q, fragment in (("tail=0", "tail must be a whole number from 1 to 10000"),
                        ("tail=abc", "tail must be"), ("tail=10001", "tail must be"),
                        ("offset=-1", "offset must be"), ("attempt=x", "attempt must be")):
        assert fragment in error_of(client.get(f"/api/v1/tasks/{tid}/log?{q}"), 400)
    assert "no attempt 2" in error_of(client.get(f"/api/v1/tasks/{tid}/log?attempt=2"), 404)


def test_log_of_a_task_that_has_not_started(client):
    client.post("/api/v1/queue/pause", json={})
    b = submit(client, pattern="exp-1-1")
    tid = b["tasks"][0]["id"]
    r = client.get(f"/api/v1/tasks/{tid}/log")
    assert r.status_code == 200 and r.json["data"] == "" and r.json["attempt"] is None
    assert "has not started" in error_of(client.get(f"/api/v1/tasks/{tid}/log/download"), 404)
    assert "no results yet" in error_of(client.get(f"/api/v1/tasks/{tid}/files/"), 404)
    assert "no results yet" in error_of(client.get(f"/api/v1/tasks/{tid}/results.zip"), 404)
    client.post(f"/api/v1/batches/{b['id']}/cancel", json={})


# -- results --------------------------------------------------------------------------------------

@pytest.fixture
def finished_task(client, workspace, tmp_path):
    """A succeeded task whose results hold a sub-folder and symlinks in and out."""
    b = submit(client, pattern="exp-1-1")
    wait_batch(client, b["id"])
    root = os.path.join(workspace, "results", "exp-1", "exp-1-1")
    os.makedirs(os.path.join(root, "sub", "deeper"))
    with open(os.path.join(root, "sub", "deeper", "x.txt"), "w") as f:
        f.write("deep\n")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "password.txt").write_text("hunter2\n")
    os.symlink(outside / "password.txt", os.path.join(root, "leak.txt"))
    os.symlink(outside, os.path.join(root, "leakdir"))
    os.symlink("/etc/passwd", os.path.join(root, "sub", "passwd"))
    os.symlink(os.path.join(root, "area.txt"), os.path.join(root, "inside.txt"))
    # A sibling results folder whose name starts like this one must not be reachable either.
    sibling = os.path.join(workspace, "results", "exp-1", "exp-1-1-evil")
    os.makedirs(sibling)
    with open(os.path.join(sibling, "s.txt"), "w") as f:
        f.write("sibling\n")
    os.symlink(sibling, os.path.join(root, "sib"))
    return b["tasks"][0]["id"], b["id"], root


def test_results_listing_and_download(client, finished_task):
    tid, _, root = finished_task
    listing = client.get(f"/api/v1/tasks/{tid}/files/").json
    names = {e["name"]: e for e in listing["entries"]}
    assert set(names) == {".done", "area.txt", "meta.json", "metrics.json", "sub", "inside.txt"}
    assert names["sub"]["type"] == "dir" and names["area.txt"]["type"] == "file"
    assert names["area.txt"]["size"] == os.path.getsize(os.path.join(root, "area.txt"))
    assert listing["results"] == "results/exp-1/exp-1-1" and listing["path"] == ""
    sub = client.get(f"/api/v1/tasks/{tid}/files/sub/").json
    assert [e["name"] for e in sub["entries"]] == ["deeper"]  # the passwd link is hidden
    assert sub["entries"][0]["path"] == "sub/deeper"
    assert client.get(f"/api/v1/tasks/{tid}/files/sub").json["path"] == "sub"
    r = client.get(f"/api/v1/tasks/{tid}/files/sub/deeper/x.txt")
    assert r.status_code == 200 and r.data == b"deep\n"
    assert "attachment" in r.headers["Content-Disposition"]
    area = client.get(f"/api/v1/tasks/{tid}/files/area.txt").data
    assert float(area) == pytest.approx(3.14159, rel=1e-4)
    assert client.get(f"/api/v1/tasks/{tid}/files/inside.txt").data == area


OUTSIDE_PATHS = [
    "../exp-1-2/area.txt", "..", "../../../../etc/passwd", "%2e%2e/exp-1-2/area.txt",
    "%2E%2E%2F%2E%2E%2Fconfigs/exp-1/exp-1-1.yaml", "sub/../../exp-1-2/area.txt",
    "..%2f..%2f..%2fetc%2fpasswd", "/etc/passwd", "%2fetc%2fpasswd", "area.txt%00.png",
    "%00", "leak.txt", "leakdir/password.txt", "leakdir/", "sub/passwd", "sib/s.txt", "sib",
    "nothing-here.txt", "sub/deeper/missing", "..\\..\\etc\\passwd", "./../exp-1-2",
]


def test_results_paths_outside_are_404(client, finished_task):
    tid = finished_task[0]
    for path in OUTSIDE_PATHS:
        r = client.get(f"/api/v1/tasks/{tid}/files/{path}")
        assert r.status_code == 404, (path, r.data[:200])
        assert r.is_json, path
        assert b"hunter2" not in r.data and b"root:" not in r.data and b"sibling" not in r.data


def zip_names(response):
    """Return the member names and data of a zip response."""
    assert response.status_code == 200 and response.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.data)) as z:
        assert z.testzip() is None
        return {n: z.read(n) for n in z.namelist()}


def test_results_zips_are_streamed_and_skip_symlinks(client, finished_task):
    tid, bid, root = finished_task
    r = client.get(f"/api/v1/tasks/{tid}/results.zip")
    assert r.is_streamed and "exp-1-1-results.zip" in r.headers["Content-Disposition"]
    members = zip_names(r)
    assert set(members) == {"exp-1-1/.done", "exp-1-1/area.txt", "exp-1-1/meta.json",
                            "exp-1-1/metrics.json", "exp-1-1/sub/deeper/x.txt"}
    assert members["exp-1-1/sub/deeper/x.txt"] == b"deep\n"
    batch = zip_names(client.get(f"/api/v1/batches/{bid}/results.zip"))
    assert set(batch) == {"exp-1/" + n for n in members}


# -- pages and errors -----------------------------------------------------------------------------

def test_pages_render_with_bootstrap(client):
    import json
    import re

    b = submit(client, pattern="exp-1-1")
    tid = b["tasks"][0]["id"]
    for url, key, value in (("/", "batch", None), (f"/batches/{b['id']}", "batch", b["id"]),
                            (f"/tasks/{tid}", "task", tid)):
        r = client.get(url)
        assert r.status_code == 200 and r.mimetype == "text/html", url
        m = re.search(rb'<script id="bootstrap" type="application/json">(.*?)</script>', r.data,
                      re.S)
        assert m, url
        boot = json.loads(m.group(1))
        assert boot[key] == value and boot["page_size"] == 50 and boot["api"] == "/api/v1"
    wait_batch(client, b["id"])


def test_html_errors_are_pages_and_api_errors_are_json(client):
    for url in ("/tasks/99", "/batches/99", "/no/such/page", "/tasks/abc"):
        r = client.get(url, headers={"Accept": "text/html"})
        assert r.status_code == 404 and r.mimetype == "text/html", url
        assert b"Traceback" not in r.data
    assert b"task 99 not found" in client.get("/tasks/99", headers={"Accept": "text/html"}).data
    r = client.get("/tasks/99", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json == {"error": "task 99 not found"}
    error_of(client.get("/api/v1/nothing"), 404)
    r = client.delete("/api/v1/tasks/1")
    assert "allowed: GET" in error_of(r, 405) and "GET" in r.headers["Allow"]
    assert "too large" in error_of(client.post("/api/v1/batches", data="x" * (2 << 20),
                                               content_type="application/json"), 413)
    error_of(client.get("/api/v1/tasks/1/files//etc/passwd"), 404)


def test_unexpected_errors_show_nothing_internal(make_app):
    app = make_app()

    @app.get("/api/v1/boom")
    def boom():
        from app.web import authorize

        authorize("status.read")
        raise RuntimeError(f"secret detail in {os.getcwd()}")

    client = app.test_client()
    msg = error_of(client.get("/api/v1/boom"), 500)
    assert "secret" not in msg and os.getcwd() not in msg and "internal error" in msg


def test_a_route_without_an_access_check_is_refused(make_app):
    app = make_app()

    @app.get("/api/v1/unchecked")
    def unchecked():
        return {"ok": True}

    assert "no access rule" in error_of(app.test_client().get("/api/v1/unchecked"), 500)


def test_every_route_answers_with_its_access_check(client):
    """Call every rule of the URL map with real ids: none may fail the authorize check."""
    b = submit(client, pattern="exp-1-1")
    wait_batch(client, b["id"])
    tid = b["tasks"][0]["id"]
    values = {"task_id": tid, "batch_id": b["id"], "device_id": "gpu0", "subpath": "area.txt",
              "filename": "css/app.css", "token_id": 1, "name": "nobody", "invite_id": 1}
    bodies = {"api.batch_create": {"pattern": "exp-1-1"}, "api.device_update": {"slots": 1},
              "api.batch_priority": {"priority": 1}}
    app = client.application
    seen = 0
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            url = rule.build({k: values[k] for k in rule.arguments}, append_unknown=False)[1]
            body = bodies.get(rule.endpoint, {}) if method != "GET" else None
            r = client.open(url, method=method, json=body)
            assert r.status_code < 500, (method, url, r.data[:200])
            seen += 1
    assert seen >= 20


# -- Socket.IO ------------------------------------------------------------------------------------

class Events:
    """What a Socket.IO test client received, accumulated across polls."""

    def __init__(self, sio):
        self.sio = sio
        self.all = []

    def poll(self):
        """Take newly received events; return all so far."""
        self.all.extend(self.sio.get_received())
        return self.all

    def named(self, name):
        """Return the payloads of one event name received so far."""
        return [e["args"][0] for e in self.poll() if e["name"] == name]

    def tasks(self):
        """Return every task change received so far (the items of each "task_list")."""
        return [t for x in self.named("task_list") for t in x["tasks"]]


@pytest.fixture
def sio(app, client):
    """A connected Flask-SocketIO test client with an event recorder."""
    s = app.extensions["slotrun"].socketio.test_client(app, flask_test_client=client)
    assert s.is_connected()
    yield Events(s)
    if s.is_connected():
        s.disconnect()


def test_socket_connect_sends_queue_and_devices(sio):
    q = sio.named("queue")[0]
    assert q["paused"] is False and q["counts"]["queued"] == 0
    devices = sio.named("devices")[0]["devices"]
    assert [d["id"] for d in devices] == ["gpu0", "gpu1", "gpu2", "gpu3", "cpu"]
    # Device figures keep coming while a client is connected (device_refresh is 0.2 s here).
    wait_for(lambda: len(sio.named("devices")) >= 3, 5)


def test_socket_receives_every_state_change_and_batch_progress(client, sio):
    b = submit(client, pattern="exp")
    ids = {t["id"] for t in b["tasks"]}
    wait_batch(client, b["id"])

    def seen():
        states = {}
        for t in sio.tasks():
            states.setdefault(t["id"], []).append(t["state"])
        return states if set(states) == ids and all(
            s[-1] == "succeeded" for s in states.values()) else None

    states = wait_for(seen, 10)
    assert all(s == ["queued", "running", "succeeded"] for s in states.values()), states
    task = sio.tasks()[-1]
    assert {"id", "batch", "config", "state", "device", "started_at", "finished_at",
            "exit_code"} <= set(task)
    batches = wait_for(lambda: [x for x in sio.named("batch") if x["finished"]], 5)
    assert batches[-1]["id"] == b["id"] and batches[-1]["done"] == 11
    assert batches[-1]["counts"]["succeeded"] == 11
    assert sio.named("batch")[0]["total"] == 11  # the new batch is announced first
    wait_for(lambda: sio.named("queue")[-1]["counts"]["succeeded"] == 11, 5)
    slots = sio.named("slots")
    assert slots and all(set(u) >= {"slots", "running"} for u in slots[-1].values())
    client.patch("/api/v1/devices/gpu1", json={"slots": 4})
    wait_for(lambda: sio.named("slots")[-1]["gpu1"]["slots"] == 4, 5)
    client.post("/api/v1/queue/pause", json={})
    wait_for(lambda: sio.named("queue")[-1]["paused"] is True, 5)


LINES_CMD = ('{python} -c "import time\nfor i in range(40):\n    print(\'line\', i, flush=True)\n'
             '    time.sleep(0.02)"')


def test_socket_follow_pushes_the_live_tail(client, sio):
    client.post("/api/v1/queue/pause", json={})
    b = submit(client, pattern="exp-1-1", use_gpu=False, command=LINES_CMD)
    tid = b["tasks"][0]["id"]
    ack = sio.sio.emit("follow", {"task": tid}, callback=True)
    assert ack == {"ok": True, "task": tid}
    first = wait_for(lambda: sio.named("log"), 5)[0]
    assert first == {"task": tid, "attempt": None, "data": "", "offset": 0, "truncated": False,
                     "reset": True}
    client.post("/api/v1/queue/resume", json={})
    wait_batch(client, b["id"])

    def text():
        logs = [m for m in sio.named("log") if m["task"] == tid]
        start = max(i for i, m in enumerate(logs) if m["reset"])
        return "".join(m["data"] for m in logs[start:])

    expected = "".join(f"line {i}\n" for i in range(40))
    wait_for(lambda: text() == expected, 5, message="the pushed tail never matched the log")
    pushes = [m for m in sio.named("log") if m["data"]]
    assert len(pushes) > 2  # pushed while it ran, not once at the end
    assert pushes[-1]["offset"] == len(expected.encode())
    # A second follower gets the last N lines at once.
    ack = sio.sio.emit("follow", {"task": tid, "lines": 2}, callback=True)
    assert ack["ok"]
    wait_for(lambda: sio.named("log")[-1]["data"] == "line 38\nline 39\n", 5)
    assert sio.named("log")[-1]["truncated"] is True and sio.named("log")[-1]["reset"]
    assert sio.sio.emit("unfollow", {"task": tid}, callback=True) == {"ok": True, "task": tid}


def test_socket_log_flood_is_coalesced_and_capped(make_app, workspace):
    app = make_app(gpus=0, log_push_max_bytes=4096, log_push_interval=0.1)
    client = app.test_client()
    sio = Events(app.extensions["slotrun"].socketio.test_client(app, flask_test_client=client))
    client.post("/api/v1/queue/pause", json={})
    flood = ('{python} -c "import sys, time\nfor i in range(20):\n'
             '    sys.stdout.write((\'x\' * 99 + \'\\n\') * 5000); sys.stdout.flush();'
             ' time.sleep(0.05)"')
    b = submit(client, pattern="exp-1-1", use_gpu=False, command=flood)
    tid = b["tasks"][0]["id"]
    sio.sio.emit("follow", {"task": tid}, callback=True)
    client.post("/api/v1/queue/resume", json={})
    assert wait_batch(client, b["id"])["counts"]["succeeded"] == 1
    size = client.get(f"/api/v1/tasks/{tid}/log?tail=1").json["size"]
    assert size == 20 * 5000 * 100  # every byte reached the log file
    wait_for(lambda: any(m["offset"] == size for m in sio.named("log")), 5)
    pushes = [m for m in sio.named("log") if m["data"]]
    assert all(len(m["data"].encode()) <= 4096 for m in pushes)
    assert any(m["truncated"] for m in pushes)
    assert sum(len(m["data"]) for m in pushes) < size // 20
    # After a skip, the pushed text starts at a line, not in the middle of one.
    assert all(m["data"].split("\n")[0] == "x" * 99 for m in pushes if m["truncated"])


@pytest.mark.parametrize("payload, fragment", [
    (None, 'send {"task": ID}'), ("3", 'send {"task": ID}'), ({"task": "abc"}, 'send {"task": ID}'),
    ({"task": 0}, 'send {"task": ID}'), ({"task": True}, 'send {"task": ID}'),
    ({"task": 999}, "task 999 not found"), ({"task": 1, "lines": 0}, "lines must be"),
])
def test_socket_follow_bad_input(sio, payload, fragment):
    args = () if payload is None else (payload,)
    ack = sio.sio.emit("follow", *args, callback=True)
    assert fragment in ack["error"], ack
    ack = sio.sio.emit("unfollow", *args, callback=True)
    assert "error" in ack


def test_emitter_turns_a_burst_into_one_notice(app, sio):
    emitter = app.extensions["slotrun"].emitter
    rows = [{"id": i, "batch_id": 1, "owner": "u", "config": f"configs/c{i}.yaml",
             "state": "queued"} for i in range(1, 1502)]
    emitter._emit_tasks(rows + rows[:10])
    notice = wait_for(lambda: sio.named("tasks"), 5)[-1]
    assert notice == {"changed": 1501, "batches": [1]}
    assert not sio.named("task_list")
    emitter._emit_tasks(rows[:3] + rows[:2])
    lists = wait_for(lambda: sio.named("task_list"), 5)
    assert len(lists) == 1  # one message for the whole flush
    assert [t["id"] for t in sio.tasks()] == [1, 2, 3, 1, 2]


def test_emitter_skips_a_lagging_client_then_tells_it_to_refetch(app, sio, monkeypatch):
    emitter = app.extensions["slotrun"].emitter
    emitter.stop()  # driven by hand here: its thread would flush the catch-up itself
    sid = next(iter(app.extensions["slotrun"].clients))
    rows = [{"id": i, "batch_id": 7, "owner": "u", "config": f"configs/c{i}.yaml",
             "state": "succeeded"} for i in (1, 2)]
    lagging = [sid]
    monkeypatch.setattr(emitter, "_lagging", lambda: list(lagging))
    emitter._emit_tasks(rows[:1])
    # Behind: no list for it (the next flush would find its queue still long).
    lagging.clear()
    emitter._emit_tasks(rows[1:])
    notice = wait_for(lambda: sio.named("tasks"), 5)[-1]
    assert notice == {"changed": None, "batches": [7]}
    assert [t["id"] for t in sio.tasks()] == [2]
    assert not emitter.behind
