"""Task log files: where they live and reading their tails without loading them whole."""

import os

LOG_NAME = "output.log"


def tail_bytes(path, max_lines=200, max_bytes=1 << 20):
    """Return (text, size) of the last ``max_lines`` lines of a log (at most max_bytes read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
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
