"""The README documents every setting and the commands users rely on."""

import os

from app.settings import SETTINGS
from tests.helpers import ROOT


def readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_every_setting_is_documented():
    text = readme()
    missing = [s.name for s in SETTINGS
               if f"| `{s.name}` | `SLOTRUN_{s.name.upper()}` |" not in text]
    assert not missing, f"settings missing from README.md's table: {missing}"


def test_quick_start_has_the_two_commands_and_ci_runs_the_test_one():
    text = readme()
    assert "## Quick start" in text
    test_cmd = "python3 -m pip install -e '.[test,ray]' && npm ci --prefix static && python3 -m pytest"
    assert test_cmd in text
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert test_cmd in f.read()
    quick = text[text.index("## Quick start"):]
    block = quick[quick.index("```bash"):quick.index("```", quick.index("```bash") + 7)]
    lines = [line for line in block.splitlines() if line and not line.startswith(("#", "```"))]
    # The virtual environment first, then the two commands: the dashboard, then the tests.
    assert lines[0].startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert lines[1].endswith("SLOTRUN_FAKE_GPUS=4 slotrun serve")
    assert lines[2] == test_cmd
