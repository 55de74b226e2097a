"""Insight: GPU history, batch timelines, task progress and slot suggestions.

One thread per app (``Sampler``) does the periodic work, cheaply and with bounded memory:

- every ``device_refresh`` seconds, while the app runs, it records each device's figures
  (utilisation, memory used / total, memory held by slotrun's tasks, the ids of the slotrun
  tasks running there) in a ring buffer holding the last hour, and sends the sample to the
  browsers as a ``history`` event;
- every ``PROGRESS_INTERVAL`` seconds it reads the last few KiB of each running task's log
  (only when the log grew), matches the ``progress_pattern`` setting, and sends a
  ``progress`` event when a task's (done, total) changed.

The routes read what the engine and the store already know; the only SQL they need lives in
``Store.batch_attempts``.
"""

import logging
import math
import os
import re
import threading
import time
from collections import deque

from flask import Blueprint, jsonify, request

from .. import configs as configs_mod
from ..admission import declared_memory, family_of
from ..errors import NotFound, SlotrunError
from ..logs import LOG_NAME, last_line
from ..settings import format_size, parse_size
from ..task import CPU
from .access import authorize
from .api import _match, batch_json
from .extension import get_slotrun

log = logging.getLogger(__name__)

bp = Blueprint("insight", __name__)

NAMESPACE = "/"
HISTORY_SECONDS = 3600  # what the ring buffers keep: the last hour
PROGRESS_INTERVAL = 2.0  # seconds between looks at the running tasks' logs
PROGRESS_TAIL = 4096  # bytes read from the end of a log to find the latest progress line
TIMELINE_MAX = 5000  # most attempts one timeline answer carries (the newest)
PREDICT_READ_PER_FAMILY = 50  # configs read per family for their declared need
PREDICT_READ_MAX = 1000  # configs read in all for one prediction


# -- the ring buffers ------------------------------------------------------------------------------

class History:
    """The last hour of figures per device, one bounded ring buffer each."""

    def __init__(self, interval, seconds=HISTORY_SECONDS):
        self.interval = max(0.05, float(interval))
        self.maxlen = int(math.ceil(seconds / self.interval)) + 2
        self.seconds = seconds
        self.lock = threading.Lock()
        self.series = {}  # device id -> deque of (t, util, used, total, mine, tasks)
        self.info = {}  # device id -> {"kind", "name", "memory_total"}

    def add(self, when, figures, tasks_by_device, memory_by_device):
        """Record one sample of every device; return the ``history`` event payload."""
        event = {}
        with self.lock:
            present = set()
            for d in figures:
                dev = d["id"]
                present.add(dev)
                tasks = sorted(tasks_by_device.get(dev, ()))
                mine = memory_by_device.get(dev) if d.get("kind") != CPU else None
                if mine is not None and d.get("memory_used") is not None:
                    # The engine samples task memory on its own clock: never show more than
                    # the device uses in this sample.
                    mine = min(mine, int(d["memory_used"]))
                row = (when, d.get("utilization"), int(d.get("memory_used") or 0),
                       int(d.get("memory_total") or 0), mine, tasks)
                ring = self.series.get(dev)
                if ring is None:
                    ring = self.series[dev] = deque(maxlen=self.maxlen)
                ring.append(row)
                self.info[dev] = {"kind": d.get("kind"), "name": d.get("name"),
                                  "memory_total": row[3]}
                event[dev] = {"util": row[1], "used": row[2], "total": row[3], "mine": mine,
                              "tasks": tasks}
            # A device gone from the inventory keeps its past until it ages out.
            for dev, ring in list(self.series.items()):
                if dev not in present and ring and ring[-1][0] < when - self.seconds:
                    del self.series[dev]
                    self.info.pop(dev, None)
        return {"t": when, "interval": self.interval, "devices": event}

    def since(self, start):
        """Return every device's samples taken at or after ``start``, column by column."""
        out = []
        with self.lock:
            for dev, ring in self.series.items():
                rows = [r for r in ring if r[0] >= start]
                out.append({
                    "id": dev, **self.info.get(dev, {}),
                    "t": [r[0] for r in rows], "util": [r[1] for r in rows],
                    "used": [r[2] for r in rows], "total": [r[3] for r in rows],
                    "mine": [r[4] for r in rows], "tasks": [r[5] for r in rows],
                })
        return out


def _copy(mapping):
    """Return a shallow copy of a dict another thread may be changing."""
    for _ in range(5):
        try:
            return dict(mapping)
        except RuntimeError:  # changed size during the copy: try again
            continue
    return {}


# -- progress ----------------------------------------------------------------------------------------

def compile_progress(pattern):
    """Return the compiled progress pattern, or raise an error naming what is valid."""
    try:
        compiled = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
    except (re.error, TypeError, AttributeError) as e:
        raise SlotrunError(f"setting progress_pattern {pattern!r} is not a valid regular "
                           f"expression ({e}); write e.g. step (\\d+)/(\\d+)") from None
    if compiled.groups < 2:
        raise SlotrunError(f"setting progress_pattern {pattern!r} needs two groups, (done) and "
                           "(total), e.g. step (\\d+)/(\\d+)")
    return compiled


def progress_of(path, compiled, tail=PROGRESS_TAIL):
    """Return (done, total) from the last progress line in the end of a log, or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail))
            data = f.read(tail)
    except OSError:
        return None
    last = None
    for m in compiled.finditer(data):
        last = m
    if last is None:
        return None
    try:
        done, total = int(last.group(1)), int(last.group(2))
    except (TypeError, ValueError):
        return None
    if total <= 0 or done < 0:
        return None
    return min(done, total), total


def _progress_json(task_id, found, updated=None):
    done, total = found if found else (None, None)
    return {"task": task_id, "done": done, "total": total,
            "fraction": round(done / total, 4) if found else None, "updated_at": updated}


# -- the sampler thread ------------------------------------------------------------------------------

class Sampler:
    """The app's insight thread: device history every ``device_refresh`` s, task progress."""

    def __init__(self, socketio, slotrun):
        self.socketio = socketio
        self.slotrun = slotrun
        self.interval = max(0.05, float(slotrun.settings["device_refresh"]))
        self.history = History(self.interval)
        self.progress = {}  # task id -> {"done", "total", "size", "mtime", "batch"}
        self.pattern_error = None
        try:
            self.pattern = compile_progress(slotrun.settings.get("progress_pattern")
                                            or r"step (\d+)/(\d+)")
        except SlotrunError as e:
            self.pattern, self.pattern_error = None, e.message
            log.warning("task progress is off: %s", e.message)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slotrun-insight", daemon=True)

    def start(self):
        """Start the thread."""
        self._thread.start()

    def stop(self):
        """Stop the thread."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _closed(self):
        return self._stop.is_set() or getattr(self.slotrun, "_closed", False)

    def _run(self):
        next_history = time.monotonic()
        next_progress = next_history
        backoff = 0.05
        while not self._closed():
            try:
                now = time.monotonic()
                if now >= next_history:
                    next_history = max(next_history + self.interval, now + self.interval / 2)
                    self.sample_devices()
                if now >= next_progress:
                    next_progress = now + min(PROGRESS_INTERVAL, self.interval * 4)
                    self.sample_progress()
                backoff = 0.05
                wait = min(next_history, next_progress) - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)
            except Exception:  # noqa: BLE001 - the insight thread must never die silently
                if self._closed():
                    return
                log.exception("insight sampling failed; retrying in %.2f s", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5)

    def sample_devices(self):
        """Record one history sample and send it to the connected browsers."""
        engine = self.slotrun.runtime.engine
        figures = self.slotrun.device_figures(max_age=self.interval / 2)
        tasks, memory = {}, {}
        view = engine.view if engine is not None else None
        held = view.task_memory if view is not None else {}
        for r in (view.running.values() if view is not None else ()):
            tasks.setdefault(r.device, []).append(r.task_id)
            nbytes = held.get(r.task_id)
            if nbytes is not None:
                memory[r.device] = memory.get(r.device, 0) + nbytes
        event = self.history.add(time.time(), figures, tasks, memory)
        if self.slotrun.clients and not self._closed():
            self.socketio.emit("history", event, namespace=NAMESPACE)

    def sample_progress(self):
        """Read the running tasks' new log ends; send changed progress to the browsers."""
        if self.pattern is None:
            return
        engine = self.slotrun.runtime.engine
        running = list(engine.view.running.values()) if engine is not None else []
        alive = {r.task_id for r in running}
        for tid in [t for t in self.progress if t not in alive]:
            del self.progress[tid]
        changed = []
        lines = {}
        for r in running:
            run_dir = r.run_dir
            if not run_dir:
                continue
            path = os.path.join(run_dir, LOG_NAME)
            try:
                st = os.stat(path)
            except OSError:
                continue
            known = self.progress.get(r.task_id)
            if known is not None and known["size"] == st.st_size and \
                    known["attempt"] == r.attempt_id:
                continue  # nothing new in the log
            found = progress_of(path, self.pattern)
            entry = {"size": st.st_size, "attempt": r.attempt_id, "batch": r.batch_id,
                     "done": None, "total": None, "mtime": st.st_mtime, "line": last_line(path)}
            if found is None and known is not None and known["attempt"] == r.attempt_id:
                # The last progress line scrolled out of the tail: keep what was seen.
                entry.update(done=known["done"], total=known["total"], mtime=known["mtime"])
            elif found is not None:
                entry["done"], entry["total"] = found
            self.progress[r.task_id] = entry
            if entry["done"] is not None and (known is None or (known["done"], known["total"])
                                              != (entry["done"], entry["total"])):
                changed.append((r.task_id, entry))
            if entry["line"] is not None and (known is None or known["line"] != entry["line"]):
                lines[r.task_id] = entry["line"]
        if self.slotrun.clients and not self._closed():
            for tid, e in changed:
                self.socketio.emit("progress", {"task": tid, "batch": e["batch"], "done": e["done"],
                                                "total": e["total"]}, namespace=NAMESPACE)
            if lines:
                # One message per look for every task whose last line changed.
                self.socketio.emit("lines", {"lines": {str(t): v for t, v in lines.items()}},
                                   namespace=NAMESPACE)

    def running_progress(self):
        """Return the known progress of every running task."""
        out = []
        for tid, e in sorted(_copy(self.progress).items()):
            if e["done"] is not None:
                out.append({**_progress_json(tid, (e["done"], e["total"]), e["mtime"]),
                            "batch": e["batch"]})
        return out


def register(socketio, slotrun):
    """Start the insight samplers for this app."""
    sampler = Sampler(socketio, slotrun)
    slotrun.insight = sampler
    sampler.start()


def _sampler():
    s = get_slotrun()
    sampler = getattr(s, "insight", None)
    if sampler is None:  # pragma: no cover - register() always runs in build_app
        raise SlotrunError("insight is not running in this app", status=500)
    return s, sampler


# -- request parsing -------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,6}")


def _minutes():
    raw = request.args.get("minutes")
    hi = HISTORY_SECONDS // 60
    if raw is None or raw == "":
        return hi
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= hi:
        raise SlotrunError(f"minutes must be a whole number from 1 to {hi}, not {raw!r}")
    return int(raw)


def _one_of(names):
    given = [n for n in names if request.args.get(n) not in (None, "")]
    if len(given) != 1:
        raise SlotrunError("give exactly one of " + ", ".join(f"{n}=" for n in names)
                           + " (e.g. ?need=6GiB, ?config=configs/exp-1/exp-1-1.yaml or "
                           "?family=configs/exp-1)"
                           + (f"; got {', '.join(given)}" if given else ""))
    return given[0], request.args[given[0]]


def _config_path(config):
    """Return a workspace-relative config path after checking it names a task config."""
    s = get_slotrun().settings
    prefix = s["configs_dir"].rstrip("/") + "/"
    parts = config.split("/")
    if (not config.startswith(prefix) or not config.endswith(".yaml") or "\x00" in config
            or "\\" in config or any(p in ("", ".", "..") for p in parts)
            or configs_mod.is_base(parts[-1])):
        raise NotFound(f"config {config!r} not found; give a config path such as "
                       f"{prefix}exp-1/exp-1-1.yaml (as listed by /api/v1/configs)")
    if not os.path.isfile(os.path.join(s["workspace"], config)):
        raise NotFound(f"config {config!r} not found in the workspace")
    return config


def _families_known(engine):
    return engine.view.learned


# -- routes: devices -----------------------------------------------------------------------------

@bp.get("/devices/history")
def devices_history():
    """Return every device's samples of the last ``minutes`` (1 to 60), column by column."""
    authorize("device.read")
    s, sampler = _sampler()
    minutes = _minutes()
    now = time.time()
    return jsonify(now=now, minutes=minutes, interval=sampler.interval,
                   devices=sampler.history.since(now - minutes * 60))


# -- routes: batches -------------------------------------------------------------------------------

def _device_order(engine):
    order = {d: i for i, d in enumerate(engine.view.devices if engine is not None else ())}
    return lambda key: (order.get(key[0], len(order)), key[0], key[1])


@bp.get("/batches/<id:batch_id>/timeline")
def batch_timeline(batch_id):
    """Return a batch's attempts as bars on rows, one row per device slot."""
    s = get_slotrun()
    b = s.store.get_batch(batch_id)
    authorize("batch.read", b)
    engine = s.engine
    attempts, truncated = s.store.batch_attempts(batch_id, TIMELINE_MAX)
    rows = {}
    start = end = None
    running = False
    now = time.time()
    for a in attempts:
        bar_end = a["finished_at"]
        peak = a["peak_memory"]
        if a["state"] == "running":
            running = True
            bar_end = None
            peak = engine.task_memory_now(a["task_id"])[1] or peak
        name = os.path.basename(a["config"])
        bar = {
            "task": a["task_id"], "attempt": a["number"], "config": a["config"],
            "name": name[:-5] if name.endswith(".yaml") else name, "state": a["state"],
            "device": a["device"], "slot": a["slot"], "start": a["started_at"], "end": bar_end,
            "duration": (bar_end or now) - a["started_at"], "peak_memory": peak,
            "exit_code": a["exit_code"], "message": a["message"],
        }
        rows.setdefault((a["device"], a["slot"]), []).append(bar)
        start = a["started_at"] if start is None else min(start, a["started_at"])
        if bar_end is not None:
            end = bar_end if end is None else max(end, bar_end)
    summary = batch_json(b, engine.usage(), s.store)
    ordered = sorted(rows, key=_device_order(engine))
    return jsonify(
        batch=batch_id, now=now, start=start, end=None if (running or summary["active"]) else end,
        created_at=b["created_at"], finished=summary["finished"], counts=summary["counts"],
        total=summary["total"], eta=summary["eta"], truncated=truncated,
        rows=[{"device": d, "slot": slot, "bars": rows[(d, slot)]} for d, slot in ordered])


# -- routes: tasks ---------------------------------------------------------------------------------

@bp.get("/tasks/<id:task_id>/progress")
def task_progress(task_id):
    """Return a task's progress from its log's latest progress line (nulls when unknown)."""
    s, sampler = _sampler()
    t = s.store.get_task(task_id)
    authorize("task.read", t)
    if sampler.pattern is None:
        raise SlotrunError(sampler.pattern_error, status=500)
    known = _copy(sampler.progress).get(task_id)
    if t["state"] == "running" and known is not None and known["done"] is not None:
        out = _progress_json(task_id, (known["done"], known["total"]), known["mtime"])
    else:
        att = s.store.latest_attempt(task_id)
        found, updated = None, None
        if att is not None:
            path = os.path.join(att["run_dir"], LOG_NAME)
            found = progress_of(path, sampler.pattern)
            try:
                updated = os.stat(path).st_mtime if found else None
            except OSError:
                updated = None
        out = _progress_json(task_id, found, updated)
    out.update(state=t["state"], pattern=s.settings.get("progress_pattern"))
    return jsonify(out)


@bp.get("/progress")
def running_progress():
    """Return the known progress of every running task."""
    authorize("task.read")
    _, sampler = _sampler()
    return jsonify(tasks=sampler.running_progress())


# -- routes: memory ----------------------------------------------------------------------------------

_NO_MEMORY = ("the tasks of {} were seen to use no GPU memory: memory sets no limit on their "
              "slots, so none is suggested")


@bp.get("/memory/suggest")
def memory_suggest():
    """Propose slot limits per GPU from a memory need (given, declared or learned)."""
    authorize("device.read")
    s = get_slotrun()
    engine = s.engine
    kind, value = _one_of(("need", "config", "family"))
    config = family = None
    if kind == "need":
        need, source = parse_size(value), "declared"
    elif kind == "config":
        config = _config_path(value)
        text = configs_mod.read_config(s.settings["workspace"], config)
        need, source = declared_memory(config, text), "declared"
        family = family_of(config)
        if not need:
            need, source = engine.predicted_need(config), "learned"
        if not need and family in _families_known(engine):
            raise SlotrunError(_NO_MEMORY.format(family))
        if not need:
            raise SlotrunError(f"no GPU memory need is known for {config}: declare gpu_memory in "
                               f"it, or let a task of its family ({family}) finish first")
    else:
        family = value.rstrip("/")
        learned = _families_known(engine)
        need, source = learned.get(family, 0), "learned"
        if family in learned and not need:
            raise SlotrunError(_NO_MEMORY.format(family))
        if not need:
            known = sorted(learned)
            exists = os.path.isdir(os.path.join(s.settings["workspace"], family)) and \
                family.startswith(s.settings["configs_dir"].rstrip("/") + "/")
            what = ("families with a learned need: " + ", ".join(known)) if known else \
                "no family has a learned need yet"
            if exists:
                raise SlotrunError(f"no GPU memory need is learned for {family} yet (a task of "
                                   f"it must finish on a GPU first); {what}")
            raise NotFound(f"family {family!r} not found; {what}")
    if need <= 0:
        raise SlotrunError(f"need must be a memory size above 0, not {value!r}; write e.g. 6GiB")
    slots = engine.suggest_slots(need)
    usage = engine.usage()
    return jsonify(need=need, source=source, config=config, family=family,
                   margin=engine.admission.margin, slots=slots,
                   current={d: usage.get(d, {}).get("slots", 0) for d in slots})


@bp.get("/memory/predict")
def memory_predict():
    """Return the expected GPU memory need per config family (of a pattern's matches)."""
    authorize("config.read")
    s = get_slotrun()
    engine = s.engine
    learned = _families_known(engine)
    pattern = request.args.get("pattern")
    if pattern is None:
        fams = [{"family": f, "configs": None, "declared": None, "learned": n,
                 "need": n, "source": "learned"} for f, n in sorted(learned.items())]
        return jsonify(pattern=None, families=fams, sampled=False)
    ws = s.settings["workspace"]
    found = _match(pattern)  # the same hard time bound as /configs
    by_family = {}
    for c in found:
        by_family.setdefault(family_of(c), []).append(c)
    read = 0
    sampled = False
    fams = []
    for fam in sorted(by_family):
        configs = by_family[fam]
        declared = 0
        for c in configs[:PREDICT_READ_PER_FAMILY]:
            if read >= PREDICT_READ_MAX:
                sampled = True
                break
            read += 1
            try:
                declared = max(declared, declared_memory(c, configs_mod.read_config(ws, c)))
            except SlotrunError:
                continue  # an invalid gpu_memory is reported when the batch is submitted
        if len(configs) > PREDICT_READ_PER_FAMILY:
            sampled = True
        got = learned.get(fam)
        need = declared or got
        source = "declared" if declared else "learned" if got is not None else None
        fams.append({"family": fam, "configs": len(configs), "declared": declared or None,
                     "learned": got, "need": need, "source": source})
    view = engine.admission_view() if fams and engine.view.gpu_devices else {}
    for f in fams:
        f["fit"], f["note"] = _admission_note(engine, view, f)
    return jsonify(pattern=pattern, families=fams, sampled=sampled)


def _fit(view, need, margin):
    """Return {gpu: how many tasks needing ``need`` bytes could start there now}."""
    out = {}
    for d, v in view.items():
        n = 0 if v["blocked"] else v["free_slots"]
        if n and v["available"] is not None:
            room = v["available"] - margin
            n = 0 if room < need else n if not need else min(n, int(room // need))
        out[d] = n
    return out


def _admission_note(engine, view, fam):
    """Return ({gpu: tasks that could start now}, a sentence on what admission will do)."""
    if not view:
        return None, None
    need = fam["need"]
    fit = _fit(view, need or 0, engine.admission.margin)
    if not engine.admission.enabled:
        return fit, "admission is off: tasks start up to each GPU's slot limit"
    now = ", ".join(f"{fit[d]} on {d}" for d in view)
    if need is None:
        return fit, (f"need unknown: tasks start up to each GPU's slot limit ({now} now); "
                     "declare gpu_memory (e.g. gpu_memory: 6GiB) in these configs or give the "
                     "batch a memory to start only what fits; slotrun learns it once a task of "
                     f"{fam['family']} has finished on a GPU")
    room = ", ".join(f"{format_size(max(0, v['available']))} free on {d}"
                     for d, v in view.items() if v["available"] is not None)
    return fit, (f"needs {format_size(need)} per task ({fam['source']}) + "
                 f"{format_size(engine.admission.margin)} margin: {now} could start now"
                 + (f" ({room} after reservations)" if room else ""))
