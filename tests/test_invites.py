"""Inviting a teammate with a one-time link instead of choosing their password: the admin's
side, the invitee's, and every way a link stops working (used, expired, revoked, wrong, a
name taken meanwhile). Flask's test client on a real store; the shell's ``users invite``."""

import re
import subprocess
import sys
import time

import pytest

from app import create_app
from tests.helpers import ROOT, close_apps, task_env


@pytest.fixture
def app(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "1")
    app = create_app({"TESTING": True, "workspace": workspace, "auth": True,
                      "SERVER_NAME": "lab.example:5000"})
    s = app.extensions["slotrun"]
    s.accounts.add_user("ada", "admin", "pw-ada-123")
    s.accounts.add_user("mia", "member", "pw-mia-123")
    yield app
    close_apps([app])


def csrf_of(client, path):
    page = client.get(path)
    return page, re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()


def admin_client(app):
    client = app.test_client()
    _, csrf = csrf_of(client, "/login")
    assert client.post("/login", data={"name": "ada", "password": "pw-ada-123",
                                       "csrf_token": csrf}).status_code == 303
    return client


def invite(app, **form):
    """Create an invite on the Users page; return (its link, the page)."""
    admin = admin_client(app)
    _, csrf = csrf_of(admin, "/users")
    r = admin.post("/users/invites", data={"role": "member", "hours": "24", **form,
                                           "csrf_token": csrf})
    assert r.status_code == 201, r.data[:500]
    link = re.search(rb'id="invite-link" value="([^"]+)"', r.data).group(1).decode()
    return link, r


def join(app, link, **form):
    """Open a link in a fresh browser and join with it; return (the client, the answer)."""
    web = app.test_client()
    path = link.split("lab.example:5000", 1)[1].replace("&amp;", "&")
    page, csrf = csrf_of(web, path)
    assert page.status_code == 200, page.data[:500]
    token = path.split("token=", 1)[1]
    r = web.post("/join", data={"token": token, "password": "pw-new-1234",
                                "password2": "pw-new-1234", "csrf_token": csrf, **form})
    return web, r


def test_an_invite_link_creates_an_account_once(app):
    link, page = invite(app, role="viewer")
    assert link.startswith("http://lab.example:5000/join?token=")
    assert b"it works once, until" in page.data and b"(in 24 hours)" in page.data
    # Listed as pending for the admins (the link itself is never shown again).
    assert b"anyone with the link" in page.data
    s = app.extensions["slotrun"]
    assert [i["role"] for i in s.invites.pending()] == ["viewer"]
    web, r = join(app, link, name="newbie")
    assert r.status_code == 303 and r.headers["Location"] == "/"
    # Signed in at once, with the role the admin chose.
    me = web.get("/api/v1/status").json
    assert (me["user"], me["role"]) == ("newbie", "viewer")
    assert s.invites.pending() == []
    # A second use says who used it and when.
    again = app.test_client().get(link.split("lab.example:5000", 1)[1])
    assert again.status_code == 409
    assert b"this invite link was already used (by newbie, on " in again.data


def test_an_invite_for_a_name_and_every_refusal(app):
    s = app.extensions["slotrun"]
    link, _ = invite(app, name="otto", role="member")
    # A failed attempt does not spend the link.
    web, r = join(app, link, password2="different-123")
    assert r.status_code == 400 and b"the two passwords differ" in r.data
    web, r = join(app, link, password="short", password2="short")
    assert r.status_code == 400 and b"a password needs 8 to 1024 characters" in r.data
    # The name is the invite's, whatever a hand-made form sends.
    web, r = join(app, link, name="someone-else")
    assert r.status_code == 303 and web.get("/api/v1/status").json["user"] == "otto"
    assert [u["name"] for u in s.accounts.list_users()] == ["ada", "mia", "otto"]
    zed, secret = s.invites.create("member", "ada", name="zed")
    with pytest.raises(Exception, match="this invite is for the user name zed"):
        s.invites.accept(secret, "zoe", "pw-zoe-1234")
    s.invites.revoke(zed["id"])
    # A name taken between the invite and its use: refused, and the invite is not spent.
    link, _ = invite(app)
    s.accounts.add_user("late", "viewer", "pw-late-123")
    web, r = join(app, link, name="late")
    assert r.status_code == 409 and b"user late already exists" in r.data
    assert len(s.invites.pending()) == 1
    web, r = join(app, link, name="early")
    assert r.status_code == 303
    # Expired: says when.
    row, secret = s.invites.create("member", "ada", hours=1)
    s.store._conn().execute("UPDATE invites SET expires_at=? WHERE id=?",
                            (time.time() - 5, row["id"]))
    r = app.test_client().get(f"/join?token={secret}")
    assert r.status_code == 409 and b"this invite link expired on " in r.data
    # Revoked (after a confirmation on the page): not valid any more.
    row, secret = s.invites.create("member", "ada")
    admin = admin_client(app)
    _, csrf = csrf_of(admin, "/users")
    assert admin.post(f"/users/invites/{row['id']}/revoke",
                      data={"csrf_token": csrf}).status_code == 303
    r = app.test_client().get(f"/join?token={secret}")
    assert r.status_code == 404 and b"this invite link is not valid" in r.data
    # Wrong links are counted against the address like failed logins.
    for _ in range(25):
        app.test_client().get("/join?token=guess")
    assert app.test_client().get(f"/join?token={secret}").status_code == 429
    # A join without the page's CSRF token is refused.
    assert app.test_client().post("/join", data={"token": secret}).status_code == 403


def test_bad_invites_are_named(app):
    s = app.extensions["slotrun"]
    admin = admin_client(app)
    _, csrf = csrf_of(admin, "/users")
    for form, status, words in (({"role": "root", "hours": "24"}, 400, b"valid: admin, member"),
                                ({"role": "member", "hours": "5"}, 400, b"1, 24 or 168 hours"),
                                ({"role": "member", "hours": "24", "name": "bad name!"}, 400,
                                 b"a user name is 1-64 characters"),
                                ({"role": "member", "hours": "24", "name": "mia"}, 409,
                                 b"user mia already exists")):
        r = admin.post("/users/invites", data={**form, "csrf_token": csrf})
        assert r.status_code == status and words in r.data, (form, r.data[:300])
    assert s.invites.pending() == []
    with pytest.raises(Exception, match="invite 99 not found"):
        s.invites.revoke(99)


def test_the_shell_prints_an_invite_link(app, workspace):
    r = subprocess.run([sys.executable, "-m", "app", "users", "invite", "--role", "viewer",
                        "--name", "vic", "--hours", "168", "--url", "http://lab.example:5000",
                        "--workspace", workspace], env=task_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, link = r.stdout.strip().splitlines()
    assert first.startswith("Invite for vic (viewer): it works once, until ")
    web, answer = join(app, link)
    assert answer.status_code == 303 and web.get("/api/v1/status").json["role"] == "viewer"
