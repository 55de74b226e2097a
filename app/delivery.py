"""Sending one notification: a JSON webhook POST or an e-mail, safely and with a deadline.

The server makes these requests on behalf of its users, so a webhook URL is checked before
anything is sent (see ``WebhookPolicy``):

- only ``http`` and ``https``; no user name or password in the URL; at most 2000 characters;
- the host name is resolved once and the request goes to an address that was checked (a name
  that resolves differently a moment later cannot redirect the request: no DNS rebinding);
- by default every address the name resolves to must be public (``ipaddress.is_global``):
  loopback, private networks (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16,
  where cloud metadata services live), carrier-grade NAT, multicast and reserved addresses are
  refused;
- the admin's ``notify_webhook_hosts`` setting lists what is allowed instead: host names
  (``hooks.slack.com``, ``*.example.org``), addresses or networks (``10.1.2.3``,
  ``10.0.0.0/8``). Once it is set, a URL must match an entry; an entry may name a private host
  (the admin chose it);
- the admin's own server-wide webhook (``notify_webhook``) is trusted: its address is not
  checked (it may be a lab-internal chat server);
- redirects are never followed (a 3xx answer is a failed delivery), the answer's body is never
  read, and the whole request has a deadline.
"""

import http.client
import ipaddress
import json
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlsplit

from .errors import SlotrunError

MAX_URL = 2000
USER_AGENT = "slotrun-notify"


class DeliveryError(Exception):
    """A notification was not delivered; ``retry`` says whether trying again may help."""

    def __init__(self, message, retry=False):
        super().__init__(message)
        self.message = message
        self.retry = retry


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: where to connect, and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked address the request goes to


def _entry(text):
    """Return ("net", network) or ("name", lowercase pattern) for one allow-list entry."""
    try:
        return "net", ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    if not name or any(c in name for c in "/:@ ") or (name.count("*") and not name.startswith("*.")):
        raise SlotrunError(f"notify_webhook_hosts: {text!r} is not a host name (hooks.slack.com, "
                           "*.example.org), an address (10.1.2.3) or a network (10.0.0.0/8)")
    return "name", name


def _public(address):
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_global and not ip.is_multicast


class WebhookPolicy:
    """Which webhook URLs the server may call (the ``notify_webhook_hosts`` setting)."""

    def __init__(self, allowed=""):
        self.entries = [_entry(t.strip()) for t in str(allowed or "").split(",") if t.strip()]

    def _name_allowed(self, host):
        for kind, value in self.entries:
            if kind == "name" and (host == value or (value.startswith("*.")
                                                     and host.endswith(value[1:]))):
                return True
        return False

    def _address_allowed(self, address):
        ip = ipaddress.ip_address(address)
        return any(kind == "net" and ip.version == value.version and ip in value
                   for kind, value in self.entries)

    def parse(self, url):
        """Return (scheme, host, port, path) of a webhook URL, or raise naming the rule."""
        if not isinstance(url, str) or not url or len(url) > MAX_URL or any(
                ord(c) < 33 for c in url):
            raise SlotrunError(f"a webhook URL is http(s)://host/path, at most {MAX_URL} "
                               "characters, without spaces")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise SlotrunError("the webhook URL is not a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise SlotrunError(f"a webhook URL must start with https:// (or http://), not "
                               f"{parts.scheme or 'nothing'}://")
        if parts.username is not None or parts.password is not None:
            raise SlotrunError("a webhook URL must not hold a user name or password (user@host)")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise SlotrunError("the webhook URL has no host")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path

    def check(self, url, trusted=False, resolve=socket.getaddrinfo):
        """Return the Target of a URL the server may call, or raise SlotrunError saying why."""
        scheme, host, port, path = self.parse(url)
        try:
            infos = resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise SlotrunError(f"the webhook host {host} cannot be resolved") from None
        addresses = list(dict.fromkeys(i[4][0] for i in infos))
        if not addresses:
            raise SlotrunError(f"the webhook host {host} cannot be resolved")
        if not trusted:
            named = self._name_allowed(host)
            if self.entries and not named and not all(self._address_allowed(a) for a in addresses):
                raise SlotrunError(f"webhooks to {host} are not allowed on this server (setting "
                                   "notify_webhook_hosts lists the allowed hosts)")
            if not named:
                bad = [a for a in addresses if not _public(a) and not self._address_allowed(a)]
                if bad:
                    raise SlotrunError(f"webhooks to {host} are refused: it resolves to a private, "
                                       f"loopback or link-local address ({bad[0]}); an admin can "
                                       "allow it with the setting notify_webhook_hosts")
        return Target(scheme, host, port, path, addresses[0])


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate checked for the URL's host name."""

    def __init__(self, target, timeout):
        super().__init__(target.host, target.port, timeout=timeout,
                         context=ssl.create_default_context())
        self.target = target

    def connect(self):
        """Connect to the checked address and start TLS for the host name."""
        sock = socket.create_connection((self.target.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    """Plain HTTP to a checked address."""

    def __init__(self, target, timeout):
        super().__init__(target.host, target.port, timeout=timeout)
        self.target = target

    def connect(self):
        """Connect to the checked address."""
        self.sock = socket.create_connection((self.target.address, self.port), self.timeout)


def post_json(target, payload, timeout):
    """POST ``payload`` as JSON to a checked Target; return the status, or raise DeliveryError.

    ``timeout`` bounds the whole request (connecting, sending, the answer's status line and
    headers): at the deadline the socket is shut, so a receiver that answers byte by byte
    cannot hold the sender.
    """
    body = json.dumps(payload).encode()
    conn = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, timeout)
    timer = threading.Timer(timeout, _shut, (conn,))
    timer.daemon = True
    started = time.monotonic()
    timer.start()
    try:
        conn.request("POST", target.path, body=body, headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "Content-Length": str(len(body))})
        response = conn.getresponse()
        status = response.status
    except (OSError, http.client.HTTPException) as e:
        late = time.monotonic() - started >= timeout
        raise DeliveryError(f"no answer within {timeout:g} s" if late or isinstance(
            e, TimeoutError) else f"{type(e).__name__}: {e}", retry=True) from None
    finally:
        timer.cancel()
        conn.close()
    if 200 <= status < 300:
        return status
    if 300 <= status < 400:
        raise DeliveryError(f"answered {status} (a redirect): redirects are not followed; use "
                            "the final URL", retry=False)
    raise DeliveryError(f"answered {status}", retry=status == 429 or status >= 500)


def _shut(conn):
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass(frozen=True)
class SmtpSettings:
    """Where e-mail goes out (the smtp_* settings); ``host`` empty: no e-mail."""

    host: str
    port: int
    security: str  # starttls | ssl | none
    user: str
    password: str
    sender: str

    @classmethod
    def from_settings(cls, s):
        """Return the SMTP settings of a settings dict."""
        security = str(s.get("smtp_security", "starttls")).lower()
        if security not in ("starttls", "ssl", "none"):
            raise SlotrunError(f"smtp_security must be starttls, ssl or none, not {security!r}")
        return cls(str(s.get("smtp_host") or ""), int(s.get("smtp_port") or 587), security,
                   str(s.get("smtp_user") or ""), str(s.get("smtp_password") or ""),
                   str(s.get("smtp_from") or "") or "slotrun@" + socket.gethostname())

    @property
    def enabled(self):
        """Return True when an SMTP server is configured."""
        return bool(self.host)


def send_mail(smtp, to, subject, text, timeout):
    """Send one plain-text e-mail; raise DeliveryError when the server refuses or times out."""
    msg = EmailMessage()
    msg["From"] = smtp.sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(text)
    try:
        if smtp.security == "ssl":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.user:
                client.login(smtp.user, smtp.password)
            client.send_message(msg)
    except smtplib.SMTPRecipientsRefused:
        raise DeliveryError(f"the mail server refused the address {to}", retry=False) from None
    except smtplib.SMTPAuthenticationError:
        raise DeliveryError("the mail server refused smtp_user / smtp_password",
                            retry=False) from None
    except (OSError, smtplib.SMTPException) as e:
        raise DeliveryError(f"{type(e).__name__}: {e}", retry=True) from None
