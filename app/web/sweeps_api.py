"""The sweeps API: preview and create config variants from a base config, optionally run them.

The work is done by ``app.sweeps``; this module checks the request, the access rule and
hands a started sweep to the engine as one batch.
"""

from flask import Blueprint, jsonify, request, url_for

from .. import config_values
from .. import sweeps as sweeps_mod
from ..errors import SlotrunError
from .access import authorize
from .api import (BATCH_FIELDS, REQUIRED, _check_fields, _json_body, batch_answer,
                  batch_options)
from .auth import current_user
from .extension import get_slotrun

bp = Blueprint("sweeps_api", __name__)

SWEEP_FIELDS = {
    "base": (str, REQUIRED),
    "folder": (str, REQUIRED),
    "mode": (str, "grid"),
    "params": (dict, REQUIRED),
    "replace": (bool, False),
    "start": (bool, False),
    "batch": ((dict, type(None)), None),
}
# A started sweep's batch takes the options of POST /batches, less the pattern.
SWEEP_BATCH_FIELDS = {k: v for k, v in BATCH_FIELDS.items() if k != "pattern"}


def _plan(body):
    s = get_slotrun().settings
    return sweeps_mod.plan(s["workspace"], body["base"], body["folder"], body["params"],
                           mode=body["mode"], configs_dir=s["configs_dir"],
                           max_configs=int(s["max_sweep_configs"]))


def _batch_options(body):
    """Return the started batch's submit options (None when neither start nor batch is given)."""
    if not body["start"] and body["batch"] is None:
        return None
    given = dict(body["batch"] or {})
    given.setdefault("overwrite", body["replace"])  # replaced files: their old results are stale
    try:
        return batch_options(_check_fields(given, SWEEP_BATCH_FIELDS))
    except SlotrunError as e:
        raise SlotrunError(f"batch: {e.message}", status=e.status) from None


@bp.post("/sweeps/preview")
def sweep_preview():
    """Return the configs a sweep would write, with their values, writing nothing."""
    authorize("sweep.preview")
    body = _check_fields(_json_body(), SWEEP_FIELDS)
    _batch_options(body)
    return jsonify(sweeps_mod.preview(_plan(body)))


@bp.post("/sweeps")
def sweep_create():
    """Write a sweep's configs (201 with their paths); with start, queue them as one batch."""
    s = get_slotrun()
    authorize("sweep.create")
    body = _check_fields(_json_body(), SWEEP_FIELDS)
    if body["start"]:
        authorize("batch.create")
    options = _batch_options(body)
    plan = _plan(body)
    settings = s.settings
    written = sweeps_mod.write(settings["workspace"], plan, settings["configs_dir"],
                               replace=body["replace"])
    answer = {"configs": written}
    status = 201
    if body["start"]:
        batch = s.engine.submit(written, current_user()["name"], pattern=plan.batch_pattern(),
                                **options)
        answer["batch"] = batch_answer(batch)
    response = jsonify(answer)
    response.status_code = status
    if body["start"]:
        response.headers["Location"] = url_for("api.batch_get", batch_id=answer["batch"]["id"])
    return response


@bp.get("/sweeps/bases")
def sweep_bases():
    """List the configs a sweep may start from (task configs and shared bases)."""
    authorize("config.read")
    s = get_slotrun().settings
    found, truncated = sweeps_mod.base_candidates(s["workspace"], s["configs_dir"])
    return jsonify(configs=found, truncated=truncated)


@bp.get("/sweeps/params")
def sweep_params():
    """Return a config's parameters (dotted YAML paths, base resolved) with their values."""
    authorize("config.read")
    s = get_slotrun().settings
    config = request.args.get("config")
    config = sweeps_mod.check_base(s["workspace"], config, s["configs_dir"])
    loaded = config_values.load(s["workspace"], config, s["configs_dir"])
    flat = config_values.flatten(loaded.values)
    return jsonify(config=config, bases=list(loaded.bases),
                   params=[{"path": k, "value": v} for k, v in flat.items()])
