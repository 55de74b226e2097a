"""Insight through Flask's test client on simulated GPUs: GPU history, batch timelines, task
progress, slot suggestions and memory predictions. Real engines, real task processes."""

import os

import pytest

from app import create_app
from tests.helpers import close_apps, wait_for

GIB = 1024**3
MIB = 1024**2
FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


def write_config(ws, family, name, **params):
    """Write configs/<family>/<name>.yaml for the circle model with these model_params."""
    folder = os.path.join(ws, "configs", family)
    os.makedirs(folder, exist_ok=True)
    lines = ["model_params:", "  name: circle", "  radius: 1.5"]
    lines += [f"  {k}: {v}" for k, v in params.items()]
    with open(os.path.join(folder, f"{name}.yaml"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return f"configs/{family}/{name}.yaml"


@pytest.fixture
def ws(workspace, monkeypatch):
    """The test workspace with two simulated GPUs; each config sets its own sim_time."""
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.delenv("SLOTRUN_SIM_TIME", raising=False)
    return workspace


@pytest.fixture
def make_app(ws):
    apps = []

    def make(**overrides):
        config = {"TESTING": True, "workspace": ws, "device_refresh": 0.1, "auth": False,
                  "memory_sample_interval": 0.1, "gpu_slots": 2, **overrides}
        app = create_app(config)
        apps.append(app)
        return app

    yield make
    close_apps(apps)


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def submit(client, pattern, **extra):
    r = client.post("/api/v1/batches", json={"pattern": pattern, "overwrite": True, **extra})
    assert r.status_code == 201, r.json
    return r.json


def wait_batch(client, batch_id, timeout=30):
    return wait_for(lambda: (lambda b: b if b["finished"] else None)(
        client.get(f"/api/v1/batches/{batch_id}").json), timeout,
        message=f"batch {batch_id} did not finish")


def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.data[:300])
    return r.json["error"]


def gpu(history, dev):
    return next(d for d in history["devices"] if d["id"] == dev)


def samples(history, dev):
    """Return how many samples a device has in a history (0 while it has none)."""
    return next((len(d["t"]) for d in history["devices"] if d["id"] == dev), 0)


# -- GPU history --------------------------------------------------------------------------------

def test_history_fills_over_time_and_marks_slotrun_tasks(client, ws):
    write_config(ws, "hist", "hist-1", sim_time=1.5, gpu_memory="[[0, 3GiB]]")
    first = client.get("/api/v1/devices/history?minutes=5").json
    assert first["minutes"] == 5 and first["interval"] == pytest.approx(0.1)
    n0 = samples(first, "gpu0")

    def grown():
        """Return the history once gpu0 has 3 more samples (it may have none yet: the sampler
        records its first reading a moment after the app starts)."""
        h = client.get("/api/v1/devices/history").json
        return h if samples(h, "gpu0") >= n0 + 3 else None

    later = wait_for(grown, timeout=10)
    g0 = gpu(later, "gpu0")
    assert g0["kind"] == "gpu" and g0["memory_total"] == 24 * GIB
    assert g0["t"] == sorted(g0["t"])
    assert len(g0["t"]) == len(g0["util"]) == len(g0["used"]) == len(g0["mine"]) == len(g0["tasks"])
    assert all(total == 24 * GIB for total in g0["total"])
    assert any(d["id"] == "cpu" for d in later["devices"])

    # A running task shows in the samples of its device, with the memory it holds.
    batch = submit(client, "hist-1", devices=["gpu1"])
    tid = batch["tasks"][0]["id"]

    def marked():
        g1 = gpu(client.get("/api/v1/devices/history?minutes=1").json, "gpu1")
        hits = [i for i, ids in enumerate(g1["tasks"]) if tid in ids]
        return [(g1["used"][i], g1["mine"][i]) for i in hits if (g1["mine"][i] or 0) >= 3 * GIB]
    used, mine = wait_for(marked, timeout=15, message="the task never showed in gpu1's history")[0]
    assert mine == 3 * GIB and used >= 3 * GIB
    g0 = gpu(client.get("/api/v1/devices/history").json, "gpu0")
    assert all(tid not in ids for ids in g0["tasks"])
    wait_batch(client, batch["id"])


def test_history_is_bounded_and_rejects_bad_minutes(make_app):
    app = make_app()
    sampler = app.extensions["slotrun"].insight
    # An hour at 0.1 s per sample: the ring buffer never holds more.
    assert sampler.history.maxlen == 36002
    client = app.test_client()
    for bad in ("0", "61", "abc", "-5", "1.5"):
        msg = error_of(client.get(f"/api/v1/devices/history?minutes={bad}"), 400)
        assert "minutes must be a whole number from 1 to 60" in msg


def test_history_events_reach_socketio_clients(make_app):
    app = make_app()
    sio = app.extensions["slotrun"].socketio.test_client(app, flask_test_client=app.test_client())
    assert sio.is_connected()
    try:
        def events():
            got = [e for e in sio.get_received() if e["name"] == "history"]
            return got or None
        got = wait_for(events, timeout=5)
        payload = got[-1]["args"][0]
        assert set(payload) == {"t", "interval", "devices"}
        assert {"util", "used", "total", "mine", "tasks"} <= set(payload["devices"]["gpu0"])
    finally:
        sio.disconnect()


# -- timelines ------------------------------------------------------------------------------------

def test_timeline_rows_and_bars_match_the_attempts(client, ws):
    for i in range(5):
        write_config(ws, "tl", f"tl-{i}", sim_time=0.3)
    write_config(ws, "tl", "tl-bad", sim_time=0.1, radius="not-a-number")
    batch = submit(client, "configs/tl/")
    wait_batch(client, batch["id"])
    r = client.get(f"/api/v1/batches/{batch['id']}/timeline")
    assert r.status_code == 200
    tl = r.json
    assert tl["batch"] == batch["id"] and tl["finished"] is True and tl["truncated"] is False
    assert tl["total"] == 6 and tl["counts"]["succeeded"] + tl["counts"]["failed"] == 6
    bars = [b for row in tl["rows"] for b in row["bars"]]
    assert len(bars) == 6
    # One row per device slot, GPUs in inventory order; each bar sits on its own row.
    keys = [(row["device"], row["slot"]) for row in tl["rows"]]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert {d for d, _ in keys} <= {"gpu0", "gpu1"} and {s for _, s in keys} <= {0, 1}
    for row in tl["rows"]:
        for b in row["bars"]:
            assert (b["device"], b["slot"]) == (row["device"], row["slot"])
    for b in bars:
        task = client.get(f"/api/v1/tasks/{b['task']}").json
        att = task["attempts_list"][b["attempt"] - 1]
        assert b["config"] == task["config"] and b["name"] == task["name"]
        assert b["state"] == att["state"] == task["state"]
        assert (b["device"], b["slot"]) == (att["device"], att["slot"])
        assert b["start"] == att["started_at"] and b["end"] == att["finished_at"]
        assert b["exit_code"] == att["exit_code"]
        assert b["duration"] == pytest.approx(att["finished_at"] - att["started_at"])
    bad = next(b for b in bars if b["name"] == "tl-bad")
    assert bad["state"] == "failed" and bad["exit_code"] != 0
    assert tl["start"] == min(b["start"] for b in bars)
    assert tl["end"] == max(b["end"] for b in bars)
    # Two slots on each of two GPUs: never more than four bars overlap.
    edges = sorted([(b["start"], 1) for b in bars] + [(b["end"], -1) for b in bars])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    assert peak <= 4


def test_timeline_is_live_and_unknown_batches_are_404(client, ws):
    write_config(ws, "slow", "slow-1", sim_time=3)
    batch = submit(client, "slow-1")

    def running_bar():
        tl = client.get(f"/api/v1/batches/{batch['id']}/timeline").json
        bars = [b for row in tl["rows"] for b in row["bars"]]
        return tl if bars and bars[0]["state"] == "running" else None
    tl = wait_for(running_bar, timeout=10)
    bar = tl["rows"][0]["bars"][0]
    assert bar["end"] is None and tl["end"] is None and tl["finished"] is False
    assert bar["duration"] >= 0
    client.post(f"/api/v1/batches/{batch['id']}/cancel", json={})
    wait_batch(client, batch["id"])
    bar = client.get(f"/api/v1/batches/{batch['id']}/timeline").json["rows"][0]["bars"][0]
    assert bar["state"] == "cancelled" and bar["end"] is not None

    assert "batch 999 not found" in error_of(client.get("/api/v1/batches/999/timeline"), 404)
    error_of(client.get("/api/v1/batches/abc/timeline"), 404)
    # A batch whose tasks never started has no bars yet.
    client.post("/api/v1/queue/pause", json={})
    try:
        queued = submit(client, "slow-1")
        tl = client.get(f"/api/v1/batches/{queued['id']}/timeline").json
        assert tl["rows"] == [] and tl["start"] is None and tl["counts"]["queued"] == 1
        client.post(f"/api/v1/batches/{queued['id']}/cancel", json={})
    finally:
        client.post("/api/v1/queue/resume", json={})


# -- progress -------------------------------------------------------------------------------------

def test_progress_is_parsed_from_step_lines(make_app, ws):
    app = make_app()
    client = app.test_client()
    sio = app.extensions["slotrun"].socketio.test_client(app, flask_test_client=client)
    assert sio.is_connected()
    write_config(ws, "prog", "prog-1", sim_time=3, progress_steps=10)
    try:
        batch = submit(client, "prog-1")
        tid = batch["tasks"][0]["id"]
        queued = client.get(f"/api/v1/tasks/{tid}/progress").json
        assert queued["task"] == tid and queued["pattern"] == r"step (\d+)/(\d+)"

        def midway():
            p = client.get(f"/api/v1/tasks/{tid}/progress").json
            return p if p["state"] == "running" and p["done"] and p["done"] < 10 else None
        p = wait_for(midway, timeout=15, message="no progress seen while the task ran")
        assert p["total"] == 10 and 0 < p["fraction"] < 1 and p["updated_at"]
        listed = wait_for(lambda: [x for x in client.get("/api/v1/progress").json["tasks"]
                                   if x["task"] == tid], timeout=5)
        assert listed[0]["batch"] == batch["id"] and listed[0]["total"] == 10
        wait_batch(client, batch["id"])
        done = client.get(f"/api/v1/tasks/{tid}/progress").json
        assert (done["done"], done["total"], done["fraction"], done["state"]) == (10, 10, 1.0, "succeeded")
        events = [e["args"][0] for e in sio.get_received() if e["name"] == "progress"]
        mine = [e for e in events if e["task"] == tid]
        assert mine, "no progress event was sent"
        assert all(e["total"] == 10 and e["batch"] == batch["id"] for e in mine)
        dones = [e["done"] for e in mine]
        assert dones == sorted(dones) and len(set(dones)) == len(dones)
    finally:
        sio.disconnect()
    # A task without progress lines has none; unknown tasks are 404.
    write_config(ws, "plain", "plain-1", sim_time=0.1)
    b = submit(client, "plain-1")
    wait_batch(client, b["id"])
    p = client.get(f"/api/v1/tasks/{b['tasks'][0]['id']}/progress").json
    assert p["done"] is None and p["total"] is None and p["fraction"] is None
    assert "task 999 not found" in error_of(client.get("/api/v1/tasks/999/progress"), 404)


def test_a_custom_progress_pattern_and_an_invalid_one(make_app, ws):
    write_config(ws, "prog", "prog-2", sim_time=0.2, progress_steps=4)
    app = make_app(progress_pattern=r"(\d+) of (\d+)")
    client = app.test_client()
    # The sample models print "step i/n": this pattern finds nothing there.
    b = submit(client, "prog-2")
    wait_batch(client, b["id"])
    assert client.get(f"/api/v1/tasks/{b['tasks'][0]['id']}/progress").json["done"] is None
    app.extensions["slotrun"].close()
    app.extensions["slotrun"].insight.stop()
    bad = make_app(progress_pattern=r"step (\d+)").test_client()
    msg = error_of(bad.get(f"/api/v1/tasks/{b['tasks'][0]['id']}/progress"), 500)
    assert "needs two groups" in msg


# -- suggestions and predictions -----------------------------------------------------------------

def test_suggest_slots_from_a_given_a_declared_and_a_learned_need(client, ws):
    r = client.get("/api/v1/memory/suggest?need=6GiB")
    assert r.status_code == 200
    s = r.json
    assert s["need"] == 6 * GIB and s["source"] == "declared" and s["margin"] == 512 * MIB
    assert s["slots"] == {"gpu0": 3, "gpu1": 3}  # (24 GiB - 512 MiB) // 6 GiB
    assert s["current"] == {"gpu0": 2, "gpu1": 2}

    cfg = write_config(ws, "decl", "decl-1", sim_time=0.1, gpu_memory="10GiB")
    s = client.get(f"/api/v1/memory/suggest?config={cfg}").json
    assert (s["need"], s["source"], s["family"], s["slots"]["gpu0"]) == \
        (10 * GIB, "declared", "configs/decl", 2)

    # A family that allocates without declaring: learned once a task finishes.
    learn = write_config(ws, "learn", "learn-1", sim_time=0.8, sim_gpu_memory="[[0, 1GiB], [0.1, 5GiB]]")
    write_config(ws, "learn", "learn-2", sim_time=0.1)
    msg = error_of(client.get(f"/api/v1/memory/suggest?config={learn}"), 400)
    assert "no GPU memory need is known" in msg and "gpu_memory" in msg
    msg = error_of(client.get("/api/v1/memory/suggest?family=configs/learn"), 400)
    assert "no GPU memory need is learned for configs/learn" in msg
    wait_batch(client, submit(client, "learn-1")["id"])
    for query in ("config=configs/learn/learn-2.yaml", "family=configs/learn"):
        s = client.get(f"/api/v1/memory/suggest?{query}").json
        assert s["source"] == "learned" and s["family"] == "configs/learn", s
        assert 5 * GIB <= s["need"] < 6 * GIB
        assert s["slots"] == {"gpu0": 4, "gpu1": 4}


def test_suggest_rejects_bad_input_naming_what_is_valid(client, ws):
    msg = error_of(client.get("/api/v1/memory/suggest"), 400)
    assert "give exactly one of need=, config=, family=" in msg
    msg = error_of(client.get("/api/v1/memory/suggest?need=6GiB&family=configs/exp-1"), 400)
    assert "exactly one" in msg and "need, family" in msg
    assert "6GiB" in error_of(client.get("/api/v1/memory/suggest?need=lots"), 400)
    assert "above 0" in error_of(client.get("/api/v1/memory/suggest?need=0"), 400)
    for bad in ("configs/nope.yaml", "../etc/passwd", "configs/exp-1/../exp-1/exp-1-1.yaml",
                "configs/exp-1/exp-1-base.yaml", "/etc/passwd", "run.py"):
        msg = error_of(client.get("/api/v1/memory/suggest", query_string={"config": bad}), 404)
        assert "not found" in msg
    msg = error_of(client.get("/api/v1/memory/suggest?family=configs/nope"), 404)
    assert "family 'configs/nope' not found" in msg and "no family has a learned need yet" in msg


def test_predict_per_family_for_a_pattern(client, ws):
    write_config(ws, "decl", "decl-1", sim_time=0.1, gpu_memory="10GiB")
    write_config(ws, "decl", "decl-2", sim_time=0.1, gpu_memory="[[0, 1GiB], [0.3, 12GiB]]")
    write_config(ws, "learn", "learn-1", sim_time=0.6, sim_gpu_memory="[[0, 2GiB]]")
    p = client.get("/api/v1/memory/predict?pattern=decl|learn|exp-1").json
    fams = {f["family"]: f for f in p["families"]}
    assert set(fams) == {"configs/decl", "configs/learn", "configs/exp-1"}
    decl = fams["configs/decl"]
    fit, note = decl.pop("fit"), decl.pop("note")
    assert decl == {"family": "configs/decl", "configs": 2, "declared": 12 * GIB,
                    "learned": None, "need": 12 * GIB, "source": "declared"}
    # What admission would do now, in words tied to the figures: one 12 GiB task per GPU.
    assert fit == {"gpu0": 1, "gpu1": 1}
    assert note.startswith("needs 12 GiB per task (declared) + 512 MiB margin: 1 on gpu0, "
                           "1 on gpu1 could start now"), note
    assert "23.7 GiB free on gpu0" in note
    learn = fams["configs/learn"]
    assert learn["need"] is None and learn["source"] is None
    assert learn["fit"] == {"gpu0": 2, "gpu1": 2}  # unknown: the slot limits are trusted
    assert learn["note"].startswith("need unknown: tasks start up to each GPU's slot limit")
    assert "declare gpu_memory" in learn["note"]
    assert fams["configs/exp-1"]["configs"] == 3
    wait_batch(client, submit(client, "learn-1")["id"])
    p = client.get("/api/v1/memory/predict?pattern=learn").json
    (fam,) = p["families"]
    assert fam["source"] == "learned" and fam["learned"] == fam["need"] >= 2 * GIB
    # Without a pattern: every family with a learned need.
    every = client.get("/api/v1/memory/predict").json
    assert [f["family"] for f in every["families"]] == ["configs/learn"]
    msg = error_of(client.get("/api/v1/memory/predict?pattern=exp-("), 400)
    assert "invalid regular expression" in msg
    assert "characters long" in error_of(client.get("/api/v1/memory/predict?pattern=" + "a" * 600), 400)


def test_every_insight_route_calls_authorize(client, ws):
    # The app refuses (500) any route that answers without asking authorize(): these pass.
    write_config(ws, "d", "d-1", sim_time=0.1, gpu_memory="1GiB")
    b = submit(client, "d-1")
    wait_batch(client, b["id"])
    for path in ("/devices/history", f"/batches/{b['id']}/timeline",
                 f"/tasks/{b['tasks'][0]['id']}/progress", "/progress",
                 "/memory/suggest?need=1GiB", "/memory/predict", "/memory/predict?pattern=d-1"):
        r = client.get("/api/v1" + path)
        assert r.status_code == 200, (path, r.json)


def test_gpu_check_skips_cleanly_without_a_gpu():
    import subprocess
    import sys

    from app.devices import open_inventory
    from tests.helpers import ROOT

    if open_inventory(fake_gpus=0).gpus():
        pytest.skip("this machine has an NVIDIA GPU: run bench/gpu_check.py itself")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "SKIP: no NVIDIA GPU (NVML finds none)"
