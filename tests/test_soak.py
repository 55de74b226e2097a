"""The soak's short version: a real server killed with SIGKILL during a run loses nothing and
runs nothing twice (bench/soak.py runs the long one)."""

import pytest

from bench.soak import soak

pytestmark = pytest.mark.slow


def test_short_soak_loses_nothing_and_runs_nothing_twice(tmp_path):
    result = soak(configs=60, kills=3, min_up=0.8, max_up=1.5, root=str(tmp_path / "soak"),
                  keep=True, timeout=240)
    assert result["kills"] == 3, result
    assert result["lost"] == 0, result
    assert result["run_twice"] == 0 and result["overlapping"] == 0, result
    assert result["wrong_states"] == 0, result
    assert result["tasks"] == 90  # 60 configs, the first 30 submitted twice
