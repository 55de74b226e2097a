"""How an attempt ended: its ``End`` record, and the state and message an exit gives it."""

import os
import signal
from dataclasses import dataclass

from .logs import LOG_NAME, first_error_line, signal_of_exit
from .task import CANCELLED, FAILED, INTERRUPTED, SUCCEEDED


@dataclass(frozen=True)
class End:
    """How one attempt ended, as it is written down."""

    attempt_id: int
    task_id: int
    config: str
    batch_id: int
    state: str
    code: int | None
    message: str | None
    when: float  # the end's wall-clock time
    peak: int | None = None  # peak GPU bytes read while it ran (None: never read)
    requeue: str | None = None  # "back" / "front": queued again automatically, and where


def outcome(code, run_dir):
    """Return (state, message) of an attempt that ended with ``code`` (None: unknown)."""
    if code is None:
        return INTERRUPTED, "the process ended without recording an exit code"
    if code == 0:
        return SUCCEEDED, None
    log_path = os.path.join(run_dir, LOG_NAME) if run_dir else None
    signum = -code if code < 0 else signal_of_exit(log_path, code) if log_path else None
    if signum:
        # The shell's own notice ("Killed") is the log's last line: it says no more.
        return FAILED, f"killed by signal {signum}{_signal_name(signum)}"
    message = f"exit code {code}"
    line = first_error_line(log_path) if log_path else None
    return FAILED, f"{message}: {line}" if line else message


def stopped_state(reason):
    """Return the (state, message) of a task stopped by a cancel or an interrupt."""
    if reason == "cancel":
        return CANCELLED, "cancelled while running"
    return INTERRUPTED, "stopped when the engine was stopped"


def retry_left(max_retries, number, state):
    """Return "back" when an interrupted attempt may be retried automatically, else None."""
    if state == INTERRUPTED and max_retries and number <= max_retries:
        return "back"
    return None


def stop_note(extra, stop_reason):
    """Return what had to be stopped after a task's main process ended, for its message."""
    n, k, grace = extra.get("stopped", 0), extra.get("killed", 0), extra.get("grace", 0)
    if stop_reason:
        if not k:
            return None
        return (f"{k} process{'es' if k != 1 else ''} ignored SIGTERM and "
                f"{'were' if k != 1 else 'was'} killed after {grace:g} s")
    if not n:
        return None
    note = f"{n} leftover process{'es' if n != 1 else ''} stopped after the task ended"
    if k:
        note += f" ({k} with SIGKILL after {grace:g} s)"
    return note


def _signal_name(number):
    try:
        return f" ({signal.Signals(number).name})"
    except ValueError:
        return ""
