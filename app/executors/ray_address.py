"""The Ray cluster's address, found and knocked on before a server starts (no Ray connection).

``ray.init`` on an address where nothing answers retries for minutes, and it runs in the
server's worker, after gunicorn forked it: the user saw Ray's retry warnings, then a worker
timeout, or a traceback and gunicorn's own shutdown lines. This check runs in the serving
process before the fork, so a cluster that is not there is one ``error: ...`` line. Ray is an
optional dependency: it is imported here, when the ray executor is chosen.

A TCP knock alone lets anything that listens pass (a web server, a Ray dashboard's port, a
typo'd port of another service), and ``ray.init`` then retried for minutes. So the head is also
asked, over gRPC (Ray's own dependency), for its cluster id: what does not complete gRPC's
HTTP/2 handshake, or answers that it has no GCS service, is no Ray head. A head that refuses
the call for want of a token is one: the error says what it needs, unless the address is
``auto`` and no token was sent (``ray.init`` then sends the local cluster's token itself).
Whatever else the head answers is left to ``ray.init``.
"""

import os
import queue
import socket
import time

from ..errors import SlotrunError

KNOCK_TIMEOUT = 5.0  # seconds a cluster's head gets to accept a TCP connection
GCS_TIMEOUT = 3.0  # seconds it then gets to answer gRPC (a head takes milliseconds)
HINT = "start one with `ray start --head` and pass its address with --ray-address"
TOKEN_REFUSED = "token refused"
TOKEN_HINT = ("a cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token in "
              "this server's environment and the cluster's token in ~/.ray/auth_token (or "
              "RAY_AUTH_TOKEN), or --ray-address auto on the head's own machine")
VALID = ("the address of a Ray head's GCS, HOST:PORT as `ray start --head` prints it (port 6379 "
         "by default), or auto")


def check_reachable(address, timeout=KNOCK_TIMEOUT):
    """Raise SlotrunError unless a Ray cluster's head answers at ``address`` (TCP, then gRPC)."""
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
    _check_gcs(address, found, timeout=GCS_TIMEOUT)


def _check_gcs(address, found, timeout):
    """Raise SlotrunError when what answers at ``found`` is no Ray GCS, or wants a token."""
    import grpc  # Ray's own dependency, present wherever Ray is

    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a failed TLS handshake may be the certificates, not the server: ray.init says
    channel = _gcs_channel(found)
    try:
        why = _handshake(grpc, channel, timeout)
        if why is None:
            why = _ask_cluster_id(grpc, channel, timeout)
    finally:
        channel.close()
    if why == TOKEN_REFUSED:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            raise SlotrunError(f"cannot connect to the Ray cluster at {address!r}: its head at "
                               f"{found} refused this server's token; give this server the "
                               "cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)") from None
        if address != "auto":  # for auto, ray.init sends the token of the local cluster itself
            raise SlotrunError(f"cannot connect to the Ray cluster at {address!r}: its head at "
                               f"{found} asks for a token; " + TOKEN_HINT) from None
        return
    if why:
        raise SlotrunError(f"cannot connect to the Ray cluster at {address!r}: what answers at "
                           f"{found} is not a Ray cluster ({why}); valid: {VALID}") from None


def _ask_cluster_id(grpc, channel, timeout):
    """Ask the GCS for its cluster id; return why it is no Ray GCS, TOKEN_REFUSED, or None."""
    try:
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        request = gcs_service_pb2.GetClusterIdRequest()
    except (ImportError, AttributeError):
        return None  # a Ray whose generated stubs moved: gRPC answered, ray.init tries
    try:
        stub.GetClusterId(request, timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return "a gRPC server without Ray's GCS service"
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            return TOKEN_REFUSED
        # Busy, or another Ray version: ray.init decides, and says why.
    return None


def _handshake(grpc, channel, timeout):
    """Return why gRPC's handshake with the channel's server failed, or None once it is ready."""
    states = queue.Queue()
    channel.subscribe(states.put, try_to_connect=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                state = states.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return f"no gRPC answer within {timeout:g} s"
            if state == grpc.ChannelConnectivity.READY:
                return None
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                # The knock just connected, so this is the server refusing HTTP/2, not the
                # network: a web server answers "505 HTTP Version Not Supported" and hangs up.
                return "it does not speak gRPC"
    finally:
        channel.unsubscribe(states.put)


def _gcs_channel(address):
    """Return a gRPC channel to ``address`` as Ray opens one (its options, its token)."""
    try:
        from ray._private.gcs_utils import create_gcs_channel
        return create_gcs_channel(address)
    except (ImportError, AttributeError):
        import grpc  # Ray's private helper moved: a plain channel does for a head without TLS
        return grpc.insecure_channel(address)


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
