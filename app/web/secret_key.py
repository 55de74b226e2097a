"""The key that signs session cookies: the ``secret_key`` setting, or one made on first
start and kept in the workspace's .slotrun/secret_key (mode 0600), so sessions survive a
restart and two servers on one workspace agree."""

import os
import secrets

from ..paths import state_dir


def load_secret_key(workspace):
    """Return the workspace's secret key, creating it (atomically, 0600) on first use."""
    folder = state_dir(workspace)
    path = os.path.join(folder, "secret_key")
    try:
        with open(path, encoding="ascii") as f:
            key = f.read().strip()
        if key:
            return key
    except OSError:
        pass
    os.makedirs(folder, exist_ok=True)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or key
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key)
    return key
