"""What multi-run.py imports: a local run loads no web stack, and nothing it does not use
(yaml where no YAML is parsed, the regex package for a plain pattern, OpenSSL's hashes)."""

import json
import os
import subprocess
import sys

from tests.helpers import ROOT, task_env

# Never needed by a local run of plain configs (the web stack, notifications, Ray, parsers).
UNUSED = {"flask", "flask_socketio", "flask_login", "werkzeug", "jinja2", "socketio", "engineio",
          "requests", "urllib3", "ray", "yaml", "regex", "hashlib", "_hashlib", "socket", "ssl",
          "email", "http", "smtplib", "zipfile", "tempfile", "pathlib", "importlib.resources",
          "app.web", "app.remote", "app.notify", "app.delivery", "app.zipstream", "app.sweeps"}

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


def test_a_local_gpu_run_of_plain_configs_loads_nothing_unused(tmp_path):
    ws = tmp_path / "ws"
    for i in range(3):
        (ws / "configs" / "exp-1").mkdir(parents=True, exist_ok=True)
        (ws / "configs" / "exp-1" / f"exp-1-{i}.yaml").write_text(f"model_params:\n  seed: {i}\n")
    env = task_env(SLOTRUN_FAKE_GPUS=1, SLOTRUN_FAKE_GPU_DIR=tmp_path / "fakegpu")
    before = subprocess.run([sys.executable, "-c", SHOW_MODULES], cwd=ws, env=env,
                            capture_output=True, text=True, timeout=60)
    # What the interpreter's site set-up loads on this machine is not multi-run.py's doing.
    already = set(json.loads(before.stdout))
    run = ("import json, sys\nfrom app.multi_run_cli import multi_run\n"
           "code = multi_run(['-c', r'exp-1-\\d', '-check', 'false', '--command', 'true {name}'])\n"
           "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n")
    p = subprocess.run([sys.executable, "-c", run], cwd=ws, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["code"] == 0 and "3 succeeded" in p.stdout, p.stdout
    loaded = set(out["modules"]) - already
    assert "app.scheduler" in loaded
    assert not loaded & UNUSED, sorted(loaded & UNUSED)
