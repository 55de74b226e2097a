"""Done markers written off the scheduler thread.

A config whose run succeeded gets slotrun's done marker in its results folder (the folder
made first when the task wrote nothing there). On a disk where a file creation costs a
millisecond, that would stand between one task's exit and the next start; a thread of its
own makes them instead, in the order asked. The end itself is written down in the store only
once its marker exists (``Ticket.done``): a crash in between re-reads the same end from the
run folder and never runs the config again.

A marker that cannot be written (a results folder made unwritable) is logged and the end is
still written down, as before: the store keeps the run's success either way.
"""

import logging
import os
import queue
import threading

__all__ = ["DoneMarkers", "Ticket", "write_marker"]

log = logging.getLogger(__name__)

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class Ticket:
    """One marker asked for: ``done`` turns true once it was written (or failed, logged)."""

    __slots__ = ("folder", "name", "done")

    def __init__(self, folder, name):
        self.folder = folder
        self.name = name
        self.done = False


def write_marker(folder, name):
    """Create the marker ``name`` in ``folder`` (the folder too, when missing); log a failure."""
    path = os.path.join(folder, name)
    try:
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o644)
        except FileNotFoundError:  # the task wrote no results: its folder is made here
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, _OPEN_FLAGS, 0o644)
        os.close(fd)
    except OSError as e:
        log.warning("could not write the done marker in %s: %s", folder, e)


class DoneMarkers:
    """Writes done markers on a thread of its own; ``on_written()`` is called (from that
    thread) after each group of markers, so the engine writes their ends down."""

    def __init__(self, on_written):
        self.on_written = on_written
        self._q = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread = None
        self._closed = False

    def ask(self, folder, name):
        """Have a marker written; return its Ticket (written at once once closed)."""
        ticket = Ticket(folder, name)
        with self._lock:
            if self._closed:
                write = True
            else:
                write = False
                self._pending += 1
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="slotrun-markers",
                                                    daemon=True)
                    self._thread.start()
        if write:
            write_marker(folder, name)
            ticket.done = True
        else:
            self._q.put(ticket)
        return ticket

    def wait_idle(self, timeout):
        """Wait until every marker asked for is written; return False on a timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout=5.0):
        """Write what is asked, then stop the thread (later markers are written inline)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(None)
            thread.join(timeout)

    def _run(self):
        stop = False
        while not stop:
            group = [self._q.get()]
            while True:  # what else is asked by now: written, then announced once
                try:
                    group.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = None in group
            group = [t for t in group if t is not None]
            for ticket in group:
                try:
                    write_marker(ticket.folder, ticket.name)
                except Exception:  # noqa: BLE001 - its end must still be written down
                    log.exception("writing the done marker in %s failed", ticket.folder)
                ticket.done = True
            if not group:
                continue
            with self._idle:
                self._pending -= len(group)
                self._idle.notify_all()
            try:
                self.on_written()
            except Exception:  # noqa: BLE001 - the thread must survive its listener
                log.exception("announcing written done markers failed")
