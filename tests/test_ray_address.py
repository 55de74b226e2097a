"""``serve --executor ray`` on an address where something answers that is no Ray cluster.

The start-up check knocks over TCP, then asks the head for its cluster id over gRPC: a web
server, a listener that says nothing, a gRPC server without Ray's GCS service, and a head that
wants a token are each one ``error: ...`` line from the real command, within seconds (before
this check, ``ray.init`` printed Ray's retry warnings for minutes). No Ray cluster is started:
the real head that must pass is in tests/test_ray.py (marked ``ray``).
"""

import http.server
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("ray")
grpc = pytest.importorskip("grpc")  # Ray's own dependency

from tests.helpers import ROOT, free_port, task_env  # noqa: E402

pytestmark = pytest.mark.slow

VALID = ("valid: the address of a Ray head's GCS, HOST:PORT as `ray start --head` prints it "
         "(port 6379 by default), or auto")
# Ray's own retries ran for minutes; a few seconds of start-up and the 3 s gRPC wait fit well.
WITHIN = 30


@pytest.fixture
def env(tmp_path):
    e = task_env(SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"),
                 SLOTRUN_AUTH="false")
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USE_TLS"):
        e.pop(name, None)
    return e


def serve(env, workspace, port):
    """Run ``serve --executor ray`` on 127.0.0.1:``port``; return the finished process."""
    return subprocess.run([sys.executable, "-m", "app", "serve", "--workspace", workspace,
                           "--port", str(free_port()), "--executor", "ray",
                           "--ray-address", f"127.0.0.1:{port}"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=WITHIN)


def one_error(r, port):
    """Return the one error line of ``r``, after checking it is all there is to see."""
    assert r.returncode == 2, r.stderr
    assert not r.stdout and len(r.stderr.strip().splitlines()) == 1, r.stderr
    line = r.stderr.strip()
    # Ray maps a loopback address to this machine's own address: both name the port.
    assert line.startswith(f"error: cannot connect to the Ray cluster at '127.0.0.1:{port}': "), line
    return line


@pytest.fixture
def http_server():
    """A plain web server (Python's own) on all addresses of a free port."""
    server = http.server.ThreadingHTTPServer(("", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_listener():
    """A TCP listener that accepts every connection and never says a word."""
    listener = socket.create_server(("", 0))
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return  # closed

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in held:
        conn.close()


def grpc_server(handlers):
    """Start a gRPC server with ``handlers`` on all addresses of a free port; return it, port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=handlers)
    port = server.add_insecure_port("[::]:0")
    server.start()
    return server, port


class RefuseEveryCall(grpc.GenericRpcHandler):
    """Answers every method as a Ray head with token authentication answers a call without one."""

    def service(self, handler_call_details):
        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "InvalidAuthToken: Authentication token is missing or incorrect")
        return grpc.unary_unary_rpc_method_handler(refuse)


def test_a_web_server_is_no_ray_cluster(env, workspace, http_server):
    line = one_error(serve(env, workspace, http_server), http_server)
    assert "is not a Ray cluster (it does not speak gRPC); " + VALID in line, line


def test_a_silent_listener_is_no_ray_cluster(env, workspace, silent_listener):
    line = one_error(serve(env, workspace, silent_listener), silent_listener)
    assert "is not a Ray cluster (no gRPC answer within 3 s); " + VALID in line, line


def test_a_grpc_server_without_rays_gcs_is_no_ray_cluster(env, workspace):
    server, port = grpc_server([])
    try:
        line = one_error(serve(env, workspace, port), port)
    finally:
        server.stop(None)
    assert "is not a Ray cluster (a gRPC server without Ray's GCS service); " + VALID in line


def test_a_head_that_wants_a_token_says_which_settings_give_it(env, workspace):
    server, port = grpc_server([RefuseEveryCall()])
    try:
        line = one_error(serve(env, workspace, port), port)
        assert f":{port} asks for a token; a cluster with token authentication (Ray's " in line
        assert "needs RAY_AUTH_MODE=token in this server's environment" in line, line
        # With token authentication on, the token went along and was refused: a wrong token.
        line = one_error(serve({**env, "RAY_AUTH_MODE": "token",
                                "RAY_AUTH_TOKEN": "0123456789abcdef" * 2}, workspace, port), port)
        assert f":{port} refused this server's token; give this server the cluster's token" in line
    finally:
        server.stop(None)
