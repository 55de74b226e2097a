"""Task log files: where they live and reading their tails without loading them whole."""

import os
import re
import signal

LOG_NAME = "output.log"

# A line that says something went wrong ("error: ...", "ValueError: ...", "FATAL ...").
_ERROR_LINE = re.compile(r"error|exception|fatal|traceback|abort|killed|out of memory|"
                         r"no such file|not found|permission denied", re.IGNORECASE)


def _read_end(path, max_bytes):
    """Return (bytes, offset, size): the last ``max_bytes`` of a file, where they start, and
    the file's size."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        f.seek(start)
        return f.read(size - start), start, size


def tail_bytes(path, max_lines=200, max_bytes=1 << 20):
    """Return (text, size) of the last ``max_lines`` lines of a log (at most max_bytes read)."""
    try:
        data, start, size = _read_end(path, max_bytes)
    except FileNotFoundError:
        return "", 0
    lines = data.splitlines(keepends=True)
    if start > 0 and lines:
        lines = lines[1:]  # the first line was cut by the byte window
    text = b"".join(lines[-max_lines:] if max_lines else lines).decode("utf-8", "replace")
    return text, size


def read_from(path, offset, max_bytes):
    """Return (bytes, new offset, truncated) read from ``offset`` (at most max_bytes).

    When more than max_bytes were written since ``offset``, only the newest max_bytes are
    returned (``truncated`` is True), so a flood cannot make a follower fall behind forever.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size < offset:
                offset = 0
            truncated = size - offset > max_bytes
            start = size - max_bytes if truncated else offset
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return b"", offset, False
    if truncated:
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            data = data[cut + 1:]
    return data, size, truncated


def first_error_line(path, max_bytes=65536, width=300):
    """Return the line of a log that says why its task failed, or None.

    Read from the log's end (at most ``max_bytes``): a Python traceback gives its exception
    line (``ValueError: ...``), otherwise the first line that mentions an error
    (``error: configs/x.yaml is not valid YAML: ...``). Cut to ``width`` characters.
    """
    try:
        data, start, _ = _read_end(path, max_bytes)
    except OSError:
        return None
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # cut by the byte window
    found = None
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            # The exception is the first unindented line after the frames.
            for later in lines[i + 1:]:
                if later.strip() and not later[0].isspace():
                    found = later
                    break
            if found:
                break
        elif _ERROR_LINE.search(line):
            found = line
            break
    if found is None:
        return None
    found = found.strip()
    return found if len(found) <= width else found[:width - 1] + "…"


LAST_LINE_BYTES = 4096  # bytes read from a log's end to find its last line
LAST_LINE_CHARS = 300  # longest last line returned


def last_line(path, max_bytes=LAST_LINE_BYTES, max_chars=LAST_LINE_CHARS):
    """Return the last non-empty line of a log (a carriage return also ends a line), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    for line in reversed(text.split("\n")):
        line = line.strip()
        if line:
            return line[:max_chars]
    return None


def signal_of_exit(path, code):
    """Return the signal that killed a task whose shell exited with ``code``, or None.

    A shell reports a command killed by signal N as exit status 128+N, the same as a
    command that exited with 128+N; but it also prints the signal's description as the last
    line of the output (dash: ``Killed``; bash: ``line 1: 4242 Killed  command``), which a
    command that exited by itself does not. That line is in the task's log.
    """
    if code is None or not 128 < code < 128 + 65:
        return None
    number = code - 128
    try:
        name = signal.strsignal(number)
    except ValueError:
        return None
    line = last_line(path)
    if not name or not line:
        return None
    if line == name or line.startswith(name + " (core dumped)") or re.search(
            r"\b\d+ +" + re.escape(name) + r"\b", line):
        return number
    return None
