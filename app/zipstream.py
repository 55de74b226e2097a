"""Streaming a zip of results folders while it is written, without a temporary file.

``walk_regular_files`` lists the regular files under a folder (symlinks are skipped), and
``stream_zip`` yields the zip's bytes chunk by chunk as ``zipfile`` writes them. No web
framework here: the API wraps the generator in its response.
"""

import os
import stat
import time
import zipfile

ZIP_CHUNK = 64 * 1024


def walk_regular_files(root, prefix):
    """Yield (name in the zip, path) of the regular files under ``root``; symlinks are skipped."""
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        return
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, real_root).replace(os.sep, "/")
            yield f"{prefix}/{rel}", path


class _Sink:
    """A write-only stream that zipfile writes into and the response generator drains."""

    def __init__(self):
        self.chunks = []
        self.size = 0

    def write(self, data):
        """Keep ``data`` until the next ``take``."""
        self.chunks.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self):
        """Do nothing: the response generator drains the sink."""

    def take(self):
        """Return and forget everything written since the last call."""
        data = b"".join(self.chunks)
        self.chunks = []
        self.size = 0
        return data


def stream_zip(entries):
    """Yield the bytes of a zip of ``entries`` ((name, path) pairs) as it is written."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                         allowZip64=True) as zf:
        for arcname, path in entries:
            try:
                # O_NOFOLLOW: a file swapped for a symlink after the walk is still not followed.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = zipfile.ZipInfo(arcname, time.localtime(max(st.st_mtime, 315532800))[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (st.st_mode & 0o777 | stat.S_IFREG) << 16
                with zf.open(info, "w", force_zip64=st.st_size > 2**31) as out:
                    while True:
                        chunk = f.read(ZIP_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        if sink.size >= ZIP_CHUNK:
                            yield sink.take()
            if sink.size:
                yield sink.take()
    yield sink.take()
