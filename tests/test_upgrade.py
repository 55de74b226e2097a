"""Upgrades keep a lab's state: schema migrations, backups, refusals, and 0.1.0's workspace.

The fixture under tests/fixtures/v0.1.0 was made by slotrun 0.1.0 itself (see its README).
Every later change to the state format adds its migration and keeps these tests green; each
release adds its own fixture next to it.
"""

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import requests

from app import migrations
from app import settings as settings_mod
from app.accounts import Accounts
from app.devices import open_inventory
from app.errors import SlotrunError
from app.migrations import LATEST, MIGRATIONS, Migration, add_column
from app.paths import state_dir
from app.scheduler import Engine
from app.store import AccountStore, Store
from app.version import __version__
from tests.helpers import ROOT, ServerProcess, free_port, make_workspace, task_env, wait_for

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "v0.1.0")
FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


def open_fixture(tmp_path):
    """Copy 0.1.0's workspace (with today's run.py and models) to tmp; return (ws, fixture)."""
    ws = make_workspace(tmp_path / "ws", configs=False)
    shutil.copytree(os.path.join(FIXTURE, "workspace"), ws, dirs_exist_ok=True)
    with open(os.path.join(FIXTURE, "fixture.json"), encoding="utf-8") as f:
        return ws, json.load(f)


def db_of(ws):
    return os.path.join(state_dir(ws), "state.db")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_only(path):
    """A connection that never writes (not even a WAL file) to the database at ``path``."""
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def dump(path):
    conn = read_only(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0], list(conn.iterdump())
    finally:
        conn.close()


def schema(path):
    conn = read_only(path)
    try:
        return sorted((t, n, tbl, re.sub(r"\s+", " ", sql or "")) for t, n, tbl, sql in
                      conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        conn.close()


def same(old, new, what, skip=()):
    """Assert every field 0.1.0 returned is still there with the same value."""
    diff = {k: (v, new.get(k, "<missing>")) for k, v in old.items()
            if k not in skip and new.get(k, "<missing>") != v}
    assert not diff, f"{what} changed in the upgrade (0.1.0 value, now): {diff}"


# -- the 0.1.0 fixture -------------------------------------------------------------------------

def test_0_1_0_history_and_accounts_survive_the_upgrade(tmp_path):
    ws, fx = open_fixture(tmp_path)
    db = db_of(ws)
    before = dump(db)
    assert before[0] == 0  # 0.1.0 kept no version
    store = Store(db)
    up = store.upgrade
    assert (up.from_version, up.to_version) == (0, LATEST) and store.schema_version() == LATEST
    assert [m.version for m in up.applied] == list(range(1, LATEST + 1))
    # A copy of the 0.1.0 database was taken first, under .slotrun/backups, private.
    assert migrations.backups(db) == [up.backup]
    assert re.fullmatch(r"state-v0-\d{8}-\d{6}\.db", os.path.basename(up.backup))
    assert os.path.dirname(up.backup) == os.path.join(state_dir(ws), "backups")
    assert os.stat(up.backup).st_mode & 0o777 == 0o600
    assert dump(up.backup) == before

    h = fx["history"]
    assert len(h["batches"]) == 2 and len(h["tasks"]) == 7 and len(h["attempts"]) == 4
    for b in h["batches"]:
        same(b, store.get_batch(b["id"]), f"batch {b['id']}")
    for t in h["tasks"]:
        same(t, store.get_task(t["id"], with_text=True), f"task {t['id']}")
    for a in h["attempts"]:
        now = {x["id"]: x for x in store.attempts(a["task_id"])}
        same(a, now.get(a["id"], {}), f"attempt {a['id']}")
    failed = [t for t in h["tasks"] if t["state"] == "failed"]
    assert [(t["config"], t["exit_code"], t["message"]) for t in failed] == [
        ("configs/done/bad.yaml", 2, "exit code 2")]
    assert store.device_limits() == h["device_limits"] == {"gpu0": 2}
    assert store.recent_peaks() == [tuple(p) for p in h["recent_peaks"]]
    assert len(h["recent_peaks"]) == 3  # learned memory needs
    accounts = AccountStore(store)
    assert accounts.list_users() == h["users"]
    for u in h["users"]:
        assert accounts.list_tokens(u["id"]) == h["tokens"][u["name"]]
    acc = Accounts(store)
    for name, u in fx["users"].items():
        assert acc.authenticate(name, u["password"])["role"] == u["role"]
        assert acc.user_for_token(fx["tokens"][name])["name"] == name
    # Opening it again changes nothing and takes no second copy.
    again = Store(db).upgrade
    assert (again.from_version, again.to_version, again.backup) == (LATEST, LATEST, None)
    assert len(migrations.backups(db)) == 1


def test_upgraded_0_1_0_schema_is_the_schema_of_a_new_database(tmp_path):
    ws, _ = open_fixture(tmp_path)
    Store(db_of(ws))
    fresh = str(tmp_path / "new" / "state.db")
    Store(fresh)
    assert schema(db_of(ws)) == schema(fresh)
    assert "meta" not in {name for _, name, _, _ in schema(fresh)}


@pytest.mark.slow
def test_upgraded_0_1_0_server_keeps_accounts_and_finishes_the_queue(tmp_path):
    """A lab's upgrade as they do it: the new server on the old workspace, GPUs, defaults."""
    ws, fx = open_fixture(tmp_path)
    with open(os.path.join(state_dir(ws), "secret_key"), encoding="ascii") as f:
        key = f.read()
    env = task_env(SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=tmp_path / "fakegpu")
    server = ServerProcess(tmp_path / "server.log", env, ws, ready_status=401)
    try:
        mx, ada = fx["tokens"]["max"], fx["tokens"]["ada"]
        status, body = server.json_api("GET", "/status", token=mx)
        assert status == 200 and (body["user"], body["role"]) == ("max", "member")
        assert body["engine"]["version"] == __version__
        status, body = server.json_api("GET", "/status", token=ada)
        assert status == 200 and (body["user"], body["role"]) == ("ada", "admin")

        # 0.1.0 did not keep the pause: its queued batch runs now, each config once.
        queued = fx["queued_batch"]

        def batch_done():
            _, b = server.json_api("GET", f"/batches/{queued}", token=mx)
            return b if all(t["state"] in FINAL for t in b["tasks"]) else None
        b = wait_for(batch_done, 60, message="the queued 0.1.0 batch did not finish")
        assert [(t["state"], t["exit_code"], t["attempts"]) for t in b["tasks"]] == \
            [("succeeded", 0, 1)] * 3
        assert all(t["device"] in ("gpu0", "gpu1") for t in b["tasks"])
        for name in ("later-1", "later-2", "later-3"):
            assert os.path.exists(os.path.join(ws, "results", "later", name, ".done"))

        # The password works through the login form (and a wrong one does not).
        s = requests.Session()
        for password, expect in (("wrong-password", 401), (fx["users"]["ada"]["password"], 303)):
            page = s.get(server.url + "/login", timeout=10).text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            r = s.post(server.url + "/login", allow_redirects=False, timeout=30,
                       data={"name": "ada", "password": password, "csrf_token": csrf})
            assert r.status_code == expect, r.text[:300]
        assert s.get(server.url + "/api/v1/status", timeout=10).json()["user"] == "ada"

        # History as 0.1.0 left it; the slot limit it set; finished configs still skipped.
        _, done = server.json_api("GET", f"/batches/{fx['finished_batch']}", token=mx)
        assert {k: v for k, v in done["counts"].items() if v} == {"succeeded": 3, "failed": 1}
        _, devices = server.json_api("GET", "/devices", token=mx)
        assert {d["id"]: d["slots"] for d in devices["devices"]}["gpu0"] == 2
        status, again = server.json_api("POST", "/batches", {"pattern": "done/"}, token=mx)
        assert status == 201, again
        assert {t["config"]: t["state"] for t in again["tasks"]} == {
            "configs/done/bad.yaml": "queued", "configs/done/ok-1.yaml": "skipped",
            "configs/done/ok-2.yaml": "skipped", "configs/done/ok-3.yaml": "skipped"}
    finally:
        server.stop()
    db = db_of(ws)
    assert len(migrations.backups(db)) == 1
    assert "upgraded the database" in server.output() and "Traceback" not in server.output()
    with open(os.path.join(state_dir(ws), "secret_key"), encoding="ascii") as f:
        assert f.read() == key  # sessions signed before the upgrade stay valid


# -- the .slotrun/ layout of 0.1.0 -----------------------------------------------------------

def _start_ticks(pid):
    """A process's start time as 0.1.0 recorded it: field 22 of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[19])


def _boot_id():
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read().strip()


@pytest.mark.slow
def test_engine_readopts_tasks_started_by_0_1_0(tmp_path, monkeypatch):
    """0.1.0's engine died with the fixture's queued tasks started through its wrapper: one
    still running, one that ended (exit code 3) while no engine ran, one running whose pid
    only reached its pid file. Today's engine adopts the running ones and records their exits,
    and reads the exit code left in the run folder."""
    ws, fx = open_fixture(tmp_path)
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.setenv("SLOTRUN_FAKE_GPU_DIR", str(tmp_path / "fakegpu"))
    with open(os.path.join(FIXTURE, "task-wrapper.sh"), encoding="utf-8") as f:
        wrapper = f.read()
    release = tmp_path / "release"
    waiter = [sys.executable, "-c", "import os, sys, time\n"
              "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.02)\n"
              "print('released')", str(release)]
    plan = {5: ("gpu0", 0, waiter, True), 6: ("gpu1", 0, [sys.executable, "-c",
                                                         "import sys; sys.exit(3)"], True),
            7: ("gpu0", 1, waiter, False)}
    db = db_of(ws)
    old = sqlite3.connect(db, isolation_level=None)  # writes exactly as 0.1.0's Store did
    procs = {}
    try:
        for task_id, (device, slot, argv, pid_recorded) in plan.items():
            run_dir = os.path.join(state_dir(ws), "runs", f"{task_id}-1")
            os.makedirs(run_dir)
            log = os.open(os.path.join(run_dir, "output.log"), os.O_WRONLY | os.O_CREAT |
                          os.O_APPEND, 0o644)
            started = time.time()
            procs[task_id] = p = subprocess.Popen(
                ["/bin/sh", "-c", wrapper, "slotrun-task", run_dir, *argv], cwd=ws,
                env=task_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
            os.close(log)
            wait_for(lambda: os.path.exists(os.path.join(run_dir, "pid")), 10)
            cur = old.execute(
                "INSERT INTO attempts(task_id, number, state, device, slot, node, run_dir, argv, "
                "started_at) VALUES(?,?,?,?,?,?,?,?,?)",
                (task_id, 1, "running", device, slot, os.uname().nodename, run_dir,
                 json.dumps(argv), started))
            old.execute("UPDATE tasks SET state=?, device=?, slot=?, attempts=?, started_at=?, "
                        "finished_at=NULL, exit_code=NULL, message=NULL, argv=? WHERE id=?",
                        ("running", device, slot, 1, started, json.dumps(argv), task_id))
            if pid_recorded:
                old.execute("UPDATE attempts SET pid=?, pid_start=?, boot_id=? WHERE id=?",
                            (p.pid, _start_ticks(p.pid), _boot_id(), cur.lastrowid))
        old.close()
        procs[6].wait(10)
        exit_file = os.path.join(state_dir(ws), "runs", "6-1", "exit")
        with open(exit_file, encoding="ascii") as f:
            assert f.read() == "3\n"

        s = settings_mod.load({"workspace": ws, "kill_grace": 2})
        store = Store(db)
        assert store.upgrade.from_version == 0
        eng = Engine(s, store, open_inventory()).start()
        try:
            assert set(eng.running) == {5, 7}
            assert {eng.running[t].handle.pid for t in (5, 7)} == {procs[5].pid, procs[7].pid}
            t6 = store.get_task(6)
            assert (t6["state"], t6["exit_code"], t6["message"]) == ("failed", 3, "exit code 3")
            assert t6["finished_at"] == os.stat(exit_file).st_mtime
            release.touch()
            wait_for(lambda: all(store.get_task(t)["state"] in FINAL for t in (5, 7)), 20)
            for t in (5, 7):
                task = store.get_task(t)
                assert (task["state"], task["exit_code"], task["attempts"]) == ("succeeded", 0, 1)
                assert [a["state"] for a in store.attempts(t)] == ["succeeded"]
            markers = [os.path.join(ws, "results", "later", n, ".done") for n in ("later-1",
                                                                               "later-3")]
            wait_for(lambda: all(map(os.path.exists, markers)), 10)  # written after the row
            with open(os.path.join(state_dir(ws), "runs", "5-1", "output.log")) as f:
                assert f.read() == "released\n"
        finally:
            eng.stop()
    finally:
        release.touch()
        for p in procs.values():
            p.wait(10)


# -- refusals and failures -------------------------------------------------------------------

def test_a_database_from_a_newer_slotrun_is_refused_and_left_alone(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    db = db_of(ws)
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={LATEST + 3}")
    conn.close()
    before = sha256(db)
    env = task_env()
    env.pop("SLOTRUN_FAKE_GPUS", None)
    runs = {
        "users": [sys.executable, "-m", "app", "users", "list", "--workspace", ws],
        "serve": [sys.executable, "-m", "app", "serve", "--port", str(free_port()),
                  "--workspace", ws],
        "multi-run": [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "exp-1-1",
                      "-gpu", "false", "-check", "false", "--workspace", ws],
    }
    for what, argv in runs.items():
        r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (what, r.stdout, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
        line = lines[0]
        assert line.startswith("error: the database ") and db in line, line
        assert f"schema version {LATEST + 3}" in line and f"up to {LATEST}" in line, line
        assert f"slotrun {__version__}" in line and "git pull" in line and "backups/" in line
    with pytest.raises(SlotrunError, match="a newer slotrun wrote it"):
        Store(db)
    assert sha256(db) == before and not os.path.exists(os.path.join(state_dir(ws), "backups"))


@pytest.mark.parametrize("kind", ["sql", "code"])
def test_a_failed_migration_leaves_the_database_as_it_was(tmp_path, kind):
    ws, _ = open_fixture(tmp_path)
    db = db_of(ws)
    before, file_before = dump(db), sha256(db)

    def half_then_fail(conn):
        conn.execute("ALTER TABLE tasks ADD COLUMN half_done INTEGER")
        raise RuntimeError("the disk is on fire")
    broken = ("CREATE TABLE sweeps (id INTEGER PRIMARY KEY); INSERT INTO nowhere VALUES (1)"
              if kind == "sql" else half_then_fail)
    steps = MIGRATIONS + [Migration(LATEST + 1, "tasks: paused_at",
                                    add_column("tasks", "paused_at REAL")),
                          Migration(LATEST + 2, "broken step", broken)]
    error = "no such table: nowhere" if kind == "sql" else "RuntimeError: the disk is on fire"
    with pytest.raises(SlotrunError) as e:
        migrations.upgrade(db, steps=steps)
    message = e.value.message
    assert f"from schema version 0 to {LATEST + 2}" in message
    assert f"migration {LATEST + 2} (broken step) failed" in message and error in message
    assert "The database was left as it was" in message
    assert sha256(db) == file_before and dump(db) == before
    assert {n for _, n, _, _ in schema(db)} >= {"meta", "tasks"}  # migration 2 undone too
    [copy] = migrations.backups(db)
    assert copy in message and dump(copy) == before
    # With the broken step gone the same database upgrades normally.
    assert Store(db).upgrade.to_version == LATEST


@pytest.mark.parametrize("existing", [True, False], ids=["0.1.0-database", "new-database"])
def test_concurrent_openers_migrate_once(tmp_path, existing):
    """Four processes (a server, the users CLI, a headless run ...) open an old database (or
    create a new one) at the same moment; the migration runs once, every opener sees it done,
    and only an existing database is backed up."""
    if existing:
        ws, _ = open_fixture(tmp_path)
    else:
        ws = make_workspace(tmp_path / "ws")
        os.makedirs(state_dir(ws))  # as Store(path) makes it before upgrading
    db = db_of(ws)
    go = tmp_path / "go"
    script = (
        "import json, os, sys, time\n"
        "from app import migrations\n"
        "def slow(conn):\n"
        "    time.sleep(0.3)  # a migration that takes a while: the others must wait\n"
        "    conn.execute('CREATE TABLE IF NOT EXISTS ran (pid INTEGER)')\n"
        "    conn.execute('INSERT INTO ran VALUES (?)', (os.getpid(),))\n"
        "steps = migrations.MIGRATIONS + [migrations.Migration(len(migrations.MIGRATIONS) + 1,"
        " 'slow', slow)]\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.001)\n"
        "up = migrations.upgrade(sys.argv[1], steps=steps)\n"
        "print(json.dumps([up.from_version, up.to_version, up.backup]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, db, str(go)], cwd=ROOT,
                              env=task_env(), stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    done = LATEST + 1
    upgraded = [r for r in results if r[0] == 0]
    assert len(upgraded) == 1 and upgraded[0][1] == done
    assert bool(upgraded[0][2]) == existing
    assert sorted(results)[1:] == [[done, done, None]] * 3
    conn = read_only(db)
    assert conn.execute("SELECT COUNT(*) FROM ran").fetchone()[0] == 1
    conn.close()
    with open(db, "rb") as f:
        assert f.read(20)[18:20] == b"\x02\x02"  # the file format of WAL mode
    assert migrations.backups(db) == ([upgraded[0][2]] if existing else [])


def test_an_upgrade_waits_for_a_writer_and_gives_up_clearly(tmp_path):
    ws, _ = open_fixture(tmp_path)
    db = db_of(ws)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        with pytest.raises(SlotrunError, match=r"another process kept it locked for 0.5 s .*"
                                               r"nothing was changed"):
            Store(db, timeout=0.5)
        assert migrations.backups(db) == []
        threading.Timer(0.3, holder.execute, ("ROLLBACK",)).start()
        store = Store(db, timeout=20)  # waits for the writer, then upgrades
        assert (store.upgrade.from_version, store.schema_version()) == (0, LATEST)
    finally:
        holder.close()


def test_no_backup_no_upgrade(tmp_path):
    ws, _ = open_fixture(tmp_path)
    db = db_of(ws)
    before = sha256(db)
    with open(os.path.join(state_dir(ws), "backups"), "w") as f:  # not a folder
        f.write("in the way\n")
    with pytest.raises(SlotrunError, match=r"backing it up to .*backups/state-v0-.* failed .*"
                                           r"nothing was changed"):
        Store(db)
    assert sha256(db) == before


def test_a_file_that_is_not_a_database_gets_one_clear_line(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database " * 200)
    with pytest.raises(SlotrunError, match=r"cannot open the database .*not a database"):
        Store(str(path))


# -- the mechanism ---------------------------------------------------------------------------

def test_a_new_database_gets_the_latest_schema_without_a_backup(tmp_path):
    db = str(tmp_path / "ws" / ".slotrun" / "state.db")
    store = Store(db)
    assert (store.upgrade.from_version, store.upgrade.to_version) == (0, LATEST)
    assert store.upgrade.backup is None and store.schema_version() == LATEST
    assert not os.path.exists(os.path.join(os.path.dirname(db), "backups"))
    assert store.count_batches() == 0 and Accounts(store).has_users() is False


def test_migrations_are_numbered_in_order_and_each_is_idempotent(tmp_path):
    migrations.check_steps(MIGRATIONS)
    assert LATEST == len(MIGRATIONS) and all(m.name for m in MIGRATIONS)
    for bad in ([Migration(2, "x", "")], [Migration(1, "", "SELECT 1")],
                [Migration(1, "x", 42)], [("1", "x", "SELECT 1")]):
        with pytest.raises(ValueError):
            migrations.check_steps(bad)
    for n, step in enumerate(MIGRATIONS, 1):
        db = str(tmp_path / f"at-{n}.db")
        migrations.upgrade(db, steps=MIGRATIONS[:n])
        before = schema(db)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        migrations.apply(conn, step)  # a second time: changes nothing, fails on nothing
        conn.execute("COMMIT")
        conn.close()
        assert schema(db) == before, f"migration {n} ({step.name}) is not idempotent"


def test_add_column_and_sql_steps(tmp_path):
    db = str(tmp_path / "state.db")
    steps = MIGRATIONS + [
        Migration(LATEST + 1, "tasks: paused_at", add_column("tasks", "paused_at REAL")),
        Migration(LATEST + 2, "sweeps", "-- a comment; with a semicolon\n"
                  "CREATE TABLE IF NOT EXISTS sweeps (id INTEGER PRIMARY KEY, note TEXT "
                  "DEFAULT 'a;b');\nCREATE INDEX IF NOT EXISTS sweeps_note ON sweeps (note);"),
    ]
    up = migrations.upgrade(db, steps=steps)
    assert up.to_version == LATEST + 2
    conn = sqlite3.connect(db)
    assert migrations.has_column(conn, "tasks", "paused_at")
    conn.execute("INSERT INTO sweeps (id) VALUES (1)")
    assert conn.execute("SELECT note FROM sweeps").fetchone() == ("a;b",)
    conn.close()
    assert migrations.statements("SELECT 1; SELECT ';'; -- end;\n") == ["SELECT 1;",
                                                                       " SELECT ';';"]
    with pytest.raises(ValueError, match="incomplete"):
        migrations.statements("SELECT 1; SELECT 'unterminated")


def test_only_the_newest_backups_are_kept(tmp_path):
    ws, _ = open_fixture(tmp_path)
    db = db_of(ws)
    made = []
    for _ in range(5):
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version=0")  # as if a 0.1.0 database were put back
        conn.close()
        made.append(migrations.upgrade(db, keep=3).backup)
    assert len(set(made[-3:])) == 3 and migrations.backups(db) == made[-3:]


def test_version_is_one_number_everywhere():
    r = subprocess.run([sys.executable, "-m", "app", "--version"], cwd=ROOT, env=task_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == \
        f"slotrun {__version__} (database schema {LATEST})"
    from app.web import VERSION

    assert VERSION == __version__
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    assert 'version = {attr = "app.version.__version__"}' in text and '\nversion = "' not in text
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        assert f"## {__version__}" in f.read()
