"""Socket.IO: live task, batch, slot and device updates, and followed log tails.

The engine publishes from its scheduler thread; ``Emitter`` takes those events off a queue
on its own thread and sends them coalesced, so publishing never blocks the scheduler and a
burst of changes costs the browsers a bounded number of messages: task changes go out as
one ``task_list`` message per flush (at most ``TASK_INTERVAL`` apart), serialised once and
shared by every client. A client that falls behind (its outgoing queue grows) is skipped
until it has caught up, then told to re-fetch (a ``tasks`` notice), so every client ends up
with every final state. ``LogPusher`` is the one
thread that reads followed logs: every ``log_push_interval`` seconds it sends each followed
task's new bytes (at most ``log_push_max_bytes``) to the task's room.
"""

import logging
import os
import queue
import threading
import time

from flask import request
from flask_socketio import ConnectionRefusedError, emit

from ..errors import SlotrunError
from ..logs import LOG_NAME, read_from
from .access import authorize
from .api import batch_json, device_list, task_json
from .auth import forget_socket, recheck_sockets, sign_in_socket
from .summary import queue_payload

log = logging.getLogger(__name__)

NAMESPACE = "/"
LOG_TAIL_LINES = 500  # lines sent when a client starts following a log
MAX_TAIL_LINES = 10000
LOG_TAIL_BYTES = 1024 * 1024


def room_of(task_id):
    """Return the Socket.IO room of a task's log followers."""
    return f"task:{task_id}"


# -- handlers -------------------------------------------------------------------------------------

def register(socketio, slotrun):
    """Attach the Socket.IO handlers and start the emitter and log threads for one app."""
    slotrun.emitter = Emitter(socketio, slotrun)
    slotrun.logs = LogPusher(socketio, slotrun)
    slotrun.runtime.add_listener(slotrun.emitter.publish)
    slotrun.emitter.start()
    slotrun.logs.start()

    @socketio.on("connect")
    def on_connect(auth=None):
        """Accept a signed-in client and send it the queue state and the devices at once."""
        try:
            sign_in_socket(slotrun, request.sid, auth)
            authorize("socket.connect")
        except SlotrunError as e:
            forget_socket(slotrun, request.sid)
            raise ConnectionRefusedError(e.message) from None
        slotrun.clients.add(request.sid)
        emit("queue", queue_payload(slotrun))
        emit("devices", {"devices": device_list(slotrun)})
        slotrun.emitter.wake()

    @socketio.on("disconnect")
    def on_disconnect(reason=None):
        """Forget a client's follows."""
        slotrun.clients.discard(request.sid)
        slotrun.logs.drop(request.sid)
        forget_socket(slotrun, request.sid)

    @socketio.on("follow")
    def on_follow(data=None):
        """Join a task's log room; the last lines are sent at once as a "log" with reset."""
        task_id = _task_arg(data)
        lines = _lines_arg(data)
        task = slotrun.store.get_task(task_id)
        authorize("log.follow", task)
        slotrun.logs.follow(request.sid, task_id, lines)
        return {"ok": True, "task": task_id}

    @socketio.on("unfollow")
    def on_unfollow(data=None):
        """Leave a task's log room."""
        task_id = _task_arg(data)
        task = slotrun.store.get_task(task_id)
        authorize("log.follow", task)
        slotrun.logs.unfollow(request.sid, task_id)
        return {"ok": True, "task": task_id}

    @socketio.on_error_default
    def on_error(e):
        """Answer a failed event with {"error": ...} (its acknowledgement)."""
        if isinstance(e, SlotrunError):
            return {"error": e.message, "status": e.status}
        log.exception("Socket.IO event failed")
        return {"error": "internal error: the event failed; the details are in the server's log",
                "status": 500}


def _task_arg(data):
    value = data.get("task") if isinstance(data, dict) else None
    if isinstance(value, str) and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise SlotrunError('send {"task": ID} with a task id (a whole number from 1 up)')
    return value


def _lines_arg(data):
    lines = data.get("lines", LOG_TAIL_LINES)
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= MAX_TAIL_LINES:
        raise SlotrunError(f"lines must be a whole number from 1 to {MAX_TAIL_LINES}")
    return lines


# -- the emitter ----------------------------------------------------------------------------------

class Emitter:
    """Sends engine events to the browsers from its own thread, coalesced."""

    SUMMARY_INTERVAL = 0.5  # batch progress and queue counts: at most twice a second
    SLOTS_INTERVAL = 0.25
    TASK_INTERVAL = 0.1  # task changes: one list at most this often (the first one at once)
    DEDUPE_OVER = 200  # a flush holding more task changes keeps only each task's latest
    BURST_CAP = 1000  # more changed tasks than this in one flush: one "tasks" notice instead
    LAG_PACKETS = 64  # a client with more packets than this waiting to be sent is behind
    RECHECK_INTERVAL = 5.0  # seconds between checks that connected clients are still signed in

    def __init__(self, socketio, slotrun):
        self.socketio = socketio
        self.slotrun = slotrun
        self.q = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="slotrun-emitter", daemon=True)
        self.new_batches = []
        self.dirty_batches = set()
        self.counts_dirty = False
        self.queue_now = False
        self.slots = None
        self.last_summary = 0.0
        self.last_slots = 0.0
        self.next_devices = None
        self.next_recheck = 0.0
        self.tasks = []  # task changes not sent yet, oldest first
        self.last_tasks = 0.0
        self.behind = {}  # sid -> batch ids whose changes it missed while it lagged

    def start(self):
        """Start the emitter thread."""
        self._thread.start()

    def publish(self, event, payload):
        """Take an engine event (never blocks: the scheduler thread calls this)."""
        self.q.put((event, payload))

    def wake(self):
        """Make the thread look at its schedule now (a client connected)."""
        self.q.put(("_wake", None))

    def stop(self):
        """Stop the thread."""
        self._stopped = True
        self.q.put(("_stop", None))
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self):
        backoff = 0.05
        while not self._stopped:
            try:
                self._step()
                backoff = 0.05
            except Exception:  # noqa: BLE001 - the emitter must never die silently
                log.exception("emitting events failed; retrying in %.2f s", backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5)

    def _deadline(self):
        if not self.slotrun.clients:
            return None
        now = time.monotonic()
        times = [self.next_devices if self.next_devices is not None else now]
        if self.tasks:
            times.append(self.last_tasks + self.TASK_INTERVAL)
        if self.counts_dirty or self.dirty_batches:
            times.append(self.last_summary + self.SUMMARY_INTERVAL)
        if self.slots is not None:
            times.append(self.last_slots + self.SLOTS_INTERVAL)
        if self.behind:
            times.append(now + self.TASK_INTERVAL)  # look again whether they caught up
        return max(0.0, min(times) - now)

    def _step(self):
        items = []
        try:
            items.append(self.q.get(timeout=self._deadline()))
        except queue.Empty:
            pass
        while len(items) < 100000:
            try:
                items.append(self.q.get_nowait())
            except queue.Empty:
                break
        for event, payload in items:
            if event == "task":
                self.tasks.append(payload)
                self.dirty_batches.add(payload["batch_id"])
                self.counts_dirty = True
            elif event == "batch":
                self.new_batches.append(payload["id"])
                self.counts_dirty = True
            elif event == "settled":
                # Ends are announced before they are written down; recount once they are.
                self.dirty_batches.update(payload["batches"])
                self.counts_dirty = True
            elif event == "slots":
                self.slots = payload
            elif event == "queue":
                self.queue_now = True
            elif event == "_stop":
                return
        if not self.slotrun.clients:
            # Nobody listens: drop the backlog; a client that connects fetches fresh state.
            self.new_batches, self.dirty_batches = [], set()
            self.counts_dirty = self.queue_now = False
            self.slots = None
            self.next_devices = None
            self.tasks = []
            self.behind = {}
            return
        self._flush()

    def _flush(self):
        s = self.slotrun
        now = time.monotonic()
        if s.auth and now >= self.next_recheck:
            # A token revoked or a user removed elsewhere (the CLI) ends its live connections.
            recheck_sockets(s)
            self.next_recheck = now + self.RECHECK_INTERVAL
        usage = s.engine.usage()
        for bid in self.new_batches:
            self._emit("batch", batch_json(s.store.get_batch(bid), usage, s.store))
            self.dirty_batches.discard(bid)
        self.new_batches = []
        if self.tasks and now - self.last_tasks >= self.TASK_INTERVAL:
            tasks, self.tasks = self.tasks, []
            self._emit_tasks(tasks)
            self.last_tasks = now
        elif self.behind:
            self._emit_tasks([])  # tell the clients that caught up meanwhile
        now = time.monotonic()
        due = now - self.last_summary >= self.SUMMARY_INTERVAL
        if (self.counts_dirty or self.dirty_batches) and due:
            for bid in sorted(self.dirty_batches):
                self._emit("batch", batch_json(s.store.get_batch(bid), usage, s.store))
            self.dirty_batches = set()
            self.queue_now = self.counts_dirty = True
            self.last_summary = now
        slots_due = self.slots is not None and now - self.last_slots >= self.SLOTS_INTERVAL
        if slots_due:
            # The devices' pips and the summary tiles move together: one usage, one flush.
            self._emit("slots", usage)
            self.slots = None
            self.last_slots = now
            self.queue_now = True
        if self.queue_now:  # a pause / resume is shown at once; counts ride along
            self._emit("queue", queue_payload(s, usage))
            self.queue_now = self.counts_dirty = False
        if self.next_devices is None:
            self.next_devices = now + float(s.settings["device_refresh"])  # connect sent them
        elif now >= self.next_devices:
            refresh = float(s.settings["device_refresh"])
            self._emit("devices", {"devices": device_list(s, max_age=refresh / 2)})
            self.next_devices = now + refresh

    def _emit_tasks(self, tasks):
        """Send task changes as one list to every client keeping up; tell the others, once
        they have caught up, to re-fetch (a "tasks" notice)."""
        if len(tasks) > self.DEDUPE_OVER:
            latest = {}
            for t in tasks:
                latest.pop(t["id"], None)
                latest[t["id"]] = t
            tasks = list(latest.values())
        batches = {t["batch_id"] for t in tasks}
        lagging = self._lagging()
        for sid in lagging:
            self.behind.setdefault(sid, set()).update(batches)
        caught_up = [sid for sid in self.behind if sid not in lagging]
        for sid in caught_up:
            missed = self.behind.pop(sid, None)
            if missed is not None and sid in self.slotrun.clients:
                self._emit("tasks", {"changed": None, "batches": sorted(missed)}, to=sid)
        if not tasks:
            return
        if len(tasks) > self.BURST_CAP:
            self._emit("tasks", {"changed": len(tasks), "batches": sorted(batches)},
                       skip_sid=lagging)
            return
        self._emit("task_list", {"tasks": [task_json(t) for t in tasks]}, skip_sid=lagging)

    def _lagging(self):
        """Return the sids of the clients whose outgoing queue is longer than LAG_PACKETS."""
        server = self.socketio.server
        out = []
        try:
            eio = server.eio
            for sid in list(self.slotrun.clients):
                eio_sid = server.manager.eio_sid_from_sid(sid, NAMESPACE)
                sock = eio.sockets.get(eio_sid) if eio_sid else None
                q = getattr(sock, "queue", None)
                if q is not None and q.qsize() > self.LAG_PACKETS:
                    out.append(sid)
        except (AttributeError, KeyError, TypeError):  # another transport: nobody counted
            return []
        return out

    def _emit(self, event, payload, to=None, skip_sid=None):
        # One emit to many clients is serialised once and queued to each.
        self.socketio.emit(event, payload, namespace=NAMESPACE, to=to,
                           skip_sid=skip_sid or None)


# -- followed logs --------------------------------------------------------------------------------

class _Room:
    """One followed task: which log file, how far its followers have been sent."""

    def __init__(self, task_id, attempt, path):
        self.task_id = task_id
        self.attempt = attempt
        self.path = path
        self.offset = 0
        self.last_size = -1
        self.sids = set()
        self.memory = None  # (now, peak) last sent to the followers


def _attempt_log(store, task_id):
    att = store.latest_attempt(task_id)
    if att is None:
        return None, None
    return att["number"], os.path.join(att["run_dir"], LOG_NAME)


def complete_utf8(data):
    """Return how many leading bytes of ``data`` end on a UTF-8 character boundary."""
    n = len(data)
    i = n - 1
    while i >= 0 and n - i <= 4 and (data[i] & 0xC0) == 0x80:
        i -= 1
    if i < 0 or n - i > 4:
        return n
    lead = data[i]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 \
        else 4 if lead >> 3 == 0b11110 else 1
    return i if n - i < need else n


def tail_upto(path, end, lines, max_bytes=LOG_TAIL_BYTES):
    """Return (bytes, cut) of the last ``lines`` lines of a file before byte ``end``."""
    try:
        with open(path, "rb") as f:
            start = max(0, end - max_bytes)
            f.seek(start)
            data = f.read(end - start)
    except OSError:
        return b"", False
    parts = data.splitlines(keepends=True)
    cut = False
    if start > 0 and parts:
        parts = parts[1:]  # the first line was cut by the byte window
        cut = True
    if len(parts) > lines:
        parts = parts[-lines:]
        cut = True
    return b"".join(parts), cut


class LogPusher:
    """The one thread that reads followed logs and pushes their new bytes to each room."""

    def __init__(self, socketio, slotrun):
        self.socketio = socketio
        self.slotrun = slotrun
        self.interval = float(slotrun.settings["log_push_interval"])
        self.max_bytes = int(slotrun.settings["log_push_max_bytes"])
        self.rooms = {}  # task id -> _Room
        self.by_sid = {}  # sid -> {task id}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slotrun-log-push", daemon=True)

    def start(self):
        """Start the thread."""
        self._thread.start()

    def stop(self):
        """Stop the thread."""
        self._stopped.set()
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def follow(self, sid, task_id, lines):
        """Send ``sid`` the last lines of a task's log, then add it to the task's room."""
        store = self.slotrun.store
        with self.lock:
            room = self.rooms.get(task_id)
            new = room is None
            if new:
                attempt, path = _attempt_log(store, task_id)
                room = _Room(task_id, attempt, path)
                end = _size(path)
            else:
                end = room.offset  # the room's next push starts here: no gap, no repeat
            data, cut = tail_upto(room.path, end, lines) if room.path else (b"", False)
            if new:
                keep = complete_utf8(data)
                end -= len(data) - keep
                data = data[:keep]
                room.offset = end
                self.rooms[task_id] = room
            self.socketio.emit("log", {
                "task": task_id, "attempt": room.attempt, "data": data.decode("utf-8", "replace"),
                "offset": end, "truncated": cut, "reset": True}, to=sid, namespace=NAMESPACE)
            self.socketio.server.enter_room(sid, room_of(task_id), namespace=NAMESPACE)
            room.sids.add(sid)
            self.by_sid.setdefault(sid, set()).add(task_id)
        self.wake.set()

    def unfollow(self, sid, task_id):
        """Remove ``sid`` from a task's room."""
        with self.lock:
            try:
                self.socketio.server.leave_room(sid, room_of(task_id), namespace=NAMESPACE)
            except (KeyError, ValueError):
                pass
            self._forget(sid, task_id)

    def drop(self, sid):
        """Forget every follow of a disconnected client."""
        with self.lock:
            for task_id in list(self.by_sid.get(sid, ())):
                self._forget(sid, task_id)

    def _forget(self, sid, task_id):
        tasks = self.by_sid.get(sid)
        if tasks is not None:
            tasks.discard(task_id)
            if not tasks:
                del self.by_sid[sid]
        room = self.rooms.get(task_id)
        if room is not None:
            room.sids.discard(sid)
            if not room.sids:
                del self.rooms[task_id]

    def _run(self):
        backoff = 0.05
        while not self._stopped.is_set():
            try:
                if not self.rooms:
                    self.wake.wait()  # nothing followed: sleep until a follow (no polling)
                    self.wake.clear()
                    continue
                if self._stopped.wait(self.interval):
                    return
                with self.lock:
                    self._cycle()
                backoff = 0.05
            except Exception:  # noqa: BLE001 - the log thread must never die silently
                log.exception("pushing log tails failed; retrying in %.2f s", backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5)

    def _cycle(self):
        store = self.slotrun.store
        engine = self.slotrun.runtime.engine
        for room in list(self.rooms.values()):
            if engine is not None:
                self._push_memory(engine, room)
            attempt, path = _attempt_log(store, room.task_id)
            reset = False
            if attempt != room.attempt:
                # A retry started a new attempt: its log replaces what followers show.
                room.attempt, room.path, room.offset, room.last_size = attempt, path, 0, -1
                reset = True
            size = _size(room.path)
            if size < room.offset:  # the file was replaced or truncated: start over
                room.offset, reset = 0, True
            if size == room.offset and not reset:
                continue
            data, end, truncated = read_from(room.path, room.offset, self.max_bytes) \
                if room.path else (b"", 0, False)
            keep = complete_utf8(data)
            if keep < len(data) and size != room.last_size:
                # Hold back a character cut in half, unless the writer has stopped there.
                end -= len(data) - keep
                data = data[:keep]
            room.last_size = size
            if not data and not reset:
                continue
            room.offset = end
            self.socketio.emit("log", {
                "task": room.task_id, "attempt": room.attempt,
                "data": data.decode("utf-8", "replace"), "offset": end,
                "truncated": truncated, "reset": reset}, to=room_of(room.task_id),
                namespace=NAMESPACE)


    def _push_memory(self, engine, room):
        """Send a followed task's GPU memory (now, peak) when the engine's sample changed."""
        if room.task_id not in engine.view.running:
            return
        memory = engine.task_memory_now(room.task_id)
        if memory == room.memory or memory == (None, None):
            return
        room.memory = memory
        self.socketio.emit("memory", {"task": room.task_id, "memory_now": memory[0],
                                      "memory_peak": memory[1]}, to=room_of(room.task_id),
                           namespace=NAMESPACE)


def _size(path):
    if not path:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
