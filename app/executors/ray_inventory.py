"""The device inventory of a Ray cluster: every alive node's GPUs and CPU.

Device ids are node-qualified ("gpu-a/gpu0", "gpu-a/cpu"), so slot limits are set per node
and GPU exactly as on one server. Each node's figures come from the slotrun agent running
there (NVML on that node; simulated GPUs when the node declares GPUs to Ray but has no NVML).

``snapshot()`` never waits on a node it already knows: it returns that node's latest figures
and asks for fresh ones in the background (so they are at most one refresh old, and a slow
node never stalls the dashboard or the scheduler). Only a node seen for the first time is
waited for, briefly, so that its device list is right from the start. Nodes that join or
leave the cluster, or that the executor takes out because their agent stopped answering,
appear or disappear at the next ``snapshot()``; ``watch_nodes`` tells an engine when that
happens.

It lives beside the Ray executor, not among the devices, because both reach the cluster
through the same ``ClusterView`` and node agents (``executors/ray_cluster.py``).
"""

import logging
import threading

from ..devices import Device
from .ray_cluster import cluster_view

log = logging.getLogger(__name__)


class RayInventory:
    """Devices of every alive node of the cluster, with the interface of devices.Inventory."""

    simulated = False
    source = "ray"
    # The process ids a node reports are that node's: GPU memory is matched to tasks by when
    # their processes appear on a GPU (admission.Attribution), never by pid on the head.
    pids_elsewhere = True

    def __init__(self, settings, first_timeout=20.0):
        self.view = cluster_view(settings)
        self.ray = self.view.ray
        self.first_timeout = float(first_timeout)  # a node's new agent takes a moment to start
        self._last = {}  # node id -> [Device]
        self._inflight = {}  # node id -> ObjectRef of a figures request
        self._lock = threading.Lock()

    def snapshot(self, max_age=0.0):
        """Return every alive node's devices (GPUs first, node by node, then the CPUs).

        ``max_age``: reuse the list of alive nodes when it is younger than that (seconds).
        """
        nodes = self.view.nodes(max_age)
        new = {}
        for n in nodes:
            ref = self._ask(n)
            with self._lock:
                known = n.node_id in self._last
            if ref is not None and not known:
                new[n.node_id] = ref
        if new:
            self.ray.wait(list(new.values()), num_returns=len(new), timeout=self.first_timeout)
            for nid, ref in new.items():
                self._keep(nid, ref)
        gpus, cpus = [], []
        with self._lock:
            alive = {n.node_id for n in nodes}
            for nid in list(self._last):
                if nid not in alive:
                    del self._last[nid]
            for n in nodes:
                devs = self._last.get(n.node_id) or _declared(n)
                gpus += [d for d in devs if d.kind == "gpu"]
                cpus += [d for d in devs if d.kind == "cpu"]
        return gpus + cpus

    def _ask(self, node):
        """Send a figures request to a node unless one is on its way; return its ref."""
        with self._lock:
            ref = self._inflight.get(node.node_id)
        if ref is not None:
            return ref
        try:
            ref = self.view.agent(node.node_id).figures.remote(node.name, node.gpus)
        except Exception as e:  # noqa: BLE001 - a node that cannot be asked keeps old figures
            log.warning("cannot ask node %s for its figures: %s", node.name, e)
            return None
        with self._lock:
            self._inflight[node.node_id] = ref
        ref.future().add_done_callback(lambda f, nid=node.node_id, ref=ref: self._keep(nid, ref, f))
        return ref

    def _keep(self, node_id, ref, fut=None):
        """Store the answer of a figures request (from its future, or read now)."""
        try:
            figures = fut.result() if fut is not None else self.ray.get(ref, timeout=0)
        except self.ray.exceptions.GetTimeoutError:
            return  # not answered yet: its callback stores it later
        except Exception:  # noqa: BLE001 - the node failed: keep its old figures, ask again
            figures = None
        with self._lock:
            if self._inflight.get(node_id) is ref:
                del self._inflight[node_id]
            if figures is not None:
                self._last[node_id] = [Device(**d) for d in figures]

    def gpus(self):
        """Return every node's GPUs (the node list may be up to a second old: the scheduler
        asks for them at every dispatch)."""
        return [d for d in self.snapshot(max_age=1.0) if d.kind == "gpu"]

    def cpus(self):
        """Return every node's CPU device."""
        return [d for d in self.snapshot() if d.kind == "cpu"]

    def node_ids(self):
        """Return the ids of the nodes in use (cheap: no figures are asked for)."""
        return sorted(n.node_id for n in self.view.nodes())

    def changes(self):
        """Return a number that grows whenever a node is taken out or brought back."""
        return self.view.generation

    def close(self):
        """Release the inventory (the cluster connection stays for the executor)."""


def _declared(node):
    """Return a node's devices as it declared them to Ray (no figures yet)."""
    devs = [Device(f"{node.name}/gpu{i}", "gpu", i, "GPU (no figures yet)", node=node.name)
            for i in range(node.gpus)]
    devs.append(Device(f"{node.name}/cpu", "cpu", None, f"CPU ({node.cpus} cores)", node=node.name))
    return devs


def make_inventory(settings):
    """Return the cluster's inventory, connecting to the Ray cluster of ``ray_address``."""
    return RayInventory(settings)


class NodeWatcher(threading.Thread):
    """Calls ``engine.refresh_devices()`` whenever nodes join or leave the cluster."""

    def __init__(self, engine, inventory, interval=2.0):
        super().__init__(name="slotrun-ray-nodes", daemon=True)
        self.engine = engine
        self.inventory = inventory
        self.interval = float(interval)
        self._halt = threading.Event()

    def run(self):
        """Compare the alive nodes every ``interval`` seconds; refresh the engine on a change."""
        seen = None
        while not self._halt.wait(self.interval if seen is not None else 0):
            try:
                # A node taken out and back between two looks leaves the ids as they were,
                # but the engine has dropped its devices meanwhile: count those changes too.
                ids = (self.inventory.node_ids(), self.inventory.changes())
                if seen is not None and ids != seen:
                    # Meet new nodes here first (their agents take a moment to start), so
                    # that the engine's own snapshot does not wait on its scheduler thread.
                    self.inventory.snapshot()
                    self.engine.refresh_devices()
                seen = ids
            except Exception as e:  # noqa: BLE001 - the watcher must outlive a cluster hiccup
                log.warning("watching the Ray nodes failed (%s); trying again", e)

    def stop(self):
        """Stop watching."""
        self._halt.set()


def watch_nodes(engine, inventory, interval=2.0):
    """Start and return a NodeWatcher that keeps the engine's devices in step with the cluster."""
    w = NodeWatcher(engine, inventory, interval)
    w.start()
    return w
