"""Accounts: users, roles, tokens, the access rule, and their CLI (login limits: see
test_security)."""

import os
import subprocess
import sys

import pytest

from app.accounts import Accounts, can
from app.errors import Conflict, NotFound, SlotrunError
from app.store import Store
from tests.helpers import ROOT, task_env


@pytest.fixture
def accounts(tmp_path):
    return Accounts(Store(str(tmp_path / "state.db")))


def test_users_roles_and_passwords(accounts):
    accounts.add_user("alice", "admin", "correct horse")
    accounts.add_user("bob", "member", "battery staple")
    assert accounts.authenticate("alice", "correct horse")["role"] == "admin"
    assert accounts.authenticate("alice", "wrong password") is None
    assert accounts.authenticate("nobody", "correct horse") is None
    assert accounts.authenticate(None, None) is None
    with pytest.raises(Conflict, match="already exists"):
        accounts.add_user("alice", "member", "another pass")
    with pytest.raises(SlotrunError, match="valid: admin, member, viewer"):
        accounts.add_user("carl", "root", "whatever1")
    with pytest.raises(SlotrunError, match="8 to 1024 characters"):
        accounts.add_user("carl", "member", "short")
    with pytest.raises(SlotrunError, match="user name is 1-64"):
        accounts.add_user("bad name;", "member", "whatever1")
    with pytest.raises(Conflict, match="last admin"):
        accounts.remove_user("alice")
    with pytest.raises(Conflict, match="last admin"):
        accounts.set_role("alice", "member")
    accounts.set_password("bob", "new password")
    assert accounts.authenticate("bob", "new password")
    accounts.remove_user("bob")
    with pytest.raises(NotFound):
        accounts.user("bob")
    stored = accounts.db.get_user(name="alice")["password_hash"]
    assert "correct horse" not in stored and stored.startswith(("scrypt:", "pbkdf2:"))


def test_tokens(accounts):
    accounts.add_user("alice", "member", "correct horse")
    tid, token = accounts.create_token("alice", "laptop")
    assert accounts.user_for_token(token)["name"] == "alice"
    assert accounts.user_for_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert accounts.user_for_token("srt_999_nope") is None
    assert accounts.user_for_token("garbage") is None
    assert accounts.user_for_token("x" * 10000) is None
    assert [t["label"] for t in accounts.list_tokens("alice")] == ["laptop"]
    secret = token.split("_", 2)[2]
    row = accounts.db.get_token(tid)
    assert secret not in str(row)
    with pytest.raises(NotFound):
        accounts.revoke_token("alice", "999")
    accounts.revoke_token("alice", tid)
    assert accounts.user_for_token(token) is None


@pytest.mark.parametrize("role, action, owner, allowed", [
    ("viewer", "read", None, True), ("viewer", "submit", None, False),
    ("viewer", "cancel", "viewer1", False), ("member", "submit", None, True),
    ("member", "cancel", "me", True), ("member", "cancel", "other", False),
    ("member", "retry", "other", False), ("member", "slots", None, False),
    ("member", "queue", None, False), ("admin", "cancel", "other", True),
    ("admin", "slots", None, True), ("admin", "users", None, True),
])
def test_access_rule(role, action, owner, allowed):
    user = {"name": "me" if role == "member" else role + "1", "role": role}
    assert can(user, action, owner) is allowed
    assert can(None, action, owner) is False


def cli(ws, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "app", *args, "--workspace", ws], cwd=ROOT,
                          env=task_env(), input=stdin, capture_output=True, text=True, timeout=30)


def test_users_and_token_cli(tmp_path):
    ws = str(tmp_path)
    r = cli(ws, "users", "add", "alice", "--role", "admin", "--password-stdin", stdin="s3cret-pass\n")
    assert r.returncode == 0 and "Added alice (admin)" in r.stdout
    r = cli(ws, "users", "add", "bob", "--role", "viewer", "--password-stdin", stdin="s3cret-pass\n")
    assert cli(ws, "users", "list").stdout.splitlines() == ["alice\tadmin", "bob\tviewer"]
    r = cli(ws, "token", "create", "bob", "--label", "script")
    assert r.returncode == 0
    token = r.stdout.strip().splitlines()[-1]
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    assert acc.user_for_token(token)["name"] == "bob"
    tid = cli(ws, "token", "list", "bob").stdout.split("\t")[0]
    assert cli(ws, "token", "revoke", "bob", tid).returncode == 0
    assert acc.user_for_token(token) is None
    r = cli(ws, "users", "add", "carl", "--role", "god", "--password-stdin", stdin="s3cret-pass\n")
    assert r.returncode == 2 and "valid: admin, member, viewer" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli(ws, "users", "add", "carl")  # no terminal, no --password-stdin
    assert r.returncode == 2 and "--password-stdin" in r.stderr
    r = cli(ws, "users", "passwd", "bob", "--password-stdin", stdin="new-pass-123\n")
    assert r.returncode == 0 and acc.authenticate("bob", "new-pass-123")
    assert cli(ws, "users", "remove", "bob").returncode == 0
    r = cli(ws, "users", "remove", "alice")
    assert r.returncode == 2 and "last admin" in r.stderr
