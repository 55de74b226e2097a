"""A websocket closed from both ends at once is not an error to print.

When a browser's connection ends (the browser leaves, or the server stops and closes every
connection), python-engineio's writer thread closes the websocket while the request's own
thread returns and the server closes the socket under it. simple-websocket's ``close()``
then fails to send its close frame (``OSError``: bad file descriptor, broken pipe, reset)
and, being in a thread of its own, Python prints a traceback nobody can act on: the
connection was ending anyway. This hook logs that one case at debug level and leaves every
other thread exception to Python's own hook.
"""

import errno
import logging
import threading
import traceback

log = logging.getLogger(__name__)

_CLOSED = (errno.EBADF, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)
_installed = False


def install_websocket_close_hook():
    """Install the hook once per process (later calls do nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = threading.excepthook

    def hook(args):
        if is_close_race(args.exc_type, args.exc_value, args.exc_traceback):
            log.debug("websocket closed while the connection ended: %s", args.exc_value)
            return
        previous(args)

    threading.excepthook = hook


def is_close_race(exc_type, exc, tb):
    """Tell whether an exception is a websocket's close failing on a socket already closed."""
    if exc_type is None or not issubclass(exc_type, OSError) or \
            getattr(exc, "errno", None) not in _CLOSED:
        return False
    frames = traceback.extract_tb(tb)
    return any(f.name == "close" and "simple_websocket" in f.filename for f in frames)
