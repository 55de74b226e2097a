"""The HTML pages: the dashboard and a task's page (their data comes from the API)."""

import time

from flask import Blueprint, render_template, request

from ..task import ACTIVE_STATES, FINAL_STATES, RETRYABLE_STATES, STATES
from . import VERSION, authorize, current_user, get_slotrun
from .events import LOG_TAIL_LINES

bp = Blueprint("views", __name__)


def bootstrap(**extra):
    """Return the small JSON the page scripts start from (settings, user, names)."""
    s = get_slotrun().settings
    root = request.script_root
    data = {
        "api": f"{root}/api/v1",
        "socketio_path": f"{root}/socket.io",
        "page_size": int(s["page_size"]),
        "device_refresh": float(s["device_refresh"]),
        "log_push_interval": float(s["log_push_interval"]),
        "log_tail": LOG_TAIL_LINES,
        "max_regex_length": int(s["max_regex_length"]),
        "states": list(STATES),
        "final_states": sorted(FINAL_STATES),
        "active_states": sorted(ACTIVE_STATES),
        "retryable_states": sorted(RETRYABLE_STATES),
        "user": {"name": current_user(), "role": "admin"},
        "read_only": False,
        "server_time": time.time(),
        "version": VERSION,
        "batch": None,
        "task": None,
    }
    data.update(extra)
    return data


@bp.get("/")
def index():
    """Render the dashboard."""
    authorize("page.view")
    return render_template("index.html", bootstrap=bootstrap(), batch_id=None)


@bp.get("/batches/<id:batch_id>")
def batch_page(batch_id):
    """Render the dashboard filtered to one batch."""
    b = get_slotrun().store.get_batch(batch_id)
    authorize("page.view", b)
    return render_template("index.html", bootstrap=bootstrap(batch=batch_id), batch_id=batch_id)


@bp.get("/tasks/<id:task_id>")
def task_page(task_id):
    """Render a task's page."""
    t = get_slotrun().store.get_task(task_id)
    authorize("page.view", t)
    return render_template("task.html", bootstrap=bootstrap(task=task_id), task_id=task_id)
