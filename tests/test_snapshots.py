"""Config snapshots: every base a config names, as run.py resolves it, kept and written back."""

import os

import pytest
import yaml

from app import snapshots


@pytest.mark.parametrize("text", [
    "base: exp-1-base.yaml\nmodel_params:\n  radius: 1.0\n",
    "model_params:\n  radius: 1.0\nbase: ../common-base.yaml  # shared\n",
    "base: 'quoted base.yaml'\n",
    'base: "dq.yaml"\n',
    "{base: flow.yaml, model_params: {radius: 2}}\n",
    "base: first.yaml\nbase: second.yaml\n",
    "model_params:\n  base: not-top-level.yaml\n",
    "base_lr: 0.1\nbase: real.yaml\n",
    "notes: |\n  base: inside a block\nmodel_params: {}\n",
    "model_params: [unclosed\n",
    "",
    "base:\n",
])
def test_base_of_reads_what_yaml_reads(text):
    try:
        data = yaml.safe_load(text)
        expected = data.get("base") if isinstance(data, dict) else None
    except yaml.YAMLError:
        expected = None
    assert snapshots.base_of(text) == (str(expected) if expected else None)


def test_collect_follows_relative_bases_and_write_mirrors_them(tmp_path):
    ws = tmp_path / "ws"
    (ws / "configs" / "exp" / "sub").mkdir(parents=True)
    (ws / "shared").mkdir()
    (ws / "configs" / "exp" / "sub" / "a.yaml").write_text("base: ../exp-base.yaml\nx: 1\n")
    (ws / "configs" / "exp" / "exp-base.yaml").write_text("base: ../../shared/root-base.yaml\n")
    (ws / "shared" / "root-base.yaml").write_text("model_params:\n  name: circle\n")
    text = (ws / "configs" / "exp" / "sub" / "a.yaml").read_text()
    files = snapshots.collect(str(ws), "configs/exp/sub/a.yaml", text)
    assert files == {"configs/exp/exp-base.yaml": "base: ../../shared/root-base.yaml\n",
                     "shared/root-base.yaml": "model_params:\n  name: circle\n"}
    assert snapshots.unchanged(str(ws), files)
    (ws / "shared" / "root-base.yaml").write_text("edited\n")
    assert not snapshots.unchanged(str(ws), files)
    run = tmp_path / "run"
    written = snapshots.write(str(run), {"configs/exp/sub/a.yaml": text, **files}, str(ws),
                              "results")
    copy = written["configs/exp/sub/a.yaml"]
    # The results folder the copy's path names (configs/ -> results/) is the workspace's own.
    derived = os.path.dirname(copy.replace("configs", "results"))
    assert os.path.realpath(derived) == str(ws / "results" / "exp" / "sub")
    # The copy's bases resolve, relative to it, to the copies of the bases.
    base = os.path.normpath(os.path.join(os.path.dirname(copy), "../exp-base.yaml"))
    assert open(base).read() == files["configs/exp/exp-base.yaml"]
    root = os.path.normpath(os.path.join(os.path.dirname(base), "../../shared/root-base.yaml"))
    assert open(root).read() == "model_params:\n  name: circle\n"
    assert root.startswith(str(run))


def test_collect_stops_at_cycles_missing_and_absolute_bases(tmp_path):
    ws = tmp_path / "ws"
    (ws / "c").mkdir(parents=True)
    (ws / "c" / "a.yaml").write_text("base: b.yaml\n")
    (ws / "c" / "b.yaml").write_text("base: a.yaml\n")
    assert snapshots.collect(str(ws), "c/a.yaml", "base: b.yaml\n") == {"c/b.yaml": "base: a.yaml\n"}
    assert snapshots.collect(str(ws), "c/x.yaml", "base: gone.yaml\n") == {}
    assert snapshots.collect(str(ws), "c/x.yaml", f"base: {ws}/c/b.yaml\n") == {}


# -- the engine runs what was submitted -----------------------------------------------------------

def _area(ws, name):
    with open(os.path.join(ws, "results", "exp-1", name, "area.txt")) as f:
        return float(f.read())


@pytest.mark.parametrize("change", ["edit base", "delete base", "delete config and base"])
def test_queued_task_runs_its_snapshot_with_its_base(workspace, change):
    """exp-1-1 names exp-1-base.yaml (the model: a circle). Edited or deleted while the task
    waits, the task still runs the config and base as submitted; relative base resolves."""
    from tests.test_engine import make_engine

    eng, store = make_engine(workspace, cpu_slots=1)
    base = os.path.join(workspace, "configs", "exp-1", "exp-1-base.yaml")
    config = os.path.join(workspace, "configs", "exp-1", "exp-1-1.yaml")
    try:
        eng.set_paused(True)
        b = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", use_gpu=False)
        tid = b["tasks"][0]["id"]
        if change == "edit base":
            with open(base, "w") as f:  # a square now: area 4 for a "radius" 1... if it ran
                f.write("model_params:\n  name: rectangle\n  length: 2.0\n  width: 2.0\n")
        else:
            os.unlink(base)
            if change == "delete config and base":
                os.unlink(config)
        eng.set_paused(False)
        from tests.helpers import wait_for

        wait_for(lambda: store.get_task(tid)["state"] in ("succeeded", "failed"), timeout=15)
        t = store.get_task(tid)
        assert t["state"] == "succeeded", (t, open(os.path.join(
            store.latest_attempt(tid)["run_dir"], "output.log")).read())
        assert _area(workspace, "exp-1-1") == pytest.approx(3.141592653589793)
        run_dir = store.latest_attempt(tid)["run_dir"]
        assert t["argv"][t["argv"].index("-c") + 1].startswith(
            os.path.relpath(run_dir, workspace))  # it ran the copy
    finally:
        eng.stop()


def test_unchanged_config_runs_in_place_and_bases_are_stored_once(workspace):
    from tests.helpers import wait_for
    from tests.test_engine import make_engine

    eng, store = make_engine(workspace, cpu_slots=2)
    try:
        b = eng.submit([f"configs/exp-1/exp-1-{i}.yaml" for i in (1, 2, 3)], "ann", use_gpu=False)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: all(store.get_task(i)["state"] == "succeeded" for i in ids), timeout=20)
        for i in ids:
            t = store.get_task(i)
            assert t["argv"][t["argv"].index("-c") + 1] == t["config"]
            assert store.config_bases(i) == {"configs/exp-1/exp-1-base.yaml": open(os.path.join(
                workspace, "configs", "exp-1", "exp-1-base.yaml")).read()}
    finally:
        eng.stop()
