"""Find the baselines, installing the missing ones (apt-get for Debian packages, pip for PyPI).

A baseline that cannot be found or installed is reported as not available; the suite
goes on without it.
"""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

from .common import PY, log
from .tools import parallel_available

APT_UPDATED = False


def _run(argv, timeout):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return p.returncode == 0, (p.stdout + p.stderr)[-800:]


def _apt_install(package):
    global APT_UPDATED
    if not shutil.which("apt-get"):
        return False, "apt-get not found"
    if os.geteuid() != 0:
        return False, "apt-get needs root"
    env_argv = ["apt-get", "install", "-y", "--no-install-recommends", package]
    ok, out = _run(env_argv, 600)
    if not ok and not APT_UPDATED:
        APT_UPDATED = True
        _run(["apt-get", "update"], 600)
        ok, out = _run(env_argv, 600)
    return ok, out


def _pip_install(package):
    return _run([PY, "-m", "pip", "install", "--disable-pip-version-check", "-q", package], 900)


def _module_version(module):
    if importlib.util.find_spec(module) is None:
        return None
    try:
        from importlib.metadata import version

        name = {"simple_gpu_scheduler": "simple-gpu-scheduler"}.get(module, module)
        return version(name)
    except Exception:  # noqa: BLE001 - a version string is only informative
        return "installed"


def _tsp_version():
    exe = shutil.which("tsp")
    if not exe:
        return None
    ok, out = _run([exe, "-V"], 30)
    line = out.strip().splitlines()[0] if out.strip() else ""
    return line if "spooler" in line.lower() else None


def _xargs_version():
    exe = shutil.which("xargs")
    if not exe:
        return None
    ok, out = _run([exe, "--version"], 30)
    return out.strip().splitlines()[0] if out.strip() else "xargs"


def _ensure(name, probe, installer, package, skip_install):
    found = probe()
    if found:
        return {"available": True, "version": found}
    if skip_install:
        return {"available": False, "note": "not installed (--skip-install)"}
    log(f"installing {package} for {name}")
    ok, out = installer(package)
    importlib.invalidate_caches()
    found = probe()
    if found:
        return {"available": True, "version": found, "note": "installed by the suite"}
    return {"available": False, "note": f"not available: installing {package} failed: "
                                        f"{out.strip().splitlines()[-1] if out.strip() else ''}"}


def ensure_baselines(skip_install=False, want_ray=True, want_profiler=True):
    """Return {tool: {"available": bool, "version" or "note": str}}."""
    found = {}
    x = _xargs_version()
    found["xargs"] = {"available": bool(x), "version": x} if x else {
        "available": False, "note": "not available: xargs not found"}
    found["GNU parallel"] = _ensure("GNU parallel", parallel_available, _apt_install,
                                    "parallel", skip_install)
    found["task-spooler"] = _ensure("task-spooler", _tsp_version, _apt_install,
                                    "task-spooler", skip_install)
    found["simple_gpu_scheduler"] = _ensure(
        "simple_gpu_scheduler", lambda: _module_version("simple_gpu_scheduler"), _pip_install,
        "simple-gpu-scheduler", skip_install)
    if want_ray:
        found["Ray"] = _ensure("Ray", lambda: _module_version("ray"), _pip_install, "ray",
                               skip_install)
    if want_profiler:
        found["py-spy"] = _ensure("py-spy", lambda: py_spy_path(),
            _pip_install, "py-spy", skip_install)
    found["slotrun"] = {"available": True, "version": _slotrun_version()}
    return found


def _slotrun_version():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return f"working tree at {out}" if out else "working tree"


def py_spy_path():
    """Return the py-spy executable, or None."""
    local = os.path.join(os.path.dirname(PY), "py-spy")
    if os.path.exists(local):
        return local  # next to the interpreter: not through a pyenv shim
    return shutil.which("py-spy")


if __name__ == "__main__":
    print(ensure_baselines("--skip-install" in sys.argv))
