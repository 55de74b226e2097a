"""Executors start, watch and stop task processes; nothing else."""

from dataclasses import dataclass, field

from .processes import become_subreaper


@dataclass
class LaunchSpec:
    """Everything an executor needs to start one attempt."""

    task_id: int
    attempt_id: int
    argv: list
    cwd: str
    run_dir: str
    env: dict  # variables to add to the engine's environment
    device: str
    node: str = ""


@dataclass
class Handle:
    """A started (or re-adopted) attempt's process."""

    task_id: int
    attempt_id: int
    pid: int
    pid_start: int | None = None
    boot_id: str = ""
    run_dir: str = ""
    node: str = ""
    extra: dict = field(default_factory=dict)


def make_executor(name, settings, on_exit):
    """Return the executor named in the settings ("local" or "ray")."""
    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor(on_exit, float(settings.get("kill_grace", 5.0)))
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(on_exit, settings)
    from ..errors import SlotrunError

    raise SlotrunError(f"unknown executor {name!r}; valid: local, ray")


def claim_orphans(settings):
    """Make this process (the server, the headless CLI) the reaper of its tasks' orphans when
    tasks run here and the subreaper setting is on; return True if it now is."""
    if settings.get("executor", "local") != "local" or not settings.get("subreaper", True):
        return False
    return become_subreaper()
