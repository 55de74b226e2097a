"""The layers of docs/architecture.md hold: import-linter checks the contracts declared in
pyproject.toml ([tool.importlinter]) on every test run, and is shown to fail on a copy of
the package with an upward import, a cycle, Flask below web/ and SQL outside the store.
"""

import os
import pkgutil
import shutil
import subprocess
import sys

from importlinter import api

import app
from tests.helpers import ROOT

PYPROJECT = os.path.join(ROOT, "pyproject.toml")
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint(root):
    """Run lint-imports on the package under ``root``; return (exit status, its report)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = root  # the package under ``root``, never another copy of it
    r = subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def contracts():
    """Return the contracts of pyproject.toml by id."""
    return {c["id"]: c for c in api.read_configuration(PYPROJECT)["contracts_options"]}


def layer_modules(layer):
    """Return the module names of one line of a layers contract ("a | b", "a : b")."""
    return [m.strip().strip("()") for m in layer.replace(":", "|").split("|")]


def test_the_import_contracts_hold():
    code, report = lint(ROOT)
    assert code == 0, report
    assert "0 broken" in report and len(contracts()) == 5, report


def test_every_module_has_a_layer_and_no_flask_contract_covers_all_below_web():
    layers = contracts()["layers"]["layers"]
    placed = [m for layer in layers for m in layer_modules(layer)]
    modules = {m.name for m in pkgutil.iter_modules(app.__path__)}
    homeless = sorted(modules - set(placed))
    assert not homeless, (f"modules with no layer in pyproject.toml [tool.importlinter]: "
                          f"{homeless}; add each to the layer it belongs to (see "
                          "docs/architecture.md)")
    assert not set(placed) - modules, f"layers name modules that are gone: {set(placed) - modules}"
    # Everything from web's layer down, except web itself, must stay free of Flask.
    web_layer = next(i for i, layer in enumerate(layers) if "web" in layer_modules(layer))
    below = {f"app.{m}" for layer in layers[web_layer:] for m in layer_modules(layer)} - {"app.web"}
    sources = set(contracts()["no-flask-below-web"]["source_modules"])
    assert sources == below, f"no-flask-below-web misses {below - sources}, extra {sources - below}"


def test_the_linter_fails_on_an_upward_import_a_cycle_flask_and_sql(tmp_path):
    copy = str(tmp_path)
    shutil.copytree(os.path.join(ROOT, "app"), os.path.join(copy, "app"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, copy)

    def add(module, line):
        with open(os.path.join(copy, "app", module), "a", encoding="utf-8") as f:
            f.write(f"\n{line}\n")

    add("task.py", "from . import scheduler  # plain data reaching up into the engine")
    add("configs.py", "from . import logs  # configs <-> logs: one layer, but a cycle")
    add("logs.py", "from . import configs")
    add("store.py", "import flask")
    add("devices.py", "import sqlite3")
    add("executors/ray_bundle.py", "from . import ray_agent  # shared records reaching the node side")
    code, report = lint(copy)
    assert code != 0, report
    assert "5 broken" in report, report
    assert "app.executors.ray_bundle is not allowed to import app.executors.ray_agent" in report, report
    assert "app.task is not allowed to import app.scheduler" in report, report
    assert "No cycles are allowed in app" in report, report
    assert ".configs -> .logs" in report or ".logs -> .configs" in report, report
    assert "app.store -> flask" in report, report
    assert "app.devices -> sqlite3" in report, report
