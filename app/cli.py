"""python -m app: one entry point for every sub-command (multi-run, serve, users, token,
sweep); each lives in its own module."""

import argparse
import sys

from . import accounts_cli, serve_cli, sweep_cli
from .console import EXIT_USAGE, print_error
from .errors import SlotrunError
from .multi_run_cli import multi_run


def main(argv=None):
    """Run ``python -m app``; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m app", description="slotrun: run simulation "
                                "tasks on per-GPU slots, with a live web dashboard.")
    from .migrations import LATEST
    from .version import __version__

    p.add_argument("--version", action="version",
                   version=f"slotrun {__version__} (database schema {LATEST})")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.add_parser("multi-run", help="run configs headless (the same options as multi-run.py)",
                   add_help=False)
    serve_cli.add_commands(sub)
    accounts_cli.add_commands(sub)
    sweep_cli.add_commands(sub)
    if argv and argv[0] == "multi-run":
        return multi_run(argv[1:])
    args = p.parse_args(argv)
    if not args.cmd:
        p.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except SlotrunError as e:
        print_error(e.message)
        return EXIT_USAGE
