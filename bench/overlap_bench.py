"""One run per config: overlapping batches from several users, and multi-run.py rerun after
kill -9. Every run stamps its own start and end beside its results, so runs are counted from
what ran.

    python bench/overlap_bench.py [--configs 500] [--out bench/out/overlap.json]

- overlap: a server with accounts, 3 users, 4 GPUs x 2 slots (simulated); the three submit
  once-[1-4], once-[3-6] and once (all) at the same moment, repeated over --groups folders of
  6 configs. Reported: runs, configs run more than once, configs run twice at the same time.
- rerun: multi-run.py over --configs configs on 8 CPU slots, killed with SIGKILL once a
  third of them ended, then the same command again. Reported: configs run more than once,
  of them while a re-adopted run was still going, and what is left queued.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.common import PY, clean_env, log, machine_info, write_result  # noqa: E402
from bench.soak import free_port  # noqa: E402

STAMP = os.path.join(HERE, "tasks", "soak_task.py")


def write_group(ws, group, n, seconds):
    """Write configs <group>-1..n (sim_time ``seconds``); return their paths."""
    d = os.path.join(ws, "configs", group)
    os.makedirs(d, exist_ok=True)
    os.makedirs(os.path.join(ws, "results", group), exist_ok=True)
    for i in range(1, n + 1):
        with open(os.path.join(d, f"{group}-{i}.yaml"), "w") as f:
            f.write(f"model_params:\n  name: circle\n  sim_time: {seconds}\n")
    return [f"configs/{group}/{group}-{i}.yaml" for i in range(1, n + 1)]


def runs(ws, config):
    """Return [(start, end)] of every run of a config."""
    path = os.path.join(ws, "results", config[len("configs/"):-len(".yaml")] + ".runs")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(int(x) / 1e9 for x in line.split()[:2]) for line in f if line.strip()]


def concurrent(spans):
    s = sorted(spans)
    return any(b[0] < a[1] for a, b in zip(s, s[1:]))


def overlap(root, groups):
    """Three users submit overlapping patterns at once; count runs per config."""
    import requests

    from app.accounts import Accounts
    from app.store import Store

    ws = os.path.join(root, "ws-overlap")
    os.makedirs(ws)
    configs = []
    for g in range(groups):
        configs += write_group(ws, f"once{g}", 6, 0.5)
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    tokens = {}
    for user in ("ann", "bob", "cy"):
        acc.add_user(user, "member", f"pw-{user}-12345")
        tokens[user] = acc.create_token(user, "bench")[1]
    port = free_port()
    env = clean_env(SLOTRUN_FAKE_GPUS=4, SLOTRUN_GPU_SLOTS=2, PYTHONUNBUFFERED=1,
                    SLOTRUN_FAKE_GPU_DIR=os.path.join(root, "fakegpu"), PYTHONPATH=REPO,
                    SLOTRUN_COMMAND=f"{{python}} -I -S {STAMP} {{config}} {{results}}.runs")
    with open(os.path.join(root, "overlap.log"), "wb") as out:
        server = subprocess.Popen([PY, "-m", "app", "serve", "--port", str(port), "--workspace",
                                   ws], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "/status", timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        patterns = {"ann": r"once\d+/once\d+-[1-4]", "bob": r"once\d+/once\d+-[3-6]",
                    "cy": r"once\d+/"}
        answers = {}
        go = threading.Barrier(3)

        def submit(user):
            go.wait()
            answers[user] = requests.post(url + "/batches", json={"pattern": patterns[user]},
                                          headers={"Authorization": f"Bearer {tokens[user]}"},
                                          timeout=60).json()

        threads = [threading.Thread(target=submit, args=(u,)) for u in patterns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store = Store(os.path.join(ws, ".slotrun", "state.db"))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            c = store.state_counts()
            if not c.get("queued") and not c.get("running"):
                break
            time.sleep(0.2)
        counts = store.state_counts()
    finally:
        server.terminate()
        server.wait(20)
    per = {c: runs(ws, c) for c in configs}
    return {"configs": len(configs), "tasks": sum(a.get("total", 0) for a in answers.values()),
            "runs": sum(len(r) for r in per.values()),
            "configs_run_more_than_once": sum(len(r) > 1 for r in per.values()),
            "configs_run_twice_at_once": sum(concurrent(r) for r in per.values()),
            "configs_never_run": sum(not r for r in per.values()), "states": counts}


def rerun(root, n):
    """multi-run.py killed with SIGKILL mid-run, then run again: count runs per config."""
    from app.store import Store

    ws = os.path.join(root, "ws-rerun")
    configs = write_group(ws, "k", n, 1.0)
    argv = [PY, os.path.join(REPO, "multi-run.py"), "-c", "configs/k/", "-gpu", "false", "-d",
            "8", "-check", "false", "--command", f"{{python}} -I -S {STAMP} {{config}} "
            "{results}.runs"]
    env = clean_env(PYTHONPATH=REPO, SLOTRUN_FAKE_GPU_DIR=os.path.join(root, "fakegpu"))
    first = subprocess.Popen(argv, cwd=ws, env=env, stdout=subprocess.PIPE, text=True)
    ended = 0
    for line in first.stdout:
        if line.startswith("The process "):
            ended += 1
            if ended >= n // 3:
                break
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    t0 = time.monotonic()
    second = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, timeout=1200)
    per = {c: runs(ws, c) for c in configs}
    twice = [c for c, r in per.items() if len(r) > 1]
    while_going = [c for c in twice if concurrent(per[c])]
    counts = Store(os.path.join(ws, ".slotrun", "state.db")).state_counts()
    return {"configs": n, "killed_after_ends": ended,
            "readopted_running_at_kill": sum(1 for r in per.values()
                                             if any(s < killed_at < e for s, e in r)),
            "rerun_status": second.returncode, "rerun_seconds": round(time.monotonic() - t0, 1),
            "rerun_summary": second.stdout.strip().splitlines()[-1] if second.stdout else "",
            "configs_run_more_than_once": len(twice),
            "of_them_while_the_first_run_went_on": len(while_going),
            "left_queued": counts.get("queued", 0), "states": counts}


def main(argv=None):
    """Run both scenarios; print and save the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=int, default=500, help="configs of the rerun scenario")
    p.add_argument("--groups", type=int, default=5, help="folders of 6 configs to overlap")
    p.add_argument("--out", default=os.path.join(HERE, "out", "overlap.json"))
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="slotrun-overlap-")
    try:
        log("overlapping batches from three users")
        result = {"overlap": overlap(root, args.groups)}
        log(f"multi-run.py rerun after kill -9 ({args.configs} configs)")
        result["rerun"] = rerun(root, args.configs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = machine_info()
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
