"""The store's paths that run per submit, per start and per end read no table in full.

A lab's database keeps every task ever run (100,000 and more). A statement that scans the
tasks table on these paths costs milliseconds per call at that size, inside the write
transaction that the scheduler's starts and ends wait for. Each statement the store runs here
is traced from its real SQLite connection and explained by SQLite itself.
"""

import os

import pytest

from app.paths import state_dir
from app.store import Store

SPEC = dict(owner="ann", pattern="^configs/a/", use_gpu=True, devices=["any-gpu"],
            overwrite=False, command="true", priority=0, memory=0, max_retries=0,
            idempotency_key=None, headless=None)


def full_scans(conn, statements):
    """Return (statement, plan) for each traced read or update that scans a whole table."""
    found = []
    for sql in statements:
        if sql.split(None, 1)[0].upper() not in ("SELECT", "UPDATE", "DELETE"):
            continue
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        if any(_reads_all(step) for step in plan):
            found.append((sql, plan))
    return found


def _reads_all(step):
    """Whether a query plan step reads a whole table or index: "SCAN t" (every row), "SCAN t
    USING INDEX i" (every entry), or a bare "SEARCH t" (SQLite's MAX or MIN of a column
    without an index: every row too). A lookup names its key: "SEARCH t USING ..."."""
    if step.startswith("SCAN "):
        return step != "SCAN CONSTANT ROW"
    return step.startswith("SEARCH ") and " USING " not in step


@pytest.fixture
def store(workspace):
    return Store(os.path.join(state_dir(workspace), "state.db"))


def traced(store, work):
    """Run ``work()`` on this thread's store connection; return the statements it ran."""
    conn = store._conn()
    seen = []
    conn.set_trace_callback(seen.append)
    try:
        work()
    finally:
        conn.set_trace_callback(None)
    return conn, seen


def test_submit_start_end_and_requeues_scan_no_table(store):
    def work():
        tasks = [dict(config=f"configs/a/c{i}.yaml", config_text="x: 1\n", state="queued",
                      devices=["any-gpu"], memory=0) for i in range(3)]
        _, rows, _ = store.create_batch(dict(SPEC, total=3), tasks)
        t1, t2, t3 = (r["id"] for r in rows)
        # What the scheduler reads and writes around one start.
        store.config_snapshot(t1)
        store.config_bases(t1)
        store.last_success("configs/a/c0.yaml")
        store.get_task(t1)
        store.attempts(t1)
        a = store.start_attempt(t1, 1, "gpu0", 0, "node", "/tmp/r0", ["true"], 0.5)
        store.unstart_attempt(a, t1)  # its process could not start
        a = store.start_attempt(t1, 1, "gpu0", 0, "node", "/tmp/r1", ["true"], 1.0)
        store.request_stop(a, "cancel", 1.5)
        store.set_attempt_process(a, 123, 456, "boot")
        store.finish_attempt(a, t1, "failed", 1, "exit 1", 2.0, requeue="back")  # a retry
        a = store.start_attempt(t1, 2, "gpu0", 0, "node", "/tmp/r2", ["true"], 3.0)
        store.finish_attempt(a, t1, "failed", 1, "out of memory", 4.0, requeue="front")
        a = store.start_attempt(t2, 1, "gpu1", 0, "node", "/tmp/r3", ["true"], 5.0)
        store.finish_attempt(a, t2, "succeeded", 0, None, 6.0)
        store.requeue(t2)  # a user's retry
        a = store.start_attempt(t3, 1, "gpu1", 0, "node", "/tmp/r4", ["true"], 7.0)
        store.finish_attempt(a, t3, "failed", 2, "exit 2", 8.0)
        store.requeue_many([t3])  # a bulk retry

    conn, seen = traced(store, work)
    assert any("MAX(seq)" in s for s in seen) and any("MIN(seq)" in s for s in seen), seen
    assert full_scans(conn, seen) == []
