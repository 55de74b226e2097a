"""Each user's notification settings, on their own account: a webhook URL, an e-mail address
and the events wanted, with a test message. The sending is ``app.notify``'s."""

import re

from flask import Blueprint, jsonify

from ..delivery import SmtpSettings
from ..errors import Conflict, SlotrunError
from ..notify import EVENTS, Delivery, Message
from ..store import NotifyStore
from . import authorize, current_user, get_slotrun
from .api import _check_fields, _json_body

bp = Blueprint("notify_api", __name__)

EMAIL = re.compile(r"^[^@\s,;<>\"]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,63}$")
FIELDS = {"webhook": (str, ""), "email": (str, ""), "events": (list, list(EVENTS))}


def _me():
    s = get_slotrun()
    user = current_user()
    if not s.auth or user.get("id") is None:
        raise Conflict("accounts are turned off on this server (auth: false), so there are no "
                       "per-user notification settings; the admin's notify_webhook setting "
                       "tells the lab, and browser notifications work as they are")
    return user


def _answer(prefs):
    s = get_slotrun()
    prefs = prefs or {"webhook": "", "email": "", "events": list(EVENTS)}
    return {"webhook": prefs["webhook"], "email": prefs["email"], "events": prefs["events"],
            "events_known": list(EVENTS),
            "email_available": SmtpSettings.from_settings(s.settings).enabled}


@bp.get("/account/notifications")
def notify_get():
    """Return the signed-in user's notification settings."""
    authorize("notify.read")
    return jsonify(_answer(NotifyStore(get_slotrun().store).get(_me()["id"])))


@bp.put("/account/notifications")
def notify_put():
    """Replace the signed-in user's notification settings (checked before they are stored)."""
    authorize("notify.update")
    user = _me()
    s = get_slotrun()
    body = _check_fields(_json_body(), FIELDS)
    events = body["events"]
    unknown = [e for e in events if e not in EVENTS]
    if unknown or len(set(events)) != len(events):
        raise SlotrunError(f"events must be a list of distinct events among {', '.join(EVENTS)}")
    webhook = body["webhook"].strip()
    if webhook:
        notifier = s.runtime.notifier
        if notifier is None:
            raise SlotrunError("the engine is not running", status=503)
        notifier.policy.check(webhook)  # refused now, with the reason, rather than at send time
    email = body["email"].strip()
    if email:
        if not SmtpSettings.from_settings(s.settings).enabled:
            raise SlotrunError("e-mail notifications are not set up on this server (an admin sets "
                               "smtp_host); leave the address empty")
        if len(email) > 254 or not EMAIL.match(email):
            raise SlotrunError(f"{email!r} is not an e-mail address such as name@example.org")
    db = NotifyStore(s.store)
    db.put(user["id"], webhook, email, [e for e in EVENTS if e in events])
    return jsonify(_answer(db.get(user["id"])))


@bp.post("/account/notifications/test")
def notify_test():
    """Send a test message to the signed-in user's saved webhook and address; say what happened."""
    authorize("notify.test")
    _json_body(required=False)
    user = _me()
    s = get_slotrun()
    prefs = NotifyStore(s.store).get(user["id"])
    notifier = s.runtime.notifier
    if not prefs or not (prefs["webhook"] or prefs["email"]):
        raise SlotrunError("save a webhook URL or an e-mail address first")
    if notifier is None:
        raise SlotrunError("the engine is not running", status=503)
    msg = Message("test", "slotrun: test notification",
                  f"slotrun: a test notification for {user['name']} from {notifier.node}. "
                  f"{notifier.link_base}/account", {"owner": user["name"], "server": notifier.node,
                                                    "link": f"{notifier.link_base}/account"})
    out = {}
    for channel, target in (("webhook", prefs["webhook"]), ("email", prefs["email"])):
        if not target:
            out[channel] = None
            continue
        # In this request, with no retry: the user waits at most notify_timeout for the answer.
        error = notifier.deliver(Delivery(channel, target, msg, user["name"]), retries=0)
        out[channel] = {"ok": error is None, "detail": error or "delivered"}
    return jsonify(out)
