"""What multi-run.py imports: a local run loads no web stack, and nothing it does not use
(yaml where no YAML is parsed, the regex package for a plain pattern, OpenSSL's hashes)."""

import json
import os
import subprocess
import sys

import pytest

from app.devices import _nvml_library_loads
from tests.helpers import ROOT, task_env

# Never needed by a local run of plain configs (the web stack, notifications, Ray, parsers).
UNUSED = {"flask", "flask_socketio", "flask_login", "werkzeug", "jinja2", "socketio", "engineio",
          "requests", "urllib3", "ray", "yaml", "regex", "hashlib", "_hashlib", "socket", "ssl",
          "email", "http", "smtplib", "zipfile", "tempfile", "pathlib", "importlib.resources",
          "app.web", "app.remote", "app.notify", "app.delivery", "app.zipstream", "app.sweeps",
          "pynvml"}

SHOW_MODULES = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def test_importing_multi_run_needs_no_third_party_package_and_loads_nothing_unused():
    # -S: no site-packages at all, so a top-level import of any third-party package fails.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTRUN_")}
    env["PYTHONPATH"] = ROOT
    p = subprocess.run([sys.executable, "-S", "-c", "import app.multi_run_cli; " + SHOW_MODULES],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    loaded = set(json.loads(p.stdout))
    assert "app.scheduler" in loaded and "sqlite3" in loaded
    assert not loaded & UNUSED, sorted(loaded & UNUSED)


@pytest.mark.parametrize("mode", ["gpu", "cpu"])
def test_a_local_run_of_plain_configs_loads_nothing_unused(tmp_path, mode):
    if mode == "cpu" and _nvml_library_loads():
        pytest.skip("NVIDIA's library is here: a CPU run asks NVML for the GPUs, through pynvml")
    ws = tmp_path / "ws"
    for i in range(3):
        (ws / "configs" / "exp-1").mkdir(parents=True, exist_ok=True)
        (ws / "configs" / "exp-1" / f"exp-1-{i}.yaml").write_text(f"model_params:\n  seed: {i}\n")
    env = task_env(SLOTRUN_FAKE_GPU_DIR=tmp_path / "fakegpu")
    where = ["-gpu", "false", "-d", "2"]
    if mode == "gpu":
        env["SLOTRUN_FAKE_GPUS"], where = "1", []  # simulated GPUs never need pynvml
    else:
        env.pop("SLOTRUN_FAKE_GPUS", None)
    before = subprocess.run([sys.executable, "-c", SHOW_MODULES], cwd=ws, env=env,
                            capture_output=True, text=True, timeout=60)
    # What the interpreter's site set-up loads on this machine is not multi-run.py's doing.
    already = set(json.loads(before.stdout))
    argv = ["-c", r"exp-1-\d", *where, "-check", "false", "--command", "true {name}"]
    run = ("import json, sys\nfrom app.multi_run_cli import multi_run\n"
           f"code = multi_run({argv!r})\n"
           "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n")
    p = subprocess.run([sys.executable, "-c", run], cwd=ws, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["code"] == 0 and "3 succeeded" in p.stdout, p.stdout
    loaded = set(out["modules"]) - already
    assert "app.scheduler" in loaded
    assert not loaded & UNUSED, sorted(loaded & UNUSED)
