"""Notifications: tell people that their batch finished, a task of theirs failed, or the queue
paused itself, by webhook (Slack, Mattermost, Discord's Slack-compatible URL) and e-mail.

The engine never waits for any of it. ``Notifier.publish`` is an engine listener: it puts
the event on a bounded queue and returns (a full queue drops the event, with a log line).
One router thread turns events into messages (reading the store and logs as it needs), and
a few sender threads deliver them from a second bounded queue, each delivery with a deadline
and a few retries (``delivery.py`` says what a webhook may reach). Every delivery is logged,
without the URL's path (webhook URLs are secrets).

Who gets what:

- ``batch.finished`` (once none of its tasks is queued or running): its owner, with the counts;
- ``task.failed``: its owner, with the first error line of its log; at most one such message
  per batch every ``FAILURE_INTERVAL`` seconds (the next one counts the failures in between;
  the batch's end gives the totals);
- ``queue.paused``, when the engine pauses the queue by itself (a ``queue`` event with
  ``paused`` true and a ``reason``; an admin's pause has no reason): every user who asked for
  it.

Each user chooses their channels and events (``Preferences``); the server-wide webhook
(``notify_webhook``) gets every event.
"""

import logging
import os
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from .delivery import DeliveryError, SmtpSettings, WebhookPolicy, post_json, send_mail
from .errors import SlotrunError
from .logs import LOG_NAME
from .task import FAILED, FINAL_STATES, STATES

log = logging.getLogger(__name__)

EVENTS = ("batch.finished", "task.failed", "queue.paused")
FAILURE_INTERVAL = 600.0  # seconds between two task.failed messages of one batch
SENDERS = 4  # delivery threads: one slow receiver does not hold up the others
RETRY_DELAYS = (1.0, 3.0, 9.0)  # waits before the 2nd, 3rd, 4th try
LOG_SCAN_BYTES = 64 * 1024  # the end of a failed task's log searched for its error line
_ERROR = re.compile(r"error|exception|traceback|fatal|killed|out of memory", re.I)


@dataclass(frozen=True)
class Channels:
    """Where one user wants to be told, and about what."""

    webhook: str = ""
    email: str = ""
    events: frozenset = frozenset()


class NoPreferences:
    """No per-user settings: only the server-wide webhook is told."""

    def for_user(self, name):
        """Return a user's Channels, or None."""
        return None

    def subscribed(self, event):
        """Return [(user name, Channels)] of every user who wants ``event``."""
        return []


class StorePreferences:
    """Each user's settings, as they chose them on their account page (``NotifyStore``)."""

    def __init__(self, notify_store):
        self.db = notify_store

    def for_user(self, name):
        """Return a user's Channels, or None."""
        p = self.db.get_by_name(name)
        if p is None:
            return None
        return Channels(p["webhook"], p["email"], frozenset(p["events"]))

    def subscribed(self, event):
        """Return [(user name, Channels)] of every user who wants ``event``."""
        return [(name, Channels(p["webhook"], p["email"], frozenset(p["events"])))
                for name, p in self.db.all() if event in p["events"]]


@dataclass(frozen=True)
class Message:
    """One notification: a line of text, a subject, and structured fields for webhooks."""

    event: str
    subject: str
    text: str
    fields: dict = field(default_factory=dict)

    def payload(self):
        """Return the webhook body: ``text`` (what chat servers show) plus the fields."""
        return {"text": self.text, "event": self.event, **self.fields}


@dataclass(frozen=True)
class Delivery:
    """A Message on its way to one webhook URL or e-mail address."""

    channel: str  # webhook | email
    target: str
    message: Message
    recipient: str  # a user name, or "server" for the server-wide webhook
    trusted: bool = False  # the admin's own webhook: its address is not checked


def first_error_line(path, max_bytes=LOG_SCAN_BYTES):
    """Return the line of a log that best says why it failed ("" when there is none).

    The first line naming an error in the log's last ``max_bytes``; for a Python traceback,
    the exception line that ends it; else the last non-empty line.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return ""
    lines = [ln.rstrip() for ln in data.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            for after in lines[i + 1:]:
                if after and not after.startswith((" ", "\t")):
                    return after.strip()[:300]
        elif _ERROR.search(line):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else ""


def _duration(seconds):
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Notifier:
    """Turns engine events into notifications and delivers them off the engine's thread."""

    def __init__(self, settings, store, preferences=None, link_base=None, policy=None):
        self.settings = settings
        self.store = store
        self.preferences = preferences or NoPreferences()
        self.server_webhook = str(settings.get("notify_webhook") or "").strip()
        self.policy = policy or WebhookPolicy(settings.get("notify_webhook_hosts", ""))
        if self.server_webhook:
            try:
                self.policy.parse(self.server_webhook)
            except SlotrunError as e:
                raise SlotrunError(f"setting notify_webhook: {e.message}") from None
        self.smtp = SmtpSettings.from_settings(settings)
        self.timeout = float(settings.get("notify_timeout", 5.0))
        self.retries = max(0, min(len(RETRY_DELAYS), int(settings.get("notify_retries", 2))))
        self.link_base = (link_base or public_url(settings)).rstrip("/")
        size = max(1, int(settings.get("notify_queue_size", 1000)))
        self.events = queue.Queue(maxsize=size * 50)  # engine events are small and bursty
        self.outbox = queue.Queue(maxsize=size)
        self.node = socket.gethostname()
        self._stop = threading.Event()
        self._threads = []
        self._finished = {}  # batch id -> finished_at already announced
        self._failures = {}  # batch id -> [time of the last task.failed message, failures since]
        self._dropped_at = 0.0
        self.sent = 0
        self.failed = 0

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def active(self):
        """Return True when anyone could be told anything."""
        return bool(self.server_webhook) or not isinstance(self.preferences, NoPreferences)

    def start(self):
        """Start the router and sender threads."""
        self._threads = [threading.Thread(target=self._route, name="slotrun-notify", daemon=True)]
        self._threads += [threading.Thread(target=self._send_loop, name=f"slotrun-notify-send-{i}",
                                           daemon=True) for i in range(SENDERS)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout=2.0):
        """Stop the threads (deliveries still queued are dropped)."""
        self._stop.set()
        # One end marker for the router and one for each sender: each thread takes one.
        for q, readers in ((self.events, 1), (self.outbox, max(0, len(self._threads) - 1))):
            for _ in range(readers):
                try:
                    q.put_nowait(None)
                except queue.Full:
                    break
        for t in self._threads:
            t.join(timeout)

    # -- intake (engine thread) -----------------------------------------------------------------

    def publish(self, event, payload):
        """Take an engine event without ever blocking; drop it (with a log line) when full."""
        if event not in ("task", "settled", "batch", "queue") or not self.active:
            return
        if event == "task" and payload.get("state") not in FINAL_STATES:
            return  # queued / running: nothing to tell (and a large submit sends many)
        try:
            self.events.put_nowait((event, payload))
        except queue.Full:
            self._drop(f"engine event {event}")

    def _drop(self, what):
        now = time.monotonic()
        if now - self._dropped_at > 10:  # one line per 10 s, not one per event
            self._dropped_at = now
            log.warning("notifications: queue full, dropped %s (and maybe more)", what)

    # -- routing (router thread) -----------------------------------------------------------------

    def _route(self):
        while not self._stop.is_set():
            try:
                items = [self.events.get()]
                while len(items) < 10000:
                    try:
                        items.append(self.events.get_nowait())
                    except queue.Empty:
                        break
                if any(i is None for i in items):
                    return
                self._handle(items)
            except Exception:  # noqa: BLE001 - the router must never die silently
                log.exception("notifications: handling engine events failed")
                self._stop.wait(0.5)

    def _handle(self, items):
        dirty = set()
        for event, payload in items:
            if event == "task":
                bid = payload.get("batch_id", payload.get("batch"))
                if payload.get("state") in FINAL_STATES:
                    dirty.add(bid)
                if payload.get("state") == FAILED:
                    self._task_failed(payload)
            elif event == "settled":
                dirty.update(payload.get("batches") or ())
            elif event == "batch":
                dirty.add(payload.get("id"))
            elif event == "queue":
                self._queue(payload)
        for bid in sorted(b for b in dirty if b is not None):
            self._check_batch(bid)

    def _check_batch(self, batch_id):
        try:
            b = self.store.get_batch(batch_id)
        except SlotrunError:
            return
        counts = {s: 0 for s in STATES}
        counts.update(b.get("counts") or {})
        if counts["queued"] or counts["running"]:
            return
        finished_at = self.store.batch_finished_at(batch_id) or b["created_at"]
        if self._finished.get(batch_id) == finished_at:
            return
        self._finished[batch_id] = finished_at
        if len(self._finished) > 10000:
            for old in sorted(self._finished)[:5000]:
                del self._finished[old]
        self._failures.pop(batch_id, None)
        self._dispatch(b["owner"], self.batch_message(b, counts, finished_at))

    def batch_message(self, b, counts, finished_at):
        """Return the batch.finished Message of a batch."""
        shown = [f"{counts[s]} {s}" for s in STATES if counts.get(s) and s not in ("queued", "running")]
        duration = finished_at - b["created_at"] if finished_at else None
        link = f"{self.link_base}/batches/{b['id']}/results"
        text = (f"slotrun: batch {b['id']} ({b['pattern']}) of {b['owner']} finished: "
                f"{', '.join(shown) or 'no task'} in {_duration(duration)}. {link}")
        subject = (f"slotrun: batch {b['id']} finished: {counts['succeeded']} succeeded, "
                   f"{counts['failed']} failed")
        return Message("batch.finished", subject, text, {
            "batch": b["id"], "owner": b["owner"], "pattern": b["pattern"], "total": b["total"],
            "counts": {s: counts[s] for s in STATES}, "duration": None if duration is None
            else round(duration, 3), "created_at": b["created_at"], "finished_at": finished_at,
            "link": link, "server": self.node})

    def _task_failed(self, t):
        bid = t.get("batch_id", t.get("batch"))
        now = time.monotonic()
        last = self._failures.get(bid)
        if last is not None and now - last[0] < FAILURE_INTERVAL:
            last[1] += 1
            return
        more = last[1] if last is not None else 0
        self._failures[bid] = [now, 0]
        error = ""
        try:
            att = self.store.latest_attempt(t["id"])
            if att is not None:
                error = first_error_line(os.path.join(att["run_dir"], LOG_NAME))
        except Exception:  # noqa: BLE001 - a message without the error line is still useful
            log.exception("notifications: reading the log of task %s failed", t.get("id"))
        self._dispatch(t["owner"], self.failure_message(t, error, more))

    def failure_message(self, t, error, more=0):
        """Return the task.failed Message of a task (``more``: failures not told before)."""
        bid = t.get("batch_id", t.get("batch"))
        link = f"{self.link_base}/tasks/{t['id']}"
        why = t.get("message") or (f"exit code {t.get('exit_code')}" if t.get("exit_code")
                                   is not None else "failed")
        text = (f"slotrun: task {t['id']} of {t['owner']} failed: {t['config']} ({why})"
                + (f": {error}" if error else "") + f". {link}")
        if more:
            text += f" ({more} more task(s) of batch {bid} failed since the last message)"
        return Message("task.failed", f"slotrun: task {t['id']} failed: {t['config']}", text, {
            "task": t["id"], "batch": bid, "owner": t["owner"], "config": t["config"],
            "exit_code": t.get("exit_code"), "message": t.get("message"), "error": error,
            "more_failed": more, "link": link, "server": self.node})

    def _queue(self, payload):
        # An admin's pause carries no reason; the engine's own pause says why (issue #11).
        if not payload.get("paused") or not (payload.get("reason") or payload.get("auto")):
            return
        reason = str(payload.get("reason") or "no reason given")
        link = f"{self.link_base}/"
        text = (f"slotrun: the queue on {self.node} paused itself: {reason}. Running tasks go on; "
                f"nothing new starts until an admin resumes it. {link}")
        msg = Message("queue.paused", f"slotrun: the queue on {self.node} paused itself", text,
                      {"reason": reason, "paused": True, "link": link, "server": self.node})
        self._dispatch(None, msg)

    def _dispatch(self, owner, msg):
        """Queue ``msg`` for the server-wide webhook and for whoever asked for it."""
        if self.server_webhook:
            self._enqueue(Delivery("webhook", self.server_webhook, msg, "server", trusted=True))
        try:
            if owner is None:
                people = self.preferences.subscribed(msg.event)
            else:
                ch = self.preferences.for_user(owner)
                people = [(owner, ch)] if ch is not None and msg.event in ch.events else []
        except Exception:  # noqa: BLE001 - the store may be busy; the lab channel still gets it
            log.exception("notifications: reading who wants %s failed", msg.event)
            people = []
        for name, ch in people:
            if ch.webhook:
                self._enqueue(Delivery("webhook", ch.webhook, msg, name))
            if ch.email and self.smtp.enabled:
                self._enqueue(Delivery("email", ch.email, msg, name))

    def _enqueue(self, delivery):
        try:
            self.outbox.put_nowait(delivery)
        except queue.Full:
            self._drop(f"{delivery.message.event} for {delivery.recipient}")

    # -- delivering (sender threads) -------------------------------------------------------------

    def _send_loop(self):
        while not self._stop.is_set():
            d = self.outbox.get()
            if d is None:
                return
            try:
                self.deliver(d)
            except Exception:  # noqa: BLE001 - a sender must never die silently
                log.exception("notifications: delivering %s failed", d.message.event)

    def deliver(self, d, retries=None):
        """Deliver one notification with retries; return None, or the last error message."""
        retries = self.retries if retries is None else retries
        where = self.describe(d)
        for attempt in range(retries + 1):
            started = time.monotonic()
            try:
                result = self._once(d)
            except SlotrunError as e:  # refused by the policy: trying again will not help
                self.failed += 1
                log.warning("notification %s to %s for %s refused: %s", d.message.event, where,
                            d.recipient, e.message)
                return e.message
            except DeliveryError as e:
                last = e.message
                if e.retry and attempt < retries and not self._stop.is_set():
                    log.info("notification %s to %s for %s failed (%s); retrying",
                             d.message.event, where, d.recipient, e.message)
                    self._stop.wait(RETRY_DELAYS[attempt])
                    continue
                self.failed += 1
                log.warning("notification %s to %s for %s not delivered after %d attempt(s): %s",
                            d.message.event, where, d.recipient, attempt + 1, e.message)
                return last
            self.sent += 1
            log.info("notification %s to %s for %s delivered (%s) in %.2f s", d.message.event,
                     where, d.recipient, result, time.monotonic() - started)
            return None
        return None

    def _once(self, d):
        if d.channel == "webhook":
            target = self.policy.check(d.target, trusted=d.trusted)
            return post_json(target, d.message.payload(), self.timeout)
        send_mail(self.smtp, d.target, d.message.subject, d.message.text, self.timeout)
        return "sent"

    def describe(self, d):
        """Return where a delivery goes, for the log: a webhook's scheme and host only."""
        if d.channel == "email":
            return f"e-mail {d.target}"
        try:
            scheme, host, port, _ = self.policy.parse(d.target)
        except SlotrunError:
            return "webhook (invalid URL)"
        return f"webhook {scheme}://{host}:{port}"


def public_url(settings):
    """Return the dashboard's address for links: ``public_url``, else from host and port."""
    url = str(settings.get("public_url") or "").strip()
    if url:
        return url
    host = str(settings.get("host") or "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.get('port', 5000)}"
