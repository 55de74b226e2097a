"""Sweeps and results tables, end to end through a real server (and the command line).

One server for the module, accounts on, two simulated GPUs, sample tasks of 0.2 s: a sweep
created over the API writes the expected files and runs; its results table and CSV hold
the right parameters and metrics; hostile requests are refused with 400 naming the problem,
and write nothing.
"""

import csv
import io
import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from app import config_values
from app.accounts import Accounts
from app.store import Store
from tests.helpers import ServerProcess, make_workspace, task_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with accounts on: mia (member) and vic (viewer) with tokens."""
    base = tmp_path_factory.mktemp("sweeps")
    ws = make_workspace(base / "ws")
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    acc.add_user("mia", "member", "pw-mia-12345")
    acc.add_user("vic", "viewer", "pw-vic-12345")
    srv = ServerProcess(base / "server.log", task_env(
        SLOTRUN_AUTH="true", SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu"),
        SLOTRUN_SIM_TIME=0.2, SLOTRUN_RESULTS_MAX_BYTES=4096), ws, ready_status=401)
    srv.tokens = {n: acc.create_token(n, "test")[1] for n in ("mia", "vic")}
    try:
        yield srv
    finally:
        srv.stop()


def call(server, method, path, body=None, who="mia"):
    """Call the API as a user; return (status, JSON)."""
    return server.json_api(method, path, body, token=server.tokens[who])


def files_under(folder):
    """Return every file below a folder, relative to it."""
    out = []
    for dirpath, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(dirpath, n), folder) for n in names]
    return sorted(out)


def merged(ws, config):
    """Return a config's values as the sample run.py reads them (base merged)."""
    sys.path.insert(0, ws)
    try:
        import run  # the workspace's own run.py: the reader that matters
        return run.load_config(os.path.join(ws, config))
    finally:
        sys.path.remove(ws)
        sys.modules.pop("run", None)


def wait_batch(server, batch_id, timeout=60):
    """Wait until a batch has no queued or running task; return it."""
    def done():
        status, b = call(server, "GET", f"/batches/{batch_id}")
        return b if status == 200 and b["finished"] else None
    return wait_for(done, timeout, interval=0.1, message=f"batch {batch_id} did not finish")


def test_sweep_over_the_api_writes_the_files_runs_them_and_fills_the_results(server):
    ws = server.workspace
    body = {"base": "configs/exp-1/exp-1-1.yaml", "folder": "radius", "mode": "grid",
            "params": {"model_params.radius": [1, 2, 3], "model_params.sim_time": [0.2, 0.4]},
            "start": True, "batch": {"use_gpu": True}}
    status, out = call(server, "POST", "/sweeps", body)
    assert status == 201, out
    names = [f"configs/radius/radius-{i}-{j}.yaml" for i in (1, 2, 3) for j in (1, 2)]
    assert out["configs"] == names
    assert files_under(os.path.join(ws, "configs", "radius")) == [os.path.basename(n) for n in names]
    # Each file names the base as the samples do, re-pointed from the new folder.
    with open(os.path.join(ws, "configs", "radius", "radius-3-2.yaml")) as f:
        own = yaml.safe_load(f)
    assert own == {"base": "../exp-1/exp-1-base.yaml",
                   "model_params": {"radius": 3, "sim_time": 0.4}}
    assert merged(ws, "configs/radius/radius-3-2.yaml") == {
        "model_params": {"name": "circle", "sim_time": 0.4, "radius": 3}}

    batch = out["batch"]
    assert batch["total"] == 6 and batch["counts"] == {"queued": 6}
    assert [t["config"] for t in batch["tasks"]] == names
    done = wait_batch(server, batch["id"])
    assert done["counts"]["succeeded"] == 6, done

    status, table = call(server, "GET", f"/batches/{batch['id']}/results")
    assert status == 200, table
    assert table["params"] == ["model_params.sim_time", "model_params.radius"]
    assert {"area", "circumference", "time.sim_seconds"} <= set(table["metrics"])
    assert table["goals"]["area"] == "max" and table["goals"]["time.sim_seconds"] == "min"
    rows = {r["config"]: r for r in table["rows"]}
    assert list(rows) == names
    for (i, radius) in enumerate((1, 2, 3), 1):
        for (j, sim) in enumerate((0.2, 0.4), 1):
            r = rows[f"configs/radius/radius-{i}-{j}.yaml"]
            assert r["state"] == "succeeded" and r["task"] and r["duration"] > 0
            assert r["params"] == {"model_params.sim_time": sim, "model_params.radius": radius}
            assert r["metrics"]["area"] == pytest.approx(math.pi * radius ** 2)
            assert r["metrics"]["circumference"] == pytest.approx(2 * math.pi * radius)

    r = server.api("GET", f"/batches/{batch['id']}/results.csv", token=server.tokens["vic"])
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    lines = list(csv.DictReader(io.StringIO(r.text)))
    assert list(lines[0])[:7] == ["task", "config", "state", "duration", "peak_memory",
                                  "model_params.sim_time", "model_params.radius"]
    assert [x["config"] for x in lines] == names
    assert float(lines[5]["area"]) == pytest.approx(math.pi * 9)
    assert lines[5]["model_params.radius"] == "3" and lines[5]["state"] == "succeeded"

    # The same table for a pattern: each config's latest run.
    status, by_pattern = call(server, "GET", "/results?pattern=^configs/radius/", who="vic")
    assert status == 200 and [r["config"] for r in by_pattern["rows"]] == names
    assert by_pattern["rows"][0]["metrics"]["area"] == pytest.approx(math.pi)

    # Never overwritten without asking; with "replace" the files change and the batch reruns.
    status, out = call(server, "POST", "/sweeps", body)
    assert status == 409 and "exist already" in out["error"] and "replace" in out["error"]
    body2 = dict(body, params={"model_params.radius": [4, 5, 6],
                               "model_params.sim_time": [0.2, 0.4]}, replace=True)
    status, out = call(server, "POST", "/sweeps", body2)
    assert status == 201 and out["batch"]["counts"] == {"queued": 6}, out
    wait_batch(server, out["batch"]["id"])
    status, table = call(server, "GET", f"/batches/{out['batch']['id']}/results")
    assert table["rows"][-1]["metrics"]["area"] == pytest.approx(math.pi * 36)


HOSTILE = [
    ({"folder": "../outside"}, "'..' is not allowed"),
    ({"folder": "a/../../outside"}, "'..' is not allowed"),
    ({"folder": "/tmp/outside"}, "not an absolute path"),
    ({"folder": ".hidden"}, "not starting with '.'"),
    ({"folder": "a\\b"}, "no backslash"),
    ({"base": "/etc/passwd"}, "not an absolute path"),
    ({"base": "configs/../run.py"}, "no '..'"),
    ({"base": "configs/exp-1/nope.yaml"}, "does not exist"),
    ({"params": {"model_params.radius": list(range(1000)),
                 "model_params.sim_time": list(range(1000))}}, "1,000,000 configs"),
    ({"params": {"model_params.radius": {"start": 1, "stop": 10**6, "step": 1}}},
     "1,000,000 configs"),
    ({"params": {"model_params.raduis": [1, 2]}}, "'model_params.raduis' is not in"),
    ({"params": {"nothing.here": [1]}}, "'nothing' does not exist"),
    ({"params": {"model_params.radius": 3}}, "must be a list"),
    ({"params": {"model_params.radius": []}}, "is empty"),
    ({"params": {"model_params.radius": [1, 1]}}, "listed twice"),
    ({"params": {}}, "params must be an object"),
    ({"params": ["model_params.radius"]}, "params must be an object"),
    ({"params": {"model_params.radius": [1], "model_params.sim_time": [1, 2]}, "mode": "zip"},
     "as many values"),
    ({"mode": "random"}, "mode must be grid"),
    ({"owner": "vic"}, "unknown field 'owner'"),
    ({"start": True, "batch": {"devices": ["gpu9"]}}, "batch:"),
]


def test_hostile_sweeps_are_refused_naming_the_problem_and_write_nothing(server):
    ws = server.workspace
    before = files_under(ws)
    base = {"base": "configs/exp-1/exp-1-1.yaml", "folder": "hostile",
            "params": {"model_params.radius": [1, 2]}}
    for change, fragment in HOSTILE:
        status, out = call(server, "POST", "/sweeps", {**base, **change})
        assert status == 400 and fragment in out["error"], (change, status, out)
        status, out = call(server, "POST", "/sweeps/preview", {**base, **change})
        assert status == 400, (change, status, out)
    # A folder that is a symlink out of configs/ is refused too, and nothing lands outside.
    outside = os.path.join(os.path.dirname(ws), "elsewhere")
    os.makedirs(outside, exist_ok=True)
    os.symlink(outside, os.path.join(ws, "configs", "link"))
    status, out = call(server, "POST", "/sweeps", {**base, "folder": "link/x"})
    assert status == 400 and "symlink" in out["error"], out
    assert os.listdir(outside) == []
    os.unlink(os.path.join(ws, "configs", "link"))
    assert files_under(ws) == before


def test_members_may_create_sweeps_viewers_may_only_look(server):
    body = {"base": "configs/exp-2/exp-2-1-1.yaml", "folder": "rect", "mode": "zip",
            "params": {"model_params.length": {"start": 1, "stop": 2, "count": 3},
                       "model_params.width": [1, 2, 3]}}
    status, out = call(server, "POST", "/sweeps", body, who="vic")
    assert status == 403 and "viewer" in out["error"]
    status, out = call(server, "POST", "/sweeps/preview", body, who="vic")
    assert status == 200 and out["configs"] == [f"configs/rect/rect-{i}-{i}.yaml" for i in (1, 2, 3)]
    assert [r["values"] for r in out["rows"]][1] == {"model_params.length": 1.5,
                                                      "model_params.width": 2}
    status, out = call(server, "GET", "/sweeps/params?config=configs/exp-1/exp-1-2.yaml", who="vic")
    assert status == 200 and {"path": "model_params.radius", "value": 10.0} in out["params"]
    assert out["bases"] == ["configs/exp-1/exp-1-base.yaml"]
    status, out = call(server, "POST", "/sweeps", body)
    assert status == 201 and len(out["configs"]) == 3 and "batch" not in out
    assert merged(server.workspace, "configs/rect/rect-2-2.yaml")["model_params"] == {
        "name": "rectangle", "length": 1.5, "width": 2, "sim_time": 1.5}


def test_results_never_follow_symlinks_out_nor_read_large_files(server, tmp_path):
    ws = server.workspace
    folder = os.path.join(ws, "configs", "odd")
    os.makedirs(folder)
    with open(os.path.join(folder, "odd-1.yaml"), "w") as f:
        f.write("model_params: {name: circle, radius: 1.0}\n")
    with open(os.path.join(folder, "odd-2.yaml"), "w") as f:
        f.write("model_params: {name: circle, radius: 2.0}\n")
    res = os.path.join(ws, "results", "odd", "odd-1")
    os.makedirs(res)
    secret = tmp_path / "secret.txt"
    secret.write_text("42\n")
    os.symlink(secret, os.path.join(res, "leak.txt"))
    with open(os.path.join(res, "metrics.json"), "w") as f:
        json.dump({"loss": 0.5, "nested": {"acc": 0.9, "flag": True, "list": [1, 2]},
                   "name": "x", "nan": float("nan")}, f)
    with open(os.path.join(res, "big.txt"), "w") as f:
        f.write("1" * 5000)  # over the 1 KiB a one-number text file may have
    with open(os.path.join(res, "words.txt"), "w") as f:
        f.write("not a number\n")
    with open(os.path.join(res, "steps.txt"), "w") as f:
        f.write("  17\n")
    os.mkfifo(os.path.join(res, "pipe.txt"))  # opening it must not hang the server
    res2 = os.path.join(ws, "results", "odd", "odd-2")
    os.makedirs(res2)
    with open(os.path.join(res2, "metrics.json"), "w") as f:
        f.write(json.dumps({"loss": 0.25, "pad": "x" * 5000}))  # over results_max_bytes (4096)
    status, table = call(server, "GET", "/results?pattern=configs/odd/")
    assert status == 200, table
    one, two = table["rows"]
    assert one["state"] is None and one["task"] is None  # never run: still listed
    assert one["metrics"] == {"loss": 0.5, "nested.acc": 0.9, "steps": 17}
    assert two["metrics"] == {}
    assert table["params"] == ["model_params.radius"]
    assert table["goals"] == {"loss": "min", "nested.acc": "max", "steps": "max"}


def test_config_values_keep_siblings_of_a_deep_path_the_base_holds(tmp_path):
    ws = make_workspace(tmp_path / "ws", configs=False)
    os.makedirs(os.path.join(ws, "configs", "deep"))
    with open(os.path.join(ws, "configs", "deep", "deep-base.yaml"), "w") as f:
        f.write("model_params: {name: circle, radius: 1, opt: {lr: 0.1, momentum: 0.9}}\n"
                "layers: [{size: 4}, {size: 8}]\n")
    with open(os.path.join(ws, "configs", "deep", "deep-1.yaml"), "w") as f:
        f.write("base: deep-base.yaml\nmodel_params: {radius: 2}\n")
    from app import sweeps

    plan = sweeps.plan(ws, "configs/deep/deep-1.yaml", "nested/lr",
                       {"model_params.opt.lr": [0.01, 0.001], "layers.1.size": [16]})
    written = sweeps.write(ws, plan)
    assert written == ["configs/nested/lr/lr-1-1.yaml", "configs/nested/lr/lr-2-1.yaml"]
    values = merged(ws, written[1])
    assert values["model_params"] == {"name": "circle", "radius": 2,
                                      "opt": {"lr": 0.001, "momentum": 0.9}}
    assert values["layers"] == [{"size": 4}, {"size": 16}]
    assert config_values.load(ws, written[1]).values == values


def test_sweep_from_the_command_line(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    env = task_env(SLOTRUN_SIM_TIME=0.05)
    env.pop("SLOTRUN_WORKSPACE", None)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "app", "sweep", *args], cwd=ws, env=env,
                              capture_output=True, text=True, timeout=120)

    r = run("configs/exp-1/exp-1-1.yaml", "--folder", "r", "-p", "model_params.radius=1,2",
            "--range", "model_params.sim_time=0.05:0.1:0.05", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "configs/r/r-2-2.yaml  model_params.radius=2, model_params.sim_time=0.1" in r.stdout
    assert not os.path.exists(os.path.join(ws, "configs", "r"))
    r = run("configs/exp-1/exp-1-1.yaml", "--folder", "r", "-p", "model_params.radius=1,2",
            "--linspace", "model_params.sim_time=0.05:0.1:2", "--start", "-gpu", "false", "-d", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Wrote 4 config(s) to configs/r/" in r.stdout
    assert "Summary: 4 succeeded, 0 failed, 0 skipped" in r.stdout
    assert os.path.exists(os.path.join(ws, "results", "r", "r-2-2", "metrics.json"))
    r = run("configs/exp-1/exp-1-1.yaml", "--folder", "r", "-p", "model_params.radius=1,2",
            "--range", "model_params.sim_time=0.05:0.1:0.05")
    assert r.returncode == 2 and "exist already" in r.stderr
    r = run("configs/exp-1/exp-1-1.yaml", "--folder", "../x", "-p", "model_params.radius=1")
    assert r.returncode == 2 and "'..' is not allowed" in r.stderr
    r = run("configs/exp-1/exp-1-1.yaml", "--folder", "x", "--range", "model_params.radius=1:2")
    assert r.returncode == 2 and "START:STOP:STEP" in r.stderr


def test_the_sample_models_write_metrics(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    env = task_env(SLOTRUN_SIM_TIME=0)
    for config in ("configs/exp-2/exp-2-1-2.yaml", "configs/exp-3/exp-3-2-1.yaml"):
        subprocess.run([sys.executable, "run.py", "-c", config], cwd=ws, env=env, check=True,
                       capture_output=True, timeout=60)
    with open(os.path.join(ws, "results", "exp-2", "exp-2-1-2", "metrics.json")) as f:
        rect = json.load(f)
    values = merged(ws, "configs/exp-2/exp-2-1-2.yaml")["model_params"]
    assert rect["area"] == pytest.approx(values["length"] * values["width"])
    assert set(rect) == {"area", "perimeter", "diagonal", "time"}
    with open(os.path.join(ws, "results", "exp-3", "exp-3-2-1", "metrics.json")) as f:
        assert "area" in json.load(f)
