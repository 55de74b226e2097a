"""The workspace's engine lock: one engine per workspace, and who holds it when another tries."""

import fcntl
import os

from .errors import WorkspaceLocked
from .paths import state_dir


def take_workspace_lock(workspace):
    """Take the workspace's engine lock; return its descriptor, or raise WorkspaceLocked."""
    folder = state_dir(workspace)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, "engine.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
        raise WorkspaceLocked(
            f"workspace {workspace} is already in use by another slotrun engine "
            f"({holder or 'unknown process'}); stop it first or use another --workspace") from None
    return fd


def check_workspace_free(workspace):
    """Raise WorkspaceLocked when another engine holds the workspace (the lock is not kept)."""
    os.close(take_workspace_lock(workspace))
