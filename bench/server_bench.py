"""The workloads that need the web server (``python -m app serve``): scale, log flood, clients.

Each one starts its own server on a free loopback port in a scratch workspace, drives it
through the JSON API (/api/v1/...) and Socket.IO (events "task", "tasks", "log"; "follow"),
and reads the server process's CPU time and memory from /proc. When the web layer is not
there (no app/web/api.py) or the Socket.IO client is not installed, each workload reports
"not run: ..." instead of failing.

Each workload runs twice in one call, each time on a server of its own: in CPU mode (S CPU
slots, batches posted with "use_gpu": false), then in GPU mode (2 simulated GPUs sharing the
same S slots, SLOTRUN_FAKE_GPU_DIR under the run's folder, batches with "use_gpu": true,
admission at its default). Its result holds both under "modes" ("cpu", "gpu"), each judged
by the same rules against figures of its own mode.

- server: 100,000 tasks of history (four owners); dashboard page and first page of
  /api/v1/tasks p95; the team table's owner filter, text search and a bulk action's dry run
  over all of them, as ratios to the plain first page; a 10,000-task batch accepted; the
  server's CPU while idle.
- logflood: 4 tasks each writing 50 MB as fast as they can while one client follows one
  of them: bytes on disk, API p95 meanwhile, server memory growth, log messages per second.
- clients: 1,000 tasks with 0 and then 50 Socket.IO clients connected: every client gets
  every task's final state; the server's CPU time per task.
"""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import traceback
from typing import NamedTuple

from .common import (PY, REPO, TASKS, children_cpu, clean_env, log, median, percentile, remove,
                     scratch)

NOT_AVAILABLE = "not run: server not available (no app/web/api.py)"
TICK = os.sysconf("SC_CLK_TCK")
FAKE_GPUS = 2


class Mode(NamedTuple):
    """How a workload's server runs its tasks: on CPU slots, or on simulated GPUs."""

    key: str  # the key of its result: "cpu" or "gpu"
    label: str
    use_gpu: bool  # the batches' "use_gpu"

    def settings(self, slots, d):
        """Return the Server settings for ``slots`` slots in all (in GPU mode shared by the
        simulated GPUs, whose memory files go under the run's folder ``d``)."""
        if not self.use_gpu:
            return {"cpu_slots": slots}
        return {"fake_gpus": FAKE_GPUS, "fake_gpu_dir": os.path.join(d, "fakegpu"),
                "gpu_slots": max(1, slots // FAKE_GPUS)}

    def slots_text(self, slots):
        """Return where the tasks run, in words."""
        if not self.use_gpu:
            return f"{slots} CPU slots"
        per = max(1, slots // FAKE_GPUS)
        return (f"{FAKE_GPUS} simulated GPUs × {per} slot{'s' if per > 1 else ''}, "
                "admission at its default")


CPU_MODE = Mode("cpu", "CPU mode", False)
GPU_MODE = Mode("gpu", "GPU mode", True)
# Run in this order (CPU mode first, measured as before GPU mode was added); reported GPU
# mode first, the headline.
MODES = (CPU_MODE, GPU_MODE)
REPORT_ORDER = ("gpu", "cpu")
LABELS = {m.key: m.label for m in MODES}


def server_available():
    """Return None when the server workloads can run, else why not."""
    if not os.path.exists(os.path.join(REPO, "app", "web", "api.py")):
        return NOT_AVAILABLE
    try:
        import requests  # noqa: F401
        import socketio  # noqa: F401
        import websocket  # noqa: F401
    except ImportError as e:
        return f"not run: client library missing ({e.name}); pip install -e '.[test]'"
    return None


# -- the server process -------------------------------------------------------------------------

def free_port():
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    """Return a process's own CPU seconds (all its threads; not its children)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss_mb(pid):
    """Return a process's resident memory in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """A ``python -m app serve`` process on a free loopback port, with an HTTP session."""

    def __init__(self, ws, **settings):
        import requests

        self.ws = ws
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = clean_env(SLOTRUN_AUTH="false", PYTHONPATH=REPO,
                        **{f"SLOTRUN_{k.upper()}": v for k, v in settings.items()})
        self.log_path = os.path.join(os.path.dirname(ws), "server.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workspace", ws], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.http = requests.Session()
        self.headers = {}
        self._wait_ready()

    def _wait_ready(self, timeout=60):
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}: "
                                   + self.tail())
            try:
                r = self.http.get(self.url + "/api/v1/status", timeout=2)
                if r.status_code == 200:
                    return
                if r.status_code in (401, 403):
                    raise RuntimeError("the server asks for a login although SLOTRUN_AUTH=false "
                                       f"(status {r.status_code})")
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not answer /api/v1/status in time: " + self.tail())

    def tail(self):
        """Return the end of the server's console output."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-1500:]
        except OSError:
            return ""

    def get(self, path, **kw):
        """GET a path; return the response."""
        return self.http.get(self.url + path, timeout=30, headers=self.headers, **kw)

    def post(self, path, body=None):
        """POST JSON; return the response."""
        return self.http.post(self.url + path, json=body if body is not None else {}, timeout=120,
                              headers=self.headers)

    def _tree(self):
        import psutil

        try:
            me = psutil.Process(self.pid)
            return [self.pid] + [p.pid for p in me.children(recursive=True)
                                 if p.name().startswith(("python", "gunicorn", "slotrun"))]
        except psutil.Error:
            return [self.pid]

    def cpu(self):
        """Return the server's CPU seconds so far (gunicorn's master and worker; not tasks)."""
        total = 0.0
        for pid in self._tree():
            try:
                total += proc_cpu(pid)
            except OSError:
                pass
        return total

    def rss(self):
        """Return the server's resident memory in MB (its largest process: the worker)."""
        sizes = []
        for pid in self._tree():
            try:
                sizes.append(proc_rss_mb(pid))
            except OSError:
                pass
        return max(sizes, default=0.0)

    def wait_batch(self, batch_id, timeout=600):
        """Poll the batch until no task is queued or running; return its summary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.get(f"/api/v1/batches/{batch_id}?per_page=1").json()
            c = b.get("counts", {})
            if c.get("queued", 0) + c.get("running", 0) == 0:
                return b
            time.sleep(0.1)
        raise RuntimeError(f"batch {batch_id} did not finish within {timeout} s")

    def stop(self):
        """Stop the server (SIGINT, then SIGKILL) and close its log."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        finally:
            self.http.close()
            self._log.close()


def write_configs(ws, folder, names):
    """Write one tiny config per name under configs/<folder>/."""
    root = os.path.join(ws, "configs", folder)
    os.makedirs(root, exist_ok=True)
    for n in names:
        with open(os.path.join(root, n + ".yaml"), "w", encoding="utf-8") as f:
            f.write("model_params: {name: circle, radius: 1.0}\n")


def latencies(server, path, n):
    """Return n sequential response times of GET path, in ms (every answer must be 200)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = server.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path} answered {r.status_code}: {r.text[:200]}")
    return out


def lat_summary(values):
    """Return median / p95 / max of latencies in ms."""
    return {"n": len(values), "median_ms": median(values), "p95_ms": percentile(values, 95),
            "max_ms": max(values) if values else None}


def idle_cpu(server, seconds):
    """Return the server's CPU use over ``seconds`` of waiting, in % of one core."""
    c0, t0 = server.cpu(), time.monotonic()
    time.sleep(seconds)
    return (server.cpu() - c0) / (time.monotonic() - t0) * 100


# -- Socket.IO clients ----------------------------------------------------------------------------

_STATE_RANK = {"queued": 0, "running": 1}  # every other state is final: 2


class Client:
    """One Socket.IO client (websocket transport) that records what the server pushes and,
    as the dashboard does, re-fetches the tasks over HTTP on a "tasks" notice or a reconnect."""

    def __init__(self, url, headers=None):
        import socketio

        self.url = url
        self.headers = headers or {}
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.2)
        self.states = {}  # task id -> last state pushed (or re-fetched)
        self.pushed = {}  # task id -> (attempts, rank of the state) of the latest push applied
        self.reordered = 0  # pushes applied after a later one of the same task (kept out)
        self.notices = 0  # "tasks" notices (a burst coalesced, or fell behind: re-fetch)
        self.refetches = 0  # re-fetches done (after a notice or a reconnect)
        self.messages = 0  # task_list messages received
        self.log_msgs = []  # (monotonic time, bytes) of each "log" message
        self.log_text = {}  # task id -> text received
        self.lock = threading.Lock()
        self.disconnects = 0
        self.connects = 0
        self.batch = None  # the batch to re-fetch
        self._refetch = threading.Event()
        self._closed = False
        self.sio.on("connect", self._connected)
        self.sio.on("disconnect", self._gone)
        self.sio.on("task_list", self._task_list)
        self.sio.on("task", self._task)
        self.sio.on("tasks", self._tasks)
        self.sio.on("log", self._logmsg)
        self._thread = threading.Thread(target=self._refetcher, daemon=True)
        self._thread.start()
        self.sio.connect(url, transports=["websocket"], headers=self.headers, wait_timeout=20)

    def _connected(self):
        with self.lock:
            self.connects += 1
            again = self.connects > 1
        if again:
            self._refetch.set()  # what happened while disconnected

    def _gone(self, *args):
        with self.lock:
            self.disconnects += 1

    def _task(self, data):
        with self.lock:
            self._apply(data)

    def _task_list(self, data):
        with self.lock:
            self.messages += 1
            for t in data.get("tasks", ()):
                self._apply(t)

    def _apply(self, t):
        # python-socketio runs each message's handler on a thread of its own, so two lists
        # sent in order may be applied out of order here (a browser applies them in order):
        # a push never takes a task back to an earlier state of the same attempt.
        tid = t.get("id")
        key = (t.get("attempts") or 0, _STATE_RANK.get(t.get("state"), 2))
        if tid not in self.pushed or key >= self.pushed[tid]:
            self.pushed[tid] = key
            self.states[tid] = t.get("state")
        else:
            self.reordered += 1

    def _tasks(self, data):
        with self.lock:
            self.notices += 1
        self._refetch.set()

    def _refetcher(self):
        import requests

        http = requests.Session()
        while not self._closed:
            self._refetch.wait()
            self._refetch.clear()
            if self._closed or self.batch is None:
                continue
            states, page = {}, 1
            try:
                while True:
                    got = http.get(f"{self.url}/api/v1/tasks?batch={self.batch}&per_page=1000"
                                   f"&page={page}", headers=self.headers, timeout=30).json()
                    for t in got["tasks"]:
                        states[t["id"]] = t
                    if page >= got.get("pages", 1):
                        break
                    page += 1
            except Exception:  # noqa: BLE001 - counted by what stays missing
                continue
            with self.lock:
                self.refetches += 1
                for tid, t in states.items():
                    self.states[tid] = t["state"]
                    self.pushed[tid] = (t.get("attempts") or 0, _STATE_RANK.get(t["state"], 2))

    def _logmsg(self, data):
        text = data.get("data") or ""
        with self.lock:
            self.log_msgs.append((time.monotonic(), len(text.encode("utf-8", "replace"))))
            if data.get("reset"):
                self.log_text[data.get("task")] = text
            else:
                self.log_text[data.get("task")] = self.log_text.get(data.get("task"), "") + text

    def follow(self, task_id, lines=50):
        """Follow a task's log; return the acknowledgement."""
        return self.sio.call("follow", {"task": task_id, "lines": lines}, timeout=20)

    def close(self):
        """Disconnect."""
        self._closed = True
        self._refetch.set()
        try:
            self.sio.disconnect()
        except Exception:  # noqa: BLE001 - closing a dead client is fine
            pass


# -- workload: server at scale ----------------------------------------------------------------------

def _history(ws, n):
    """Record n finished tasks in the workspace's store (batches of 10,000) before the server
    starts: the history a busy lab accumulates."""
    import sys

    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from app.store import Store

    store = Store(os.path.join(ws, ".slotrun", "state.db"))
    done = 0
    b = 0
    while done < n:
        k = min(10000, n - done)
        # Four owners, as in a lab: the owner filter must not scan its way to a small share.
        spec = dict(owner=f"user{b % 4}", pattern=f"^configs/hist{b}/", use_gpu=False, devices=["cpu"],
                    overwrite=False, command="true", priority=0, memory=0, max_retries=0)
        tasks = [dict(config=f"configs/hist{b}/h{i:05d}.yaml", config_text="x: 1\n",
                      state="succeeded", devices=["cpu"], memory=0) for i in range(k)]
        store.create_batch(spec, tasks)
        done += k
        b += 1
    store.close()


SMALL_BATCH = 20  # configs in the small batch submitted with the history in place


def server_at_scale(smoke, out_dir, mode=CPU_MODE):
    """100,000 tasks of history: page and API p95, a 10,000-task batch, idle CPU."""
    why = server_available()
    if why:
        return {"status": why}
    hist, batch_n, reqs, idle_s = (2000, 200, 15, 0.2) if smoke else (100000, 10000, 100, 5.0)
    d = scratch(out_dir, f"server-{mode.key}")
    server = None
    out = {"history_tasks": hist, "batch_tasks": batch_n, "mode": mode.key,
           "slots": mode.slots_text(2)}
    try:
        ws = os.path.join(d, "ws")
        t0 = time.perf_counter()
        write_configs(ws, "big", [f"b{i:05d}" for i in range(batch_n)])
        write_configs(ws, "small", [f"s{i:02d}" for i in range(SMALL_BATCH)])
        out["write_configs_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _history(ws, hist)
        out["history_insert_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        server = Server(ws, **mode.settings(2, d))
        out["server_start_s"] = time.perf_counter() - t0
        time.sleep(0.5)
        out["rss_start_mb"] = server.rss()
        out["idle_cpu_pct"] = idle_cpu(server, idle_s)
        latencies(server, "/", 3)  # warm-up
        latencies(server, "/api/v1/tasks", 3)
        page, api = [], []
        for _ in range(reqs):
            page += latencies(server, "/", 1)
            api += latencies(server, "/api/v1/tasks", 1)
        out["page"] = lat_summary(page)
        out["api_tasks"] = lat_summary(api)
        out["api_status"] = lat_summary(latencies(server, "/api/v1/status", max(5, reqs // 4)))
        out["team"] = team_table(server, max(5, reqs // 4), hist)
        r = server.post("/api/v1/queue/pause")
        if r.status_code != 200:
            raise RuntimeError(f"pausing the queue answered {r.status_code}: {r.text[:200]}")
        # A small batch submitted with the whole history in the store (the queue paused: the
        # figure is the submit alone), one after the other.
        small = []
        for _ in range(max(5, reqs // 5)):
            t0 = time.perf_counter()
            r = server.post("/api/v1/batches", {"pattern": "^configs/small/",
                                                "use_gpu": mode.use_gpu, "command": "true"})
            small.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 201:
                raise RuntimeError(f"a small batch answered {r.status_code}: {r.text[:300]}")
            server.post(f"/api/v1/batches/{r.json()['id']}/cancel")
        out["submit_small"] = lat_summary(small)
        out["small_configs"] = SMALL_BATCH
        t0 = time.perf_counter()
        r = server.post("/api/v1/batches", {"pattern": "^configs/big/", "use_gpu": mode.use_gpu,
                                            "command": "true"})
        out["batch_accept_s"] = time.perf_counter() - t0
        if r.status_code != 201 or r.json().get("total") != batch_n:
            raise RuntimeError(f"the batch answered {r.status_code}: {r.text[:300]}")
        batch_id = r.json()["id"]
        page, api = [], []
        for _ in range(max(5, reqs // 2)):
            page += latencies(server, "/", 1)
            api += latencies(server, "/api/v1/tasks", 1)
        out["page_with_queue"] = lat_summary(page)
        out["api_tasks_with_queue"] = lat_summary(api)
        client = Client(server.url, server.headers)
        try:
            time.sleep(0.5)
            out["idle_cpu_pct_paused_queue_one_client"] = idle_cpu(server, idle_s)
        finally:
            client.close()
        server.post(f"/api/v1/batches/{batch_id}/cancel")
        server.post("/api/v1/queue/resume")
        out["rss_end_mb"] = server.rss()
        out["met"] = bool(out["page"]["p95_ms"] < 100 and out["api_tasks"]["p95_ms"] < 100
                          and out["batch_accept_s"] < 2 and out["idle_cpu_pct"] < 1
                          and all(out["team"][k]["p95_ms"] < 100 for k, _, _ in TEAM_QUERIES))
        out["status"] = "ok"
        return out
    finally:
        if server is not None:
            server.stop()
        remove(d)


TEAM_QUERIES = (
    ("owner", "/api/v1/tasks?owner=user1", "one owner's first page"),
    ("owner_none", "/api/v1/tasks?owner=nobody", "an owner without tasks"),
    ("search", "/api/v1/tasks?q=h00999", "text search, few matches"),
    ("search_many", "/api/v1/tasks?q=hist3/", "text search, 10,000 matches"),
    ("search_owner", "/api/v1/tasks?owner=user2&q=h00999", "owner and text"),
    ("search_sorted", "/api/v1/tasks?q=h00999&sort=config", "text search sorted by config"),
)


def team_table(server, n, hist):
    """Time the team table's filters and a bulk dry run; ratios to the plain first page."""
    base = lat_summary(latencies(server, "/api/v1/tasks", n))
    out = {"base": base}
    for key, path, _ in TEAM_QUERIES:
        latencies(server, path, 1)  # warm-up
        out[key] = lat_summary(latencies(server, path, n))
        out[key]["ratio"] = out[key]["median_ms"] / base["median_ms"]
    dry = []
    for _ in range(max(3, n // 3)):
        t0 = time.perf_counter()
        r = server.post("/api/v1/tasks/cancel", {"q": "hist", "dry_run": True})
        dry.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200 or r.json().get("matched") != hist:
            raise RuntimeError(f"the bulk dry run answered {r.status_code}: {r.text[:200]}")
    out["bulk_dry_run"] = lat_summary(dry)
    out["bulk_dry_run"]["ratio"] = out["bulk_dry_run"]["median_ms"] / base["median_ms"]
    return out


# -- workload: log flood ---------------------------------------------------------------------------

def log_flood(smoke, out_dir, mode=CPU_MODE):
    """4 tasks x 50 MB of output while a client follows one: bytes, API p95, memory, pushes."""
    why = server_available()
    if why:
        return {"status": why}
    n_tasks, size = (4, 2_000_000) if smoke else (4, 50_000_000)
    d = scratch(out_dir, f"logflood-{mode.key}")
    server = None
    client = None
    out = {"tasks": n_tasks, "bytes_per_task": size, "mode": mode.key,
           "slots": mode.slots_text(n_tasks)}
    try:
        ws = os.path.join(d, "ws")
        write_configs(ws, "flood", [f"f{i}" for i in range(n_tasks)])
        server = Server(ws, **mode.settings(n_tasks, d))
        latencies(server, "/api/v1/tasks", 5)
        latencies(server, "/", 2)
        client = Client(server.url, server.headers)
        time.sleep(0.5)
        rss0 = server.rss()
        out["rss_before_mb"] = rss0
        rss_max = [rss0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    rss_max[0] = max(rss_max[0], server.rss())
                except OSError:
                    return
                stop.wait(0.05)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = server.cpu()
        t0 = time.perf_counter()
        cmd = f"{PY} {os.path.join(TASKS, 'flood.py')} {{name}} {size}"
        r = server.post("/api/v1/batches", {"pattern": "^configs/flood/", "use_gpu": mode.use_gpu,
                                            "command": cmd})
        if r.status_code != 201:
            raise RuntimeError(f"the batch answered {r.status_code}: {r.text[:300]}")
        batch = r.json()
        followed = batch["tasks"][0]["id"]
        ack = client.follow(followed)
        if not (isinstance(ack, dict) and ack.get("ok")):
            raise RuntimeError(f"follow answered {ack}")
        api = []
        while True:
            api += latencies(server, "/api/v1/tasks", 1)
            api += latencies(server, f"/api/v1/batches/{batch['id']}?per_page=1", 1)
            b = server.get(f"/api/v1/batches/{batch['id']}?per_page=1").json()
            c = b.get("counts", {})
            if c.get("queued", 0) + c.get("running", 0) == 0:
                break
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("the flood did not finish in 600 s")
            time.sleep(0.05)
        out["wall_s"] = time.perf_counter() - t0
        out["server_cpu_s"] = server.cpu() - cpu0
        time.sleep(max(1.0, 3 * 0.25))  # the follower's last coalesced push
        stop.set()
        sampler.join()
        out["rss_max_mb"] = rss_max[0]
        out["rss_growth_mb"] = rss_max[0] - rss0
        out["api"] = lat_summary(api)
        # every byte on disk
        sizes = {}
        for t in batch["tasks"]:
            info = server.get(f"/api/v1/tasks/{t['id']}").json()
            sizes[t["config"]] = _log_size(ws, t["id"], info)
        out["log_sizes"] = sizes
        out["all_bytes_on_disk"] = all(v == size for v in sizes.values())
        out["succeeded"] = b.get("counts", {}).get("succeeded", 0)
        # the follower's view
        with client.lock:
            msgs = list(client.log_msgs)
            text = client.log_text.get(followed, "")
        if msgs:
            span = max(msgs[-1][0] - msgs[0][0], 1e-9)
            per_sec = {}
            for t, _ in msgs:
                per_sec[int(t - msgs[0][0])] = per_sec.get(int(t - msgs[0][0]), 0) + 1
            out["follower"] = {"messages": len(msgs), "bytes": sum(n for _, n in msgs),
                               "messages_per_s_mean": len(msgs) / span if span > 0 else None,
                               "messages_per_s_max": max(per_sec.values()),
                               "last_line_seen": text.rstrip("\n").rsplit("\n", 1)[-1][:40]}
        else:
            out["follower"] = {"messages": 0, "bytes": 0}
        out["met"] = bool(out["all_bytes_on_disk"] and out["api"]["p95_ms"] < 200
                          and out["rss_growth_mb"] < 50
                          and out["follower"].get("messages_per_s_max", 0) <= 10)
        out["status"] = "ok"
        return out
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        remove(d)


def _log_size(ws, task_id, info):
    """Return the size of a task's latest log file (from its attempt, or the default layout)."""
    paths = []
    listed = info.get("attempts_list")
    if not isinstance(listed, list):
        listed = info.get("attempts") if isinstance(info.get("attempts"), list) else []
    for a in listed[-1:]:
        for key in ("log", "log_path", "run_dir"):
            v = a.get(key) if isinstance(a, dict) else None
            if isinstance(v, str):
                p = v if os.path.isabs(v) else os.path.join(ws, v)
                paths.append(os.path.join(p, "output.log") if key == "run_dir" else p)
    paths.append(os.path.join(ws, ".slotrun", "runs", str(task_id), "1", "output.log"))
    for p in paths:
        if os.path.isfile(p):
            return os.path.getsize(p)
    return None


# -- workload: 50 Socket.IO clients ------------------------------------------------------------------

CLIENTS_PER_PROCESS = 10  # like browsers, clients get their own processes (not one GIL)


class JsonChild:
    """A child process of this module (``python -m bench.server_bench ARGS``) driven by JSON
    lines on its stdin and answering JSON lines on its stdout."""

    what = "a child process"

    def __init__(self, *args):
        self.err = open(os.devnull, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.server_bench", *args], cwd=REPO, env=clean_env(PYTHONPATH=REPO),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)

    def send(self, obj):
        """Send one command."""
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def read(self):
        """Return the next answer."""
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.what} ended early (status {self.proc.poll()})")
        return json.loads(line)

    def close(self):
        """Wait for the process to end (it ends once its stdin is closed)."""
        try:
            self.proc.stdin.close()
            self.proc.wait(20)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
        self.err.close()


class ClientGroup(JsonChild):
    """A child process holding several Socket.IO clients."""

    what = "a client process"

    def __init__(self, url, k):
        super().__init__("--client-group", url, str(k))
        self.k = k


def client_group_main(url, k):
    """The child side of ClientGroup: connect, follow, report what was received."""
    import sys

    t0 = time.perf_counter()
    clients = [Client(url) for _ in range(k)]
    print(json.dumps({"ready": True, "connect_s": time.perf_counter() - t0}), flush=True)
    cmd = json.loads(sys.stdin.readline())
    follow = cmd["follow"]
    for c in clients:
        c.batch = cmd["batch"]
    failed = 0
    for c, tid in zip(clients, follow):
        try:
            ack = c.follow(tid)
            failed += not (isinstance(ack, dict) and ack.get("ok"))
        except Exception:  # noqa: BLE001 - counted and reported
            failed += 1
    print(json.dumps({"follow_failed": failed}), flush=True)
    cmd = json.loads(sys.stdin.readline())
    final = {int(k): v for k, v in cmd["final"].items()}

    def done():
        return all(_complete(c, final) and name in c.log_text.get(tid, "")
                   for c, tid, name in zip(clients, follow, cmd["names"]))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not done():
        time.sleep(0.1)
    report = []
    for c, tid, name in zip(clients, follow, cmd["names"]):
        with c.lock:
            missing = sum(1 for t, st in final.items() if c.states.get(t) != st)
            got = c.log_text.get(tid)
            report.append({"missing": missing, "notices": c.notices, "refetches": c.refetches,
                           "reordered": c.reordered,
                           "messages": c.messages, "disconnects": c.disconnects,
                           "log_ok": name in (got or ""), "task": tid,
                           "log_received": None if got is None else got[-80:],
                           "log_messages": sum(1 for _ in c.log_msgs)})
    print(json.dumps({"report": report}), flush=True)
    close_all(clients)


def socketio_clients(smoke, out_dir, mode=CPU_MODE):
    """1,000 tasks with 0, then 50 clients: every client gets every final state; CPU per task."""
    why = server_available()
    if why:
        return {"status": why}
    n_tasks, n_clients = (40, 4) if smoke else (1000, 50)
    d = scratch(out_dir, f"clients-{mode.key}")
    server = None
    groups = []
    out = {"tasks": n_tasks, "clients": n_clients, "clients_per_process": CLIENTS_PER_PROCESS,
           "mode": mode.key, "slots": mode.slots_text(8)}
    try:
        ws = os.path.join(d, "ws")
        write_configs(ws, "many", [f"c{i:04d}" for i in range(n_tasks)])
        server = Server(ws, **mode.settings(8, d))
        latencies(server, "/api/v1/tasks", 3)
        phases = {}
        for phase, k in (("no_clients", 0), ("with_clients", n_clients)):
            kids0 = children_cpu()
            t0 = time.perf_counter()
            sizes = [min(CLIENTS_PER_PROCESS, k - i) for i in range(0, k, CLIENTS_PER_PROCESS)]
            groups = [ClientGroup(server.url, n) for n in sizes]
            for g in groups:
                g.read()  # ready
            connect_s = time.perf_counter() - t0
            time.sleep(0.5)
            cpu0 = server.cpu()
            # Queue the batch paused, let each client follow one of its tasks, then resume.
            server.post("/api/v1/queue/pause")
            r = server.post("/api/v1/batches", {"pattern": "^configs/many/", "use_gpu": mode.use_gpu,
                                                "command": "echo {name}", "overwrite": True})
            if r.status_code != 201:
                raise RuntimeError(f"the batch answered {r.status_code}: {r.text[:300]}")
            batch = r.json()
            ids = [t["id"] for t in batch["tasks"]]
            names = {t["id"]: os.path.basename(t["config"])[:-5] for t in batch["tasks"]}
            follows, i = [], 0
            for g in groups:
                follows.append([ids[((i + j) * 37) % len(ids)] for j in range(g.k)])
                i += g.k
            for g, f in zip(groups, follows):
                g.send({"follow": f, "batch": batch["id"]})
            follow_failed = sum(g.read()["follow_failed"] for g in groups)
            t0 = time.perf_counter()
            server.post("/api/v1/queue/resume")
            b = server.wait_batch(batch["id"])
            wall = time.perf_counter() - t0
            final, on = {}, {}
            page = 1
            while True:  # what the server says each task ended as, and where it ran
                got = server.get(f"/api/v1/tasks?batch={batch['id']}&per_page=1000&page={page}").json()
                for t in got["tasks"]:
                    final[t["id"]] = t["state"]
                    on[str(t.get("device"))] = on.get(str(t.get("device")), 0) + 1
                if page >= got.get("pages", 1):
                    break
                page += 1
            for g, f in zip(groups, follows):
                g.send({"final": final, "names": [names[t] for t in f]})
            reports = []
            for g in groups:
                reports += g.read()["report"]
            cpu = server.cpu() - cpu0
            res = {"wall_s": wall, "server_cpu_s": cpu, "server_cpu_per_task_ms": cpu / n_tasks * 1000,
                   "succeeded": b.get("counts", {}).get("succeeded"), "connect_s": connect_s,
                   "tasks_per_device": dict(sorted(on.items()))}
            if reports:
                # Pushed, or re-fetched after a notice or a reconnect: what the client shows.
                res["clients_with_every_final_state"] = sum(1 for x in reports
                                                           if x["missing"] == 0)
                res["clients_needing_refetch"] = sum(1 for x in reports if x["refetches"])
                res["task_messages_per_client"] = median([x["messages"] for x in reports])
                res["pushes_handled_out_of_order"] = sum(x.get("reordered", 0) for x in reports)
                res["missing_per_client"] = [x["missing"] for x in reports if x["missing"]]
                res["max_missing_per_client"] = max(x["missing"] for x in reports)
                res["follow_failed"] = follow_failed
                res["disconnected_clients"] = sum(1 for x in reports if x["disconnects"])
                res["followers_with_their_log"] = sum(1 for x in reports if x["log_ok"])
                res["followers_without_their_log"] = [
                    {k: x[k] for k in ("task", "log_received", "log_messages")}
                    for x in reports if not x["log_ok"]]
            for g in groups:
                g.close()
            groups = []
            res["clients_cpu_s"] = children_cpu() - kids0  # the client processes, reaped
            phases[phase] = res
        out.update(phases)
        w, a = phases["with_clients"], phases["no_clients"]
        out["cpu_ratio"] = w["server_cpu_per_task_ms"] / a["server_cpu_per_task_ms"] \
            if a["server_cpu_per_task_ms"] else None
        out["met"] = bool(w.get("clients_with_every_final_state") == n_clients
                          and w.get("followers_with_their_log") == n_clients
                          and out["cpu_ratio"] is not None and out["cpu_ratio"] <= 2.0)
        out["status"] = "ok"
        return out
    finally:
        for g in groups:
            g.close()
        if server is not None:
            server.stop()
        remove(d)


# -- workload: clients submitting at once ---------------------------------------------------------

def submits_at_once(smoke, out_dir, mode=CPU_MODE):
    """20 clients submit a batch each at the same moment, several rounds, while 8 slots are
    busy with short tasks: the latency of each submit (POST /api/v1/batches).

    Each client is a process of its own with its connection already open (as a browser or a
    ``multi-run.py --server`` is), so the figure is the server's answer time, not the time
    20 threads of one benchmark process wait for one GIL."""
    why = server_available()
    if why:
        return {"status": why}
    n_clients, rounds, per_batch = (2, 1, 2) if smoke else (20, 5, 20)
    d = scratch(out_dir, f"submits-{mode.key}")
    server = None
    submitters = []
    out = {"clients": n_clients, "rounds": rounds, "configs_per_batch": per_batch,
           "client": "one process per client, connection opened before the first round",
           "mode": mode.key, "slots": mode.slots_text(8)}
    try:
        ws = os.path.join(d, "ws")
        for c in range(n_clients):
            for r in range(rounds):
                write_configs(ws, f"s{c}-{r}", [f"x{i:03d}" for i in range(per_batch)])
        write_configs(ws, "busy", [f"b{i:04d}" for i in range(8 if smoke else 2000)])
        server = Server(ws, **mode.settings(8, d))
        r = server.post("/api/v1/batches", {"pattern": "^configs/busy/", "use_gpu": mode.use_gpu,
                                            "command": "sleep 0.05"})
        if r.status_code != 201:
            raise RuntimeError(f"the background batch answered {r.status_code}: {r.text[:300]}")
        submitters = [Submitter(server.url, c, mode.use_gpu) for c in range(n_clients)]
        for s in submitters:
            s.read()  # connected
        times, errors = [], []
        for rnd in range(rounds):
            for s in submitters:  # all at once: each starts its clock when it is told
                s.send({"round": rnd})
            for s in submitters:
                got = s.read()
                times.append(got["ms"])
                if got["status"] != 201:
                    errors.append(f"{got['status']}: {got['text']}")
            time.sleep(0.3)
        out["submit"] = lat_summary(times)
        out["errors"] = errors
        out["met"] = bool(not errors and out["submit"]["p95_ms"] < 100)
        out["status"] = "ok"
        return out
    finally:
        for s in submitters:
            s.close()
        if server is not None:
            server.stop()
        remove(d)


class Submitter(JsonChild):
    """A child process submitting batches over one open HTTP connection, told when by a line
    on its stdin."""

    what = "a submitter"

    def __init__(self, url, c, use_gpu=False):
        super().__init__("--submitter", url, str(c), "gpu" if use_gpu else "cpu")


def submitter_main(url, c, use_gpu=False):
    """The child side of Submitter: open the connection, then submit when told."""
    import http.client
    import sys
    from urllib.parse import urlsplit

    where = urlsplit(url)

    def connect():
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        conn.request("GET", "/api/v1/status")
        conn.getresponse().read()
        return conn

    conn = connect()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        rnd = json.loads(line)["round"]
        body = json.dumps({"pattern": f"^configs/s{c}-{rnd}/", "use_gpu": use_gpu,
                           "command": "true"})
        t0 = time.perf_counter()
        for again in (False, True):
            try:
                conn.request("POST", "/api/v1/batches", body,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                if again:
                    raise
                conn.close()  # the server closed the idle connection: open a new one (timed)
                conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        ms = (time.perf_counter() - t0) * 1000
        print(json.dumps({"ms": ms, "status": resp.status,
                          "text": data[:120].decode("utf-8", "replace")}), flush=True)


# -- workload: the server's memory ------------------------------------------------------------------

def server_memory(smoke, out_dir, mode=CPU_MODE):
    """The server's resident memory at start, after a 10,000-task batch ran, and after
    100,000 tasks (ten such batches) finished, on 8 slots running `true`."""
    why = server_available()
    if why:
        return {"status": why}
    batch_n, batches = (20, 1) if smoke else (10000, 10)
    d = scratch(out_dir, f"memory-{mode.key}")
    server = None
    out = {"batch_tasks": batch_n, "batches": batches, "finished_tasks": batch_n * batches,
           "mode": mode.key, "slots": mode.slots_text(8)}
    try:
        ws = os.path.join(d, "ws")
        write_configs(ws, "mem", [f"m{i:05d}" for i in range(batch_n)])
        server = Server(ws, **mode.settings(8, d))
        time.sleep(0.5)
        out["rss_start_mb"] = server.rss()
        rss, walls = [], []
        t0 = time.perf_counter()
        for i in range(batches):
            t1 = time.perf_counter()
            r = server.post("/api/v1/batches", {"pattern": "^configs/mem/", "use_gpu": mode.use_gpu,
                                                "command": "true", "overwrite": True})
            if r.status_code != 201:
                raise RuntimeError(f"batch {i + 1} answered {r.status_code}: {r.text[:300]}")
            b = server.wait_batch(r.json()["id"], timeout=1800)
            if b.get("counts", {}).get("succeeded") != batch_n:
                raise RuntimeError(f"batch {i + 1} ended with {b.get('counts')}")
            walls.append(time.perf_counter() - t1)
            rss.append(server.rss())
            log(f"memory ({mode.label}): {batch_n * (i + 1)} tasks finished, "
                f"server RSS {rss[-1]:.0f} MB")
        out["wall_s"] = time.perf_counter() - t0
        out["batch_walls_s"] = walls
        out["rss_after_each_batch_mb"] = rss
        out["rss_after_batch_mb"] = rss[0]
        out["rss_end_mb"] = rss[-1]
        out["status"] = "ok"
        return out
    finally:
        if server is not None:
            server.stop()
        remove(d)


def close_all(clients):
    """Disconnect clients in parallel (each disconnect may wait seconds for the close frame)."""
    threads = [threading.Thread(target=c.close, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def _complete(client, final):
    with client.lock:
        return all(client.states.get(tid) == st for tid, st in final.items())


# One run of a workload in one mode: (smoke, out_dir, mode) -> its result.
IN_ONE_MODE = {"server": server_at_scale, "logflood": log_flood, "clients": socketio_clients,
               "submits": submits_at_once, "memory": server_memory}


def in_every_mode(name):
    """Return the workload ``name`` run in CPU mode, then GPU mode: (smoke, out_dir) -> one
    result holding both under "modes", its status and verdict over both."""
    one = IN_ONE_MODE[name]

    def run(smoke, out_dir):
        modes = {}
        for mode in MODES:
            log(f"{name}: {mode.label}")
            try:
                modes[mode.key] = one(smoke, out_dir, mode)
            except Exception as e:  # noqa: BLE001 - the other mode still runs; reported
                traceback.print_exc()
                modes[mode.key] = {"status": f"error: {type(e).__name__}: {e}", "mode": mode.key}
        return combine(modes)
    run.__doc__ = f"Run the {name} workload in each mode; return both results."
    return run


def combine(modes):
    """Return one workload's result from its results per mode: "status" is "ok" when every
    mode ran, "met" is True when every mode that ran met its target."""
    statuses = {k: m.get("status", "ok") for k, m in modes.items()}
    bad = {k: v for k, v in statuses.items() if v != "ok"}
    if not bad:
        status = "ok"
    elif len(set(bad.values())) == 1 and len(bad) == len(modes):
        status = next(iter(bad.values()))  # e.g. not run: the server is not there
    else:
        status = ("error: " if any(v.startswith("error") for v in bad.values()) else "") + \
            "; ".join(f"{LABELS.get(k, k)}: {v.removeprefix('error: ')}" for k, v in bad.items())
    verdicts = [m.get("met") for m in modes.values() if m.get("status") == "ok"]
    if not verdicts or any(v is None for v in verdicts):
        met = None  # nothing ran, or nothing to judge (memory: reported)
    else:
        met = all(verdicts) and not bad  # a mode that broke meets nothing
    return {"status": status, "met": met, "modes": modes}


def modes_of(e):
    """Return a workload result's results per mode, GPU mode first (a result saved before
    the modes were added holds CPU mode only)."""
    modes = e.get("modes")
    if modes is None:
        return {"cpu": e}
    return {k: modes[k] for k in REPORT_ORDER if k in modes} | \
        {k: v for k, v in modes.items() if k not in REPORT_ORDER}


WORKLOADS = {name: in_every_mode(name) for name in IN_ONE_MODE}


# -- report ---------------------------------------------------------------------------------------

def _ms(x):
    return "–" if x is None else f"{x:.1f}"


def _ratio(x):
    return "–" if x is None else f"{x:.2f}×"


def render(name, e):
    """Return the Markdown lines of one server workload, every mode it ran in."""
    modes = modes_of(e)
    ran = {k: m for k, m in modes.items() if m.get("status") == "ok"}
    first = next(iter(ran.values()), e)
    title = {"server": "Server at scale", "logflood": "Log flood",
             "clients": f"{first.get('clients', 50)} Socket.IO clients while "
                        f"{first.get('tasks', 1000):,} tasks run",
             "submits": f"{first.get('clients', 20)} clients submitting at once",
             "memory": "The server's memory"}[name]
    L = [f"## {title}", ""]
    if e.get("note"):  # e.g. this section measured again after a change
        L += [e["note"], ""]
    if not ran:
        return L + [f"{e.get('status')}.", ""]
    for k, m in modes.items():
        if k not in ran:
            L += [f"{LABELS.get(k, k)}: {m.get('status')}.", ""]
    return L + _RENDER[name](ran)


def _label(k):
    return LABELS.get(k, k)


def _slots(e, default):
    return e.get("slots", default)


def _where(ran, default):
    """Return "GPU mode: 2 simulated GPUs × 4 slots, ...; CPU mode: 8 CPU slots"."""
    return "; ".join(f"{_label(k)}: {_slots(e, default)}" for k, e in ran.items())


def _results(ran, fig=None):
    """Return "GPU mode **met** (FIG); CPU mode **not met** (FIG)"."""
    return "; ".join(f"{_label(k)} {'**met**' if e.get('met') else '**not met**'}"
                     + (f" ({fig(e)})" if fig else "") for k, e in ran.items())


def _table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def _render_server(ran):
    first = next(iter(ran.values()))
    L = [f"{first['history_tasks']:,} finished tasks in the history (recorded through "
         "`app.store.Store` before the server starts), `python -m app serve` on loopback, "
         "sequential requests; a server in each mode, the batch posted in its mode ("
         + _where(ran, "2 CPU slots") + ").", ""]
    for k, e in ran.items():
        L += [f"### {_label(k)}: {_slots(e, '2 CPU slots')}", "",
              f"History recorded in {e['history_insert_s']:.1f} s.", ""]
        L += _table(
            ["measure", "median (ms)", "p95 (ms)", "max (ms)", "target"],
            [["dashboard page `/`", _ms(e['page']['median_ms']), _ms(e['page']['p95_ms']),
              _ms(e['page']['max_ms']), "p95 < 100 ms"],
             ["`/api/v1/tasks` first page", _ms(e['api_tasks']['median_ms']),
              _ms(e['api_tasks']['p95_ms']), _ms(e['api_tasks']['max_ms']), "p95 < 100 ms"],
             ["`/api/v1/status`", _ms(e['api_status']['median_ms']),
              _ms(e['api_status']['p95_ms']), _ms(e['api_status']['max_ms']), ""],
             *[[f"`/api/v1/tasks`: {label}", _ms(e['team'][key]['median_ms']),
                _ms(e['team'][key]['p95_ms']), _ms(e['team'][key]['max_ms']),
                f"p95 < 100 ms ({e['team'][key]['ratio']:.1f}× the first page)"]
               for key, _, label in TEAM_QUERIES],
             [f"bulk cancel dry run over all {e['history_tasks']:,}",
              _ms(e['team']['bulk_dry_run']['median_ms']),
              _ms(e['team']['bulk_dry_run']['p95_ms']), _ms(e['team']['bulk_dry_run']['max_ms']),
              f"({e['team']['bulk_dry_run']['ratio']:.1f}× the first page)"],
             *([[f"`POST /api/v1/batches` of {e['small_configs']} configs",
                 _ms(e['submit_small']['median_ms']), _ms(e['submit_small']['p95_ms']),
                 _ms(e['submit_small']['max_ms']), ""]] if "submit_small" in e else []),
             [f"`/` with {e['batch_tasks']:,} more queued", _ms(e['page_with_queue']['median_ms']),
              _ms(e['page_with_queue']['p95_ms']), _ms(e['page_with_queue']['max_ms']), ""],
             ["`/api/v1/tasks` with them queued", _ms(e['api_tasks_with_queue']['median_ms']),
              _ms(e['api_tasks_with_queue']['p95_ms']), _ms(e['api_tasks_with_queue']['max_ms']),
              ""]])
        L += [f"- a {e['batch_tasks']:,}-task batch (`POST /api/v1/batches`) accepted in "
              f"**{e['batch_accept_s']:.2f} s** (target < 2 s)",
              f"- server CPU while idle: **{e['idle_cpu_pct']:.2f}% of a core** (target < 1%); "
              f"with the {e['batch_tasks']:,} tasks queued, the queue paused and one Socket.IO "
              f"client connected: {e['idle_cpu_pct_paused_queue_one_client']:.2f}%",
              f"- server memory: {e['rss_start_mb']:.0f} MB at start, {e['rss_end_mb']:.0f} MB "
              "at the end", ""]
    return L + [f"Result: {_results(ran)}.", ""]


def _render_logflood(ran):
    first = next(iter(ran.values()))
    L = [f"{first['tasks']} tasks each writing {first['bytes_per_task'] / 1e6:.0f} MB of "
         "100-byte lines as fast as they can (`bench/tasks/flood.py`), all at once, while one "
         "Socket.IO client follows the first; API requests in a loop meanwhile; a server in "
         f"each mode ({_where(ran, str(first['tasks']) + ' CPU slots')}).", ""]
    head = ["measure"] + [_label(k) for k in ran] + ["target"]
    rows = [["every byte in the log files"]
            + [f"{'yes' if e['all_bytes_on_disk'] else 'NO'} "
               f"({', '.join(str(v) for v in e['log_sizes'].values())} bytes)"
               for e in ran.values()] + ["all"],
            ["API p95 during the flood"]
            + [f"{_ms(e['api']['p95_ms'])} ms (median {_ms(e['api']['median_ms'])}, max "
               f"{_ms(e['api']['max_ms'])}, n={e['api']['n']})" for e in ran.values()]
            + ["< 200 ms"],
            ["server memory growth"]
            + [f"{e['rss_growth_mb']:.1f} MB ({e['rss_before_mb']:.0f} → {e['rss_max_mb']:.0f} MB)"
               for e in ran.values()] + ["< 50 MB"],
            ["follower: log messages"]
            + [f"{e['follower'].get('messages', 0)} in all, at most "
               f"{e['follower'].get('messages_per_s_max', 0)} per second, "
               f"{e['follower'].get('bytes', 0) / 1e6:.2f} MB pushed of "
               f"{e['bytes_per_task'] / 1e6:.0f} MB written" for e in ran.values()]
            + ["bounded, coalesced"],
            ["flood wall time / server CPU"]
            + [f"{e['wall_s']:.1f} s / {e['server_cpu_s']:.2f} s" for e in ran.values()] + [""]]
    return L + _table(head, rows) + [f"Result: {_results(ran)}.", ""]


def _render_clients(ran):
    first = next(iter(ran.values()))
    n = first["clients"]
    L = [f"{first['tasks']:,} tasks (`echo {{name}}`) submitted through the API to a server in "
         f"each mode ({_where(ran, '8 CPU slots')}), first with no client connected, then "
         f"with {n} Socket.IO clients (websocket), each following one task's log.", ""]
    head = ["measure"] + [f"{_label(k)}, {ph}" for k in ran
                          for ph in ("no clients", "with clients")]

    def row(measure, cells):
        out = [measure]
        for e in ran.values():
            out += list(cells(e["no_clients"], e["with_clients"], e))
        return out
    rows = [
        row("batch wall time", lambda a, w, e: (f"{a['wall_s']:.2f} s", f"{w['wall_s']:.2f} s")),
        row("server CPU", lambda a, w, e: (f"{a['server_cpu_s']:.2f} s",
                                           f"{w['server_cpu_s']:.2f} s")),
        row("**server CPU per task**", lambda a, w, e: (
            f"{a['server_cpu_per_task_ms']:.2f} ms",
            f"{w['server_cpu_per_task_ms']:.2f} ms ({_ratio(e.get('cpu_ratio'))} the figure "
            "without clients; target ≤ 2×)")),
        row("`task_list` messages per client (median)",
            lambda a, w, e: ("–", _ms(w.get("task_messages_per_client")))),
        row("CPU of the client processes (same machine)",
            lambda a, w, e: ("–", f"{w.get('clients_cpu_s', 0):.2f} s")),
        row("clients that got every task's final state", lambda a, w, e: (
            "–", f"{w.get('clients_with_every_final_state')} of {e['clients']} "
                 f"({w.get('clients_needing_refetch')} re-fetched after a \"tasks\" notice or "
                 "a reconnect)")),
        row("followers that got their task's log line",
            lambda a, w, e: ("–", f"{w.get('followers_with_their_log')} of {e['clients']}")),
        row("clients disconnected during the run",
            lambda a, w, e: ("–", str(w.get("disconnected_clients")))),
        row("pushes the client library handled out of order (kept out)",
            lambda a, w, e: ("–", str(w.get("pushes_handled_out_of_order", "–")))),
    ]
    L += _table(head, rows)
    for k, e in ran.items():
        w = e["with_clients"]
        if w.get("followers_without_their_log"):
            L += [f"{_label(k)}: followers that did not get their task's log line within 15 s "
                  "of the batch's end: "
                  + "; ".join(f"task {x['task']}: {x['log_messages']} log message(s), "
                              f"last text {x['log_received']!r}"
                              for x in w["followers_without_their_log"]) + ".", ""]
    L += ["Target, in each mode: server CPU per task ≤ 2× the figure without clients in the "
          "same mode, every client gets every task's final state and every follower its log "
          "line. Result: " + _results(ran, lambda e: f"{_ratio(e.get('cpu_ratio'))}, "
                                      f"{e['with_clients'].get('clients_with_every_final_state')}"
                                      f"/{e['clients']} clients complete")
          + ". The batch's wall time with clients is inflated by the clients themselves "
          "(client processes decoding every event on the same 2 cores); the server's own cost "
          "is its CPU per task (gunicorn's master and worker).", ""]
    return L


def _render_submits(ran):
    first = next(iter(ran.values()))
    L = [f"{first['clients']} clients, each a process of its own with its HTTP connection "
         "already open (as a browser or `multi-run.py --server` is), are told at the same "
         f"moment to submit a batch of {first['configs_per_batch']} configs "
         "(`POST /api/v1/batches`, in the server's mode); each times its own request; "
         f"{first['rounds']} rounds, while the server's 8 slots are busy with 50 ms tasks; a "
         f"server in each mode ({_where(ran, '8 CPU slots')}).", ""]
    L += _table(["mode", "median (ms)", "p95 (ms)", "max (ms)", "errors", "target"],
                [[_label(k), _ms(e["submit"]["median_ms"]), _ms(e["submit"]["p95_ms"]),
                  _ms(e["submit"]["max_ms"]), str(len(e["errors"])), "p95 < 100 ms"]
                 for k, e in ran.items()])
    return L + [f"Result: {_results(ran)}.", ""]


def _render_memory(ran):
    first = next(iter(ran.values()))
    L = [f"`python -m app serve` on an empty workspace, a server in each mode "
         f"({_where(ran, '8 CPU slots')}); {first['batches']} batches of "
         f"{first['batch_tasks']:,} tasks of `true` submitted one after the other through the "
         "API in the server's mode, each run to its end; the resident memory of the server's "
         "worker process after each.", ""]
    L += _table(["when"] + [f"{_label(k)}: server RSS (MB)" for k in ran],
                [["at start"] + [f"{e['rss_start_mb']:.0f}" for e in ran.values()],
                 [f"after one {first['batch_tasks']:,}-task batch"]
                 + [f"{e['rss_after_batch_mb']:.0f}" for e in ran.values()],
                 [f"after {first['finished_tasks']:,} finished tasks"]
                 + [f"{e['rss_end_mb']:.0f}" for e in ran.values()]])
    for k, e in ran.items():
        L += [f"{_label(k)}, after each batch (MB): "
              + ", ".join(f"{x:.0f}" for x in e["rss_after_each_batch_mb"])
              + f"; {e['finished_tasks']:,} tasks in {e['wall_s']:.0f} s.", ""]
    return L


_RENDER = {"server": _render_server, "logflood": _render_logflood, "clients": _render_clients,
           "submits": _render_submits, "memory": _render_memory}


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "--client-group":
        client_group_main(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    if sys.argv[1] == "--submitter":
        submitter_main(sys.argv[2], int(sys.argv[3]), sys.argv[4:5] == ["gpu"])
        sys.exit(0)
    # python -m bench.server_bench WORKLOAD [--smoke] [cpu|gpu]: one workload, both modes or one
    mode_keys = [m for m in MODES if m.key in sys.argv[2:]]
    out_dir = os.path.join(os.path.dirname(__file__), "out")
    if mode_keys:
        got = combine({m.key: IN_ONE_MODE[sys.argv[1]]("--smoke" in sys.argv, out_dir, m)
                       for m in mode_keys})
    else:
        got = WORKLOADS[sys.argv[1]]("--smoke" in sys.argv, out_dir)
    print(json.dumps(got, indent=1))
    log("done")
