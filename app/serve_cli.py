"""Sub-commands of python -m app other than multi-run."""

import ipaddress
import logging
import os
import signal
import sys

from . import settings as settings_mod


def add_commands(sub):
    """Add the serve / users / token sub-commands to an argparse sub-parser set."""
    defaults = settings_mod.BY_NAME
    p = sub.add_parser(
        "serve", help="serve the dashboard and run the queue",
        description="Serve the slotrun dashboard (Flask + Socket.IO) and run the task queue of "
                    "a workspace. For production use gunicorn: "
                    "gunicorn -w 1 --threads 50 'app:create_app()'.")
    p.add_argument("--host", default=None,
                   help=f"address to bind (default {defaults['host'].default})")
    p.add_argument("--port", type=int, default=None,
                   help=f"port to listen on (default {defaults['port'].default})")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="workspace folder (default: the current folder or $SLOTRUN_WORKSPACE)")
    p.add_argument("--reload", action="store_true",
                   help="restart when the code changes (development)")
    p.set_defaults(func=serve)


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args):
    """Run the dashboard on the Werkzeug server until interrupted; return the exit status."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_mod.load({"workspace": args.workspace, "host": args.host,
                                  "port": args.port})
    ws, host, port = settings["workspace"], settings["host"], int(settings["port"])
    if not 0 < port < 65536:
        from .errors import SlotrunError

        raise SlotrunError(f"--port must be from 1 to 65535, not {port}")
    if not os.path.isdir(os.path.join(ws, settings["configs_dir"])):
        print(f"warning: no {settings['configs_dir']}/ folder in the workspace {ws}; "
              "batches will find no config (pass --workspace DIR)", file=sys.stderr)
    if not _is_loopback(host):
        print(f"warning: serving on {host} without accounts: anyone who can reach this port "
              "can start and cancel tasks", file=sys.stderr)
    reloader_child = os.environ.get("WERKZEUG_RUN_MAIN") == "true"
    from . import create_app

    # Under --reload the watching parent never serves: only the child starts the engine.
    app = create_app({"workspace": ws, "host": host, "port": port,
                      "START_ENGINE": (not args.reload) or reloader_child})
    slotrun = app.extensions["slotrun"]
    if not args.reload or reloader_child:
        inv = slotrun.runtime.inventory
        gpus = len(inv.gpus())
        kind = " simulated" if getattr(inv, "simulated", False) else ""
        print(f"slotrun dashboard on http://{_url_host(host)}:{port}/ (workspace {ws}, "
              f"{gpus}{kind} GPU(s)); Ctrl-C stops the server, running tasks keep running",
              flush=True)
    if not args.reload:
        # SIGTERM (systemd, docker stop) stops as cleanly as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        slotrun.socketio.run(app, host=host, port=port, use_reloader=args.reload,
                             log_output=True, allow_unsafe_werkzeug=True)
    except KeyboardInterrupt:
        pass
    finally:
        slotrun.close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _url_host(host):
    return f"[{host}]" if ":" in host else host
