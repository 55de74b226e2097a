"""The durable queue: every SQL statement of slotrun lives in this module (and the schema's
migrations in ``app/migrations.py``).

SQLite in WAL mode; one connection per thread; every write is one transaction. Opening a
``Store`` brings the database to the current schema version first (see app/migrations.py).
"""

import contextlib
import json
import os
import sqlite3
import threading
import time

from . import migrations
from .errors import Conflict, NotFound, StoreUnavailable
from .task import FINAL_STATES, QUEUED, RUNNING, STATES

TASK_COLUMNS = ("id, batch_id, owner, config, state, priority, seq, devices, memory, device, slot, "
                "attempts, queued_at, started_at, finished_at, exit_code, message, argv")


# Sort keys of list_tasks: (SQL expression, may be NULL) pairs, always followed by id. Only
# these fixed expressions ever reach ORDER BY; a "?" in one stands for the current time.
_STATE_RANK = ("CASE state " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STATES))
               + " END")
TASK_SORTS = {
    "id": (),
    "config": (("config", False),),
    "batch": (("batch_id", False),),
    "state": ((_STATE_RANK, False),),
    "device": (("device", True), ("slot", False)),
    "started_at": (("started_at", True),),
    "duration": (("COALESCE(finished_at, ?) - started_at", True),),
    "exit_code": (("exit_code", True),),
}


def _task(row):
    if row is None:
        return None
    d = dict(row)
    d["devices"] = json.loads(d["devices"])
    d["argv"] = json.loads(d["argv"]) if d.get("argv") else None
    d["batch"] = d["batch_id"]
    d["duration"] = (d["finished_at"] or time.time()) - d["started_at"] if d["started_at"] else None
    return d


def _where(batch_id=None, state=None, owner=None, search=None):
    """Return (" WHERE ...", args) of a task selection (an empty clause selects all)."""
    where, args = [], []
    if batch_id is not None:
        where.append("batch_id=?")
        args.append(batch_id)
    if state is not None:
        where.append("state=?")
        args.append(state)
    if owner is not None:
        where.append("owner=?")
        args.append(owner)
    if search:
        # A substring, not a pattern: the user's % and _ match themselves.
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("config LIKE ? ESCAPE '\\'")
        args.append(f"%{escaped}%")
    return (" WHERE " + " AND ".join(where)) if where else "", args


def _batch(row):
    if row is None:
        return None
    d = dict(row)
    d["devices"] = json.loads(d["devices"])
    d["use_gpu"] = bool(d["use_gpu"])
    d["overwrite"] = bool(d["overwrite"])
    return d


class Store:
    """The SQLite state of one workspace."""

    def __init__(self, path, timeout=30.0):
        """Open (or create) the database at ``path``, upgrading its schema first.

        Raises SlotrunError when the database is from a newer slotrun, or cannot be
        upgraded; ``self.upgrade`` says what was done (versions, backup copy).
        """
        self.path = path
        self.timeout = float(timeout)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._local = threading.local()
        self.upgrade = migrations.upgrade(path, timeout=self.timeout)
        self._conn().execute("PRAGMA journal_mode=WAL")

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
        return conn

    def schema_version(self):
        """Return the database's schema version (``PRAGMA user_version``)."""
        return migrations.schema_version(self._conn())

    def _write(self):
        if getattr(self._local, "group", False):
            return _Joined(self._conn())  # part of the group's transaction
        return _Tx(self._conn(), self.path, self._writer(), self._busy())

    def _writer(self):
        lock = self.__dict__.get("_writer_lock")
        if lock is None:
            with _WRITERS_LOCK:
                lock = _WRITERS.setdefault(os.path.realpath(self.path), threading.RLock())
            self._writer_lock = lock
        return lock

    def _busy(self):
        return getattr(self._local, "busy", self.timeout)

    @contextlib.contextmanager
    def grouped(self):
        """Make the writes done inside (on this thread) one transaction: one commit for
        them all, or none of them when one fails."""
        if getattr(self._local, "group", False):
            yield
            return
        with _Tx(self._conn(), self.path, self._writer(), self._busy()):
            self._local.group = True
            try:
                yield
            finally:
                self._local.group = False

    def set_busy_timeout(self, seconds):
        """Set how long this thread's writes wait for another writer before they give up."""
        self._conn().execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
        self._local.busy = float(seconds)

    def close(self):
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- the engine's own state ---------------------------------------------------------

    def get_state(self, key):
        """Return a value the engine keeps across restarts (e.g. the queue's pause), or None."""
        row = self._conn().execute("SELECT value FROM engine_state WHERE key=?",
                                   (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key, value):
        """Keep a value across restarts (None forgets it)."""
        with self._write() as c:
            if value is None:
                c.execute("DELETE FROM engine_state WHERE key=?", (key,))
            else:
                c.execute("INSERT INTO engine_state(key, value) VALUES(?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # -- batches and tasks ----------------------------------------------------------------

    def create_batch(self, batch, tasks):
        """Insert a batch and its tasks in one transaction; return (batch_id, task rows, created).

        ``batch`` may carry an ``idempotency_key`` (a batch of the same owner with that key
        already there is returned instead, ``created`` False) and ``headless`` (who queued it:
        a multi-run.py process). ``tasks``: dicts with config, config_text, state, devices,
        memory (and message, and ``bases``: {workspace path: text} of the bases it names).
        """
        now = time.time()
        key = batch.get("idempotency_key")
        priority = int(batch.get("priority", 0))
        devices_json = {}  # one JSON text per distinct device list (usually one per batch)
        files = {}  # hash -> text of every base named
        bases_json = {}  # one JSON text per distinct set of bases
        rows = []
        for i, t in enumerate(tasks):
            devices = tuple(t["devices"])
            dj = devices_json.get(devices) or devices_json.setdefault(
                devices, json.dumps(t["devices"]))
            bj = None
            if t.get("bases"):
                ident = tuple(sorted(t["bases"].items()))
                bj = bases_json.get(ident)
                if bj is None:
                    import hashlib  # imported here: ~5 ms that a batch without bases need not pay

                    named = {}
                    for path, text in ident:
                        digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
                        files[digest] = text
                        named[path] = digest
                    bj = bases_json[ident] = json.dumps(named, sort_keys=True)
            rows.append((batch["owner"], t["config"], t.get("config_text"), t["state"], priority,
                         i, dj, int(t.get("memory", 0)), now,
                         now if t["state"] in FINAL_STATES else None, t.get("message"), bj))
        # Everything is built before the transaction: the write lock is held for the inserts.
        try:
            with self._write() as c:
                cur = c.execute(
                    "INSERT INTO batches(owner, pattern, use_gpu, devices, overwrite, command, "
                    "priority, memory, max_retries, total, created_at, idempotency_key, headless) "
                    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (batch["owner"], batch["pattern"], int(batch["use_gpu"]),
                     json.dumps(batch["devices"]), int(batch["overwrite"]), batch["command"],
                     priority, int(batch.get("memory", 0)), int(batch.get("max_retries", 0)),
                     len(tasks), now, key, batch.get("headless")))
                batch_id = cur.lastrowid
                if files:
                    c.executemany("INSERT OR IGNORE INTO config_files(hash, text) VALUES(?, ?)",
                                  files.items())
                seq0 = c.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0] + 1
                c.executemany(
                    "INSERT INTO tasks(batch_id, owner, config, config_text, state, priority, "
                    "seq, devices, memory, queued_at, finished_at, message, bases) "
                    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    ((batch_id, *r[:5], seq0 + r[5], *r[6:]) for r in rows))
                first = c.execute("SELECT MIN(id) FROM tasks WHERE batch_id=?",
                                  (batch_id,)).fetchone()[0]
        except sqlite3.IntegrityError:
            existing = self.batch_by_key(batch["owner"], key) if key else None
            if existing is None:
                raise
            return existing["id"], self.batch_tasks(existing["id"]), False
        return batch_id, self.batch_tasks(batch_id, first), True

    def batch_by_key(self, owner, key):
        """Return the batch an owner submitted with an idempotency key, or None."""
        row = self._conn().execute("SELECT * FROM batches WHERE owner=? AND idempotency_key=?",
                                   (owner, key)).fetchone()
        return _batch(row)

    def batch_tasks(self, batch_id, first=None):
        """Return every task of a batch, in id order."""
        if first is None:
            first = self._conn().execute("SELECT MIN(id) FROM tasks WHERE batch_id=?",
                                         (batch_id,)).fetchone()[0]
        out = self._conn().execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE batch_id=? AND id>=? ORDER BY id",
            (batch_id, first or 0)).fetchall()
        return [_task(r) for r in out]

    def headless_queued(self):
        """Return [(task id, batch id, who queued it)] of queued tasks of headless runs."""
        return [(r[0], r[1], r[2]) for r in self._conn().execute(
            "SELECT t.id, t.batch_id, b.headless FROM tasks t JOIN batches b ON b.id=t.batch_id "
            "WHERE t.state=? AND b.headless IS NOT NULL ORDER BY t.id", (QUEUED,))]

    def get_batch(self, batch_id):
        """Return one batch with its counts per state, or raise NotFound."""
        row = self._conn().execute("SELECT * FROM batches WHERE id=?", (batch_id,)).fetchone()
        if row is None:
            raise NotFound(f"batch {batch_id} not found")
        b = _batch(row)
        b["counts"] = self.batch_counts([batch_id]).get(batch_id, {})
        return b

    def batch_counts(self, batch_ids):
        """Return {batch_id: {state: n}} for the given batches."""
        if not batch_ids:
            return {}
        out = {b: {} for b in batch_ids}
        marks = ",".join("?" * len(batch_ids))
        for row in self._conn().execute(
                f"SELECT batch_id, state, COUNT(*) FROM tasks WHERE batch_id IN ({marks}) "
                "GROUP BY batch_id, state", list(batch_ids)):
            out[row[0]][row[1]] = row[2]
        return out

    def batch_durations(self, batch_id):
        """Return (count, mean seconds) of the batch's finished attempts that ran to an end."""
        row = self._conn().execute(
            "SELECT COUNT(*), AVG(finished_at - started_at) FROM tasks WHERE batch_id=? AND "
            "state IN ('succeeded', 'failed') AND started_at IS NOT NULL", (batch_id,)).fetchone()
        return row[0], row[1]

    def list_batches(self, limit=50, offset=0, owner=None):
        """Return batches, newest first, with their counts per state."""
        sql = "SELECT * FROM batches"
        args = []
        if owner:
            sql += " WHERE owner=?"
            args.append(owner)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        rows = [_batch(r) for r in self._conn().execute(sql, args + [limit, offset])]
        counts = self.batch_counts([b["id"] for b in rows])
        for b in rows:
            b["counts"] = counts.get(b["id"], {})
        return rows

    def count_batches(self, owner=None):
        """Return the number of batches (of one owner)."""
        if owner:
            return self._conn().execute("SELECT COUNT(*) FROM batches WHERE owner=?",
                                        (owner,)).fetchone()[0]
        return self._conn().execute("SELECT COUNT(*) FROM batches").fetchone()[0]

    def get_task(self, task_id, with_text=False):
        """Return one task, or raise NotFound."""
        cols = TASK_COLUMNS + (", config_text" if with_text else "")
        row = self._conn().execute(f"SELECT {cols} FROM tasks WHERE id=?", (task_id,)).fetchone()
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return _task(row)

    def get_tasks(self, task_ids):
        """Return the tasks with these ids (in id order; unknown ids are left out)."""
        out = []
        ids = list(task_ids)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ",".join("?" * len(part))
            out += [_task(r) for r in self._conn().execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({marks}) ORDER BY id", part)]
        return out

    def list_tasks(self, batch_id=None, state=None, limit=50, offset=0, newest_first=True,
                   sort="id", order=None, owner=None, search=None):
        """Return (tasks, total) filtered by batch, state, owner and a config-path substring
        (``search``, case-insensitive), ordered by ``sort`` then id.

        ``sort`` is one of TASK_SORTS; ``order`` "asc" or "desc" (None: by ``newest_first``).
        Tasks without a value for the sort key (not started yet) come last either way.
        """
        if sort not in TASK_SORTS:
            raise ValueError(f"unknown sort key {sort!r}; valid: {', '.join(TASK_SORTS)}")
        if order is None:
            order = "desc" if newest_first else "asc"
        if order not in ("asc", "desc"):
            raise ValueError(f"unknown order {order!r}; valid: asc, desc")
        clause, args = _where(batch_id, state, owner, search)
        direction = order.upper()
        keys, key_args = [], []
        now = time.time()  # a running task's duration counts up to now
        for expr, nullable in TASK_SORTS[sort]:
            if nullable:
                keys.append(f"({expr}) IS NULL")
                key_args += [now] * expr.count("?")
            keys.append(f"{expr} {direction}")
            key_args += [now] * expr.count("?")
        keys.append(f"id {direction}")  # ties (and the default) in id order: stable pages
        order_by = ", ".join(keys)
        conn = self._conn()
        if sort == "id":  # the rowid order: no sorting at all, whatever the table's size
            rows = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks{clause} ORDER BY {order_by} "
                                "LIMIT ? OFFSET ?", args + [limit, offset]).fetchall()
        else:
            # Sort ids only, then read the page's rows: the sorter then carries no whole rows,
            # which halves the time of a deep page at 100,000 tasks.
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT id FROM tasks{clause} "
                f"ORDER BY {order_by} LIMIT ? OFFSET ?) ORDER BY {order_by}",
                args + key_args + [limit, offset] + key_args).fetchall()
        total = conn.execute(f"SELECT COUNT(*) FROM tasks{clause}", args).fetchone()[0]
        return [_task(r) for r in rows], total

    def select_tasks(self, selection):
        """Return (id, owner, state) of every task a ``TaskFilter`` selects, oldest first."""
        clause, args = _where(selection.batch, selection.state, selection.owner, selection.search)
        return [tuple(r) for r in self._conn().execute(
            f"SELECT id, owner, state FROM tasks{clause} ORDER BY id", args)]

    def get_tasks(self, task_ids):
        """Return the tasks with these ids (in id order; unknown ids are left out)."""
        out = []
        ids = sorted(set(task_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out += [_task(r) for r in self._conn().execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({','.join('?' * len(chunk))}) "
                "ORDER BY id", chunk)]
        return out

    def latest_run_dirs(self, task_ids):
        """Return {task id: run folder of its latest attempt} for the tasks that started."""
        ids = list(task_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r[0]: r[1] for r in self._conn().execute(
            f"SELECT a.task_id, a.run_dir FROM attempts a JOIN tasks t ON t.id=a.task_id "
            f"AND a.number=t.attempts WHERE a.task_id IN ({marks})", ids)}

    def owners(self):
        """Return [(owner, batches, tasks)] of everyone who submitted work, by name."""
        return [tuple(r) for r in self._conn().execute(
            "SELECT owner, COUNT(*), SUM(total) FROM batches GROUP BY owner ORDER BY owner")]

    def batch_finished_at(self, batch_id):
        """Return when the batch's last task ended (None if none has an end time)."""
        return self._conn().execute("SELECT MAX(finished_at) FROM tasks WHERE batch_id=?",
                                    (batch_id,)).fetchone()[0]

    def state_counts(self):
        """Return {state: n} over every task."""
        return {r[0]: r[1] for r in self._conn().execute(
            "SELECT state, COUNT(*) FROM tasks GROUP BY state")}

    def queued_tasks(self):
        """Return every queued task in queue order (for the scheduler's start-up)."""
        return [_task(r) for r in self._conn().execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE state=? ORDER BY seq", (QUEUED,))]

    def last_success(self, config):
        """Return {"id", "batch_id"} of the task that last succeeded with a config, or None."""
        row = self._conn().execute(
            "SELECT id, batch_id FROM tasks WHERE config=? AND state='succeeded' "
            "ORDER BY finished_at DESC LIMIT 1", (config,)).fetchone()
        return dict(row) if row else None

    def config_snapshot(self, task_id):
        """Return the YAML text a task was submitted with."""
        row = self._conn().execute("SELECT config_text FROM tasks WHERE id=?", (task_id,)).fetchone()
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return row[0]

    def config_bases(self, task_id):
        """Return {workspace path: text} of the bases a task's config named when submitted."""
        row = self._conn().execute("SELECT bases FROM tasks WHERE id=?", (task_id,)).fetchone()
        if row is None:
            raise NotFound(f"task {task_id} not found")
        if not row[0]:
            return {}
        named = json.loads(row[0])
        marks = ",".join("?" * len(named))
        texts = dict(self._conn().execute(
            f"SELECT hash, text FROM config_files WHERE hash IN ({marks})", list(named.values())))
        return {path: texts[h] for path, h in named.items() if h in texts}

    def start_attempt(self, task_id, number, device, slot, node, run_dir, argv, started_at):
        """Mark a task running and record its new attempt (before its process starts)."""
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO attempts(task_id, number, state, device, slot, node, run_dir, argv, "
                "started_at) VALUES(?,?,?,?,?,?,?,?,?)",
                (task_id, number, RUNNING, device, slot, node, run_dir, json.dumps(argv), started_at))
            c.execute("UPDATE tasks SET state=?, device=?, slot=?, attempts=?, started_at=?, "
                      "finished_at=NULL, exit_code=NULL, message=NULL, argv=? WHERE id=?",
                      (RUNNING, device, slot, number, started_at, json.dumps(argv), task_id))
            return cur.lastrowid

    def set_attempt_process(self, attempt_id, pid, pid_start, boot_id):
        """Record the process of a started attempt."""
        with self._write() as c:
            c.execute("UPDATE attempts SET pid=?, pid_start=?, boot_id=? WHERE id=?",
                      (pid, pid_start, boot_id, attempt_id))

    def request_stop(self, attempt_id, reason, when):
        """Record that a running attempt is being stopped (so a next engine finishes it)."""
        with self._write() as c:
            c.execute("UPDATE attempts SET stop_requested_at=?, stop_reason=? "
                      "WHERE id=? AND stop_requested_at IS NULL", (when, reason, attempt_id))

    def finish_attempt(self, attempt_id, task_id, state, exit_code, message, finished_at,
                       peak_memory=None, requeue=None):
        """Record how an attempt ended and move its task to that state, in one transaction.

        ``requeue`` ("front" or "back") puts the task back in the queue in the same
        transaction (an automatic retry), so the end and the retry are one durable step.
        Returns the task's row when it was requeued, else None.
        """
        with self._write() as c:
            c.execute("UPDATE attempts SET state=?, exit_code=?, message=?, finished_at=?, "
                      "peak_memory=COALESCE(?, peak_memory) WHERE id=?",
                      (state, exit_code, message, finished_at, peak_memory, attempt_id))
            c.execute("UPDATE tasks SET state=?, exit_code=?, message=?, finished_at=? WHERE id=?",
                      (state, exit_code, message, finished_at, task_id))
            if requeue:
                self._requeue(c, task_id, requeue == "front", message)
        return self.get_task(task_id) if requeue else None

    def unstart_attempt(self, attempt_id, task_id):
        """Undo an attempt whose process never started: forget it; the task is queued again
        in its old place."""
        with self._write() as c:
            gone = c.execute("DELETE FROM attempts WHERE id=? AND state=?",
                             (attempt_id, RUNNING)).rowcount
            if gone:
                c.execute("UPDATE tasks SET state=?, device=NULL, slot=NULL, "
                          "attempts=attempts-1, started_at=NULL, finished_at=NULL, "
                          "exit_code=NULL, message=NULL WHERE id=? AND state=?",
                          (QUEUED, task_id, RUNNING))

    def finish_queued(self, task_ids, state, message=None):
        """Move queued tasks straight to a final state (cancelled before they started)."""
        now = time.time()
        with self._write() as c:
            c.executemany("UPDATE tasks SET state=?, message=?, finished_at=? WHERE id=? AND state=?",
                          [(state, message, now, t, QUEUED) for t in task_ids])

    def requeue(self, task_id, front=False):
        """Put a finished task back in the queue (at the end, or the front); return its row."""
        with self._write() as c:
            self._requeue(c, task_id, front)
        return self.get_task(task_id)

    def requeue_many(self, task_ids):
        """Put finished tasks back at the end of the queue, in id order, in one transaction;
        return their rows."""
        ids = sorted(set(task_ids))
        if not ids:
            return []
        now = time.time()
        with self._write() as c:
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]
            c.executemany("UPDATE tasks SET state=?, seq=?, queued_at=?, device=NULL, slot=NULL, "
                          "started_at=NULL, finished_at=NULL, exit_code=NULL, message=NULL "
                          "WHERE id=?", [(QUEUED, seq + i + 1, now, t) for i, t in enumerate(ids)])
        return self.get_tasks(ids)

    @staticmethod
    def _requeue(c, task_id, front, message=None):
        if front:
            seq = c.execute("SELECT COALESCE(MIN(seq), 0) - 1 FROM tasks").fetchone()[0]
        else:
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks").fetchone()[0]
        # The last attempt's message stays visible ("requeued: ...") until the next start.
        c.execute("UPDATE tasks SET state=?, seq=?, queued_at=?, device=NULL, slot=NULL, "
                  "started_at=NULL, finished_at=NULL, exit_code=NULL, message=? WHERE id=?",
                  (QUEUED, seq, time.time(), message, task_id))

    def set_batch_priority(self, batch_id, priority):
        """Change a batch's priority and that of its tasks."""
        with self._write() as c:
            c.execute("UPDATE batches SET priority=? WHERE id=?", (priority, batch_id))
            c.execute("UPDATE tasks SET priority=? WHERE batch_id=?", (priority, batch_id))

    def running_attempts(self):
        """Return the attempts recorded as running, with their task's batch (for re-adoption)."""
        return [dict(r) for r in self._conn().execute(
            "SELECT a.*, t.batch_id, t.owner, t.config, t.memory FROM attempts a JOIN tasks t "
            "ON t.id=a.task_id WHERE a.state=? ORDER BY a.id", (RUNNING,))]

    def attempts(self, task_id):
        """Return a task's attempts, first first."""
        rows = self._conn().execute("SELECT * FROM attempts WHERE task_id=? ORDER BY number",
                                    (task_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["argv"] = json.loads(d["argv"])
            out.append(d)
        return out

    def latest_attempt(self, task_id):
        """Return a task's latest attempt, or None."""
        row = self._conn().execute("SELECT * FROM attempts WHERE task_id=? ORDER BY number DESC "
                                   "LIMIT 1", (task_id,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["argv"] = json.loads(d["argv"])
        return d

    def recent_peaks(self, limit=5000):
        """Return (config, peak GPU memory) of the latest succeeded attempts that recorded one."""
        return [(r[0], r[1]) for r in self._conn().execute(
            "SELECT t.config, a.peak_memory FROM attempts a JOIN tasks t ON t.id=a.task_id "
            "WHERE a.peak_memory IS NOT NULL AND a.state='succeeded' ORDER BY a.id DESC LIMIT ?",
            (limit,))]

    # -- device limits ------------------------------------------------------------------

    def device_limits(self):
        """Return {device id: slots} as last set."""
        return {r[0]: r[1] for r in self._conn().execute("SELECT device, slots FROM device_limits")}

    def set_device_limit(self, device, slots):
        """Store a device's slot limit."""
        with self._write() as c:
            c.execute("INSERT INTO device_limits(device, slots) VALUES(?, ?) "
                      "ON CONFLICT(device) DO UPDATE SET slots=excluded.slots", (device, int(slots)))

    # -- insight (batch timelines) ------------------------------------------------------

    def batch_attempts(self, batch_id, limit=5000):
        """Return (attempts, truncated): a batch's newest ``limit`` attempts, oldest first.

        Each row carries the attempt's task_id, number, state, device, slot, started_at,
        finished_at, exit_code, message and peak_memory, and its task's config.
        """
        rows = self._conn().execute(
            "SELECT a.task_id, a.number, a.state, a.device, a.slot, a.started_at, a.finished_at, "
            "a.exit_code, a.message, a.peak_memory, t.config FROM attempts a JOIN tasks t "
            "ON t.id=a.task_id WHERE t.batch_id=? ORDER BY a.id DESC LIMIT ?",
            (batch_id, int(limit) + 1)).fetchall()
        truncated = len(rows) > limit
        return [dict(r) for r in reversed(rows[:limit])], truncated

    # -- results tables -----------------------------------------------------------------

    _RESULT_COLUMNS = ("t.id, t.batch_id, t.owner, t.config, t.config_text, t.state, "
                       "t.started_at, t.finished_at, (SELECT a.peak_memory FROM attempts a "
                       "WHERE a.task_id=t.id ORDER BY a.number DESC LIMIT 1) AS peak_memory")

    def result_rows(self, batch_id, limit=5000):
        """Return (rows, total): a batch's first ``limit`` tasks in submission order.

        Each row: id, batch_id, owner, config, config_text, state, started_at, finished_at
        and the peak GPU memory of its latest attempt.
        """
        conn = self._conn()
        rows = conn.execute(f"SELECT {self._RESULT_COLUMNS} FROM tasks t WHERE t.batch_id=? "
                            "ORDER BY t.id LIMIT ?", (batch_id, int(limit))).fetchall()
        total = conn.execute("SELECT COUNT(*) FROM tasks WHERE batch_id=?",
                             (batch_id,)).fetchone()[0]
        return [dict(r) for r in rows], total

    def latest_tasks_of(self, configs):
        """Return {config: row} of the newest task of each config (rows as in result_rows)."""
        out = {}
        configs = list(configs)
        conn = self._conn()
        for i in range(0, len(configs), 500):
            chunk = configs[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(
                    f"SELECT {self._RESULT_COLUMNS} FROM tasks t WHERE t.id IN (SELECT MAX(id) "
                    f"FROM tasks WHERE config IN ({marks}) GROUP BY config)", chunk):
                out[r["config"]] = dict(r)
        return out


class AccountStore:
    """Users and API tokens (the same SQLite file)."""

    def __init__(self, store):
        self.store = store

    def _conn(self):
        return self.store._conn()

    def add_user(self, name, role, password_hash):
        """Insert a user; return its id (Conflict if the name is taken)."""
        try:
            with self.store._write() as c:
                return c.execute("INSERT INTO users(name, role, password_hash, created_at) "
                                 "VALUES(?,?,?,?)",
                                 (name, role, password_hash, time.time())).lastrowid
        except sqlite3.IntegrityError:
            raise Conflict(f"user {name} already exists") from None

    def get_user(self, name=None, user_id=None):
        """Return a user row by name or id, or None."""
        if user_id is not None:
            row = self._conn().execute("SELECT * FROM users WHERE id=?", (user_id,)).fetchone()
        else:
            row = self._conn().execute("SELECT * FROM users WHERE name=?", (name,)).fetchone()
        return dict(row) if row else None

    def list_users(self):
        """Return every user (without password hashes), by name."""
        return [dict(r) for r in self._conn().execute(
            "SELECT id, name, role, created_at FROM users ORDER BY name")]

    def count_users(self, role=None):
        """Return how many users there are (with that role)."""
        if role:
            return self._conn().execute("SELECT COUNT(*) FROM users WHERE role=?", (role,)).fetchone()[0]
        return self._conn().execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def update_user(self, user_id, role=None, password_hash=None):
        """Change a user's role and/or password hash."""
        with self.store._write() as c:
            if role is not None:
                c.execute("UPDATE users SET role=? WHERE id=?", (role, user_id))
            if password_hash is not None:
                c.execute("UPDATE users SET password_hash=? WHERE id=?", (password_hash, user_id))

    def remove_user(self, user_id):
        """Delete a user and its tokens."""
        with self.store._write() as c:
            c.execute("DELETE FROM tokens WHERE user_id=?", (user_id,))
            c.execute("DELETE FROM notify_prefs WHERE user_id=?", (user_id,))
            c.execute("DELETE FROM users WHERE id=?", (user_id,))

    def add_token(self, user_id, label, secret_hash):
        """Insert a token; return its id."""
        with self.store._write() as c:
            return c.execute("INSERT INTO tokens(user_id, label, secret_hash, created_at) "
                             "VALUES(?,?,?,?)", (user_id, label, secret_hash, time.time())).lastrowid

    def get_token(self, token_id):
        """Return a token row joined with its user's name and role, or None."""
        row = self._conn().execute(
            "SELECT t.*, u.name AS user_name, u.role AS role FROM tokens t JOIN users u "
            "ON u.id=t.user_id WHERE t.id=?", (token_id,)).fetchone()
        return dict(row) if row else None

    def list_tokens(self, user_id):
        """Return a user's tokens (without hashes)."""
        return [dict(r) for r in self._conn().execute(
            "SELECT id, label, created_at, last_used_at FROM tokens WHERE user_id=? ORDER BY id",
            (user_id,))]

    def touch_token(self, token_id):
        """Record that a token was just used."""
        with self.store._write() as c:
            c.execute("UPDATE tokens SET last_used_at=? WHERE id=?", (time.time(), token_id))

    def remove_token(self, token_id):
        """Delete a token."""
        with self.store._write() as c:
            c.execute("DELETE FROM tokens WHERE id=?", (token_id,))

    # -- invites: one-time links to join --------------------------------------------------

    def add_invite(self, secret_hash, role, name, created_by, expires_at):
        """Record an invite; return its id."""
        with self.store._write() as c:
            return c.execute("INSERT INTO invites(secret_hash, role, name, created_by, "
                             "created_at, expires_at) VALUES(?,?,?,?,?,?)",
                             (secret_hash, role, name, created_by, time.time(),
                              expires_at)).lastrowid

    def get_invite(self, secret_hash=None, invite_id=None):
        """Return an invite by its secret's hash or its id, or None."""
        if invite_id is not None:
            row = self._conn().execute("SELECT * FROM invites WHERE id=?", (invite_id,)).fetchone()
        else:
            row = self._conn().execute("SELECT * FROM invites WHERE secret_hash=?",
                                       (secret_hash,)).fetchone()
        return dict(row) if row else None

    def pending_invites(self, now):
        """Return the invites not used yet and not expired, newest first (without hashes)."""
        return [dict(r) for r in self._conn().execute(
            "SELECT id, role, name, created_by, created_at, expires_at FROM invites "
            "WHERE used_at IS NULL AND expires_at > ? ORDER BY id DESC", (now,))]

    def accept_invite(self, invite_id, name, role, password_hash, now):
        """Use an invite and create its user, both or neither; return the user's id.

        Conflict when the invite was used or expired meanwhile, or the name is taken.
        """
        try:
            with self.store._write() as c:
                used = c.execute("UPDATE invites SET used_at=?, used_by=? WHERE id=? AND "
                                 "used_at IS NULL AND expires_at > ?",
                                 (now, name, invite_id, now)).rowcount
                if not used:
                    raise Conflict("this invite link was used or has expired meanwhile; ask an "
                                   "admin for a new one")
                return c.execute("INSERT INTO users(name, role, password_hash, created_at) "
                                 "VALUES(?,?,?,?)", (name, role, password_hash, now)).lastrowid
        except sqlite3.IntegrityError:
            raise Conflict(f"user {name} already exists; choose another name") from None

    def remove_invite(self, invite_id):
        """Delete an invite (its link stops working)."""
        with self.store._write() as c:
            c.execute("DELETE FROM invites WHERE id=?", (invite_id,))


class NotifyStore:
    """Each user's notification settings: a webhook URL, an e-mail address, the events wanted."""

    def __init__(self, store):
        self.store = store

    def get(self, user_id):
        """Return a user's settings {webhook, email, events: [...], updated_at}, or None."""
        row = self.store._conn().execute(
            "SELECT webhook, email, events, updated_at FROM notify_prefs WHERE user_id=?",
            (user_id,)).fetchone()
        return _prefs(row) if row else None

    def get_by_name(self, name):
        """Return the settings of the user with this name, or None."""
        row = self.store._conn().execute(
            "SELECT p.webhook, p.email, p.events, p.updated_at FROM notify_prefs p JOIN users u "
            "ON u.id=p.user_id WHERE u.name=?", (name,)).fetchone()
        return _prefs(row) if row else None

    def put(self, user_id, webhook, email, events):
        """Store a user's settings (replacing the old ones)."""
        with self.store._write() as c:
            c.execute("INSERT INTO notify_prefs(user_id, webhook, email, events, updated_at) "
                      "VALUES(?,?,?,?,?) ON CONFLICT(user_id) DO UPDATE SET "
                      "webhook=excluded.webhook, email=excluded.email, events=excluded.events, "
                      "updated_at=excluded.updated_at",
                      (user_id, webhook, email, ",".join(events), time.time()))

    def all(self):
        """Return [(user name, settings)] of every user with a webhook or an address set."""
        return [(r["name"], _prefs(r)) for r in self.store._conn().execute(
            "SELECT u.name, p.webhook, p.email, p.events, p.updated_at FROM notify_prefs p "
            "JOIN users u ON u.id=p.user_id WHERE p.webhook!='' OR p.email!='' ORDER BY u.name")]


def _prefs(row):
    return {"webhook": row["webhook"], "email": row["email"],
            "events": [e for e in row["events"].split(",") if e], "updated_at": row["updated_at"]}


class _Joined:
    """A write inside a ``Store.grouped`` transaction: its errors fail the whole group."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        return False


# One lock per database file for the writers of this process. SQLite makes a writer that
# finds the file locked sleep and retry (1, 2, 5, 10 … 100 ms); between the threads of one
# process the lock is handed over at once instead, and the busy timeout is left to the
# writers of other processes.
_WRITERS = {}
_WRITERS_LOCK = threading.Lock()


class _Tx:
    """One write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error).

    A database that cannot be written now (locked by another process past the busy
    timeout, disk full, read-only, I/O error) raises StoreUnavailable naming the file.
    """

    def __init__(self, conn, path, writer, busy):
        self.conn = conn
        self.path = path
        self.writer = writer  # this process's lock of the file's writers
        self.busy = busy  # seconds to wait for it, as SQLite waits for other processes

    def __enter__(self):
        if not self.writer.acquire(timeout=self.busy):
            raise StoreUnavailable(f"the state database {self.path} cannot be written: another "
                                   f"write of this process held it for over {self.busy:g} s")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            self.writer.release()
            raise self._unavailable(e) from None
        except BaseException:
            self.writer.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.OperationalError as e:
                    self._rollback()
                    raise self._unavailable(e) from None
                return False
            self._rollback()
            if isinstance(exc, sqlite3.OperationalError):
                raise self._unavailable(exc) from None
            return False
        finally:
            self.writer.release()

    def _rollback(self):
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _unavailable(self, e):
        text = str(e)
        if "locked" in text or "busy" in text:
            text = f"{text} (another process holds a write lock on it)"
        return StoreUnavailable(f"the state database {self.path} cannot be written: {text}")
