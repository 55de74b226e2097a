"""The pages of sweeps and results tables: the sweep form, and the results of a batch or of
the configs matching a pattern. Their data comes from the sweeps and results APIs."""

from flask import Blueprint, render_template, request

from .access import authorize
from .extension import get_slotrun
from .views import bootstrap

bp = Blueprint("sweep_pages", __name__)


@bp.get("/sweep")
def sweep_page():
    """Render the sweep form (a base config may be preselected with ?base=)."""
    authorize("page.view")
    s = get_slotrun().settings
    return render_template("sweep.html", bootstrap=bootstrap(
        max_sweep_configs=int(s["max_sweep_configs"]),
        sweep_base=request.args.get("base", "")[:500]))


@bp.get("/batches/<id:batch_id>/results")
def batch_results_page(batch_id):
    """Render the results table of a batch."""
    b = get_slotrun().store.get_batch(batch_id)
    authorize("page.view", b)
    return render_template("results.html", bootstrap=bootstrap(
        results={"batch": batch_id, "pattern": b["pattern"], "owner": b["owner"]}),
        batch_id=batch_id, pattern=b["pattern"])


@bp.get("/results")
def pattern_results_page():
    """Render the results table of the configs matching ?pattern= (an empty form without one)."""
    authorize("page.view")
    pattern = request.args.get("pattern", "")[:2000]
    return render_template("results.html", bootstrap=bootstrap(
        results={"batch": None, "pattern": pattern}), batch_id=None, pattern=pattern)
