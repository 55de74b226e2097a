"""Notifications: webhooks received by real HTTP servers on 127.0.0.1.

End to end, a real slotrun server posts the batch-finished and task-failed messages to its
server-wide webhook within seconds, and a receiver that never answers does not slow the
engine. The notifier itself is then driven directly against receivers that fail, redirect
or stall, and the address policy is checked against hostile URLs.
"""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.delivery import WebhookPolicy
from app.errors import SlotrunError
from app.notify import Delivery, Message, Notifier, first_error_line
from app.store import Store
from tests.helpers import ServerProcess, make_workspace, task_env, wait_for


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST (time, path, JSON) and answers
    ``status`` after ``delay`` seconds (``location``: a redirect's target)."""

    def __init__(self, status=200, delay=0.0, location=None):
        self.status, self.delay, self.location = status, delay, location
        self.requests = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append({"at": time.time(), "path": self.path,
                                       "json": json.loads(body or b"null"),
                                       "type": self.headers.get("Content-Type")})
                if outer.delay:
                    outer.release.wait(outer.delay)
                self.send_response(outer.status)
                if outer.location:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made = []

    def make(**kw):
        r = Receiver(**kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# -- end to end: a real server and its server-wide webhook -----------------------------------------

@pytest.mark.slow
def test_server_posts_batch_finished_and_task_failed_to_the_lab_webhook(tmp_path, receivers):
    hook = receivers()
    ws = make_workspace(tmp_path / "ws")
    os.makedirs(os.path.join(ws, "configs", "bad"))
    with open(os.path.join(ws, "configs", "bad", "bad-1.yaml"), "w") as f:
        f.write("model_params: {name: hexagon, radius: 1}\n")
    server = ServerProcess(tmp_path / "server.log", task_env(
        SLOTRUN_AUTH="false", SLOTRUN_SIM_TIME=0.2, SLOTRUN_CPU_SLOTS=2,
        SLOTRUN_NOTIFY_WEBHOOK=hook.url, SLOTRUN_PUBLIC_URL="http://lab.example:5000",
        SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu")), ws,
        extra_args=("--log-level", "info"))  # deliveries are logged at info
    try:
        status, batch = server.json_api("POST", "/batches", {"pattern": "exp-1|bad-1",
                                                             "use_gpu": False})
        assert status == 201, batch
        done = wait_for(lambda: (lambda b: b if b["finished"] else None)(
            server.json_api("GET", f"/batches/{batch['id']}")[1]), 30, interval=0.05)
        ended = time.time()
        finished = wait_for(lambda: [r for r in hook.requests
                                     if r["json"]["event"] == "batch.finished"], 10,
                            message="no batch.finished webhook")
        # Within seconds of the batch's end (its last task's end, as the server recorded it).
        assert finished[0]["at"] - done["finished_at"] < 3, (finished[0]["at"], done["finished_at"])
        assert finished[0]["at"] - ended < 3
        body = finished[0]["json"]
        assert finished[0]["type"] == "application/json"
        assert body["batch"] == batch["id"] and body["pattern"] == "exp-1|bad-1"
        assert body["counts"]["succeeded"] == 3 and body["counts"]["failed"] == 1
        assert body["total"] == 4 and body["duration"] > 0
        assert body["link"] == f"http://lab.example:5000/batches/{batch['id']}/results"
        assert body["text"].startswith(f"slotrun: batch {batch['id']} (exp-1|bad-1) of ")
        assert "3 succeeded, 1 failed" in body["text"] and body["link"] in body["text"]
        failed = [r["json"] for r in hook.requests if r["json"]["event"] == "task.failed"]
        assert len(failed) == 1
        assert failed[0]["config"] == "configs/bad/bad-1.yaml" and failed[0]["exit_code"] == 2
        assert "no model named 'hexagon'" in failed[0]["error"]
        assert failed[0]["error"] in failed[0]["text"]
        assert len([r for r in hook.requests if r["json"]["event"] == "batch.finished"]) == 1
        log = server.output()
        assert "notification batch.finished to webhook http://127.0.0.1:" in log
        assert "/hook" not in log  # a webhook's path is its secret: never logged
    finally:
        server.stop()


@pytest.mark.slow
def test_a_webhook_that_never_answers_does_not_slow_the_engine(tmp_path, receivers):
    stuck = receivers(delay=60)
    ws = make_workspace(tmp_path / "ws")
    server = ServerProcess(tmp_path / "server.log", task_env(
        SLOTRUN_AUTH="false", SLOTRUN_SIM_TIME=0.3, SLOTRUN_CPU_SLOTS=1,
        SLOTRUN_NOTIFY_WEBHOOK=stuck.url, SLOTRUN_NOTIFY_TIMEOUT=1, SLOTRUN_NOTIFY_RETRIES=0,
        SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu")), ws,
        extra_args=("--log-level", "info"))
    try:
        ids = []
        for pattern in ("exp-1-1", "exp-1-2", "exp-1-3", "exp-2-1-1"):
            status, b = server.json_api("POST", "/batches", {"pattern": pattern, "use_gpu": False})
            assert status == 201
            ids.append(b["id"])
        tasks = []
        for bid in ids:
            b = wait_for(lambda bid=bid: (lambda b: b if b["finished"] else None)(
                server.json_api("GET", f"/batches/{bid}")[1]), 30, interval=0.05)
            tasks.append(server.json_api("GET", f"/tasks?batch={bid}")[1]["tasks"][0])
        # One slot: each task starts the moment the previous one ended, webhook or not.
        tasks.sort(key=lambda t: t["started_at"])
        gaps = [b["started_at"] - a["finished_at"] for a, b in zip(tasks, tasks[1:])]
        assert max(gaps) < 0.5, gaps
        wait_for(lambda: "no answer within 1 s" in server.output(), 10)
    finally:
        server.stop()


# -- the notifier against misbehaving receivers ----------------------------------------------------

def notifier(tmp_path, **settings):
    store = Store(str(tmp_path / "state.db"))
    n = Notifier({"notify_timeout": 1.0, "notify_retries": 2, **settings}, store,
                 link_base="http://lab:5000",
                 policy=WebhookPolicy(settings.get("notify_webhook_hosts", "127.0.0.1")))
    return n.start()


MSG = Message("test", "slotrun: test", "slotrun: a test", {"batch": 1})


def test_failing_receiver_is_retried_then_given_up(tmp_path, receivers, caplog):
    bad = receivers(status=503)
    n = notifier(tmp_path, notify_retries=1)
    try:
        t0 = time.monotonic()
        error = n.deliver(Delivery("webhook", bad.url, MSG, "mia"))
        assert error == "answered 503"
        assert len(bad.requests) == 2  # the first try and one retry, then it gives up
        assert 0.9 < time.monotonic() - t0 < 5  # the retry waited about a second
        assert "not delivered after 2 attempt(s): answered 503" in caplog.text
        # A 4xx other than 429 is not retried.
        n404 = receivers(status=404)
        assert n.deliver(Delivery("webhook", n404.url, MSG, "mia")) == "answered 404"
        assert len(n404.requests) == 1
    finally:
        n.stop()


def test_a_redirect_is_not_followed(tmp_path, receivers):
    target = receivers()
    moved = receivers(status=302, location=target.url)
    n = notifier(tmp_path)
    try:
        error = n.deliver(Delivery("webhook", moved.url, MSG, "mia"))
        assert "redirects are not followed" in error
        assert len(moved.requests) == 1 and target.requests == []
    finally:
        n.stop()


def test_a_slow_receiver_times_out_without_holding_up_the_others(tmp_path, receivers):
    slow = receivers(delay=30)
    fast = receivers()
    n = notifier(tmp_path, notify_retries=0)
    try:
        t0 = time.monotonic()
        n._enqueue(Delivery("webhook", slow.url, MSG, "mia"))
        n._enqueue(Delivery("webhook", fast.url, MSG, "bob"))
        wait_for(lambda: fast.requests, 3, message="the fast receiver waited for the slow one")
        assert time.monotonic() - t0 < 1.0
        wait_for(lambda: n.failed == 1, 5, message="the slow delivery did not time out")
        assert time.monotonic() - t0 < 2.5  # notify_timeout (1 s), not the receiver's 30 s
        assert n.sent == 1 and len(slow.requests) == 1
    finally:
        n.stop()


def test_the_engine_listener_never_blocks_and_drops_when_full(tmp_path, caplog):
    store = Store(str(tmp_path / "state.db"))
    n = Notifier({"notify_webhook": "http://127.0.0.1:9/x", "notify_queue_size": 1}, store)
    # Not started: nothing drains the queue; publishing must still return at once.
    t0 = time.monotonic()
    for i in range(200):
        n.publish("task", {"id": i, "batch_id": 1, "state": "queued"})  # not told: ignored
    assert n.events.qsize() == 0
    for i in range(200):
        n.publish("task", {"id": i, "batch_id": 1, "state": "succeeded"})
    assert time.monotonic() - t0 < 0.5
    assert n.events.qsize() == 50 and "queue full, dropped" in caplog.text


# -- which addresses a user's webhook may reach -----------------------------------------------------

def fake_dns(table):
    def resolve(host, port, type=None):
        if host not in table:
            raise OSError("unknown host")
        return [(2, 1, 6, "", (a, port)) for a in table[host]]
    return resolve


@pytest.mark.parametrize("url, fragment", [
    ("http://127.0.0.1:8080/x", "private, loopback or link-local address (127.0.0.1)"),
    ("http://localhost/x", "private, loopback or link-local"),
    ("http://[::1]/x", "(::1)"),
    ("http://169.254.169.254/latest/meta-data", "(169.254.169.254)"),
    ("http://10.0.0.5/x", "(10.0.0.5)"),
    ("http://192.168.1.1/x", "(192.168.1.1)"),
    ("http://100.64.0.1/x", "(100.64.0.1)"),
    ("http://2130706433/x", "(127.0.0.1)"),  # 127.0.0.1 written as one number
    ("http://[::ffff:10.0.0.1]/x", "(::ffff:10.0.0.1)"),
    ("http://rebind.example/x", "(10.1.1.1)"),  # one public, one private address: refused
    ("ftp://hooks.example/x", "must start with https://"),
    ("http://user:pw@hooks.example/x", "user name or password"),
    ("https://no-such-host.example/x", "cannot be resolved"),
    ("http://hooks example/x", "without spaces"),
])
def test_hostile_webhook_urls_are_refused(url, fragment):
    dns = fake_dns({"rebind.example": ["93.184.216.34", "10.1.1.1"],
                    "hooks.example": ["93.184.216.34"], "localhost": ["127.0.0.1"],
                    "127.0.0.1": ["127.0.0.1"], "::1": ["::1"], "10.0.0.5": ["10.0.0.5"],
                    "169.254.169.254": ["169.254.169.254"], "192.168.1.1": ["192.168.1.1"],
                    "100.64.0.1": ["100.64.0.1"], "2130706433": ["127.0.0.1"],
                    "::ffff:10.0.0.1": ["::ffff:10.0.0.1"]})
    with pytest.raises(SlotrunError) as e:
        WebhookPolicy("").check(url, resolve=dns)
    assert fragment in e.value.message


def test_the_admin_allows_hosts_and_pins_the_checked_address():
    dns = fake_dns({"chat.lab": ["10.2.3.4"], "hooks.slack.com": ["54.1.2.3"],
                    "evil.example": ["93.184.216.34"], "x.hooks.lab": ["10.9.9.9"]})
    policy = WebhookPolicy("chat.lab, *.hooks.lab, 54.0.0.0/8")
    assert policy.check("https://chat.lab/hooks/abc", resolve=dns).address == "10.2.3.4"
    assert policy.check("https://x.hooks.lab/h", resolve=dns).address == "10.9.9.9"
    target = policy.check("https://hooks.slack.com/services/T/B/C", resolve=dns)
    assert (target.host, target.port, target.address, target.path) == (
        "hooks.slack.com", 443, "54.1.2.3", "/services/T/B/C")
    with pytest.raises(SlotrunError, match="not allowed on this server"):
        policy.check("https://evil.example/x", resolve=dns)
    # The admin's own server-wide webhook is trusted.
    assert WebhookPolicy("").check("http://chat.lab/x", trusted=True, resolve=dns)
    with pytest.raises(SlotrunError, match="notify_webhook_hosts"):
        WebhookPolicy("http://x/")


def test_first_error_line_of_a_log(tmp_path):
    log = tmp_path / "output.log"
    log.write_text("config x -> results/x\nstep 1/3\nTraceback (most recent call last):\n"
                   '  File "run.py", line 3\n    raise ValueError("radius < 0")\n'
                   "ValueError: radius < 0\n")
    assert first_error_line(str(log)) == "ValueError: radius < 0"
    log.write_text("working\nRuntimeError: CUDA out of memory. Tried to allocate 2 GiB\nbye\n")
    assert first_error_line(str(log)).startswith("RuntimeError: CUDA out of memory")
    log.write_text("working\nlast words\n")
    assert first_error_line(str(log)) == "last words"
    assert first_error_line(str(tmp_path / "missing.log")) == ""


# -- per-user settings: each member's own webhook and e-mail ------------------------------------

@pytest.mark.slow
def test_members_get_their_own_notifications_by_webhook_and_email(tmp_path, receivers):
    from aiosmtpd.controller import Controller

    from app.accounts import Accounts
    from tests.helpers import free_port

    mails = []

    class Mailbox:
        async def handle_DATA(self, server, session, envelope):
            mails.append(envelope)
            return "250 Message accepted"

    smtp = Controller(Mailbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    mia_hook, bob_hook = receivers(), receivers()
    ws = make_workspace(tmp_path / "ws")
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    for name in ("mia", "bob"):
        acc.add_user(name, "member", f"pw-{name}-12345")
    tokens = {n: acc.create_token(n, "t")[1] for n in ("mia", "bob")}
    server = ServerProcess(tmp_path / "server.log", task_env(
        SLOTRUN_AUTH="true", SLOTRUN_SIM_TIME=0.2, SLOTRUN_CPU_SLOTS=2,
        SLOTRUN_NOTIFY_WEBHOOK_HOSTS="127.0.0.1", SLOTRUN_SMTP_HOST="127.0.0.1",
        SLOTRUN_SMTP_PORT=smtp.port, SLOTRUN_SMTP_SECURITY="none",
        SLOTRUN_SMTP_FROM="slotrun@lab.example", SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu")),
        ws, ready_status=401)

    def call(who, method, path, body=None):
        return server.json_api(method, path, body, token=tokens[who])

    try:
        status, prefs = call("mia", "GET", "/account/notifications")
        assert status == 200 and prefs["webhook"] == "" and prefs["email_available"] is True
        assert prefs["events"] == ["batch.finished", "task.failed", "queue.paused"]
        for bad, fragment in ((
                {"webhook": "http://10.0.0.1/hook"}, "not allowed on this server"),
                ({"webhook": "ftp://127.0.0.1/x"}, "https://"),
                ({"email": "not-an-address"}, "not an e-mail address"),
                ({"events": ["batch.started"]}, "events must be a list"),
                ({"owner": "bob"}, "unknown field")):
            status, out = call("mia", "PUT", "/account/notifications", bad)
            assert status == 400 and fragment in out["error"], (bad, out)
        status, prefs = call("mia", "PUT", "/account/notifications", {
            "webhook": mia_hook.url, "email": "mia@lab.example",
            "events": ["task.failed", "batch.finished"]})
        assert status == 200 and prefs["events"] == ["batch.finished", "task.failed"]
        status, _ = call("bob", "PUT", "/account/notifications", {
            "webhook": bob_hook.url, "events": ["batch.finished"]})
        assert status == 200

        status, out = call("mia", "POST", "/account/notifications/test", {})
        assert status == 200 and out["webhook"]["ok"] and out["email"]["ok"], out
        assert mia_hook.requests[-1]["json"]["event"] == "test"
        wait_for(lambda: len(mails) == 1, 5)
        assert mails[0].rcpt_tos == ["mia@lab.example"]

        status, b = call("mia", "POST", "/batches", {"pattern": "exp-1-1", "use_gpu": False})
        assert status == 201
        got = wait_for(lambda: [r for r in mia_hook.requests
                                if r["json"]["event"] == "batch.finished"], 20)
        assert got[0]["json"]["batch"] == b["id"] and got[0]["json"]["owner"] == "mia"
        mail = wait_for(lambda: [m for m in mails if b"finished" in m.content], 10)[0]
        assert b"Subject: slotrun: batch %d finished: 1 succeeded, 0 failed" % b["id"] in mail.content
        status, b2 = call("bob", "POST", "/batches", {"pattern": "exp-1-2", "use_gpu": False})
        wait_for(lambda: bob_hook.requests, 20)
        # Each member was told of their own batch only.
        assert [r["json"]["batch"] for r in bob_hook.requests] == [b2["id"]]
        assert [r["json"]["batch"] for r in mia_hook.requests
                if r["json"]["event"] == "batch.finished"] == [b["id"]]
    finally:
        server.stop()
        smtp.stop()
