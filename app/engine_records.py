"""The records the engine keeps (running and queued tasks, batches, owed writes, a failing
step) and the messages other threads put on its queue. Scheduler thread only, but for the
messages, which any thread may send."""

from concurrent.futures import Future
from dataclasses import dataclass
from typing import NamedTuple

from .engine_view import RunningTask
from .task import Pending


@dataclass
class Running:
    """A task the engine is watching."""

    task_id: int
    attempt_id: int
    batch_id: int
    owner: str
    device: str
    slot: int
    handle: object
    config: str
    started_at: float
    stop_reason: str = ""  # "cancel" or "interrupt" once a stop was asked for
    row: dict = None  # the task as last published (to publish its end without a query)
    memory: int = 0  # declared GPU memory need in bytes (0: none declared)
    family: str = ""  # experiment family, for its learned need
    number: int = 1  # the attempt's number (1 for the first run)

    def record(self):
        """Return the task as readers see it (an immutable record)."""
        return RunningTask(self.task_id, self.attempt_id, self.batch_id, self.owner, self.device,
                           self.slot, self.config, self.started_at,
                           getattr(self.handle, "run_dir", "") or "")


@dataclass
class Queued:
    """What the engine keeps in memory about a queued task."""

    pending: Pending
    batch_id: int
    config: str
    attempts: int


@dataclass
class Write:
    """A durable write the engine owes the store, kept in order until it succeeds."""

    apply: object  # callable doing the write; raises on failure (it is then retried)
    what: str  # for the log and the pause reason: "record the end of task 5"
    then: object = None  # callable run once the write succeeded
    batch_id: int | None = None  # batches to announce as "settled" afterwards
    config: str | None = None  # a config kept busy until the write is done
    task_id: int | None = None  # the task it is about (kept out of the queue until done)
    marker: object = None  # a done_markers.Ticket to wait for (written before this), or None

    def ready(self):
        """Return whether it may be written now (its done marker, if any, exists)."""
        return self.marker is None or self.marker.done


@dataclass
class Fault:
    """A step of the loop that keeps failing."""

    since: float  # monotonic time of the first failure
    reason: str
    count: int = 0
    backoff: float = 0.05
    retry_at: float = 0.0


# -- what other threads put on the scheduler's queue ----------------------------------------------

class Call(NamedTuple):
    """Run ``fn(*args)`` on the scheduler thread; its result or error goes to ``future``."""

    fn: object
    args: tuple
    future: Future


class Exited(NamedTuple):
    """A task's process ended (``code`` None: unknown, the process was lost)."""

    handle: object
    code: int | None


class MarkersWritten(NamedTuple):
    """The done-marker thread wrote markers: the ends waiting for them may be written down."""


class StopRequest(NamedTuple):
    """Stop the engine (``kill``: its running tasks too, queued ones ended with ``reason``)."""

    kill: bool
    reason: str | None


class Reading(NamedTuple):
    """A GPU memory reading of the monitor thread."""

    sample: object


class NodeLost(NamedTuple):
    """The executor took a node out of placement (an ``ExecutorUnavailable``)."""

    error: object


class Stopping(NamedTuple):
    """A stop under way: whether it kills the tasks, and since when (monotonic)."""

    kill: bool
    since: float


@dataclass
class BatchInfo:
    """What the engine keeps about a batch while it has active tasks."""

    id: int
    command: str
    overwrite: bool
    max_retries: int = 0
    own: bool = True  # submitted through this engine (a headless run starts only its own)


def same_attempt(record, r):
    """Return a published RunningTask when it is still the running attempt ``r``, else None."""
    return record if record is not None and record.attempt_id == r.attempt_id else None
