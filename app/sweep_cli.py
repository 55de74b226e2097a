"""python -m app sweep: write config variants from a base config, and optionally run them.

    python -m app sweep configs/exp-1/exp-1-1.yaml --folder radius \\
        -p model_params.radius=1,2,3 --range model_params.sim_time=0.2:0.4:0.2 --start -gpu false

Locally it writes the files itself (``--start`` then runs them as ``multi-run.py`` would);
with ``--server URL`` (token in $SLOTRUN_TOKEN) the server writes and queues them.
"""

import argparse
import os
import re

import yaml

from . import settings as settings_mod
from . import sweeps as sweeps_mod
from .errors import SlotrunError
from .multi_run_cli import multi_run
from .remote import ApiClient


class _Param(argparse.Action):
    """Collect -p / --range / --linspace in the order given (the order names the files)."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.const, value))
        setattr(namespace, self.dest, items)


def add_commands(sub):
    """Add the sweep sub-command."""
    p = sub.add_parser(
        "sweep", help="write config variants of a base config (and run them)",
        description="Write one config per combination of parameter values under "
                    "configs/FOLDER/, named FOLDER-i-j....yaml (1-based value indices in "
                    "parameter order). Parameters are dotted YAML paths of the base config.",
        epilog="examples:\n"
               "  python -m app sweep configs/exp-1/exp-1-1.yaml --folder radius "
               "-p model_params.radius=1,2,3\n"
               "  python -m app sweep configs/exp-2/exp-2-1-1.yaml --folder rect --zip "
               "--linspace model_params.length=1:2:3 -p model_params.width=[1,2,3] --start",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="the config to vary, e.g. configs/exp-1/exp-1-1.yaml")
    p.add_argument("--folder", required=True,
                   help="folder under configs/ to write to (also the files' name prefix)")
    p.add_argument("-p", "--param", dest="params", action=_Param, const="list",
                   metavar="PATH=V1,V2,...", help="values of a parameter: a comma-separated "
                   "list (each read as YAML: 1, 0.5, true, text) or a YAML list [a, b]")
    p.add_argument("--range", dest="params", action=_Param, const="step",
                   metavar="PATH=START:STOP:STEP", help="numeric values from START to STOP "
                   "(included) by STEP")
    p.add_argument("--linspace", dest="params", action=_Param, const="count",
                   metavar="PATH=START:STOP:COUNT", help="COUNT evenly spaced numbers from "
                   "START to STOP (both included)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--grid", dest="mode", action="store_const", const="grid",
                      help="every combination of the values (the default)")
    mode.add_argument("--zip", dest="mode", action="store_const", const="zip",
                      help="the values in lock-step (every parameter has as many)")
    p.add_argument("--replace", action="store_true",
                   help="replace files of the sweep that exist already (else nothing is written)")
    p.add_argument("--dry-run", action="store_true", help="show the names and values only")
    p.add_argument("--start", action="store_true", help="run the new configs as one batch")
    p.add_argument("-gpu", "--gpu", type=_bool, default=True, metavar="true|false",
                   help="with --start: run on GPUs (default) or on the CPU")
    p.add_argument("-d", "--devices", dest="slots", nargs="+", type=int, metavar="N",
                   help="with --start, locally: slots per GPU (or the CPU slots), as multi-run.py")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="workspace folder (default: the current folder or $SLOTRUN_WORKSPACE)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="ask a running slotrun server to write (and queue) the sweep; token in "
                        "$SLOTRUN_TOKEN")
    p.set_defaults(func=run_sweep, mode="grid")


def _bool(text):
    try:
        return settings_mod.parse_bool(text)
    except SlotrunError:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}") from None


def _scalar(text, what):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise SlotrunError(f"{what}: {text!r} is not a value") from None


def _number(text, what):
    value = _scalar(text, what)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SlotrunError(f"{what}: {text!r} is not a number")
    return value


def parse_params(items):
    """Return {path: values spec} from the (kind, "PATH=VALUES") pairs of the command line."""
    out = {}
    for kind, item in items or ():
        path, sep, text = item.partition("=")
        path = path.strip()
        if not sep or not path or not text.strip():
            raise SlotrunError(f"{item!r}: write PATH=VALUES, e.g. model_params.radius=1,2,3")
        if path in out:
            raise SlotrunError(f"parameter {path} is given twice")
        if kind == "list":
            text = text.strip()
            if text.startswith("["):
                values = _scalar(text, path)
                if not isinstance(values, list):
                    raise SlotrunError(f"{path}: {text!r} is not a list")
            else:
                values = [_scalar(v.strip(), path) for v in text.split(",")]
            out[path] = values
            continue
        parts = text.split(":")
        if len(parts) != 3:
            form = "START:STOP:STEP" if kind == "step" else "START:STOP:COUNT"
            raise SlotrunError(f"{path}: write {form}, not {text!r}")
        start, stop = _number(parts[0], path), _number(parts[1], path)
        third = _number(parts[2], path)
        out[path] = {"start": start, "stop": stop, kind: third}
    if not out:
        raise SlotrunError("give at least one parameter: -p PATH=V1,V2,..., --range "
                           "PATH=START:STOP:STEP or --linspace PATH=START:STOP:COUNT")
    return out


def _print_rows(rows, params):
    for row in rows:
        values = ", ".join(f"{p}={_show(row['values'][p])}" for p in params)
        print(f"{row['config']}  {values}")


def _show(value):
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix(
        "\n...").removesuffix(" ...")


def run_sweep(args):
    """Run the sweep sub-command; return the exit status."""
    params = parse_params(args.params)
    if args.server:
        return _remote(args, params)
    settings = settings_mod.load({"workspace": args.workspace})
    ws, configs_dir = settings["workspace"], settings["configs_dir"]
    plan = sweeps_mod.plan(ws, args.base, args.folder, params, mode=args.mode,
                           configs_dir=configs_dir,
                           max_configs=int(settings["max_sweep_configs"]))
    preview = sweeps_mod.preview(plan)
    _print_rows(preview["rows"], list(params))
    if args.dry_run:
        print(f"{preview['count']} config(s); nothing written (--dry-run)")
        return 0
    written = sweeps_mod.write(ws, plan, configs_dir, replace=args.replace)
    print(f"Wrote {len(written)} config(s) to {plan.folder}/")
    if not args.start:
        return 0
    pattern = "^(" + "|".join(re.escape(c) for c in written) + ")$"
    argv = ["-c", pattern, "-check", "false", "--workspace", ws, "-gpu",
            "true" if args.gpu else "false", "-w", "true" if args.replace else "false"]
    if args.slots:
        argv += ["-d"] + [str(n) for n in args.slots]
    return multi_run(argv)


def _remote(args, params):
    token = os.environ.get("SLOTRUN_TOKEN")
    if not token:
        raise SlotrunError("set SLOTRUN_TOKEN to an API token of the server (create one there "
                           "with: python -m app token create NAME)")
    client = ApiClient(args.server, token)
    body = {"base": args.base, "folder": args.folder, "mode": args.mode, "params": params,
            "replace": args.replace}
    preview = client.call("POST", "/api/v1/sweeps/preview", json=body)
    _print_rows(preview["rows"], list(params))
    if args.dry_run:
        print(f"{preview['count']} config(s); nothing written (--dry-run)")
        return 0
    if args.slots:
        raise SlotrunError("-d sets local slot limits; with --server the server's limits apply")
    body["start"] = args.start
    if args.start:
        body["batch"] = {"use_gpu": args.gpu}
    answer = client.call("POST", "/api/v1/sweeps", json=body)
    print(f"Wrote {len(answer['configs'])} config(s) to {preview['folder']}/ on the server")
    if "batch" in answer:
        b = answer["batch"]
        print(f"Batch {b['id']} queued ({b['total']} task(s)): "
              f"{args.server.rstrip('/')}/batches/{b['id']}/results")
    return 0
