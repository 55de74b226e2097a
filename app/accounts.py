"""Accounts: users with roles, hashed passwords, API tokens and the access rule.

No web framework here: the web layer asks ``can(user, action, owner)`` and the CLI manages
users and tokens through ``Accounts``.
"""

import hashlib
import hmac
import re
import secrets
import time

from werkzeug.security import check_password_hash, generate_password_hash

from .errors import Conflict, NotFound, SlotrunError
from .store import AccountStore

ROLES = ("admin", "member", "viewer")
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
TOKEN_PREFIX = "srt"

# What each action needs. "own" actions are allowed to members on their own work.
READ, SUBMIT, CHANGE_OWN, ADMIN = "read", "submit", "change-own", "admin"
ACTIONS = {
    "read": READ,               # see the queue, devices, logs, results
    "submit": SUBMIT,           # start a batch
    "cancel": CHANGE_OWN,       # cancel a task or batch
    "retry": CHANGE_OWN,        # retry a task
    "tokens": READ,             # manage one's own API tokens
    "slots": ADMIN,             # change device slot limits
    "queue": ADMIN,             # pause / resume the queue
    "priority": ADMIN,          # change a batch's priority
    "users": ADMIN,             # manage users
}

_DUMMY_HASH = generate_password_hash("slotrun-timing-equaliser")


def can(user, action, owner=None):
    """Return True when ``user`` (a dict with name and role, or None) may do ``action``.

    ``owner``: the owner of the task or batch acted on, for actions on one's own work.
    """
    if user is None:
        return False
    need = ACTIONS[action]
    role = user.get("role")
    if role == "admin":
        return True
    if need == READ:
        return role in ("member", "viewer")
    if need == SUBMIT:
        return role == "member"
    if need == CHANGE_OWN:
        return role == "member" and owner is not None and owner == user.get("name")
    return False


def check_name(name):
    """Return a valid user name or raise an error naming the rule."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SlotrunError("a user name is 1-64 characters of letters, digits, and . _ @ -")
    return name


def check_role(role):
    """Return a valid role or raise an error naming the valid ones."""
    if role not in ROLES:
        raise SlotrunError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    return role


def check_password(password):
    """Return an acceptable password or raise an error naming the rule."""
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise SlotrunError(f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def _secret_hash(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    """Users and tokens of one workspace."""

    def __init__(self, store):
        self.db = AccountStore(store)

    def add_user(self, name, role, password):
        """Create a user; return it."""
        check_name(name)
        check_role(role)
        check_password(password)
        self.db.add_user(name, role, generate_password_hash(password))
        return self.user(name)

    def user(self, name):
        """Return a user (name, role, id) or raise NotFound."""
        u = self.db.get_user(name=name)
        if u is None:
            raise NotFound(f"user {name} not found")
        u.pop("password_hash", None)
        return u

    def list_users(self):
        """Return every user."""
        return self.db.list_users()

    def has_users(self):
        """Return True once at least one user exists."""
        return self.db.count_users() > 0

    def remove_user(self, name):
        """Delete a user and its tokens (never the last admin)."""
        u = self.user(name)
        if u["role"] == "admin" and self.db.count_users("admin") == 1:
            raise Conflict(f"{name} is the last admin; make another admin first")
        self.db.remove_user(u["id"])

    def set_password(self, name, password):
        """Change a user's password."""
        u = self.user(name)
        check_password(password)
        self.db.update_user(u["id"], password_hash=generate_password_hash(password))

    def set_role(self, name, role):
        """Change a user's role (never demoting the last admin)."""
        u = self.user(name)
        check_role(role)
        if u["role"] == "admin" and role != "admin" and self.db.count_users("admin") == 1:
            raise Conflict(f"{name} is the last admin; make another admin first")
        self.db.update_user(u["id"], role=role)

    def authenticate(self, name, password):
        """Return the user when the password is right, else None (same cost either way)."""
        row = self.db.get_user(name=name) if isinstance(name, str) else None
        if row is None or not isinstance(password, str):
            check_password_hash(_DUMMY_HASH, "x")
            return None
        if not check_password_hash(row["password_hash"], password):
            return None
        row.pop("password_hash")
        return row

    def create_token(self, name, label="cli"):
        """Create an API token for a user; return (token id, the token text, shown once)."""
        u = self.user(name)
        label = str(label or "token")[:100]
        secret = secrets.token_urlsafe(32)
        token_id = self.db.add_token(u["id"], label, _secret_hash(secret))
        return token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def list_tokens(self, name):
        """Return a user's tokens (ids, labels, dates; never the secrets)."""
        return self.db.list_tokens(self.user(name)["id"])

    def revoke_token(self, name, token_id):
        """Delete one of a user's tokens."""
        u = self.user(name)
        t = self.db.get_token(int(token_id)) if str(token_id).isdigit() else None
        if t is None or t["user_id"] != u["id"]:
            raise NotFound(f"user {name} has no token {token_id}")
        self.db.remove_token(t["id"])

    def user_for_token(self, token):
        """Return the user a bearer token belongs to, or None (compared in constant time)."""
        if not isinstance(token, str) or len(token) > 200:
            return None
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1].isdigit():
            return None
        row = self.db.get_token(int(parts[1]))
        if row is None:
            hmac.compare_digest(_secret_hash(parts[2]), _secret_hash("x"))
            return None
        if not hmac.compare_digest(_secret_hash(parts[2]), row["secret_hash"]):
            return None
        if row["last_used_at"] is None or time.time() - row["last_used_at"] > 60:
            self.db.touch_token(row["id"])
        return {"id": row["user_id"], "name": row["user_name"], "role": row["role"],
                "token_id": row["id"]}


INVITE_HOURS = (1, 24, 168)  # how long an invite link may work: an hour, a day, a week
DEFAULT_INVITE_HOURS = 24


class Invites:
    """One-time links that let a teammate create their own account with a given role."""

    def __init__(self, store):
        self.db = AccountStore(store)

    def create(self, role, created_by, name=None, hours=DEFAULT_INVITE_HOURS):
        """Create an invite; return (the invite's row, its secret, shown once in the link)."""
        check_role(role)
        if name:
            check_name(name)
            if self.db.get_user(name=name) is not None:
                raise Conflict(f"user {name} already exists; invite another name, or none")
        if hours not in INVITE_HOURS:
            raise SlotrunError(f"an invite works for 1, 24 or 168 hours, not {hours!r}")
        secret = secrets.token_urlsafe(24)
        invite_id = self.db.add_invite(_secret_hash(secret), role, name or None, created_by,
                                       time.time() + hours * 3600)
        return self.db.get_invite(invite_id=invite_id), secret

    def find(self, secret):
        """Return the pending invite of a link's secret, or raise an error saying why not."""
        row = self.db.get_invite(secret_hash=_secret_hash(secret)) \
            if isinstance(secret, str) and 0 < len(secret) <= 200 else None
        if row is None:
            raise NotFound("this invite link is not valid: check that it was copied whole, or "
                           "ask an admin for a new one")
        if row["used_at"] is not None:
            raise Conflict(f"this invite link was already used (by {row['used_by']}, "
                           f"{_when(row['used_at'])}); log in instead, or ask an admin for a new "
                           "one")
        if row["expires_at"] <= time.time():
            raise Conflict(f"this invite link expired {_when(row['expires_at'])}; ask an admin "
                           "for a new one")
        return row

    def accept(self, secret, name, password):
        """Create the invitee's account from a link (once); return the new user."""
        row = self.find(secret)
        if row["name"] and name != row["name"]:
            raise SlotrunError(f"this invite is for the user name {row['name']}")
        check_name(name)
        check_password(password)
        user_id = self.db.accept_invite(row["id"], name, row["role"],
                                        generate_password_hash(password), time.time())
        return {"id": user_id, "name": name, "role": row["role"]}

    def pending(self):
        """Return the invites that still work, newest first."""
        return self.db.pending_invites(time.time())

    def revoke(self, invite_id):
        """Make an invite's link stop working."""
        if self.db.get_invite(invite_id=invite_id) is None:
            raise NotFound(f"invite {invite_id} not found")
        self.db.remove_invite(invite_id)


def _when(t):
    """Return a time as "on 2026-11-30 at 14:05 UTC"."""
    return time.strftime("on %Y-%m-%d at %H:%M UTC", time.gmtime(t))
