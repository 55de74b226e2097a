"""The records every executor shares: what to start, what was started, an unreachable node."""

from dataclasses import dataclass, field

from ..errors import SlotrunError


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
