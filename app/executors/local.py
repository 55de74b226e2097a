"""The local executor: task processes on this machine, each in its own session.

A task runs under a tiny ``/bin/sh`` wrapper that records its pid, runs the command with
output going straight to the attempt's log file, and writes the exit code to a file when
the command ends. The engine therefore never sits between a task and its output, and a
task outlives an engine that is killed: the next engine re-adopts it by pid (checked
against its start time) and reads its exit code from the file.
"""

import logging
import os
import select
import signal
import subprocess
import threading
import time

from ..logs import LOG_NAME
from . import Handle

log = logging.getLogger(__name__)

# $1: run folder; the rest: the command, passed as arguments (never parsed by the shell).
WRAPPER = 'd=$1; shift; echo $$ > "$d/pid"; "$@"; c=$?; echo $c > "$d/exit"; exit $c'

_BOOT_ID = None


def boot_id():
    """Return this machine's boot id (pids are only comparable within one boot)."""
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = ""
    return _BOOT_ID


def process_start_time(pid):
    """Return a process's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        fields = data[data.rindex(b")") + 2:].split()
        if fields[0] == b"Z":
            return None  # a zombie has finished
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def read_exit_code(run_dir):
    """Return the exit code the wrapper wrote, or None when it wrote none."""
    try:
        with open(os.path.join(run_dir, "exit"), encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def group_alive(pgid):
    """Return True while any process of the group exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_tree(pgid, grace):
    """Stop a process group: SIGTERM, then SIGKILL once ``grace`` seconds have passed."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        log.warning("not allowed to signal process group %s", pgid)
        return
    deadline = time.monotonic() + grace
    delay = 0.005
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(delay)  # waiting out a grace period, not on the dispatch path
        delay = min(delay * 2, 0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalExecutor:
    """Starts, watches and stops task processes on this machine."""

    name = "local"

    def __init__(self, on_exit):
        self.on_exit = on_exit  # called as on_exit(handle, exit_code_or_None) from the watcher
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

    def start(self, spec):
        """Start one attempt; return its Handle (raises OSError if it cannot start)."""
        os.makedirs(spec.run_dir, exist_ok=True)
        env = dict(os.environ)
        env.update(spec.env)
        log_fd = os.open(os.path.join(spec.run_dir, LOG_NAME),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "slotrun-task", spec.run_dir, *spec.argv],
                cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        finally:
            os.close(log_fd)
        handle = Handle(spec.task_id, spec.attempt_id, proc.pid, process_start_time(proc.pid),
                        boot_id(), spec.run_dir, spec.node)
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
            try:
                with open(os.path.join(run_dir, "pid"), encoding="ascii") as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                pid = None
        if pid and record.get("boot_id") in (None, "", boot_id()):
            start = process_start_time(pid)
            if start is not None and (record.get("pid_start") in (None, start)):
                handle = Handle(record["task_id"], record["id"], pid, start, boot_id(), run_dir,
                                record.get("node", ""))
                if self._watch_pid(handle, None):
                    return handle, None
        return None, read_exit_code(run_dir)

    def _watch_pid(self, handle, proc):
        try:
            pidfd = os.pidfd_open(handle.pid)
        except ProcessLookupError:
            if proc is None:
                return False
            pidfd = None
        if pidfd is None:  # our child already ended and was reaped elsewhere: report now
            threading.Thread(target=self._report, args=(handle, proc, None), daemon=True).start()
            return True
        with self._lock:
            self._watched[pidfd] = (handle, proc)
        self._epoll.register(pidfd, select.EPOLLIN)
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
            rc = proc.wait()
            # A negative code: the wrapper itself was killed (cancel); report it as a shell would.
            code = 128 - rc if rc < 0 else rc
        else:
            code = read_exit_code(handle.run_dir)
        if pidfd is not None:
            os.close(pidfd)
        self.on_exit(handle, code)

    # -- stopping -----------------------------------------------------------------------

    def stop(self, handle, grace=5.0, wait=False):
        """Stop a task's whole process tree: SIGTERM, then SIGKILL after ``grace`` seconds."""
        t = threading.Thread(target=kill_tree, args=(handle.pid, grace),
                             name=f"slotrun-stop-{handle.task_id}", daemon=True)
        t.start()
        if wait:
            t.join()
        return t

    def close(self):
        """Stop watching (running tasks keep running)."""
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
