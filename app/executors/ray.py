"""The Ray executor: task processes on the nodes of a Ray cluster (the head's side).

Ray is only the transport. slotrun keeps its queue, slot limits and states; on every node a
small, long-lived agent actor (``ray_agent.py``) starts each task as the local executor
does. The head then

- learns of exits from one long-poll call per node (an exit answers it at once),
- pulls new log bytes every ``ray_log_interval`` seconds into the head's own
  ``<run dir>/output.log``, so log tails work as for local tasks,
- brings the task's results folder back into the head's results/ when the task ends,
  unless ``ray_shared_fs`` says the nodes see the head's workspace at the same path
  (``ray_bundle.py``: the workspace shipped to the nodes, the results brought back),
- reports a node (or agent) that died as the loss of its tasks (``ray_cluster.py``: node
  names, agents and health).

The wrapper also holds a pipe to the agent: if the agent dies (its node's Ray stopped), the
task's process group is killed rather than left orphaned. Ray is imported when a cluster is
first used, so importing slotrun without Ray installed still works.
"""

import concurrent.futures
import logging
import os
import queue
import sys
import threading
import time
from typing import NamedTuple

from .. import configs as configs_mod
from ..errors import SlotrunError
from ..logs import LOG_NAME
from .local import read_exit_code
from .ray_agent import POLL_TIMEOUT, ExitNote
from .ray_bundle import CHUNK, BundleRef, WorkspaceBundler, fetch_results, run_files
from .ray_cluster import (AGENT_STOPPED, cluster_view, in_words, is_actor_error, is_dead_actor,
                          node_died)
from .records import ExecutorUnavailable, Handle

log = logging.getLogger(__name__)


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

def _loss_message(name, cause):
    """Return the one message a task lost with its node gets."""
    return f"node {name} was lost" + (f" ({cause})" if cause else "")


def _unreachable(name, cause):
    """Return the ExecutorUnavailable of a start that could not reach its node."""
    return ExecutorUnavailable(f"node {name} could not be reached ({cause})" if cause
                               else f"node {name} was lost", node=name)


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
        self.bundler = WorkspaceBundler(self.workspace, settings, self.ray.put)
        self._lock = threading.Lock()
        self._tasks = {}  # key -> _Task
        self._polls = {}  # node id -> _Poll
        self._events = queue.SimpleQueue()
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
                   "files": {} if self.shared else run_files(spec.run_dir)}
        bundle = None if self.shared else self.bundler.bundle(spec.argv)
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
                    if attempt == 2 or not is_dead_actor(ray, e) or \
                            not self.view.node_alive(node.node_id):
                        agent.abandon.remote(key)
                        cause = "" if node_died(e) or not self._safe_alive(node.node_id) \
                            else AGENT_STOPPED
                        self.view.mark_down(node.node_id, cause)
                        raise _unreachable(node.name, cause) from None
                except ray.exceptions.RayTaskError as e:
                    raise SlotrunError(f"on node {node.name}: {in_words(e)}") from None
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
            if is_dead_actor(ray, e) or node_died(e) or self._safe_alive(node_id) is False:
                self.view.forget_agent(node_id)
                dead = node_died(e) or not self._safe_alive(node_id)
                self.view.mark_down(node_id, "" if dead else AGENT_STOPPED)
                return
            # Not answering (yet): the health watcher takes the node out if it stays silent.
            log.warning("waiting for exits on node %s failed (%s); asking again in 1 s",
                        self.view.name_of(node_id), in_words(e))
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
        # The lost node may hold a copy of the workspace bundle, and Ray keeps sending
        # other nodes' pulls to that copy until it notices the node is gone (seen: a
        # start held for more than 30 s). A fresh object lives on the head alone.
        self.bundler.forget()
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
                fetch_results(ray, agent, t.key, got["results"], t.handle.run_dir,
                              t.head_results, self.timeout)
            _write_exit(t.handle.run_dir, code)
            agent.forget.remote(t.key)
        except Exception as e:  # noqa: BLE001 - whatever failed, the head must hear of the task
            if isinstance(e, _NodeOut) or is_actor_error(ray, e) or \
                    self._safe_alive(t.node_id) is False:
                reason = f"node {t.name} was lost before the task's results came back"
                if not isinstance(e, _NodeOut):
                    self.view.mark_down(t.node_id, "" if not self._safe_alive(t.node_id)
                                        else "its slotrun agent could not be reached")
            else:
                reason = f"could not bring the task's results back from node {t.name}: {in_words(e)}"
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


def _append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def _write_exit(run_dir, code):
    tmp = os.path.join(run_dir, "exit.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{code}\n")
    os.replace(tmp, os.path.join(run_dir, "exit"))
