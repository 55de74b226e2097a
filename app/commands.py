"""Command templates: the placeholders a task's command may hold, checking a template, and
filling it in for one task."""

import os
import shlex

from .errors import SlotrunError

PLACEHOLDERS = ("python", "config", "name", "results", "overwrite", "device_args", "gpu", "device",
                "task_id", "batch_id")
# Placeholders that stand for a list of arguments (possibly none), so each must be a whole
# argument of the template: {device_args} is "-d 0" on a GPU and nothing on the CPU.
ARGUMENT_LISTS = ("device_args",)


def check_template(template):
    """Split a command template into arguments, or raise an error naming what is valid."""
    if not isinstance(template, str) or not template.strip():
        raise SlotrunError("command must be a non-empty string such as '{python} run.py -c {config}'")
    try:
        parts = shlex.split(template)
    except ValueError as e:
        raise SlotrunError(f"command {template!r} cannot be split into arguments: {e}") from None
    dummy = {k: "x" for k in PLACEHOLDERS}
    for p in parts:
        unescaped = p.replace("{{", "").replace("}}", "")
        for name in ARGUMENT_LISTS:
            if "{" + name + "}" in unescaped and p != "{" + name + "}":
                raise SlotrunError(
                    f"command {template!r}: {{{name}}} must be an argument of its own, not part "
                    f"of {p!r}; it becomes several arguments (-d 0) or none (on the CPU)")
        try:
            p.format_map(dummy)
        except KeyError as e:
            raise SlotrunError(
                f"command {template!r} has an unknown placeholder {{{e.args[0]}}}; valid: "
                + ", ".join("{" + k + "}" for k in PLACEHOLDERS)) from None
        except (ValueError, IndexError) as e:
            raise SlotrunError(f"command {template!r} is not a valid template ({e}); "
                               "write {{ and }} for literal braces") from None
    return parts


def render_command(template, values):
    """Return the argument list of a template filled with ``values``.

    A value that is a list (``device_args``) replaces its whole argument with its items.
    """
    argv = []
    for p in shlex.split(template):
        whole = values.get(p[1:-1]) if p.startswith("{") and p.endswith("}") else None
        if isinstance(whole, (list, tuple)):
            argv.extend(whole)
        else:
            argv.append(p.format_map(values))
    return argv


def command_values(config, overwrite, gpu=None, **extra):
    """Return a task's placeholder values (``gpu``: its NVML index, None on the CPU)."""
    values = {"config": config, "name": os.path.basename(config)[:-5],
              "overwrite": str(bool(overwrite)),  # True / False, as the original tool passed it
              # The task sees only its own GPU (CUDA_VISIBLE_DEVICES), so CUDA numbers it 0.
              "device_args": [] if gpu is None else ["-d", "0"],
              "gpu": "" if gpu is None else str(gpu)}
    values.update(extra)
    return values
