"""Run one experiment config: python run.py -c configs/exp-1/exp-1-1.yaml [--overwrite True] [-d 0]

The flags are those of the original multi-run.py tool's run.py: ``-d`` names the CUDA device
the model uses (``cuda:D``; -1, the default, leaves the choice to CUDA), ``--overwrite``
(True/False) allows running a config whose results are already complete.

Results go to results/<the config's path under configs/, without .yaml>/ (or to
$SLOTRUN_RESULTS when slotrun starts the task). A marker file (.done) is written last, so
that multi-run.py skips configs whose results are complete, and run.py refuses to run them
again without --overwrite True (which removes the marker first).
"""

import argparse
import importlib
import json
import os
import socket
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DONE = ".done"
EXIT_REFUSED = 3


def explicit_bool(text):
    """Return the boolean of True/False (any case), yes/no or 1/0, as --overwrite takes it."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(
        text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False, not {text!r}")
    return value


def device_problem(device):
    """Return why CUDA device ``device`` is not usable in this process, or None."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device < 0 or visible is None:
        return None  # CUDA's default device, or no mask to check against (run by hand)
    count = len([v for v in visible.split(",") if v.strip()])
    if device < count:
        return None
    if not count:
        return (f"-d {device} asks for a GPU, but this task sees none "
                "(CUDA_VISIBLE_DEVICES is empty)")
    return (f"-d {device} is not a visible CUDA device: CUDA_VISIBLE_DEVICES={visible} makes "
            f"{count} visible, numbered 0 to {count - 1}")


def load_config(path):
    """Return the config's mapping, merged over its base (``base: name-base.yaml``) if any."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path} must hold a mapping (model_params: ...), not {type(data).__name__}")
    base = data.pop("base", None)
    if base:
        merged = load_config(os.path.join(os.path.dirname(path), base))
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        data = merged
    return data


def results_dir(config_path):
    """Return the results folder of a config (results/ mirrors configs/)."""
    if os.environ.get("SLOTRUN_RESULTS"):
        return os.environ["SLOTRUN_RESULTS"]
    rel = os.path.relpath(os.path.abspath(config_path), os.path.join(HERE, "configs"))
    if rel.startswith(".."):
        rel = os.path.basename(config_path)
    return os.path.join(HERE, "results", os.path.splitext(rel)[0])


def main(argv=None):
    """Run the model named in the config and write its results."""
    parser = argparse.ArgumentParser(description="Run one experiment config.")
    parser.add_argument("-c", "--config", "--config_file_name", dest="config", required=True,
                        help="path of the config YAML file")
    parser.add_argument("-d", "--device", type=int, default=-1,
                        help="CUDA device number under CUDA_VISIBLE_DEVICES (default -1: CUDA's "
                             "default device)")
    parser.add_argument("--overwrite", "-overwrite", type=explicit_bool, default=False,
                        metavar="True|False",
                        help="run even if the results are complete (default False: refuse)")
    args = parser.parse_args(argv)
    problem = device_problem(args.device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        config = load_config(args.config)
    except FileNotFoundError:
        print(f"error: config file {args.config} not found", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"error: {args.config} is not valid YAML: {e}", file=sys.stderr)
        return 2
    params = config.get("model_params")
    if not isinstance(params, dict) or "name" not in params:
        print(f"error: {args.config} needs model_params with a name (circle, rectangle or triangle)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, HERE)
    try:
        model = importlib.import_module(f"models.{params['name']}")
    except ImportError:
        found = sorted(n[:-3] for n in os.listdir(os.path.join(HERE, "models"))
                       if n.endswith(".py") and not n.startswith("_") and n != "common.py")
        print(f"error: no model named {params['name']!r} in models/; valid: {', '.join(found)}",
              file=sys.stderr)
        return 2
    out = results_dir(args.config)
    marker = os.path.join(out, DONE)
    if os.path.exists(marker):
        if not args.overwrite:
            print(f"error: the results of {args.config} are already complete "
                  f"({os.path.relpath(marker, HERE)}); run with --overwrite True to run it again",
                  file=sys.stderr)
            return EXIT_REFUSED
        print(f"{args.config} is already complete; overwriting it", flush=True)
        os.unlink(marker)  # an overwrite that fails must not leave the old results marked complete
    os.makedirs(out, exist_ok=True)
    print(f"config {args.config} -> {os.path.relpath(out, HERE)}", flush=True)
    result = model.run(params, out)
    finished = time.time()
    meta = {"config": args.config, "model": params["name"], "result": result, "started": started,
            "finished": finished, "host": socket.gethostname(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": args.device, "overwrite": args.overwrite}
    with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    with open(os.path.join(out, ".done"), "w", encoding="utf-8"):
        pass
    print(f"done in {finished - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
