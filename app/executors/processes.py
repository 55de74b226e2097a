"""A task's processes: every process of its session, found, stopped and reaped together.

Each task runs under a wrapper that starts a new session, so the wrapper's pid is the task's
session id and process group id, and every process of the task inherits ``MARKER`` (the path
of the attempt's run folder). A task's processes are those of its session, plus any that left
it (``setsid``, a daemon's double fork) but still carry the marker.

When the engine's process is a child subreaper (``become_subreaper``, which the server and the
headless CLI call), every orphan of a task is reparented to it rather than to init. That makes
the check at a task's end exact and cheap: a signal 0 to the task's group, plus one read of this
process's own children list, without reading all of /proc. Only when that check finds something,
or when a stop is asked for, is /proc scanned (off the scheduler thread).
"""

import ctypes
import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger(__name__)

MARKER = "SLOTRUN_RUN_DIR"  # inherited by every process of a task: the attempt's run folder

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_libc = None
_BOOT_ID = None


# Per process (a fork inherits neither the kernel's flag nor the children file).
class _PerProcess(NamedTuple):
    """A fact of one process, cached: a forked child asks again (its pid differs)."""

    pid: int
    value: object


_subreaper = _PerProcess(0, False)
_children = _PerProcess(0, None)  # value: an open descriptor of /proc/<pid>/.../children
_children_lock = threading.Lock()


# -- process facts ------------------------------------------------------------------------------

def _psutil():
    """Return the psutil module, imported on first use: only a scan of /proc (a stop, a leftover
    check that found something, a re-adoption) needs it, and importing it would add about a
    tenth of multi-run.py's time to its first start."""
    import psutil

    return psutil


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


def process_start_time(pid, zombie=False):
    """Return a process's start time in clock ticks since boot, or None if it is gone (or, unless
    ``zombie``, has ended and waits to be reaped: a child of ours is still that process)."""
    # Read by hand, not through psutil: this runs on every start (on the path from one task's
    # exit to the next start), where psutil.Process(pid).create_time() costs about 2.5x more.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)  # one read: no file object (a third less time)
        finally:
            os.close(fd)
    except OSError:
        return None
    try:
        fields = data[data.rindex(b")") + 2:].split(None, 20)
        if fields[0] == b"Z" and not zombie:
            return None  # a zombie has finished
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def group_alive(pgid):
    """Return True while any process of the group exists (a zombie not yet reaped counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_marker(pid, marker):
    """Return True if a process inherited MARKER=marker (False: another, none, gone, unreadable)."""
    # Read by hand: this runs at a task's exit for each orphan the engine holds (in a server,
    # its pattern helper too), where psutil's Process + environ() cost about 5x more.
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return False
    entry = f"{MARKER}={marker}\0".encode()
    return data.startswith(entry) or b"\0" + entry in data


# -- the child subreaper ------------------------------------------------------------------------

def _prctl():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl


def become_subreaper():
    """Make this process the reaper of its orphaned descendants (Linux); return True if it is.

    Call it only in a process whose children are slotrun's (the server, the headless CLI): an
    orphan of a task is then reparented here, so the engine finds it, stops it with its task and
    reaps it. Exit statuses of other children are never taken: only processes that belong to a
    task (by session or marker) are ever reaped here.
    """
    global _subreaper
    try:
        if _prctl()(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("could not become a child subreaper: %s", os.strerror(ctypes.get_errno()))
            return False
    except (OSError, AttributeError):  # not Linux: no prctl
        return False
    _subreaper = _PerProcess(os.getpid(), True)
    return True


def is_subreaper():
    """Return True when this process is a child subreaper (asked once per process)."""
    global _subreaper
    pid = os.getpid()
    if _subreaper.pid != pid:
        value = ctypes.c_int(0)
        try:
            ok = _prctl()(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) == 0
        except (OSError, AttributeError):
            ok = False
        _subreaper = _PerProcess(pid, ok and bool(value.value))
    return _subreaper.value


def own_orphans():
    """Return the pids of this process's children that the kernel gave it as a subreaper.

    Orphans go to the subreaper's first live thread, the main thread; the executors start task
    wrappers from other threads, so this list holds adopted orphans (and whatever the main thread
    itself started).
    """
    global _children
    pid = os.getpid()
    fd = _children.value if _children.pid == pid else None
    if fd is None:
        with _children_lock:  # kept open: a pread costs far less than an open on every exit
            if _children.pid != pid:
                try:
                    _children = _PerProcess(pid, os.open(
                        f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    return None
            fd = _children.value
    try:
        size = 1 << 15  # room for thousands of pids; grown if ever filled
        data = os.pread(fd, size, 0)
        while len(data) == size:
            size *= 4
            data = os.pread(fd, size, 0)
        return [int(x) for x in data.split()]
    except (OSError, ValueError):
        return None


# -- one task's processes ----------------------------------------------------------------------

@dataclass(frozen=True)
class TaskTree:
    """How to recognise the processes of one attempt."""

    sid: int  # the wrapper's pid: the task's session id and process group id
    start: int | None  # the wrapper's start time: tells the session from a reuse of its id
    marker: str  # the attempt's run folder, inherited as MARKER


@dataclass(frozen=True)
class Found:
    """One process of a task, as last seen."""

    pid: int
    ppid: int
    zombie: bool
    started: float  # psutil's create_time: with the pid, names one process


def _session_is_ours(tree):
    # The id of a session stays taken while any member lives; it names another session only if
    # the wrapper's pid was reused by a new process (alive, with another start time; with no
    # start time recorded, any live process under that pid is taken as a stranger).
    start = process_start_time(tree.sid)
    return start is None or start == tree.start


def _belongs(pid, tree, by_session):
    try:
        if by_session and os.getsid(pid) == tree.sid:
            return True
    except OSError:
        return False
    return bool(tree.marker) and has_marker(pid, tree.marker)


def may_have_leftovers(tree, adopted):
    """Return True when processes of a task may remain once its wrapper was reaped.

    Cheap, for the path from an exit to the next start: a signal 0 to the group and, in a
    subreaper, a look at this process's adopted orphans; no scan of /proc. ``adopted``: the
    wrapper was not started by this process (its orphans went elsewhere), so only a scan tells.
    """
    if group_alive(tree.sid):
        return True
    if adopted:
        return True
    if not is_subreaper():
        return False  # orphans that left the group went to another reaper: not seen here
    orphans = own_orphans()
    if orphans is None:
        return True  # cannot tell without the children list: scan
    by_session = None
    for pid in orphans:
        if by_session is None:
            by_session = _session_is_ours(tree)
        if _belongs(pid, tree, by_session):
            return True
    return False


def find_processes(tree, table=None):
    """Return {pid: Found} of every process (zombies included) of a task tree; scans /proc.

    ``table``: a ``ProcessTable`` read earlier, to match many trees against one scan.
    """
    if table is None:
        table = ProcessTable()
    psutil = _psutil()
    by_session = tree.sid > 1 and _session_is_ours(tree)
    out = {}
    for e in table.entries:
        if (by_session and e.sid == tree.sid) or (tree.marker and e.marker == tree.marker):
            try:
                with e.proc.oneshot():
                    out[e.pid] = Found(e.pid, e.proc.ppid(),
                                       e.proc.status() == psutil.STATUS_ZOMBIE,
                                       e.proc.create_time())
            except psutil.Error:
                continue  # gone meanwhile
    return out


@dataclass(frozen=True)
class _Entry:
    pid: int
    sid: int
    marker: str | None
    proc: object  # a psutil.Process


class ProcessTable:
    """One scan of the machine's processes: the session and marker of each."""

    def __init__(self):
        psutil = _psutil()
        self.taken = time.monotonic()
        me = os.getpid()
        entries = []
        # Only what every process needs (its session, its marker); the rest is read for the
        # few that match. Not psutil.process_iter: its shared cache of Process objects would be
        # used by stop jobs on several threads at once.
        for pid in psutil.pids():
            if pid == me:
                continue
            try:
                sid = os.getsid(pid)
                proc = psutil.Process(pid)
            except (OSError, psutil.Error):
                continue
            try:
                marker = proc.environ().get(MARKER)
            except (OSError, psutil.Error):  # not ours to read, or a zombie
                marker = None
            entries.append(_Entry(pid, sid, marker, proc))
        self.entries = entries


# -- stopping -------------------------------------------------------------------------------------

def _pidfd(pid, tree, by_session):
    """Open a pidfd to ``pid`` if it still belongs to the tree (a pid may be reused meanwhile)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if _belongs(pid, tree, by_session):
        return fd
    os.close(fd)
    return None


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _reap_seen(seen, live, me):
    """Reap the processes seen alive earlier that are now zombies adopted by this process.

    A zombie's environment can no longer be read, so one that had left the session is known
    only from having been seen; its start time proves the pid was not reused meanwhile.
    """
    psutil = _psutil()
    for pid, started in list(seen.items()):
        if pid in live:
            continue
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                if (p.status() == psutil.STATUS_ZOMBIE and p.ppid() == me
                        and p.create_time() == started):
                    _reap(pid)
                    del seen[pid]
        except psutil.Error:
            del seen[pid]


class StopJob:
    """Stops every process of one task tree: SIGTERM now, SIGKILL once the grace is over, until
    none is left; reaps those this process adopted. Runs on its own thread."""

    def __init__(self, tree, grace, name="task"):
        self.tree = tree
        self.grace = grace
        self.deadline = time.monotonic() + grace
        self.found = set()  # pids of the task's processes seen alive (the wrapper not counted)
        self.killed = set()  # pids that got SIGKILL
        self.done = threading.Event()
        self.finished_at = None
        self._callbacks = []
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name=f"slotrun-stop-{name}", daemon=True)

    def start(self):
        """Start stopping."""
        self._thread.start()
        return self

    def hurry(self, grace):
        """Move SIGKILL forward to ``grace`` seconds from now if that is sooner."""
        with self._lock:  # self.grace stays the grace the stop was asked with (for messages)
            self.deadline = min(self.deadline, time.monotonic() + grace)
            if self._wake is not None:
                os.eventfd_write(self._wake, 1)

    def add_done_callback(self, fn):
        """Call ``fn(job)`` once every process is gone (at once if they already are)."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def wait(self, timeout=None):
        """Wait until every process is gone; return True if they are."""
        return self.done.wait(timeout)

    def _run(self):
        try:
            self._stop_all()
        except Exception:  # noqa: BLE001 - the task's end must still be reported
            log.exception("stopping the processes of %s failed", self.tree.marker)
        finally:
            with self._lock:
                self.finished_at = time.monotonic()
                self.done.set()
                callbacks, self._callbacks = self._callbacks, []
                os.close(self._wake)
                self._wake = None
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:  # noqa: BLE001
                    log.exception("a stop callback failed")

    def _stop_all(self):
        tree = self.tree
        me = os.getpid()
        termed = set()
        denied = set()  # processes this user may not signal (a setuid program): not waited for
        seen = {}  # pid -> start time of the processes seen alive that this process may reap
        warned = False
        while True:
            by_session = _session_is_ours(tree)
            live = []
            for f in find_processes(tree).values():
                if not f.zombie:
                    live.append(f.pid)
                    if f.pid != tree.sid and f.pid not in seen:
                        seen[f.pid] = f.started
                elif f.ppid == me and f.pid != tree.sid:
                    _reap(f.pid)  # an orphan adopted here; the wrapper is its Popen's to reap
            _reap_seen(seen, set(live), me)
            live = [p for p in live if p not in denied]
            if not live:
                return
            self.found.update(p for p in live if p != tree.sid)
            now = time.monotonic()
            kill = now >= self.deadline
            sig = signal.SIGKILL if kill else signal.SIGTERM
            if by_session:
                try:
                    os.killpg(tree.sid, sig)
                except OSError:
                    pass
            poller = select.poll()
            poller.register(self._wake, select.POLLIN)
            fds = []
            for pid in live:
                fd = _pidfd(pid, tree, by_session)
                if fd is None:
                    continue
                fds.append(fd)
                if kill or pid not in termed:
                    try:
                        signal.pidfd_send_signal(fd, sig)
                    except PermissionError:
                        log.warning("not allowed to signal process %s of %s; not waiting for it",
                                    pid, tree.marker)
                        denied.add(pid)
                        os.close(fd)
                        fds.pop()
                        continue
                    except OSError:
                        pass
                    termed.add(pid)
                    if kill and pid != tree.sid:
                        self.killed.add(pid)
                poller.register(fd, select.POLLIN)
            if kill and not warned and now > self.deadline + 10:
                warned = True
                log.warning("processes %s of %s still run 10 s after SIGKILL", sorted(live),
                            tree.marker)
            # Look again once all of these have ended (they may have left children), when
            # SIGKILL is due, or after a second (processes forked meanwhile get their signal).
            until = now + (1.0 if kill else max(0.0, min(self.deadline - now, 1.0)))
            try:
                if fds:
                    self._wait_all(poller, len(fds), until)
                else:
                    time.sleep(0.01)  # each one vanished between the scan and its pidfd
            finally:
                for fd in fds:
                    os.close(fd)

    def _wait_all(self, poller, pending, until):
        """Wait until ``pending`` pidfds are readable, ``until`` passes or a hurry wakes us."""
        while pending > 0:
            left = until - time.monotonic()
            if left <= 0:
                return
            for fd, _ in poller.poll(left * 1000):
                if fd == self._wake:
                    try:
                        os.eventfd_read(self._wake)
                    except OSError:
                        pass
                    return  # the deadline moved: look again now
                poller.unregister(fd)
                pending -= 1


class Stops:
    """The stop jobs of one executor, one per attempt key."""

    def __init__(self):
        self._jobs = {}
        self._lock = threading.Lock()

    def stop(self, key, tree, grace):
        """Stop every process of a task tree (SIGTERM now, SIGKILL after ``grace`` s); return
        the job (an existing one only has its SIGKILL moved forward if that is sooner)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.done.is_set():
                fresh = False
            else:
                self._prune()
                job = self._jobs[key] = StopJob(tree, grace, str(key))
                fresh = True
        if fresh:
            job.start()
        else:
            job.hurry(grace)
        return job

    def after_exit(self, key, tree, grace, adopted):
        """Return the job that stops what a task left once its wrapper was reaped, or None
        when nothing is left (decided without a scan when the engine is a subreaper)."""
        with self._lock:
            job = self._jobs.pop(key, None)
        if job is not None:
            return job
        if not may_have_leftovers(tree, adopted):
            return None
        return self.stop(key, tree, grace)  # registered: a cancel meanwhile joins this job

    def _prune(self):
        # Jobs of stops that raced with their task's end stay until here.
        now = time.monotonic()
        for k in [k for k, j in self._jobs.items()
                  if j.done.is_set() and now - (j.finished_at or now) > 60]:
            del self._jobs[k]

