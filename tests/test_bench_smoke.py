"""The benchmark suite's smoke run: every tool and both of slotrun's modes run at tiny sizes,
and the report is written.

The default test runs the job workloads (W1-W3, the slot gap) with every local tool and the
sample model's start-up. The rest (the Ray cluster, the py-spy profile and the server
workloads, each starting a cluster or a server, a server workload one in each mode) takes about
40 s more: it runs when BENCH_SMOKE_ALL=1 is set
(``BENCH_SMOKE_ALL=1 python3 -m pytest tests/test_bench_smoke.py``).
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_TOOLS = ["xargs", "slotrun-gpu", "slotrun", "simple_gpu_scheduler", "task-spooler",
               "GNU parallel"]
SERVER_WORKLOADS = ("server", "logflood", "clients", "submits", "memory")


def run_smoke(out, *args):
    """Run ``bench/run.py --smoke`` into ``out``; return its results."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTRUN_")}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--smoke", "--skip-install",
         "--out", str(out), *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    path = out / "results-smoke.json"
    assert path.exists(), proc.stderr[-3000:]
    results = json.loads(path.read_text(encoding="utf-8"))
    assert results["smoke"] is True
    assert results["machine"]["nproc"] >= 1
    assert (out / "RESULTS-smoke.md").read_text(encoding="utf-8").startswith("# slotrun benchmark")
    return results


@pytest.mark.timeout(300)
def test_bench_smoke_every_tool_and_mode_runs_and_the_report_is_written(tmp_path):
    out = tmp_path / "bench-out"
    results = run_smoke(out, "--only", "w1,w2,w3,gap,startup", "--tools", ",".join(LOCAL_TOOLS))
    installed = {t for t, b in results["baselines"].items() if b.get("available")}
    modes = {"w1": "slotrun-gpu", "gap": "slotrun-gpu", "w2": "slotrun", "w3": "slotrun"}
    for wl, mode in modes.items():
        tools = results["workloads"][wl]["tools"]
        # xargs and slotrun always run; the other baselines wherever they are installed
        for tool in LOCAL_TOOLS:
            if tool == "xargs" or tool == mode or (tool in installed
                                                   and not tool.startswith("slotrun")):
                assert tools[tool]["runs"], (wl, tool, tools[tool])
        run = tools[mode]["runs"][0]
        assert run["succeeded"] == results["workloads"][wl]["tasks"] == run["logs"], run
    for mode in ("slotrun-gpu", "slotrun"):
        assert any(mode in results["workloads"][wl]["tools"] for wl in modes), mode
    run = results["workloads"]["gap"]["tools"]["slotrun-gpu"]["runs"][0]
    assert run["gap_median_ms"] >= 0 and run["first_start_ms"] > 0
    assert set(results["summary"]["w1"]["verdicts"]) == {"slotrun-gpu", "slotrun"}
    assert results["summary"]["w1"]["verdicts"]["slotrun-gpu"] is not None
    assert results["summary"]["w2"]["verdicts"]["slotrun"] is not None
    assert "model_ms" in results["summary"]["startup"]


@pytest.mark.skipif(not os.environ.get("BENCH_SMOKE_ALL"),
                    reason="about 40 s: set BENCH_SMOKE_ALL=1 to run Ray, the profile and "
                           "the server workloads (in both modes) at smoke sizes")
@pytest.mark.timeout(400)
def test_bench_smoke_ray_profile_and_server_workloads(tmp_path):
    out = tmp_path / "bench-out"
    results = run_smoke(out, "--only", "w1,profile," + ",".join(SERVER_WORKLOADS),
                        "--tools", "xargs,slotrun-gpu,Ray")
    ray = results["workloads"]["w1"]["tools"].get("Ray")
    if results["baselines"].get("Ray", {}).get("available"):
        assert ray["runs"], ray
    assert "cpu" in results["profile"], results["profile"]
    for name in SERVER_WORKLOADS:
        entry = results["workloads"][name]
        status = entry["status"]
        assert status == "ok" or status.startswith("not run"), status
        if status == "ok":  # each server workload ran in both modes, each on its own server
            assert {k: m["status"] for k, m in entry["modes"].items()} == \
                {"cpu": "ok", "gpu": "ok"}, entry
            assert entry["modes"]["gpu"]["slots"].startswith("2 simulated GPUs"), entry
    clients = results["workloads"]["clients"]
    if clients["status"] == "ok":
        # GPU mode ran its tasks on the simulated GPUs, CPU mode on the CPU
        on = {k: m["with_clients"]["tasks_per_device"] for k, m in clients["modes"].items()}
        assert set(on["gpu"]) == {"gpu0", "gpu1"} and set(on["cpu"]) == {"cpu"}, on
        assert sum(on["gpu"].values()) == sum(on["cpu"].values()) == clients["modes"]["gpu"]["tasks"]
        verdicts = results["summary"]["clients"]["verdicts"]
        assert set(verdicts) == {"slotrun-gpu", "slotrun"} and None not in verdicts.values()
    md = (out / "RESULTS-smoke.md").read_text(encoding="utf-8")
    assert "a server with 8 CPU slots" not in md
