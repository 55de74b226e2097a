"""Numbers in the settings are checked against their valid range when they are read: a
negative grace, a port past 65535 or a NaN is refused with the range, before anything starts."""

import os
import subprocess
import sys

import pytest

from app import settings as settings_mod
from app.errors import SlotrunError
from tests.helpers import ROOT, task_env


@pytest.mark.parametrize("name, value, valid", [
    ("kill_grace", "-1", "0 or more"),
    ("cpu_slots", "-2", "0 or more"),
    ("port", "70000", "from 1 to 65535"),
    ("page_size", "0", "from 1 to 1000"),
    ("device_refresh", "nan", "0.05 or more"),
    ("store_busy_timeout", "-0.5", "0 or more"),
    ("notify_retries", "-1", "0 or more"),
])
def test_a_number_out_of_range_is_refused_with_the_valid_range(name, value, valid):
    with pytest.raises(SlotrunError, match=rf"setting {name} must be {valid}, not "):
        settings_mod.load(environ={f"SLOTRUN_{name.upper()}": value})


def test_the_bounds_themselves_are_valid():
    s = settings_mod.load(environ={"SLOTRUN_KILL_GRACE": "0", "SLOTRUN_PORT": "65535",
                                   "SLOTRUN_CPU_SLOTS": "0", "SLOTRUN_PAGE_SIZE": "1000"})
    assert (s["kill_grace"], s["port"], s["cpu_slots"], s["page_size"]) == (0.0, 65535, 0, 1000)


def test_a_settings_file_value_out_of_range_names_the_setting(tmp_path):
    (tmp_path / "slotrun.yaml").write_text("kill_grace: -3\n")
    with pytest.raises(SlotrunError, match="setting kill_grace must be 0 or more, not -3"):
        settings_mod.load({"workspace": str(tmp_path)}, environ={})


def test_multi_run_refuses_a_negative_grace_before_it_starts_anything(workspace):
    env = task_env(SLOTRUN_KILL_GRACE="-1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "exp-1-1",
                        "-gpu", "false", "-check", "false"], cwd=workspace, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "setting kill_grace must be 0 or more, not -1.0" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(os.path.join(workspace, ".slotrun", "runs"))
