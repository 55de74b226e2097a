"""What the scheduler knows of the GPUs' memory between two starts (scheduler thread only).

``app/admission.py`` gives the facts (declared needs, readings, out-of-memory signs); this
file keeps the bookkeeping the scheduler decides from: the ledger of the latest reading,
each running task's memory and peak, the needs learned per experiment family, the GPU
waiting for a task of unknown need to settle (probation), the caps after an out-of-memory
failure, the GPUs that cannot be read, and what each GPU offered at the last dispatch.
Readers on other threads see copies of it in ``EngineView``; ``stale`` is the engine's set
of view parts to copy again ("memory", "learned").
"""

import logging
import time
from dataclasses import dataclass

from .admission import MemoryLedger, Watched, family_of
from .settings import format_size, parse_size
from .task import need_of

log = logging.getLogger(__name__)


@dataclass
class Settling:
    """A task of unknown need whose GPU waits for its memory to settle (probation: unknown)."""

    task_id: int
    family: str
    since: float  # time.monotonic() of its start
    last: int | None = None  # bytes at the previous reading


class AdmissionState:
    """GPU-memory-aware admission's state (see the module's docstring)."""

    def __init__(self, settings, stale):
        self.enabled = bool(settings.get("admission", True))
        self.margin = parse_size(settings.get("memory_margin", "512MiB"))
        self.stagger = settings.get("probation", "off") == "unknown"
        self.probation_quiet = float(settings.get("probation_quiet", 2.0))
        self.sample_interval = float(settings.get("memory_sample_interval", 0.5))
        # A reading older than this is not trusted for a start: the monitor was idle, so the
        # dispatch reads the GPUs itself (never on the path from an exit to the next start,
        # where the monitor is reading all along).
        self.reading_max_age = max(1.0, 3 * self.sample_interval)
        self.ledger = MemoryLedger()  # GPU memory as of the latest reading, exits credited
        self.task_memory = {}  # task id -> bytes in the latest reading
        self.task_peak = {}  # task id -> peak bytes read (0: read, never held any)
        self.learned = {}  # family -> learned need in bytes (a learned 0 is known too)
        self.probation = {}  # device -> Settling
        self.oom_cap = {}  # device -> effective limit after an out-of-memory failure
        self.faults = {}  # device -> why it cannot be read (no new task starts there)
        self.device_memory = {}  # device -> {"free", "reserved", "available"} at the last dispatch
        # process group -> Watched, for running GPU tasks; replaced whole, never changed in
        # place: the monitor thread reads it
        self.groups = {}
        self._stale = stale

    # -- learned needs ------------------------------------------------------------------------

    def load_learned(self, peaks):
        """Learn from the peaks of earlier runs: [(config, peak bytes)]."""
        for config, peak in peaks:
            self.learn(family_of(config), peak)

    def learn(self, family, nbytes):
        """Raise a family's learned need to ``nbytes`` (a first 0 is learned too)."""
        if nbytes > self.learned.get(family, -1):
            self.learned[family] = nbytes
            self._stale.add("learned")

    # -- starts and ends ----------------------------------------------------------------------

    def watch(self, task_id, device, pid, since):
        """Have the monitor read a GPU task's process group; return True for the first one."""
        self.groups = {**self.groups, pid: Watched(task_id, device, since)}
        return len(self.groups) == 1

    def started(self, task_id, device, pid, pending):
        """Note a GPU task's start; return True when it is the only one the monitor reads."""
        since = time.monotonic()
        if self.enabled and self.stagger and need_of(pending, self.learned) is None:
            self.probation[device] = Settling(task_id, pending.family, since)
        return self.watch(task_id, device, pid, since)

    def ended(self, task_id, device, pid):
        """Forget an ended task (its memory is free again); return its peak (None: unread)."""
        if pid in self.groups:
            self.groups = {k: v for k, v in self.groups.items() if k != pid}
            self.ledger.ended(task_id, device, time.monotonic())
        peak = self.task_peak.pop(task_id, None)
        if self.task_memory.pop(task_id, None) is not None or peak is not None:
            self._stale.add("memory")
        held = self.probation.get(device)
        if held and held.task_id == task_id:
            del self.probation[device]
        return peak

    def out_of_memory(self, device, family, peak, running):
        """Cap a GPU after an out-of-memory failure and learn the family's need from what
        it and its running siblings held; return the family's learned need (None: unknown)."""
        self.oom_cap[device] = max(1, sum(1 for x in running.values() if x.device == device))
        # The task that failed may have died before it held what it needed: its running
        # siblings show more.
        seen = max([peak or 0] + [self.task_peak.get(x.task_id, 0)
                                  for x in running.values() if x.family == family])
        if seen:  # nothing read (all too short): the need stays unknown, the cap holds
            self.learn(family, seen)
        return self.learned.get(family)

    def uncap(self, device):
        """Lift a GPU's out-of-memory cap (a task finished there)."""
        self.oom_cap.pop(device, None)

    # -- readings -----------------------------------------------------------------------------

    def reading_too_old(self, now):
        """Return True when the latest reading is too old to start a task from."""
        return self.ledger.age(now) > self.reading_max_age

    def observe(self, sample, running):
        """Take a GPU reading: memory per task, free memory, faults, settling tasks."""
        self.ledger.observe(sample)
        self.note_faults(sample.errors)
        for t, r in running.items():
            if t not in sample.tasks:
                continue  # started after the reading began
            nbytes = sample.usage.get(t, 0)
            self.task_memory[t] = nbytes
            if nbytes >= self.task_peak.get(t, 0):
                self.task_peak[t] = nbytes
            self._stale.add("memory")
            if r.family in self.learned:
                self.learn(r.family, nbytes)  # more evidence: the family needs more
        for device, st in list(self.probation.items()):
            nbytes = sample.usage.get(st.task_id, 0)
            age = sample.when - st.since
            if st.task_id not in running:
                del self.probation[device]
            elif nbytes > 0 and st.last is not None and \
                    abs(nbytes - st.last) <= max(16 * 1024**2, nbytes // 50):
                del self.probation[device]  # levelled off: its family needs that much
                self.learn(st.family, nbytes)
            elif (nbytes == 0 and age >= self.probation_quiet) or \
                    age >= 10 * self.probation_quiet:
                del self.probation[device]  # no GPU memory for a while (or too long): settled
                self.learn(st.family, self.task_peak.get(st.task_id, 0))
            elif st.task_id in sample.tasks:
                st.last = nbytes

    def note_faults(self, errors):
        """Take the GPUs that could not be read ({device: why}); the others answer again."""
        for d in [d for d in self.faults if d not in errors]:
            log.info("%s answers again: tasks start there again", d)
            del self.faults[d]
        for d, why in errors.items():
            if self.faults.get(d) != why:
                log.warning("%s cannot be read (%s): no new task starts there until it answers; "
                            "its running tasks go on", d, why)
                self.faults[d] = why

    # -- what a GPU offers a start ------------------------------------------------------------

    def effective_limit(self, device, limit):
        """Return a device's slot limit under its out-of-memory cap, if any."""
        cap = self.oom_cap.get(device)
        return limit if cap is None else min(limit, cap)

    def reservations(self, running):
        """Return {device: bytes its running tasks will still take} (need - current use)."""
        out = {}
        for r in running.values():
            need = r.memory or self.learned.get(r.family)
            if need:
                left = need - self.ledger.used_by(r.task_id)
                if left > 0:
                    out[r.device] = out.get(r.device, 0) + left
        return out

    def fill(self, states, gpu_devices, running):
        """Fill in the GPUs' ``DeviceState``: free memory, reservations and blocks."""
        ledger = self.ledger
        reserved = self.reservations(running) if self.enabled else {}
        memory = {}
        for d in gpu_devices:
            st = states.get(d)
            if st is None:
                continue
            if d in self.faults:
                st.blocked = f"{d} cannot be read: {self.faults[d]}"
            elif d in self.probation:
                st.blocked = f"settling: task {self.probation[d].task_id}'s memory need is unknown"
            if self.enabled:
                st.free_memory = ledger.free_now(d)  # None: no reading (no figures): not checked
                if st.free_memory is not None:
                    st.reserved = reserved.get(d, 0)
                    memory[d] = {"free": st.free_memory, "reserved": st.reserved,
                                 "available": st.available}
        self.device_memory = memory

    def offers(self, gpu_devices, running, limits):
        """Return what a new GPU task would meet now, per GPU (see ``Engine.admission_view``)."""
        reserved = self.reservations(running)
        counts = {}
        for r in running.values():
            counts[r.device] = counts.get(r.device, 0) + 1
        out = {}
        for d in gpu_devices:
            free = self.ledger.free_now(d) if self.enabled else None
            res = reserved.get(d, 0) if free is not None else 0
            blocked = f"{d} cannot be read: {self.faults[d]}" if d in self.faults else \
                "settling" if d in self.probation else ""
            limit = self.effective_limit(d, limits.get(d, 0))
            out[d] = {"free_slots": max(0, limit - counts.get(d, 0)),
                      "free": free, "reserved": res,
                      "available": None if free is None else free - res, "blocked": blocked}
        return out

    def note(self, d, usage, hold, pending):
        """Return (kind, sentence) saying what holds back starts on a device, or ("", "").

        ``usage``: the device's usage entry; ``hold``: its Hold at the last dispatch (None);
        ``pending``: the waiting task of that hold, if it is still queued.
        """
        if d in self.faults:
            return "fault", (f"{d} cannot be read ({self.faults[d]}): no new task starts here "
                             "until it answers; its running tasks go on")
        if d in self.oom_cap:
            return "oom", (f"out of memory: limited to {usage['effective']} until a task "
                           "finishes here")
        if d in self.probation:
            st = self.probation[d]
            return "probation", (f"settling: task {st.task_id} is the first of "
                                 f"{st.family or 'its family'} (need unknown); the next start "
                                 f"here waits until its memory levels off (or it shows none "
                                 f"for {self.probation_quiet:g} s)")
        if hold is None or hold.available is None:
            return "", ""
        free = f"{format_size(max(0, hold.available))} free on {d}"
        mem = self.device_memory.get(d)
        if mem and mem["reserved"]:
            free += (f" ({format_size(mem['free'])} free, {format_size(mem['reserved'])} "
                     "reserved by running tasks still growing to their need)")
        if hold.need is None or not hold.need:
            return "memory", (f"task {hold.task_id} waits: {free}, under the "
                              f"{format_size(self.margin)} margin")
        source = "declared" if pending is not None and pending.memory else \
            f"learned for {pending.family}" if pending is not None else "expected"
        return "memory", (f"task {hold.task_id} needs {format_size(hold.need)} ({source}) + "
                          f"{format_size(self.margin)} margin; {free}")
