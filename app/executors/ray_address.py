"""The Ray cluster's address, found and knocked on before a server starts (no Ray connection).

``ray.init`` on an address where nothing answers retries for minutes, and it runs in the
server's worker, after gunicorn forked it: the user saw Ray's retry warnings, then a worker
timeout, or a traceback and gunicorn's own shutdown lines. This check runs in the serving
process before the fork, so a cluster that is not there is one ``error: ...`` line. Ray is an
optional dependency: it is imported here, when the ray executor is chosen.
"""

import socket

from ..errors import SlotrunError

KNOCK_TIMEOUT = 5.0  # seconds a cluster's head gets to accept a TCP connection
HINT = "start one with `ray start --head` and pass its address with --ray-address"


def check_reachable(address, timeout=KNOCK_TIMEOUT):
    """Raise SlotrunError unless a Ray cluster's head accepts a connection at ``address``."""
    try:
        import ray._private.services as services
    except ImportError:
        raise SlotrunError("the ray executor needs Ray; install it with pip install '.[ray]' "
                           "(or use the local executor: executor: local)") from None
    address = (address or "auto").strip()
    if address.startswith("ray://"):
        return  # a Ray Client server: ray.init answers for it, and fails fast
    try:
        # Ray's own rules: RAY_ADDRESS, the last `ray start` on this machine, localhost.
        found = services.canonicalize_bootstrap_address_or_die(address)
    except (ConnectionError, ValueError) as e:
        raise SlotrunError(f"cannot connect to the Ray cluster at {address!r} ({_first_line(e)}); "
                           + HINT) from None
    except AttributeError:
        return  # a Ray whose private helper moved: ray.init still reports what is wrong
    host, _, port = found.rpartition(":")
    try:
        port = int(port)
    except ValueError:
        raise SlotrunError(f"cannot connect to the Ray cluster at {address!r}: {found!r} is not "
                           "HOST:PORT, such as 10.0.0.5:6379 or auto") from None
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise SlotrunError(f"cannot connect to the Ray cluster at {address!r} (nothing answers "
                           f"at {found}: {why}); " + HINT) from None


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
