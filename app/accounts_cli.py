"""slotrun users … / token … (or python -m app): manage accounts from the shell."""

import argparse
import getpass
import sys
import time
from urllib.parse import quote

from . import settings as settings_mod
from .accounts import Accounts, Invites, check_name, check_role
from .errors import SlotrunError
from .paths import state_db
from .store import Store


def add_commands(sub):
    """Add the users and token sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=None, metavar="DIR",
                        help="workspace folder (default: the current folder or $SLOTRUN_WORKSPACE)")
    users = sub.add_parser("users", help="add, list, remove users or change passwords")
    us = _Leaves(users.add_subparsers(dest="action", metavar="ACTION", required=True), common)
    a = us.add_parser("add", help="add a user")
    a.add_argument("name")
    a.add_argument("--role", default="member", help="admin, member or viewer (default member)")
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    us.add_parser("list", help="list users")
    r = us.add_parser("remove", help="remove a user and its tokens")
    r.add_argument("name")
    pw = us.add_parser("passwd", help="change a user's password")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    ro = us.add_parser("role", help="change a user's role")
    ro.add_argument("name")
    ro.add_argument("role", help="admin, member or viewer")
    inv = us.add_parser("invite", help="print a one-time link for a teammate to join")
    inv.add_argument("--role", default="member", help="admin, member or viewer (default member)")
    inv.add_argument("--name", default=None, help="the user name it is for (default: they choose)")
    inv.add_argument("--hours", type=int, default=24, choices=(1, 24, 168),
                     help="how long the link works (default 24)")
    inv.add_argument("--url", default=None, metavar="URL",
                     help="the server's address as teammates reach it (default "
                          "http://HOST:PORT of the settings)")
    users.set_defaults(func=_users)

    token = sub.add_parser("token", help="create, list or revoke API tokens")
    ts = _Leaves(token.add_subparsers(dest="action", metavar="ACTION", required=True), common)
    c = ts.add_parser("create", help="create a token; prints it as the last line")
    c.add_argument("name", help="the user the token acts as")
    c.add_argument("--label", default="cli", help="a note to recognise the token by")
    ls = ts.add_parser("list", help="list a user's tokens")
    ls.add_argument("name")
    rv = ts.add_parser("revoke", help="revoke a token")
    rv.add_argument("name")
    rv.add_argument("token_id", help="the token's id (see token list)")
    token.set_defaults(func=_token)


class _Leaves:
    """Sub-parsers that all take the common options (--workspace)."""

    def __init__(self, subparsers, common):
        self.subparsers = subparsers
        self.common = common

    def add_parser(self, name, **kwargs):
        """Add a sub-command with the common options."""
        return self.subparsers.add_parser(name, parents=[self.common], **kwargs)


def _accounts(args):
    s = settings_mod.load({"workspace": args.workspace})
    return Accounts(Store(state_db(s["workspace"])))


def _password(args, name):
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise SlotrunError("no terminal to ask for a password: pass --password-stdin and pipe it")
    first = getpass.getpass(f"Password for {name}: ")
    if first != getpass.getpass("Repeat it: "):
        raise SlotrunError("the two passwords differ")
    return first


def _users(args):
    acc = _accounts(args)
    if args.action == "add":
        check_name(args.name)
        check_role(args.role)
        u = acc.add_user(args.name, args.role, _password(args, args.name))
        print(f"Added {u['name']} ({u['role']}).")
    elif args.action == "list":
        for u in acc.list_users():
            print(f"{u['name']}\t{u['role']}")
    elif args.action == "remove":
        acc.remove_user(args.name)
        print(f"Removed {args.name}.")
    elif args.action == "passwd":
        acc.user(args.name)
        acc.set_password(args.name, _password(args, args.name))
        print(f"Changed the password of {args.name}.")
    elif args.action == "role":
        acc.set_role(args.name, args.role)
        print(f"{args.name} is now {args.role}.")
    elif args.action == "invite":
        _invite(args)
    return 0


def _invite(args):
    s = settings_mod.load({"workspace": args.workspace})
    invites = Invites(Store(state_db(s["workspace"])))
    invite, secret = invites.create(args.role, getpass.getuser(), name=args.name,
                                    hours=args.hours)
    base = (args.url or f"http://{s['host']}:{s['port']}").rstrip("/")
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(invite["expires_at"]))
    who = f"{invite['name']} ({invite['role']})" if invite["name"] else f"a {invite['role']}"
    print(f"Invite for {who}: it works once, until {until} (shown only now):")
    print(f"{base}/join?token={quote(secret)}")


def _token(args):
    acc = _accounts(args)
    if args.action == "create":
        token_id, token = acc.create_token(args.name, args.label)
        print(f"Token {token_id} for {args.name} (shown once; keep it secret):")
        print(token)
    elif args.action == "list":
        for t in acc.list_tokens(args.name):
            print(f"{t['id']}\t{t['label']}")
    elif args.action == "revoke":
        acc.revoke_token(args.name, args.token_id)
        print(f"Revoked token {args.token_id} of {args.name}.")
    return 0
