"""The Ray executor and inventory on a real multi-node Ray cluster on this machine.

Ray's own multi-node test utility (``ray.cluster_utils.Cluster``) starts a head and worker
nodes as separate raylets on this host; the worker nodes declare GPUs to Ray, so their
slotrun agents simulate them. Tasks run through the real Engine, with the workspace
shipped to the nodes and results brought back (as on machines that share no filesystem).
"""

import json
import os
import re
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from app import settings as settings_mod  # noqa: E402
from app import task as task_mod  # noqa: E402
from app.executors.local import process_start_time  # noqa: E402
from app.errors import SlotrunError  # noqa: E402
from app.executors.ray import RayExecutor  # noqa: E402
from app.executors.ray_cluster import ClusterView  # noqa: E402
from app.executors.ray_inventory import make_inventory, watch_nodes  # noqa: E402
from app.scheduler import Engine, gpu_index, state_dir  # noqa: E402
from app.store import Store  # noqa: E402
from tests.helpers import ROOT, wait_for  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}
EXP23 = [f"configs/exp-{e}/exp-{e}-{a}-{b}.yaml" for e in (2, 3) for a in (1, 2) for b in (1, 2)]


def sim(seconds):
    """Return a command template whose task simulates ``seconds`` of work."""
    return f"env SLOTRUN_SIM_TIME={seconds} {{python}} run.py -c {{config}}"


@pytest.fixture(scope="module")
def cluster():
    """A head without GPUs and two worker nodes declaring 2 and 1 GPUs."""
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    # The nodes' raylets (and so the agents and tasks) inherit this environment.
    mp.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    mp.setenv("SLOTRUN_SIM_TIME", "0.5")
    mp.delenv("SLOTRUN_FAKE_GPUS", raising=False)
    mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "labels": {"slotrun-name": "head"},
        "include_dashboard": False})
    # Each node declares 1 CPU (and a custom resource) to Ray: slotrun's slots must not care.
    c.add_node(num_cpus=1, num_gpus=2, labels={"slotrun-name": "node-a"}, resources={"lab": 1})
    c.add_node(num_cpus=1, num_gpus=1, labels={"slotrun-name": "node-b"}, resources={"lab": 1})
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        mp.undo()


class Recorder:
    """Collects the engine's published events."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event, payload):
        with self.lock:
            self.events.append((event, payload))


def node_dir(ws):
    """Return where the test nodes keep their copies (beside the workspace, not in /tmp)."""
    return os.path.join(os.path.dirname(ws), "nodes")


def make_engine(ws, cluster, limits=None, **overrides):
    s = settings_mod.load({"workspace": ws, "kill_grace": 2, "executor": "ray",
                           "ray_address": cluster.address, "ray_log_interval": 0.2,
                           "ray_node_dir": node_dir(ws), **overrides})
    store = Store(os.path.join(state_dir(ws), "state.db"))
    eng = Engine(s, store, make_inventory(s), publish=Recorder(),
                 executor=RayExecutor(None, s), limits=limits)
    return eng.start(), store


def peak(intervals):
    """Return the most (start, end) intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = top = 0
    for _, step in points:
        now += step
        top = max(top, now)
    return top


def done(store, ids):
    return all(store.get_task(i)["state"] in FINAL for i in ids)


def results_of(ws, config):
    rel = os.path.splitext(os.path.relpath(config, "configs"))[0]
    return os.path.join(ws, "results", rel)


def write_config(ws, rel, text):
    path = os.path.join(ws, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return rel


def pid_alive(pid):
    return process_start_time(pid) is not None  # a zombie counts as ended


def test_inventory_lists_every_node(workspace, cluster):
    s = settings_mod.load({"workspace": workspace, "ray_address": cluster.address,
                           "ray_node_dir": node_dir(workspace)})
    devs = make_inventory(s).snapshot()
    ids = [d.id for d in devs]
    assert ids == ["node-a/gpu0", "node-a/gpu1", "node-b/gpu0", "head/cpu", "node-a/cpu",
                   "node-b/cpu"]
    gpu = devs[0]
    assert gpu.kind == "gpu" and gpu.index == 0 and gpu.node == "node-a"
    assert gpu.memory_total > gpu.memory_used > 0 and gpu.utilization is not None
    assert devs[3].kind == "cpu" and devs[3].memory_total > 0


def test_batch_across_nodes_with_per_gpu_limits(workspace, cluster):
    limits = {"node-a/gpu0": 1, "node-a/gpu1": 2, "node-b/gpu0": 1}
    eng, store = make_engine(workspace, cluster, limits=limits)
    try:
        assert eng.gpu_devices == ["node-a/gpu0", "node-a/gpu1", "node-b/gpu0"]
        b = eng.submit(EXP23, "ann", command=sim(1.0))
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=120)
        spans = {}
        for i in ids:
            t = store.get_task(i)
            assert t["state"] == "succeeded", t
            folder = results_of(workspace, t["config"])
            with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)  # the task's own record, brought back from its node
            assert os.path.exists(os.path.join(folder, "area.txt"))
            assert os.path.exists(os.path.join(folder, ".done"))
            assert meta["cuda_visible_devices"] == str(gpu_index(t["device"]))
            spans.setdefault(t["device"], []).append((meta["started"], meta["finished"]))
            [a] = store.attempts(i)
            assert a["node"] == t["device"].split("/")[0]
            with open(os.path.join(a["run_dir"], "output.log"), encoding="utf-8") as f:
                log_text = f.read()
            assert "area=" in log_text and "done in" in log_text
        assert {d.split("/")[0] for d in spans} == {"node-a", "node-b"}
        for device, intervals in spans.items():
            assert peak(intervals) <= limits[device], (device, intervals)
        # node-a declared 1 CPU to Ray, yet ran tasks side by side on its two GPUs
        assert peak(spans["node-a/gpu0"] + spans["node-a/gpu1"]) >= 2
    finally:
        eng.stop()


def test_log_tail_streams_back_while_running(workspace, cluster):
    cfg = write_config(workspace, "configs/stream/slow.yaml",
                       "model_params:\n  name: circle\n  radius: 1\n  progress_steps: 12\n")
    eng, store = make_engine(workspace, cluster, limits={"node-b/gpu0": 1})
    try:
        b = eng.submit([cfg], "ann", command=sim(6), devices=["node-b/gpu0"])
        tid = b["tasks"][0]["id"]
        wait_for(lambda: store.latest_attempt(tid), timeout=30)
        path = os.path.join(store.latest_attempt(tid)["run_dir"], "output.log")

        def look():
            """Return (the head's log text, whether the task was still running after it)."""
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
            return text, store.get_task(tid)["state"] == "running"

        def when(pred):
            seen = look()
            return seen if pred(seen[0]) else None

        first, running = wait_for(lambda: when(lambda text: "step 2/12" in text), timeout=30)
        assert running and "done in" not in first  # streamed while the task ran
        later, _ = wait_for(lambda: when(lambda text: len(text) > len(first)), timeout=30)
        assert later.startswith(first)
        wait_for(lambda: done(store, [tid]), timeout=30)
        final, _ = look()
        assert final.startswith(later) and "step 12/12" in final and "done in" in final
        assert store.get_task(tid)["state"] == "succeeded"
    finally:
        eng.stop()


def test_cancel_and_restart_readoption(workspace, cluster):
    eng, store = make_engine(workspace, cluster, limits={"node-a/gpu0": 1, "node-a/gpu1": 1,
                                                         "node-b/gpu0": 1})
    try:
        # The short task ends only once the gate opens, after the head is gone.
        gate = os.path.join(os.path.dirname(workspace), "gate")
        gated = ('sh -c \'while [ ! -e "$2" ]; do sleep 0.05; done; exec "$0" run.py -c "$1"\' '
                 f'{{python}} {{config}} {gate}')
        b = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", command=gated,
                       devices=["node-a/gpu0"])
        c = eng.submit(["configs/exp-1/exp-1-2.yaml"], "ann", command=sim(10),
                       devices=["node-a/gpu1"])
        d = eng.submit(["configs/exp-1/exp-1-3.yaml"], "ann", command=sim(60),
                       devices=["node-b/gpu0"])
        short, long_, victim = (x["tasks"][0]["id"] for x in (b, c, d))
        wait_for(lambda: all(store.get_task(i)["state"] == "running"
                             and store.latest_attempt(i)["pid"] for i in (short, long_, victim)),
                 timeout=30)
        pid = store.latest_attempt(victim)["pid"]
        eng.cancel_task(victim)
        wait_for(lambda: store.get_task(victim)["state"] == "cancelled", timeout=20)
        wait_for(lambda: not pid_alive(pid), timeout=10)
    finally:
        eng.stop()  # the head goes away; its tasks keep running on their nodes
    short_pid, long_pid = (store.latest_attempt(i)["pid"] for i in (short, long_))
    assert pid_alive(long_pid)
    open(gate, "w").close()
    wait_for(lambda: not pid_alive(short_pid), timeout=20)  # ends while no head listens
    assert store.get_task(short)["state"] == "running"
    eng, store = make_engine(workspace, cluster, limits={"node-a/gpu0": 1, "node-a/gpu1": 1})
    try:
        assert long_ in eng.running  # re-adopted, not restarted
        # Ended meanwhile: recorded at once, or (its node's agent had not yet seen the exit
        # when the head asked) re-adopted and finished as soon as the agent reports it;
        # either way never run again, its log and results brought back.
        wait_for(lambda: store.get_task(short)["state"] == "succeeded", timeout=20)
        t = store.get_task(short)
        assert t["state"] == "succeeded" and t["attempts"] == 1
        assert os.path.exists(os.path.join(results_of(workspace, t["config"]), "meta.json"))
        with open(os.path.join(store.latest_attempt(short)["run_dir"], "output.log")) as f:
            assert "done in" in f.read()
        wait_for(lambda: done(store, [long_]), timeout=30)
        t = store.get_task(long_)
        assert t["state"] == "succeeded" and t["attempts"] == 1
        assert os.path.exists(os.path.join(results_of(workspace, t["config"]), "meta.json"))
        assert store.latest_attempt(long_)["pid"] == long_pid
    finally:
        eng.stop()


def test_shared_filesystem_writes_results_in_place(workspace, cluster):
    eng, store = make_engine(workspace, cluster, limits={"node-b/gpu0": 1}, ray_shared_fs=True)
    try:
        b = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", command=sim(0.2),
                       devices=["node-b/gpu0"])
        tid = b["tasks"][0]["id"]
        wait_for(lambda: done(store, [tid]), timeout=30)
        assert store.get_task(tid)["state"] == "succeeded"
        with open(os.path.join(results_of(workspace, "configs/exp-1/exp-1-1.yaml"),
                               "meta.json"), encoding="utf-8") as f:
            assert json.load(f)["cuda_visible_devices"] == "0"
    finally:
        eng.stop()


def test_nodes_join_and_leave_and_a_lost_node_interrupts_its_task(workspace, cluster):
    eng, store = make_engine(workspace, cluster, limits={"node-a/gpu0": 0})
    watcher = watch_nodes(eng, eng.inventory, interval=0.2)
    try:
        assert not any(d.startswith("gpu-c/") for d in eng.devices)
        node = cluster.add_node(num_cpus=1, num_gpus=1, labels={"slotrun-name": "gpu-c"})
        wait_for(lambda: "gpu-c/gpu0" in eng.gpu_devices and "gpu-c/cpu" in eng.devices,
                 timeout=30)  # the engine learnt of the new node by itself
        assert eng.usage()["gpu-c/gpu0"] == {"slots": 1, "running": 0}
        b = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", command=sim(120),
                       devices=["gpu-c/gpu0"])
        tid = b["tasks"][0]["id"]
        wait_for(lambda: store.get_task(tid)["state"] == "running"
                 and store.latest_attempt(tid)["pid"], timeout=30)
        run_dir = store.latest_attempt(tid)["run_dir"]
        wait_for(lambda: os.path.getsize(os.path.join(run_dir, "output.log")) > 0, timeout=30)
        pid = store.latest_attempt(tid)["pid"]
        cluster.remove_node(node)
        wait_for(lambda: store.get_task(tid)["state"] == "interrupted", timeout=60)
        t = store.get_task(tid)
        assert t["message"] == "node gpu-c was lost" and t["attempts"] == 1
        with open(os.path.join(run_dir, "output.log"), encoding="utf-8") as f:
            assert "node gpu-c was lost" in f.read()
        wait_for(lambda: not pid_alive(pid), timeout=10)  # no orphan left behind
        wait_for(lambda: not any(d.startswith("gpu-c/") for d in eng.devices), timeout=30)
    finally:
        watcher.stop()
        eng.stop()


@pytest.mark.skipif(not hasattr(task_mod, "ANY_CPU"),
                    reason="the engine has no cluster CPU batches yet")
def test_cpu_batch_runs_on_the_cpus_of_the_nodes(workspace, cluster):
    eng, store = make_engine(workspace, cluster, limits={"node-a/cpu": 1, "node-b/cpu": 1})
    try:
        b = eng.submit(["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml"], "ann",
                       use_gpu=False, command=sim(0.5))
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=30)
        assert {store.get_task(i)["state"] for i in ids} == {"succeeded"}
        assert {store.get_task(i)["device"] for i in ids} <= {"node-a/cpu", "node-b/cpu"}
        for i in ids:
            with open(os.path.join(results_of(workspace, store.get_task(i)["config"]),
                                   "meta.json"), encoding="utf-8") as f:
                assert json.load(f)["cuda_visible_devices"] == ""
    finally:
        eng.stop()


# -- node loss ------------------------------------------------------------------------------------

NODE_TIMEOUT = 2  # ray_node_timeout in the node-loss tests: seconds an agent may stay silent


def ledger_command(ledger, first_seconds):
    """Return a command whose first attempt works ``first_seconds`` and later ones 0.5 s; each
    run appends "CONFIG ATTEMPT start" and, once run.py succeeded, "... done" to ``ledger``."""
    script = ('echo "$SLOTRUN_CONFIG $SLOTRUN_ATTEMPT start" >> "$2"; '
              f'if [ "$SLOTRUN_ATTEMPT" = 1 ]; then SLOTRUN_SIM_TIME={first_seconds}; '
              'else SLOTRUN_SIM_TIME=0.5; fi; export SLOTRUN_SIM_TIME; '
              '"$0" run.py -c "$1" && echo "$SLOTRUN_CONFIG $SLOTRUN_ATTEMPT done" >> "$2"')
    return f"sh -c '{script}' {{python}} {{config}} {ledger}"


def ledger_lines(ledger):
    try:
        with open(ledger, encoding="utf-8") as f:
            return f.read().split("\n")
    except FileNotFoundError:
        return []


def assert_in_words(message):
    """A loss message is one sentence for a user: no Ray ids, addresses or RPC wording."""
    assert "\n" not in message
    assert not re.search(r"[0-9a-f]{16}|\d+\.\d+\.\d+\.\d+|rpc|actor|Error", message), message


def add_node(cluster, name, gpus):
    node = cluster.add_node(num_cpus=1, num_gpus=gpus, labels={"slotrun-name": name})
    cluster.wait_for_nodes()
    return node


def test_a_killed_node_its_tasks_are_retried_on_a_live_node(workspace, cluster):
    """kill -9 of a whole node mid-run (Ray itself lists it alive for about 15 s more)."""
    doomed = add_node(cluster, "gpu-x", 2)
    ledger = os.path.join(os.path.dirname(workspace), "ledger")
    eng, store = make_engine(workspace, cluster, limits={"gpu-x/gpu0": 1, "gpu-x/gpu1": 1},
                             ray_node_timeout=NODE_TIMEOUT)
    watcher = watch_nodes(eng, eng.inventory, interval=0.2)
    try:
        configs = ["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml"]
        b = eng.submit(configs, "ann", command=ledger_command(ledger, 120), max_retries=1)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: all(store.get_task(i)["state"] == "running" for i in ids)
                 and sum("start" in x for x in ledger_lines(ledger)) == 2, timeout=60)
        assert {store.get_task(i)["device"] for i in ids} == {"gpu-x/gpu0", "gpu-x/gpu1"}
        pids = [store.latest_attempt(i)["pid"] for i in ids]
        eng.set_slots("node-b/gpu0", 2)  # the live node has room for both
        killed_at, t0 = time.time(), time.monotonic()
        cluster.remove_node(doomed, allow_graceful=False)  # SIGKILL: no goodbye to Ray
        wait_for(lambda: all(store.attempts(i)[0]["state"] == "interrupted" for i in ids),
                 timeout=60, interval=0.05)
        noticed = time.monotonic() - t0
        assert not any(d.startswith("gpu-x/") for d in eng.devices)
        wait_for(lambda: all(store.get_task(i)["state"] == "succeeded" for i in ids), timeout=60)
        print(f"\nnode gpu-x killed: its 2 tasks interrupted after {noticed:.1f} s "
              f"(ray_node_timeout {NODE_TIMEOUT} s)")
        messages = set()
        for i in ids:
            t = store.get_task(i)
            attempts = store.attempts(i)
            assert len(attempts) == 2, [(a["device"], a["state"], a["message"]) for a in attempts]
            first, second = attempts
            assert t["state"] == "succeeded" and t["attempts"] == 2, t
            # The lost attempt: one readable message, in the store and once in its log.
            assert first["node"] == "gpu-x" and first["state"] == "interrupted"
            assert_in_words(first["message"])
            assert first["message"].startswith("node gpu-x was lost")
            messages.add(first["message"])
            with open(os.path.join(first["run_dir"], "output.log"), encoding="utf-8") as f:
                assert f.read().count("slotrun: node gpu-x was lost") == 1
            # The retry ran on the live node, after the loss, and its results came back.
            assert second["node"] == "node-b" and second["state"] == "succeeded"
            assert second["started_at"] > killed_at
            with open(os.path.join(results_of(workspace, t["config"]), "meta.json")) as f:
                assert json.load(f)["cuda_visible_devices"] == "0"
            print(f"  task {i}: {first['device']} -> {first['message']!r}; "
                  f"retried on {second['device']}: {second['state']}")
        assert len(messages) == 1
        # No start was ever sent to the dead node after the kill, and each config succeeded
        # exactly once.
        assert not [a for i in ids for a in store.attempts(i)
                    if a["node"] == "gpu-x" and a["started_at"] > killed_at]
        lines = ledger_lines(ledger)
        for c in configs:
            assert lines.count(f"{c} 1 done") == 0 and lines.count(f"{c} 2 done") == 1, lines
        for pid in pids:
            wait_for(lambda: not pid_alive(pid), timeout=10)  # the node's tasks died with it
        assert noticed < NODE_TIMEOUT + 6, noticed  # Ray alone took about 15 s
    finally:
        watcher.stop()
        eng.stop()


def test_a_silent_agent_takes_its_node_out_until_it_answers(workspace, cluster):
    """The node's slotrun agent stops answering (SIGSTOP); Ray still lists the node alive."""
    add_node(cluster, "gpu-y", 2)
    ledger = os.path.join(os.path.dirname(workspace), "ledger")
    eng, store = make_engine(workspace, cluster, limits={"gpu-y/gpu0": 1, "gpu-y/gpu1": 1},
                             ray_node_timeout=NODE_TIMEOUT)
    watcher = watch_nodes(eng, eng.inventory, interval=0.2)
    view = eng.executor.view
    [node] = [n for n in view.nodes() if n.name == "gpu-y"]
    agent_pid = ray.get(view.agent(node.node_id).ping.remote())["pid"]
    stopped = False
    try:
        b = eng.submit(["configs/exp-2/exp-2-1-1.yaml"], "ann", command=ledger_command(ledger, 120),
                       max_retries=1)
        tid = b["tasks"][0]["id"]
        wait_for(lambda: store.get_task(tid)["state"] == "running"
                 and any("start" in x for x in ledger_lines(ledger)), timeout=60)
        assert store.get_task(tid)["device"].startswith("gpu-y/")
        free = ({"gpu-y/gpu0", "gpu-y/gpu1"} - {store.get_task(tid)["device"]}).pop()
        task_pid = store.latest_attempt(tid)["pid"]
        eng.set_slots("node-a/gpu0", 1)
        os.kill(agent_pid, signal.SIGSTOP)
        stopped, t0 = True, time.monotonic()
        # A start sent now reaches no one: it must not fail the task, nor hold the engine.
        c = eng.submit(["configs/exp-2/exp-2-1-2.yaml"], "bob", devices=[free],
                       command=ledger_command(ledger, 120))
        pinned = c["tasks"][0]["id"]
        wait_for(lambda: store.attempts(tid)[0]["state"] == "interrupted", timeout=30,
                 interval=0.05)
        noticed = time.monotonic() - t0
        wait_for(lambda: store.get_task(pinned)["state"] == "queued"
                 and store.get_task(pinned)["attempts"] == 1, timeout=30)
        assert not any(d.startswith("gpu-y/") for d in eng.devices)
        wait_for(lambda: store.get_task(tid)["state"] == "succeeded", timeout=30)
        first, second = store.attempts(tid)
        assert first["message"] == (f"node gpu-y was lost (its slotrun agent did not answer "
                                    f"for {NODE_TIMEOUT} s); requeued (retry 1 of 1)"), \
            first["message"]
        assert second["node"] == "node-a"
        [unreached] = store.attempts(pinned)
        assert unreached["state"] == "interrupted"
        assert unreached["message"].startswith("node gpu-y could not be reached")
        assert_in_words(unreached["message"])
        print(f"\nagent of gpu-y stopped: task interrupted after {noticed:.1f} s, retried on "
              f"{second['device']}; a start sent meanwhile: {unreached['message']!r}")
        assert pid_alive(task_pid)  # the task itself never noticed
        os.kill(agent_pid, signal.SIGCONT)
        stopped = False
        # Answering again: the task counted lost is stopped there, the node takes tasks again
        # and the pinned task runs on it.
        wait_for(lambda: not pid_alive(task_pid), timeout=30)
        wait_for(lambda: free in eng.devices, timeout=30)
        wait_for(lambda: store.get_task(pinned)["state"] == "succeeded", timeout=60)
        assert store.latest_attempt(pinned)["node"] == "gpu-y"
        lines = ledger_lines(ledger)
        for cfg in ("configs/exp-2/exp-2-1-1.yaml", "configs/exp-2/exp-2-1-2.yaml"):
            assert lines.count(f"{cfg} 1 done") == 0 and lines.count(f"{cfg} 2 done") == 1, lines
        assert noticed < NODE_TIMEOUT + 6, noticed
    finally:
        if stopped:
            os.kill(agent_pid, signal.SIGCONT)
        watcher.stop()
        eng.stop()


@pytest.mark.parametrize("value", [0, -1, float("nan")])
def test_a_node_timeout_that_is_not_above_zero_is_refused(workspace, value):
    with pytest.raises(SlotrunError, match="ray_node_timeout must be a number of seconds above 0"):
        ClusterView({"workspace": workspace, "ray_node_timeout": value})


def test_the_start_up_check_lets_a_real_head_pass(cluster):
    from app.executors.ray_address import check_reachable

    # The head accepts the TCP knock, then answers gRPC as Ray's GCS, with the environment
    # the other tests here connect with: nothing is raised.
    assert check_reachable(cluster.address) is None


def test_serve_on_ray_stops_cleanly_on_sigterm(workspace, cluster, tmp_path):
    """SIGTERM stops a server on the ray executor as it stops one on the local executor: its
    engine closes (the next server takes over), exit status 0, and no signal dump of Ray's
    or worker error line of gunicorn's (ray.init takes SIGTERM over in the worker)."""
    from tests.helpers import ServerProcess, task_env

    env = task_env(SLOTRUN_AUTH="false", SLOTRUN_KILL_GRACE=2, RAY_USAGE_STATS_ENABLED="0",
                   SLOTRUN_RAY_NODE_DIR=node_dir(workspace))
    server = ServerProcess(tmp_path / "serve.log", env, workspace,
                           extra_args=["--executor", "ray", "--ray-address", cluster.address],
                           start=False)
    server.start(timeout=120)
    try:
        status = server.api("GET", "/status").json()
        assert status["engine"]["pid"] != server.proc.pid
    finally:
        code = server.stop()
    log = server.output()
    assert code == 0, log
    assert "SIGTERM received" not in log and "Traceback" not in log, log
    assert not re.search(r"Worker \(pid:\d+\) (exited|was sent)", log), log
    # The engine let go of the workspace: a second server starts on it at once.
    again = ServerProcess(tmp_path / "again.log", env, workspace,
                          extra_args=["--executor", "ray", "--ray-address", cluster.address],
                          start=False)
    again.start(timeout=120)
    assert again.stop() == 0, again.output()
