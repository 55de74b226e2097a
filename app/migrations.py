"""Schema versions of state.db, and the migrations that carry a database from one to the next.

Part of the store layer: with ``app/store.py`` the only place that holds SQL.

A database's schema version is SQLite's ``PRAGMA user_version``: 0 for one made by slotrun
0.1.0 (which kept no version) or for a new, empty file; N once migration N has run.
``upgrade(path)``, called by ``Store(path)`` at start-up, brings a database to ``LATEST``:

- at LATEST already: nothing happens, and no lock is taken;
- older: under SQLite's write lock (BEGIN IMMEDIATE: a second process opening the same file
  meanwhile waits, then finds nothing left to do), a copy is written first with SQLite's
  online backup to ``backups/state-v<N>-<time>.db`` beside the database (the newest
  KEEP_BACKUPS copies are kept), then every missing migration runs in order, all in that one
  transaction. If any step fails the transaction is rolled back: the database is left
  exactly as it was, and the error names the step;
- newer (written by a later slotrun): refused with one line naming both versions; the file
  is not touched.

A new, empty database gets every migration (migration 1 creates the 0.1.0 tables), and no
backup.

To change the schema (a column, a table, an index), append ONE entry to MIGRATIONS:

    Migration(5, "tasks: when the task was paused", add_column("tasks", "paused_at REAL")),

- the number is the last one plus one; the name says what changes in the data;
- ``apply`` is SQL text (any number of statements) or a function taking the sqlite3
  connection. It runs inside the upgrade transaction with foreign keys off: never BEGIN,
  COMMIT or call ``executescript`` (it commits). Make it idempotent (``CREATE ... IF NOT
  EXISTS``, ``add_column``), and give new NOT NULL columns a DEFAULT so old rows get a value;
- to drop or retype a column, rebuild the table as SQLite's documentation says ("Making
  Other Kinds Of Table Schema Changes": create the new table, copy, drop, rename);
- never edit or renumber a migration once it is on main: add another one;
- then change the store's queries, add a line to CHANGELOG.md, and keep
  tests/test_upgrade.py green (it opens a workspace made by slotrun 0.1.0).
"""

import logging
import os
import re
import sqlite3
import time
from typing import NamedTuple

from .errors import SlotrunError
from .version import __version__

log = logging.getLogger(__name__)

BACKUP_DIR = "backups"  # beside the database: .slotrun/backups/
KEEP_BACKUPS = 5


class Migration(NamedTuple):
    """One step of the schema: ``apply`` takes a database from ``version - 1`` to ``version``."""

    version: int
    name: str
    apply: object  # SQL text, or a function taking the sqlite3 connection

    def __repr__(self):
        return f"Migration({self.version}, {self.name!r})"


class Upgrade(NamedTuple):
    """What ``upgrade`` found and did."""

    path: str
    from_version: int
    to_version: int
    backup: str | None  # the copy taken before migrating (None: new database, or no change)
    applied: tuple  # the Migrations that ran, in order


def has_column(conn, table, column):
    """Return True when ``table`` has a column named ``column``."""
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({_quote(table)})"))


def add_column(table, definition):
    """Return a migration step that adds a column (``"name TYPE ..."``) unless it exists."""
    column = definition.split()[0].strip('"')

    def step(conn):
        if not has_column(conn, table, column):
            conn.execute(f"ALTER TABLE {_quote(table)} ADD COLUMN {definition}")

    step.__name__ = f"add_column_{table}_{column}"
    return step


def add_columns(table, *definitions):
    """Return a migration step that adds each column (``"name TYPE ..."``) that is missing."""
    steps = [add_column(table, d) for d in definitions]

    def step(conn):
        for s in steps:
            s(conn)

    step.__name__ = f"add_columns_{table}"
    return step


def _quote(name):
    return '"' + name.replace('"', '""') + '"'


def _baseline():
    # Read beside this module (as the web factory finds its templates), not through
    # importlib.resources: that import adds ~6 ms (pathlib, tempfile) to multi-run.py's start.
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema-0.1.0.sql"),
              encoding="utf-8") as f:
        return f.read()


def _engine_records(conn):
    """Batches: the idempotency key of the submit that made them, and the multi-run.py that
    queued them (its leftovers are ended, not run, once it is gone); tasks: the bases their
    config named when submitted (texts kept once each); the engine's own state (a paused
    queue stays paused across restarts); an index to find a config's last run."""
    add_column("batches", "idempotency_key TEXT")(conn)
    add_column("batches", "headless TEXT")(conn)
    add_column("tasks", "bases TEXT")(conn)
    for sql in statements("""
        CREATE UNIQUE INDEX IF NOT EXISTS batches_owner_key ON batches (owner, idempotency_key)
            WHERE idempotency_key IS NOT NULL;
        CREATE INDEX IF NOT EXISTS tasks_config ON tasks (config, state);
        CREATE TABLE IF NOT EXISTS config_files (
            hash TEXT PRIMARY KEY,      -- sha256 of the text: one copy however many tasks
            text TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS engine_state (
            key   TEXT PRIMARY KEY,     -- e.g. queue_paused
            value TEXT NOT NULL
        );
    """):
        conn.execute(sql)


MIGRATIONS = [
    Migration(1, "the tables of slotrun 0.1.0", _baseline()),
    # 0.1.0 created a key/value table that nothing ever read; the version now lives in
    # PRAGMA user_version.
    Migration(2, "drop the unused meta table", "DROP TABLE IF EXISTS meta"),
    # Teammates join with a one-time link instead of a password an admin chose; the link's
    # secret is stored hashed, never the link itself.
    Migration(3, "invites: one-time links to join with a role", """
        CREATE TABLE IF NOT EXISTS invites (
            id          INTEGER PRIMARY KEY,
            secret_hash TEXT NOT NULL UNIQUE,
            role        TEXT NOT NULL,
            name        TEXT,
            created_by  TEXT NOT NULL,
            created_at  REAL NOT NULL,
            expires_at  REAL NOT NULL,
            used_at     REAL,
            used_by     TEXT
        )"""),
    # A stop (cancel, interrupt) is written down before its signals are sent, so an engine that
    # dies during the grace leaves the SIGKILL to the next one.
    Migration(4, "attempts: when a stop was asked for, and why",
              add_columns("attempts", "stop_requested_at REAL", "stop_reason TEXT")),
    Migration(5, "notification settings per user", """
        CREATE TABLE IF NOT EXISTS notify_prefs (
            user_id    INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
            webhook    TEXT NOT NULL DEFAULT '',  -- a URL (a secret: shown to its user only)
            email      TEXT NOT NULL DEFAULT '',
            events     TEXT NOT NULL DEFAULT '',  -- comma-separated: batch.finished,task.failed
            updated_at REAL NOT NULL
        );
    """),
    Migration(6, "submit keys, headless batches, config bases and the engine's own state",
              _engine_records),
    # The queue's end and front (MAX(seq), MIN(seq)) are read by every submit and requeue:
    # without an index each read scanned every task ever run (~9 ms at 100,000 tasks, inside
    # the write transaction that the scheduler's starts and ends wait for).
    Migration(7, "tasks: an index on the queue order",
              "CREATE INDEX IF NOT EXISTS tasks_seq ON tasks (seq)"),
]

LATEST = MIGRATIONS[-1].version


def check_steps(steps):
    """Raise ValueError unless ``steps`` are numbered 1, 2, ... with names and SQL or code."""
    for i, step in enumerate(steps, 1):
        if not isinstance(step, Migration) or step.version != i:
            raise ValueError(f"migration {i} is missing or out of order: {step!r}")
        if not step.name or not (isinstance(step.apply, str) or callable(step.apply)):
            raise ValueError(f"migration {i} needs a name and SQL text or a function")


_NOT_SQL = re.compile(r"--[^\n]*|/\*.*?\*/|[\s;]", re.S)  # comments, blanks, empty statements


def statements(sql):
    """Split SQL text into single statements (semicolons in strings and comments kept)."""
    out, buf = [], ""
    for piece in sql.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if _NOT_SQL.sub("", buf):
                out.append(buf)
            buf = ""
    if _NOT_SQL.sub("", buf):
        raise ValueError(f"incomplete SQL statement: {buf.strip()[:80]!r}")
    return out


def apply(conn, step):
    """Run one migration on a connection (inside the caller's transaction)."""
    if isinstance(step.apply, str):
        for sql in statements(step.apply):
            conn.execute(sql)
    else:
        step.apply(conn)


def schema_version(conn):
    """Return a connection's ``PRAGMA user_version``."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def upgrade(path, steps=None, timeout=30.0, keep=KEEP_BACKUPS):
    """Bring the database at ``path`` to the last of ``steps`` (default MIGRATIONS); see above.

    Returns an Upgrade; raises SlotrunError (one line, saying what to do) when the database
    is newer, locked for longer than ``timeout`` seconds, cannot be backed up, or a step fails.
    """
    steps = MIGRATIONS if steps is None else list(steps)
    check_steps(steps)
    latest = len(steps)
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error as e:
        raise SlotrunError(f"cannot open the database {path}: {e}") from None
    try:
        try:
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            found = schema_version(conn)
            if found == latest:
                return Upgrade(path, found, found, None, ())
            _refuse_newer(path, found, latest)
            _wal(conn, timeout)
            conn.execute("PRAGMA foreign_keys=OFF")  # a table rebuild must not cascade
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise SlotrunError(
                    f"cannot upgrade the database {path}: another process kept it locked for "
                    f"{timeout:g} s ({e}); nothing was changed. Stop the other slotrun process "
                    "(a server or multi-run on this workspace) and start again") from None
            raise SlotrunError(f"cannot open the database {path}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise SlotrunError(f"cannot open the database {path}: {e}") from None
        try:
            return _upgrade_locked(conn, path, steps, keep, timeout)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    finally:
        conn.close()


def _wal(conn, timeout):
    """Switch the database to WAL, retrying while others hold it for up to ``timeout`` s.

    SQLite answers "database is locked" at once, without its busy timeout, when openers of a
    new database race to change its journal mode: wait here instead."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if not ("locked" in str(e) or "busy" in str(e)) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _upgrade_locked(conn, path, steps, keep, timeout):
    latest = len(steps)
    found = schema_version(conn)  # again: another process may have upgraded it meanwhile
    if found == latest:
        return Upgrade(path, found, found, None, ())
    _refuse_newer(path, found, latest)
    existing = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] > 0
    backup = _backup(path, found, keep, timeout) if existing else None
    applied = []
    for step in steps[found:]:
        try:
            apply(conn, step)
        except Exception as e:  # noqa: BLE001 - any failure rolls the whole upgrade back
            kept = f" (a copy taken before is at {backup})" if backup else ""
            raise SlotrunError(
                f"cannot upgrade the database {path} from schema version {found} to {latest}: "
                f"migration {step.version} ({step.name}) failed: {type(e).__name__}: {e}. "
                f"The database was left as it was{kept}; keep running the slotrun version "
                "that wrote it, and report this") from e
        applied.append(step)
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise SlotrunError(
            f"cannot upgrade the database {path} to schema version {latest}: the migrated "
            f"data breaks {len(broken)} foreign key(s) (first: {tuple(broken[0])}); the "
            "database was left as it was")
    conn.execute(f"PRAGMA user_version={latest}")
    conn.execute("COMMIT")
    if existing:
        log.warning("upgraded the database %s from schema version %d to %d (slotrun %s); "
                    "the previous database was copied to %s", path, found, latest, __version__,
                    backup)
    return Upgrade(path, found, latest, backup, tuple(applied))


def _refuse_newer(path, found, latest):
    if found > latest:
        raise SlotrunError(
            f"the database {path} has schema version {found}, but this slotrun {__version__} "
            f"knows versions up to {latest}: a newer slotrun wrote it. Run that newer version "
            "again (git pull, then pip install -e .), or restore the copy in "
            f"{os.path.join(os.path.dirname(os.path.abspath(path)), BACKUP_DIR)}/ taken before "
            "the upgrade; the database was not changed")


def backups(path):
    """Return the backup copies of the database at ``path``, oldest first."""
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), BACKUP_DIR)
    stem = os.path.splitext(os.path.basename(path))[0]
    pattern = re.compile(rf"^{re.escape(stem)}-v\d+-\d{{8}}-\d{{6}}(-\d+)?\.db$")
    try:
        names = [n for n in os.listdir(folder) if pattern.match(n)]
    except OSError:
        return []
    paths = [os.path.join(folder, n) for n in names]
    return sorted(paths, key=lambda p: (os.stat(p).st_mtime, p))


def _backup(path, version, keep, timeout):
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), BACKUP_DIR)
    stem = os.path.splitext(os.path.basename(path))[0]
    base = os.path.join(folder, f"{stem}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}")
    dest, n = base + ".db", 1
    while os.path.exists(dest):
        n += 1
        dest = f"{base}-{n}.db"
    part = dest + ".part"
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        # A second connection reads the database as last committed: this process holds the
        # write lock, so nothing changes between the copy and the migration. (Backing up
        # from the connection that holds the lock would wait for itself forever.)
        src = sqlite3.connect(path, timeout=timeout)
        try:
            dst = sqlite3.connect(part)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                dst.close()
        finally:
            src.close()
        os.chmod(part, 0o600)  # it holds password and token hashes
        os.replace(part, dest)
    except (OSError, sqlite3.Error) as e:
        try:
            os.unlink(part)
        except OSError:
            pass
        raise SlotrunError(
            f"cannot upgrade the database {path}: backing it up to {dest} failed ({e}); nothing "
            f"was changed. Make {folder} writable (or free some disk space) and start again") \
            from None
    for old in backups(path)[:-keep] if keep > 0 else []:
        try:
            os.unlink(old)
        except OSError as e:
            log.warning("could not remove the old backup %s: %s", old, e)
    return dest
