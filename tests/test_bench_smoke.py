"""The benchmark suite's smoke run: every script runs at tiny sizes and writes its results."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(400)
def test_bench_smoke_runs_and_writes_results(tmp_path):
    out = tmp_path / "bench-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTRUN_")}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--smoke", "--skip-install",
         "--out", str(out)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    path = out / "results-smoke.json"
    assert path.exists(), proc.stderr[-3000:]
    results = json.loads(path.read_text(encoding="utf-8"))
    assert results["smoke"] is True
    assert results["machine"]["nproc"] >= 1
    for wl in ("w1", "w2", "w3", "gap"):
        tools = results["workloads"][wl]["tools"]
        # xargs and slotrun (CPU mode; GPU mode on W1 and the gap) always run; the other
        # baselines only when installed
        assert tools["xargs"]["runs"], tools["xargs"]
        for mode in ("slotrun-gpu", "slotrun") if wl in ("w1", "gap") else ("slotrun",):
            assert tools[mode]["runs"], tools[mode]
            run = tools[mode]["runs"][0]
            assert run["succeeded"] == results["workloads"][wl]["tasks"] == run["logs"]
    for mode in ("slotrun-gpu", "slotrun"):
        run = results["workloads"]["gap"]["tools"][mode]["runs"][0]
        assert run["gap_median_ms"] >= 0 and run["first_start_ms"] > 0
    assert set(results["summary"]["w1"]["verdicts"]) == {"slotrun-gpu", "slotrun"}
    assert "model_ms" in results["summary"]["startup"]
    for name in ("server", "logflood", "clients", "submits", "memory"):
        status = results["workloads"][name]["status"]
        assert status == "ok" or status.startswith("not run"), status
    assert (out / "RESULTS-smoke.md").read_text(encoding="utf-8").startswith("# slotrun benchmark")
