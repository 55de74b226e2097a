"""Executors start, watch and stop task processes; nothing else.

``local.py`` runs tasks on this machine; ``ray.py`` (with ``ray_agent.py``, ``ray_bundle.py``
and ``ray_cluster.py``) on the nodes of a Ray cluster. ``records.py`` holds what they share.
"""

from ..errors import SlotrunError
from .local import LocalExecutor
from .processes import become_subreaper
from .records import ExecutorUnavailable, Handle, LaunchSpec  # noqa: F401 - the package's names


def make_executor(name, settings, on_exit):
    """Return the executor named in the settings ("local" or "ray")."""
    if name == "local":
        return LocalExecutor(on_exit, float(settings.get("kill_grace", 5.0)))
    if name == "ray":
        # Imported only when asked for: the Ray executor's modules serve an optional
        # dependency (Ray), and a local run does not pay for loading them.
        from .ray import RayExecutor

        return RayExecutor(on_exit, settings)
    raise SlotrunError(f"unknown executor {name!r}; valid: local, ray")


def claim_orphans(settings):
    """Make this process (the server, the headless CLI) the reaper of its tasks' orphans when
    tasks run here and the subreaper setting is on; return True if it now is."""
    if settings.get("executor", "local") != "local" or not settings.get("subreaper", True):
        return False
    return become_subreaper()
