"""The results table: one row per config with the parameters that differ and its metrics.

A row holds a config's task (state, duration, peak GPU memory), its parameters (dotted YAML
paths of the config as submitted, base resolved; only those that differ between the rows
are shown) and the numbers its task left in its results folder, read from the files the
``results_metrics`` setting names (default ``metrics.json, *.txt``):

- a JSON file: every number in it, nested keys joined with dots (``{"time": {"sim": 2}}``
  gives ``time.sim``); lists are left out. The numbers of ``metrics.json`` keep their own
  names; those of another JSON file are prefixed with its name (``eval.json`` -> ``eval.acc``);
- any other file: its name without the extension (``area.txt`` -> ``area``) when the whole
  file is one number (at most ``TEXT_MAX_BYTES``).

A name found in an earlier source is not replaced by a later one. Reading never follows a
symlink out of the results folder, never reads a file larger than ``results_max_bytes`` and
never opens anything but a regular file.
"""

import csv
import glob
import io
import itertools
import json
import math
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from . import config_values
from .configs import results_dir_for
from .errors import SlotrunError

TEXT_MAX_BYTES = 1024  # a text file holding one number is tiny; larger ones are not read
MAX_FILES_PER_SOURCE = 100  # files one source pattern may match in one results folder
MAX_METRICS_PER_ROW = 500
MAX_ROWS = 5000  # rows of one table (a larger batch: its first 5000 tasks, "truncated")
FIXED_COLUMNS = ("task", "config", "state", "duration", "peak_memory")
_TOKEN = re.compile(r"[A-Za-z]+")


@dataclass
class Row:
    """One config of a results table."""

    task: int | None
    config: str
    state: str | None
    duration: float | None
    peak_memory: int | None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    batch: int | None = None
    note: str | None = None

    def to_json(self, shown_params):
        """Return the row's JSON form with only ``shown_params``."""
        out = {"task": self.task, "config": self.config, "state": self.state,
               "duration": self.duration, "peak_memory": self.peak_memory, "batch": self.batch,
               "params": {p: self.params[p] for p in shown_params if p in self.params},
               "metrics": self.metrics}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Table:
    """The rows and the columns of a results table."""

    params: list
    metrics: list
    goals: dict
    rows: list
    truncated: bool = False
    sources: list = field(default_factory=list)

    def to_json(self):
        """Return the API form of the table."""
        return {"params": self.params, "metrics": self.metrics, "goals": self.goals,
                "rows": [r.to_json(self.params) for r in self.rows],
                "truncated": self.truncated, "sources": self.sources}


def parse_sources(text):
    """Return the source patterns of the ``results_metrics`` setting, or raise naming the rule."""
    patterns = [p.strip() for p in str(text or "").split(",") if p.strip()]
    for p in patterns:
        parts = p.split("/")
        if p.startswith("/") or "\\" in p or ".." in parts or "**" in p:
            raise SlotrunError(f"results_metrics: {p!r} must be a file pattern inside a results "
                               "folder, such as metrics.json or *.txt (no '..', '**' or "
                               "absolute paths)")
    return patterns


def parse_goals(text):
    """Return the name tokens meaning "lower is better" from the ``results_minimize`` setting."""
    return {t.strip().lower() for t in str(text or "").split(",") if t.strip()}


def goal_of(metric, minimize):
    """Return "min" when a metric's name has a lower-is-better word (loss, error...), else "max"."""
    return "min" if any(t.lower() in minimize for t in _TOKEN.findall(metric)) else "max"


# -- reading one results folder ------------------------------------------------------------------

def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def flatten_numbers(data, prefix=""):
    """Return {dotted name: number} of every number in parsed JSON (lists are left out)."""
    out = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                out.update(flatten_numbers(value, name + "."))
            elif _number(value) is not None:
                out[name] = value
    return out


class _FileCache:
    """Parsed metric files by (path, inode, size, mtime): a live table re-reads only changes."""

    def __init__(self, size=20000):
        self.size = size
        self.items = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key, value):
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_FILES = _FileCache()
_PARAMS = _FileCache(5000)


def _file_metrics(path, rel, limit):
    """Return the metrics of one regular file of at most ``limit`` bytes ({} for anything else).

    O_NOFOLLOW: a file swapped for a symlink after the check is not followed; O_NONBLOCK: a
    FIFO cannot hang the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return {}
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _FILES.get(key)
        if cached is not None:
            return cached
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError:
        return {}
    finally:
        os.close(fd)
    found = {} if len(data) > limit else _metrics_of_file(rel, data)
    _FILES.put(key, found)
    return found


def _metrics_of_file(rel, data):
    name, ext = os.path.splitext(rel)
    if ext.lower() == ".json":
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}
        if _number(parsed) is not None:
            return {name.replace("/", "."): parsed}
        prefix = "" if rel == "metrics.json" else name.replace("/", ".") + "."
        return flatten_numbers(parsed, prefix)
    if len(data) > TEXT_MAX_BYTES:
        return {}
    try:
        text = data.decode("utf-8").strip()
        value = float(text)
    except (UnicodeDecodeError, ValueError):
        return {}
    if not math.isfinite(value) or not text or any(c.isspace() for c in text):
        return {}
    as_int = int(value) if re.fullmatch(r"[+-]?\d+", text) else None
    return {name.replace("/", "."): as_int if as_int is not None else value}


def read_metrics(results_root, folder, sources, max_bytes):
    """Return the metrics found in one results folder (``results_root`` already real).

    Every match of every source pattern is resolved; one that leads outside the results
    root (a symlink) is skipped, as are non-regular and too large files.
    """
    out = {}
    real_folder = os.path.realpath(folder)
    if not config_values.inside(results_root, real_folder) or not os.path.isdir(real_folder):
        return out
    for pattern in sources:
        matches = glob.iglob(pattern, root_dir=real_folder)
        for rel in sorted(itertools.islice(matches, MAX_FILES_PER_SOURCE)):
            path = os.path.join(real_folder, rel)
            if not config_values.inside(results_root, os.path.realpath(path)):
                continue
            limit = max_bytes if rel.lower().endswith(".json") else min(max_bytes, TEXT_MAX_BYTES)
            for name, value in _file_metrics(path, rel.replace(os.sep, "/"), limit).items():
                if name not in out and len(out) < MAX_METRICS_PER_ROW:
                    out[name] = value
    return out


# -- parameters -------------------------------------------------------------------------------

def config_params(workspace, config, configs_dir, text=None):
    """Return ({dotted path: value}, note) of a config, base resolved (note: why it failed)."""
    key = (config, text)
    cached = _PARAMS.get(key)
    if cached is not None:
        flat, stamps, note = cached
        if all(_mtime(p) == m for p, m in stamps):
            return flat, note
    try:
        loaded = config_values.load(workspace, config, configs_dir, text=text)
        flat, note = config_values.flatten(loaded.values), None
        files = [os.path.join(workspace, b) for b in loaded.bases]
    except SlotrunError as e:
        flat, note, files = {}, e.message, []
    if text is None:
        files.append(os.path.join(workspace, config))
    _PARAMS.put(key, (flat, [(p, _mtime(p)) for p in files], note))
    return flat, note


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _same(values):
    first = values[0]
    return all(v == first and type(v) is type(first) for v in values[1:])


def differing(rows):
    """Return the parameter paths whose values differ between the rows, in YAML order."""
    order = {}
    for r in rows:
        for p in r.params:
            order.setdefault(p, len(order))
    if len(rows) < 2:
        return []
    out = []
    missing = object()
    for p in order:
        if not _same([r.params.get(p, missing) for r in rows]):
            out.append(p)
    return out


# -- building a table -------------------------------------------------------------------------

def build(workspace, settings, entries, truncated=False):
    """Return the Table of ``entries``: dicts with config and, when it ran, its task's fields.

    A task entry has id, batch_id, config_text (its YAML as submitted), state, started_at,
    finished_at and peak_memory; a config without a task has only ``config``.
    """
    configs_dir, results_dir = settings["configs_dir"], settings["results_dir"]
    sources = parse_sources(settings.get("results_metrics", "metrics.json,*.txt"))
    max_bytes = int(settings.get("results_max_bytes", 1024 * 1024))
    minimize = parse_goals(settings.get("results_minimize", ""))
    results_root = os.path.realpath(os.path.join(workspace, results_dir))
    now = time.time()
    rows = []
    for e in entries:
        started, finished = e.get("started_at"), e.get("finished_at")
        duration = ((finished or now) - started) if started else None
        params, note = config_params(workspace, e["config"], configs_dir, e.get("config_text"))
        folder = os.path.join(workspace, results_dir_for(e["config"], configs_dir, results_dir))
        rows.append(Row(task=e.get("id"), config=e["config"], state=e.get("state"),
                        duration=None if duration is None else round(duration, 3),
                        peak_memory=e.get("peak_memory"), params=params,
                        metrics=read_metrics(results_root, folder, sources, max_bytes),
                        batch=e.get("batch_id"), note=note))
    metrics = []
    seen = set()
    for r in rows:
        for m in r.metrics:
            if m not in seen:
                seen.add(m)
                metrics.append(m)
    return Table(params=differing(rows), metrics=metrics,
                 goals={m: goal_of(m, minimize) for m in metrics}, rows=rows,
                 truncated=truncated, sources=sources)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    # A spreadsheet runs a cell starting with = + - @ as a formula: keep such text inert.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(table):
    """Return the table as CSV text: the fixed columns, the parameters, then the metrics."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(FIXED_COLUMNS) + table.params + table.metrics)
    for r in table.rows:
        fixed = [r.task, r.config, r.state, r.duration, r.peak_memory]
        w.writerow([_cell(v) for v in fixed]
                   + [_cell(r.params.get(p)) for p in table.params]
                   + [_cell(r.metrics.get(m)) for m in table.metrics])
    return buf.getvalue()
