"""Submits against a busy server: latency with many clients, a 100,000-config batch, retries.

    python bench/submit_bench.py [--clients 20] [--submits 10] [--big 100000]
                                 [--baseline ebe558e] [--out bench/out/submit.json]

Both the code of this checkout and a baseline (a git revision, by default the last one that
read and parsed a batch's configs on the scheduler thread) run the same phases, one after the
other, on this machine:

- clients: a server with 2 CPU slots busy with short tasks (50 ms each, plenty queued);
  --clients threads each submit --submits batches of 20 configs (each config names a base).
  Reported: submit latency p50 / p95, and the slots' turnover meanwhile (the time from a
  task's end to the next start, p95 and max): a submit that blocks the scheduler shows there.
- big: the same with a --big-config batch (one POST, an Idempotency-Key header, the call
  timeout of multi-run.py --server: 30 s ... reported as is). Reported: the answer's status
  and time, the longest slot turnover while it was being accepted, and what a retry with
  the same key did (the same batch, or a second one).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.common import PY, clean_env, log, machine_info, percentile, write_result  # noqa: E402
from bench.soak import free_port  # noqa: E402

STAMP = os.path.join(HERE, "tasks", "stamp.py")
BIG_CACHE = os.path.join(tempfile.gettempdir(), f"slotrun-bench-big-{os.getuid()}")


def checkout(rev, root):
    """Extract a git revision of this repository into root; return root."""
    os.makedirs(root, exist_ok=True)
    archive = subprocess.run(["git", "-C", REPO, "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root


def make_workspace(path, groups):
    """Write {folder: count} configs (with a shared base) and run.py's neighbours."""
    for folder, count in groups.items():
        d = os.path.join(path, "configs", folder)
        os.makedirs(d, exist_ok=True)
        os.makedirs(os.path.join(path, "results", folder), exist_ok=True)
        with open(os.path.join(d, f"{folder}-base.yaml"), "w") as f:
            f.write("model_params:\n  name: circle\n  radius: 1.0\n")
        for i in range(count):
            with open(os.path.join(d, f"{folder}-{i:06d}.yaml"), "w") as f:
                f.write(f"base: {folder}-base.yaml\nmodel_params:\n  radius: {i}.0\n")
    return path


def big_workspace(n):
    """Return a workspace holding n configs under configs/big/ and 300 under configs/bg/
    (the configs are written once and kept; the state and results start empty each time)."""
    path = f"{BIG_CACHE}-{n}"
    if not os.path.exists(os.path.join(path, "ready")):
        shutil.rmtree(path, ignore_errors=True)
        log(f"writing {n} configs to {path} (once)")
        make_workspace(path, {"big": n, "bg": 300})
        open(os.path.join(path, "ready"), "w").close()
    for folder in (".slotrun", "results"):
        shutil.rmtree(os.path.join(path, folder), ignore_errors=True)
    for folder in ("big", "bg"):
        os.makedirs(os.path.join(path, "results", folder))
    return path


class Server:
    """``python -m app serve`` from a given code root on a loopback port."""

    def __init__(self, code, ws, log_path, **settings):
        import requests

        self.url = f"http://127.0.0.1:{free_port()}"
        env = clean_env(SLOTRUN_AUTH="false", PYTHONPATH=code, PYTHONUNBUFFERED=1,
                        SLOTRUN_FAKE_GPU_DIR=os.path.join(os.path.dirname(log_path), "fakegpu"),
                        **{f"SLOTRUN_{k.upper()}": v for k, v in settings.items()})
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "app", "serve", "--port", self.url.rsplit(":", 1)[1], "--workspace", ws],
            cwd=code, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        self.http = requests.Session()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get(self.url + "/api/v1/status", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def post(self, path, body, headers=None, timeout=120):
        """POST JSON; return (status, seconds, JSON or None)."""
        t0 = time.perf_counter()
        r = self.http.post(self.url + "/api/v1" + path, json=body, headers=headers or {},
                           timeout=timeout)
        took = time.perf_counter() - t0
        try:
            data = r.json()
        except ValueError:
            data = None
        return r.status_code, took, data

    def stop(self):
        """Stop the server and the tasks it still runs."""
        try:
            self.post("/queue/pause", {})
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def read_stamps(ws, folder):
    """Return [(start, end)] seconds of every stamp task run under results/<folder>/."""
    out = []
    root = os.path.join(ws, "results", folder)
    for name in os.listdir(root):
        if name.endswith(".runs"):
            with open(os.path.join(root, name)) as f:
                out += [tuple(int(x) / 1e9 for x in line.split()) for line in f if line.strip()]
    return out


def turnovers(stamps, t0, t1):
    """Return the gaps from each end in [t0, t1] to the next start (slots kept busy)."""
    starts = sorted(s for s, _ in stamps)
    gaps = []
    import bisect

    for _, e in stamps:
        if t0 <= e <= t1:
            i = bisect.bisect_left(starts, e)
            if i < len(starts):
                gaps.append(starts[i] - e)
    return gaps


def phase_clients(code, root, clients, submits):
    """Many clients submitting small batches while 2 slots turn over short tasks."""
    ws = make_workspace(os.path.join(root, "ws-clients"), {"bg": 400, "sub": 400})
    server = Server(code, ws, os.path.join(root, "clients.log"), cpu_slots=2,
                    command=f"{{python}} -I -S {STAMP} {{results}}.runs 0.05")
    try:
        server.post("/batches", {"pattern": "configs/bg/", "use_gpu": False})
        time.sleep(1)  # the slots are turning over
        latencies, errors = [], []
        lock = threading.Lock()

        def client(k):
            for j in range(submits):
                first = (k * submits + j) * 20 % 400
                names = "|".join(f"{i:06d}" for i in range(first, first + 20))
                status, took, _ = server.post("/batches", {
                    "pattern": f"configs/sub/sub-({names})", "use_gpu": False, "overwrite": True})
                with lock:
                    latencies.append(took)
                    if status != 201:
                        errors.append(status)

        t0 = time.time()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t1 = time.time()
        time.sleep(0.5)
        gaps = turnovers(read_stamps(ws, "bg") + read_stamps(ws, "sub"), t0, t1)
        return {"submits": len(latencies), "errors": errors,
                "p50_ms": round(1000 * percentile(latencies, 50), 1),
                "p95_ms": round(1000 * percentile(latencies, 95), 1),
                "max_ms": round(1000 * max(latencies), 1),
                "turnover_p95_ms": round(1000 * percentile(gaps, 95), 1) if gaps else None,
                "turnover_max_ms": round(1000 * max(gaps), 1) if gaps else None,
                "turnovers": len(gaps)}
    finally:
        server.stop()


def phase_big(code, root, n):
    """One batch of n configs while 2 slots turn over short tasks; then a retry."""
    ws = big_workspace(n)
    server = Server(code, ws, os.path.join(root, "big.log"), cpu_slots=2,
                    command=f"{{python}} -I -S {STAMP} {{results}}.runs 0.05")
    try:
        server.post("/batches", {"pattern": "configs/bg/", "use_gpu": False})
        time.sleep(1)  # the slots are turning over
        key = {"Idempotency-Key": f"bench-{time.time_ns()}"}
        t0 = time.time()
        try:
            status, took, data = server.post("/batches", {"pattern": "configs/big/",
                                                          "use_gpu": False}, key, timeout=300)
        except Exception as e:  # noqa: BLE001 - a timeout is a result
            status, took, data = f"no answer: {e.__class__.__name__}", time.time() - t0, None
        t1 = time.time()
        time.sleep(0.5)
        gaps = turnovers(read_stamps(ws, "bg"), t0, t1)
        first_id = (data or {}).get("id")
        status2, took2, data2 = server.post("/batches", {"pattern": "configs/big/",
                                                         "use_gpu": False}, key, timeout=300)
        batches = server.http.get(server.url + "/api/v1/batches", timeout=60).json()["batches"]
        return {"configs": n, "status": status, "seconds": round(took, 2),
                "tasks": (data or {}).get("total"),
                "turnover_max_ms_meanwhile": round(1000 * max(gaps), 1) if gaps else None,
                "turnovers_meanwhile": len(gaps),
                "retry_status": status2, "retry_seconds": round(took2, 2),
                "retry_same_batch": (data2 or {}).get("id") == first_id,
                "batches_created": sum(b["pattern"] == "configs/big/" for b in batches)}
    finally:
        server.stop()


def main(argv=None):
    """Run both phases on this checkout and on the baseline; print and save the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--submits", type=int, default=10)
    p.add_argument("--big", type=int, default=100000)
    p.add_argument("--baseline", default="ebe558e",
                   help="git revision to compare with (default: before submits left the "
                        "scheduler thread); 'none' to skip")
    p.add_argument("--out", default=os.path.join(HERE, "out", "submit.json"))
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="slotrun-submit-")
    codes = {"this checkout": REPO}
    if args.baseline != "none":
        codes[f"baseline {args.baseline}"] = checkout(args.baseline, os.path.join(root, "base"))
    result = {"machine": machine_info(), "clients": args.clients, "submits": args.submits}
    try:
        for name, code in codes.items():
            log(f"{name}: {args.clients} clients")
            work = tempfile.mkdtemp(prefix="run-", dir=root)
            result.setdefault(name, {})["clients"] = phase_clients(code, work, args.clients,
                                                                    args.submits)
            if args.big:
                log(f"{name}: one batch of {args.big} configs")
                result[name]["big"] = phase_big(code, tempfile.mkdtemp(prefix="big-", dir=root),
                                                args.big)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
