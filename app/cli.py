"""slotrun (or python -m app): one entry point for every sub-command (run, serve, users,
token, sweep); each lives in its own module."""

import argparse
import sys

from . import accounts_cli, serve_cli, sweep_cli
from .console import EXIT_USAGE, print_error
from .errors import SlotrunError
from .multi_run_cli import multi_run


def main(argv=None, prog="python -m app"):
    """Run ``slotrun`` (or ``python -m app``); return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=prog, description="slotrun: run simulation tasks on "
                                "per-GPU slots, with a live web dashboard.")
    from .migrations import LATEST
    from .version import __version__

    p.add_argument("--version", action="version",
                   version=f"slotrun {__version__} (database schema {LATEST})")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.add_parser("run", help="run configs headless, here (the options of multi-run.py)",
                   add_help=False)
    sub.add_parser("multi-run", help="the same as run", add_help=False)
    serve_cli.add_commands(sub)
    accounts_cli.add_commands(sub)
    sweep_cli.add_commands(sub)
    if argv and argv[0] in ("run", "multi-run"):
        return multi_run(argv[1:], prog=f"{prog} {argv[0]}")
    args = p.parse_args(argv)
    if not args.cmd:
        p.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except SlotrunError as e:
        print_error(e.message)
        return EXIT_USAGE


def console():
    """Run the installed ``slotrun`` command; return its exit status."""
    return main(prog="slotrun")
