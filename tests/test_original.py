"""The original tool's users switch without touching their code.

A stand-in repository (tests/standin_original/run.py) keeps the original run.py contract:
``-c CONFIG --overwrite BOOL`` plus ``-d DEVICE`` on a GPU, ``cuda:-1`` and indices outside the
visible mask refused as CUDA refuses them, ``trained.txt`` written last, and a config whose
``trained.txt`` exists refused without ``--overwrite True``. slotrun runs it unmodified, with
default settings, on simulated GPUs and on the CPU, headless and through the server's API.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from app import create_app
from app import settings as settings_mod
from app.configs import completed_marker
from app.errors import SlotrunError
from app.scheduler import check_template, command_values, render_command
from tests.helpers import ROOT, close_apps, task_env, wait_for

STANDIN = os.path.join(ROOT, "tests", "standin_original", "run.py")
CONFIGS = {"exp-1/exp-1-1": 1.0, "exp-1/exp-1-2": 10.0, "exp-1/exp-1-3": 100.0,
           "exp-2/exp-2-1-1": 2.0, "exp-2/exp-2-1-2": 3.0}
EXP1 = ["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml", "configs/exp-1/exp-1-3.yaml"]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository made for the original tool: its run.py, configs/, and nothing of slotrun."""
    path = tmp_path / "their-repo"
    os.makedirs(path)
    shutil.copy(STANDIN, path / "run.py")
    for name, radius in CONFIGS.items():
        os.makedirs(path / "configs" / os.path.dirname(name), exist_ok=True)
        with open(path / "configs" / f"{name}.yaml", "w", encoding="utf-8") as f:
            f.write(f"model_params:\n  name: circle\n  radius: {radius}\n")
    monkeypatch.setenv("SLOTRUN_FAKE_GPU_DIR", str(tmp_path / "fakegpu"))
    for name in ("SLOTRUN_FAKE_GPUS", "SLOTRUN_WORKSPACE", "SLOTRUN_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    return str(path)


def standin(repo, *args, **env):
    return subprocess.run([sys.executable, "run.py", *args], cwd=repo, capture_output=True,
                          text=True, timeout=30, env=task_env(**env))


def multi_run(repo, *args, gpus=2):
    """Run slotrun's multi-run.py from elsewhere, pointed at their repository."""
    env = task_env(SLOTRUN_FAKE_GPUS=gpus) if gpus else task_env()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "multi-run.py"), "--workspace", repo,
                        *args, "-check", "false"], cwd=os.path.dirname(repo), env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    print(f"$ multi-run.py --workspace their-repo {' '.join(args)} -check false\n{r.stdout}")
    return r


def runs(repo, group="exp-1"):
    root = os.path.join(repo, "results", group)
    out = {}
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name, "run.json"), encoding="utf-8") as f:
            out[name] = json.load(f)
    return out


def finished_lines(stdout):
    return sorted(line for line in stdout.splitlines() if line.startswith("The process finished"))


@pytest.mark.slow
def test_the_standin_refuses_what_a_real_gpu_server_refuses(repo):
    cfg = "configs/exp-1/exp-1-1.yaml"
    r = standin(repo, "-c", cfg, "--overwrite", "False", CUDA_VISIBLE_DEVICES="3")
    assert r.returncode != 0 and "Invalid device string: 'cuda:-1'" in r.stderr
    r = standin(repo, "-c", cfg, "--overwrite", "False", "-d", "3", CUDA_VISIBLE_DEVICES="3")
    assert r.returncode != 0 and "invalid device ordinal" in r.stderr
    assert standin(repo, "-c", cfg, "--overwrite", "False", "-d", "0",
                   CUDA_VISIBLE_DEVICES="3").returncode == 0
    r = standin(repo, "-c", cfg, "-d", "0", CUDA_VISIBLE_DEVICES="3")
    assert r.returncode != 0 and "AlreadyTrainedError" in r.stderr


@pytest.mark.slow
def test_an_original_repository_runs_unmodified_on_gpus_and_cpu(repo):
    # 1. First run on two simulated GPUs, one slot each.
    first = multi_run(repo, "-c", "exp-1", "-d", "1", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    ends = [line for line in first.stdout.splitlines() if line.startswith("The process finished")]
    assert sorted(line.rsplit(" [", 1)[0] for line in ends) == [
        f"The process finished: python run.py -c {c} --overwrite False" for c in EXP1]
    assert [line.rsplit(" ", 1)[1] for line in ends] == ["[1/3]", "[2/3]", "[3/3]"]
    assert first.stdout.splitlines()[-1] == "Summary: 3 succeeded, 0 failed, 0 skipped"
    done = runs(repo)
    assert {r["device"] for r in done.values()} == {"cuda:0"}  # -d 0 under a one-GPU mask
    assert {r["cuda_visible_devices"] for r in done.values()} == {"0", "1"}
    assert not any(r["overwrite"] for r in done.values())

    # 2. Results as the original tool leaves them: trained.txt only. All skipped, none started.
    for name in done:
        os.unlink(os.path.join(repo, "results", "exp-1", name, ".done"))
        assert os.path.exists(os.path.join(repo, "results", "exp-1", name, "trained.txt"))
    listed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "multi-run.py"), "--workspace", repo, "-c", "exp-1"],
        env=task_env(SLOTRUN_FAKE_GPUS=2), capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL)
    assert listed.stdout.count("(results complete: will be skipped)") == 3, listed.stdout
    again = multi_run(repo, "-c", "exp-1", "-d", "1", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines() == [
        f"Skip {c} (results already complete; -w true reruns it)" for c in EXP1] + [
        "Summary: 0 succeeded, 0 failed, 3 skipped"]
    assert runs(repo) == done

    # 3. -w true reaches run.py as --overwrite True: every config runs again and succeeds.
    forced = multi_run(repo, "-c", "exp-1", "-d", "1", "1", "-w", "true")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert forced.stdout.splitlines()[-1] == "Summary: 3 succeeded, 0 failed, 0 skipped"
    assert all(line.split(" [")[0].endswith("--overwrite True")
               for line in finished_lines(forced.stdout))
    redone = runs(repo)
    assert all(r["overwrite"] and r["device"] == "cuda:0" for r in redone.values())
    assert all(redone[n]["started"] > done[n]["started"] for n in done)

    # 4. The CPU: no -d at all, and CUDA sees no GPU, so run.py's default -1 means the CPU.
    cpu = multi_run(repo, "-c", "exp-2-1", "-gpu", "false", "-d", "2", gpus=0)
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    assert cpu.stdout.splitlines()[-1] == "Summary: 2 succeeded, 0 failed, 0 skipped"
    assert "The process finished: python run.py -c configs/exp-2/exp-2-1-1.yaml --overwrite False" \
        in cpu.stdout
    on_cpu = runs(repo, "exp-2")
    assert [(r["device"], r["cuda_visible_devices"]) for r in on_cpu.values()] == [("cpu", "")] * 2


@pytest.fixture
def server_app(repo, monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.setenv("STANDIN_SECONDS", "0.1")
    app = create_app({"TESTING": True, "workspace": repo, "auth": False})
    yield app
    close_apps([app])


@pytest.mark.slow
def test_a_server_batch_passes_the_same_arguments(repo, server_app):
    client = server_app.test_client()
    os.makedirs(os.path.join(repo, "results", "exp-1", "exp-1-1"))
    open(os.path.join(repo, "results", "exp-1", "exp-1-1", "trained.txt"), "w").close()
    assert client.get("/api/v1/configs?pattern=exp-1").json["complete"] == [EXP1[0]]

    def run_batch(**body):
        r = client.post("/api/v1/batches", json={"pattern": "exp-1", **body})
        assert r.status_code == 201, r.json
        b = wait_for(lambda: (lambda b: b if b["finished"] else None)(
            client.get(f"/api/v1/batches/{r.json['id']}").json), 20)
        return {t["config"]: client.get(f"/api/v1/tasks/{t['id']}").json for t in b["tasks"]}

    tasks = run_batch()
    assert tasks[EXP1[0]]["state"] == "skipped"
    for c in EXP1[1:]:
        assert tasks[c]["state"] == "succeeded", tasks[c]
        assert tasks[c]["argv"][1:] == ["run.py", "-c", c, "--overwrite", "False", "-d", "0"]
    tasks = run_batch(overwrite=True, use_gpu=False)
    for c in EXP1:
        assert tasks[c]["state"] == "succeeded", tasks[c]
        assert tasks[c]["argv"][1:] == ["run.py", "-c", c, "--overwrite", "True"]
    assert {r["device"] for r in runs(repo).values()} == {"cpu"}


@pytest.mark.slow
def test_a_config_edited_while_queued_runs_as_submitted_with_results_in_their_folder(
        repo, server_app):
    # The original run.py derives its results folder from the -c path: the copy of the config
    # as submitted, which the engine passes when the file changed, must lead there too.
    client = server_app.test_client()
    assert client.post("/api/v1/queue/pause", json={}).status_code == 200
    r = client.post("/api/v1/batches", json={"pattern": "exp-1-1", "use_gpu": True})
    assert r.status_code == 201, r.json
    with open(os.path.join(repo, EXP1[0]), "w", encoding="utf-8") as f:
        f.write("model_params:\n  name: circle\n  radius: 7.0\n")
    assert client.post("/api/v1/queue/resume", json={}).status_code == 200
    b = wait_for(lambda: (lambda b: b if b["finished"] else None)(
        client.get(f"/api/v1/batches/{r.json['id']}").json), 20)
    task = client.get(f"/api/v1/tasks/{b['tasks'][0]['id']}").json
    assert task["state"] == "succeeded", task
    assert task["argv"][3] != EXP1[0] and task["argv"][3].endswith(EXP1[0]), task["argv"]
    results = os.path.join(repo, "results", "exp-1", "exp-1-1")
    assert runs(repo)["exp-1-1"]["params"]["radius"] == 1.0  # as submitted, in its folder
    assert os.path.exists(os.path.join(results, "trained.txt"))
    assert completed_marker(repo, EXP1[0], settings_mod.load({"workspace": repo}))
    again = client.post("/api/v1/batches", json={"pattern": "exp-1-1"})
    assert again.json["tasks"][0]["state"] == "skipped", again.json


def submit_and_wait(client, **body):
    """Submit a batch; return its one task once it is ``running`` or finished."""
    r = client.post("/api/v1/batches", json=body)
    assert r.status_code == 201, r.json
    tid = r.json["tasks"][0]["id"]
    return wait_for(lambda: (lambda t: t if t["state"] not in ("queued", "starting") else None)(
        client.get(f"/api/v1/tasks/{tid}").json), 20)


@pytest.mark.slow
def test_an_overwrite_cut_short_leaves_its_config_incomplete(repo, server_app, monkeypatch):
    client = server_app.test_client()
    results = os.path.join(repo, "results", "exp-1", "exp-1-1")
    settings = settings_mod.load({"workspace": repo})
    first = submit_and_wait(client, pattern="exp-1-1")
    wait_for(lambda: client.get(f"/api/v1/tasks/{first['id']}").json["state"] == "succeeded", 20)
    assert sorted(os.listdir(results)) == [".done", "run.json", "trained.txt"]
    # An overwrite starts: run.py removes its trained.txt, slotrun its .done; then it is cut
    # short. Nothing may say the half-written results are complete.
    monkeypatch.setenv("STANDIN_SECONDS", "30")
    task = submit_and_wait(client, pattern="exp-1-1", overwrite=True)
    assert task["state"] == "running", task
    wait_for(lambda: not os.path.exists(os.path.join(results, "trained.txt")), 10)
    assert completed_marker(repo, EXP1[0], settings) is None
    assert client.post(f"/api/v1/tasks/{task['id']}/cancel", json={}).status_code == 200
    wait_for(lambda: client.get(f"/api/v1/tasks/{task['id']}").json["state"] == "cancelled", 20)
    assert completed_marker(repo, EXP1[0], settings) is None
    monkeypatch.setenv("STANDIN_SECONDS", "0.1")
    again = submit_and_wait(client, pattern="exp-1-1")
    assert again["state"] in ("running", "succeeded"), again  # run again, not skipped


@pytest.mark.slow
def test_a_retry_after_trained_txt_was_written_is_skipped_not_refused(repo, server_app):
    # The original run.py writes trained.txt last: a run cut short after it wrote it is
    # complete. Its retry (no overwrite) is skipped, never started to fail AlreadyTrainedError.
    client = server_app.test_client()
    touch_and_wait = ('{python} -c "import os, time; os.makedirs(\'{results}\', exist_ok=True); '
                      "open(os.path.join('{results}', 'trained.txt'), 'w').close(); "
                      'time.sleep(30)"')
    task = submit_and_wait(client, pattern="exp-1-1", command=touch_and_wait)
    assert task["state"] == "running", task
    marker = os.path.join(repo, "results", "exp-1", "exp-1-1", "trained.txt")
    wait_for(lambda: os.path.exists(marker), 10)
    assert client.post(f"/api/v1/tasks/{task['id']}/cancel", json={}).status_code == 200
    wait_for(lambda: client.get(f"/api/v1/tasks/{task['id']}").json["state"] == "cancelled", 20)
    assert client.post(f"/api/v1/tasks/{task['id']}/retry", json={}).status_code == 200
    retried = wait_for(lambda: (lambda t: t if t["state"] not in ("queued", "cancelled") else None)(
        client.get(f"/api/v1/tasks/{task['id']}").json), 20)
    assert retried["state"] == "skipped" and "trained.txt" in retried["message"], retried


@pytest.mark.slow
def test_the_sample_run_py_keeps_the_same_contract(workspace):
    def sample(*args, **env):
        return subprocess.run([sys.executable, "run.py", "-c", "configs/exp-1/exp-1-1.yaml", *args],
                              cwd=workspace, capture_output=True, text=True, timeout=30,
                              env=task_env(SLOTRUN_SIM_TIME=0, **env))

    r = sample("-d", "1", CUDA_VISIBLE_DEVICES="2")
    assert r.returncode == 2 and "-d 1 is not a visible CUDA device" in r.stderr
    assert not os.path.exists(os.path.join(workspace, "results", "exp-1", "exp-1-1"))
    assert sample("--overwrite", "False", "-d", "0", CUDA_VISIBLE_DEVICES="2").returncode == 0
    r = sample()
    assert r.returncode == 3 and "already complete" in r.stderr and "--overwrite True" in r.stderr
    r = sample("--overwrite", "True")
    assert r.returncode == 0 and "overwriting it" in r.stdout
    with open(os.path.join(workspace, "results", "exp-1", "exp-1-1", "meta.json")) as f:
        meta = json.load(f)
    assert meta["overwrite"] is True and meta["device"] == -1


def test_device_args_is_a_whole_argument_and_overwrite_a_python_boolean():
    template = settings_mod.BY_NAME["command"].default
    assert render_command(template, command_values("c.yaml", True, 3, python="py")) == [
        "py", "run.py", "-c", "c.yaml", "--overwrite", "True", "-d", "0"]
    assert render_command(template, command_values("c.yaml", False, None, python="py")) == [
        "py", "run.py", "-c", "c.yaml", "--overwrite", "False"]
    assert check_template("run {{device_args}}") == ["run", "{{device_args}}"]
    for bad in ("run -d{device_args}", "run --dev={device_args}", "run {device_args}{gpu}"):
        with pytest.raises(SlotrunError, match="must be an argument of its own"):
            check_template(bad)
    with pytest.raises(SlotrunError, match=r"valid: .*\{overwrite\}, \{device_args\}"):
        check_template("run {devices_args}")


def test_complete_markers_setting(tmp_path):
    s = settings_mod.load({"workspace": str(tmp_path)}, environ={})
    assert s["complete_markers"] == ("trained.txt",)
    folder = tmp_path / "results" / "a"
    os.makedirs(folder)
    assert completed_marker(str(tmp_path), "configs/a.yaml", s) is None
    (folder / "trained.txt").touch()
    assert completed_marker(str(tmp_path), "configs/a.yaml", s) == "results/a/trained.txt"
    (folder / ".done").touch()
    assert completed_marker(str(tmp_path), "configs/a.yaml", s) == "results/a/.done"
    os.unlink(folder / ".done")
    none = settings_mod.load({"workspace": str(tmp_path)},
                             environ={"SLOTRUN_COMPLETE_MARKERS": ""})
    assert none["complete_markers"] == ("trained.txt",)  # an empty variable is unset
    (tmp_path / "slotrun.yaml").write_text("complete_markers: []\n")
    assert completed_marker(str(tmp_path), "configs/a.yaml", settings_mod.load(
        {"workspace": str(tmp_path)}, environ={})) is None
    two = settings_mod.load({"workspace": str(tmp_path)},
                            environ={"SLOTRUN_COMPLETE_MARKERS": "finished, logs/ok"})
    assert two["complete_markers"] == ("finished", "logs/ok")
    for bad in ("../x", "/etc/passwd"):
        with pytest.raises(SlotrunError, match="not a file name inside a results folder"):
            settings_mod.load({"workspace": str(tmp_path)},
                              environ={"SLOTRUN_COMPLETE_MARKERS": bad})
    (tmp_path / "slotrun.yaml").write_text("complete_markers: 3\n")
    with pytest.raises(SlotrunError, match="must be a list of file names"):
        settings_mod.load({"workspace": str(tmp_path)}, environ={})
