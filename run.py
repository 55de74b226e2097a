"""Run one experiment config: python run.py -c configs/exp-1/exp-1-1.yaml

Results go to results/<the config's path under configs/, without .yaml>/ (or to
$SLOTRUN_RESULTS when slotrun starts the task). A marker file (.done) is written last, so
that multi-run.py skips configs whose results are complete.
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
    parser.add_argument("-c", "--config", required=True, help="path of the config YAML file")
    args = parser.parse_args(argv)
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
    os.makedirs(out, exist_ok=True)
    print(f"config {args.config} -> {os.path.relpath(out, HERE)}", flush=True)
    result = model.run(params, out)
    finished = time.time()
    meta = {"config": args.config, "model": params["name"], "result": result, "started": started,
            "finished": finished, "host": socket.gethostname(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    with open(os.path.join(out, ".done"), "w", encoding="utf-8"):
        pass
    print(f"done in {finished - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
