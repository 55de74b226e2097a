"""multi-run.py end to end, as its users run it: real subprocesses, real files."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, task_env, wait_for

pytestmark = pytest.mark.slow


def multi_run(ws, *args, env=None, timeout=60, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, os.path.join(ROOT, "multi-run.py"), *args],
                          cwd=ws, env=env or task_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=stdin)


def metas(ws, group):
    out = []
    root = os.path.join(ws, "results", group)
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name, "meta.json")) as f:
            out.append(json.load(f))
    return out


def max_overlap(intervals):
    """Return the largest number of intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda p: (p[0], p[1]))
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


def test_example_1_on_four_simulated_gpus(workspace):
    r = multi_run(workspace, "-c", "exp-1", "-d", "0", "1", "0", "1", "-check", "false",
                  env=task_env(SLOTRUN_FAKE_GPUS=4, SLOTRUN_SIM_TIME=0.5))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    starts = [line for line in lines if line.startswith("Start the process with ")]
    finished = [line for line in lines if line.startswith("The process finished: ")]
    assert sorted(s.split()[-1] for s in starts) == [
        "configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml", "configs/exp-1/exp-1-3.yaml"]
    assert [f[-5:] for f in finished] == ["[1/3]", "[2/3]", "[3/3]"]
    assert all(f.startswith("The process finished: python run.py -c configs/exp-1/exp-1-")
               for f in finished)
    # Two start at once; the third starts as soon as a slot frees: after the first "finished"
    # line (both may end in the same instant) and before the last one.
    assert lines[0].startswith("Start") and lines[1].startswith("Start")
    third = max(i for i, line in enumerate(lines) if line.startswith("Start"))
    assert lines.index(finished[0]) < third < lines.index(finished[2])
    assert lines[-1] == "Summary: 3 succeeded, 0 failed, 0 skipped"
    m = metas(workspace, "exp-1")
    assert len(m) == 3
    assert {x["cuda_visible_devices"] for x in m} == {"1", "3"}
    for gpu in ("1", "3"):
        assert max_overlap([(x["started"], x["finished"]) for x in m
                            if x["cuda_visible_devices"] == gpu]) == 1
    for radius, name in ((1.0, "exp-1-1"), (10.0, "exp-1-2"), (100.0, "exp-1-3")):
        with open(os.path.join(workspace, "results", "exp-1", name, "area.txt")) as f:
            assert float(f.read()) == pytest.approx(3.141592653589793 * radius ** 2)
    assert not os.path.exists(os.path.join(workspace, "results", "exp-1", "exp-1-base"))


def test_example_2_regex_on_cpu(workspace):
    r = multi_run(workspace, "-c", r"exp-(2|3)-1-\d*", "-gpu", "false", "-d", "3", "-check", "false",
                  env=task_env(SLOTRUN_SIM_TIME=0.5))
    assert r.returncode == 0, r.stderr
    starts = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("Start")]
    assert sorted(starts) == ["configs/exp-2/exp-2-1-1.yaml", "configs/exp-2/exp-2-1-2.yaml",
                              "configs/exp-3/exp-3-1-1.yaml", "configs/exp-3/exp-3-1-2.yaml"]
    lines = r.stdout.splitlines()
    assert [line.startswith("Start") for line in lines[:4]] == [True, True, True, False]
    m = metas(workspace, "exp-2") + metas(workspace, "exp-3")
    assert len(m) == 4
    assert {x["cuda_visible_devices"] for x in m} == {""}  # CPU tasks see no GPU
    assert max_overlap([(x["started"], x["finished"]) for x in m]) == 3


def test_skip_and_overwrite(workspace):
    assert multi_run(workspace, "-c", "exp-1-1", "-gpu", "false", "-check", "false").returncode == 0
    r = multi_run(workspace, "-c", "exp-1-[12]", "-gpu", "false", "-check", "false")
    assert r.returncode == 0
    assert "Skip configs/exp-1/exp-1-1.yaml (results already complete" in r.stdout
    assert "Start the process with configs/exp-1/exp-1-2.yaml" in r.stdout
    assert "Start the process with configs/exp-1/exp-1-1.yaml" not in r.stdout
    assert r.stdout.splitlines()[-1] == "Summary: 1 succeeded, 0 failed, 1 skipped"
    r = multi_run(workspace, "-c", "exp-1-1", "-gpu", "false", "-check", "false", "-w", "true")
    assert r.returncode == 0 and "Start the process with configs/exp-1/exp-1-1.yaml" in r.stdout
    r = multi_run(workspace, "-c", "exp-1-1", "-gpu", "false", "-check", "false",
                  "--overwrite", "false")
    assert "Skip configs/exp-1/exp-1-1.yaml" in r.stdout


def test_check_without_terminal_does_not_hang_and_runs_nothing(workspace):
    t0 = time.monotonic()
    r = multi_run(workspace, "-c", "exp-1", "-gpu", "false", timeout=30)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1
    assert "configs/exp-1/exp-1-1.yaml" in r.stdout and "run these? [y/n]" in r.stdout
    assert "Nothing was run" in r.stdout
    assert not os.path.exists(os.path.join(workspace, "results", "exp-1"))


def test_check_answered_yes_runs(workspace):
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "exp-1-1", "-gpu", "false"],
        cwd=workspace, env=task_env(), capture_output=True, text=True, input="y\n", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "The process finished: python run.py -c configs/exp-1/exp-1-1.yaml --overwrite False " \
        "[1/1]" in r.stdout


def test_no_gpu_gives_one_clear_line(workspace):
    env = task_env()
    env.pop("SLOTRUN_FAKE_GPUS", None)
    r = multi_run(workspace, "-c", "exp-1", "-check", "false", env=env)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "no NVIDIA GPU was found" in r.stderr and "-gpu false" in r.stderr
    assert "SLOTRUN_FAKE_GPUS" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, expect", [
    (["-c", "exp-(1", "-gpu", "false"], "invalid regular expression"),
    (["-c", "nothing-matches-this", "-gpu", "false"], "no config in configs/ matches"),
    (["-c", "exp-1", "-d", "-1", "1"], "cannot be negative"),
    (["-c", "exp-1", "-d", "1.5"], "whole numbers"),
    (["-c", "exp-1", "-d", "x"], "whole numbers"),
    (["-c", "exp-1", "-d", "0", "0", "0", "0"], "every slot count is 0"),
    (["-c", "exp-1", "-gpu", "false", "-d", "0"], "every slot count is 0"),
    (["-c", "exp-1", "-gpu", "false", "-d", "1", "2"], "one number"),
    (["-c", "exp-1", "-d", "1", "1", "1", "1", "1"], "5 slot counts but 4 GPU(s)"),
    (["-c", "exp-1", "-gpu", "maybe"], "expected true or false"),
    (["-c", "exp-1", "--command", "{python} run.py -c {cfg}"], "unknown placeholder {cfg}"),
])
def test_bad_input_is_a_clear_error(workspace, args, expect):
    r = multi_run(workspace, *args, "-check", "false", env=task_env(SLOTRUN_FAKE_GPUS=4))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(os.path.join(workspace, "results", "exp-1"))


def test_help_lists_the_original_flags(workspace):
    r = multi_run(workspace, "--help")
    assert r.returncode == 0
    for flag in ("-c KEY", "-d N", "-gpu", "-check", "-overwrite", "--command"):
        assert flag in r.stdout


def test_failure_malformed_yaml_and_odd_names(workspace):
    cfg = os.path.join(workspace, "configs", "odd")
    os.makedirs(cfg)
    with open(os.path.join(cfg, "broken.yaml"), "w") as f:
        f.write("model_params: [unclosed\n")
    odd = "a;rm -rf x $(touch pwned) `id` 'q'.yaml"
    with open(os.path.join(cfg, odd), "w") as f:
        f.write("model_params:\n  name: circle\n  radius: 2.0\n")
    with open(os.path.join(cfg, "with space.yaml"), "w") as f:
        f.write("model_params:\n  name: triangle\n  base: 2.0\n  height: 2.0\n")
    r = multi_run(workspace, "-c", "configs/odd/", "-gpu", "false", "-d", "2", "-check", "false")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == "Summary: 2 succeeded, 1 failed, 0 skipped"
    assert "The process failed: python run.py -c configs/odd/broken.yaml" in r.stdout
    # The message says why: the exit code and the log's first error line.
    assert "- exit code 2: error: configs/odd/broken.yaml is not valid YAML" in r.stdout
    assert not os.path.exists(os.path.join(workspace, "pwned"))
    assert os.path.isdir(os.path.join(workspace, "configs", "exp-1"))  # nothing was removed
    with open(os.path.join(workspace, "results", "odd", odd[:-5], "area.txt")) as f:
        assert float(f.read()) == pytest.approx(3.141592653589793 * 4)
    assert os.path.exists(os.path.join(workspace, "results", "odd", "with space", "area.txt"))
    db = sqlite3.connect(os.path.join(workspace, ".slotrun", "state.db"))
    tid, = db.execute("SELECT id FROM tasks WHERE config LIKE '%broken.yaml'").fetchone()
    with open(os.path.join(workspace, ".slotrun", "runs", f"{tid}-1", "output.log")) as f:
        log = f.read()
    assert "is not valid YAML" in log and "Traceback" not in log


SPAWNER = r'''
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(os.path.join(os.environ["SLOTRUN_RESULTS"] + ".pids"), "w") as f:
    f.write(f"{os.getpid()} {child.pid}\n")
time.sleep(120)
'''


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_kills_process_trees_and_resume_reruns(workspace, sig):
    with open(os.path.join(workspace, "spawner.py"), "w") as f:
        f.write(SPAWNER)
    os.makedirs(os.path.join(workspace, "results", "exp-1"), exist_ok=True)
    env = task_env(SLOTRUN_KILL_GRACE=2)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "exp-1", "-gpu", "false", "-d",
         "2", "-check", "false", "--command", "{python} spawner.py {config}"],
        cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pidfiles = [os.path.join(workspace, "results", "exp-1", f"exp-1-{i}.pids") for i in (1, 2, 3)]
    wait_for(lambda: sum(os.path.exists(p) and os.path.getsize(p) > 0 for p in pidfiles) == 2,
             timeout=20)
    pids = []
    for p in pidfiles:
        if os.path.exists(p):
            with open(p) as f:
                pids += [int(x) for x in f.read().split()]
    assert len(pids) == 4 and all(_alive(p) for p in pids)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 8
    assert proc.returncode == 130, err
    assert "Interrupted: stopping 2 running task(s)" in out
    assert "interrupted" in out and "1 cancelled" in out
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=5, message="orphans left")
    # Resume: the interrupted and never-started configs run again; completed ones are skipped.
    for p in pidfiles:
        if os.path.exists(p):
            os.unlink(p)
    r = multi_run(workspace, "-c", "exp-1-[12]", "-gpu", "false", "-d", "2", "-check", "false")
    assert r.returncode == 0
    assert r.stdout.count("Start the process") == 2


def test_second_engine_on_the_same_workspace_is_refused(workspace):
    env = task_env(SLOTRUN_SIM_TIME=3)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "exp-1-1", "-gpu", "false",
         "-check", "false"], cwd=workspace, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("Start the process")
        r = multi_run(workspace, "-c", "exp-1-2", "-gpu", "false", "-check", "false")
        assert r.returncode == 2
        assert "already in use by another slotrun engine" in r.stderr
        assert f"pid {proc.pid}" in r.stderr
        assert r.stderr.count("\n") == 1
    finally:
        proc.kill()
        proc.wait()
