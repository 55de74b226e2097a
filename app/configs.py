"""Finding experiment configs by regular expression, as multi-run.py -c always did."""

import os
import re
import time

from .errors import NotFound, SlotrunError

BASE_SUFFIXES = ("-base.yaml", "_base.yaml")

# Patterns that the standard library's re reads exactly as the regex package (VERSION0) does,
# on ASCII names: literals, . ^ $ |, groups, the repeats * + ? (lazy and possessive too), sets
# of plain characters, \d \D \w \W \b and escaped punctuation. No {...} (counts, or regex's
# fuzzy matching), no (?...) extensions or (*...) verbs, no \B (re never matches it in an
# empty string). re compiles these: regex takes ~9 ms to import, which multi-run.py's start-up
# need not pay for exp-(2|3)-1-\d*; the equivalence is tested (tests/test_configs.py).
_PLAIN = re.compile(r"""(?:
    [^\\\[\]{}()]             # a literal character, or one of . ^ $ * + ? |
  | \((?![?*]) | \)           # a group (not an extension (?...) nor a verb (*...))
  | \\[dDwWb]                # the classes both read alike in ASCII names
  | \\[!-/:-@[-`{-~]         # an escaped ASCII punctuation character
  | \[\^?[0-9A-Za-z_./-]+\]   # a set of plain characters and ranges
)*\Z""", re.VERBOSE)


def is_base(name):
    """Return True for shared base configs (never tasks)."""
    return name.endswith(BASE_SUFFIXES)


def all_configs(workspace, configs_dir="configs", under=None):
    """Return every task config under configs/ (or only under its subfolder ``under``, a
    workspace-relative path), as workspace-relative paths, sorted."""
    root = os.path.join(workspace, under or configs_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = os.path.relpath(dirpath, workspace).replace(os.sep, "/")  # once per folder
        for name in filenames:
            if name.endswith(".yaml") and not is_base(name) and not name.startswith("."):
                found.append(f"{folder}/{name}")
    found.sort()
    return found


def compile_pattern(pattern, max_length=None, ascii_names=False):
    """Return the compiled config pattern, or raise an error naming the problem.

    ``ascii_names``: the pattern only meets ASCII names, so a plain one may be compiled by re
    (see _PLAIN); any other, or one re refuses, is compiled by the regex package.
    """
    if not isinstance(pattern, str):
        raise SlotrunError("pattern must be a string (a Python regular expression)")
    if max_length is not None and len(pattern) > max_length:
        raise SlotrunError(f"pattern is {len(pattern)} characters long; at most {max_length} allowed")
    if "\x00" in pattern:
        raise SlotrunError("pattern must not contain a NUL character")
    if ascii_names and _PLAIN.match(pattern):
        try:
            return re.compile(pattern)
        except re.error:
            pass  # the regex package decides: its reading, or its error message
    import regex  # imported here, not at the top: see _PLAIN

    try:
        return regex.compile(pattern, regex.VERSION0)
    except regex.error as e:
        raise SlotrunError(f"invalid regular expression {pattern!r}: {e}") from None


def match_configs(workspace, pattern, configs_dir="configs", max_length=None, timeout=None):
    """Return the configs whose path (configs/.../name.yaml) the pattern is found in.

    ``timeout`` (seconds) is checked between config names: matching stops with an error
    once it is over. One name's search is not cut short here (the regex package's own
    timeout costs ten times the search and is checked too rarely to bound a catastrophic
    pattern): a caller that must bound it runs this in a process it kills at the deadline,
    as the server does (``app/pattern_helper.py``).
    """
    compiled = compile_pattern(pattern, max_length, ascii_names=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    names = all_configs(workspace, configs_dir, _fixed_folder(workspace, pattern, configs_dir))
    if not all(name.isascii() for name in names):
        compiled = compile_pattern(pattern, max_length)  # the regex package reads them all
    out = []
    for path in names:
        if deadline is not None and time.monotonic() > deadline:
            raise _too_slow(pattern, timeout)
        if compiled.search(path):
            out.append(path)
    return out


_SPECIAL = set(".^$*+?{}[]\\|()")


def _fixed_folder(workspace, pattern, configs_dir):
    """Return the subfolder of configs/ every match must lie in, when the pattern says so
    (``^configs/exp-1/...``: only that folder is listed), else None (all of configs/)."""
    if not pattern.startswith("^") or "(?" in pattern or _alternates(pattern):
        return None
    literal = []
    for ch in pattern[1:]:
        if ch in _SPECIAL:
            if ch in "*+?{" and literal:
                literal.pop()  # quantified: that character may be absent or repeated
            break
        literal.append(ch)
    folder = "".join(literal).rpartition("/")[0]
    if not folder.startswith(configs_dir.rstrip("/") + "/"):
        return None
    root = os.path.join(workspace, folder)
    # Listed as the whole walk would: not through a link, not into a hidden folder.
    if any(part.startswith(".") for part in folder.split("/")) or \
            os.path.realpath(root) != os.path.join(os.path.realpath(workspace), folder):
        return None
    return folder


def _alternates(pattern):
    """Return True when the pattern has a top-level ``|`` (its ``^`` binds one branch)."""
    depth, i, in_class = 0, 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            i += 2 if pattern[i + 1:i + 2] == "]" else 3 if pattern[i + 1:i + 3] == "^]" else 1
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth <= 0:
            return True
        i += 1
    return False


def _too_slow(pattern, timeout):
    return SlotrunError(
        f"pattern {pattern!r} took longer than {timeout:g} s to match the config names; "
        "simplify it (avoid nested repetition such as (a|aa)+)")


def results_dir_for(config, configs_dir="configs", results_dir="results"):
    """Return the results folder of a config: results/<path under configs/ without .yaml>."""
    rel = config
    prefix = configs_dir.rstrip("/") + "/"
    if rel.startswith(prefix):
        rel = rel[len(prefix):]
    if rel.endswith(".yaml"):
        rel = rel[: -len(".yaml")]
    return f"{results_dir}/{rel}"


def completed_marker(workspace, config, settings):
    """Return the marker file showing that a config's results are complete, or None.

    slotrun's own ``done_marker`` counts, and so does any of ``complete_markers`` (by
    default the original tool's ``trained.txt``). The answer is a path relative to the
    workspace, e.g. ``results/exp-1/exp-1-1/trained.txt``.
    """
    folder = results_dir_for(config, settings["configs_dir"], settings["results_dir"])
    for name in (settings["done_marker"], *settings.get("complete_markers", ())):
        if name and os.path.exists(os.path.join(workspace, folder, name)):
            return f"{folder}/{name}"
    return None


def unmark_done(workspace, config, settings):
    """Remove slotrun's done marker of a config whose results are about to be overwritten.

    An overwrite run rewrites the results in place: a crash or a failure halfway must not
    leave them marked complete. The ``complete_markers`` (the original tool's ``trained.txt``)
    belong to run.py, which removes its own when told ``--overwrite True``; they may also name
    real result files, so slotrun never deletes them.
    """
    folder = results_dir_for(config, settings["configs_dir"], settings["results_dir"])
    try:
        os.unlink(os.path.join(workspace, folder, settings["done_marker"]))
    except FileNotFoundError:
        pass


def read_config(workspace, config):
    """Return a config file's text, or raise NotFound."""
    path = os.path.join(workspace, config)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        raise NotFound(f"config {config} not found in the workspace") from None
