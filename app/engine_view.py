"""What other threads may read of the engine: an immutable snapshot, swapped whole.

The scheduler thread owns the engine's dicts and changes them in place. Readers (the API,
the emitter, the insight sampler, the command lines) never touch those: they read
``Engine.view``, an ``EngineView`` the scheduler thread builds anew whenever something a
reader sees changed and publishes with one attribute assignment (atomic in Python). A
reader that takes ``view = engine.view`` once sees one consistent moment, however long it
takes. Nothing in a published view is changed afterwards: each part is a fresh object,
copied only when it changed (copy-on-change), so an unchanged part is shared between views.
"""

from dataclasses import dataclass, field
from typing import NamedTuple


class RunningTask(NamedTuple):
    """A running task as readers see it."""

    task_id: int
    attempt_id: int
    batch_id: int
    owner: str
    device: str
    slot: int
    config: str
    started_at: float
    run_dir: str  # its run folder ("" when the executor keeps none here)


@dataclass(frozen=True)
class QueueState:
    """Whether and why the queue is paused (see ``Engine.queue_state``)."""

    paused: bool = False
    auto: bool = False  # the engine paused it itself for a fault that persisted
    reason: str | None = None  # the fault, for an automatic pause
    since: float | None = None

    def as_dict(self):
        """Return {"paused", "auto", "reason", "since"} (the "queue" event's first fields)."""
        return {"paused": self.paused, "auto": self.auto, "reason": self.reason,
                "since": self.since}


@dataclass(frozen=True)
class EngineView:
    """One consistent moment of the engine, for readers on any thread (never changed)."""

    devices: tuple = ()  # device ids, GPUs first
    gpu_devices: tuple = ()
    limits: dict = field(default_factory=dict)  # device -> slot limit (kept for devices gone)
    # device -> {"slots", "running"[, "effective"][, "hold", "note"[, "held", "waiting_task"]]}
    usage: dict = field(default_factory=dict)
    running: dict = field(default_factory=dict)  # task id -> RunningTask
    task_memory: dict = field(default_factory=dict)  # task id -> GPU bytes at the last reading
    task_peak: dict = field(default_factory=dict)  # task id -> peak GPU bytes read
    learned: dict = field(default_factory=dict)  # experiment family -> learned need in bytes
    holds: dict = field(default_factory=dict)  # device -> Hold (why its free slots wait)
    queue: QueueState = QueueState()
    queued: int = 0  # tasks waiting in the queue
    wanted: dict = field(default_factory=dict)  # device tuple a task may use -> queued tasks
