"""The Ray cluster as slotrun sees it: the connection, node names, agents and node health.

Ray is imported when a cluster is first used (an optional dependency: ``pip install
'.[ray]'``), so importing slotrun without Ray installed still works.
"""

import hashlib
import logging
import os
import queue
import socket
import threading
import time
from typing import NamedTuple

from ..errors import SlotrunError
from .ray_agent import NodeAgent
from .records import ExecutorUnavailable

log = logging.getLogger(__name__)

NAMESPACE = "slotrun"
NAME_LABEL = "slotrun-name"  # a node label naming the node (else its hostname)
AGENT_STOPPED = "its slotrun agent stopped"


class NodeDown(NamedTuple):
    """News for the health watcher: a node was taken out (``episode``: which time)."""

    node_id: str
    name: str
    cause: str
    episode: int


class Halt(NamedTuple):
    """News for the health watcher: its last listener left, stop watching."""


def _ray():
    try:
        import ray  # optional dependency: only the Ray executor needs it
    except ImportError:
        raise SlotrunError("the ray executor needs Ray; install it with pip install '.[ray]' "
                           "(or use the local executor: executor: local)") from None
    return ray


_connect_lock = threading.Lock()


def connect(settings):
    """Connect this process to the Ray cluster of ``ray_address`` (once); return the ray module."""
    ray = _ray()
    with _connect_lock:
        if not ray.is_initialized():
            address = settings.get("ray_address") or "auto"
            try:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                         logging_level=logging.WARNING, runtime_env=code_env())
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
                hint = ""
                if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and address != "auto":
                    # Ray sends its token to an explicit address only when told to.
                    hint = ("; a cluster with token authentication (Ray's default) also needs "
                            "RAY_AUTH_MODE=token in this server's environment and the cluster's "
                            "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)")
                raise SlotrunError(
                    f"cannot connect to the Ray cluster at {address!r} ({first_line(e)}); start "
                    "one with `ray start --head` and pass its address with --ray-address"
                    + hint) from None
    return ray


def first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def workspace_key(workspace):
    """Return a short key naming a head's workspace on the cluster's nodes."""
    text = f"{socket.gethostname()}:{os.path.abspath(workspace)}"
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def is_dead_actor(ray, exc):
    return isinstance(exc, getattr(ray.exceptions, "ActorDiedError", ()))


def node_died(exc):
    """Return True when a Ray error says the actor's node died (not only the actor)."""
    lines = str(exc).strip().lower().splitlines()
    last = lines[-1] if lines else ""
    return "node" in last and any(w in last for w in ("terminat", "died", "dead", "lost", "fail"))


def is_actor_error(ray, exc):
    return isinstance(exc, ray.exceptions.RayActorError)


def in_words(exc):
    """Return what went wrong in a Ray call in a user's words (no actor ids, no addresses)."""
    import ray  # optional dependency; loaded by now: this describes one of its errors

    if isinstance(exc, ray.exceptions.GetTimeoutError):
        return "no answer in time"
    if isinstance(exc, ray.exceptions.RayActorError):
        return "its slotrun agent could not be reached"
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None and not isinstance(cause, ray.exceptions.RayError):
            return f"{type(cause).__name__}: {cause}"[:300]
        return "the call failed on the node"
    if isinstance(exc, ray.exceptions.RayError):
        return type(exc).__name__
    return f"{exc}"[:300] or type(exc).__name__


# -- the cluster as slotrun sees it ------------------------------------------------------------


class NodeInfo:
    """An alive Ray node: slotrun's name for it, its Ray id and what it declared."""

    def __init__(self, name, node_id, info):
        self.name = name
        self.node_id = node_id
        self.hostname = info.get("NodeManagerHostname", "")
        self.address = info.get("NodeManagerAddress", "")
        self.gpus = int(info.get("Resources", {}).get("GPU", 0) or 0)
        self.cpus = int(info.get("Resources", {}).get("CPU", 0) or 0)

    def __repr__(self):
        return f"NodeInfo({self.name!r}, {self.node_id[:8]})"


class _Health:
    """What the head knows of one node's agent: when it last answered, and whether the node
    is out of placement (``down``: None while it is in, else why in words)."""

    def __init__(self):
        self.last_ok = None  # monotonic time of the agent's last answer
        self.silent_since = None  # when the first ping since that answer was sent
        self.ping = None  # the ping in flight (an ObjectRef)
        self.ping_at = 0.0
        self.down = None  # None: in placement; else the cause ("" when Ray says it died)
        self.told = False  # the listeners heard of the last take-out
        self.episode = 0  # the generation of the last take-out


class ClusterView:
    """Node names, agent actors and node health of one workspace's engine on the cluster.

    A node is named by its ``slotrun-name`` label, else by its hostname; a second alive node
    with a name already taken gets "-2", "-3"... (several Ray nodes on one machine).
    A node keeps its name for as long as it is alive.

    While an executor listens (``add_listener``), a watcher thread pings every node's agent
    once a second. A node is taken out (``nodes()`` no longer lists it, and listeners hear of
    it at once) when Ray reports it dead, when its agent died, or when its agent has not
    answered for ``ray_node_timeout`` seconds; it comes back when its agent answers again.
    Ray itself takes much longer to notice a node that vanished without saying goodbye
    (its health checks run for about 15 s), and lists it alive meanwhile.
    """

    def __init__(self, settings):
        self.node_timeout = float(settings.get("ray_node_timeout", 3.0))
        if not self.node_timeout > 0:
            raise SlotrunError(f"ray_node_timeout must be a number of seconds above 0, such as "
                               f"3, not {settings.get('ray_node_timeout')!r}")
        self.ray = connect(settings)
        self.settings = settings
        self.key = workspace_key(settings["workspace"])
        self.node_dir = settings.get("ray_node_dir") or ""
        self.timeout = float(settings.get("ray_call_timeout", 30.0))
        self.ping_interval = min(1.0, self.node_timeout / 3)
        self._lock = threading.Lock()
        self._names = {}  # node id -> name
        self._former = {}  # node id -> name, of nodes that left
        self._agents = {}  # node id -> actor handle
        self._nodes = []
        self._nodes_at = 0.0
        self._remote_cls = None
        self._health = {}  # node id -> _Health
        self._listeners = []
        self._news = queue.SimpleQueue()  # NodeDown to tell, Halt
        self._watcher = None
        self.generation = 0  # counts nodes taken out and brought back

    def _alive(self, max_age=0.0):
        """Return every node Ray lists as alive (taken-out ones too), sorted by name."""
        with self._lock:
            if max_age and time.monotonic() - self._nodes_at < max_age:
                return list(self._nodes)
        infos = self.ray.nodes()
        with self._lock:
            alive = [n for n in infos if n.get("Alive")]
            alive.sort(key=lambda n: (n.get("NodeManagerAddress", ""), n.get("NodeManagerPort", 0),
                                      n["NodeID"]))
            ids = {n["NodeID"] for n in alive}
            for nid in list(self._names):
                if nid not in ids:
                    self._former[nid] = self._names.pop(nid)
                    self._agents.pop(nid, None)
            taken = set(self._names.values())
            for n in alive:
                nid = n["NodeID"]
                if nid in self._names:
                    continue
                base = (n.get("Labels") or {}).get(NAME_LABEL) or n.get("NodeManagerHostname") \
                    or n.get("NodeManagerAddress") or nid[:8]
                base = "".join(c if c.isalnum() or c in "-_." else "-" for c in base)
                name, i = base, 2
                while name in taken:
                    name, i = f"{base}-{i}", i + 1
                self._names[nid] = name
                taken.add(name)
            self._nodes = sorted(
                (NodeInfo(self._names[n["NodeID"]], n["NodeID"], n) for n in alive),
                key=lambda x: x.name)
            self._nodes_at = time.monotonic()
            return list(self._nodes)

    def nodes(self, max_age=0.0):
        """Return the nodes tasks may be placed on (alive, not taken out) as NodeInfo, by name."""
        nodes = self._alive(max_age)
        with self._lock:
            return [n for n in nodes
                    if n.node_id not in self._health or self._health[n.node_id].down is None]

    def node_alive(self, node_id):
        """Return True while Ray lists the node as alive."""
        return any(n.node_id == node_id for n in self._alive())

    def resolve(self, name):
        """Return the NodeInfo named ``name``, or raise ExecutorUnavailable naming the others."""
        for max_age in (2.0, 0.0):
            for n in self.nodes(max_age):
                if n.name == name:
                    return n
        alive = ", ".join(n.name for n in self.nodes(2.0)) or "none"
        with self._lock:
            out = next((h.down for nid, h in self._health.items()
                        if h.down is not None and self._names.get(nid) == name), None)
        why = f" ({out})" if out else " (it was taken out)" if out is not None else ""
        raise ExecutorUnavailable(
            f"node {name} is not available{why}; nodes in use: {alive}", node=name)

    def _actor_name(self, node_id):
        return f"slotrun-{self.key}-{node_id[:16]}"

    def agent(self, node_id, create=True):
        """Return the agent actor on a node, starting it when needed (None if absent)."""
        with self._lock:
            a = self._agents.get(node_id)
        if a is not None:
            return a
        ray = self.ray
        if not create:
            try:
                a = ray.get_actor(self._actor_name(node_id), namespace=NAMESPACE)
            except ValueError:
                return None
        else:
            from ray.util.scheduling_strategies import \
                NodeAffinitySchedulingStrategy  # optional dependency, as ray

            if self._remote_cls is None:
                self._remote_cls = ray.remote(NodeAgent)
            a = self._remote_cls.options(
                name=self._actor_name(node_id), namespace=NAMESPACE, lifetime="detached",
                get_if_exists=True, num_cpus=0, num_gpus=0, max_restarts=0, max_concurrency=64,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(self.node_dir, self.key)
        with self._lock:
            self._agents.setdefault(node_id, a)
            return self._agents[node_id]

    def forget_agent(self, node_id):
        """Drop a cached agent handle (it died; the next call starts a new one)."""
        with self._lock:
            self._agents.pop(node_id, None)

    def name_of(self, node_id):
        """Return slotrun's name of a node (its id when unknown)."""
        with self._lock:
            return self._names.get(node_id) or self._former.get(node_id) or node_id[:8]

    # -- health ------------------------------------------------------------------------------

    def add_listener(self, fn):
        """Call ``fn(node_id, name, cause)`` (on the watcher thread) whenever a node is taken
        out; start watching the nodes."""
        with self._lock:
            self._listeners = self._listeners + [fn]
            if self._watcher is None:
                self._health = {}  # what an earlier engine saw is no evidence now
                self._news = queue.SimpleQueue()
                self._watcher = threading.Thread(target=self._watch, args=(self._news,),
                                                 name="slotrun-ray-health", daemon=True)
                self._watcher.start()

    def remove_listener(self, fn):
        """Stop telling ``fn``; the watcher stops with the last listener."""
        with self._lock:
            self._listeners = [f for f in self._listeners if f != fn]  # bound methods: ==
            if not self._listeners and self._watcher is not None:
                self._watcher = None
                self._news.put(Halt())

    def is_down(self, node_id):
        """Return why a node is out of placement (None while it is in)."""
        with self._lock:
            h = self._health.get(node_id)
            return None if h is None else h.down

    def mark_down(self, node_id, cause):
        """Take a node out of placement; ``cause`` says why in words ("" when Ray says it
        died). Listeners hear of it from the watcher thread. Returns False if it already was."""
        with self._lock:
            h = self._health.get(node_id)
            if h is None:
                h = self._health[node_id] = _Health()
            if h.down is not None:
                return False
            h.down, h.told = cause, False
            self.generation += 1
            h.episode = episode = self.generation
            name = self._names.get(node_id) or self._former.get(node_id) or node_id[:8]
        self._news.put(NodeDown(node_id, name, cause, episode))
        return True

    def _watch(self, news):
        """Ping the agents, take out the nodes that stopped answering, tell the listeners."""
        tick = min(0.25, self.ping_interval)
        next_round = 0.0
        me = threading.current_thread()
        while True:
            try:
                item = news.get(timeout=tick)
            except queue.Empty:
                item = None
            if isinstance(item, NodeDown):
                self._tell(item.node_id, item.name, item.cause)
                with self._lock:
                    h = self._health.get(item.node_id)
                    if h is not None and h.episode == item.episode:
                        h.told = True
            if self._watcher is not me:
                return
            try:
                now = time.monotonic()
                if now >= next_round:
                    next_round = now + self.ping_interval
                    self._ping_round(now)
                self._check_deadlines(time.monotonic())
            except Exception as e:  # noqa: BLE001 - the watcher must outlive a cluster hiccup
                log.warning("watching the Ray nodes failed (%s); trying again", in_words(e))

    def _tell(self, node_id, name, cause):
        for fn in list(self._listeners):
            try:
                fn(node_id, name, cause)
            except Exception:  # noqa: BLE001 - one listener must not silence the others
                log.exception("a node-loss listener failed")

    def _ping_round(self, now):
        alive = self._alive()
        ids = {n.node_id for n in alive}
        gone = []
        with self._lock:
            for nid in list(self._health):
                if nid not in ids:
                    h = self._health.pop(nid)
                    if h.down is None:  # Ray noticed first (or the node left cleanly)
                        self.generation += 1
                        gone.append((nid, self._former.get(nid) or nid[:8]))
            for n in alive:
                self._health.setdefault(n.node_id, _Health())
            due = [nid for nid, h in self._health.items()
                   if h.ping is None and now - h.ping_at >= self.ping_interval]
        for nid, name in gone:
            self._tell(nid, name, "")
        for nid in due:
            try:
                ref = self.agent(nid).ping.remote()
            except Exception as e:  # noqa: BLE001 - counted as no answer
                log.debug("cannot ping node %s: %s", self.name_of(nid), e)
                continue
            with self._lock:
                h = self._health.get(nid)
                if h is None:
                    continue
                h.ping, h.ping_at = ref, now
                if h.silent_since is None:
                    h.silent_since = now
            ref.future().add_done_callback(lambda f, nid=nid, ref=ref: self._pinged(nid, ref, f))

    def _pinged(self, node_id, ref, fut):
        # Runs on a Ray thread: no Ray calls here, only bookkeeping.
        try:
            fut.result()
            error = None
        except Exception as e:  # noqa: BLE001 - sorted out below
            error = e
        died = error is not None and is_dead_actor(self.ray, error)
        back = False
        with self._lock:
            h = self._health.get(node_id)
            if h is None or h.ping is not ref:
                return
            h.ping = None
            if error is None:
                h.last_ok, h.silent_since = time.monotonic(), None
                # Back only once the engine heard it was out: else its take-out could come
                # after the refresh that brings the devices back, and leave them out.
                if h.down is not None and h.told:
                    h.down = None
                    self.generation += 1
                    back = True
            elif died:
                self._agents.pop(node_id, None)  # the next ping starts a new agent
        if back:
            log.warning("node %s answers again; it takes tasks again", self.name_of(node_id))
        if died:
            self.mark_down(node_id, "" if node_died(error) else AGENT_STOPPED)

    def _check_deadlines(self, now):
        # Silence counts from a ping actually sent: a head too busy to ask (a stalled
        # watcher) never takes a node out.
        late = []
        with self._lock:
            for nid, h in self._health.items():
                if h.down is not None or h.silent_since is None:
                    continue
                # a new agent (or a node's first) may take a while to start
                limit = self.node_timeout if h.last_ok is not None \
                    else max(self.node_timeout, self.timeout)
                if now - h.silent_since > limit:
                    late.append(nid)
        for nid in late:
            self.mark_down(nid, f"its slotrun agent did not answer for {self.node_timeout:g} s")


def code_env():
    """Return the job's runtime env: it ships this slotrun package to the agents' workers.

    The nodes then need Ray (and the same Python) but not slotrun itself, and always run
    the head's version of the agent.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"py_modules": [package], "excludes": ["__pycache__", "*.pyc"]}


_views = {}
_views_lock = threading.Lock()


def cluster_view(settings):
    """Return the shared ClusterView of a workspace (connecting to Ray first)."""
    key = (settings.get("ray_address") or "auto", os.path.abspath(settings["workspace"]))
    with _views_lock:
        view = _views.get(key)
        if view is None:
            view = _views[key] = ClusterView(settings)
        return view


