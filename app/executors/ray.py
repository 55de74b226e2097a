"""The Ray executor: task processes on the nodes of a Ray cluster.

Ray is only the transport. slotrun keeps its queue, slot limits and states; on every node a
small, long-lived agent actor (pinned there with node affinity, asking Ray for no CPU or GPU,
so Ray's own resource accounting never limits slotrun's slots) starts each task exactly as
the local executor does: a ``/bin/sh`` wrapper in its own session, output straight to a log
file, an exit-code file. The head then

- learns of exits from one long-poll call per node (an exit answers it at once),
- pulls new log bytes every ``ray_log_interval`` seconds into the head's own
  ``<run dir>/output.log``, so log tails work as for local tasks,
- brings the task's results folder back into the head's results/ when the task ends,
  unless ``ray_shared_fs`` says the nodes see the head's workspace at the same path,
- reports a node (or agent) that died as the loss of its tasks.

Without a shared filesystem the head ships its workspace (code and configs; not results/,
.slotrun/, .git/) to each node as a bundle, cached there by content, so a node needs only
slotrun and Ray installed. The wrapper also holds a pipe to the agent: if the agent dies
(its node's Ray stopped), the task's process group is killed rather than left orphaned.

Ray is imported lazily, so importing slotrun without Ray installed still works.
"""

import concurrent.futures
import fnmatch
import hashlib
import io
import logging
import os
import queue
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import time
from typing import NamedTuple

from ..errors import SlotrunError
from ..logs import LOG_NAME
from . import ExecutorUnavailable, Handle
from .local import boot_id, process_start_time, read_exit_code
from .processes import MARKER, Stops, TaskTree, become_subreaper

log = logging.getLogger(__name__)


class NodeDown(NamedTuple):
    """News for the health watcher: a node was taken out (``episode``: which time)."""

    node_id: str
    name: str
    cause: str
    episode: int


class Halt(NamedTuple):
    """News for the health watcher: its last listener left, stop watching."""


class Bundle(NamedTuple):
    """The workspace as last shipped to the nodes."""

    fingerprint: str  # of every file's path, size, time and mode
    digest: str  # the copy's name on the nodes
    ref: object  # the Ray object holding the packed files
    files: dict  # path -> (size, mtime_ns), to tell a changed config
    walked_at: float  # time.monotonic() of the walk it was made from


class BundleRef(NamedTuple):
    """What an agent is given to find (or unpack) a bundle: its digest and its object,
    in a list so that Ray passes the reference instead of resolving it."""

    digest: str
    refs: list


class ExitNote(NamedTuple):
    """An exit an agent keeps for the head's long poll, numbered in order."""

    seq: int
    key: str
    code: int


class PollAnswer(NamedTuple):
    """For the head's pump: a node's long poll for exits answered (``future``)."""

    node_id: str
    poll: object
    future: object


class LogsAnswer(NamedTuple):
    """For the head's pump: a node's new log bytes arrived (``future``)."""

    node_id: str
    offsets: dict
    future: object


class Wake(NamedTuple):
    """For the head's pump: look at ``closed`` now."""

NAMESPACE = "slotrun"
NAME_LABEL = "slotrun-name"  # a node label naming the node (else its hostname)
CHUNK = 8 * 1024 * 1024
LOG_PULL_MAX = 1024 * 1024
POLL_TIMEOUT = 30.0
BUNDLE_TTL = 1.0  # seconds a walk of the workspace is trusted for (the config is always checked)
EXCLUDED_TOP = (".slotrun", ".git", ".hg", ".svn")
EXCLUDED_ANY = ("__pycache__", "*.pyc", ".pytest_cache")

# $1: run folder, the rest: the command. Standard input is a pipe whose other end only the
# agent holds: a background watchdog blocks on it (as fd 3), and EOF means the agent died, so
# the whole group goes with it. A TERM (cancel) reaches the task; the wrapper then ends the
# watchdog itself. The task gets /dev/null as its standard input and never sees the pipe.
WRAPPER = ('d=$1; shift; echo $$ > "$d/pid"; exec 3<&0 </dev/null; '
           '(trap "" TERM INT HUP; read _ <&3; kill -KILL 0) & w=$!; exec 3<&-; '
           "trap 'kill -KILL $w 2>/dev/null; exit 143' TERM; "
           "trap 'kill -KILL $w 2>/dev/null; exit 130' INT; "
           '"$@"; c=$?; kill -KILL $w 2>/dev/null; echo $c > "$d/exit"; exit $c')


def _ray():
    try:
        import ray
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
                         logging_level=logging.WARNING, runtime_env=_code_env())
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
                hint = ""
                if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and address != "auto":
                    # Ray sends its token to an explicit address only when told to.
                    hint = ("; a cluster with token authentication (Ray's default) also needs "
                            "RAY_AUTH_MODE=token in this server's environment and the cluster's "
                            "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)")
                raise SlotrunError(
                    f"cannot connect to the Ray cluster at {address!r} ({_first_line(e)}); start "
                    "one with `ray start --head` and pass its address with --ray-address"
                    + hint) from None
    return ray


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def workspace_key(workspace):
    """Return a short key naming a head's workspace on the cluster's nodes."""
    text = f"{socket.gethostname()}:{os.path.abspath(workspace)}"
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _is_dead_actor(ray, exc):
    return isinstance(exc, getattr(ray.exceptions, "ActorDiedError", ()))


def _node_died(exc):
    """Return True when a Ray error says the actor's node died (not only the actor)."""
    lines = str(exc).strip().lower().splitlines()
    last = lines[-1] if lines else ""
    return "node" in last and any(w in last for w in ("terminat", "died", "dead", "lost", "fail"))


def _is_actor_error(ray, exc):
    return isinstance(exc, ray.exceptions.RayActorError)


AGENT_STOPPED = "its slotrun agent stopped"


def _loss_message(name, cause):
    """Return the one message a task lost with its node gets."""
    return f"node {name} was lost" + (f" ({cause})" if cause else "")


def _unreachable(name, cause):
    """Return the ExecutorUnavailable of a start that could not reach its node."""
    return ExecutorUnavailable(f"node {name} could not be reached ({cause})" if cause
                               else f"node {name} was lost", node=name)


def _words(exc):
    """Return what went wrong in a Ray call in a user's words (no actor ids, no addresses)."""
    import ray

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
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
                log.warning("watching the Ray nodes failed (%s); trying again", _words(e))

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
        died = error is not None and _is_dead_actor(self.ray, error)
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
            self.mark_down(node_id, "" if _node_died(error) else AGENT_STOPPED)

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


def _code_env():
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


# -- the node side -------------------------------------------------------------------------------


def _node_environment():
    """Return the environment `ray start` ran with on this node (without Ray's own variables)."""
    env = None
    pid = os.environ.get("RAY_RAYLET_PID")
    if pid:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read()
            env = {}
            for item in raw.split(b"\0"):
                k, sep, v = item.partition(b"=")
                if sep:
                    env[os.fsdecode(k)] = os.fsdecode(v)
        except OSError:
            env = None
    if env is None:
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)  # Ray sets it to 1 in its workers
    return {k: v for k, v in env.items() if not k.startswith("RAY_") and k != "SPT_NOENV"}


def _extract(fileobj, dest):
    """Unpack a tar stream into ``dest``, skipping members that would land outside it."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            def lenient(member, path):
                try:
                    return tarfile.data_filter(member, path)
                except tarfile.FilterError:
                    log.warning("skipped %s while unpacking into %s", member.name, dest)
                    return None
            tar.extractall(dest, filter=lenient)
            return
        root = os.path.realpath(dest)
        safe = []
        for m in tar.getmembers():
            target = os.path.realpath(os.path.join(dest, m.name))
            if (m.isdev() or m.issym() or m.islnk()
                    or not (target == root or target.startswith(root + os.sep))):
                continue
            safe.append(m)
        tar.extractall(dest, members=safe)


class NodeAgent:
    """Runs on one node (as a Ray actor): starts, watches and stops tasks; reports figures."""

    def __init__(self, node_dir, key):
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()
        base = node_dir or os.path.join(tempfile.gettempdir(), f"slotrun-ray-{os.getuid()}")
        self.root = os.path.join(base, f"{key}-{self.node_id[:12]}")
        os.makedirs(self.root, exist_ok=True)
        self.env = _node_environment()
        self.tasks = {}  # key -> entry dict
        self.abandoned = set()  # keys whose start the head gave up on
        self.exits = []  # (seq, key, code)
        self.seq = 0
        self.cond = threading.Condition()
        self.bundle_lock = threading.Lock()
        self.pinned = {}  # bundle digest -> starts in progress that use it
        self.inventory = None
        self.inventory_gpus = None
        self.stops = Stops()  # a task's processes are stopped together (see processes.py)
        # This actor's children are its tasks: their orphans come here, to be stopped with them.
        become_subreaper()

    def ping(self):
        """Return who and where this agent is."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
                "root": self.root, "python": sys.executable}

    # -- starting

    def _bundle(self, digest, refs):
        import ray  # optional: only where the Ray executor runs

        path = os.path.join(self.root, "ws", digest)
        with self.bundle_lock:
            if os.path.isdir(path):
                return path
            data = ray.get(refs[0])
            tmp = f"{path}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            _extract(io.BytesIO(data), tmp)
            os.rename(tmp, path)
            self._prune_bundles(keep=digest)
        return path

    def _unpin(self, digest):
        with self.bundle_lock:
            n = self.pinned.get(digest, 0) - 1
            if n > 0:
                self.pinned[digest] = n
            else:
                self.pinned.pop(digest, None)

    def _prune_bundles(self, keep):
        """Delete the copies no task uses any more (called with bundle_lock held)."""
        with self.cond:
            used = {e["bundle"] for e in self.tasks.values()} | {keep} | set(self.pinned)
        folder = os.path.join(self.root, "ws")
        for name in os.listdir(folder):
            if name not in used and ".tmp-" not in name:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)

    def start(self, p, bundle):
        """Start one task; return its pid, start time, boot id and node-side folders
        (``bundle``: a BundleRef, None on a shared filesystem)."""
        # _make: an agent and a head of another version pass plain sequences
        bundle = BundleRef._make(bundle) if bundle else None
        digest = bundle.digest if bundle else None
        if digest:
            with self.bundle_lock:  # no pruning of this copy until the task is recorded
                self.pinned[digest] = self.pinned.get(digest, 0) + 1
        try:
            return self._start(p, bundle)
        finally:
            if digest:
                self._unpin(digest)

    def _start(self, p, bundle):
        key = p["key"]
        with self.cond:
            if key in self.abandoned:
                raise RuntimeError(f"the head gave up on starting task {key} here")
            e = self.tasks.get(key)
            if e is not None and e["code"] is None:
                raise RuntimeError(f"task {key} already runs here (pid {e['info']['pid']})")
        if e is not None:
            self.forget(key)  # an ended run under the same key that no head collected
        workspace = p["workspace"]
        if p["shared"]:
            cwd, digest = p["cwd"], None
            run_dir = os.path.join(self.root, "runs", key)

            def remap(s):
                return s
        else:
            digest = bundle.digest
            cwd = self._bundle(digest, bundle.refs)

            def remap(s):
                if s == workspace or s.startswith(workspace + "/"):
                    return cwd + s[len(workspace):]
                return s
            run_dir = remap(p["run_dir"])
            if run_dir == p["run_dir"]:
                run_dir = os.path.join(self.root, "runs", key)
        if not os.path.isdir(cwd):
            raise RuntimeError(f"folder {cwd} does not exist on node {socket.gethostname()}; "
                               "without a filesystem shared by the nodes, set ray_shared_fs: false")
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir, exist_ok=True)
        for name, data in (p.get("files") or {}).items():
            with open(os.path.join(run_dir, os.path.basename(name)), "wb") as f:
                f.write(data)

        def fix(a):
            a = remap(a)
            if a == p["python"] and not os.path.exists(a):
                return sys.executable  # the head's interpreter path does not exist here
            return a
        argv = [fix(a) for a in p["argv"]]
        env = dict(self.env)
        env.update({k: remap(v) for k, v in p["env"].items()})
        env[MARKER] = run_dir  # every process of the task inherits it, even past setsid
        results = env.get("SLOTRUN_RESULTS") or ""
        if results and not p["shared"] and results != p["env"].get("SLOTRUN_RESULTS"):
            shutil.rmtree(results, ignore_errors=True)  # leftovers of an earlier attempt here
        else:
            results = ""  # nothing to bring back: written in place (or outside the workspace)
        r, w = os.pipe()
        log_fd = os.open(os.path.join(run_dir, LOG_NAME),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        import subprocess

        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "slotrun-task", run_dir, *argv],
                cwd=cwd, env=env, stdin=r, stdout=log_fd, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        except OSError:
            os.close(w)
            raise
        finally:
            os.close(log_fd)
            os.close(r)
        info = {"pid": proc.pid, "pid_start": process_start_time(proc.pid), "boot_id": boot_id(),
                "run_dir": run_dir, "results": results, "host": socket.gethostname()}
        entry = {"proc": proc, "pipe": w, "run_dir": run_dir, "results": results,
                 "bundle": digest, "code": None, "info": info, "stopped": {},
                 "tree": TaskTree(proc.pid, info["pid_start"], run_dir),
                 "grace": float(p.get("kill_grace", 5.0))}
        with self.cond:
            self.tasks[key] = entry
            abandoned = key in self.abandoned
        threading.Thread(target=self._reap, args=(key, entry), name=f"slotrun-reap-{key}",
                         daemon=True).start()
        if abandoned:  # the head timed out while this call was on its way
            self.stops.stop(key, entry["tree"], 0)
        return info

    def abandon(self, key):
        """Make sure a task whose start the head gave up on never runs (or stops now)."""
        with self.cond:
            self.abandoned.add(key)
            e = self.tasks.get(key)
        if e is not None and e["code"] is None:
            self.stops.stop(key, e["tree"], 0)
        return True

    def _reap(self, key, entry):
        rc = entry["proc"].wait()
        code = 128 - rc if rc < 0 else rc  # the wrapper itself was killed: as a shell reports it
        # The exit counts only once every process of the task is gone (the slot is held).
        job = self.stops.after_exit(key, entry["tree"], entry["grace"], adopted=False)
        if job is not None:
            job.wait()
            entry["stopped"] = {"stopped": len(job.found), "killed": len(job.killed),
                                "grace": job.grace}
        os.close(entry["pipe"])
        with self.cond:
            abandoned = key in self.abandoned
        if abandoned:  # the head counted it lost and will never collect it
            self.forget(key)
            return
        with self.cond:
            entry["code"] = code
            self.seq += 1
            self.exits.append(ExitNote(self.seq, key, code))
            self.cond.notify_all()

    # -- watching

    def wait_exits(self, after, timeout=POLL_TIMEOUT):
        """Return the ExitNotes after ``after``, waiting up to ``timeout`` s."""
        with self.cond:
            self.cond.wait_for(lambda: self.exits and self.exits[-1].seq > after, timeout)
            return [x for x in self.exits if x.seq > after]

    def status(self, key):
        """Return ("running", info) / ("exited", code) / ("unknown", None) for a task."""
        with self.cond:
            e = self.tasks.get(key)
            if e is None:
                return "unknown", None
            if e["code"] is None:
                return "running", e["info"]
            return "exited", e["code"]

    def read_logs(self, offsets, max_bytes=LOG_PULL_MAX):
        """Return {key: bytes of its log from offset} (at most ``max_bytes`` each)."""
        out = {}
        for key, offset in offsets.items():
            with self.cond:
                e = self.tasks.get(key)
            if e is None:
                continue
            try:
                with open(os.path.join(e["run_dir"], LOG_NAME), "rb") as f:
                    f.seek(offset)
                    data = f.read(max_bytes)
            except OSError:
                continue
            if data:
                out[key] = data
        return out

    def collect(self, key, offset, pack):
        """Return a finished task's log from ``offset`` (one chunk) and, when ``pack``, the
        size of its packed results (-1: none)."""
        data = self.read_logs({key: offset}, CHUNK).get(key, b"")
        with self.cond:
            stopped = dict(self.tasks[key]["stopped"]) if key in self.tasks else {}
        return {"log": data, "results": self.pack_results(key) if pack else -1, **stopped}

    def pack_results(self, key):
        """Pack a finished task's results folder; return the archive's size (-1: none)."""
        with self.cond:
            e = self.tasks.get(key)
        if e is None or not e["results"] or not os.path.isdir(e["results"]):
            return -1
        path = os.path.join(e["run_dir"], "results.tar.gz")
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            tar.add(e["results"], arcname=".")
        return os.path.getsize(path)

    def read_chunk(self, key, name, offset, size=CHUNK):
        """Return ``size`` bytes of a file of a task's run folder from ``offset``."""
        with self.cond:
            e = self.tasks.get(key)
        if e is None:
            raise KeyError(f"task {key} is not known on this node")
        with open(os.path.join(e["run_dir"], os.path.basename(name)), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def forget(self, key):
        """Drop a collected task and delete its node-side folders."""
        with self.cond:
            e = self.tasks.pop(key, None)
            self.exits = [x for x in self.exits if x.key != key]
        if e is None:
            return False
        shutil.rmtree(e["run_dir"], ignore_errors=True)
        if e["results"]:
            shutil.rmtree(e["results"], ignore_errors=True)
        return True

    # -- stopping

    def stop(self, key, grace=5.0):
        """Stop every process of a task (its session, and those that left it carrying its
        marker): SIGTERM now, SIGKILL after ``grace`` seconds."""
        with self.cond:
            e = self.tasks.get(key)
        if e is None or e["code"] is not None:
            return False
        self.stops.stop(key, e["tree"], grace)
        return True

    # -- figures

    def figures(self, name, declared_gpus):
        """Return this node's devices as dicts: NVML GPUs, else the declared ones simulated."""
        from dataclasses import asdict

        from .. import devices

        if self.inventory is None or self.inventory_gpus != declared_gpus:
            inv = _nvml_inventory(devices)
            if inv is None:
                inv = devices.SimulatedInventory(declared_gpus) if declared_gpus > 0 \
                    else devices.Inventory()
            self.inventory, self.inventory_gpus = inv, declared_gpus
        out = []
        for d in self.inventory.gpus() + [self.inventory.cpu()]:
            d.id = f"{name}/{d.id}"
            d.node = name
            out.append(asdict(d))
        return out


def _nvml_inventory(devices):
    """Return an NVML inventory of this node's GPUs (pynvml, else Ray's copy), or None."""
    try:
        import pynvml
    except ImportError:
        try:
            from ray._private.thirdparty import pynvml
        except ImportError:
            return None
    try:
        pynvml.nvmlInit()
        inv = devices.NvmlInventory(pynvml)
    except Exception:  # noqa: BLE001 - any NVML failure means "no NVIDIA GPU here"
        return None
    if inv.count > 0:
        return inv
    inv.close()
    return None


# -- the head side -------------------------------------------------------------------------------


class _Task:
    """What the head keeps about one running remote task."""

    def __init__(self, key, node_id, name, log_path):
        self.key = key
        self.node_id = node_id
        self.name = name
        self.log_path = log_path
        self.handle = None  # set once the start call returned
        self.fetch = False  # True when the node's results folder must come back to the head
        self.head_results = ""
        self.pending_code = None  # an exit that arrived before the start call returned
        self.finishing = False
        self.lock = threading.Lock()  # held while appending to the head's log
        try:
            self.offset = os.path.getsize(log_path)
        except OSError:
            self.offset = 0


class _NodeOut(Exception):
    """The node of a call in flight was taken out of placement."""

    def __init__(self, cause):
        super().__init__(cause)
        self.cause = cause


class _Poll:
    def __init__(self):
        self.after = 0
        self.pending = False
        self.logs_pending = False
        self.retry_at = 0.0


class RayExecutor:
    """Starts, watches and stops task processes on the nodes of a Ray cluster."""

    name = "ray"

    def __init__(self, on_exit, settings):
        self.on_exit = on_exit  # called as on_exit(handle, exit_code_or_None) from any thread
        self.settings = settings
        self.view = cluster_view(settings)
        self.ray = self.view.ray
        self.workspace = os.path.abspath(settings["workspace"])
        shared = settings.get("ray_shared_fs", False)
        self.shared = shared if isinstance(shared, bool) else \
            str(shared).strip().lower() in ("1", "true", "yes", "on")
        self.interval = float(settings.get("ray_log_interval", 0.5))
        self.timeout = float(settings.get("ray_call_timeout", 30.0))
        self.sync_exclude = [x.strip() for x in str(settings.get("ray_sync_exclude", "") or "")
                             .split(",") if x.strip()]
        from ..settings import parse_size

        self.sync_max = parse_size(settings.get("ray_sync_max_size", "256MiB"))
        self.results_dir = settings.get("results_dir", "results").strip("/")
        self._lock = threading.Lock()
        self._tasks = {}  # key -> _Task
        self._polls = {}  # node id -> _Poll
        self._events = queue.SimpleQueue()
        self._bundle = None  # Bundle, once the workspace was walked
        self._bundle_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            4, thread_name_prefix="slotrun-ray-finish")
        self._closed = False
        self.on_unavailable = None  # called with an ExecutorUnavailable when a node is taken out
        self._thread = threading.Thread(target=self._pump, name="slotrun-ray-pump", daemon=True)
        self._thread.start()
        self.view.add_listener(self._node_down)

    # -- starting -----------------------------------------------------------------------------

    def start(self, spec):
        """Start one attempt on its node; return its Handle (raises SlotrunError if it cannot)."""
        ray = self.ray
        node = self.view.resolve(spec.node)
        key = str(spec.attempt_id)
        os.makedirs(spec.run_dir, exist_ok=True)
        log_path = os.path.join(spec.run_dir, LOG_NAME)
        open(log_path, "ab").close()
        payload = {"key": key, "argv": list(spec.argv), "env": dict(spec.env), "cwd": spec.cwd,
                   "run_dir": spec.run_dir, "workspace": self.workspace, "shared": self.shared,
                   "python": sys.executable,
                   "kill_grace": float(self.settings.get("kill_grace", 5.0)),
                   "files": {} if self.shared else _run_files(spec.run_dir)}
        bundle = None if self.shared else self._workspace_bundle(spec.argv)
        t = _Task(key, node.node_id, node.name, log_path)
        with self._lock:
            self._tasks[key] = t
        info = None
        try:
            for attempt in (1, 2):
                agent = self.view.agent(node.node_id)
                ref = agent.start.remote(
                    payload, bundle and BundleRef(bundle.digest, [bundle.ref]))
                try:
                    info = self._answer(ref, node.node_id)
                    break
                except _NodeOut as e:
                    agent.abandon.remote(key)
                    raise _unreachable(node.name, e.cause) from None
                except ray.exceptions.GetTimeoutError:
                    agent.abandon.remote(key)
                    cause = f"it did not answer a start within {self.timeout:g} s"
                    self.view.mark_down(node.node_id, cause)
                    raise _unreachable(node.name, cause) from None
                except ray.exceptions.RayActorError as e:
                    self.view.forget_agent(node.node_id)
                    if attempt == 2 or not _is_dead_actor(ray, e) or \
                            not self.view.node_alive(node.node_id):
                        agent.abandon.remote(key)
                        cause = "" if _node_died(e) or not self._safe_alive(node.node_id) \
                            else AGENT_STOPPED
                        self.view.mark_down(node.node_id, cause)
                        raise _unreachable(node.name, cause) from None
                except ray.exceptions.RayTaskError as e:
                    raise SlotrunError(f"on node {node.name}: {_words(e)}") from None
        except BaseException:
            with self._lock:
                self._tasks.pop(key, None)
            raise
        handle = Handle(spec.task_id, spec.attempt_id, info["pid"], info["pid_start"],
                        info["boot_id"], spec.run_dir, node.name,
                        extra={"node_id": node.node_id, "key": key, "host": info["host"]})
        with self._lock:
            t.handle = handle
            t.fetch = bool(info["results"])
            t.head_results = spec.env.get("SLOTRUN_RESULTS", "")
            code = t.pending_code
            if code is not None:
                t.finishing = True
        if code is not None:
            self._pool.submit(self._finish, t, code)
            return handle
        cause = self.view.is_down(node.node_id)
        with self._lock:
            # Taken out while the answer was on its way: lost with the node's other tasks
            # (unless the loss of those already took this one too).
            lost = cause is not None and not t.finishing
            if lost:
                t.finishing = True
        if lost:
            self._pool.submit(self._report_lost, t, _loss_message(node.name, cause))
            self._pool.submit(self._abandon, node.node_id, [key])
            return handle
        self._ensure_poll(node.node_id)
        return handle

    def _answer(self, ref, node_id, timeout=None):
        """Return a call's answer; raise _NodeOut as soon as the node is taken out, and
        GetTimeoutError after ``timeout`` (default ``ray_call_timeout``) seconds."""
        ray = self.ray
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ready, _ = ray.wait([ref], timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            if ready:
                return ray.get(ready[0])
            cause = self.view.is_down(node_id)
            if cause is not None:
                raise _NodeOut(cause)
            if time.monotonic() >= deadline:
                raise ray.exceptions.GetTimeoutError()

    def _workspace_bundle(self, argv=()):
        """Return the Bundle of the workspace as the nodes should see it.

        The workspace is walked again when the last walk is more than a second old, or when
        a file the command names (its config) is not in the bundle as it is now.
        """
        with self._bundle_lock:
            b = self._bundle
            if b is not None and time.monotonic() - b.walked_at < BUNDLE_TTL and \
                    all(self._unchanged(b.files, a) for a in argv):
                return b
        files, total, h = {}, 0, hashlib.sha1()
        for rel, st in self._workspace_files():
            files[rel] = (st.st_size, st.st_mtime_ns)
            total += st.st_size
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
        fingerprint = h.hexdigest()
        with self._bundle_lock:
            if self._bundle and self._bundle.fingerprint == fingerprint:
                self._bundle = self._bundle._replace(walked_at=time.monotonic())
                return self._bundle
            if total > self.sync_max:
                raise SlotrunError(
                    f"the workspace holds {total / 2**20:.0f} MiB to copy to the nodes, more than "
                    f"ray_sync_max_size ({self.sync_max / 2**20:.0f} MiB); leave big folders out "
                    "with ray_sync_exclude, or share the workspace (ray_shared_fs: true)")
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
                for rel in files:
                    try:
                        tar.add(os.path.join(self.workspace, rel), arcname=rel, recursive=False)
                    except OSError:
                        continue  # vanished meanwhile
            self._bundle = Bundle(fingerprint, fingerprint[:16], self.ray.put(buf.getvalue()),
                                  files, time.monotonic())
            return self._bundle

    def _unchanged(self, files, arg):
        """Return False when ``arg`` names a workspace file that differs from the bundle's."""
        if not isinstance(arg, str) or not arg or "\0" in arg:
            return True
        path = arg if os.path.isabs(arg) else os.path.join(self.workspace, arg)
        rel = os.path.relpath(path, self.workspace)
        if rel.startswith("..") or rel.startswith(EXCLUDED_TOP):
            return True
        try:
            st = os.stat(path)
        except OSError:
            return rel not in files
        if not os.path.isfile(path):
            return True
        return files.get(rel) == (st.st_size, st.st_mtime_ns)

    def _workspace_files(self):
        ws = self.workspace
        top = set(EXCLUDED_TOP)
        for root, dirs, names in os.walk(ws):
            rel_root = os.path.relpath(root, ws)
            rel_root = "" if rel_root == "." else rel_root + "/"
            keep = []
            for d in dirs:
                rel = rel_root + d
                if (not rel_root and d in top) or rel == self.results_dir or self._excluded(rel, d):
                    continue
                keep.append(d)
            dirs[:] = keep
            for n in names:
                rel = rel_root + n
                if self._excluded(rel, n):
                    continue
                try:
                    st = os.lstat(os.path.join(root, n))
                except OSError:
                    continue
                yield rel, st

    def _excluded(self, rel, name):
        for pat in (*EXCLUDED_ANY, *self.sync_exclude):
            if fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(rel, pat) or rel == pat.rstrip("/"):
                return True
        return False

    # -- re-adoption ----------------------------------------------------------------------------

    def adopt(self, record):
        """Re-attach to a recorded attempt after a head restart.

        Returns (handle, None) while its agent still runs it, (None, exit_code) when it ended
        (its log and results are brought back first), or (None, None) when no node knows it.
        """
        run_dir = record["run_dir"]
        code = read_exit_code(run_dir)
        if code is not None:
            return None, code  # collected before the last head stopped
        ray = self.ray
        key = str(record["id"])
        try:
            nodes = self.view.nodes()
        except Exception:  # noqa: BLE001 - no cluster: nothing can be re-attached
            log.exception("could not list the Ray nodes")
            return None, None
        nodes.sort(key=lambda n: n.name != record.get("node"))
        for node in nodes:
            agent = self.view.agent(node.node_id, create=False)
            if agent is None:
                continue
            t = _Task(key, node.node_id, node.name, os.path.join(run_dir, LOG_NAME))
            with self._lock:
                self._tasks[key] = t
            try:
                state, value = ray.get(agent.status.remote(key), timeout=self.timeout)
            except Exception:  # noqa: BLE001 - a node that does not answer cannot hold it
                state, value = "unknown", None
            if state == "unknown":
                with self._lock:
                    self._tasks.pop(key, None)
                continue
            info = value if state == "running" else {}
            handle = Handle(record["task_id"], record["id"], info.get("pid") or record.get("pid"),
                            info.get("pid_start", record.get("pid_start")),
                            info.get("boot_id", record.get("boot_id") or ""), run_dir, node.name,
                            extra={"node_id": node.node_id, "key": key})
            env_results = self._head_results(record)
            with self._lock:
                t.handle = handle
                t.head_results = env_results
                t.fetch = not self.shared  # the node knows its folder (pack_results)
                if state == "exited":
                    t.finishing = True
                    code = value
                elif t.pending_code is not None:
                    t.finishing = True
                    code = t.pending_code
                else:
                    code = None
            if state == "exited":
                return None, self._finish(t, code, report=False)
            if code is not None:
                self._pool.submit(self._finish, t, code)
            self._ensure_poll(node.node_id)
            return handle, None
        return None, None

    def _head_results(self, record):
        from .. import configs as configs_mod

        try:
            rel = configs_mod.results_dir_for(record["config"], self.settings["configs_dir"],
                                              self.settings["results_dir"])
        except Exception:  # noqa: BLE001 - an odd record: nothing to bring back
            return ""
        return os.path.join(self.workspace, rel)

    # -- watching -------------------------------------------------------------------------------

    def _ensure_poll(self, node_id):
        with self._lock:
            p = self._polls.setdefault(node_id, _Poll())
            if p.pending or self._closed:
                return
            p.pending = True
            after = p.after
        try:
            ref = self.view.agent(node_id).wait_exits.remote(after, POLL_TIMEOUT)
            ref.future().add_done_callback(
                lambda f: self._events.put(PollAnswer(node_id, p, f)))
        except Exception as e:  # noqa: BLE001 - reported as a failed poll
            f = concurrent.futures.Future()
            f.set_exception(e)
            self._events.put(PollAnswer(node_id, p, f))

    def _pump(self):
        next_pull = time.monotonic() + self.interval
        while not self._closed:
            timeout = max(0.0, next_pull - time.monotonic())
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                event = None
            try:
                if isinstance(event, PollAnswer):
                    self._on_poll(event.node_id, event.poll, event.future)
                elif isinstance(event, LogsAnswer):
                    self._on_logs(event.node_id, event.offsets, event.future)
                now = time.monotonic()
                if now >= next_pull:
                    next_pull = now + self.interval
                    self._pull_logs()
                    self._retry_polls(now)
            except Exception:  # noqa: BLE001 - the pump must survive anything
                log.exception("the Ray executor's pump failed a step; going on")

    def _on_poll(self, node_id, p, fut):
        ray = self.ray
        with self._lock:
            if self._polls.get(node_id) is not p:
                return  # a poll of tasks already counted lost
            p.pending = False
        try:
            exits = fut.result()
        except Exception as e:  # noqa: BLE001 - sorted out below
            if self._closed or self.view.is_down(node_id) is not None:
                return
            if _is_dead_actor(ray, e) or _node_died(e) or self._safe_alive(node_id) is False:
                self.view.forget_agent(node_id)
                dead = _node_died(e) or not self._safe_alive(node_id)
                self.view.mark_down(node_id, "" if dead else AGENT_STOPPED)
                return
            # Not answering (yet): the health watcher takes the node out if it stays silent.
            log.warning("waiting for exits on node %s failed (%s); asking again in 1 s",
                        self.view.name_of(node_id), _words(e))
            with self._lock:
                p.retry_at = time.monotonic() + 1.0
            return
        finish = []
        with self._lock:
            for note in map(ExitNote._make, exits):  # an older agent sends plain tuples
                p.after = max(p.after, note.seq)
                t = self._tasks.get(note.key)
                if t is None or t.finishing:
                    continue
                if t.handle is None:
                    t.pending_code = note.code
                    continue
                t.finishing = True
                finish.append((t, note.code))
            busy = any(t.node_id == node_id for t in self._tasks.values())
        for t, code in finish:
            self._pool.submit(self._finish, t, code)
        if busy:
            self._ensure_poll(node_id)

    def _retry_polls(self, now):
        with self._lock:
            due = [nid for nid, p in self._polls.items()
                   if p.retry_at and p.retry_at <= now and not p.pending]
            for nid in due:
                self._polls[nid].retry_at = 0.0
        for nid in due:
            self._ensure_poll(nid)

    def _safe_alive(self, node_id):
        try:
            return self.view.node_alive(node_id)
        except Exception:  # noqa: BLE001 - the cluster itself may be gone
            return None

    def _node_down(self, node_id, name, cause):
        """Hear that a node was taken out: tell the engine first, then lose its tasks."""
        message = _loss_message(name, cause)
        with self._bundle_lock:
            # The lost node may hold a copy of the workspace bundle, and Ray keeps sending
            # other nodes' pulls to that copy until it notices the node is gone (seen: a
            # start held for more than 30 s). A fresh object lives on the head alone.
            self._bundle = None
        with self._lock:
            busy = sum(1 for t in self._tasks.values() if t.node_id == node_id)
        log.warning("%s: no new tasks go there until it answers again; %d of its tasks "
                    "are interrupted", message, busy)
        if self.on_unavailable is not None:
            # Before the lost tasks' ends: a retry must never be placed on this node again.
            self.on_unavailable(ExecutorUnavailable(message, node=name))
        self._lose_node(node_id, message)

    def _lose_node(self, node_id, reason):
        """Report every started task of a node as lost, with ``reason`` as its message."""
        with self._lock:
            lost = [t for t in self._tasks.values()
                    if t.node_id == node_id and t.handle is not None and not t.finishing]
            for t in lost:
                t.finishing = True
            self._polls.pop(node_id, None)
        for t in lost:
            self._pool.submit(self._report_lost, t, reason)
        if lost:
            self._pool.submit(self._abandon, node_id, [t.key for t in lost])

    def _abandon(self, node_id, keys):
        """Ask a taken-out node's agent to stop the tasks counted lost, should it answer again."""
        try:
            agent = self.view.agent(node_id, create=False)
            for key in keys:
                if agent is not None:
                    agent.abandon.remote(key)
        except Exception:  # noqa: BLE001 - a dead agent took its tasks with it
            pass

    def _report_lost(self, t, reason):
        with t.lock:
            _append(t.log_path, f"\nslotrun: {reason}; the task was lost\n".encode())
        with self._lock:
            self._tasks.pop(t.key, None)
        t.handle.extra["lost_reason"] = reason
        self.on_exit(t.handle, None)

    def _pull_logs(self):
        with self._lock:
            by_node = {}
            for t in self._tasks.values():
                if t.handle is not None and not t.finishing:
                    by_node.setdefault(t.node_id, {})[t.key] = t.offset
            todo = []
            for nid, offsets in by_node.items():
                p = self._polls.setdefault(nid, _Poll())
                if not p.logs_pending:
                    p.logs_pending = True
                    todo.append((nid, offsets))
        for nid, offsets in todo:
            try:
                ref = self.view.agent(nid).read_logs.remote(offsets)
                ref.future().add_done_callback(
                    lambda f, nid=nid, offsets=offsets: self._events.put(LogsAnswer(nid, offsets, f)))
            except Exception:  # noqa: BLE001 - the exit poll reports a lost node
                with self._lock:
                    self._polls[nid].logs_pending = False

    def _on_logs(self, node_id, offsets, fut):
        with self._lock:
            p = self._polls.get(node_id)
            if p is not None:
                p.logs_pending = False
        try:
            chunks = fut.result()
        except Exception:  # noqa: BLE001 - the exit poll reports a lost node
            return
        for key, data in chunks.items():
            with self._lock:
                t = self._tasks.get(key)
            if t is None or not t.lock.acquire(blocking=False):
                continue  # finishing: the finisher brings the rest
            try:
                if not t.finishing and t.offset == offsets.get(key):
                    _append(t.log_path, data)
                    t.offset += len(data)
            finally:
                t.lock.release()

    # -- finishing ------------------------------------------------------------------------------

    def _finish(self, t, code, report=True):
        """Bring back a finished task's log tail and results, then report its exit."""
        ray = self.ray
        agent = self.view.agent(t.node_id, create=False)
        reason = None
        try:
            if agent is None:
                raise ray.exceptions.RayActorError()
            with t.lock:
                # One call brings the log's rest and packs the results; more only when big.
                pack = t.fetch and bool(t.head_results)
                got = self._answer(agent.collect.remote(t.key, t.offset, pack), t.node_id,
                                   max(self.timeout, 600))
                for k in ("stopped", "killed", "grace"):  # what its end had to stop
                    if k in got:
                        t.handle.extra[k] = got[k]
                data = got["log"]
                while data:
                    _append(t.log_path, data)
                    t.offset += len(data)
                    if len(data) < CHUNK:
                        break
                    data = ray.get(agent.read_logs.remote({t.key: t.offset}, CHUNK),
                                   timeout=self.timeout).get(t.key)
            if got["results"] >= 0:
                self._fetch_results(agent, t, got["results"])
            _write_exit(t.handle.run_dir, code)
            agent.forget.remote(t.key)
        except Exception as e:  # noqa: BLE001 - whatever failed, the head must hear of the task
            if isinstance(e, _NodeOut) or _is_actor_error(ray, e) or \
                    self._safe_alive(t.node_id) is False:
                reason = f"node {t.name} was lost before the task's results came back"
                if not isinstance(e, _NodeOut):
                    self.view.mark_down(t.node_id, "" if not self._safe_alive(t.node_id)
                                        else "its slotrun agent could not be reached")
            else:
                reason = f"could not bring the task's results back from node {t.name}: {_words(e)}"
            log.warning("task %s: %s", t.handle.task_id, reason)
            with t.lock:
                _append(t.log_path, f"\nslotrun: {reason}\n".encode())
            t.handle.extra["lost_reason"] = reason
            code = None
        with self._lock:
            self._tasks.pop(t.key, None)
        if report:
            try:
                self.on_exit(t.handle, code)
            except Exception:  # noqa: BLE001 - a finisher thread must not die with it
                log.exception("reporting the exit of task %s failed", t.handle.task_id)
        return code

    def _fetch_results(self, agent, t, size):
        ray = self.ray
        os.makedirs(t.head_results, exist_ok=True)
        with tempfile.TemporaryFile(dir=t.handle.run_dir) as f:
            offset = 0
            while offset < size:
                data = ray.get(agent.read_chunk.remote(t.key, "results.tar.gz", offset),
                               timeout=self.timeout)
                if not data:
                    raise OSError(f"the results archive ended at {offset} of {size} bytes")
                f.write(data)
                offset += len(data)
            f.seek(0)
            _extract(f, t.head_results)

    # -- stopping -------------------------------------------------------------------------------

    def stop(self, handle, grace=5.0, wait=False):
        """Stop a task's whole process group on its node: SIGTERM, then SIGKILL after ``grace``."""
        agent = self.view.agent(handle.extra.get("node_id", ""), create=False) \
            if handle.extra.get("node_id") else None
        if agent is None:
            return None
        ref = agent.stop.remote(handle.extra.get("key", str(handle.attempt_id)), float(grace))
        if wait:
            try:
                self.ray.get(ref, timeout=self.timeout)
            except Exception:  # noqa: BLE001 - a lost node is reported by the exit poll
                pass
        return ref

    def close(self):
        """Stop watching (tasks keep running on their nodes; a new head re-adopts them)."""
        self.view.remove_listener(self._node_down)
        self._closed = True
        self._events.put(Wake())
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _run_files(run_dir, limit=1 << 20):
    """Return {name: bytes} of the small files the engine put in a run folder (config snapshots)."""
    out = {}
    try:
        names = os.listdir(run_dir)
    except OSError:
        return out
    for n in names:
        if n in (LOG_NAME, "pid", "exit"):
            continue
        path = os.path.join(run_dir, n)
        try:
            if os.path.isfile(path) and os.path.getsize(path) <= limit:
                with open(path, "rb") as f:
                    out[n] = f.read()
        except OSError:
            continue
    return out


def _append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def _write_exit(run_dir, code):
    tmp = os.path.join(run_dir, "exit.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{code}\n")
    os.replace(tmp, os.path.join(run_dir, "exit"))
