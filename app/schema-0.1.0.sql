-- The tables of slotrun 0.1.0, exactly as that release created them: migration 1 in
-- app/migrations.py. Never edit this file; change the schema with a new migration there.
-- (One engine writes; readers use their own connections (WAL).)
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS batches (
    id          INTEGER PRIMARY KEY,
    owner       TEXT NOT NULL,
    pattern     TEXT NOT NULL,
    use_gpu     INTEGER NOT NULL,
    devices     TEXT NOT NULL,            -- JSON list of device ids the batch may use
    overwrite   INTEGER NOT NULL,
    command     TEXT NOT NULL,            -- command template
    priority    INTEGER NOT NULL DEFAULT 0,
    memory      INTEGER NOT NULL DEFAULT 0,  -- declared GPU memory need per task, bytes
    max_retries INTEGER NOT NULL DEFAULT 0,  -- automatic requeues of interrupted tasks
    total       INTEGER NOT NULL,
    created_at  REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS tasks (
    id          INTEGER PRIMARY KEY,
    batch_id    INTEGER NOT NULL REFERENCES batches(id),
    owner       TEXT NOT NULL,
    config      TEXT NOT NULL,            -- workspace-relative path, e.g. configs/exp-1/exp-1-1.yaml
    config_text TEXT,                     -- the YAML as it was when submitted
    state       TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    seq         INTEGER NOT NULL,         -- queue order (lower first)
    devices     TEXT NOT NULL,            -- JSON list of device ids this task may use
    memory      INTEGER NOT NULL DEFAULT 0,
    device      TEXT,
    slot        INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    queued_at   REAL,
    started_at  REAL,
    finished_at REAL,
    exit_code   INTEGER,
    message     TEXT,
    argv        TEXT                      -- JSON argument list of the latest attempt
);
CREATE INDEX IF NOT EXISTS tasks_batch_state ON tasks (batch_id, state);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);

CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES tasks(id),
    number      INTEGER NOT NULL,
    state       TEXT NOT NULL,
    device      TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    node        TEXT NOT NULL DEFAULT '',
    run_dir     TEXT NOT NULL,
    argv        TEXT NOT NULL,
    pid         INTEGER,
    pid_start   INTEGER,                  -- /proc start time, guards against PID reuse
    boot_id     TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    exit_code   INTEGER,
    message     TEXT,
    peak_memory INTEGER,
    UNIQUE (task_id, number)
);
CREATE INDEX IF NOT EXISTS attempts_state ON attempts (state);

CREATE TABLE IF NOT EXISTS device_limits (
    device TEXT PRIMARY KEY,
    slots  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,          -- admin | member | viewer
    password_hash TEXT NOT NULL,
    created_at    REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    label        TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,           -- sha256 of the secret part; the token itself is never stored
    created_at   REAL NOT NULL,
    last_used_at REAL
);
