"""Config snapshots: a config and every base it names, as they were when it was submitted.

A config may name a base (``base: exp-1-base.yaml``), which may name another; run.py merges
them, resolving each ``base:`` relative to the folder of the file that names it. A batch
keeps the text of all of them, so that a queued task runs what was submitted even when the
config or a base is edited or deleted meanwhile: the files are then written into the
attempt's run folder, mirroring their places in the workspace, so every relative ``base:``
resolves as it did.
"""

import os
import re

# A top-level "base: value" line with a plain value: read without parsing the whole file.
_BASE_LINE = re.compile(r"^base:[ \t]*([^\s#'\"{\[&*!|>%@`][^#\n]*?)[ \t]*(?:#.*)?$", re.MULTILINE)
MAX_DEPTH = 20  # bases of bases: deeper chains (or cycles) are cut here


def base_of(text):
    """Return the ``base:`` a config's text names (as run.py reads it), or None."""
    if not text or "base" not in text:
        return None
    lines = _BASE_LINE.findall(text)
    if len(lines) == 1 and not text.lstrip().startswith(("{", "%", "---")) \
            and text.count("\nbase") + text.startswith("base") == 1:
        return lines[0]
    import yaml  # imported here: ~10 ms that the common form above does without

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # the rare form: let YAML decide
    except yaml.YAMLError:
        return None  # the task itself fails with the YAML error, clearly
    value = data.get("base") if isinstance(data, dict) else None
    return str(value) if value else None


def collect(workspace, config, text, cache=None):
    """Return {path: text} of the bases a config names, recursively.

    ``text``: the config's own text. Paths are relative to the workspace (``..`` for a base
    outside it), as run.py resolves them; a missing base is left out (the task fails on it as
    it would have). ``cache`` ({path: text or None}) shares reads between the configs of one
    batch.
    """
    cache = {} if cache is None else cache
    out = {}
    here, current = config, text
    for _ in range(MAX_DEPTH):
        base = base_of(current)
        if not base or os.path.isabs(base):
            break  # an absolute base is read where it is, as run.py would
        path = os.path.normpath(os.path.join(os.path.dirname(here), base))
        if path in out or path == config:
            break  # a cycle: run.py fails on it by itself
        if path not in cache:
            try:
                with open(os.path.join(workspace, path), encoding="utf-8",
                          errors="replace") as f:
                    cache[path] = f.read()
            except OSError:
                cache[path] = None
        if cache[path] is None:
            break
        out[path] = cache[path]
        here, current = path, cache[path]
    return out


def current_text(workspace, path):
    """Return a file's text now, or None when it cannot be read."""
    try:
        with open(os.path.join(workspace, path), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def unchanged(workspace, files):
    """Return True when every file ({path: text}) still holds that text."""
    return all(current_text(workspace, path) == text for path, text in files.items())


def write(folder, files, workspace, results_dir):
    """Write files ({workspace path: text}) under ``folder`` at the same relative places.

    Returns the place of each written file. A path that would leave ``folder`` (a base
    further outside the workspace than the copy is deep) is not written: run.py then reads
    that base where it is. The workspace's results folder (``results_dir``) is linked at its
    own place beside the copies: a run.py that derives its results folder from the -c path
    (configs/ -> results/, as the original tool's does) writes where the results belong.
    """
    root = os.path.join(folder, "config")
    _link_results(root, workspace, results_dir)
    written = {}
    for path, text in files.items():
        target = os.path.normpath(os.path.join(root, path))
        if os.path.commonpath([target, os.path.abspath(folder)]) != os.path.abspath(folder):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
        written[path] = target
    return written


def _link_results(root, workspace, results_dir):
    """Link ``root``/``results_dir`` to the workspace's results folder (made when missing)."""
    link = os.path.normpath(os.path.join(root, results_dir))
    if os.path.isabs(results_dir) or os.path.commonpath([link, root]) != root or link == root:
        return  # results outside the workspace: a path derived from -c cannot reach them
    target = os.path.abspath(os.path.join(workspace, results_dir))
    os.makedirs(target, exist_ok=True)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(target, link, target_is_directory=True)
