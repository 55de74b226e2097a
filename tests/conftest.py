import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.helpers import make_workspace  # noqa: E402


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace with the sample configs and models; simulated GPUs unset."""
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.2")
    monkeypatch.setenv("SLOTRUN_FAKE_GPU_DIR", str(tmp_path / "fakegpu"))
    monkeypatch.delenv("SLOTRUN_FAKE_GPUS", raising=False)
    monkeypatch.delenv("SLOTRUN_WORKSPACE", raising=False)
    return ws


@pytest.fixture
def artifacts_dir():
    """Folder for screenshots and other test artifacts."""
    path = os.path.join(ROOT, "test-artifacts")
    os.makedirs(path, exist_ok=True)
    return path
