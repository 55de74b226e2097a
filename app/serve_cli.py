"""``serve``: the dashboard and the queue, on gunicorn (or Werkzeug's development server)."""

import ipaddress
import logging
import os
import signal
import socket
import sys

from . import create_app
from . import settings as settings_mod
from .errors import SlotrunError
from .executors.ray_address import check_reachable
from .gunicorn_app import GunicornServer
from .paths import state_db
from .store import Store
from .workspace_lock import check_workspace_free

THREADS = 100  # each open browser holds one thread for its websocket


def add_commands(sub):
    """Add the serve sub-command to an argparse sub-parser set."""
    defaults = settings_mod.BY_NAME
    p = sub.add_parser(
        "serve", help="serve the dashboard and run the queue",
        description="Serve the slotrun dashboard (Flask + Socket.IO) and run the task queue of "
                    "a workspace, on gunicorn: one worker process (the engine lives in it) with "
                    "threads. SIGTERM or Ctrl-C stops the server; running tasks keep running and "
                    "the next server re-adopts them.")
    p.add_argument("--host", default=None,
                   help=f"address to bind (default {defaults['host'].default})")
    p.add_argument("--port", type=int, default=None,
                   help=f"port to listen on (default {defaults['port'].default})")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="workspace folder (default: the current folder or $SLOTRUN_WORKSPACE)")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="where tasks run: this machine (local, the default) or the machines of "
                        "a Ray cluster (ray; see docs/several-machines.md)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help=f"Ray cluster address for --executor ray "
                        f"(default {defaults['ray_address'].default})")
    p.add_argument("--threads", type=int, default=THREADS, metavar="N",
                   help=f"threads of the server's one worker: at least one per open browser "
                        f"(default {THREADS})")
    p.add_argument("--access-log", action="store_true",
                   help="print a line per HTTP request (secrets in addresses are blanked)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default="warning", help="how much the server logs (default warning)")
    p.add_argument("--dev", action="store_true",
                   help="use Werkzeug's development server instead of gunicorn")
    p.add_argument("--reload", action="store_true",
                   help="restart when the code changes (development; implies --dev)")
    p.set_defaults(func=serve)


def _is_loopback(host):
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host):
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def serve(args):
    """Serve the dashboard until stopped (SIGTERM, Ctrl-C); return the exit status."""
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.port is not None and not 0 < args.port < 65536:  # the flag's name, not the setting's
        raise SlotrunError(f"--port must be from 1 to 65535, not {args.port}")
    settings = settings_mod.load({"workspace": args.workspace, "host": args.host,
                                  "port": args.port, "executor": args.executor,
                                  "ray_address": args.ray_address})
    if settings["executor"] not in ("local", "ray"):
        raise SlotrunError(f"unknown executor {settings['executor']!r}; valid: local, ray")
    ws, host, port = settings["workspace"], settings["host"], int(settings["port"])
    if not 1 <= args.threads <= 10000:
        raise SlotrunError(f"--threads must be from 1 to 10000, not {args.threads}")
    if not settings["auth"] and not _is_loopback(host):
        raise SlotrunError(
            f"refusing to serve on {host} with auth turned off (auth: false or "
            "SLOTRUN_AUTH=false): anyone who can reach the port would act as an admin. Bind "
            "127.0.0.1 (the default), or turn auth on and add users (slotrun users add "
            "NAME --role admin)")
    if not os.path.isdir(os.path.join(ws, settings["configs_dir"])):
        print(f"warning: no {settings['configs_dir']}/ folder in the workspace {ws}; "
              "batches will find no config (pass --workspace DIR)", file=sys.stderr)
    # What would stop the server from starting is found here, before gunicorn forks its
    # worker, so that it is one "error: ..." line (a newer database, a workspace in use).
    Store(state_db(ws)).close()
    check_workspace_free(ws)
    if settings["executor"] == "ray":
        check_reachable(settings["ray_address"])
    config = {"workspace": ws, "host": host, "port": port, "ANNOUNCE_SETUP": False,
              "executor": settings["executor"], "ray_address": settings["ray_address"]}
    if args.dev or args.reload:
        return _serve_dev(args, config, settings)
    GunicornServer(config, settings, threads=args.threads, access_log=args.access_log,
                   log_level=args.log_level,
                   announce=lambda app: announce(app, settings, host, port)).run()
    return 0


def announce(app, settings, host, port):
    """Print the one start-up message: the address, and the set-up link while no user exists."""
    slotrun = app.extensions["slotrun"]
    inv = slotrun.runtime.inventory
    gpus = len(inv.gpus())
    kind = " simulated" if getattr(inv, "simulated", False) else ""
    lines = [f"slotrun dashboard on http://{_url_host(host)}:{port}/ (workspace "
             f"{settings['workspace']}, {gpus}{kind} GPU(s)); Ctrl-C stops the server, running "
             "tasks keep running"]
    if not settings["auth"]:
        lines.append(f"auth is off: everyone on this machine acts as the admin "
                     f"{slotrun.local_user['name']} (the server answers local connections only)")
    elif slotrun.setup_token is not None:
        shown = socket.gethostname() if _is_wildcard(host) else _url_host(host)
        lines.append("No account exists yet. Create the first admin with this one-time link "
                     "(or run: slotrun users add NAME --role admin):\n"
                     f"    {slotrun.setup_url(f'http://{shown}:{port}')}")
    elif not _is_loopback(host):
        lines.append(f"note: serving plain HTTP on {host}; beyond a trusted network put an "
                     "HTTPS reverse proxy in front")
    print("\n".join(lines), flush=True)


def _serve_dev(args, config, settings):
    """Run Werkzeug's development server (--dev, --reload) until interrupted."""
    reloader_child = os.environ.get("WERKZEUG_RUN_MAIN") == "true"
    # Under --reload the watching parent never serves: only the child starts the engine.
    app = create_app({**config, "START_ENGINE": (not args.reload) or reloader_child})
    slotrun = app.extensions["slotrun"]
    if not args.reload or reloader_child:
        announce(app, settings, config["host"], config["port"])
    if not args.reload:
        # SIGTERM (systemd, docker stop) stops as cleanly as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        slotrun.socketio.run(app, host=config["host"], port=config["port"],
                             use_reloader=args.reload, log_output=args.access_log,
                             allow_unsafe_werkzeug=True)
    except KeyboardInterrupt:
        pass
    finally:
        slotrun.close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _url_host(host):
    return f"[{host}]" if ":" in host else host
