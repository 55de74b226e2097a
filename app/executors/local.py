"""The local executor: task processes on this machine, each in its own session.

A task runs under a tiny ``/bin/sh`` wrapper that records its pid, runs the command with
output going straight to the attempt's log file, and records the exit code when the command
ends, both in one file of the attempt's run folder (``status``: a line ``pid N``, then a line
``exit N``). The engine therefore never sits between a task and its output, and a task
outlives an engine that is killed: the next engine re-adopts it by pid (checked against its
start time) and reads its exit code from the record. Run folders written by slotrun 0.1.0
(separate ``pid`` and ``exit`` files) are read too.

The run folders of the next tasks to start are made ahead of their start (``prepare``), by
a thread of their own: the folder, its log file and its record then exist when a freed slot
is refilled, so the path from one task's exit to the next one's start creates no file.

A task's exit is reported only once every process of it is gone (see ``processes``): what
it left running is stopped first, off the scheduler thread, so its slot is never handed on
while its processes still hold the CPU or GPU.
"""

import logging
import os
import queue
import select
import subprocess
import threading
import time
from typing import NamedTuple

from ..logs import LOG_NAME
from .processes import (MARKER, ProcessTable, Stops, TaskTree, boot_id, find_processes,
                        process_start_time)
from .records import Handle

__all__ = ["LocalExecutor", "RECORD", "WRAPPER", "Record", "boot_id", "exit_time",
           "process_start_time", "read_exit_code", "read_record"]

log = logging.getLogger(__name__)

RECORD = "status"  # the wrapper's record in the run folder: "pid N", then "exit N"
# $1: run folder; then the task's own variables (NAME=value ...) up to "--"; the rest: the
# command, passed as arguments (never parsed by the shell). The wrapper exports the variables
# itself, so the engine hands its environment over as it is, unconverted (converting it costs
# a tenth of a start). Each line of the record is one append (atomic); the file usually
# exists already (``prepare``).
WRAPPER = ('d=$1; shift; while [ "$1" != -- ]; do export "$1"; shift; done; shift; '
           'echo "pid $$" >>"$d/status"; "$@"; c=$?; echo "exit $c" >>"$d/status"; exit $c')

# A scan of /proc made while re-adopting is reused for the next attempts for this long.
_TABLE_REUSE_S = 2.0
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class Record(NamedTuple):
    """What a run folder says of its attempt's process: its pid and its exit code (None: not
    written), and the file the exit code came from (None when there is none)."""

    pid: int | None
    code: int | None
    exit_file: str | None


def read_record(run_dir):
    """Return the Record of a run folder: its ``status`` file, or the separate ``pid`` and
    ``exit`` files of slotrun 0.1.0 (and of the Ray executor's wrapper)."""
    path = os.path.join(run_dir, RECORD)
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError:
        return Record(_read_int(os.path.join(run_dir, "pid")), *_legacy_exit(run_dir))
    pid = code = None
    for line in data.splitlines():
        key, _, value = line.partition(b" ")
        try:
            if key == b"pid":
                pid, code = int(value), None  # a later start: its exit comes after it
            elif key == b"exit":
                code = int(value)
        except ValueError:
            continue
    if pid is None and code is None:  # made ahead, never started: nothing in it yet
        return Record(_read_int(os.path.join(run_dir, "pid")), *_legacy_exit(run_dir))
    return Record(pid, code, path if code is not None else None)


def _legacy_exit(run_dir):
    path = os.path.join(run_dir, "exit")
    code = _read_int(path)
    return code, path if code is not None else None


def _read_int(path):
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def read_exit_code(run_dir):
    """Return the exit code the wrapper recorded, or None when it recorded none."""
    return read_record(run_dir).code


def exit_time(run_dir):
    """Return when the wrapper recorded the exit code (its file's time), or None."""
    path = read_record(run_dir).exit_file
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


class ChildHandle(Handle):
    """The Handle of a wrapper this executor started. Its start time is read once, the first
    time it is asked for: not on the spawn path (the read waits for the new process's exec to
    finish), and always before the process is reaped (the exit watcher asks first), so the pid
    still names that process."""

    _lock = threading.Lock()

    @property
    def pid_start(self):
        """Return the wrapper's start time in clock ticks since boot (read on first use)."""
        with self._lock:
            start = self.__dict__.get("_pid_start")
            if start is None:
                start = self.__dict__["_pid_start"] = process_start_time(self.pid, zombie=True)
            return start

    @pid_start.setter
    def pid_start(self, value):
        self.__dict__["_pid_start"] = value


class _Preparer:
    """Makes run folders ahead of their start, on a thread of its own (a file creation can
    take a millisecond on a busy disk: never on the path from an exit to the next start).

    The lock guards only the bookkeeping, never a file creation: a start (``taken``) never
    waits for the folder being made for another task."""

    def __init__(self):
        self._q = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.wanted = set()  # run folders asked for and not started or discarded since
        self.made = set()  # run folders this made (emptied again by ``discard``)
        self.making = {}  # run folder being made now -> what happened to it meanwhile
        self._thread = None

    def ask(self, run_dirs):
        with self._lock:
            new = [d for d in run_dirs if d not in self.wanted]
            self.wanted.update(new)
            if new and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="slotrun-prepare",
                                                daemon=True)
                self._thread.start()
        if new:
            self._q.put(new)

    def taken(self, run_dir):
        """Note that an attempt starts in ``run_dir`` (it is the attempt's now)."""
        with self._lock:
            self.wanted.discard(run_dir)
            self.made.discard(run_dir)
            if run_dir in self.making:
                self.making[run_dir] = _TAKEN

    def discard(self, run_dir):
        """Remove a folder made ahead for an attempt that will not start (if still empty)."""
        with self._lock:
            self.wanted.discard(run_dir)
            made = run_dir in self.made
            self.made.discard(run_dir)
            if run_dir in self.making:
                self.making[run_dir] = _DISCARDED  # removed once made
            elif made:
                _remove_empty(run_dir)  # rare (cancelled, skipped): a start may wait for it

    def close(self):
        with self._lock:
            left = list(self.made)
            self.made.clear()
            self.wanted.clear()
            for d in self.making:
                self.making[d] = _DISCARDED
            thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(None)
            thread.join(timeout=2)
        for d in left:
            _remove_empty(d)

    def _run(self):
        while True:
            dirs = self._q.get()
            if dirs is None:
                return
            for d in dirs:
                with self._lock:
                    if d not in self.wanted:
                        continue
                    self.making[d] = _WANTED
                try:
                    make_run_dir(d)
                    error = None
                except OSError as e:  # the start makes it again and reports the error
                    error = e
                with self._lock:
                    fate = self.making.pop(d, _DISCARDED)
                    if error is None and fate == _WANTED:
                        self.made.add(d)
                    elif error is None and fate == _DISCARDED:
                        _remove_empty(d)  # its task left the queue while it was being made
                if error is not None:
                    log.debug("could not prepare %s: %s", d, error)


# What became of a run folder while the preparer was making it.
_WANTED, _TAKEN, _DISCARDED = "wanted", "taken", "discarded"


def make_run_dir(run_dir):
    """Create an attempt's run folder with its (empty) log file and record."""
    os.makedirs(run_dir, exist_ok=True)
    os.close(os.open(os.path.join(run_dir, LOG_NAME), _OPEN_FLAGS, 0o644))
    os.close(os.open(os.path.join(run_dir, RECORD), _OPEN_FLAGS, 0o644))


def _remove_empty(run_dir):
    """Remove a run folder made ahead, if nothing was written in it."""
    try:
        names = os.listdir(run_dir)
        if any(n not in (LOG_NAME, RECORD) or os.path.getsize(os.path.join(run_dir, n))
               for n in names):
            return
        for n in names:
            os.unlink(os.path.join(run_dir, n))
        os.rmdir(run_dir)
    except OSError:
        pass


class LocalExecutor:
    """Starts, watches and stops task processes on this machine."""

    name = "local"

    def __init__(self, on_exit, kill_grace=5.0):
        # on_exit(handle, exit_code_or_None) is called from the watcher or a stop job, once
        # every process of the task is gone; handle.extra then says what had to be stopped.
        self.on_exit = on_exit
        self.kill_grace = float(kill_grace)  # for what a task leaves behind when it ends
        self.stops = Stops()
        self._table = None  # (ProcessTable) reused while re-adopting
        self._preparer = _Preparer()
        self._epoll = select.epoll()
        self._watched = {}  # pidfd -> (handle, Popen or None)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="slotrun-exit-watcher", daemon=True)
        self._thread.start()

    # -- starting -----------------------------------------------------------------------

    def prepare(self, run_dirs):
        """Make these attempts' run folders (with their log file and record) ahead of their
        start, on the preparer's thread; a folder not ready in time is made by ``start``."""
        self._preparer.ask(run_dirs)

    def discard(self, run_dir):
        """Forget a run folder asked for with ``prepare`` whose attempt will not start now
        (cancelled, skipped): it is removed if nothing was written in it."""
        self._preparer.discard(run_dir)

    def start(self, spec):
        """Start one attempt; return its Handle (raises OSError if it cannot start)."""
        self._preparer.taken(spec.run_dir)
        # Exported by the wrapper: every process of the task inherits them; MARKER even past
        # setsid.
        variables = [f"{k}={v}" for k, v in spec.env.items()]
        variables.append(f"{MARKER}={spec.run_dir}")
        log_path = os.path.join(spec.run_dir, LOG_NAME)
        try:
            log_fd = os.open(log_path, _OPEN_FLAGS, 0o644)  # made ahead: opened, not created
        except FileNotFoundError:
            make_run_dir(spec.run_dir)
            log_fd = os.open(log_path, _OPEN_FLAGS, 0o644)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "slotrun-task", spec.run_dir, *variables, "--",
                 *spec.argv],
                cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=log_fd,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        finally:
            os.close(log_fd)
        handle = ChildHandle(spec.task_id, spec.attempt_id, proc.pid, None, boot_id(),
                             spec.run_dir, spec.node)
        self._watch_pid(handle, proc)
        return handle

    def adopt(self, record):
        """Re-adopt a recorded attempt after an engine restart.

        Returns (handle, None) when its process still runs (its exit is reported later
        through on_exit), or (None, exit_code) when it already ended (exit_code None when
        nothing says how it ended).
        """
        run_dir = record["run_dir"]
        pid = record.get("pid")
        if not pid:
            pid = read_record(run_dir).pid
        if not pid or record.get("boot_id") not in (None, "", boot_id()):
            return None, read_exit_code(run_dir)
        start = process_start_time(pid)
        if start is not None and (record.get("pid_start") in (None, start)):
            handle = Handle(record["task_id"], record["id"], pid, start, boot_id(), run_dir,
                            record.get("node", ""))
            if self._watch_pid(handle, None):
                return handle, None
        # The wrapper is gone. Whatever of the task still runs (it ended while no engine
        # watched, or an engine died while stopping it) is stopped before its end is reported.
        code = read_exit_code(run_dir)
        tree = TaskTree(pid, record.get("pid_start"), run_dir)
        if not any(not f.zombie for f in find_processes(tree, self._recent_table()).values()):
            return None, code
        handle = Handle(record["task_id"], record["id"], pid, record.get("pid_start"), boot_id(),
                        run_dir, record.get("node", ""))
        job = self.stops.stop(handle.attempt_id, tree, self.kill_grace)
        job.add_done_callback(lambda j: self._report_stopped(handle, code, j))
        return handle, None

    def _recent_table(self):
        if self._table is None or time.monotonic() - self._table.taken > _TABLE_REUSE_S:
            self._table = ProcessTable()
        return self._table

    def _watch_pid(self, handle, proc):
        try:
            pidfd = os.pidfd_open(handle.pid)
        except ProcessLookupError:
            if proc is None:
                return False
            pidfd = None
        except OSError as e:  # no file descriptors left, say
            if proc is None:
                raise
            log.warning("cannot watch task %s's process through a pidfd (%s); waiting for it "
                        "on a thread", handle.task_id, e)
            pidfd = None
        if pidfd is None:  # our child (ended, or not watchable): a thread waits for it
            threading.Thread(target=self._report, args=(handle, proc, None), daemon=True).start()
            return True
        with self._lock:
            self._watched[pidfd] = (handle, proc)
        try:
            self._epoll.register(pidfd, select.EPOLLIN)
        except OSError:
            with self._lock:
                self._watched.pop(pidfd, None)
            os.close(pidfd)
            if proc is None:
                raise
            threading.Thread(target=self._report, args=(handle, proc, None), daemon=True).start()
        return True

    # -- watching -----------------------------------------------------------------------

    def _watch(self):
        while not self._closed:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):
                if self._closed:
                    return
                log.exception("exit watcher poll failed; retrying")
                time.sleep(0.1)
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    entry = self._watched.pop(fd, None)
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
                if entry is None:
                    continue
                handle, proc = entry
                try:
                    self._report(handle, proc, fd)
                except Exception:  # noqa: BLE001 - the watcher must survive anything
                    log.exception("reporting the exit of task %s failed", handle.task_id)

    def _report(self, handle, proc, pidfd):
        code = None
        if proc is not None:
            handle.pid_start  # noqa: B018 - read now, while the pid still names the process
            rc = proc.wait()
            # A negative code: the wrapper itself was killed (cancel); report it as a shell would.
            code = 128 - rc if rc < 0 else rc
        else:
            code = read_exit_code(handle.run_dir)
        # When the wrapper wrote the exit down (read here, off the scheduler thread).
        handle.extra["ended_at"] = exit_time(handle.run_dir)
        if pidfd is not None:
            os.close(pidfd)
        job = self.stops.after_exit(handle.attempt_id, self._tree(handle), self.kill_grace,
                                    adopted=proc is None)
        if job is None:  # the common case: nothing left, the slot is free now
            self.on_exit(handle, code)
        else:
            job.add_done_callback(lambda j: self._report_stopped(handle, code, j))

    def _report_stopped(self, handle, code, job):
        handle.extra.update(stopped=len(job.found), killed=len(job.killed), grace=job.grace)
        self.on_exit(handle, code)

    @staticmethod
    def _tree(handle):
        return TaskTree(handle.pid, handle.pid_start, handle.run_dir)

    # -- stopping -----------------------------------------------------------------------

    def stop(self, handle, grace=5.0, wait=False):
        """Stop every process of a task (its session, and those that left it carrying its
        marker): SIGTERM now, SIGKILL after ``grace`` seconds; return the stop job."""
        job = self.stops.stop(handle.attempt_id, self._tree(handle), grace)
        if wait:
            job.wait()
        return job

    def close(self):
        """Stop watching (running tasks keep running); remove the run folders made ahead
        for attempts that did not start."""
        self._preparer.close()
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout=2)
        with self._lock:
            fds = list(self._watched)
            self._watched.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
