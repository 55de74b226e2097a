"""A stand-in for a repository built around the original multi-run.py tool (tests only).

It keeps that tool's run.py contract, as its users' repositories do, and is as strict as a
PyTorch program on a GPU server would be:

    python run.py -c CONFIG [--overwrite True|False] [-d DEVICE]

- ``-c``/``--config_file_name`` (required), ``-d``/``--device`` (int, default -1),
  ``--overwrite``/``-overwrite`` (an explicit True/False, default False).
- Results go to the config's path with ``configs`` replaced by ``results`` and ``.yaml`` cut;
  ``trained.txt`` is written there last.
- A config whose ``trained.txt`` exists is refused (AlreadyTrainedError, a traceback, exit 1)
  unless ``--overwrite True``, which removes the marker first.
- The model goes on ``cuda:DEVICE`` when CUDA sees a GPU (CUDA_VISIBLE_DEVICES non-empty; all of
  the machine's GPUs when it is unset); as CUDA would, ``cuda:-1`` is an invalid device string
  and an index past the visible GPUs an invalid ordinal. With no GPU visible, the CPU.
"""

import argparse
import json
import os
import sys
import time

import yaml


class AlreadyTrainedError(Exception):
    """The config's results are complete and --overwrite True was not given."""


def explicit_bool(text):
    """Return True/False from True, False (any case, or a prefix of them), 1 or 0."""
    low = text.lower()
    if text == "1" or (low and "true".startswith(low)):
        return True
    if text == "0" or (low and "false".startswith(low)):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, not {text!r}")


def visible_gpus():
    """Return how many GPUs CUDA would see in this process."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return int(os.environ.get("SLOTRUN_FAKE_GPUS") or 0)
    return len([x for x in mask.split(",") if x.strip()])


def model_device(index):
    """Return the device the model is put on, failing as CUDA does for a bad index."""
    count = visible_gpus()
    if count == 0:
        return "cpu"
    if index < 0:
        raise RuntimeError(f"Invalid device string: 'cuda:{index}'")
    if index >= count:
        raise RuntimeError(f"CUDA error: invalid device ordinal (cuda:{index}; {count} visible)")
    return f"cuda:{index}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config_file_name", required=True)
    parser.add_argument("-d", "--device", type=int, default=-1)
    parser.add_argument("--overwrite", "-overwrite", type=explicit_bool, default=False)
    args = parser.parse_args()
    with open(args.config_file_name, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    print(f"Start the process with {args.config_file_name}", flush=True)
    save_dir = args.config_file_name.replace("configs", "results").replace(".yaml", "")
    os.makedirs(save_dir, exist_ok=True)
    marker = os.path.join(save_dir, "trained.txt")
    if os.path.exists(marker):
        if not args.overwrite:
            raise AlreadyTrainedError(args.config_file_name)
        print(f"{args.config_file_name} is already trained, but overwriting it.", flush=True)
        os.remove(marker)
    started = time.time()
    device = model_device(args.device)
    time.sleep(float(os.environ.get("STANDIN_SECONDS", "0.2")))
    with open(os.path.join(save_dir, "run.json"), "w", encoding="utf-8") as f:
        json.dump({"config": args.config_file_name, "params": config["model_params"],
                   "device": device, "overwrite": args.overwrite,
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "started": started, "finished": time.time()}, f)
    with open(marker, "w", encoding="utf-8"):
        pass


if __name__ == "__main__":
    sys.exit(main())
