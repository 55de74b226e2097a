"""Who may do what: the access matrix, and two teammates sharing one real server.

The matrix is in the style of Jupyter Server's authorizer tests: it is generated from the
app's own URL map (every rule x method) and its Socket.IO handlers, and every pair must have
an entry here, so a new route or event without an access rule fails this test.
"""

import os
import re
import threading

import pytest
import socketio

from app import create_app
from app.accounts import Accounts
from app.store import Store
from app.web.auth import recheck_sockets
from tests.helpers import ServerProcess, make_workspace, task_env, wait_for

ROLES = ("anonymous", "viewer", "member_own", "member_other", "admin")
USERS = {"ada": "admin", "mia": "member", "otto": "member", "vic": "viewer"}
ACTING = {"viewer": "vic", "member_own": "mia", "member_other": "mia", "admin": "ada"}


def password(name):
    return f"pw-{name}-123"


# What each route needs. READ: anyone signed in; SUBMIT: members and admins; OWN: the owner
# of the task or batch, or an admin; ADMIN: admins only; SELF: anyone signed in, on their own
# account; PUBLIC: anyone, signed in or not.
READ, SUBMIT, OWN, ADMIN, SELF, PUBLIC = "read", "submit", "own", "admin", "self", "public"

MATRIX = {
    ("api.status", "GET"): READ,
    ("api.configs", "GET"): READ,
    ("api.devices", "GET"): READ,
    ("api.device_update", "PATCH"): ADMIN,
    ("api.queue_pause", "POST"): ADMIN,
    ("api.queue_resume", "POST"): ADMIN,
    ("api.batch_create", "POST"): SUBMIT,
    ("api.batch_list", "GET"): READ,
    ("api.batch_get", "GET"): READ,
    ("api.batch_cancel", "POST"): OWN,
    ("api.batch_priority", "POST"): ADMIN,
    ("api.batch_priority", "PATCH"): ADMIN,
    ("api.batch_zip", "GET"): READ,
    ("api.task_list", "GET"): READ,
    ("api.tasks_cancel", "POST"): SUBMIT,  # a member's acts on their own tasks only
    ("api.tasks_retry", "POST"): SUBMIT,
    ("api.owners", "GET"): READ,
    ("api.task_get", "GET"): READ,
    ("api.task_cancel", "POST"): OWN,
    ("api.task_retry", "POST"): OWN,
    ("api.task_log", "GET"): READ,
    ("api.task_log_download", "GET"): READ,
    ("api.task_files", "GET"): READ,
    ("api.task_zip", "GET"): READ,
    ("insight.devices_history", "GET"): READ,
    ("insight.batch_timeline", "GET"): READ,
    ("insight.task_progress", "GET"): READ,
    ("insight.running_progress", "GET"): READ,
    ("insight.memory_suggest", "GET"): READ,
    ("insight.memory_predict", "GET"): READ,
    ("sweeps_api.sweep_preview", "POST"): READ,
    ("sweeps_api.sweep_create", "POST"): SUBMIT,
    ("sweeps_api.sweep_bases", "GET"): READ,
    ("sweeps_api.sweep_params", "GET"): READ,
    ("results_api.batch_results", "GET"): READ,
    ("results_api.batch_results_csv", "GET"): READ,
    ("results_api.pattern_results", "GET"): READ,
    ("results_api.pattern_results_csv", "GET"): READ,
    ("sweep_pages.sweep_page", "GET"): READ,
    ("sweep_pages.batch_results_page", "GET"): READ,
    ("sweep_pages.pattern_results_page", "GET"): READ,
    ("notify_api.notify_get", "GET"): SELF,
    ("notify_api.notify_put", "PUT"): SELF,
    ("notify_api.notify_test", "POST"): SELF,
    ("static", "GET"): PUBLIC,
    ("views.index", "GET"): READ,
    ("views.batch_page", "GET"): READ,
    ("views.task_page", "GET"): READ,
    ("views.login", "GET"): PUBLIC,
    ("views.login", "POST"): PUBLIC,
    ("views.logout", "POST"): PUBLIC,
    ("views.setup", "GET"): PUBLIC,
    ("views.setup", "POST"): PUBLIC,
    ("views.account", "GET"): SELF,
    ("views.token_create", "POST"): SELF,
    ("views.token_revoke", "POST"): SELF,
    ("views.password_change", "POST"): SELF,
    ("views.users", "GET"): ADMIN,
    ("views.invite_create", "POST"): ADMIN,
    ("views.invite_revoke", "POST"): ADMIN,
    ("views.join", "GET"): PUBLIC,
    ("views.join", "POST"): PUBLIC,
    ("views.user_role", "POST"): ADMIN,
    ("views.user_remove", "POST"): ADMIN,
}

# Socket.IO events: connecting needs a signed-in client; following a log is a read.
EVENT_MATRIX = {"connect": READ, "disconnect": PUBLIC, "follow": READ, "unfollow": READ}

# The status an allowed call answers (200 unless listed): what it does once access is granted.
ALLOWED_STATUS = {
    ("api.batch_create", "POST"): {201},
    ("sweeps_api.sweep_create", "POST"): {201, 409},
    ("notify_api.notify_test", "POST"): {400},  # nothing saved to send a test to  # the first one writes; the rest exist
    ("api.task_cancel", "POST"): {409},  # the task has finished: allowed, but nothing to cancel
    ("api.task_retry", "POST"): {409},  # it succeeded: nothing to retry
    ("views.login", "GET"): {200, 302},  # signed in already: on to the dashboard
    ("views.login", "POST"): {401},  # wrong password, whoever asks
    ("views.logout", "POST"): {303},
    ("views.setup", "GET"): {404},  # users exist: the set-up link is gone
    ("views.setup", "POST"): {404},
    ("views.token_create", "POST"): {201},
    ("views.token_revoke", "POST"): {303},
    ("views.password_change", "POST"): {400},  # the current password given is wrong
    ("views.invite_create", "POST"): {201},
    ("views.invite_revoke", "POST"): {303, 404},  # the first call revokes it; it is gone after
    ("views.join", "GET"): {404},  # no valid invite link given, whoever asks
    ("views.join", "POST"): {404},
    ("views.user_role", "POST"): {303},
    ("views.user_remove", "POST"): {303},
}

QUERY = {"api.configs": "pattern=exp-1", "results_api.pattern_results": "pattern=exp-1",
         "results_api.pattern_results_csv": "pattern=exp-1",
         "sweeps_api.sweep_params": "config=configs/exp-1/exp-1-1.yaml", "insight.memory_suggest": "need=1GiB",
         "insight.memory_predict": "config=configs/exp-1/exp-1-1.yaml"}

BODIES = {
    "api.batch_create": {"pattern": "exp-1-1", "use_gpu": False},  # complete: skipped at once
    "api.device_update": {"slots": 1},
    "notify_api.notify_put": {"events": ["batch.finished"]},
    "sweeps_api.sweep_preview": {"base": "configs/exp-1/exp-1-1.yaml", "folder": "matrix",
                                 "params": {"model_params.radius": [5]}},
    "sweeps_api.sweep_create": {"base": "configs/exp-1/exp-1-1.yaml", "folder": "matrix",
                                "params": {"model_params.radius": [5]}},
    "api.batch_priority": {"priority": 5},
    "api.tasks_cancel": {"dry_run": True},
    "api.tasks_retry": {"dry_run": True},
    "views.login": {"name": "nobody", "password": "wrong-password"},
    "views.token_create": {"label": "matrix"},
    "views.password_change": {"current": "wrong", "password": "x" * 8, "password2": "x" * 8},
    "views.invite_create": {"role": "viewer", "hours": "24"},
    "views.user_role": {"role": "member"},
}


def expected(kind, role):
    """Return "anon" (refused: not signed in), "deny" (403) or "ok" for a role."""
    if kind == PUBLIC:
        return "ok"
    if role == "anonymous":
        return "anon"
    if kind in (READ, SELF):
        return "ok"
    if kind == SUBMIT:
        return "deny" if role == "viewer" else "ok"
    if kind == OWN:
        return "ok" if role in ("member_own", "admin") else "deny"
    return "ok" if role == "admin" else "deny"


@pytest.fixture
def shared(workspace, monkeypatch):
    """An app with accounts on, four users, and one finished CPU batch each for mia and otto."""
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "1")
    app = create_app({"TESTING": True, "workspace": workspace, "auth": True,
                      "log_push_interval": 0.05})
    s = app.extensions["slotrun"]
    try:
        for name, role in USERS.items():
            s.accounts.add_user(name, role, password(name))
        tokens = {name: s.accounts.create_token(name, "matrix") for name in USERS}
        batches = {}
        for name, pattern in (("mia", "exp-1-1"), ("otto", "exp-1-2")):
            r = app.test_client().post("/api/v1/batches", json={"pattern": pattern,
                                                                "use_gpu": False},
                                       headers={"Authorization": f"Bearer {tokens[name][1]}"})
            assert r.status_code == 201, r.json
            batches[name] = r.json
        store = s.store
        for b in batches.values():
            wait_for(lambda b=b: store.get_batch(b["id"])["counts"].get("succeeded") == 1, 20)
        yield app, tokens, batches
    finally:
        engine = s.runtime.engine
        if engine is not None:
            for t in list(engine.view.running):
                engine.cancel_task(t)
            wait_for(lambda: not engine.view.running, 15)
        s.close()


def signed_in(app, name):
    """Return a test client signed in through the login form, and its CSRF token."""
    client = app.test_client()
    page = client.get("/login")
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    if name is None:
        return client, csrf
    r = client.post("/login", data={"name": name, "password": password(name),
                                    "csrf_token": csrf})
    assert r.status_code == 303, r.data[:300]
    # A new token comes with the new session: the one its pages carry now.
    page = client.get("/login", follow_redirects=True).get_data(as_text=True)
    return client, re.search(r'"csrf_token": ?"([^"]+)"', page).group(1)


def test_every_route_and_method_follows_the_access_matrix(shared):
    app, tokens, batches = shared
    s = app.extensions["slotrun"]
    s.accounts.add_user("spare", "viewer", "spare-pass")
    s.accounts.add_user("spare2", "viewer", "spare-pass")
    clients = {"anonymous": signed_in(app, None)}
    for role in ROLES[1:]:
        clients[role] = signed_in(app, ACTING[role])
    own_token = {"viewer": s.accounts.create_token("vic", "x")[0],
                 "member_own": s.accounts.create_token("mia", "x")[0],
                 "member_other": s.accounts.create_token("mia", "y")[0],
                 "admin": s.accounts.create_token("ada", "x")[0], "anonymous": 1}
    user_target = {"views.user_role": "spare", "views.user_remove": "spare2"}
    invite = s.invites.create("viewer", "ada")[0]["id"]

    def values(role, endpoint):
        owner = "otto" if role in ("member_other", "admin") else "mia"
        batch = batches[owner]
        return {"task_id": batch["tasks"][0]["id"], "batch_id": batch["id"],
                "device_id": "gpu0", "subpath": "area.txt", "filename": "css/app.css",
                "token_id": own_token[role], "name": user_target.get(endpoint, "spare"),
                "invite_id": invite}

    pairs = []
    missing = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (rule.endpoint, method) not in MATRIX:
                missing.append(f"{method} {rule.rule} ({rule.endpoint})")
            pairs.append((rule, method))
    assert not missing, "routes without an entry in the access matrix: " + ", ".join(missing)
    rules = {(r.endpoint, m) for r, m in pairs}
    gone = set(MATRIX) - rules
    assert not gone, f"matrix entries for routes that are gone: {gone}"
    # Signing out goes last: the clients must stay signed in for everything else.
    pairs.sort(key=lambda p: (p[0].endpoint == "views.logout", p[0].endpoint, p[1]))

    failures = []
    checked = 0
    for rule, method in pairs:
        key = (rule.endpoint, method)
        kind = MATRIX[key]
        for role in ROLES:
            client, csrf = clients[role]
            args = values(role, rule.endpoint)
            url = rule.build({k: args[k] for k in rule.arguments}, append_unknown=False)[1]
            if rule.endpoint in QUERY:
                url += "?" + QUERY[rule.endpoint]
            body = BODIES.get(rule.endpoint, {})
            if method == "GET":
                r = client.get(url)
            elif rule.endpoint.startswith("views."):
                r = client.open(url, method=method, data={**body, "csrf_token": csrf})
            else:
                r = client.open(url, method=method, json=body, headers={"X-CSRFToken": csrf})
            want = expected(kind, role)
            api = url.startswith("/api/")
            if want == "anon":
                ok = (r.status_code == 401 and r.is_json) if api else (
                    r.status_code == 302 and "/login?next=" in r.headers.get("Location", ""))
            elif want == "deny":
                ok = r.status_code == 403
            else:
                ok = r.status_code in ALLOWED_STATUS.get(key, {200})
            if not ok:
                failures.append(f"{role:12} {method:5} {url}: expected {want}, got "
                                f"{r.status_code} {r.data[:120]!r}")
            checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 5 * 40


def test_every_socketio_event_follows_the_access_matrix(shared):
    app, tokens, batches = shared
    s = app.extensions["slotrun"]
    events = set(s.socketio.server.handlers["/"])
    unruled = events - set(EVENT_MATRIX)
    assert not unruled, f"Socket.IO events without an access rule: {unruled}"
    own, other = batches["mia"]["tasks"][0]["id"], batches["otto"]["tasks"][0]["id"]
    for role in ROLES:
        client, csrf = signed_in(app, None if role == "anonymous" else ACTING[role])
        sio = s.socketio.test_client(app, flask_test_client=client, auth={"csrf": csrf})
        try:
            want = expected(EVENT_MATRIX["connect"], role)
            assert sio.is_connected() == (want == "ok"), role
            if not sio.is_connected():
                continue
            task = other if role in ("member_other", "admin") else own
            for event in ("follow", "unfollow"):
                ack = sio.emit(event, {"task": task}, callback=True)
                assert ack == {"ok": True, "task": task}, (role, event, ack)
            logs = [e for e in sio.get_received() if e["name"] == "log"]
            assert logs and logs[0]["args"][0]["task"] == task
        finally:
            if sio.is_connected():
                sio.disconnect()


def test_no_log_tail_for_a_client_that_is_not_or_no_longer_signed_in(shared):
    app, tokens, batches = shared
    s = app.extensions["slotrun"]
    task = batches["otto"]["tasks"][0]["id"]
    # Anonymous: no session, no token, or a wrong one: the connection itself is refused.
    for auth in (None, {"token": "srt_1_wrong"}, {"csrf": "guess"}):
        sio = s.socketio.test_client(app, auth=auth)
        assert not sio.is_connected(), auth
    # A token, in the connection's auth payload or its Authorization header: connected.
    _, good = s.accounts.create_token("vic", "socket")
    for kwargs in ({"auth": {"token": good}}, {"headers": {"Authorization": f"Bearer {good}"}}):
        sio = s.socketio.test_client(app, **kwargs)
        assert sio.is_connected(), kwargs
        sio.disconnect()
    # A token revoked after connecting: its next follow is refused and no log comes. The
    # emitter's periodic check is held off (this test calls it below): landing between the
    # revoke and the read, it would drop the connection first, and nothing could be read.
    s.emitter.next_recheck = float("inf")
    token_id, token = s.accounts.create_token("mia", "soon revoked")
    sio = s.socketio.test_client(app, auth={"token": token})
    assert sio.is_connected()
    sio.get_received()
    s.accounts.revoke_token("mia", token_id)
    ack = sio.emit("follow", {"task": task}, callback=True)
    assert ack.get("status") == 401, ack
    assert not [e for e in sio.get_received() if e["name"] == "log"]
    assert task not in s.logs.rooms  # it never joined the task's room
    # ... and the periodic check (or a revoke on the page) drops the connection.
    recheck_sockets(s)
    assert not sio.is_connected()


# -- two teammates on one real server -------------------------------------------------------------

SHORT = '{python} -c "import time; time.sleep(0.05)"'


def write_configs(ws, folder, names):
    os.makedirs(os.path.join(ws, "configs", folder), exist_ok=True)
    for n in names:
        with open(os.path.join(ws, "configs", folder, f"{n}.yaml"), "w") as f:
            f.write("model_params: {name: circle, radius: 1.0}\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A real server with accounts on and one CPU slot; an admin and two members with tokens."""
    base = tmp_path_factory.mktemp("lab")
    ws = make_workspace(base / "ws")
    write_configs(ws, "alice", [f"a-{i:02d}" for i in range(1, 31)])
    write_configs(ws, "bob", ["b-1", "b-2", "b-3"])
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    for name, role in (("ada", "admin"), ("alice", "member"), ("bob", "member")):
        acc.add_user(name, role, password(name))
    tokens = {name: acc.create_token(name, "e2e")[1] for name in ("ada", "alice", "bob")}
    server = ServerProcess(base / "server.log", task_env(
        PYTHONUNBUFFERED=1, SLOTRUN_AUTH="true", SLOTRUN_CPU_SLOTS=1, SLOTRUN_SIM_TIME=0.2,
        SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu")), ws, ready_status=401)
    server.tokens = tokens
    try:
        yield server
    finally:
        code = server.stop()
        out = server.output()
        assert code == 0, out
        for secret in (*tokens.values(), password("alice"), password("bob")):
            assert secret not in out, "a secret reached the server's log"


def idle(server):
    """Wait until nothing is queued or running on the server."""
    def quiet():
        counts = server.api("GET", "/status", token=server.tokens["ada"]).json()["counts"]
        return not counts["queued"] and not counts["running"]
    wait_for(quiet, 60, interval=0.1, message="the queue did not drain")


@pytest.mark.slow
def test_two_members_share_one_server(lab):
    tok = lab.tokens
    idle(lab)
    watcher = None
    try:
        # Alice follows the queue live with her token.
        seen = []
        lock = threading.Lock()

        def on_task(t):
            with lock:
                seen.append(t)

        watcher = socketio.Client(reconnection=False)
        watcher.on("task_list", lambda data: [on_task(t) for t in data["tasks"]])
        watcher.connect(lab.url, auth={"token": tok["alice"]}, transports=["websocket"],
                        wait_timeout=10)
        assert lab.api("POST", "/queue/pause", json={}, token=tok["ada"]).status_code == 200
        a = lab.api("POST", "/batches", token=tok["alice"], json={
            "pattern": "alice/a-0[1-3]", "use_gpu": False, "command": SHORT, "overwrite": True})
        b = lab.api("POST", "/batches", token=tok["bob"], json={
            "pattern": "bob/", "use_gpu": False, "command": SHORT, "overwrite": True})
        assert a.status_code == 201 and b.status_code == 201, (a.text, b.text)
        a, b = a.json(), b.json()
        # A batch belongs to whoever submitted it.
        assert lab.api("GET", f"/batches/{a['id']}", token=tok["bob"]).json()["owner"] == "alice"
        assert lab.api("GET", f"/batches/{b['id']}", token=tok["alice"]).json()["owner"] == "bob"
        # Each sees everything.
        for name in ("alice", "bob"):
            listed = lab.api("GET", "/tasks", params={"state": "queued"}, token=tok[name]).json()
            assert {t["owner"] for t in listed["tasks"]} == {"alice", "bob"}
        # Neither may touch the other's work, nor the queue; the admin may.
        a_last, b_last = a["tasks"][-1]["id"], b["tasks"][-1]["id"]
        r = lab.api("POST", f"/tasks/{a_last}/cancel", json={}, token=tok["bob"])
        assert r.status_code == 403 and "only alice (the owner) or an admin" in r.json()["error"]
        assert lab.api("POST", f"/batches/{b['id']}/cancel",
                       json={}, token=tok["alice"]).status_code == 403
        assert lab.api("POST", "/queue/resume", json={}, token=tok["bob"]).status_code == 403
        assert lab.api("PATCH", "/devices/cpu", json={"slots": 4},
                       token=tok["bob"]).status_code == 403
        assert lab.api("POST", f"/batches/{b['id']}/priority",
                       json={"priority": 9}, token=tok["bob"]).status_code == 403
        r = lab.api("POST", f"/tasks/{a['tasks'][0]['id']}/cancel", json={}, token=tok["alice"])
        assert r.status_code == 200 and r.json()["state"] == "cancelled"  # her own
        r = lab.api("POST", f"/tasks/{b_last}/cancel", json={}, token=tok["ada"])
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        r = lab.api("POST", f"/batches/{a['id']}/priority", json={"priority": 7},
                    token=tok["ada"])
        assert r.status_code == 200 and r.json()["priority"] == 7
        assert lab.api("POST", "/queue/resume", json={}, token=tok["ada"]).status_code == 200
        idle(lab)
        ids = {t["id"] for t in a["tasks"][1:] + b["tasks"][:-1]}
        # Alice's live view showed Bob's tasks as well as hers.
        wait_for(lambda: {t["id"] for t in seen if t["state"] == "succeeded"} >= ids, 5)
    finally:
        if watcher is not None and watcher.connected:
            watcher.disconnect()
        lab.api("POST", "/queue/resume", json={}, token=tok["ada"])


@pytest.mark.slow
def test_fair_share_a_small_batch_is_not_stuck_behind_a_big_one(lab):
    tok = lab.tokens
    idle(lab)
    # One CPU slot. Alice queues 30 tasks, then Bob 3.
    a = lab.api("POST", "/batches", token=tok["alice"], json={
        "pattern": "alice/", "use_gpu": False, "command": SHORT, "overwrite": True})
    b = lab.api("POST", "/batches", token=tok["bob"], json={
        "pattern": "bob/", "use_gpu": False, "command": SHORT, "overwrite": True})
    assert a.status_code == 201 and b.status_code == 201, (a.text, b.text)
    a, b = a.json(), b.json()
    assert len(a["tasks"]) == 30 and len(b["tasks"]) == 3
    idle(lab)

    def tasks(batch):
        return lab.api("GET", "/tasks", token=tok["ada"],
                       params={"batch": batch["id"], "per_page": 100}).json()["tasks"]

    alices, bobs = tasks(a), tasks(b)
    assert {t["state"] for t in alices + bobs} == {"succeeded"}
    # Bob's batch started, and even finished, while Alice's was still going.
    assert max(t["finished_at"] for t in bobs) < max(t["started_at"] for t in alices), \
        "Bob's 3 tasks waited for Alice's 30"
