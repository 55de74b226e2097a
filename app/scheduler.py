"""The engine: one thread that owns every state transition of the queue.

Callers (the web layer, the CLI) hand it commands through a thread-safe queue and get a
Future back; a task's exit, reported by the executor's watcher, wakes it the same way, and
the freed slot is refilled at once. Nothing here sleeps on a fixed period.
"""

import json
import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import replace

from . import configs as configs_mod
from . import recovery, snapshots
from .admission import MemoryMonitor, declared_memory, family_of, log_shows_oom
from .admission_state import AdmissionState
from .commands import check_template, command_values, render_command
from .devices import no_gpu_message
from .ends import End, outcome, retry_left, stop_note, stopped_state
from .done_markers import DoneMarkers
from .engine_records import (BatchInfo, Call, Exited, Fault, MarkersWritten, NodeLost, Reading,
                             Running, StopRequest, Stopping, Write, same_attempt)
from .engine_view import EngineView, QueueState
from .errors import Conflict, NotFound, SlotrunError
from .executors import ExecutorUnavailable, LaunchSpec, make_executor
from .executors.local import exit_time
from .logs import LOG_NAME
from .recovery import Readopted, Unstarted
from .selection import applies_to, plan_bulk
from .settings import format_size
from .task import (ANY_CPU, ANY_GPU, CANCELLED, CPU, FAILED, INTERRUPTED, QUEUED, RETRYABLE_STATES,
                   SKIPPED, SUCCEEDED, DeviceState, device_kind, gpu_index, pick_from_queues)
from .waiting import WaitingTasks
from .workspace_lock import take_workspace_lock
# Kept importable from here, where they lived before (tests and scripts import them so):
from .paths import STATE_DIR, state_dir  # noqa: F401,E402
from .workspace_lock import check_workspace_free  # noqa: F401,E402

log = logging.getLogger(__name__)

PAUSE_KEY = "queue_paused"  # meta key: JSON {"reason", "since"} while a user's pause holds
# At most this many run folders of queued tasks are made ahead of their start (per owner).
PREPARE_AHEAD_MAX = 64


FAULT_BACKOFF_MAX = 5.0  # seconds between retries of a failing step, at most
MARKER_WAIT = 5.0  # seconds a command or a stop waits for the done markers asked for
ADOPT_CHUNK = 2000  # tasks of a new batch taken into the queue per scheduler command


class Engine:
    """The scheduler of one workspace."""

    def __init__(self, settings, store, inventory, publish=None, executor=None,
                 only_own_batches=False, limits=None, auto_resume=True):
        self.settings = settings
        self.workspace = settings["workspace"]
        self.store = store
        self.inventory = inventory
        self._publish_to = publish or (lambda event, payload: None)
        self.only_own = only_own_batches
        self._q = queue.SimpleQueue()
        self._thread = None
        self._lock_fd = None
        self._stopping = None
        self._stopped = threading.Event()
        self.paused = False
        self.pause = None  # {"auto", "reason", "since"} while paused
        self.auto_resume = auto_resume  # retry a fault-paused queue and resume once it works
        self.fault_pause_after = float(settings.get("fault_pause_after", 10.0))
        self._fault = None  # Fault while a step keeps failing
        self._kick = True  # run a step at once (start-up, resume) without waiting for a command
        self._writes = []  # Write records not yet done, oldest first
        # Done markers are written by a thread of their own (never between an exit and the
        # next start); an end is written down once its marker exists.
        self._markers = DoneMarkers(lambda: self._q.put(MarkersWritten()))
        self.completed_by = {}  # config -> {"id", "batch_id"} of the task that last completed it
        if executor is None:
            executor = make_executor(settings.get("executor", "local"), settings, self._exited)
        else:
            executor.on_exit = self._exited
        executor.on_unavailable = self._unavailable
        self.executor = executor
        self.last_start = {}  # owner -> number of its latest start (round-robin between owners)
        self._starts = 0
        self.running = {}  # task id -> Running
        self.batches = {}  # batch id -> BatchInfo
        self.limits = {}
        self._fixed_limits = limits  # {device: slots} for this run only (not stored)
        self.devices = []  # device ids, GPUs first
        self.gpu_devices = []
        self._usage = {}
        self.view = EngineView()  # what readers on other threads see (see _publish_view)
        self._stale = set()  # the parts of the view changed since it was published
        self.node = os.uname().nodename
        self.holds = {}  # device -> Hold: why its free slots took no waiting task
        # GPU-memory-aware admission: its facts in app/admission.py, its state here
        self.admission = AdmissionState(settings, self._stale)
        self.waiting = WaitingTasks(self._stale, self._gpu_work_waits)  # the queued tasks
        self._prepared = {}  # task id -> run folder asked to be made ahead of its start
        self._started = []  # tasks started in this step, published at its end
        self._runs_dir = os.path.join(state_dir(self.workspace), "runs")
        self.monitor = None

    # -- life cycle -----------------------------------------------------------------------

    def start(self):
        """Take the workspace lock, recover state, and start the scheduler thread."""
        self._acquire_lock()
        try:
            snap = self.inventory.snapshot()
            self.devices = [d.id for d in snap]
            self.gpu_devices = [d.id for d in snap if d.kind == "gpu"]
            stored = self.store.device_limits()
            if self._fixed_limits is not None:
                stored = {d: self._fixed_limits.get(d, 0) for d in self.devices}
            for d in self.devices:
                default = self.settings["cpu_slots"] if device_kind(d) == CPU \
                    else self.settings["gpu_slots"]
                self.limits[d] = stored.get(d, default)
            self.admission.load_learned(self.store.recent_peaks())
            self._stale.update(("devices", "learned", "pause"))  # limits are set: with devices
            self._load_pause()
            self._recover()
            if self.gpu_devices:
                adm = self.admission
                self.monitor = MemoryMonitor(self.inventory, lambda: adm.groups,
                                             self._memory_sample, adm.sample_interval,
                                             wanted=lambda: bool(adm.groups or self.waiting.gpu))
                self._read_now()  # a first reading, before any start
        except BaseException:
            if self.monitor is not None:
                self.monitor.close()
                self.monitor = None
            self._release_lock()
            raise
        self._publish_usage()
        self._thread = threading.Thread(target=self._loop, name="slotrun-scheduler", daemon=True)
        self._thread.start()  # its first step runs at once (_kick): queued work starts now
        if self.monitor is not None:
            self.monitor.poke()
        return self

    def stop(self, kill_tasks=False, timeout=None, reason=None):
        """Stop the engine.

        ``kill_tasks``: stop this engine's running tasks (they become interrupted) and
        cancel its queued ones (``reason``: their message); otherwise tasks keep running and
        the next engine re-adopts them. Returns once the scheduler thread has ended.
        """
        if self._thread is None:
            return
        if timeout is None:
            timeout = float(self.settings["kill_grace"]) + 10
        self._q.put(StopRequest(kill_tasks, reason))
        self._stopped.wait(timeout)
        self._thread.join(timeout=1)
        self._markers.close()
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        self.executor.close()
        self._release_lock()
        self._thread = None

    def _acquire_lock(self):
        fd = take_workspace_lock(self.workspace)
        os.ftruncate(fd, 0)
        cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:6]))
        os.pwrite(fd, f"pid {os.getpid()}: {cmd}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- commands (any thread) ---------------------------------------------------------------

    def publish(self, event, payload):
        """Hand an event to the listener; a listener that fails never stops the engine."""
        try:
            self._publish_to(event, payload)
        except Exception:  # noqa: BLE001 - a broken listener must not fail a step
            log.exception("publishing a %s event failed", event)

    def _call(self, fn, *args):
        fut = Future()
        if self._thread is None or self._stopping is not None:
            fut.set_exception(Conflict("the engine is not running"))
            return fut
        self._q.put(Call(fn, args, fut))
        return fut

    def call(self, fn, *args, timeout=60):
        """Run ``fn(*args)`` on the scheduler thread and return its result."""
        return self._call(fn, *args).result(timeout)

    def submit(self, configs, owner, use_gpu=True, devices=None, overwrite=False, command=None,
               pattern="", priority=0, memory=0, max_retries=0, idempotency_key=None,
               headless=None):
        """Queue a batch of configs; return {"id", "tasks", "replayed"} once it is recorded.

        ``idempotency_key``: a submit of the same owner with the same key returns the batch
        the first one created (``replayed`` True) instead of creating another. ``headless``:
        who queued it when that is a multi-run.py process (its queued tasks are ended, not
        run by another engine, once that process is gone).
        """
        command = command or self.settings["command"]
        check_template(command)
        devices = self.check_devices(use_gpu, devices)
        if not configs:
            raise SlotrunError(f"no config matches {pattern!r}; nothing to run")
        if len(configs) > int(self.settings["max_batch_tasks"]):
            raise SlotrunError(f"a batch may hold at most {self.settings['max_batch_tasks']} tasks, "
                               f"not {len(configs)}")
        spec = dict(owner=owner, pattern=pattern, use_gpu=bool(use_gpu), devices=devices,
                    overwrite=bool(overwrite), command=command, priority=int(priority),
                    memory=int(memory), max_retries=int(max_retries),
                    idempotency_key=idempotency_key, headless=headless)
        if self._thread is None or self._stopping is not None:
            raise Conflict("the engine is not running")
        if idempotency_key is not None:
            earlier = self.store.batch_by_key(owner, idempotency_key)
            if earlier is not None:
                return self._replay(earlier, spec)
        # Reading and parsing the configs and writing the batch down happen here, in the
        # caller's thread: the scheduler only takes the new tasks into its queue.
        tasks = self._prepare(spec, list(configs))
        spec["total"] = len(tasks)
        batch_id, rows, created = self.store.create_batch(spec, tasks)
        if not created:  # the same key won a race with this submit
            return self._replay(self.store.get_batch(batch_id), spec)
        # Handed over in parts, each taken once the one before was: the scheduler starts
        # and records tasks in between, however large the batch.
        for i in range(0, len(rows), ADOPT_CHUNK):
            fut = self._call(self._adopt_batch, batch_id, spec, rows[i:i + ADOPT_CHUNK], i == 0)
            try:
                fut.result(timeout=30)
            except Exception:  # noqa: BLE001 - recorded: this engine (or the next) queues it
                log.warning("batch %s is recorded but not yet queued by the engine", batch_id)
                break
        return {"id": batch_id, "tasks": rows, "replayed": False}

    def _replay(self, batch, spec):
        """Return the batch an earlier submit with the same idempotency key created."""
        same = ("pattern", "use_gpu", "overwrite", "command", "devices")
        if any(batch[k] != spec[k] for k in same):
            raise Conflict(f"idempotency key {spec['idempotency_key']!r} was used for batch "
                           f"{batch['id']} with other fields; send a new key for a new batch")
        return {"id": batch["id"], "tasks": self.store.batch_tasks(batch["id"]), "replayed": True}

    def _prepare(self, spec, configs):
        """Return the task records of a new batch (complete ones skipped, needs declared,
        every base a config names kept with it)."""
        tasks = []
        bases = {}  # the bases read for this batch, shared by its configs
        for config in configs:
            done = configs_mod.completed_marker(self.workspace, config, self.settings)
            try:
                with open(os.path.join(self.workspace, config), encoding="utf-8",
                          errors="replace") as f:
                    text = f.read()
            except OSError:
                text = None
            if done and not spec["overwrite"]:
                tasks.append(dict(config=config, config_text=text, state=SKIPPED,
                                  devices=spec["devices"], memory=spec["memory"],
                                  message=f"results already complete ({done})"))
            else:
                memory = spec["memory"] or (declared_memory(config, text) if spec["use_gpu"] else 0)
                tasks.append(dict(config=config, config_text=text, state=QUEUED,
                                  devices=spec["devices"], memory=memory,
                                  bases=snapshots.collect(self.workspace, config, text, bases)))
        return tasks

    def check_devices(self, use_gpu, devices):
        """Return the device ids a batch may use, or raise an error naming the valid ones."""
        view = self.view  # called on the caller's thread
        if not use_gpu:
            cpus = [d for d in view.devices if device_kind(d) == CPU]
            if CPU in view.devices or not cpus:
                if devices and list(devices) != [CPU]:
                    raise SlotrunError(f"a CPU batch runs on the device 'cpu' only, not {devices}")
                return [CPU]
            if not devices:  # a cluster: the CPU of any node
                return [ANY_CPU]
            bad = [d for d in devices if d not in cpus]
            if bad:
                raise SlotrunError(f"unknown CPU device {bad[0]!r}; valid: " + ", ".join(cpus))
            return list(dict.fromkeys(devices))
        if not view.gpu_devices:
            raise SlotrunError(no_gpu_message(self.inventory))
        if devices is None:
            return [ANY_GPU]
        if not isinstance(devices, (list, tuple)) or not devices:
            raise SlotrunError("devices must be a non-empty list of GPU ids; valid: "
                               + ", ".join(view.gpu_devices))
        bad = [d for d in devices if d not in view.gpu_devices]
        if bad:
            raise SlotrunError(f"unknown GPU {bad[0]!r}; valid: " + ", ".join(view.gpu_devices))
        return list(dict.fromkeys(devices))

    def cancel_task(self, task_id):
        """Cancel a queued or running task; return its row."""
        return self.call(self._cancel_task, int(task_id))

    def cancel_batch(self, batch_id):
        """Cancel every queued and running task of a batch; return how many were affected."""
        return self.call(self._cancel_batch, int(batch_id))

    def retry(self, task_id):
        """Queue a failed, cancelled or interrupted task again; return its row."""
        return self.call(self._retry, int(task_id))

    def bulk(self, action, selection, only_owner=None):
        """Cancel or retry every task a ``TaskFilter`` selects (only ``only_owner``'s when
        given); return the figures of what was done (``BulkPlan.summary``)."""
        applies_to(action)  # an unknown action is refused before it is queued
        return self.call(self._bulk, action, selection, only_owner, timeout=300)

    def set_slots(self, device, slots):
        """Set a device's slot limit (effective for the next start); return the usage."""
        view = self.view
        if device not in view.limits:
            raise NotFound(f"device {device!r} not found; valid: " + ", ".join(view.devices))
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0 or slots > 1000:
            raise SlotrunError(f"slots must be a whole number from 0 to 1000, not {slots!r}")
        return self.call(self._set_slots, device, slots)

    def set_priority(self, batch_id, priority):
        """Change a batch's priority (higher starts first among one owner's work); return it."""
        if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
            raise SlotrunError(f"priority must be a whole number from -1000 to 1000, not {priority!r}")
        return self.call(self._set_priority, int(batch_id), priority)

    def set_paused(self, paused, who=None):
        """Pause or resume starting new tasks (a pause is kept across restarts)."""
        return self.call(self._set_paused, bool(paused), who)

    def queue_state(self):
        """Return {"paused", "auto", "reason", "since"}: whether and why the queue is paused.

        ``auto`` is true when the engine paused the queue itself because a fault persisted
        (``reason`` says which); it then resumes by itself once the fault is gone (a headless
        run stops instead). A user's pause has ``auto`` false, no reason, and is kept across
        restarts.
        """
        return self.view.queue.as_dict()

    def refresh_devices(self):
        """Re-read the inventory: new devices appear (with their stored or default limit),
        devices gone from it disappear (their running tasks are reported lost by the
        executor). Returns the device ids."""
        return self.call(self._refresh_devices)

    def usage(self):
        """Return {device: {"slots": limit, "running": n}} as last published (never changed
        afterwards: a new dict replaces it)."""
        return self.view.usage

    # -- the thread ------------------------------------------------------------------------------

    def _loop(self):
        try:
            self.store.set_busy_timeout(float(self.settings.get("store_busy_timeout", 5.0)))
        except Exception:  # noqa: BLE001 - the default timeout then applies
            log.exception("could not set the scheduler's database busy timeout")
        while True:
            item = self._next_item()
            try:
                if item is not None:
                    self._handle(item)
                while True:
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    self._handle(item)
                if self._stopping is not None:
                    self._publish_view()
                    if self._finish_stop():
                        return
                    continue
                if self._fault is None or time.monotonic() >= self._fault.retry_at:
                    self._step()  # while a fault lasts, not before its backoff is over
                self._publish_view()
            except Exception as e:  # noqa: BLE001 - the scheduler thread must never die silently
                self._on_fault(e)

    def _next_item(self):
        """Wait for the next command or exit, but never while there is a step to run."""
        timeout = self._wait_time()
        try:
            if timeout is None:
                return self._q.get()
            if timeout <= 0:
                return self._q.get_nowait()
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def _wait_time(self):
        if self._kick:
            return 0
        if self._stopping is not None:
            return max(0.0, self._stopping.since + float(self.settings["kill_grace"]) + 5
                       - time.monotonic())
        if self._fault is not None:
            return max(0.0, self._fault.retry_at - time.monotonic())
        if self._writes and self._writes[0].ready():
            return 0
        return None  # nothing to do until a command, an exit or a sample arrives

    def _step(self):
        """Run one unit of work: start what fits, then write down what is owed."""
        self._kick = False
        probe = self.paused and self.pause and self.pause["auto"] and self.auto_resume
        try:
            started = self._dispatch(probe=probe)
            if self._writes:
                # The ends owed (those whose done marker exists): one transaction.
                released = self._owed_configs()
                self._flush_writes()
                if any(c in self.waiting.configs for c in released):
                    # A config waited for its last run's end to be written down: it may
                    # start now.
                    started += self._dispatch(probe=probe)
                    self._flush_writes()
        finally:
            self._emit_started()  # once their process is written down (or owed: a fault)
        self._prepare_next()
        if self._fault is not None and (not probe or started or not self.waiting):
            self._fault_cleared()

    def _on_fault(self, exc):
        """Log a failed step, put it off (backing off), and pause the queue if it persists."""
        now = time.monotonic()
        reason = self._fault_reason(exc)
        f = self._fault
        if f is None:
            f = self._fault = Fault(now, reason)
            log.error("scheduler step failed: %s; retrying in %.2f s", reason, f.backoff,
                      exc_info=not isinstance(exc, (OSError, SlotrunError)))
        elif f.count in (2, 5) or f.count % 20 == 0 or reason != f.reason:
            log.warning("scheduler step still failing (%d times over %.0f s): %s", f.count + 1,
                        now - f.since, reason)
        f.reason = reason
        f.count += 1
        f.retry_at = now + f.backoff
        f.backoff = min(f.backoff * 2, FAULT_BACKOFF_MAX)
        if not self.paused and f.count >= 3 and now - f.since >= self.fault_pause_after:
            self._pause(True, auto=True, reason=reason)
            log.error("queue paused: %s (failing for %.0f s); %s", reason, now - f.since,
                      "it resumes by itself once this works again" if self.auto_resume
                      else "resume it once the fault is fixed")

    def _fault_cleared(self):
        f, self._fault = self._fault, None
        log.warning("scheduler step works again after %d failure(s) over %.0f s", f.count,
                    time.monotonic() - f.since)
        if self.paused and self.pause and self.pause["auto"] and self.auto_resume:
            self._pause(False)
            log.warning("queue resumed: the fault is gone (%s)", f.reason)

    def _fault_reason(self, exc):
        doing = getattr(exc, "slotrun_doing", None)
        if isinstance(exc, SlotrunError):
            text = exc.message
        elif isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        else:
            text = f"{exc.__class__.__name__}: {exc}"
        return f"{doing}: {text}" if doing else text

    def _handle(self, item):
        if isinstance(item, Exited):
            self._on_exit(item.handle, item.code)
        elif isinstance(item, Call):
            fut = item.future
            if not fut.set_running_or_notify_cancel():
                return
            if self._fault is None:
                try:
                    self._markers.wait_idle(MARKER_WAIT)
                    self._flush_writes()  # a command sees every ended task written down
                except Exception as e:  # noqa: BLE001 - retried by the loop; the command goes on
                    self._on_fault(e)
            try:
                result, error = item.fn(*item.args), None
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                result, error = None, e
            self._publish_view()  # the caller then reads what its command changed
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)
        elif isinstance(item, StopRequest):
            if self._stopping is None:
                self._stopping = Stopping(item.kill, time.monotonic())
                if item.kill:
                    self._interrupt_own(item.reason or "not started: the engine was stopped")
        elif isinstance(item, Reading):
            self.admission.observe(item.sample, self.running)
        elif isinstance(item, NodeLost):
            self._take_out(item.error)
        # MarkersWritten only wakes the loop: its step writes the ends down

    def _finish_stop(self):
        stopping = self._stopping
        if stopping.kill and any(r.stop_reason for r in self.running.values()):
            grace = float(self.settings["kill_grace"]) + 5
            if time.monotonic() - stopping.since < grace:
                return False  # wait for the stopped tasks' exits (they wake this thread)
        try:
            self._markers.wait_idle(MARKER_WAIT)
            self._flush_writes()
        except Exception as e:  # noqa: BLE001 - the next engine reads ends from the exit files
            log.error("stopping with %d record(s) not written (%s); the next engine recovers "
                      "them from the run folders", len(self._writes), self._fault_reason(e))
        self._stopped.set()
        return True

    def _exited(self, handle, code):
        self._q.put(Exited(handle, code))

    def _memory_sample(self, sample):
        self._q.put(Reading(sample))

    # -- recovery --------------------------------------------------------------------------------

    def _recover(self):
        """Take over what the last engine left (decided in app/recovery.py), then queue the
        work waiting in the store."""
        found = recovery.survey_attempts(
            self.store, self.executor, lambda b: self._note_batch(b, own=False).max_retries)
        for item in found:
            if isinstance(item, Readopted):
                self._readopt(item.record, item.handle)
            elif isinstance(item, Unstarted):
                rec = item.record
                self._owe(Write(
                    lambda rec=rec: self.store.unstart_attempt(rec["id"], rec["task_id"]),
                    f"undo the unstarted attempt of task {rec['task_id']}",
                    then=lambda tid=rec["task_id"]: self._requeued(tid), task_id=rec["task_id"]))
            else:
                self._owe(self._end_write(item))
        orphans = set()
        for run in recovery.orphaned_headless(self.store):
            self._end_orphaned(run)
            orphans.update(run.task_ids)
        if not self.only_own:
            # a headless run starts only what it submits; other queued work waits
            for t in self.store.queued_tasks():
                if t["id"] not in orphans:
                    self._note_batch(t["batch_id"], own=False)
                    self.waiting.add(t)
        try:
            self._markers.wait_idle(MARKER_WAIT)  # the ends found are written down before a start
            self._flush_writes()
        except Exception as e:  # noqa: BLE001 - the loop retries them
            self._on_fault(e)

    def _readopt(self, rec, handle):
        """Watch an attempt the last engine started, and finish the stop it began."""
        r = self.running[rec["task_id"]] = Running(
            rec["task_id"], rec["id"], rec["batch_id"], rec["owner"], rec["device"],
            rec["slot"], handle, rec["config"], rec["started_at"],
            memory=rec.get("memory") or 0, family=family_of(rec["config"]),
            number=rec.get("number") or 1)
        self._stale.add("running")
        if gpu_index(rec["device"]) is not None:
            self.admission.watch(rec["task_id"], rec["device"], handle.pid, time.monotonic())
        log.info("re-adopted task %s (pid %s)", rec["task_id"], handle.pid)
        if rec.get("stop_reason"):  # a stop the last engine began: finish it
            r.stop_reason = rec["stop_reason"]
            grace = float(self.settings["kill_grace"])
            left = rec["stop_requested_at"] + grace - time.time()
            self.executor.stop(handle, max(0.0, min(grace, left)))

    def _end_orphaned(self, run):
        """End the queued tasks of a multi-run.py run that is gone (an ``OrphanedRun``)."""
        message = (f"not started: the multi-run.py that queued it ({run.who}) ended first; "
                   "run that command again to resume")
        self._owe(Write(lambda: self.store.finish_queued(run.task_ids, CANCELLED, message),
                        f"end {len(run.task_ids)} task(s) left by {run.who}",
                        then=lambda: [self._emit(t) for t in self.store.get_tasks(run.task_ids)],
                        batch_id=run.batch_id))
        log.info("batch %s: %d queued task(s) of a gone multi-run.py (%s) ended", run.batch_id,
                 len(run.task_ids), run.who)

    def _requeued(self, task_id):
        """Take a task requeued in the store into the in-memory queue, and announce it."""
        t = self.store.get_task(task_id)
        if t["state"] != QUEUED:
            return
        info = self._note_batch(t["batch_id"], own=False)
        if self.only_own and not info.own:
            return  # a headless run starts only its own work
        self.waiting.add(t)
        self._emit(t)

    def _note_batch(self, batch_id, own):
        info = self.batches.get(batch_id)
        if info is None:
            b = self.store.get_batch(batch_id)
            info = BatchInfo(batch_id, b["command"], b["overwrite"],
                             b.get("max_retries", 0), own)
            self.batches[batch_id] = info
        return info

    # -- durable writes ----------------------------------------------------------------------------

    def _owe(self, write):
        """Keep a write to do (in order, after the ones already owed)."""
        self._writes.append(write)

    def _flush_writes(self):
        """Do the writes owed, oldest first, up to one still waiting for its done marker; a
        failure keeps it and the rest for a retry.

        What is ready is written in one transaction (one commit for the ends and process
        records of a step); when that fails they are written one by one, so the one that
        fails is named and the ones before it are done."""
        if not self._writes:
            return
        batches = set()
        try:
            ready = 0
            while ready < len(self._writes) and self._writes[ready].ready():
                ready += 1
            if ready > 1:
                self._flush_group(ready, batches)
            while self._writes and self._writes[0].ready():
                w = self._writes[0]
                try:
                    w.apply()
                except Exception as e:
                    e.slotrun_doing = f"could not {w.what}"
                    raise
                self._writes.pop(0)
                if w.batch_id is not None:
                    batches.add(w.batch_id)
                if w.then is not None:
                    w.then()
        finally:
            if batches:
                # Readers that count from the store (batch progress) may recount now.
                self.publish("settled", {"batches": sorted(batches)})

    def _flush_group(self, count, batches):
        group = self._writes[:count]
        try:
            with self.store.grouped():
                for w in group:
                    w.apply()
        except Exception as e:  # noqa: BLE001 - written one by one next, naming the failing one
            log.debug("writing %d records at once failed (%s); writing them one by one",
                      count, e)
            return
        del self._writes[:count]
        error = None
        for w in group:
            if w.batch_id is not None:
                batches.add(w.batch_id)
            if w.then is not None:
                try:
                    w.then()
                except Exception as e:  # noqa: BLE001 - the others' still run; raised after
                    error = error or e
        if error is not None:
            raise error

    def _owed_configs(self):
        return {w.config for w in self._writes if w.config}

    def _gpu_work_waits(self):
        """Keep the GPUs read while GPU work waits: it may be held back by memory."""
        if self.monitor is not None:
            self.monitor.poke()

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self, probe=False):
        """Start what fits now; return how many started.

        ``probe``: the queue paused itself for a fault: try one start to see if it is gone.
        """
        started = 0
        while True:
            placed, n = self._dispatch_round(probe)
            started += n
            if n == placed or probe:
                return started
            # A placement ended without a start (its config completed meanwhile: skipped),
            # so its slot is still free: pick again.

    def _dispatch_round(self, probe):
        if (self.paused and not probe) or not self.waiting:
            if self.holds:
                self.holds = {}
                self._stale.add("holds")
            self._publish_usage()  # an exit may have freed a slot with nothing left to start
            return 0, 0
        running = {}
        by_owner = {}
        for r in self.running.values():
            running[r.device] = running.get(r.device, 0) + 1
            by_owner[r.owner] = by_owner.get(r.owner, 0) + 1
        states = {d: DeviceState(d, self._effective_limit(d), running.get(d, 0))
                  for d in self.devices}
        if self.gpu_devices and any(states[d].free_slots for d in self.gpu_devices if d in states):
            self._gpu_states(states)  # a failed reading blocks the GPUs (_read_now), not the CPU
        holds = {}
        placements = pick_from_queues(self.waiting.queues, states, by_owner, self.admission.margin,
                                      any_gpu=tuple(self.gpu_devices),
                                      learned=self.admission.learned,
                                      any_cpu=tuple(d for d in self.devices
                                                    if device_kind(d) == CPU),
                                      last_start=self.last_start,
                                      stagger_unknown=self.admission.enabled
                                      and self.admission.stagger,
                                      holds=holds, busy=self._busy_configs())
        if holds or self.holds:
            self.holds = holds  # a new dict each round: a published one is never changed
            self._stale.add("holds")
        if probe:
            placements = placements[:1]
        started = 0
        try:
            for placement in placements:
                if placement.device not in self.devices:
                    continue  # taken out by a failed start just now: the task stays queued
                self._starts += 1
                self.last_start[placement.owner] = self._starts
                started += self._start(placement.task_id, placement.device)
        finally:
            self._publish_usage()
        return len(placements), started

    def _busy_configs(self):
        """Return the configs that may not start now: running, or ended but not written down
        (their done marker may not exist yet)."""
        busy = {r.config for r in self.running.values()}
        busy.update(self._owed_configs())
        return busy

    def _run_dir(self, task_id, number):
        return os.path.join(self._runs_dir, f"{task_id}-{number}")

    def _prepare_next(self):
        """Have the run folders of the tasks that start next made ahead, off this thread:
        a refilled slot then opens its files instead of creating them."""
        prepare = getattr(self.executor, "prepare", None)
        if prepare is None:
            return
        for task_id in [t for t in self._prepared if t not in self.waiting]:
            self.executor.discard(self._prepared.pop(task_id))  # it left the queue unstarted
        ahead = min(PREPARE_AHEAD_MAX, max(1, sum(self.limits.values())))
        want = []
        for q in self.waiting.queues.values():
            for p in q[:ahead]:
                if p.id not in self._prepared:
                    number = self.waiting.get(p.id).attempts + 1
                    d = self._prepared[p.id] = self._run_dir(p.id, number)
                    want.append(d)
        if want:
            prepare(want)

    def _gpu_states(self, states):
        """Fill in the GPUs' memory, reservations and blocks (no reading unless it is stale)."""
        adm = self.admission
        if adm.enabled and adm.reading_too_old(time.monotonic()):
            self._read_now()  # the monitor was idle: read the GPUs now
        adm.fill(states, self.gpu_devices, self.running)

    def _effective_limit(self, device):
        return self.admission.effective_limit(device, self.limits.get(device, 0))

    def _start(self, task_id, device):
        """Start one queued task; return 1 if its process started, else 0.

        A fault on the way (the store, the run folder, the executor) puts the task back in
        the queue where it was and is raised to the loop, which backs off and retries.
        """
        item = self.waiting.remove(task_id)
        try:
            return self._launch(item, device)
        except BaseException:
            if task_id not in self.running and not any(w.task_id == task_id
                                                       for w in self._writes):
                self.waiting.put(item)  # the task in hand goes back
            raise

    def _launch(self, item, device):
        task_id = item.pending.id
        batch = self.batches[item.batch_id]
        if not batch.overwrite:
            # Decided now, not only at submit: an overlapping batch may have completed it.
            marker = configs_mod.completed_marker(self.workspace, item.config, self.settings)
            if marker:
                self._skip(item, marker)
                return 0
        else:
            try:  # an overwrite interrupted halfway must not leave its results marked complete
                configs_mod.unmark_done(self.workspace, item.config, self.settings)
            except OSError as e:
                e.slotrun_doing = f"could not remove the done marker of {item.config}"
                raise
        used = {r.slot for r in self.running.values() if r.device == device}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        number = item.attempts + 1
        run_dir = self._run_dir(task_id, number)
        self._prepared.pop(task_id, None)
        config = item.config
        results = configs_mod.results_dir_for(config, self.settings["configs_dir"],
                                              self.settings["results_dir"])
        try:
            cfg_arg = self._config_as_submitted(task_id, config, run_dir)
        except OSError as e:
            e.slotrun_doing = f"could not prepare the run folder of task {task_id}"
            raise
        idx = gpu_index(device)
        values = command_values(cfg_arg, batch.overwrite, idx, python=sys.executable,
                                name=os.path.basename(config)[:-5], results=results,
                                task_id=str(task_id), device=device, batch_id=str(item.batch_id))
        now = time.time()
        try:
            argv = render_command(batch.command, values)
        except (KeyError, ValueError) as e:
            argv, error = [], f"command template cannot be filled: {e}"
        else:
            error = None
        node = device.rsplit("/", 1)[0] if "/" in device else self.node
        try:
            attempt_id = self.store.start_attempt(task_id, number, device, slot, node, run_dir,
                                                  argv, now)
        except Exception as e:
            e.slotrun_doing = f"could not record the start of task {task_id}"
            raise
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
               "CUDA_VISIBLE_DEVICES": "" if idx is None else str(idx),
               "SLOTRUN_TASK_ID": str(task_id), "SLOTRUN_ATTEMPT": str(number),
               "SLOTRUN_CONFIG": config, "SLOTRUN_RESULTS": os.path.join(self.workspace, results),
               "SLOTRUN_DEVICE": device, "PYTHONUNBUFFERED": "1"}
        spec = LaunchSpec(task_id, attempt_id, argv, self.workspace, run_dir, env, device, node)
        handle = None
        if error is None:
            try:
                handle = self.executor.start(spec)
            except ExecutorUnavailable as e:
                self._start_unreachable(item, attempt_id, e)
                return 0
            except SlotrunError as e:
                error = f"could not start the task: {e}"  # this task's own problem
            except Exception as e:
                # The machine's (a full disk, no processes left): undo the start, so the task
                # is queued again as it was, and let the loop back off.
                self._undo_start(item, attempt_id)
                e.slotrun_doing = f"could not start task {task_id}"
                raise
        if handle is None:
            self._owe(self._end_write(End(attempt_id, task_id, config, item.batch_id, FAILED,
                                          None, error, time.time())))
            return 0
        p = item.pending
        r = self.running[task_id] = Running(task_id, attempt_id, item.batch_id, p.owner, device,
                                            slot, handle, config, now, memory=p.memory,
                                            family=p.family, number=number)
        self._stale.add("running")
        # Written at once, apart from the owed writes (an end may wait for its done marker):
        # an engine killed now finds the pid here, not only in the run folder's record, which
        # the wrapper writes a moment later.
        record = Write(lambda: self.store.set_attempt_process(attempt_id, handle.pid,
                                                              handle.pid_start, handle.boot_id),
                       f"record the process of task {task_id}")
        try:
            record.apply()
        except Exception:  # noqa: BLE001 - it runs: owe the record, never lose the process
            self._owe(record)
        if idx is not None and self.admission.started(task_id, device, handle.pid, p) \
                and self.monitor is not None:
            self.monitor.poke()  # the first GPU task: start reading
        self._started.append(task_id)
        return 1

    def _emit_started(self):
        """Publish the tasks started in this step (their row is kept to publish their end)."""
        started, self._started = self._started, []
        for task_id in started:
            r = self.running.get(task_id)
            if r is not None:
                r.row = self._emit_task(task_id)

    def _skip(self, item, marker):
        """End a queued task whose config's results are complete by now."""
        task_id = item.pending.id
        by = self.completed_by.get(item.config)
        if by is None:
            by = self.store.last_success(item.config)
        message = f"results already complete ({marker})"
        if by is not None and by["id"] != task_id:
            message += f", by task {by['id']} of batch {by['batch_id']}"
        self._owe(Write(lambda: self.store.finish_queued([task_id], SKIPPED, message),
                        f"record that task {task_id} was skipped",
                        then=lambda: self._emit_task(task_id), batch_id=item.batch_id,
                        task_id=task_id))

    def _undo_start(self, item, attempt_id):
        """Forget an attempt whose process could not start; the task is queued again."""
        task_id = item.pending.id
        try:
            self.store.unstart_attempt(attempt_id, task_id)
        except Exception:  # noqa: BLE001 - owed: the task waits out of the queue until done
            self._owe(Write(lambda: self.store.unstart_attempt(attempt_id, task_id),
                            f"undo the start of task {task_id}", then=lambda: self.waiting.put(item),
                            task_id=task_id))

    # -- executor faults: a node that cannot be reached --------------------------------------
    # Not the task's fault: a start that could not reach its node is recorded as an
    # interrupted attempt and the task goes back to the front of the queue; the node's devices
    # leave placement at once (before any retry is placed) and come back when the inventory
    # lists them again (the node watcher refreshes the devices).

    def _unavailable(self, exc):
        """Hear from the executor (any thread) that a node was taken out."""
        self._q.put(NodeLost(exc))

    def _start_unreachable(self, item, attempt_id, exc):
        task_id = item.pending.id
        self._take_out(exc)
        # The interrupted attempt and the requeue at the front: one durable step.
        self._owe(self._end_write(End(attempt_id, task_id, item.config, item.batch_id,
                                      INTERRUPTED, None,
                                      f"{exc}; the task went back to the queue", time.time(),
                                      requeue="front")))

    def _take_out(self, exc):
        """Remove an unreachable node's devices from placement (its limits are kept)."""
        if not exc.node:
            return
        keep = [d for d in self.devices if "/" not in d or d.rsplit("/", 1)[0] != exc.node]
        if keep != self.devices:
            self.devices = keep
            self.gpu_devices = [d for d in self.gpu_devices if d in keep]
            self._stale.add("devices")
            self._publish_usage(force=True)

    def _config_as_submitted(self, task_id, config, run_dir):
        """Return the config path to run: the file itself, or, when it or a base it names
        changed since the submit, a copy of them all as they were, in the run folder."""
        text = self.store.config_snapshot(task_id)
        if text is None:
            return config  # not readable when submitted: run.py says what is wrong with it
        files = {config: text, **self.store.config_bases(task_id)}
        if snapshots.unchanged(self.workspace, files):
            return config
        written = snapshots.write(run_dir, files, self.workspace, self.settings["results_dir"])
        return os.path.relpath(written[config], self.workspace)

    # -- ends ---------------------------------------------------------------------------------------

    def _on_exit(self, handle, code):
        r = self.running.get(handle.task_id)
        if r is None or r.attempt_id != handle.attempt_id:
            return
        del self.running[handle.task_id]
        self._stale.add("running")
        try:
            self._record_exit(r, handle, code)
        except Exception:  # noqa: BLE001 - a bug here must not lose the end
            log.exception("deciding how task %s ended failed; recording its plain outcome",
                          r.task_id)
            state, message = outcome(code, None) if r.stop_reason != "cancel" else (
                CANCELLED, "cancelled while running")
            self._owe(self._end_write(End(r.attempt_id, r.task_id, r.config, r.batch_id, state,
                                          code, message, time.time())))

    def _record_exit(self, r, handle, code):
        adm = self.admission
        peak = adm.ended(r.task_id, r.device, handle.pid)  # its memory is free again
        now = time.time()
        if not handle.extra.get("stopped"):
            # The end is when the process ended (the exit file's time), not when it was
            # noticed; a task whose leftovers had to be stopped ended when they were gone.
            ended = handle.extra.get("ended_at") if "ended_at" in handle.extra else (
                exit_time(handle.run_dir) if handle.run_dir else None)  # read by the watcher
            now = min(now, ended or now)
        if r.stop_reason:
            state, message = stopped_state(r.stop_reason)
        elif code is None:
            state, message = INTERRUPTED, handle.extra.get("lost_reason") or \
                "the process ended without recording an exit code"
        else:
            state, message = outcome(code, r.handle.run_dir)
        oom = (state == FAILED and gpu_index(r.device) is not None
               and log_shows_oom(os.path.join(r.handle.run_dir, LOG_NAME)))
        requeue = None
        if oom:
            learned = adm.out_of_memory(r.device, r.family, peak, self.running)
            try:
                earlier = any("out of memory" in (a.get("message") or "")
                              for a in self.store.attempts(r.task_id) if a["id"] != r.attempt_id)
            except Exception:  # noqa: BLE001 - unreadable history: do not requeue again
                earlier = True
            requeue = None if earlier else "front"
            message = (f"CUDA out of memory on {r.device}; "
                       + ("requeued at the front" if requeue else "again: not requeued")
                       + (f"; {r.family or 'its family'} now needs {format_size(learned)} as "
                          "learned" if learned else "")
                       + f"; {r.device} limited to {adm.oom_cap[r.device]} task(s) until a task "
                       "finishes there")
        elif state in (SUCCEEDED, FAILED):
            adm.uncap(r.device)
        note = stop_note(handle.extra, r.stop_reason)
        if note:
            message = f"{message}; {note}" if message else note
        if state == SUCCEEDED and peak is not None:
            # Read at least once while it ran: its peak (0 included) is what its family needs.
            adm.learn(r.family, peak)
        batch = self.batches.get(r.batch_id)
        if not r.stop_reason and not requeue:
            requeue = retry_left(batch.max_retries if batch else 0, r.number, state)
            if requeue:
                message += f"; requeued (retry {r.number} of {batch.max_retries})"
        if r.row is not None and not requeue:
            # The common case: publish the end now, refill the slot (the loop dispatches
            # next), and write the end down right after: the file and database work stays
            # off the path from one task's exit to the next one's start.
            self._emit(dict(r.row, state=state, exit_code=code, message=message,
                            finished_at=now, duration=now - r.started_at))
        self._owe(self._end_write(End(r.attempt_id, r.task_id, r.config, r.batch_id, state, code,
                                      message, now, peak, requeue),
                                  publish=r.row is None or requeue))

    def _end_write(self, end, publish=True):
        """Return the Write of an attempt's ``End`` (with its automatic requeue, if any)."""
        def apply():
            self.store.finish_attempt(end.attempt_id, end.task_id, end.state, end.code,
                                      end.message, end.when, end.peak, requeue=end.requeue)

        def then():
            if end.state == SUCCEEDED:
                self.completed_by[end.config] = {"id": end.task_id, "batch_id": end.batch_id}
            if end.requeue:
                self._requeued(end.task_id)
            elif publish:
                self._emit_task(end.task_id)

        # The marker first: a crash after it re-reads the same end from the exit file,
        # never re-runs the config.
        marker = self._mark_done(end.config) if end.state == SUCCEEDED else None
        return Write(apply, f"record the end of task {end.task_id}", then=then,
                     batch_id=end.batch_id, config=end.config, task_id=end.task_id,
                     marker=marker)

    def _mark_done(self, config):
        """Have a config's done marker written; return its Ticket."""
        folder = os.path.join(self.workspace, configs_mod.results_dir_for(
            config, self.settings["configs_dir"], self.settings["results_dir"]))
        return self._markers.ask(folder, self.settings["done_marker"])

    # -- command bodies (scheduler thread) ----------------------------------------------------

    def _adopt_batch(self, batch_id, spec, rows, first=True):
        """Take (part of) a batch recorded by ``submit`` into the queue, and announce it."""
        if first:
            self.batches[batch_id] = BatchInfo(batch_id, spec["command"],
                                               spec["overwrite"], spec["max_retries"], True)
            self.publish("batch", {"id": batch_id, "owner": spec["owner"],
                                   "total": spec.get("total", len(rows))})
        for t in rows:
            if t["state"] == QUEUED:
                self.waiting.add(t)
        for t in rows:
            self._emit(t)
        return batch_id

    def _cancel_task(self, task_id):
        t = self.store.get_task(task_id)
        if task_id in self.waiting:
            self.store.finish_queued([task_id], CANCELLED, "cancelled before it started")
            self.waiting.remove(task_id)
        elif task_id in self.running:
            self._stop_running(self.running[task_id], "cancel")
        else:
            raise Conflict(f"task {task_id} is {t['state']}; only queued or running tasks can be "
                           "cancelled")
        return self._emit_task(task_id)

    def _cancel_batch(self, batch_id):
        self.store.get_batch(batch_id)
        queued = self.waiting.of_batches({batch_id})
        # Written down first: a store error leaves them queued, in memory as in the store.
        self.store.finish_queued(queued, CANCELLED, "cancelled before it started")
        for tid in queued:
            self.waiting.remove(tid)
        running = [r for r in self.running.values() if r.batch_id == batch_id]
        for r in running:
            self._stop_running(r, "cancel")
        for t in self.store.get_tasks(queued):
            self._emit(t)
        return {"cancelled": len(queued), "stopping": len(running)}

    def _bulk(self, action, selection, only_owner):
        # Decided here, on the engine's thread, from one consistent look at the store.
        plan = plan_bulk(action, self.store.select_tasks(selection), only_owner)
        if action == "cancel":
            queued = []
            for tid in plan.ids:
                if tid in self.running:
                    self._stop_running(self.running[tid], "cancel")
                else:
                    self.waiting.remove(tid)
                    queued.append(tid)
            self.store.finish_queued(queued, CANCELLED, "cancelled before it started")
            for t in self.store.get_tasks(queued):
                self._emit(t)
        else:
            for t in self.store.requeue_many(plan.ids):
                self._note_batch(t["batch_id"], own=True)
                self.waiting.add(t)
                self._emit(t)
        return plan.summary()

    def _stop_running(self, r, reason):
        if not r.stop_reason:
            r.stop_reason = reason
            try:  # written down first: if this engine dies during the grace, the next finishes
                self.store.request_stop(r.attempt_id, reason, time.time())
            except Exception:  # noqa: BLE001 - the stop asked for is still carried out
                log.exception("could not record the stop of task %s", r.task_id)
            self.executor.stop(r.handle, float(self.settings["kill_grace"]))

    def _interrupt_own(self, message):
        own = {b for b, info in self.batches.items() if info.own}
        queued = self.waiting.of_batches(own)
        for r in list(self.running.values()):
            if r.batch_id in own:
                self._stop_running(r, "interrupt")
        for tid in queued:
            self.waiting.remove(tid)
        if queued:
            self._owe(Write(lambda: self.store.finish_queued(queued, CANCELLED, message),
                            f"record that {len(queued)} queued task(s) were not started",
                            then=lambda: [self._emit_task(tid) for tid in queued]))

    def _retry(self, task_id):
        t = self.store.get_task(task_id)
        if t["state"] not in RETRYABLE_STATES:
            raise Conflict(f"task {task_id} is {t['state']}; only "
                           + ", ".join(sorted(RETRYABLE_STATES)) + " tasks can be retried")
        self._note_batch(t["batch_id"], own=True)
        row = self.store.requeue(task_id)
        self.waiting.add(row)
        self._emit(row)
        return row

    def _set_slots(self, device, slots):
        if self._fixed_limits is None:
            self.store.set_device_limit(device, slots)
        self.limits[device] = slots
        self._stale.add("devices")
        self._publish_usage(force=True)
        return self._usage[device]

    def _refresh_devices(self):
        snap = self.inventory.snapshot()
        ids = [d.id for d in snap]
        if ids != self.devices:
            stored = self.store.device_limits()
            for d in ids:
                if d not in self.limits:
                    default = self.settings["cpu_slots"] if d.rsplit("/", 1)[-1] == CPU \
                        else self.settings["gpu_slots"]
                    self.limits[d] = stored.get(d, default)
            self.devices = ids
            self.gpu_devices = [d.id for d in snap if d.kind == "gpu"]
            self._stale.add("devices")
            self._publish_usage(force=True)
        return ids

    def _read_now(self):
        """Read the GPUs on this thread; a failed reading blocks the GPUs, never the CPU."""
        if self.monitor is None:
            return
        try:
            self.admission.observe(self.monitor.sample(), self.running)
        except Exception as e:  # noqa: BLE001 - a broken driver must not stop the CPU's work
            log.exception("reading the GPUs failed")
            self.admission.note_faults(
                {d: f"reading the GPUs failed: {e}" for d in self.gpu_devices})

    def predicted_need(self, config):
        """Return the GPU memory a config is expected to need (learned from its family), or 0."""
        return self.view.learned.get(family_of(config), 0)

    def task_memory_now(self, task_id):
        """Return (bytes now, peak bytes) of a running GPU task, as last sampled."""
        view = self.view
        return view.task_memory.get(task_id), view.task_peak.get(task_id)

    def suggest_slots(self, need):
        """Return {gpu id: slots} that fit ``need`` bytes per task (plus the margin) on each GPU."""
        if not need or need <= 0:
            raise SlotrunError("a memory need is required to suggest slots: declare gpu_memory "
                               "in the configs or let a task of the family finish first")
        out = {}
        limits, margin = self.view.limits, self.admission.margin
        for dev in self.inventory.gpus():
            if dev.id in limits:
                out[dev.id] = max(0, int((dev.memory_total - margin) // need))
        return out

    def _set_priority(self, batch_id, priority):
        self.store.get_batch(batch_id)
        self.store.set_batch_priority(batch_id, priority)
        ids = self.waiting.of_batches({batch_id})
        for tid in ids:
            self.waiting.remove(tid)
        for t in (self.store.get_task(tid) for tid in ids):
            self.waiting.add(t)
        batch = self.store.get_batch(batch_id)
        self.publish("batch", {"id": batch_id, "owner": batch["owner"], "total": batch["total"],
                               "priority": priority})
        return batch

    def _set_paused(self, paused, who=None):
        if paused:
            # A user's pause has no reason: a reason is what the engine says when it paused
            # the queue itself (notifications tell users of those only).
            self._pause(True, auto=False, by=who, persist=True)
        else:
            self._pause(False, persist=True)
            if self._fault is not None:
                # A user's resume tries again at once, and gives the fault a fresh period.
                self._fault = Fault(time.monotonic(), self._fault.reason)
            self._kick = True
        return paused

    def _pause(self, paused, auto=False, reason=None, by=None, persist=False):
        """Pause or resume, announce it (``queue`` event); a user's choice is stored."""
        if persist:
            # Stored first: a pause that cannot be stored is refused (StoreUnavailable).
            value = json.dumps({"by": by, "since": time.time()}) if paused else None
            self.store.set_state(PAUSE_KEY, value)
        self.paused = paused
        self.pause = {"auto": auto, "reason": reason, "by": by,
                      "since": time.time()} if paused else None
        self._stale.add("pause")
        self._publish_view()  # before the event: its listeners read the view
        self.publish("queue", self.queue_state())

    @property
    def pause_reason(self):
        """Return why the engine paused the queue itself, or None (running, or a user's pause)."""
        queue = self.view.queue
        return queue.reason if queue.paused else None

    def _load_pause(self):
        value = self.store.get_state(PAUSE_KEY)
        if not value:
            return
        try:
            p = json.loads(value)
        except ValueError:
            p = {}
        self.paused = True
        self.pause = {"auto": False, "reason": None, "by": p.get("by"),
                      "since": p.get("since") or time.time()}
        log.info("the queue is paused%s: nothing new starts until it is resumed",
                 f" (by {p['by']})" if p.get("by") else "")

    # -- events ---------------------------------------------------------------------------------

    def _emit_task(self, task_id):
        t = self.store.get_task(task_id)
        self._emit(t)
        return t

    def _emit(self, t):
        self.publish("task", t)

    def _publish_usage(self, force=False):
        counts = {}
        for r in self.running.values():
            counts[r.device] = counts.get(r.device, 0) + 1
        usage = {}
        adm = self.admission
        for d in self.devices:
            u = {"slots": self.limits.get(d, 0), "running": counts.get(d, 0)}
            if d in adm.oom_cap:
                u["effective"] = self._effective_limit(d)
            h = self.holds.get(d)
            item = self.waiting.get(h.task_id) if h is not None else None
            hold, note = adm.note(d, u, h, item.pending if item is not None else None)
            if hold:
                u["hold"], u["note"] = hold, note
                if h is not None:
                    u["held"] = max(0, u.get("effective", u["slots"]) - u["running"])
                    u["waiting_task"] = h.task_id
            usage[d] = u
        changed = force or usage != self._usage
        if changed:
            self._usage = usage
            self._stale.add("usage")
        self._publish_view()  # before the event: its listeners read the view
        if changed:
            self.publish("slots", usage)

    def _publish_view(self):
        """Publish a new view for readers when a part of it changed: the changed parts are
        copied, the others shared with the view before (see app/engine_view.py)."""
        stale = self._stale
        if not stale:
            return
        view = self.view
        parts = {}
        if "devices" in stale:
            parts.update(devices=tuple(self.devices), gpu_devices=tuple(self.gpu_devices),
                         limits=dict(self.limits))
        if "usage" in stale:
            parts["usage"] = self._usage  # a new dict each time it changes
        if "running" in stale:
            old = view.running
            parts["running"] = {t: same_attempt(old.get(t), r) or r.record()
                                for t, r in self.running.items()}
        if "memory" in stale:
            parts.update(task_memory=dict(self.admission.task_memory),
                         task_peak=dict(self.admission.task_peak))
        if "learned" in stale:
            parts["learned"] = dict(self.admission.learned)
        if "holds" in stale:
            parts["holds"] = self.holds  # a new dict each dispatch round
        if "queue" in stale:
            parts.update(queued=len(self.waiting), wanted=dict(self.waiting.wanted))
        if "pause" in stale:
            p = self.pause if self.paused else None
            parts["queue"] = QueueState(self.paused, bool(p and p["auto"]),
                                        p["reason"] if p else None, p["since"] if p else None)
        stale.clear()
        self.view = replace(view, **parts)

    def admission_view(self):
        """Return what a new GPU task would meet now, per GPU: {"free_slots", "free",
        "reserved", "available" (bytes, None when not checked), "blocked" (a reason or "")}."""
        return self.call(self._admission_view)

    def _admission_view(self):
        if self.admission.reading_too_old(time.monotonic()):
            self._read_now()
        return self.admission.offers(self.gpu_devices, self.running, self.limits)
