"""Where slotrun keeps its own state inside a workspace (.slotrun/ and the files in it).

Plain path rules, stdlib only: the store, the engine, the web layer and the command lines
all find the state database and the run folders here.
"""

import os

STATE_DIR = ".slotrun"
STATE_DB = "state.db"


def state_dir(workspace):
    """Return the engine's own folder inside a workspace."""
    return os.path.join(workspace, STATE_DIR)


def state_db(workspace):
    """Return the path of a workspace's state database."""
    return os.path.join(state_dir(workspace), STATE_DB)
