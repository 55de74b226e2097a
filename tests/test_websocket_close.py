"""A websocket closed from both ends at once prints no traceback; other thread errors do.

The race itself (python-engineio's writer thread closing a socket the server has just closed)
shows in ``test_serve`` only now and then; here a thread raises what simple-websocket's
``close()`` raises then, from a function of that name and file, and one that raises anything
else, each through the hook the app installs.
"""

import errno
import threading

import pytest

from app.web import websocket_close


def _raiser(filename, exc):
    """Return a function named ``close`` that raises ``exc``, as if defined in ``filename``."""
    scope = {"exc": exc}
    exec(compile("def close():\n    raise exc\n", filename, "exec"), scope)
    return scope["close"]


@pytest.fixture
def seen(monkeypatch):
    """Install the hook over a recorder standing for Python's own hook."""
    got = []
    monkeypatch.setattr(threading, "excepthook", lambda args: got.append(args.exc_value))
    monkeypatch.setattr(websocket_close, "_installed", False)
    websocket_close.install_websocket_close_hook()
    websocket_close.install_websocket_close_hook()  # a second app in the process: no second hook
    return got


def _run(target):
    t = threading.Thread(target=target)
    t.start()
    t.join()


def test_a_close_on_a_closed_socket_is_not_printed(seen):
    for code in (errno.EBADF, errno.EPIPE, errno.ECONNRESET):
        _run(_raiser("/venv/site-packages/simple_websocket/ws.py", OSError(code, "closed")))
    assert seen == []


def test_every_other_thread_error_reaches_pythons_hook(seen):
    other_errno = OSError(errno.ENOSPC, "No space left on device")
    elsewhere = OSError(errno.EBADF, "Bad file descriptor")
    not_os = ValueError("boom")
    _run(_raiser("/venv/site-packages/simple_websocket/ws.py", other_errno))
    _run(_raiser("/work/app/executors/local.py", elsewhere))
    _run(_raiser("/venv/site-packages/simple_websocket/ws.py", not_os))
    assert seen == [other_errno, elsewhere, not_os]
