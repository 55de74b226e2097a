"""Sweeps: config variants made from a base config by varying parameters.

A sweep names a base config, a folder under configs/, and for each parameter (a dotted YAML
path such as ``model_params.radius``) its values: a list, or a numeric range
``{"start": 1, "stop": 3, "step": 0.5}`` / ``{"start": 0.1, "stop": 1, "count": 10}``
(both ends included). ``grid`` makes every combination, ``zip`` takes the values in lock-step.
Each variant is written to ``configs/<folder>/<name>-<i>-<j>….yaml`` (``<name>`` is the
folder's last part; ``i, j, …`` are 1-based value indices in parameter order).

What a variant file holds:

- from a task config: that config's own YAML with the swept values set (its ``base:``, if
  any, re-pointed from the new folder);
- from a shared base (``*-base.yaml``): ``base:`` naming it, plus the swept values, as the
  sample configs do.

Either way, merged with its bases it holds exactly the base config's values with the swept
ones replaced. Files are written atomically and never replace an existing file unless
``replace`` is asked for; folder and base paths are checked to stay inside configs/.
"""

import copy
import itertools
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass

import yaml

from . import config_values
from .configs import is_base
from .errors import Conflict, SlotrunError

MODES = ("grid", "zip")
MAX_PARAMS = 20
MAX_SWEEP_BYTES = 64 * 1024 * 1024  # most bytes one sweep's files may take together
FOLDER_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RANGE_KEYS = {"start", "stop", "step", "count"}


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file (read once, at import)


@dataclass(frozen=True)
class Variant:
    """One config of a sweep: its path, value indices (1-based) and values by parameter."""

    config: str
    indices: tuple
    values: dict


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will write: every variant, and which of their files exist already."""

    base: str
    folder: str
    mode: str
    params: tuple  # ((path, [values ...]), ...) in the order given
    variants: tuple
    existing: tuple

    @property
    def configs(self):
        """Return the variants' config paths, in order."""
        return [v.config for v in self.variants]

    def batch_pattern(self):
        """Return a regular expression matching this sweep's file names (a batch's label)."""
        name = self.folder.rsplit("/", 1)[-1]
        return "^" + re.escape(f"{self.folder}/{name}") + r"(-[0-9]+)" \
            + "{%d}" % len(self.params) + r"\.yaml$"


# -- values -----------------------------------------------------------------------------------

def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SlotrunError(f"{what} must be a number, not {_show(value)}")
    return value


def _show(value):
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _tidy(x):
    """Return ``x`` without float noise (0.30000000000000004 -> 0.3)."""
    return float(f"{x:.12g}")


def range_length(path, spec):
    """Return how many values a range spec gives (checked, without making them)."""
    unknown = set(spec) - RANGE_KEYS
    if unknown:
        raise SlotrunError(f"{path}: unknown range key {sorted(unknown)[0]!r}; a range is "
                           '{"start": A, "stop": B, "step": S} or {"start": A, "stop": B, '
                           '"count": N}')
    if "start" not in spec or "stop" not in spec or ("step" in spec) == ("count" in spec):
        raise SlotrunError(f"{path}: a range needs start, stop and either step or count, e.g. "
                           '{"start": 1, "stop": 3, "step": 0.5}')
    start = _number(spec["start"], f"{path}: start")
    stop = _number(spec["stop"], f"{path}: stop")
    if "count" in spec:
        count = spec["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SlotrunError(f"{path}: count must be a whole number from 1 up, not "
                               f"{_show(count)}")
        if count == 1 and start != stop:
            raise SlotrunError(f"{path}: a count of 1 needs start equal to stop")
        return count
    step = _number(spec["step"], f"{path}: step")
    if step == 0 or (stop - start) * step < 0:
        raise SlotrunError(f"{path}: step {step} never gets from {start} to {stop}")
    return int(math.floor((stop - start) / step + 1e-9)) + 1


def range_values(path, spec):
    """Return the values of a range spec (both ends included when a step lands on them)."""
    n = range_length(path, spec)
    start, stop = spec["start"], spec["stop"]
    if "count" in spec:
        if n == 1:
            return [start]
        step = (stop - start) / (n - 1)
        whole = all(isinstance(v, int) for v in (start, stop)) and (stop - start) % (n - 1) == 0
        return [int(start + i * (stop - start) // (n - 1)) if whole else _tidy(start + i * step)
                for i in range(n)]
    step = spec["step"]
    if all(isinstance(v, int) for v in (start, step)):
        return [start + i * step for i in range(n)]
    return [_tidy(start + i * step) for i in range(n)]


def _values_length(path, spec):
    if isinstance(spec, list):
        if not spec:
            raise SlotrunError(f"{path}: the list of values is empty; give at least one value")
        return len(spec)
    if isinstance(spec, dict):
        return range_length(path, spec)
    raise SlotrunError(f"{path}: values must be a list such as [1, 2, 3] or a range such as "
                       f'{{"start": 1, "stop": 3, "step": 1}}, not {_show(spec)}')


def _expand(path, spec):
    values = copy.deepcopy(spec) if isinstance(spec, list) else range_values(path, spec)
    seen = set()
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key in seen:
            raise SlotrunError(f"{path}: the value {_show(v)} is listed twice")
        seen.add(key)
    return values


# -- paths ------------------------------------------------------------------------------------

def check_folder(folder, configs_dir="configs"):
    """Return the sweep's folder as a workspace-relative path (configs/<folder>), or raise.

    ``folder`` is relative to configs/ (``radius``, or ``sweeps/radius``); a leading
    ``configs/`` is accepted. Each part is letters, digits and ``. _ -``, not starting with a
    dot: no ``..``, no absolute path, no backslash.
    """
    if not isinstance(folder, str) or not folder.strip():
        raise SlotrunError("folder is required: the folder under configs/ to write the sweep to, "
                           "e.g. radius")
    if "\\" in folder or "\x00" in folder:
        raise SlotrunError(f"folder {_show(folder)}: separate its parts with / (no backslash "
                           "or NUL)")
    if folder.startswith("/") or os.path.isabs(folder):
        raise SlotrunError(f"folder {_show(folder)} must be a relative path under "
                           f"{configs_dir}/ such as radius, not an absolute path")
    parts = [p for p in folder.strip("/").split("/")]
    prefix = configs_dir.strip("/").split("/")
    if parts[:len(prefix)] == prefix and len(parts) > len(prefix):
        parts = parts[len(prefix):]
    if any(p == ".." for p in parts):
        raise SlotrunError(f"folder {_show(folder)} must stay inside {configs_dir}/: '..' is not "
                           "allowed")
    bad = next((p for p in parts if not FOLDER_PART.match(p)), None)
    if bad is not None or len(parts) > 8:
        raise SlotrunError(f"folder {_show(folder)}: each part is 1-100 letters, digits, '.', "
                           "'_' or '-', not starting with '.' or '-' (at most 8 parts)")
    return "/".join([configs_dir.strip("/")] + parts)


def check_base(workspace, base, configs_dir="configs"):
    """Return the base config's workspace-relative path, or raise an error naming the rule."""
    if not isinstance(base, str) or not base:
        raise SlotrunError("base is required: the config to vary, e.g. "
                           f"{configs_dir}/exp-1/exp-1-1.yaml")
    if "\\" in base or "\x00" in base:
        raise SlotrunError(f"base {_show(base)}: separate its parts with / (no backslash or NUL)")
    if base.startswith("/"):
        raise SlotrunError(f"base {_show(base)} must be a path under {configs_dir}/ such as "
                           f"{configs_dir}/exp-1/exp-1-1.yaml, not an absolute path")
    parts = base.split("/")
    if ".." in parts or "." in parts or "" in parts:
        raise SlotrunError(f"base {_show(base)} must be a plain path under {configs_dir}/ "
                           "(no '..', '.' or empty parts)")
    prefix = configs_dir.strip("/") + "/"
    if not base.startswith(prefix) or not base.endswith(".yaml"):
        raise SlotrunError(f"base {_show(base)} must be a .yaml file under {prefix}, e.g. "
                           f"{prefix}exp-1/exp-1-1.yaml")
    root = os.path.realpath(os.path.join(workspace, configs_dir))
    real = os.path.realpath(os.path.join(workspace, base))
    if not config_values.inside(root, real):
        raise SlotrunError(f"base {_show(base)} leads outside {prefix} (a symlink)")
    if not os.path.isfile(real):
        raise SlotrunError(f"base {_show(base)} does not exist; pick a config under {prefix}")
    return base


# -- planning ---------------------------------------------------------------------------------

def plan(workspace, base, folder, params, mode="grid", configs_dir="configs", max_configs=1000):
    """Return the SweepPlan of a request, or raise an error naming the first problem."""
    if mode not in MODES:
        raise SlotrunError(f"mode must be grid (every combination) or zip (values in "
                           f"lock-step), not {_show(mode)}")
    base = check_base(workspace, base, configs_dir)
    target = check_folder(folder, configs_dir)
    if not isinstance(params, dict) or not params:
        raise SlotrunError('params must be an object of YAML path: values, e.g. '
                           '{"model_params.radius": [1, 2, 3]}')
    if len(params) > MAX_PARAMS:
        raise SlotrunError(f"params has {len(params)} parameters; at most {MAX_PARAMS} allowed")
    loaded = config_values.load(workspace, base, configs_dir)
    keys = {}
    for path in params:
        keys[path] = config_values.split_path(path)
        try:
            config_values.get_path(loaded.values, keys[path])
        except KeyError as e:
            known = ", ".join(list(config_values.flatten(loaded.values))[:12])
            raise SlotrunError(f"parameter {path!r} is not in {base} (with its base): "
                               f"{e.args[0]!r} does not exist; its parameters: "
                               f"{known or 'none'}") from None
    lengths = {path: _values_length(path, spec) for path, spec in params.items()}
    if mode == "zip" and len(set(lengths.values())) > 1:
        listed = ", ".join(f"{p} has {n}" for p, n in lengths.items())
        raise SlotrunError(f"zip takes the values in lock-step, so every parameter needs as many "
                           f"values: {listed}")
    total = math.prod(lengths.values()) if mode == "grid" else next(iter(lengths.values()))
    if total > max_configs:
        raise SlotrunError(f"this sweep makes {total:,} configs; at most {max_configs:,} are "
                           "allowed (setting max_sweep_configs): use fewer values")
    expanded = [(path, _expand(path, spec)) for path, spec in params.items()]
    name = target.rsplit("/", 1)[-1]
    if mode == "grid":
        combos = itertools.product(*(range(len(v)) for _, v in expanded))
    else:
        combos = ((i,) * len(expanded) for i in range(total))
    variants = []
    for combo in combos:
        indices = tuple(i + 1 for i in combo)
        config = f"{target}/{name}-" + "-".join(str(i) for i in indices) + ".yaml"
        values = {path: vals[i] for (path, vals), i in zip(expanded, combo)}
        variants.append(Variant(config, indices, values))
    existing = tuple(v.config for v in variants
                     if os.path.lexists(os.path.join(workspace, v.config)))
    return SweepPlan(base, target, mode, tuple(expanded), tuple(variants), existing)


def render(workspace, sweep, configs_dir="configs"):
    """Return [(config, YAML text)] for every variant of a plan."""
    loaded = config_values.load(workspace, sweep.base, configs_dir)
    target_dir = os.path.join(workspace, sweep.folder)
    base_dir = os.path.dirname(os.path.join(workspace, sweep.base))
    if is_base(os.path.basename(sweep.base)):
        template = {"base": _relative(os.path.join(workspace, sweep.base), target_dir)}
    else:
        template = copy.deepcopy(loaded.own)
        if template.get("base"):
            template["base"] = _relative(os.path.join(base_dir, template["base"]), target_dir)
    out = []
    size = 0
    total = len(sweep.variants)
    for k, v in enumerate(sweep.variants, 1):
        own = copy.deepcopy(template)
        for (path, values), index in zip(sweep.params, v.indices):
            config_values.set_path(own, config_values.split_path(path),
                                   copy.deepcopy(v.values[path]), loaded.values)
        ordered = ({"base": own.pop("base")} if "base" in own else {})
        ordered.update(own)
        described = ", ".join(f"{path} = {_inline(v.values[path])}"
                              for path, _ in sweep.params)
        header = (f"# {k} of {total} of a {sweep.mode} sweep of {sweep.base}: {described}\n")
        body = yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False,
                              allow_unicode=True)
        out.append((v.config, header + body))
        size += len(out[-1][1])
        if size > MAX_SWEEP_BYTES:
            raise SlotrunError(f"the sweep's files would take more than "
                               f"{MAX_SWEEP_BYTES // 2**20} MiB; use fewer or smaller values")
    return out


def _inline(value):
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text
    return text.replace("\n", " ")[:80]


def _relative(path, folder):
    return os.path.relpath(os.path.normpath(path), os.path.normpath(folder)).replace(os.sep, "/")


# -- writing ----------------------------------------------------------------------------------

def _make_folder(workspace, folder, configs_dir):
    """Create configs/<folder> (no symlinked part anywhere below configs/); return its path."""
    root = os.path.realpath(os.path.join(workspace, configs_dir))
    if not os.path.isdir(root):
        raise SlotrunError(f"the workspace has no {configs_dir}/ folder")
    rest = folder[len(configs_dir.strip("/")) + 1:].split("/")
    path = root
    for part in rest:
        path = os.path.join(path, part)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError as e:
            raise SlotrunError(f"cannot create {folder}/: {e.strerror}") from None
        if os.path.islink(path) or not os.path.isdir(path):
            raise SlotrunError(f"{folder}/ cannot be written: "
                               f"{os.path.relpath(path, os.path.dirname(root))} is a symlink or "
                               "not a folder")
    if os.path.realpath(path) != path:
        raise SlotrunError(f"{folder}/ leads outside {configs_dir}/ (a symlink)")
    return path


def write(workspace, sweep, configs_dir="configs", replace=False):
    """Write every variant of a plan atomically; return their config paths.

    Without ``replace`` an existing file is never touched: the whole sweep is refused
    (Conflict) before anything is written, and a file that appears meanwhile is not
    overwritten either (each file is claimed with a hard link, which fails if it exists).
    """
    files = render(workspace, sweep, configs_dir)
    folder = _make_folder(workspace, sweep.folder, configs_dir)
    targets = [os.path.join(folder, os.path.basename(c)) for c, _ in files]
    present = [c for (c, _), t in zip(files, targets) if os.path.lexists(t)]
    if present and not replace:
        raise Conflict(_exists_message(present))
    for (c, _), t in zip(files, targets):
        if os.path.lexists(t) and (os.path.islink(t) or not os.path.isfile(t)):
            raise Conflict(f"{c} exists and is not a regular file; it is never replaced")
    temps = []
    claimed = []
    try:
        for (_, text), t in zip(files, targets):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(t) + ".",
                                       suffix=".tmp")
            temps.append(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), _FILE_MODE)
        for tmp, t, (c, _) in zip(temps, targets, files):
            if replace:
                os.replace(tmp, t)
            else:
                _claim(tmp, t, c)
                claimed.append(t)
    except FileExistsError as e:
        _undo(temps, claimed)
        raise Conflict(_exists_message([e.filename])) from None
    except OSError as e:
        _undo(temps, claimed)
        raise SlotrunError(f"writing the sweep to {sweep.folder}/ failed: {e.strerror}",
                           status=500) from None
    _fsync_dir(folder)
    return [c for c, _ in files]


def _claim(tmp, target, config):
    """Move ``tmp`` to ``target`` only if ``target`` does not exist (atomically)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(0, "exists", config) from None
    except OSError:
        # A filesystem without hard links: claim the name exclusively, then swap the content in.
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        except FileExistsError:
            raise FileExistsError(0, "exists", config) from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _undo(temps, claimed):
    for path in temps + claimed:
        try:
            os.unlink(path)
        except OSError:
            pass


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exists_message(present):
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    return (f"{len(present)} of the sweep's files exist already ({shown}); choose another folder, "
            "or ask to replace them (\"replace\": true, --replace)")


def preview(sweep):
    """Return the JSON form of a plan: names, values by parameter, and the files that exist."""
    return {
        "base": sweep.base, "folder": sweep.folder, "mode": sweep.mode,
        "params": [{"path": p, "values": v} for p, v in sweep.params],
        "configs": sweep.configs, "count": len(sweep.variants),
        "rows": [{"config": v.config, "indices": list(v.indices), "values": v.values}
                 for v in sweep.variants],
        "existing": list(sweep.existing),
    }


def base_candidates(workspace, configs_dir="configs", limit=5000):
    """Return (configs, truncated): every .yaml under configs/ a sweep may start from, bases too."""
    root = os.path.join(workspace, configs_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".yaml") and not name.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, name),
                                             workspace).replace(os.sep, "/"))
                if len(found) > limit:
                    return sorted(found[:limit]), True
    return sorted(found), False
