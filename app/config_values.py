"""A config's values: its YAML with its base resolved, flattened to dotted paths.

A config may name a base (``base: exp-1-base.yaml``, relative to the config's own folder)
whose values it overrides, as the sample ``run.py`` does: each top-level mapping of the
config is merged key by key over the base's, anything else replaces the base's value. Bases
may name bases. Every base must stay inside the workspace's configs folder (symlinks
resolved), so a config cannot make slotrun read files elsewhere.

A parameter is named by its dotted YAML path, ``model_params.radius``; a list element by its
index, ``layers.0.size``.
"""

import copy
import os
from dataclasses import dataclass

import yaml

from .errors import SlotrunError

MAX_BASE_DEPTH = 16  # bases naming bases: deeper than this is a cycle or a mistake
MAX_CONFIG_BYTES = 1024 * 1024  # a config or base larger than this is refused


@dataclass(frozen=True)
class LoadedConfig:
    """A config file's own mapping, its merged values, and the base files it reads."""

    own: dict
    values: dict
    bases: tuple


def split_path(path):
    """Return the keys of a dotted YAML path, or raise an error naming the rule."""
    if not isinstance(path, str) or not path or len(path) > 300:
        raise SlotrunError(f"a parameter is a dotted YAML path such as model_params.radius, "
                           f"not {path!r}")
    keys = path.split(".")
    if any(k == "" or k.strip() != k for k in keys) or any(ord(c) < 32 for c in path):
        raise SlotrunError(f"parameter path {path!r} is not a dotted YAML path such as "
                           "model_params.radius (no empty parts, spaces around dots, or control "
                           "characters)")
    if keys[0] == "base":
        raise SlotrunError("base names the config's base file; it is not a parameter to vary")
    return keys


def parse_mapping(text, what):
    """Return the mapping a config's YAML text holds (an empty file is {}), or raise."""
    try:
        data = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as e:
        raise SlotrunError(f"{what} is not valid YAML: {_first_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SlotrunError(f"{what} must hold a mapping (model_params: ...), not "
                           f"{type(data).__name__}")
    return data


def _first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else "parse error"


def inside(root, path):
    """Return True when the real ``path`` is ``root`` or below it (``root`` already real)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_text(path, what, max_bytes=MAX_CONFIG_BYTES):
    """Return a small regular file's text, or raise an error naming ``what``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        raise SlotrunError(f"{what} does not exist or cannot be read") from None
    with os.fdopen(fd, "rb") as f:
        if not os.path.isfile(path) or os.fstat(f.fileno()).st_size > max_bytes:
            raise SlotrunError(f"{what} is not a regular file of at most {max_bytes} bytes")
        return f.read(max_bytes + 1).decode("utf-8", "replace")


def load(workspace, config, configs_dir="configs", text=None):
    """Return a config's own mapping and its values with every base merged in.

    ``config`` is workspace-relative (``configs/exp-1/exp-1-1.yaml``); ``text``, when given,
    is used instead of the file's current content (a task's YAML as submitted). Bases are
    read from disk, relative to the config's folder.
    """
    root = os.path.realpath(os.path.join(workspace, configs_dir))
    path = os.path.join(workspace, config)
    if text is None:
        real = os.path.realpath(path)
        if not inside(root, real):
            raise SlotrunError(f"{config} is not inside {configs_dir}/")
        text = read_text(real, config)
    own = parse_mapping(text, config)
    bases = []
    values = _merged(own, os.path.dirname(os.path.realpath(path)), root, configs_dir, config,
                     bases, seen=set())
    return LoadedConfig(own=own, values=values, bases=tuple(bases))


def _merged(data, folder, root, configs_dir, what, bases, seen):
    base = data.get("base")
    data = {k: v for k, v in data.items() if k != "base"}
    if base in (None, ""):
        return copy.deepcopy(data)
    if not isinstance(base, str) or os.path.isabs(base) or "\x00" in base:
        raise SlotrunError(f"{what}: base must be a file name relative to the config's folder, "
                           f"not {base!r}")
    real = os.path.realpath(os.path.join(folder, base))
    if not inside(root, real):
        raise SlotrunError(f"{what}: its base {base!r} is outside {configs_dir}/")
    if real in seen or len(seen) >= MAX_BASE_DEPTH:
        raise SlotrunError(f"{what}: its bases name each other in a cycle (or nest deeper than "
                           f"{MAX_BASE_DEPTH})")
    seen.add(real)
    rel = os.path.relpath(real, os.path.dirname(root)).replace(os.sep, "/")
    bases.append(rel)
    parent = parse_mapping(read_text(real, f"{what}: its base {base}"), rel)
    merged = _merged(parent, os.path.dirname(real), root, configs_dir, rel, bases, seen)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flatten(values, prefix=""):
    """Return {dotted path: value} of every leaf (lists are leaves; empty mappings are left out)."""
    out = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        elif not isinstance(value, dict):
            out[path] = value
    return out


_MISSING = object()


def get_path(values, keys):
    """Return the value at a path (a list of keys), or raise KeyError naming where it stops."""
    node = values
    for i, key in enumerate(keys):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, dict) and _int_key(key) in node:
            node = node[_int_key(key)]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise KeyError(".".join(keys[:i + 1]))
    return node


def _int_key(key):
    return int(key) if key.isdigit() else _MISSING


def set_path(own, keys, value, resolved):
    """Set ``keys`` to ``value`` in a config's own mapping so that, merged, it holds ``value``.

    The merge rule replaces nested mappings below the first level whole, so an intermediate
    mapping the own mapping lacks is copied from the resolved values (not created empty).
    """
    node = own
    for depth, key in enumerate(keys[:-1]):
        real_key = key if not isinstance(node, dict) or key in node or \
            _int_key(key) not in node else _int_key(key)
        if isinstance(node, list):
            node = node[int(key)]
            continue
        if real_key not in node:
            inherited = get_path(resolved, keys[:depth + 1])
            # First-level mappings merge key by key: an empty one inherits the rest.
            node[real_key] = {} if depth == 0 and isinstance(inherited, dict) \
                else copy.deepcopy(inherited)
        node = node[real_key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif last not in node and _int_key(last) in node:
        node[_int_key(last)] = value
    else:
        node[last] = value
