"""The JSON API under /api/v1: everything the page does, scripts can do.

Errors are ``{"error": "..."}`` with a proper status code (see ``app.web``); every route
checks access through ``authorize`` before acting.
"""

import logging
import math
import os
import re
import shlex
import stat
import sys
import threading
import time

from flask import Blueprint, Response, jsonify, request, send_file, url_for

from .. import configs as configs_mod
from .. import pattern_helper
from ..errors import NotFound, SlotrunError
from ..accounts import can
from ..commands import check_template
from ..logs import LOG_NAME, last_line, read_from, tail_bytes
from ..selection import TaskFilter, plan_bulk
from ..settings import parse_size
from ..store import TASK_SORTS
from ..task import ANY_GPU, FINAL_STATES, RETRYABLE_STATES, STATES, device_kind
from ..zipstream import ZIP_CHUNK, stream_zip, walk_regular_files
from .access import authorize
from .auth import current_user
from .extension import VERSION, get_slotrun
from .summary import queue_payload

bp = Blueprint("api", __name__)
log = logging.getLogger(__name__)

MAX_PER_PAGE = 1000
MAX_PAGE = 10**9
MAX_TAIL_LINES = 10000
LOG_READ_CAP = 1024 * 1024  # most bytes one log request returns
MAX_LISTING = 5000  # most entries one folder listing returns
MAX_MEMORY = 2**50
_DIGITS = re.compile(r"[0-9]{1,19}")

TASK_FIELDS = ("id", "batch", "owner", "config", "name", "state", "priority", "devices", "memory",
               "device", "slot", "attempts", "queued_at", "started_at", "finished_at",
               "duration", "exit_code", "message")


# -- presenting records ---------------------------------------------------------------------------

def task_json(t):
    """Return the public JSON form of a task row."""
    out = {}
    for k in TASK_FIELDS:
        if k == "name":
            out[k] = os.path.basename(t["config"])[:-5] if t["config"].endswith(".yaml") \
                else os.path.basename(t["config"])
        else:
            out[k] = t.get(k)
    return out


def batch_json(b, usage=None, store=None):
    """Return a batch's summary: its fields, counts per state, done/total, failures and ETA."""
    counts = {s: 0 for s in STATES}
    counts.update(b.get("counts") or {})
    total = b["total"]
    done = sum(n for s, n in counts.items() if s in FINAL_STATES)
    active = counts["queued"] + counts["running"]
    eta = None
    if active and store is not None and usage is not None:
        eta = _eta(b, counts, usage, store)
    # When the last task ended, once none is queued or running (a requeue makes it null again).
    finished_at = store.batch_finished_at(b["id"]) if not active and store is not None else None
    return {
        "id": b["id"], "owner": b["owner"], "pattern": b["pattern"], "use_gpu": b["use_gpu"],
        "devices": b["devices"], "overwrite": b["overwrite"], "command": b["command"],
        "priority": b.get("priority", 0), "memory": b.get("memory", 0),
        "max_retries": b.get("max_retries", 0), "created_at": b["created_at"],
        "total": total, "counts": counts, "done": done, "failed": counts["failed"],
        "active": active, "finished": active == 0, "finished_at": finished_at, "eta": eta,
    }


def _eta(b, counts, usage, store):
    """Estimate the seconds left: mean duration so far x remaining work / usable slots."""
    n, mean = store.batch_durations(b["id"])
    if not n or mean is None:
        return None
    devices = b["devices"]
    if devices == [ANY_GPU]:
        allowed = [d for d in usage if device_kind(d) != "cpu"]
    else:
        allowed = [d for d in devices if d in usage]
    slots = sum(int(usage[d].get("effective", usage[d].get("slots", 0))) for d in allowed)
    if slots <= 0:
        return None  # nothing can start: no honest estimate
    queued, running = counts["queued"], counts["running"]
    parallel = max(1, min(slots, queued + running))
    # A running task is on average half done.
    return round(mean * (queued + 0.5 * running) / parallel, 1)


def device_list(slotrun, max_age=1.0):
    """Return every device's figures with its slot limit and running count."""
    usage = slotrun.engine.usage()
    out = []
    for d in slotrun.device_figures(max_age):
        item = dict(d)
        u = usage.get(d["id"], {})
        item["slots"] = u.get("slots", 0)
        item["running"] = u.get("running", 0)
        for k, v in u.items():
            if k not in ("slots", "running"):
                item[k] = v  # engine notes such as an out-of-memory cap
        out.append(item)
    return out


def _rel(path, workspace):
    """Return a path relative to the workspace (never an internal absolute path)."""
    if not path:
        return path
    rel = os.path.relpath(path, workspace)
    return None if rel.startswith("..") else rel


def attempt_json(a, workspace):
    """Return the public JSON form of an attempt row."""
    started, finished = a.get("started_at"), a.get("finished_at")
    return {
        "number": a["number"], "state": a["state"], "device": a["device"], "slot": a["slot"],
        "node": a.get("node", ""), "started_at": started, "finished_at": finished,
        "duration": ((finished or time.time()) - started) if started else None,
        "exit_code": a.get("exit_code"), "message": a.get("message"),
        "peak_memory": a.get("peak_memory"), "pid": a.get("pid"),
        "run_dir": _rel(a.get("run_dir"), workspace),
    }


# -- request parsing ------------------------------------------------------------------------------

def _int_arg(name, default, lo, hi):
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not _DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise SlotrunError(f"{name} must be a whole number from {lo} to {hi}, not {raw!r}")
    return int(raw)


def _paging():
    per_page_default = max(1, min(MAX_PER_PAGE, int(get_slotrun().settings["page_size"])))
    page = _int_arg("page", 1, 1, MAX_PAGE)
    per_page = _int_arg("per_page", per_page_default, 1, MAX_PER_PAGE)
    return page, per_page


def _state_arg():
    state = request.args.get("state")
    if state in (None, ""):
        return None
    if state not in STATES:
        raise SlotrunError(f"state must be one of {', '.join(STATES)}; not {state!r}")
    return state


def _sort_args():
    """Return (sort, order) from the query: a TASK_SORTS key and asc / desc, or a 400.

    The default is id, newest first; any other key defaults to ascending.
    """
    sort = request.args.get("sort") or "id"
    if sort not in TASK_SORTS:
        raise SlotrunError(f"sort must be one of {', '.join(TASK_SORTS)}; not {_show(sort)}")
    order = request.args.get("order") or ("desc" if sort == "id" else "asc")
    if order not in ("asc", "desc"):
        raise SlotrunError(f"order must be asc or desc; not {_show(order)}")
    return sort, order


def _json_body(required=True):
    """Return the request's JSON object (an empty dict for an empty body when not required).

    Every state-changing call must say Content-Type: application/json, even with an empty
    body: a cross-site form cannot send that, so a foreign page cannot act for the user.
    """
    if not request.is_json:
        raise SlotrunError("send Content-Type: application/json with a JSON object body"
                           + ("" if required else " (an empty body or {} is fine here)"),
                           status=415)
    if not required and not request.get_data(cache=True).strip():
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise SlotrunError("the request body must be a JSON object, e.g. {\"slots\": 2}")
    return data


_TYPE_NAMES = {bool: "true or false", int: "a whole number", str: "a string", list: "a list",
               dict: "an object"}


def _check_fields(data, spec):
    """Validate a JSON object against {name: (type, default)}; return the values with defaults.

    ``default`` REQUIRED marks a field that must be given; ``None`` types allow null.
    """
    unknown = [k for k in data if k not in spec]
    if unknown:
        raise SlotrunError(f"unknown field {unknown[0]!r}; valid fields: {', '.join(spec)}")
    out = {}
    for name, (types, default) in spec.items():
        if name not in data:
            if default is REQUIRED:
                raise SlotrunError(f"{name} is required")
            out[name] = default
            continue
        value = data[name]
        types = types if isinstance(types, tuple) else (types,)
        ok = value is None and type(None) in types
        for t in types:
            if t is int and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            elif t is not int and t is not type(None) and isinstance(value, t):
                ok = True
        if not ok:
            names = " or ".join(_TYPE_NAMES.get(t, "null") for t in types)
            raise SlotrunError(f"{name} must be {names}, not {_show(value)}")
        out[name] = value
    return out


REQUIRED = object()


def _show(value):
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _in_range(name, value, lo, hi):
    if not lo <= value <= hi:
        raise SlotrunError(f"{name} must be from {lo} to {hi}, not {value}")
    return value


# -- status and queue ----------------------------------------------------------------------------

@bp.get("/status")
def status():
    """Return counts per state, whether the queue is paused, and engine facts."""
    authorize("status.read")
    s = get_slotrun()
    engine = s.engine
    summary = queue_payload(s)
    inv = s.runtime.inventory
    user = current_user()
    view = engine.view
    return jsonify(
        counts=summary["counts"], total=summary["total"], batches=s.store.count_batches(),
        paused=view.queue.paused, queue=view.queue.as_dict(), slots=summary["slots"], user=user["name"], role=user["role"],
        auth=s.auth, server_time=time.time(),
        engine={
            "running": s.runtime.engine is not None, "pid": os.getpid(),
            "started_at": s.runtime.started_at, "executor": s.settings.get("executor", "local"),
            "node": engine.node, "workspace": os.path.basename(s.settings["workspace"]),
            "devices": list(view.usage), "gpus": len(view.gpu_devices),
            "simulated": bool(getattr(inv, "simulated", False)),
            "inventory": getattr(inv, "source", "none"),
            "inventory_error": getattr(inv, "error", "") or None, "version": VERSION,
        })


@bp.post("/queue/pause")
def queue_pause():
    """Stop starting new tasks (running ones go on)."""
    authorize("queue.pause")
    _json_body(required=False)
    return jsonify(paused=get_slotrun().engine.set_paused(True, current_user()["name"]))


@bp.post("/queue/resume")
def queue_resume():
    """Start queued tasks again."""
    authorize("queue.resume")
    _json_body(required=False)
    return jsonify(paused=get_slotrun().engine.set_paused(False))


# -- configs --------------------------------------------------------------------------------------

def _match(pattern):
    s = get_slotrun().settings
    ws = s["workspace"]
    if not os.path.isdir(os.path.join(ws, s["configs_dir"])):
        raise SlotrunError(f"the workspace has no {s['configs_dir']}/ folder, so no config "
                           "can match")
    return pattern_helper.match_configs(ws, pattern, s["configs_dir"], int(s["max_regex_length"]),
                                        float(s["regex_timeout"]))


@bp.get("/configs")
def configs():
    """Preview which configs a pattern matches (the multi-run.py -c rule)."""
    authorize("config.read")
    pattern = request.args.get("pattern")
    if pattern is None:
        raise SlotrunError("pattern is required: a Python regular expression searched in each "
                           "config path, e.g. ?pattern=exp-1")
    found = _match(pattern)
    s = get_slotrun().settings
    complete = [c for c in found if configs_mod.completed_marker(s["workspace"], c, s)]
    return jsonify(pattern=pattern, configs=found, count=len(found), complete=complete)


# -- devices --------------------------------------------------------------------------------------

@bp.get("/devices")
def devices():
    """List every GPU and the CPU with figures, slot limit and running count."""
    authorize("device.read")
    return jsonify(devices=device_list(get_slotrun()))


@bp.patch("/devices/<path:device_id>")
def device_update(device_id):
    """Set a device's slot limit (effective for the next start)."""
    s = get_slotrun()
    engine = s.engine
    if device_id not in engine.usage():
        raise NotFound(f"device {device_id!r} not found; valid: {', '.join(engine.usage())}")
    authorize("device.update", {"id": device_id})
    body = _check_fields(_json_body(), {"slots": (int, REQUIRED)})
    _in_range("slots", body["slots"], 0, 1000)
    engine.set_slots(device_id, body["slots"])
    item = next((d for d in device_list(s, max_age=60) if d["id"] == device_id), None)
    return jsonify(item or {"id": device_id, **engine.usage().get(device_id, {})})


# -- batches --------------------------------------------------------------------------------------

BATCH_FIELDS = {
    "pattern": (str, REQUIRED),
    "use_gpu": (bool, True),
    "devices": ((list, type(None)), None),
    "overwrite": (bool, False),
    "command": ((str, type(None)), None),
    "priority": (int, 0),
    "memory": ((int, str), 0),
    "max_retries": (int, 0),
    "idempotency_key": ((str, type(None)), None),
}
MAX_KEY_LENGTH = 200


def _idempotency_key(field):
    """Return the submit's idempotency key (header or field), or None; raise if malformed."""
    header = request.headers.get("Idempotency-Key")
    if header is not None and field is not None and header != field:
        raise SlotrunError("the Idempotency-Key header and the idempotency_key field differ; "
                           "send one of them")
    key = header if header is not None else field
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise SlotrunError(f"an idempotency key is 1 to {MAX_KEY_LENGTH} printable characters, "
                           "e.g. a UUID")
    return key


def batch_options(body):
    """Return the engine's submit options from validated BATCH_FIELDS values (400 if bad)."""
    devices = body["devices"]
    if devices is not None and (not devices or not all(isinstance(d, str) for d in devices)):
        raise SlotrunError("devices must be a non-empty list of device ids such as "
                           "[\"gpu0\", \"gpu1\"], or left out for any GPU")
    _in_range("priority", body["priority"], -1000, 1000)
    _in_range("max_retries", body["max_retries"], 0, 100)
    memory = body["memory"]
    if isinstance(memory, str):
        memory = parse_size(memory)
    if not 0 <= memory <= MAX_MEMORY:
        raise SlotrunError(f"memory must be from 0 to {MAX_MEMORY} bytes (1 PiB), not {memory}")
    if body["command"] is not None:
        check_template(body["command"])  # an empty template is an error, not "the default"
    get_slotrun().engine.check_devices(body["use_gpu"], devices)
    return dict(use_gpu=body["use_gpu"], devices=devices, overwrite=body["overwrite"],
                command=body["command"], priority=body["priority"], memory=memory,
                max_retries=body["max_retries"],
                idempotency_key=_idempotency_key(body.get("idempotency_key")))


def batch_answer(batch):
    """Return the answer to a submit: id, total, counts per state, its tasks, and whether it
    is the batch an earlier submit with the same idempotency key created (``replayed``)."""
    tasks = [{"id": t["id"], "config": t["config"], "state": t["state"]} for t in batch["tasks"]]
    counts = {}
    for t in tasks:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return {"id": batch["id"], "total": len(tasks), "counts": counts, "tasks": tasks,
            "replayed": bool(batch.get("replayed"))}


@bp.post("/batches")
def batch_create():
    """Queue every config matching a pattern as one batch; answer 201 with its tasks."""
    s = get_slotrun()
    authorize("batch.create")
    owner = current_user()["name"]  # a batch belongs to whoever submits it, never to a field
    body = _check_fields(_json_body(), BATCH_FIELDS)
    options = batch_options(body)  # devices are checked before the (slower) config matching
    found = _match(body["pattern"])
    if not found:
        raise SlotrunError(f"no config in {s.settings['configs_dir']}/ matches "
                           f"{body['pattern']!r}; nothing to run")
    batch = s.engine.submit(found, owner, pattern=body["pattern"], **options)
    response = jsonify(batch_answer(batch))
    # A replay answers what the first submit created (200): no second batch.
    response.status_code = 200 if batch["replayed"] else 201
    response.headers["Location"] = url_for("api.batch_get", batch_id=batch["id"])
    return response


@bp.get("/batches")
def batch_list():
    """List batches, newest first, with progress and ETA."""
    authorize("batch.read")
    s = get_slotrun()
    page, per_page = _paging()
    owner = request.args.get("owner") or None
    if owner is not None and len(owner) > 64:
        raise SlotrunError("owner must be a user name of 1 to 64 characters")
    rows = s.store.list_batches(limit=per_page, offset=(page - 1) * per_page, owner=owner)
    total = s.store.count_batches(owner)
    usage = s.engine.usage()
    return jsonify(batches=[batch_json(b, usage, s.store) for b in rows], total=total,
                   page=page, per_page=per_page, pages=max(1, math.ceil(total / per_page)))


@bp.get("/batches/<id:batch_id>")
def batch_get(batch_id):
    """Return one batch's summary and a page of its tasks (filter with state=)."""
    s = get_slotrun()
    b = s.store.get_batch(batch_id)
    authorize("batch.read", b)
    page, per_page = _paging()
    state = _state_arg()
    tasks, matching = s.store.list_tasks(batch_id=batch_id, state=state, limit=per_page,
                                         offset=(page - 1) * per_page, newest_first=False)
    out = batch_json(b, s.engine.usage(), s.store)
    out.update(tasks=[task_json(t) for t in tasks], tasks_total=matching, page=page,
               per_page=per_page, pages=max(1, math.ceil(matching / per_page)))
    return jsonify(out)


@bp.post("/batches/<id:batch_id>/cancel")
def batch_cancel(batch_id):
    """Cancel every queued and running task of a batch."""
    s = get_slotrun()
    b = s.store.get_batch(batch_id)
    authorize("batch.cancel", b)
    _json_body(required=False)
    result = s.engine.cancel_batch(batch_id)
    return jsonify(id=batch_id, **result)


@bp.route("/batches/<id:batch_id>/priority", methods=["POST", "PATCH"])
def batch_priority(batch_id):
    """Set a batch's priority (admins): higher starts first within its owner's queue."""
    s = get_slotrun()
    b = s.store.get_batch(batch_id)
    authorize("batch.priority", b)
    body = _check_fields(_json_body(), {"priority": (int, REQUIRED)})
    _in_range("priority", body["priority"], -1000, 1000)
    s.engine.set_priority(batch_id, body["priority"])
    return jsonify(batch_json(s.store.get_batch(batch_id), s.engine.usage(), s.store))


@bp.get("/batches/<id:batch_id>/results.zip")
def batch_zip(batch_id):
    """Stream a zip of the results folders of every task of a batch."""
    s = get_slotrun()
    b = s.store.get_batch(batch_id)
    authorize("files.read", b)
    settings = s.settings
    ws = settings["workspace"]
    results_root = settings["results_dir"].rstrip("/") + "/"

    def entries():
        """Yield the zip entries of every task of the batch, a page of tasks at a time."""
        offset = 0
        while True:
            tasks, _ = s.store.list_tasks(batch_id=batch_id, limit=500, offset=offset,
                                          newest_first=False)
            if not tasks:
                return
            offset += len(tasks)
            for t in tasks:
                rel = configs_mod.results_dir_for(t["config"], settings["configs_dir"],
                                                  settings["results_dir"])
                root = os.path.join(ws, rel)
                prefix = rel[len(results_root):] if rel.startswith(results_root) else rel
                yield from walk_regular_files(root, prefix)

    return _zip_response(entries(), f"batch-{batch_id}-results.zip")


# -- tasks ----------------------------------------------------------------------------------------

def _filter_args():
    """Return the TaskFilter of the query (batch, state, owner, q); an unknown batch is a 404."""
    batch = _int_arg("batch", None, 1, 2**63 - 1)
    selection = TaskFilter(batch=batch, state=_state_arg(),
                           owner=request.args.get("owner") or None,
                           search=request.args.get("q") or None)
    if batch is not None:
        get_slotrun().store.get_batch(batch)  # an unknown batch is a 404, not an empty list
    return selection


def with_last_lines(store, tasks):
    """Return the tasks as JSON, each with ``last_line``: the last line of its latest log."""
    dirs = store.latest_run_dirs([t["id"] for t in tasks if t.get("attempts")])
    out = []
    for t in tasks:
        item = task_json(t)
        run_dir = dirs.get(t["id"])
        item["last_line"] = last_line(os.path.join(run_dir, LOG_NAME)) if run_dir else None
        out.append(item)
    return out


@bp.get("/tasks")
def task_list():
    """List tasks (newest first, or sorted), filtered by batch, state, owner and a text in
    the config path (q), a page at a time."""
    authorize("task.read")
    s = get_slotrun()
    page, per_page = _paging()
    sort, order = _sort_args()
    f = _filter_args()
    tasks, total = s.store.list_tasks(batch_id=f.batch, state=f.state, owner=f.owner,
                                      search=f.search, limit=per_page,
                                      offset=(page - 1) * per_page, sort=sort, order=order)
    return jsonify(tasks=with_last_lines(s.store, tasks), total=total, page=page,
                   per_page=per_page, pages=max(1, math.ceil(total / per_page)), sort=sort,
                   order=order)


BULK_FIELDS = {
    "batch": ((int, type(None)), None),
    "state": ((str, type(None)), None),
    "owner": ((str, type(None)), None),
    "q": ((str, type(None)), None),
    "dry_run": (bool, False),
}


def _bulk(action):
    """Cancel or retry every task a filter selects; a member's acts on their own tasks only."""
    s = get_slotrun()
    user = current_user()
    # Allowed to whoever may act on their own tasks; ownership then applies task by task.
    authorize(f"task.{action}", {"owner": user["name"] if user else None})
    body = _check_fields(_json_body(), BULK_FIELDS)
    if body["batch"] is not None:
        _in_range("batch", body["batch"], 1, 2**63 - 1)
        s.store.get_batch(body["batch"])
    selection = TaskFilter(batch=body["batch"], state=body["state"] or None,
                           owner=body["owner"] or None, search=body["q"] or None)
    only_owner = None if can(user, action, None) else user["name"]
    if body["dry_run"]:
        plan = plan_bulk(action, s.store.select_tasks(selection), only_owner)
        return jsonify(**plan.summary(), dry_run=True)
    return jsonify(**s.engine.bulk(action, selection, only_owner), dry_run=False)


@bp.post("/tasks/cancel")
def tasks_cancel():
    """Cancel every queued and running task a filter selects (dry_run: only count them)."""
    return _bulk("cancel")


@bp.post("/tasks/retry")
def tasks_retry():
    """Queue again every failed, cancelled or interrupted task a filter selects."""
    return _bulk("retry")


@bp.get("/owners")
def owners():
    """List everyone who submitted work, with their number of batches and tasks."""
    authorize("task.read")
    return jsonify(owners=[{"name": n, "batches": b, "tasks": t}
                           for n, b, t in get_slotrun().store.owners()])


def _task(task_id, action, with_text=False):
    t = get_slotrun().store.get_task(task_id, with_text=with_text)
    authorize(action, t)
    return t


@bp.get("/tasks/<id:task_id>")
def task_get(task_id):
    """Return a task with its config as submitted, its command and its attempts."""
    s = get_slotrun()
    t = _task(task_id, "task.read", with_text=True)
    ws = s.settings["workspace"]
    out = task_json(t)
    argv = t.get("argv")
    out.update(
        config_text=t.get("config_text"),
        argv=argv,
        command=_display_command(argv) if argv else None,
        results=configs_mod.results_dir_for(t["config"], s.settings["configs_dir"],
                                            s.settings["results_dir"]),
        attempts_list=[attempt_json(a, ws) for a in s.store.attempts(task_id)],
        retryable=t["state"] in RETRYABLE_STATES,
        cancellable=t["state"] in ("queued", "running"),
    )
    run_dir = s.store.latest_run_dirs([task_id]).get(task_id)
    out["last_line"] = last_line(os.path.join(run_dir, LOG_NAME)) if run_dir else None
    engine = s.engine
    if t["state"] == "running" and hasattr(engine, "task_memory_now"):
        now, peak = engine.task_memory_now(task_id)
        out.update(memory_now=now, memory_peak=peak)
    return jsonify(out)


def _display_command(argv):
    shown = ["python" if i == 0 and a == sys.executable else a for i, a in enumerate(argv)]
    return shlex.join(shown)


@bp.post("/tasks/<id:task_id>/cancel")
def task_cancel(task_id):
    """Cancel a queued or running task; answer it once it has stopped."""
    t = _task(task_id, "task.cancel")
    _json_body(required=False)
    return jsonify(task_json(cancel_and_wait(get_slotrun(), t["id"])))


def cancel_and_wait(slotrun, task_id):
    """Cancel a task and return its row once it ended (a running task is given its
    kill_grace, then SIGKILL, to stop; the row is returned as it is after that)."""
    ended = threading.Event()
    final = {}

    def listen(event, payload):
        """Note the task's end (called on the engine's thread: never blocks)."""
        if event == "task" and payload.get("id") == task_id \
                and payload.get("state") in FINAL_STATES:
            final["row"] = payload
            ended.set()

    slotrun.runtime.add_listener(listen)
    try:
        row = slotrun.engine.cancel_task(task_id)
        if row["state"] not in FINAL_STATES:
            ended.wait(float(slotrun.settings["kill_grace"]) + 2)
            row = final.get("row", row)
            if ended.is_set():
                # The engine announces an end before writing it down: a command through its
                # queue runs once it is written, so a GET right after this answer agrees.
                slotrun.engine.call(_written)
    finally:
        slotrun.runtime.remove_listener(listen)
    return row


def _written():
    """Do nothing, on the engine's thread (after it wrote down the ends it announced)."""


@bp.post("/tasks/<id:task_id>/retry")
def task_retry(task_id):
    """Queue a failed, cancelled or interrupted task again."""
    t = _task(task_id, "task.retry")
    _json_body(required=False)
    return jsonify(task_json(get_slotrun().engine.retry(t["id"])))


def _attempt(task_id, number):
    store = get_slotrun().store
    if number is None:
        return store.latest_attempt(task_id)
    for a in store.attempts(task_id):
        if a["number"] == number:
            return a
    raise NotFound(f"task {task_id} has no attempt {number}")


@bp.get("/tasks/<id:task_id>/log")
def task_log(task_id):
    """Return the last N lines of a task's log (tail=N), or its bytes from offset=K."""
    _task(task_id, "log.read")
    tail = _int_arg("tail", 200, 1, MAX_TAIL_LINES)
    offset = _int_arg("offset", None, 0, 2**62)
    att = _attempt(task_id, _int_arg("attempt", None, 1, 10**9))
    if att is None:
        return jsonify(task=task_id, attempt=None, data="", offset=0, size=0, truncated=False)
    path = os.path.join(att["run_dir"], LOG_NAME)
    if offset is not None:
        data, end, truncated = read_from(path, offset, LOG_READ_CAP)
        return jsonify(task=task_id, attempt=att["number"], data=data.decode("utf-8", "replace"),
                       start=end - len(data), offset=end, size=end, truncated=truncated)
    text, size = tail_bytes(path, tail, LOG_READ_CAP)
    return jsonify(task=task_id, attempt=att["number"], data=text, offset=size, size=size,
                   truncated=size > len(text.encode("utf-8", "replace")))


@bp.get("/tasks/<id:task_id>/log/download")
def task_log_download(task_id):
    """Download a task's whole log (latest attempt, or attempt=N)."""
    _task(task_id, "log.read")
    att = _attempt(task_id, _int_arg("attempt", None, 1, 10**9))
    if att is None:
        raise NotFound(f"task {task_id} has not started yet, so it has no log")
    path = os.path.join(att["run_dir"], LOG_NAME)
    try:
        f = open(path, "rb")
    except OSError:
        raise NotFound(f"the log of task {task_id} (attempt {att['number']}) is gone") from None
    size = os.fstat(f.fileno()).st_size

    def body():
        """Yield the log's bytes."""
        # Exactly the bytes present when the download began: a running task keeps writing.
        left = size
        with f:
            while left > 0:
                chunk = f.read(min(ZIP_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    name = f"task-{task_id}-attempt-{att['number']}.log"
    return Response(body(), mimetype="text/plain", headers={
        "Content-Length": str(size), "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{name}"'})


# -- results --------------------------------------------------------------------------------------

def _results_root(t):
    s = get_slotrun().settings
    rel = configs_mod.results_dir_for(t["config"], s["configs_dir"], s["results_dir"])
    return rel, os.path.join(s["workspace"], rel)


def safe_path(root, subpath):
    """Return the real path of ``subpath`` inside ``root``, or raise NotFound.

    Refuses NUL bytes, absolute paths and '..' outright, then checks that the real path
    (symlinks resolved) is still inside the real root.
    """
    if "\x00" in subpath or "\\" in subpath or subpath.startswith("/"):
        raise NotFound("no such file in the task's results")
    parts = [p for p in subpath.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise NotFound("no such file in the task's results")
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, *parts))
    if target != real_root and not target.startswith(real_root + os.sep):
        raise NotFound("no such file in the task's results")
    if not os.path.exists(target):
        raise NotFound("no such file in the task's results")
    return target


@bp.get("/tasks/<id:task_id>/files/", defaults={"subpath": ""})
@bp.get("/tasks/<id:task_id>/files/<path:subpath>")
def task_files(task_id, subpath):
    """List a folder of a task's results, or download one of its files."""
    t = _task(task_id, "files.read")
    rel, root = _results_root(t)
    if not subpath.strip("/") and not os.path.isdir(root):
        raise NotFound(f"task {task_id} has no results yet ({rel}/ does not exist)")
    target = safe_path(root, subpath)
    if os.path.isdir(target):
        return jsonify(_listing(task_id, rel, os.path.realpath(root), target))
    if not os.path.isfile(target):
        raise NotFound("no such file in the task's results")
    return send_file(target, as_attachment=True, download_name=os.path.basename(target),
                     conditional=True, max_age=0)


def _listing(task_id, rel, real_root, folder):
    entries = []
    truncated = False
    with os.scandir(folder) as it:
        for e in it:
            try:
                real = os.path.realpath(e.path)
                if real != real_root and not real.startswith(real_root + os.sep):
                    continue  # a symlink pointing out of the results is not shown
                st = os.stat(real)
            except OSError:
                continue
            if len(entries) >= MAX_LISTING:
                truncated = True
                break
            is_dir = stat.S_ISDIR(st.st_mode)
            entries.append({
                "name": e.name,
                "path": os.path.relpath(e.path, real_root).replace(os.sep, "/"),
                "type": "dir" if is_dir else "file",
                "size": None if is_dir else st.st_size,
                "mtime": st.st_mtime,
                "link": e.is_symlink(),
            })
    entries.sort(key=lambda x: (x["type"] != "dir", x["name"]))
    path = os.path.relpath(folder, real_root).replace(os.sep, "/")
    return {"task": task_id, "results": rel, "path": "" if path == "." else path,
            "entries": entries, "truncated": truncated}


@bp.get("/tasks/<id:task_id>/results.zip")
def task_zip(task_id):
    """Stream a zip of a task's results folder."""
    t = _task(task_id, "files.read")
    rel, root = _results_root(t)
    if not os.path.isdir(root):
        raise NotFound(f"task {task_id} has no results yet ({rel}/ does not exist)")
    name = os.path.basename(rel)
    return _zip_response(walk_regular_files(root, name), f"{name}-results.zip")


def _zip_response(entries, filename):
    return Response(stream_zip(entries), mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store"})
