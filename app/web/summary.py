"""The queue at a glance: counts per state and the slot summary, drawn from one payload.

Every summary tile of the dashboard comes from ``queue_payload`` (the "queue" event and
``GET /api/v1/status``), so two tiles never disagree.
"""

from ..task import ANY_CPU, ANY_GPU, CPU, STATES, device_kind


def queue_payload(slotrun, usage=None):
    """Return the "queue" event: paused (auto, reason, since), counts per state, total and
    the slot summary.

    Every tile of the dashboard is drawn from this one payload. The running and queued
    counts come from the engine, as the slot figures do, so that they agree at every moment
    (the store writes an end down just after the freed slot was refilled).
    """
    counts = {s: 0 for s in STATES}
    counts.update(slotrun.store.state_counts())
    engine = slotrun.runtime.engine
    slots = slot_summary(engine, usage)
    if engine is not None and not engine.only_own:
        counts["running"] = slots["used"]
        counts["queued"] = slots["waiting"]
    # paused, and why: auto (the engine paused itself for a persistent fault) with its
    # reason, and since when (see Engine.queue_state)
    state = engine.queue_state() if engine is not None else {
        "paused": False, "auto": False, "reason": None, "since": None}
    return {**state, "counts": counts, "total": sum(counts.values()), "slots": slots}


def slot_summary(engine, usage=None):
    """Return the slots at a glance: used and total (all devices), free, tasks waiting, and
    the free slots a waiting task could use (on a device one of them may run on). Slots the
    engine holds back (``held``: the waiting task's memory does not fit) do not count as free."""
    if engine is None:
        return {"used": 0, "total": 0, "free": 0, "waiting": 0, "usable": 0, "usable_used": 0,
                "usable_free": 0}
    view = engine.view
    usage = view.usage if usage is None else usage
    wanted = view.wanted
    gpus = [d for d in usage if device_kind(d) != CPU]
    cpus = [d for d in usage if device_kind(d) == CPU]
    usable = set()
    for devices in wanted:
        for d in devices:
            usable.update(gpus if d == ANY_GPU else cpus if d == ANY_CPU else (d,))
    used = total = free = usable_total = usable_used = usable_free = 0
    for d, u in usage.items():
        limit = int(u.get("effective", u.get("slots", 0)))
        running = int(u.get("running", 0))
        # Slots held back for a waiting task that does not fit (its memory) are not free.
        open_here = max(0, limit - running - int(u.get("held", 0)))
        used += running
        total += limit
        free += open_here
        if d in usable:
            usable_total += limit
            usable_used += running
            usable_free += open_here
    return {"used": used, "total": total, "free": free, "waiting": view.queued,
            "usable": usable_total, "usable_used": usable_used, "usable_free": usable_free}
