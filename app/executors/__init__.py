"""Executors start, watch and stop task processes; nothing else."""

from dataclasses import dataclass, field

from ..errors import SlotrunError
from .processes import become_subreaper


class ExecutorUnavailable(SlotrunError):
    """The executor, or the node a task was placed on, cannot be reached: not the task's fault.

    ``node`` names the node in slotrun's words ("gpu-b"; empty when the whole executor is
    out of reach). The engine puts the task back in the queue and takes the node's devices
    out of placement until the executor lists them again.
    """

    status = 503

    def __init__(self, message, node=""):
        super().__init__(message)
        self.node = node


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
    raise SlotrunError(f"unknown executor {name!r}; valid: local, ray")


def claim_orphans(settings):
    """Make this process (the server, the headless CLI) the reaper of its tasks' orphans when
    tasks run here and the subreaper setting is on; return True if it now is."""
    if settings.get("executor", "local") != "local" or not settings.get("subreaper", True):
        return False
    return become_subreaper()
