"""Recovery at start: what a new engine finds of the work the last one left, and what
becomes of it.

An engine that starts asks the executor about each attempt recorded as running: a process
still running is watched again (``Readopted``); an attempt recorded but never started is
undone, its task queued again as it was (``Unstarted``); one that ended, or whose process
was lost, while no engine watched gets its ``End`` from its run folder (exit code, time,
log), with its automatic retry when it was lost within ``max_retries``. The queued tasks of
multi-run.py runs that are gone are ended (``OrphanedRun``): what a headless run queued
and did not start is never started by another engine. The engine applies these decisions
(``Engine._recover``); this file only reads.
"""

import time
from typing import NamedTuple

from .ends import End, outcome, retry_left, stopped_state
from .executors.local import exit_time, read_record


class Readopted(NamedTuple):
    """An attempt whose process still runs: the executor watches it again."""

    record: dict  # the attempt as the store has it (Store.running_attempts)
    handle: object


class Unstarted(NamedTuple):
    """An attempt recorded as started whose process never started: to be undone."""

    record: dict


class OrphanedRun(NamedTuple):
    """Queued tasks of a multi-run.py run that is gone: to be ended, never started."""

    batch_id: int
    who: str  # the run ("pid 123 on host")
    task_ids: list


def survey_attempts(store, executor, max_retries_of):
    """Return what became of each attempt recorded as running, in their order: a
    ``Readopted``, an ``Unstarted`` or an ``End`` each (``max_retries_of(batch id)``)."""
    found = []
    for rec in store.running_attempts():
        max_retries = max_retries_of(rec["batch_id"])
        handle, code = executor.adopt(rec)
        if handle is not None:
            found.append(Readopted(rec, handle))
            continue
        run_dir = rec["run_dir"]
        if code is None and not rec.get("pid") and read_record(run_dir).pid is None:
            # The engine stopped between recording the start and starting the process:
            # this attempt never ran, so it is undone rather than counted.
            found.append(Unstarted(rec))
            continue
        number = rec.get("number") or 1
        requeue = None
        if rec.get("stop_reason"):  # the stop the last engine began has ended it
            state, message = stopped_state(rec["stop_reason"])
        else:
            state, message = outcome(code, run_dir)
            if code is None:
                message = "the engine stopped and the process was lost"
            requeue = retry_left(max_retries, number, state)
        if requeue:
            message += f"; requeued (retry {number} of {max_retries})"
        found.append(End(rec["id"], rec["task_id"], rec["config"], rec["batch_id"], state, code,
                         message, exit_time(run_dir) or time.time(), requeue=requeue))
    return found


def orphaned_headless(store):
    """Return the queued work of multi-run.py runs that are gone, one ``OrphanedRun`` per
    batch and run.

    Called by the engine that holds the workspace's lock: no multi-run.py of this workspace
    runs then.
    """
    by_run = {}
    for task_id, batch_id, who in store.headless_queued():
        by_run.setdefault((batch_id, who), []).append(task_id)
    return [OrphanedRun(batch_id, who, ids) for (batch_id, who), ids in by_run.items()]
