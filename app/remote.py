"""multi-run.py --server URL: submit a batch to a running slotrun server and follow it.

The console shows the same lines as a local run. The token comes from $SLOTRUN_TOKEN (create
one on the server with ``python -m app token create NAME``). Ctrl-C cancels the batch.
"""

import os
import sys
import threading
import time
import uuid

import requests
import socketio

from .console import EXIT_FAILED, Printer, Stop, confirm, install_signal_handlers
from .errors import SlotrunError

RESYNC_INTERVAL = 30.0  # seconds between catch-ups from the API while following a batch


class ApiClient:
    """A small JSON client of the server's API."""

    def __init__(self, url, token):
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method, path, retries=0, **kwargs):
        """Send one request; return its JSON, or raise an error with the server's message.

        ``retries``: send it again that many times (1, 2, 4 ... s apart) when no answer came
        or the server could not serve it now (5xx); only for requests that are safe to
        repeat (a submit carries an idempotency key).
        """
        for attempt in range(retries + 1):
            try:
                return self._call_once(method, path, **kwargs)
            except _Retryable as e:
                if attempt == retries:
                    raise SlotrunError(e.message) from None
                time.sleep(min(2 ** attempt, 8))

    def _call_once(self, method, path, **kwargs):
        try:
            r = self.http.request(method, self.url + path, timeout=60, **kwargs)
        except requests.RequestException as e:
            raise _Retryable(f"cannot reach the slotrun server at {self.url}: "
                             f"{e.__class__.__name__}") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code == 401:
            raise SlotrunError(f"the server at {self.url} refused the token in SLOTRUN_TOKEN; "
                               "create one with: python -m app token create NAME")
        if r.status_code >= 500:
            raise _Retryable(body.get("error") or f"the server answered HTTP {r.status_code}")
        if r.status_code >= 400:
            raise SlotrunError(body.get("error") or f"the server answered HTTP {r.status_code}")
        return body


class _Retryable(SlotrunError):
    """No answer, or a server error: the same request may be sent again."""


def submit_remote(args, settings):
    """Submit the configs matching args.key to the server and print progress; return the status."""
    token = os.environ.get("SLOTRUN_TOKEN")
    if not token:
        raise SlotrunError("set SLOTRUN_TOKEN to an API token of the server (create one there "
                           "with: python -m app token create NAME)")
    client = ApiClient(args.server, token)
    found = client.call("GET", "/api/v1/configs", params={"pattern": args.key})["configs"]
    if not found:
        raise SlotrunError(f"no config on the server matches {args.key!r}")
    body = {"pattern": args.key, "use_gpu": bool(args.gpu), "overwrite": bool(args.overwrite)}
    if args.command:
        body["command"] = args.command
    if args.gpu and args.slots is not None:
        gpus = [d["id"] for d in client.call("GET", "/api/v1/devices")["devices"] if d["kind"] == "gpu"]
        if len(args.slots) > len(gpus):
            raise SlotrunError(f"-d gives {len(args.slots)} numbers but the server has {len(gpus)} "
                               f"GPU(s) ({', '.join(gpus)})")
        body["devices"] = [g for g, n in zip(gpus, args.slots) if n > 0]
        if not body["devices"]:
            raise SlotrunError("every slot count is 0, so nothing could run; give a GPU a slot")
        print("Note: the server's slot limits apply; -d chooses the GPUs "
              f"({', '.join(body['devices'])}).", flush=True)
    if args.check and not confirm(found, set()):
        print("Nothing was run (answer y to run, or pass -check false).")
        return EXIT_FAILED

    printer = Printer(args.command or settings["command"], bool(args.overwrite))
    resync = threading.Event()
    sio = socketio.Client(reconnection=True)
    sio.on("task", lambda t: printer("task", t))
    sio.on("task_list", lambda data: [printer("task", t) for t in data.get("tasks", ())])

    def need_resync():
        resync.set()
        printer.changed.set()

    @sio.on("tasks")
    def bulk(notice):
        # More changes at once than the server sends in a task_list, or this connection fell
        # behind and missed some: fetch the batch's states.
        batches = (notice or {}).get("batches")
        if printer.batch_id is None or batches is None or printer.batch_id in batches:
            need_resync()

    paused = {"reason": None}

    @sio.on("queue")
    def queue_state(q):
        reason = (q or {}).get("reason") if (q or {}).get("paused") else None
        if reason != paused["reason"]:
            paused["reason"] = reason
            print(f"The server's queue is paused: {reason}" if reason else
                  "The server's queue runs again.", file=sys.stderr, flush=True)

    @sio.event
    def connect():
        # After a reconnect, catch up with what happened meanwhile.
        need_resync()

    try:
        sio.connect(client.url, headers={"Authorization": f"Bearer {token}"},
                    auth={"token": token}, transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError as e:
        raise SlotrunError(f"cannot follow the batch live at {client.url}: {e}") from None
    stop = install_signal_handlers()
    batch = None
    try:
        # One key for this submit: a retry after a lost answer finds the batch it created.
        batch = client.call("POST", "/api/v1/batches", json=body, retries=4,
                            headers={"Idempotency-Key": str(uuid.uuid4())})
        try:  # show the command the server runs (its own default template unless --command)
            info = client.call("GET", f"/api/v1/batches/{batch['id']}", params={"per_page": 1})
            printer.template = info.get("command") or printer.template
        except SlotrunError:
            pass  # the lines then show this machine's template; the batch runs all the same
        printer.expect(batch)
        _follow_remote(client, printer, resync)
    except Stop:
        if batch is not None:
            client.call("POST", f"/api/v1/batches/{batch['id']}/cancel")
            print(f"Interrupted: cancelled batch {batch['id']} on the server.", flush=True)
        return printer.summary(True)
    finally:
        stop()
        _disconnect(sio)
    return printer.summary(False)


def _follow_remote(client, printer, resync):
    """Wait until every task of the batch ended: live events, a resync after a bulk notice
    or a reconnect, and one every RESYNC_INTERVAL seconds whatever happens."""
    last = float("-inf")
    while not printer.done.is_set():
        now = time.monotonic()
        if resync.is_set() or now - last >= RESYNC_INTERVAL:
            resync.clear()
            last = now
            try:
                _catch_up(client, printer)
            except SlotrunError as e:  # the server restarts: try again later
                print(f"({e}; trying again)", file=sys.stderr, flush=True)
            continue
        printer.changed.clear()
        if printer.done.is_set() or resync.is_set():
            continue
        printer.changed.wait(max(0.0, last + RESYNC_INTERVAL - time.monotonic()))


def _disconnect(sio, wait=0.5):
    """Close the live connection, without waiting long for the server's goodbye.

    A server may never answer the websocket's closing handshake (the development server
    does not), and the client would sit out its 3 s timeout before the command could exit.
    """
    closer = threading.Thread(target=sio.disconnect, name="slotrun-disconnect", daemon=True)
    closer.start()
    closer.join(wait)


def _catch_up(client, printer):
    """Feed the printer the batch's current task states (for events missed meanwhile)."""
    page = 1
    while True:
        body = client.call("GET", "/api/v1/tasks", params={"batch": printer.batch_id, "page": page,
                                                           "per_page": 500})
        for t in body["tasks"]:
            printer("task", t)
        if page >= body.get("pages", 1):
            return
        page += 1

