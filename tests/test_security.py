"""Signing in and the server's defences: the set-up link, sessions and their cookie, CSRF,
login limits, tokens, Socket.IO origins, and bad input that must not hurt the server.

Flask's test client for the rules, and one real server (``python -m app serve``, accounts
on, started with no user) for what only a real server shows: the printed set-up link, the
access log, websockets and their Origin header, and timing under concurrent requests.
"""

import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import pytest
import requests
import socketio

from app import create_app
from app.accounts import Accounts
from app.store import Store
from tests.helpers import ROOT, ServerProcess, free_port, make_workspace, task_env, wait_for

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_in(html):
    """Return the CSRF token of a page's form."""
    text = html.decode() if isinstance(html, bytes) else html
    return CSRF_RE.search(text).group(1)


# -- the rules, through Flask's test client -------------------------------------------------------

@pytest.fixture
def make_app(workspace, monkeypatch):
    """Build apps with accounts on; engines are stopped at the end."""
    apps = []
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "1")

    def make(**config):
        app = create_app({"TESTING": True, "workspace": workspace, "auth": True, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["slotrun"].close()


@pytest.fixture
def app(make_app):
    """An app with an admin (ada), a member (mia) and a viewer (vic)."""
    app = make_app()
    acc = app.extensions["slotrun"].accounts
    for name, role in (("ada", "admin"), ("mia", "member"), ("vic", "viewer")):
        acc.add_user(name, role, f"pw-{name}-123")
    return app


def login(client, name, password=None, next_url=None):
    """Sign in through the form; return the response."""
    token = csrf_in(client.get("/login").data)
    data = {"name": name, "password": password or f"pw-{name}-123", "csrf_token": token}
    if next_url:
        data["next"] = next_url
    return client.post("/login", data=data)


BOOT_CSRF_RE = re.compile(r'"csrf_token": ?"([^"]+)"')


def session_csrf(client):
    """Return the CSRF token of the client's session, as its pages carry it."""
    page = client.get("/login", follow_redirects=True).get_data(as_text=True)
    return BOOT_CSRF_RE.search(page).group(1)


def test_strangers_get_401_json_under_api_and_the_login_page_elsewhere(app):
    c = app.test_client()
    r = c.get("/api/v1/tasks")
    assert r.status_code == 401 and r.is_json and "sign in first" in r.json["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = c.get("/tasks/7?tab=log")
    assert r.status_code == 302 and r.headers["Location"] == "/login?next=/tasks/7%3Ftab%3Dlog"
    # An unknown id tells a stranger nothing either: the same 401 as a known one.
    assert c.get("/api/v1/tasks/999999").status_code == 401
    page = c.get("/login")
    assert page.status_code == 200 and b'autocomplete="current-password"' in page.data
    # After signing in, the login page leads on to "next", but never off the site.
    r = login(c, "mia", next_url="/tasks/7?tab=log")
    assert r.status_code == 303 and r.headers["Location"] == "/tasks/7?tab=log"
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"):
        c2 = app.test_client()
        assert login(c2, "mia", next_url=evil).headers["Location"] == "/"


def test_session_cookie_flags_lifetime_and_refresh(make_app):
    app = make_app()
    app.extensions["slotrun"].accounts.add_user("mia", "member", "pw-mia-123")
    c = app.test_client()
    r = login(c, "mia")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", cookie).group(1))
    hours = (expires - datetime.now(timezone.utc)).total_seconds() / 3600
    assert 11.9 < hours <= 12.01
    # Every request pushes the idle limit forward.
    again = c.get("/api/v1/status").headers.get("Set-Cookie", "")
    assert "Expires=" in again
    # Over https the cookie is Secure; a forwarded https only counts behind a trusted proxy.
    https = app.test_client()
    r = https.post("/login", base_url="https://lab.example", data={
        "name": "mia", "password": "pw-mia-123",
        "csrf_token": csrf_in(https.get("/login", base_url="https://lab.example").data)})
    assert "Secure" in r.headers["Set-Cookie"]
    proxied = app.test_client()
    r = proxied.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in r.headers["Set-Cookie"]
    trusting = make_app(trust_proxy=True).test_client()
    r = trusting.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in r.headers["Set-Cookie"]


def test_first_start_setup_link_creates_the_first_admin_once(make_app):
    app = make_app()
    s = app.extensions["slotrun"]
    token = s.setup_token
    assert token and len(token) >= 30
    c = app.test_client()
    assert b"set-up link printed on the server" in c.get("/login").data
    assert c.get("/setup?token=wrong").status_code == 403
    assert c.get("/setup").status_code == 403
    page = c.get(f"/setup?token={token}")
    assert page.status_code == 200
    csrf = csrf_in(page.data)
    form = {"token": token, "name": "root", "password": "first-admin-pw", "csrf_token": csrf}
    r = c.post("/setup", data={**form, "password2": "other-pw-123"})
    assert r.status_code == 400 and b"the two passwords differ" in r.data
    r = c.post("/setup", data={**form, "name": "bad name;", "password2": "first-admin-pw"})
    assert r.status_code == 400 and b"user name is 1-64" in r.data
    assert c.post("/setup", data={**form, "password2": "first-admin-pw",
                                  "csrf_token": "forged"}).status_code == 403
    r = c.post("/setup", data={**form, "password2": "first-admin-pw"})
    assert r.status_code == 303
    status = c.get("/api/v1/status").json
    assert (status["user"], status["role"]) == ("root", "admin")
    # The link is spent: it neither shows the form nor makes a second admin.
    assert s.setup_token is None
    assert c.get(f"/setup?token={token}").status_code == 404
    r = app.test_client().post("/setup", data={**form, "name": "root2"})
    assert r.status_code in (403, 404)
    assert [u["name"] for u in s.accounts.list_users()] == ["root"]


def test_csrf_guards_every_state_changing_browser_request(app):
    c = app.test_client()
    login(c, "mia")
    token = session_csrf(c)
    body = {"pattern": "exp-1-1", "use_gpu": False}
    r = c.post("/api/v1/batches", json=body)
    assert r.status_code == 403 and "CSRF token" in r.json["error"]
    wrong = {"X-CSRFToken": "x" * 43}
    assert c.post("/api/v1/batches", json=body, headers=wrong).status_code == 403
    r = c.post("/api/v1/batches", json=body, headers={"X-CSRFToken": token})
    assert r.status_code == 201, r.json
    # Forms too: creating a token, logging out, logging in (login CSRF).
    assert c.post("/account/tokens", data={"label": "x"}).status_code == 403
    assert c.post("/logout").status_code == 403
    assert app.test_client().post("/login", data={"name": "mia",
                                                  "password": "pw-mia-123"}).status_code == 403
    # A bearer token is not a cookie: exempt.
    _, bearer = app.extensions["slotrun"].accounts.create_token("mia", "script")
    r = app.test_client().post("/api/v1/batches", json=body,
                               headers={"Authorization": f"Bearer {bearer}"})
    assert r.status_code == 201
    # The token rotates at login: a token from before signing in is worthless after.
    c2 = app.test_client()
    before = csrf_in(c2.get("/login").data)
    login(c2, "mia")
    assert session_csrf(c2) != before
    assert c2.post("/api/v1/queue/pause", json={},
                   headers={"X-CSRFToken": before}).status_code == 403


def test_login_attempts_are_limited_per_name_and_per_address(make_app, caplog):
    app = make_app(LOGIN_LIMIT_PER_NAME=3, LOGIN_LIMIT_PER_ADDRESS=6)
    app.extensions["slotrun"].accounts.add_user("mia", "member", "pw-mia-123")
    c = app.test_client()
    secret = "guess-that-is-wrong"
    for _ in range(3):
        r = login(c, "mia", secret)
        assert r.status_code == 401 and b"wrong user name or password" in r.data
    r = login(c, "mia", secret)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert b"too many failed logins" in r.data
    # Even the right password waits now.
    assert login(c, "mia").status_code == 429
    # Per address: other names from the same address are stopped too, after a few more
    # failures (6 in all; refused attempts do not count).
    for i in range(3):
        assert login(c, f"nobody{i}", secret).status_code == 401
    r = login(c, "somebody-else", secret)
    assert r.status_code == 429 and "Retry-After" in r.headers
    # ... but another address may still sign in.
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "127.0.0.2"
    token = csrf_in(other.get("/login").data)
    r = other.post("/login", data={"name": "someone", "password": secret, "csrf_token": token})
    assert r.status_code == 401
    assert secret not in caplog.text and "pw-mia-123" not in caplog.text


def test_a_successful_login_forgets_the_names_failures_but_not_the_addresses(make_app):
    app = make_app(LOGIN_LIMIT_PER_NAME=3, LOGIN_LIMIT_PER_ADDRESS=5)
    app.extensions["slotrun"].accounts.add_user("mia", "member", "pw-mia-123")
    c = app.test_client()
    for _ in range(2):
        assert login(c, "mia", "wrong-password").status_code == 401
    assert login(c, "mia").status_code == 303
    c = app.test_client()
    for _ in range(2):  # 2 + 2 failures: over the name's 3 had the success not reset it
        assert login(c, "mia", "wrong-password").status_code == 401
    # The address still counts all 4 failures (the success does not reset it): one more ...
    assert login(c, "otto", "wrong-password").status_code == 401
    r = login(c, "mia")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_tokens_role_changes_and_password_changes_apply_at_once(app):
    s = app.extensions["slotrun"]
    acc = s.accounts
    token_id, token = acc.create_token("mia", "laptop")
    bearer = {"Authorization": f"Bearer {token}"}
    c = app.test_client()
    assert c.get("/api/v1/status", headers=bearer).json["user"] == "mia"
    for bad in ("Bearer " + token[:-2], "Bearer srt_1_x", "Basic bWlhOnB3", "Bearer " + "x" * 5000):
        r = c.get("/api/v1/status", headers={"Authorization": bad})
        assert r.status_code == 401, bad
    # The page creates a token (shown once) and revokes it.
    web = app.test_client()
    login(web, "mia")
    csrf = session_csrf(web)
    page = web.post("/account/tokens", data={"label": "ci", "csrf_token": csrf})
    assert page.status_code == 201 and page.headers["Cache-Control"] == "no-store"
    new = re.search(rb'id="new-token" value="([^"]+)"', page.data).group(1).decode()
    assert c.get("/api/v1/status", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert new.encode() not in web.get("/account").data  # shown once only
    new_id = [t["id"] for t in acc.list_tokens("mia") if t["label"] == "ci"][0]
    form = {"csrf_token": csrf}
    assert web.post(f"/account/tokens/{new_id}/revoke", data=form).status_code == 303
    assert c.get("/api/v1/status", headers={"Authorization": f"Bearer {new}"}).status_code == 401
    # Someone else's token cannot be revoked from my page.
    ada_id, _ = acc.create_token("ada", "x")
    assert web.post(f"/account/tokens/{ada_id}/revoke", data=form).status_code == 404
    # A demotion applies to the next request, session and token alike.
    acc.set_role("mia", "viewer")
    r = c.post("/api/v1/batches", json={"pattern": "exp-1-1"}, headers=bearer)
    assert r.status_code == 403 and "viewer (read-only)" in r.json["error"]
    assert web.post("/api/v1/batches", json={"pattern": "exp-1-1"},
                    headers={"X-CSRFToken": csrf}).status_code == 403
    acc.set_role("mia", "member")
    # A password change signs out the user's other sessions, not this one.
    other = app.test_client()
    login(other, "mia")
    r = web.post("/account/password", data={"current": "pw-mia-123", "password": "new-pw-456",
                                            "password2": "new-pw-456", "csrf_token": csrf})
    assert r.status_code == 200 and b"Password changed" in r.data
    assert web.get("/api/v1/status").status_code == 200
    assert other.get("/api/v1/status").status_code == 401
    # A removed user's tokens and sessions die with it.
    acc.remove_user("mia")
    assert c.get("/api/v1/status", headers=bearer).status_code == 401
    assert web.get("/api/v1/status").status_code == 401


def test_admin_users_page(app):
    admin, member = app.test_client(), app.test_client()
    login(admin, "ada")
    login(member, "mia")
    csrf = session_csrf(admin)
    assert member.get("/users").status_code == 403
    assert b'data-user="vic"' in admin.get("/users").data
    # Teammates join with a one-time link (see test_invites); here the admin's side of it.
    r = admin.post("/users/invites", data={"name": "mia", "role": "member", "hours": "24",
                                           "csrf_token": csrf})
    assert r.status_code == 409 and b"user mia already exists" in r.data
    r = admin.post("/users/invites", data={"role": "root", "hours": "24", "csrf_token": csrf})
    assert r.status_code == 400 and b"valid: admin, member, viewer" in r.data
    assert member.post("/users/invites", data={"role": "admin", "hours": "24",
                                               "csrf_token": session_csrf(member)}).status_code == 403
    app.extensions["slotrun"].accounts.add_user("newbie", "member", "newbie-pw-1")
    r = admin.post("/users/newbie/role", data={"role": "viewer", "csrf_token": csrf})
    assert r.status_code == 303
    r = admin.post("/users/ada/role", data={"role": "member", "csrf_token": csrf})
    assert r.status_code == 409 and b"last admin" in r.data
    assert admin.post("/users/newbie/remove", data={"csrf_token": csrf}).status_code == 303
    assert admin.post("/users/newbie/remove", data={"csrf_token": csrf}).status_code == 404
    names = [u["name"] for u in app.extensions["slotrun"].accounts.list_users()]
    assert names == ["ada", "mia", "vic"]


def test_auth_off_answers_only_this_machine(make_app):
    app = make_app(auth=False)
    local = app.test_client()
    assert local.get("/api/v1/status").json["role"] == "admin"
    remote = app.test_client()
    remote.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    r = remote.get("/api/v1/status")
    assert r.status_code == 403 and "only local connections" in r.json["error"]


# Bad input, each with the status and the words of its answer (the closing note lists them).
BAD_INPUTS = [
    ("GET", "/api/v1/configs?pattern=exp-(1", None, 400, "invalid regular expression"),
    ("GET", "/api/v1/configs?pattern=" + "x" * 501, None, 400, "at most 500 allowed"),
    ("GET", "/api/v1/configs?pattern=a%00b", None, 400, "NUL"),
    ("GET", "/api/v1/configs", None, 400, "pattern is required"),
    ("POST", "/api/v1/batches", b"{not json", 400, "must be a JSON object"),
    ("POST", "/api/v1/batches", {"pattern": "exp", "owner": "ada"}, 400, "unknown field 'owner'"),
    ("POST", "/api/v1/batches", {"pattern": 5}, 400, "pattern must be a string"),
    ("POST", "/api/v1/batches", {"pattern": "exp", "priority": "9"}, 400,
     "priority must be a whole number"),
    ("POST", "/api/v1/batches", {"pattern": "exp", "priority": 10**6}, 400,
     "priority must be from -1000 to 1000"),
    ("POST", "/api/v1/batches", {"pattern": "exp", "command": "{python} {nope}"}, 400,
     "unknown placeholder"),
    ("POST", "/api/v1/batches", {"pattern": "exp", "devices": ["gpu9"]}, 400, "unknown GPU"),
    ("POST", "/api/v1/batches", "x" * (2 << 20), 413, "too large"),
    ("POST", "/api/v1/batches/1/priority", {"priority": 1}, 403, "only an admin"),
    ("GET", "/api/v1/tasks/99999999", None, 404, "task 99999999 not found"),
    ("GET", "/api/v1/tasks/99999999999999999999", None, 404, "not found"),
    ("GET", "/api/v1/tasks/abc", None, 404, "not found"),
    ("GET", "/api/v1/tasks?state=done", None, 400, "state must be one of"),
    ("GET", "/api/v1/tasks?per_page=100000", None, 400, "per_page must be"),
    ("GET", "/api/v1/tasks/1/files/../../etc/passwd", None, 404, "no such file"),
    ("GET", "/api/v1/tasks/1/files/%2e%2e/%2e%2e/etc/passwd", None, 404, "no such file"),
    ("GET", "/api/v1/tasks/1/files//etc/passwd", None, 404, "not found"),
    ("GET", "/api/v1/tasks/1/files/a%00b", None, 404, "no such file"),
    ("PATCH", "/api/v1/devices/gpu0", {"slots": 2}, 403, "only an admin"),
    ("DELETE", "/api/v1/tasks/1", None, 405, "allowed: GET"),
]


def test_bad_input_gets_a_clear_answer_and_no_internals(app):
    s = app.extensions["slotrun"]
    _, token = s.accounts.create_token("mia", "bad-input")
    headers = {"Authorization": f"Bearer {token}"}
    c = app.test_client()
    r = c.post("/api/v1/batches", json={"pattern": "exp-1-1", "use_gpu": False}, headers=headers)
    assert r.status_code == 201
    wait_for(lambda: s.store.get_batch(1)["counts"].get("succeeded"), 20)
    failures = []
    for method, url, body, status, words in BAD_INPUTS:
        if isinstance(body, dict):
            r = c.open(url, method=method, json=body, headers=headers)
        elif body is not None:
            r = c.open(url, method=method, data=body, headers=headers,
                       content_type="application/json")
        else:
            r = c.open(url, method=method, headers=headers)
        message = r.json.get("error", "") if r.is_json else ""
        if (r.status_code != status or not r.is_json or set(r.json) != {"error"}
                or words not in message or "Traceback" in message or ROOT in message):
            failures.append(f"{method} {url[:60]}: {r.status_code} {r.data[:200]!r}")
    assert not failures, "\n".join(failures)


# -- a real server, started with no user ----------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server on a fresh workspace with long config names; set up through its link."""
    base = tmp_path_factory.mktemp("secure")
    ws = make_workspace(base / "ws")
    os.makedirs(os.path.join(ws, "configs", "long"))
    for i in range(5):  # names a catastrophic pattern chokes on
        with open(os.path.join(ws, "configs", "long", "a" * (56 + i) + ".yaml"), "w") as f:
            f.write("model_params: {name: circle, radius: 1}\n")
    srv = ServerProcess(base / "server.log", task_env(
        PYTHONUNBUFFERED=1, SLOTRUN_AUTH="true", SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu")),
        ws, ready_status=401, extra_args=("--access-log",))
    try:
        link = wait_for(lambda: re.search(r"http://127\.0\.0\.1:\d+/setup\?token=\S+",
                                          srv.output()), 10).group(0)
        browser = requests.Session()
        page = browser.get(link, timeout=10)
        assert page.status_code == 200, page.text
        r = browser.post(srv.url + "/setup", timeout=10, data={
            "token": link.split("token=")[1], "name": "root", "password": "root-password-1",
            "password2": "root-password-1", "csrf_token": csrf_in(page.text)})
        assert r.status_code == 200 and r.url == srv.url + "/", r.text[:300]
        srv.link = link
        srv.setup_status = browser.get(link, timeout=10).status_code
        acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
        acc.add_user("mia", "member", "pw-mia-123")
        srv.token = acc.create_token("mia", "tests")[1]
        yield srv
    finally:
        srv.stop()


def browser_session(server, name="mia", password="pw-mia-123"):
    """Return a requests session signed in through the login form, and its CSRF token."""
    web = requests.Session()
    page = web.get(server.url + "/login", timeout=10)
    r = web.post(server.url + "/login", timeout=10, data={
        "name": name, "password": password, "csrf_token": csrf_in(page.text)})
    assert r.status_code == 200 and r.url == server.url + "/", r.text[:300]
    boot = re.search(r'"csrf_token": ?"([^"]+)"', r.text)
    return web, boot.group(1)


@pytest.mark.slow
def test_setup_link_is_printed_once_and_kept_out_of_the_access_log(server):
    out = server.output()
    token = server.link.split("token=")[1]
    assert "No account exists yet. Create the first admin" in out
    assert out.count(token) == 1, "the set-up token was logged beyond the printed link"
    assert "/setup?token=[redacted]" in out
    assert server.setup_status == 404  # spent
    assert "root-password-1" not in out and server.token not in out


@pytest.mark.slow
def test_a_real_browser_session_needs_the_csrf_token_for_json_calls(server):
    web, csrf = browser_session(server)
    body = {"pattern": "exp-1-1", "use_gpu": False}
    r = web.post(server.url + "/api/v1/batches", json=body, timeout=10)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = web.post(server.url + "/api/v1/batches", json=body, headers={"X-CSRFToken": csrf},
                 timeout=10)
    assert r.status_code == 201 and r.json()["total"] == 1
    assert requests.get(server.url + "/api/v1/batches/1", timeout=10).status_code == 401
    r = web.post(server.url + "/logout", data={"csrf_token": csrf}, timeout=10)
    assert r.url.startswith(server.url + "/login")
    assert web.get(server.url + "/api/v1/batches/1", timeout=10).status_code == 401


def socket_client(server, **kwargs):
    """Connect a python-socketio client over websocket; return it (raises when refused)."""
    options = kwargs.pop("websocket_extra_options", None)
    client = socketio.Client(reconnection=False, **(
        {"websocket_extra_options": options} if options else {}))
    client.connect(server.url, transports=["websocket"], wait_timeout=10, **kwargs)
    return client


@pytest.fixture
def quick_close(monkeypatch):
    """Let this test's websocket clients wait 0.2 s, not 3 s, for the server's close frame.

    The development server ends a websocket without answering the client's close frame, so
    each closing client (refused or done) would otherwise sit out websocket-client's 3 s.
    """
    import websocket

    original = websocket.WebSocket.close

    def close(self, status=websocket.STATUS_NORMAL, reason=b"", timeout=3):
        return original(self, status, reason, timeout=min(timeout, 0.2))

    monkeypatch.setattr(websocket.WebSocket, "close", close)


@pytest.mark.slow
def test_socketio_needs_a_sign_in_and_the_same_origin(server, quick_close):
    # Nobody: refused. (The other refusals -- a wrong or revoked token, a session without the
    # page's CSRF token -- are in test_access, through the test client.)
    for kwargs in ({}, {"auth": {"token": "srt_1_nope"}},
                   {"headers": {"Authorization": "Bearer srt_1_nope"}}):
        with pytest.raises(socketio.exceptions.ConnectionError):
            socket_client(server, **kwargs)
    # A valid token: connected (the Authorization header works too: see test_access).
    client = socket_client(server, auth={"token": server.token})
    assert client.connected
    client.disconnect()
    # Even with a valid token, a page from another origin may not connect.
    with pytest.raises(socketio.exceptions.ConnectionError):
        socket_client(server, auth={"token": server.token},
                      headers={"Origin": "http://evil.example"})
    web, csrf = browser_session(server)
    cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.items())
    # A browser's session (same origin, the page's CSRF token): connected.
    client = socket_client(server, headers={"Cookie": cookie}, auth={"csrf": csrf})
    assert client.connected
    client.disconnect()
    # A websocket without an Origin header is a script: a session cookie is not enough...
    with pytest.raises(socketio.exceptions.ConnectionError):
        socket_client(server, headers={"Cookie": cookie}, auth={"csrf": csrf},
                      websocket_extra_options={"suppress_origin": True})
    # ... a token is.
    client = socket_client(server, auth={"token": server.token},
                           websocket_extra_options={"suppress_origin": True})
    assert client.connected
    client.disconnect()


@pytest.mark.slow
def test_a_catastrophic_pattern_is_cut_short_without_stalling_other_requests(server):
    headers = {"Authorization": f"Bearer {server.token}"}
    url = server.url + "/api/v1/configs"
    result = {}
    started = threading.Event()

    def bad():
        started.set()
        t0 = time.monotonic()
        r = requests.get(url, params={"pattern": "(a|aa)+$"}, headers=headers, timeout=30)
        result["seconds"] = time.monotonic() - t0
        result["response"] = r

    thread = threading.Thread(target=bad)
    thread.start()
    started.wait(5)
    others = []
    while thread.is_alive() or not others:  # ask something else while the pattern runs
        t0 = time.monotonic()
        r = requests.get(server.url + "/api/v1/status", headers=headers, timeout=30)
        others.append((time.monotonic() - t0, r.status_code))
    thread.join(30)
    r = result["response"]
    assert r.status_code == 400 and "took longer than" in r.json()["error"], r.text
    assert result["seconds"] < 1.0, f"the bad pattern took {result['seconds']:.2f} s"
    assert len(others) >= 2 and all(code == 200 for _, code in others)
    assert max(t for t, _ in others) < 0.5, f"a request waited {max(others)[0]:.2f} s"
    # Anchored at the start, the same pattern fails at once on paths: a quick empty answer.
    t0 = time.monotonic()
    r = requests.get(url, params={"pattern": "^(a|aa)+$"}, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["count"] == 0 and time.monotonic() - t0 < 1.0


def test_serve_refuses_other_addresses_with_auth_off(tmp_path):
    for host in ("0.0.0.0", "192.0.2.10"):
        r = subprocess.run([sys.executable, "-m", "app", "serve", "--host", host, "--port",
                            str(free_port()), "--workspace", str(tmp_path)], cwd=ROOT,
                           env=task_env(SLOTRUN_AUTH="false"), capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: refusing to serve on {host} with auth turned off"), r.stderr
