"""What travels between the head and the nodes without a shared filesystem: the workspace
bundle (code and configs, cached on each node by content) and the results brought back.

The head packs its workspace (not results/, .slotrun/, .git/, nor what ``ray_sync_exclude``
names) into one Ray object, walked again when the last walk is over a second old or a file
the command names changed; a node unpacks it once per content. When a task ends, its
results folder comes back packed, in chunks, and is unpacked into the head's results/.
"""

import fnmatch
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import threading
import time
from typing import NamedTuple

from ..errors import SlotrunError
from ..logs import LOG_NAME
from ..settings import parse_size

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024  # bytes per transfer call (log rests, results archives)
BUNDLE_TTL = 1.0  # seconds a walk of the workspace is trusted for (the config is always checked)
EXCLUDED_TOP = (".slotrun", ".git", ".hg", ".svn")
EXCLUDED_ANY = ("__pycache__", "*.pyc", ".pytest_cache")


class Bundle(NamedTuple):
    """The workspace as last shipped to the nodes."""

    fingerprint: str  # of every file's path, size, time and mode
    digest: str  # the copy's name on the nodes
    ref: object  # the Ray object holding the packed files
    files: dict  # path -> (size, mtime_ns), to tell a changed config
    walked_at: float  # time.monotonic() of the walk it was made from


class BundleRef(NamedTuple):
    """What an agent is given to find (or unpack) a bundle: its digest and its object,
    in a list so that Ray passes the reference instead of resolving it."""

    digest: str
    refs: list


def extract(fileobj, dest):
    """Unpack a tar stream into ``dest``, skipping members that would land outside it."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            def lenient(member, path):
                try:
                    return tarfile.data_filter(member, path)
                except tarfile.FilterError:
                    log.warning("skipped %s while unpacking into %s", member.name, dest)
                    return None
            tar.extractall(dest, filter=lenient)
            return
        root = os.path.realpath(dest)
        safe = []
        for m in tar.getmembers():
            target = os.path.realpath(os.path.join(dest, m.name))
            if (m.isdev() or m.issym() or m.islnk()
                    or not (target == root or target.startswith(root + os.sep))):
                continue
            safe.append(m)
        tar.extractall(dest, members=safe)


def run_files(run_dir, limit=1 << 20):
    """Return {name: bytes} of the small files the engine put in a run folder (config snapshots)."""
    out = {}
    try:
        names = os.listdir(run_dir)
    except OSError:
        return out
    for n in names:
        if n in (LOG_NAME, "pid", "exit"):
            continue
        path = os.path.join(run_dir, n)
        try:
            if os.path.isfile(path) and os.path.getsize(path) <= limit:
                with open(path, "rb") as f:
                    out[n] = f.read()
        except OSError:
            continue
    return out


class WorkspaceBundler:
    """Packs the head's workspace for the nodes, and keeps the last pack while it holds."""

    def __init__(self, workspace, settings, put):
        self.workspace = workspace
        self.results_dir = settings.get("results_dir", "results").strip("/")
        self.sync_exclude = [x.strip() for x in str(settings.get("ray_sync_exclude", "") or "")
                             .split(",") if x.strip()]
        self.sync_max = parse_size(settings.get("ray_sync_max_size", "256MiB"))
        self._put = put  # ray.put: the packed bytes -> an object reference
        self._bundle = None  # Bundle, once the workspace was walked
        self._lock = threading.Lock()

    def forget(self):
        """Drop the last pack: the next start packs (and puts) the workspace again."""
        with self._lock:
            self._bundle = None

    def bundle(self, argv=()):
        """Return the Bundle of the workspace as the nodes should see it.

        The workspace is walked again when the last walk is more than a second old, or when
        a file the command names (its config) is not in the bundle as it is now.
        """
        with self._lock:
            b = self._bundle
            if b is not None and time.monotonic() - b.walked_at < BUNDLE_TTL and \
                    all(self._unchanged(b.files, a) for a in argv):
                return b
        files, total, h = {}, 0, hashlib.sha1()
        for rel, st in self._workspace_files():
            files[rel] = (st.st_size, st.st_mtime_ns)
            total += st.st_size
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
        fingerprint = h.hexdigest()
        with self._lock:
            if self._bundle and self._bundle.fingerprint == fingerprint:
                self._bundle = self._bundle._replace(walked_at=time.monotonic())
                return self._bundle
            if total > self.sync_max:
                raise SlotrunError(
                    f"the workspace holds {total / 2**20:.0f} MiB to copy to the nodes, more than "
                    f"ray_sync_max_size ({self.sync_max / 2**20:.0f} MiB); leave big folders out "
                    "with ray_sync_exclude, or share the workspace (ray_shared_fs: true)")
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
                for rel in files:
                    try:
                        tar.add(os.path.join(self.workspace, rel), arcname=rel, recursive=False)
                    except OSError:
                        continue  # vanished meanwhile
            self._bundle = Bundle(fingerprint, fingerprint[:16], self._put(buf.getvalue()),
                                  files, time.monotonic())
            return self._bundle

    def _unchanged(self, files, arg):
        """Return False when ``arg`` names a workspace file that differs from the bundle's."""
        if not isinstance(arg, str) or not arg or "\0" in arg:
            return True
        path = arg if os.path.isabs(arg) else os.path.join(self.workspace, arg)
        rel = os.path.relpath(path, self.workspace)
        if rel.startswith("..") or rel.startswith(EXCLUDED_TOP):
            return True
        try:
            st = os.stat(path)
        except OSError:
            return rel not in files
        if not os.path.isfile(path):
            return True
        return files.get(rel) == (st.st_size, st.st_mtime_ns)

    def _workspace_files(self):
        ws = self.workspace
        top = set(EXCLUDED_TOP)
        for root, dirs, names in os.walk(ws):
            rel_root = os.path.relpath(root, ws)
            rel_root = "" if rel_root == "." else rel_root + "/"
            keep = []
            for d in dirs:
                rel = rel_root + d
                if (not rel_root and d in top) or rel == self.results_dir or self._excluded(rel, d):
                    continue
                keep.append(d)
            dirs[:] = keep
            for n in names:
                rel = rel_root + n
                if self._excluded(rel, n):
                    continue
                try:
                    st = os.lstat(os.path.join(root, n))
                except OSError:
                    continue
                yield rel, st

    def _excluded(self, rel, name):
        for pat in (*EXCLUDED_ANY, *self.sync_exclude):
            if fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(rel, pat) or rel == pat.rstrip("/"):
                return True
        return False


def fetch_results(ray, agent, key, size, run_dir, dest, timeout):
    """Bring a finished task's packed results (``size`` bytes, on its node) into ``dest``,
    in chunks, through a temporary file in its run folder."""
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryFile(dir=run_dir) as f:
        offset = 0
        while offset < size:
            data = ray.get(agent.read_chunk.remote(key, "results.tar.gz", offset),
                           timeout=timeout)
            if not data:
                raise OSError(f"the results archive ended at {offset} of {size} bytes")
            f.write(data)
            offset += len(data)
        f.seek(0)
        extract(f, dest)
