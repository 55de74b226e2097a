"""The demo family a new user starts with (configs/demo/): what it promises, and that it runs
as promised on four simulated GPUs (shortened with SLOTRUN_SIM_TIME, as the README says)."""

import glob
import os

import yaml

from app import create_app
from tests.helpers import ROOT, close_apps, wait_for


def demo_configs():
    """Return {name: model_params} of the demo's task configs (merged over their base)."""
    base = yaml.safe_load(open(os.path.join(ROOT, "configs", "demo", "demo-base.yaml")))
    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "demo", "demo-*.yaml"))):
        if path.endswith("-base.yaml"):
            continue
        data = yaml.safe_load(open(path))
        assert data["base"] == "demo-base.yaml"
        out[os.path.basename(path)[:-5]] = {**base["model_params"], **data["model_params"]}
    return out


def test_the_demo_runs_20_to_60_seconds_with_progress_memory_and_one_failure():
    demo = demo_configs()
    assert len(demo) == 8
    for name, params in demo.items():
        assert 20 <= params["sim_time"] <= 60, name
        assert params["progress_steps"] >= 20, name
        # Declared in the config itself (slotrun reads it before the run starts).
        assert isinstance(params["gpu_memory"], list) and len(params["gpu_memory"]) == 2, name
    failing = [n for n, p in demo.items() if p.get("diverge_at_step")]
    assert failing == ["demo-4-unstable"]
    assert demo["demo-4-unstable"]["diverge_at_step"] < demo["demo-4-unstable"]["progress_steps"]


def test_the_demo_batch_runs_on_four_gpus(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "4")
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.3")
    app = create_app({"TESTING": True, "workspace": workspace, "auth": False})
    try:
        client = app.test_client()
        r = client.post("/api/v1/batches", json={"pattern": "demo/"})
        assert r.status_code == 201 and r.json["total"] == 8, r.json
        batch = wait_for(lambda: (lambda b: b if b["finished"] else None)(
            client.get(f"/api/v1/batches/{r.json['id']}").json), 60, interval=0.1)
        assert batch["counts"]["succeeded"] == 7 and batch["counts"]["failed"] == 1
        tasks = {t["name"]: t for t in client.get(f"/api/v1/tasks?batch={batch['id']}").json["tasks"]}
        failed = tasks["demo-4-unstable"]
        assert failed["state"] == "failed"
        assert failed["last_line"] == ("FloatingPointError: the solution diverged at step 12/30 "
                                       "(residual 3.2e+09 > 1e+06): lower the time step")
        assert {t["device"] for t in tasks.values()} == {"gpu0", "gpu1", "gpu2", "gpu3"}
        assert tasks["demo-1-small"]["last_line"].startswith("done in ")
        assert tasks["demo-1-small"]["memory"] == 3 * 1024**3  # its declared need
    finally:
        close_apps([app])
