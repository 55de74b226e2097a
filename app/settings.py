"""Settings, declared once as (name, default, help).

Values come, later ones winning, from the defaults, the workspace's
``slotrun.yaml`` (or ``--settings FILE``), environment variables ``SLOTRUN_<NAME>``
and explicit overrides (command-line options, a test's config dict).
"""

import math
import os
from dataclasses import dataclass

from .errors import SlotrunError


@dataclass(frozen=True)
class Setting:
    """One declared setting."""

    name: str
    default: object
    help: str
    type: type = str
    choices: tuple = ()  # the valid values, when only a few are
    low: float | None = None  # the smallest valid number (numbers: 0 unless said)
    high: float | None = None  # the largest valid number, if any


SETTINGS = (
    Setting("workspace", ".", "Workspace folder holding configs/, models/, run.py and results/."),
    Setting("command", "{python} run.py -c {config} --overwrite {overwrite} {device_args}",
            "Task command template, split into arguments (never run through a shell); the "
            "default passes what the original multi-run.py passed. Placeholders: {python} (this "
            "interpreter), {config} (config path relative to the workspace), {name} (config "
            "name without .yaml), {results} (its results folder), {overwrite} (True or False: "
            "the batch's overwrite), {device_args} (-d 0 for a GPU task: the task's one visible "
            "CUDA device; no argument at all for a CPU task; it must stand alone), {gpu} (the "
            "GPU's NVML index, as in CUDA_VISIBLE_DEVICES; empty on CPU), {device} (gpu3, cpu), "
            "{task_id}, {batch_id}."),
    Setting("configs_dir", "configs", "Folder of experiment configs, relative to the workspace."),
    Setting("results_dir", "results", "Folder of results, relative to the workspace."),
    Setting("done_marker", ".done",
            "File written in a task's results folder once it succeeded; a config whose marker "
            "exists is skipped unless overwrite is asked for."),
    Setting("complete_markers", ("trained.txt",),
            "Other files that also mark a config's results complete (comma-separated, or a list "
            "in slotrun.yaml); the default recognises results of the original multi-run.py "
            "tool, whose run.py writes trained.txt. Empty: only done_marker counts.", tuple),
    Setting("kill_grace", 5.0, "Seconds between SIGTERM and SIGKILL when stopping a task (on "
            "cancel, or what a task left running when it ended).", float, low=0),
    Setting("subreaper", True, "Make the server or multi-run process a child subreaper (Linux), "
            "so processes a task leaves behind, even past setsid, are reparented to it and "
            "stopped with their task.", bool),
    Setting("cpu_slots", 1, "Default number of CPU slots.", int, low=0),
    Setting("gpu_slots", 1, "Default number of slots on each GPU.", int, low=0),
    Setting("fake_gpus", 0, "Number of simulated GPUs (SLOTRUN_FAKE_GPUS) when NVML finds none.",
            int, low=0, high=64),
    Setting("host", "127.0.0.1", "Address the dashboard binds to."),
    Setting("port", 5000, "Port the dashboard listens on.", int, low=1, high=65535),
    Setting("device_refresh", 2.0, "Seconds between device figure refreshes on the dashboard.",
            float, low=0.05),
    Setting("log_push_interval", 0.25, "Seconds between coalesced log-tail pushes to browsers.",
            float, low=0.01),
    Setting("log_push_max_bytes", 65536, "Most bytes of log pushed to a browser per interval.",
            int, low=1),
    Setting("page_size", 50, "Tasks per page in the dashboard and the API.", int, low=1, high=1000),
    Setting("executor", "local", "Executor that starts task processes: local or ray."),
    Setting("ray_address", "auto", "Ray cluster address for the ray executor."),
    Setting("ray_shared_fs", False, "The Ray nodes see the workspace at the same path: tasks run "
            "in place and results are not copied back.", bool),
    Setting("ray_log_interval", 0.5, "Seconds between log pulls from the Ray nodes.",
            float, low=0.05),
    Setting("ray_sync_exclude", "", "Comma-separated patterns left out of the workspace copy sent "
            "to the Ray nodes (results/, .slotrun/, .git are always left out)."),
    Setting("ray_sync_max_size", "256MiB", "Largest workspace copy sent to a Ray node."),
    Setting("ray_node_dir", "", "Folder on each Ray node for workspace copies and run folders "
            "(default <tmp>/slotrun-ray-<uid>)."),
    Setting("ray_call_timeout", 30.0, "Seconds to wait for a Ray node to answer a start or a "
            "collection.", float, low=0.1),
    Setting("ray_node_timeout", 3.0, "Seconds a Ray node's slotrun agent may stay silent (it is "
            "asked every second) before the node is taken out of placement and its running tasks "
            "become interrupted; it takes tasks again once it answers.", float, low=0.1),
    Setting("trust_proxy", False, "Trust one reverse proxy's X-Forwarded-For/-Proto/-Host "
            "(secure cookies and real client addresses behind HTTPS).", bool),
    Setting("auth", True, "Require logins and API tokens (turn off only on 127.0.0.1).", bool),
    Setting("secret_key", "", "Flask secret key; generated and kept in .slotrun/ when empty."),
    Setting("max_regex_length", 500, "Longest config pattern accepted from the dashboard or API.",
            int, low=1),
    Setting("regex_timeout", 0.5, "Seconds a config pattern may spend matching before it is refused.",
            float, low=0.01),
    Setting("max_batch_tasks", 100000, "Most tasks one batch may hold.", int, low=1),
    Setting("memory_margin", "512MiB",
            "Free GPU memory kept in reserve above a task's expected need."),
    Setting("admission", True, "Start a GPU task only when its expected memory (declared "
            "gpu_memory or batch memory, or learned from its config folder) plus the margin fits "
            "in the GPU's free memory minus what its running tasks reserved; a task whose need "
            "is unknown starts up to the slot limit.", bool),
    Setting("probation", "off", "off: tasks of unknown memory need start up to the slot limit. "
            "unknown: a GPU that starts a task of unknown need starts nothing else until that "
            "task's memory levels off (two readings within 2%), it shows no GPU memory for "
            "probation_quiet seconds, or 10 times that passed; what it settled at becomes its "
            "family's learned need.", str, ("off", "unknown")),
    Setting("probation_quiet", 2.0, "With probation: unknown, seconds a new task may show no GPU "
            "memory before it counts as settled.", float),
    Setting("memory_sample_interval", 0.5, "Seconds between GPU readings (free memory, memory "
            "per task, faults) while GPU tasks run or wait.", float, low=0.05),
    Setting("fault_pause_after", 10.0, "Seconds a fault (the database, the run folders, NVML, an "
            "executor) may keep the scheduler from starting or recording tasks before the queue "
            "pauses itself with the reason; it resumes by itself once the fault is gone.", float),
    Setting("store_busy_timeout", 5.0, "Seconds the scheduler's database writes wait for another "
            "writer (a lock held elsewhere) before the step is retried later.", float),
    Setting("progress_pattern", r"step (\d+)/(\d+)",
            "Regex whose two groups (done, total) give a task's progress from its log."),
    Setting("max_sweep_configs", 1000, "Most configs one sweep may create (grid: the product of "
            "the value counts).", int, low=1),
    Setting("results_metrics", "metrics.json,*.txt",
            "Comma-separated file patterns, inside each config's results folder, that the "
            "results table reads metrics from: every number of a JSON file (nested keys joined "
            "with dots), and every other file holding one number (area.txt -> area)."),
    Setting("results_max_bytes", 1048576, "Largest results file the results table reads, in "
            "bytes (text files holding one number: at most 1 KiB).", int, low=1),
    Setting("results_minimize", "loss,error,err,mse,mae,rmse,time,seconds,duration,cost,regret,"
            "latency", "Comma-separated words: a metric whose name holds one is best when lowest "
            "in the results table; any other metric is best when highest."),
    Setting("public_url", "", "The dashboard's address as users reach it, for links in "
            "notifications (e.g. https://lab-gpu.example.org); empty: http://HOST:PORT."),
    Setting("notify_webhook", "", "Server-wide webhook URL (Slack, Mattermost, Discord's /slack "
            "URL) told of every finished batch, failed task and self-paused queue; a lab channel."),
    Setting("notify_webhook_hosts", "", "Comma-separated hosts users' webhooks may call: names "
            "(hooks.slack.com, *.example.org), addresses or networks (10.0.0.0/8), private ones "
            "included. Empty: any host whose addresses are all public."),
    Setting("notify_timeout", 5.0, "Seconds one notification delivery (webhook or e-mail) may "
            "take before it is abandoned.", float, low=0.1),
    Setting("notify_retries", 2, "Retries of a notification that failed for a reason that may "
            "pass (no answer, 429, 5xx), after 1, 3 and 9 s (at most 3).", int),
    Setting("notify_queue_size", 1000, "Notifications waiting to be sent at most; beyond that new "
            "ones are dropped with a log line.", int, low=1),
    Setting("smtp_host", "", "Mail server for e-mail notifications; empty: no e-mail."),
    Setting("smtp_port", 587, "Port of the mail server.", int, low=1, high=65535),
    Setting("smtp_security", "starttls", "starttls, ssl (implicit TLS, port 465) or none."),
    Setting("smtp_user", "", "User name at the mail server (empty: no login)."),
    Setting("smtp_password", "", "Password at the mail server (prefer SLOTRUN_SMTP_PASSWORD to "
            "writing it in slotrun.yaml)."),
    Setting("smtp_from", "", "Sender address of notification e-mails (default slotrun@HOST)."),
)

BY_NAME = {s.name: s for s in SETTINGS}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value, what="value"):
    """Return the boolean a user meant by true/false/yes/no/1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SlotrunError(f"{what} must be true or false, not {value!r}")


def parse_names(value, what="value"):
    """Return a tuple of file names from a list or a comma-separated string."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise SlotrunError(f"{what} must be a list of file names (or one comma-separated "
                           f"string such as 'trained.txt,finished'), not {value!r}")
    names = tuple(v for v in items if v)
    for name in names:
        if name.startswith("/") or ".." in name.split("/") or "\x00" in name:
            raise SlotrunError(f"{what}: {name!r} is not a file name inside a results folder; "
                               "write names such as trained.txt or logs/finished")
    return names


def coerce(setting, value):
    """Return ``value`` converted to the setting's type, or raise a clear error."""
    if setting.type is bool:
        return parse_bool(value, setting.name)
    if setting.type is tuple:
        return parse_names(value, setting.name)
    if isinstance(value, bool) and setting.choices:
        value = "on" if value else "off"  # YAML reads a bare off / on as a boolean
    try:
        value = setting.type(value)
    except (TypeError, ValueError):
        raise SlotrunError(
            f"setting {setting.name} must be {setting.type.__name__}, not {value!r}") from None
    if setting.type in (int, float):
        low = 0 if setting.low is None else setting.low
        if not math.isfinite(value) or value < low or (setting.high is not None
                                                       and value > setting.high):
            valid = f"from {low:g} to {setting.high:g}" if setting.high is not None \
                else f"{low:g} or more"
            raise SlotrunError(f"setting {setting.name} must be {valid}, not {value!r}")
    if setting.choices and value not in setting.choices:
        raise SlotrunError(f"setting {setting.name} must be one of {', '.join(setting.choices)}, "
                           f"not {value!r}")
    return value


def load(overrides=None, environ=None, settings_file=None):
    """Return a dict of every setting's value."""
    environ = os.environ if environ is None else environ
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = {s.name: s.default for s in SETTINGS}
    workspace = overrides.get("workspace") or environ.get("SLOTRUN_WORKSPACE") or "."
    path = settings_file or os.path.join(workspace, "slotrun.yaml")
    if os.path.isfile(path):
        # Imported here: yaml takes ~10 ms to import, which multi-run.py's start-up need not
        # pay where there is no slotrun.yaml (most workspaces).
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise SlotrunError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise SlotrunError(f"{path} must hold a mapping of setting: value")
        for key, value in data.items():
            if key not in BY_NAME:
                raise SlotrunError(
                    f"{path}: unknown setting {key!r}; valid: {', '.join(sorted(BY_NAME))}")
            values[key] = coerce(BY_NAME[key], value)
    for s in SETTINGS:
        env = environ.get("SLOTRUN_" + s.name.upper())
        if env not in (None, ""):
            values[s.name] = coerce(s, env)
    for key, value in overrides.items():
        if key in BY_NAME:
            values[key] = coerce(BY_NAME[key], value)
        else:
            values[key] = value
    values["workspace"] = os.path.abspath(values["workspace"])
    return values


def parse_size(text):
    """Return a byte count from 6GiB / 512MiB / 1.5GB / 1024 (bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise SlotrunError(f"a memory size cannot be negative: {text}")
        return int(text)
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
             "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
             "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = None
    if value is None or unit not in units or value < 0:
        raise SlotrunError(
            f"not a memory size: {text!r}; write e.g. 6GiB, 512MiB, 1.5GB or a byte count")
    return int(value * units[unit])


def format_size(nbytes):
    """Return a byte count as people read it: 10 GiB, 6.2 GiB, 512 MiB."""
    n = float(nbytes)
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 0.05 else f"{v:.1f} {unit}"
    return f"{int(n)} B"


def markdown_table():
    """Return the settings as a Markdown table (the README's settings section)."""
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for st in SETTINGS:
        default = ",".join(st.default) if isinstance(st.default, tuple) else st.default
        default = default if default != "" else "(empty)"
        rows.append(f"| `{st.name}` | `SLOTRUN_{st.name.upper()}` | `{default}` | {st.help} |")
    return "\n".join(rows)
