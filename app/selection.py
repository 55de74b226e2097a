"""Which tasks a filter selects, and what a bulk action (cancel, retry) does to them.

Plain data and rules, no I/O: the store turns a ``TaskFilter`` into SQL, the engine applies a
``BulkPlan`` on its thread, and the API answers a dry run with the same plan, so the numbers a
confirmation shows are the numbers the action uses.
"""

from dataclasses import asdict, dataclass, field

from .errors import SlotrunError
from .task import ACTIVE_STATES, QUEUED, RETRYABLE_STATES, RUNNING, STATES

MAX_SEARCH = 200  # longest text searched for in config paths
MAX_OWNER = 64  # the longest user name
BULK_ACTIONS = ("cancel", "retry")


@dataclass(frozen=True)
class TaskFilter:
    """A selection of tasks: every given field must hold (None: any)."""

    batch: int | None = None
    state: str | None = None
    owner: str | None = None
    search: str | None = None  # a substring of the config path, case-insensitive

    def __post_init__(self):
        if self.state is not None and self.state not in STATES:
            raise SlotrunError(f"state must be one of {', '.join(STATES)}; not {self.state!r}")
        if self.owner is not None and (not isinstance(self.owner, str) or not self.owner
                                       or len(self.owner) > MAX_OWNER):
            raise SlotrunError(f"owner must be a user name of 1 to {MAX_OWNER} characters")
        if self.search is not None and (not isinstance(self.search, str)
                                        or len(self.search) > MAX_SEARCH or "\x00" in self.search):
            raise SlotrunError(f"q (the text searched in config paths) must be at most "
                               f"{MAX_SEARCH} characters")

    def is_empty(self):
        """Return True when the filter selects every task."""
        return all(v in (None, "") for v in asdict(self).values())


@dataclass
class BulkPlan:
    """What a bulk action does to the tasks a filter selects.

    ``ids``: the tasks it acts on. ``not_yours``: tasks it would act on but that belong to
    someone else (a member acts on their own tasks only). ``other_state``: matched tasks in a
    state the action does not apply to. For cancel, ``queued`` / ``running`` split ``ids``.
    """

    action: str
    matched: int = 0
    ids: list = field(default_factory=list)
    queued: int = 0
    running: int = 0
    not_yours: int = 0
    other_state: int = 0

    def summary(self):
        """Return the plan's figures as the API answers them (no ids)."""
        out = {"action": self.action, "matched": self.matched, "affected": len(self.ids),
               "not_yours": self.not_yours, "other_state": self.other_state}
        if self.action == "cancel":
            out.update(queued=self.queued, running=self.running)
        return out


def applies_to(action):
    """Return the states a bulk action applies to."""
    if action == "cancel":
        return ACTIVE_STATES
    if action == "retry":
        return RETRYABLE_STATES
    raise SlotrunError(f"unknown bulk action {action!r}; valid: {', '.join(BULK_ACTIONS)}")


def plan_bulk(action, rows, only_owner=None):
    """Return the BulkPlan of ``action`` over ``rows`` ((id, owner, state) of matched tasks).

    ``only_owner``: act only on this user's tasks (a member); None acts on everyone's (an admin).
    """
    states = applies_to(action)
    plan = BulkPlan(action)
    for task_id, owner, state in rows:
        plan.matched += 1
        if state not in states:
            plan.other_state += 1
        elif only_owner is not None and owner != only_owner:
            plan.not_yours += 1
        else:
            plan.ids.append(task_id)
            if state == QUEUED:
                plan.queued += 1
            elif state == RUNNING:
                plan.running += 1
    return plan
