"""Who is asking: sessions, API tokens, CSRF tokens and the sign-ins of Socket.IO clients.

A request is signed in by a bearer token (``Authorization: Bearer ...``, which wins) or by
the session cookie; with the ``auth`` setting off, everyone is the server's OS user with
the admin role and only loopback clients are answered. What a signed-in user may do is
decided in ``access``.
"""

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time

from flask import g, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface

from ..errors import Forbidden, Unauthorized
from .extension import get_slotrun

log = logging.getLogger(__name__)

SESSION_MAX_AGE = 7 * 24 * 3600  # a session older than this must sign in again, used or not


def current_user():
    """Return the user of this request or Socket.IO event ({id, name, role}), or None.

    A bearer token (``Authorization: Bearer ...``) wins over the session cookie. With the
    ``auth`` setting off, everyone is the server's OS user with the admin role.
    """
    if not has_request_context():
        return None
    if "slotrun_user" in g:
        return g.slotrun_user
    s = get_slotrun()
    sid = getattr(request, "sid", None)
    if not s.auth:
        user = s.local_user
    elif sid is not None:
        user = socket_user(s, sid)
    else:
        user = _http_user(s)
    g.slotrun_user = user
    return user


def signed_in_by_token():
    """Return True when this request came with an ``Authorization`` header (not a cookie)."""
    return has_request_context() and g.get("slotrun_via") == "token"


def _http_user(s):
    header = request.headers.get("Authorization")
    if header is not None:
        g.slotrun_via = "token"
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return _public_user(s.accounts.user_for_token(token.strip()))
    if "uid" not in session:
        return None
    g.slotrun_via = "session"
    return session_user(s, session)


def _public_user(u):
    if u is None:
        return None
    return {"id": u["id"], "name": u["name"], "role": u["role"]}


def bearer_token(auth=None):
    """Return the API token of this request (Authorization header or Socket.IO ``auth``)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return auth["token"]
    return None


# -- sessions -------------------------------------------------------------------------------------

def _fingerprint(key, password_hash):
    """Return a keyed digest of a password hash: a password change ends older sessions."""
    return hmac.new(key.encode(), password_hash.encode(), hashlib.sha256).hexdigest()[:32]


def session_user(s, sess):
    """Return the user a session cookie (or a socket's copy of it) signs in, or None."""
    uid = sess.get("uid")
    since = sess.get("since")
    if not isinstance(uid, int) or not isinstance(since, (int, float)):
        return None
    if time.time() - since > SESSION_MAX_AGE:
        return None
    row = s.accounts.db.get_user(user_id=uid)
    if row is None or not hmac.compare_digest(
            str(sess.get("pwh", "")), _fingerprint(s.secret_key, row["password_hash"])):
        return None
    return {"id": row["id"], "name": row["name"], "role": row["role"]}


def sign_in(user):
    """Sign ``user`` in on a cleared session: new CSRF token, fresh lifetime.

    Called after a login, the first admin's set-up, and a password change (which keeps
    this session and ends every other one).
    """
    s = get_slotrun()
    row = s.accounts.db.get_user(user_id=user["id"])
    session.clear()
    session.permanent = True
    session["uid"] = row["id"]
    session["since"] = time.time()
    session["pwh"] = _fingerprint(s.secret_key, row["password_hash"])
    session["csrf"] = secrets.token_urlsafe(32)


def sign_out():
    """Forget this session."""
    session.clear()


class Sessions(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is Secure whenever the request came over https."""

    def get_cookie_secure(self, app):
        """Return True when configured, or when this request came over https."""
        if app.config.get("SESSION_COOKIE_SECURE"):
            return True
        return has_request_context() and request.is_secure


# -- CSRF -----------------------------------------------------------------------------------------

def csrf_token():
    """Return this session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 20:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _csrf_matches(sent):
    expected = session.get("csrf")
    return isinstance(sent, str) and bool(sent) and isinstance(expected, str) and \
        hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode())


def check_csrf():
    """Refuse (403) a state-changing browser request without this session's CSRF token."""
    sent = request.headers.get("X-CSRFToken")
    if sent is None and request.mimetype in ("application/x-www-form-urlencoded",
                                             "multipart/form-data"):
        sent = request.form.get("csrf_token")
    if not _csrf_matches(sent):
        raise Forbidden("the CSRF token is missing or wrong: reload the page and try again "
                        "(scripts: send Authorization: Bearer TOKEN instead of a cookie)")


# -- Socket.IO clients ----------------------------------------------------------------------------

def sign_in_socket(s, sid, auth):
    """Decide who a connecting client is, remember it for its events; raise if nobody.

    A token (``Authorization: Bearer`` or ``auth={"token": ...}``) signs in any client. A
    browser's session cookie counts only with the page's CSRF token in ``auth`` (so only
    the dashboard's own pages use it) and, for a websocket, with an ``Origin`` header: a
    websocket without one comes from a script, which must use a token. Cross-origin
    requests never get here: the Socket.IO server refuses them (same origin only).
    """
    if not s.auth:
        if not is_loopback(request.remote_addr):
            raise Unauthorized("this server runs with auth turned off, so it answers only "
                               "local connections")
        _remember_socket(s, sid, {"via": "local"})
        g.slotrun_user = s.local_user
        return
    token = bearer_token(auth)
    if token is not None:
        user = s.accounts.user_for_token(token)
        if user is None:
            raise Unauthorized("the API token is not valid (revoked, or mistyped)")
        _remember_socket(s, sid, {"via": "token", "token_id": user["token_id"],
                                  "uid": user["id"]})
        g.slotrun_user = {"id": user["id"], "name": user["name"], "role": user["role"]}
        return
    websocket = request.environ.get("HTTP_UPGRADE", "").lower() == "websocket" \
        or request.args.get("transport") == "websocket"
    if websocket and not request.headers.get("Origin"):
        raise Unauthorized("a websocket without an Origin header must sign in with a token "
                           "(Authorization: Bearer TOKEN or auth={\"token\": TOKEN})")
    user = session_user(s, session)
    if user is None:
        raise Unauthorized("sign in first: log in at /login, or connect with a token")
    sent = auth.get("csrf") if isinstance(auth, dict) else None
    if not _csrf_matches(sent):
        raise Unauthorized("a session's Socket.IO connection must send the page's CSRF token "
                           "as auth={\"csrf\": ...}")
    _remember_socket(s, sid, {"via": "session", "uid": session.get("uid"),
                              "since": session.get("since"), "pwh": session.get("pwh")})
    g.slotrun_user = user


def _remember_socket(s, sid, entry):
    """Keep how a Socket.IO client signed in (never the token itself), to check it again."""
    with s.sockets_lock:
        s.sockets[sid] = entry


def forget_socket(s, sid):
    """Forget a disconnected Socket.IO client."""
    with s.sockets_lock:
        s.sockets.pop(sid, None)


def socket_user(s, sid):
    """Return the user of a connected Socket.IO client as it is now, or None."""
    entry = s.sockets.get(sid)
    if entry is None:
        return None
    if entry["via"] == "local":
        return s.local_user
    if entry["via"] == "token":
        row = s.accounts.db.get_token(entry["token_id"])
        if row is None:
            return None
        return {"id": row["user_id"], "name": row["user_name"], "role": row["role"]}
    return session_user(s, entry)


def recheck_sockets(s, match=None):
    """Disconnect Socket.IO clients whose sign-in no longer holds (or that ``match``)."""
    if not s.auth:
        return
    with s.sockets_lock:
        entries = list(s.sockets.items())
    for sid, entry in entries:
        try:
            gone = match(entry) if match is not None else socket_user(s, sid) is None
        except Exception:  # noqa: BLE001 - one bad entry must not stop the check
            log.exception("checking a Socket.IO client's sign-in failed")
            gone = True
        if gone:
            forget_socket(s, sid)
            try:
                s.socketio.server.disconnect(sid, namespace="/")
            except Exception:  # noqa: BLE001 - it may have gone meanwhile
                pass


# -- addresses ------------------------------------------------------------------------------------

def is_loopback(host):
    """Return True for a loopback address or name (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def safe_next(target):
    """Return ``target`` if it is a path on this site, else "/" (no open redirects)."""
    if (not isinstance(target, str) or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target) or len(target) > 2000):
        return "/"
    return target
