"""The results table API: per batch, or per config pattern, as JSON or CSV.

The table itself is built by ``app.results_table``; see there what is read and how.
"""

from flask import Blueprint, Response, jsonify, request

from .. import results_table
from ..errors import SlotrunError
from .access import authorize
from .api import _match
from .extension import get_slotrun

bp = Blueprint("results_api", __name__)


def _batch_table(batch_id):
    s = get_slotrun()
    b = s.store.get_batch(batch_id)
    authorize("results.read", b)
    rows, total = s.store.result_rows(batch_id, limit=results_table.MAX_ROWS)
    return results_table.build(s.settings["workspace"], s.settings, rows,
                               truncated=total > len(rows))


def _pattern_table():
    authorize("results.read")
    pattern = request.args.get("pattern")
    if pattern is None:
        raise SlotrunError("pattern is required: a Python regular expression searched in each "
                           "config path, e.g. ?pattern=exp-1")
    s = get_slotrun()
    found = _match(pattern)
    truncated = len(found) > results_table.MAX_ROWS
    found = found[:results_table.MAX_ROWS]
    latest = s.store.latest_tasks_of(found)
    entries = [latest.get(c) or {"config": c} for c in found]
    return results_table.build(s.settings["workspace"], s.settings, entries, truncated=truncated)


def _csv(table, name):
    return Response(results_table.to_csv(table), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@bp.get("/batches/<id:batch_id>/results")
def batch_results(batch_id):
    """Return a batch's results table: differing parameters and metrics, one row per task."""
    return jsonify(batch=batch_id, **_batch_table(batch_id).to_json())


@bp.get("/batches/<id:batch_id>/results.csv")
def batch_results_csv(batch_id):
    """Download a batch's results table as CSV."""
    return _csv(_batch_table(batch_id), f"batch-{batch_id}-results.csv")


@bp.get("/results")
def pattern_results():
    """Return the results table of every config matching a pattern (its latest task each)."""
    table = _pattern_table()
    return jsonify(pattern=request.args.get("pattern"), **table.to_json())


@bp.get("/results.csv")
def pattern_results_csv():
    """Download the results table of the configs matching a pattern as CSV."""
    return _csv(_pattern_table(), "results.csv")
