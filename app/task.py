"""Task states, plain records and the pure "pick next" rule of the scheduler.

Nothing here does I/O: the scheduler feeds these functions what it knows and acts
on what they return, so they can be tested exhaustively.
"""

from dataclasses import dataclass, field

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
SKIPPED = "skipped"

STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED, SKIPPED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, INTERRUPTED, SKIPPED})
RETRYABLE_STATES = frozenset({FAILED, CANCELLED, INTERRUPTED})
ACTIVE_STATES = frozenset({QUEUED, RUNNING})

CPU = "cpu"
ANY_GPU = "gpu*"  # a task's device list meaning "any GPU", whichever GPUs exist when it starts
ANY_CPU = "cpu*"  # a CPU task's device list on a cluster: the CPU of any node


def device_kind(device_id):
    """Return "cpu" or "gpu" for a device id such as "cpu", "gpu3" or "node-a/gpu1"."""
    return CPU if device_id.rsplit("/", 1)[-1] == CPU else "gpu"


@dataclass(frozen=True)
class Pending:
    """A queued task as the pick rule sees it."""

    id: int
    owner: str
    devices: tuple  # device ids this task may run on, in preference order
    priority: int = 0
    seq: int = 0  # submission order; lower first
    memory: int = 0  # declared device memory need in bytes (0: not declared)
    family: str = ""  # experiment family (config folder), for learned memory needs


@dataclass
class DeviceState:
    """What the pick rule needs to know about one device."""

    id: int | str
    limit: int
    running: int = 0
    free_memory: int | None = None  # None: do not check memory on this device
    held: bool = False  # True while a just-started task is on probation here

    @property
    def free_slots(self):
        """Return how many more tasks may start here now."""
        return max(0, self.limit - self.running)


@dataclass
class Placement:
    """One decision of the pick rule: start this task on this device."""

    task_id: int
    device: str
    owner: str = ""
    reason: str = field(default="", compare=False)


def order_key(p):
    """Return the sort key of a task inside one owner's queue."""
    return (-p.priority, p.seq, p.id)


def pick_next(pending, devices, running_by_owner=None, memory_margin=0):
    """Choose which queued tasks start now, and where (see ``pick_from_queues``).

    "gpu*" in a task's device list stands for every GPU among ``devices``.
    """
    queues = {}
    for p in pending:
        queues.setdefault(p.owner, []).append(p)
    for q in queues.values():
        q.sort(key=order_key)
    return pick_from_queues(queues, devices, running_by_owner, memory_margin)


def pick_from_queues(queues, devices, running_by_owner=None, memory_margin=0, any_gpu=None,
                     learned=None, any_cpu=None, last_start=None):
    """Choose which queued tasks start now, and where.

    ``queues``: {owner: [Pending, ...] sorted by ``order_key``}, not mutated.
    ``devices``: {id: DeviceState}, not mutated. ``running_by_owner``: {owner: running}.
    Free slots go to owners round-robin, fewest running first (ties: the owner whose next
    task is highest priority, then oldest), and inside one owner by priority, then
    submission order. A task goes to the allowed device with the most free slots (ties: its
    own preference order). A device with a memory figure takes a task only if its need plus
    the margin fits, and at most one new task per call (probation: the next start there
    waits until the new task's memory has settled); a held device takes nothing.
    Tasks that fit nowhere keep their place. Returns Placements; no limit is ever exceeded.
    A task whose devices are ("gpu*",) may use every GPU (``any_gpu``, default: every device
    of ``devices`` but the CPU), one whose devices are ("cpu*",) every CPU device ("NODE/cpu"
    of a cluster; ``any_cpu``). A task that declares no memory need is taken to need what
    ``learned`` ({family: bytes}) predicts for its family. ``last_start`` ({owner: n}, larger
    is more recent) breaks ties between owners with as many running: the owner served least
    recently goes first, so that even a single slot alternates between owners.
    """
    learned = learned or {}
    if any_gpu is None:
        any_gpu = tuple(d for d in devices if device_kind(d) != CPU)
    if any_cpu is None:
        any_cpu = tuple(d for d in devices if device_kind(d) == CPU)
    free = {d.id: d.free_slots for d in devices.values()}
    total_free = sum(free.values())
    if not total_free or not queues:
        return []
    mem = {d.id: d.free_memory for d in devices.values()}
    held = {d.id for d in devices.values() if d.held}
    load = dict(running_by_owner or {})
    recent = dict(last_start or {})
    stamp = max(recent.values(), default=0)
    cursor = {o: 0 for o, q in queues.items() if q}
    taken = set()
    started_on = set()
    placements = []

    def fits(p, dev):
        if free.get(dev, 0) <= 0 or dev in held:
            return False
        m = mem.get(dev)
        if m is None:
            return True
        return dev not in started_on and need(p) + memory_margin <= m

    def need(p):
        return p.memory or learned.get(p.family, 0)

    while total_free and cursor:
        owner = min(cursor, key=lambda o: (load.get(o, 0), recent.get(o, float("-inf")),
                                           order_key(queues[o][cursor[o]]), o))
        q = queues[owner]
        chosen = None
        for idx in range(cursor[owner], len(q)):
            p = q[idx]
            if p.id in taken:
                continue
            allowed = any_gpu if p.devices == (ANY_GPU,) else \
                any_cpu if p.devices == (ANY_CPU,) else p.devices
            options = [d for d in allowed if fits(p, d)]
            if options:
                chosen = (p, max(options, key=lambda d: (free[d], -allowed.index(d))))
                break
        if chosen is None:
            del cursor[owner]  # nothing of this owner's fits anywhere now
            continue
        p, dev = chosen
        taken.add(p.id)
        while cursor[owner] < len(q) and q[cursor[owner]].id in taken:
            cursor[owner] += 1
        if cursor[owner] >= len(q):
            del cursor[owner]
        free[dev] -= 1
        total_free -= 1
        if mem.get(dev) is not None:
            mem[dev] -= need(p)
            started_on.add(dev)
        load[owner] = load.get(owner, 0) + 1
        stamp += 1
        recent[owner] = stamp
        placements.append(Placement(p.id, dev, owner))
    return placements
