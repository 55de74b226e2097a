"""The helper processes that match config patterns: a burst of requests shares a few of them,
and a request that cannot get one in time is refused with a clear error."""

import os
import threading
import time

import pytest

from app import pattern_helper
from app.errors import SlotrunError


@pytest.fixture
def workspace(tmp_path):
    for folder in ("a", "b"):
        os.makedirs(tmp_path / "configs" / folder)
        for i in range(5):
            (tmp_path / "configs" / folder / f"{folder}{i}.yaml").write_text("x: 1\n")
    # A long name that a catastrophic pattern chokes on.
    (tmp_path / "configs" / "a" / ("a" * 60 + ".yaml")).write_text("x: 1\n")
    return str(tmp_path)


@pytest.fixture
def matcher(monkeypatch):
    started = []
    real = pattern_helper._PatternWorker

    def counted():
        worker = real()
        started.append(worker.proc.pid)
        return worker
    monkeypatch.setattr(pattern_helper, "_PatternWorker", counted)
    m = pattern_helper._PatternMatcher()
    m.started = started
    yield m
    m.close()


def ask(m, ws, pattern, timeout=0.5):
    return m.match({"workspace": ws, "pattern": pattern, "configs_dir": "configs",
                    "max_length": 500, "timeout": timeout}, timeout + 0.2)


def test_a_burst_of_matches_shares_at_most_max_workers_helpers(matcher, workspace):
    results, errors = {}, []
    barrier = threading.Barrier(12)

    def one(i):
        barrier.wait()
        try:
            results[i] = ask(matcher, workspace, "^configs/b/" if i % 2 else "^configs/a/a[0-4]")
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results[1] == [f"configs/b/b{i}.yaml" for i in range(5)]
    assert results[0] == [f"configs/a/a{i}.yaml" for i in range(5)]
    assert len(results) == 12
    assert 1 <= len(matcher.started) <= matcher.MAX_WORKERS
    assert len(matcher._idle) <= matcher.MAX_WORKERS and matcher._out == 0


def test_a_request_that_gets_no_helper_in_time_is_refused_and_the_helpers_recover(
        matcher, workspace, monkeypatch):
    monkeypatch.setattr(matcher, "MAX_WORKERS", 1)
    monkeypatch.setattr(matcher, "WAIT_MAX", 0.2)
    bad = {}

    def catastrophic():
        try:
            ask(matcher, workspace, "(a|aa)+$", timeout=2.0)
        except SlotrunError as e:
            bad["error"] = e
    thread = threading.Thread(target=catastrophic)
    thread.start()
    time.sleep(0.5)  # the only helper is busy with it now (it stays so for 2 s)
    with pytest.raises(SlotrunError) as e:
        ask(matcher, workspace, "^configs/b/")
    assert e.value.status == 503 and "try again" in e.value.message
    thread.join(30)
    assert "took longer than" in bad["error"].message
    # Its helper is free again (or was killed and forgotten): the next request gets one.
    assert ask(matcher, workspace, "^configs/b/b0") == ["configs/b/b0.yaml"]
    assert matcher._out == 0


def test_helpers_started_for_a_burst_are_kept_for_the_next_one(matcher, workspace):
    """A second burst of submits finds the helpers of the first one idle: no new process."""
    def burst():
        barrier = threading.Barrier(matcher.MAX_WORKERS * 2)

        def one():
            barrier.wait()
            assert ask(matcher, workspace, "^configs/b/") == [f"configs/b/b{i}.yaml"
                                                              for i in range(5)]
        threads = [threading.Thread(target=one) for _ in range(matcher.MAX_WORKERS * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    burst()
    assert len(matcher._idle) == len(matcher.started) and matcher._out == 0  # none killed
    burst()
    assert len(matcher.started) <= matcher.MAX_WORKERS  # the second burst reused them
    assert len(matcher._idle) == len(matcher.started) and matcher._out == 0
