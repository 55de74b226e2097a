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
    config: str = ""  # the config it runs: one run of a config at a time per workspace


@dataclass
class DeviceState:
    """What the pick rule needs to know about one device."""

    id: int | str
    limit: int
    running: int = 0
    free_memory: int | None = None  # bytes free now, foreign use counted; None: no memory check
    reserved: int = 0  # bytes the running tasks here will still take (need - current use)
    blocked: str = ""  # why this device takes no task now ("": it may take tasks)

    @property
    def free_slots(self):
        """Return how many more tasks may start here now."""
        return max(0, self.limit - self.running)

    @property
    def available(self):
        """Return the memory a new task may take here now (None: memory is not checked)."""
        return None if self.free_memory is None else self.free_memory - self.reserved


@dataclass(frozen=True)
class Hold:
    """Why a device with a free slot started none of the queued tasks allowed there."""

    device: str
    task_id: int  # the first task (in queue order) that could not start there
    need: int | None  # its expected memory need in bytes; None: unknown
    available: int | None  # memory a new task could take there (free - reserved)
    blocked: str = ""  # the device's own reason, when it takes no task at all


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


def gpu_index(device_id):
    """Return the GPU index of a device id ("gpu3", "node-a/gpu3"), or None for the CPU."""
    local = device_id.rsplit("/", 1)[-1]
    if local.startswith("gpu") and local[3:].isdigit():
        return int(local[3:])
    return None


def need_of(p, learned):
    """Return a task's expected memory need: declared, else learned for its family (a learned
    0 is known), else None (unknown)."""
    if p.memory:
        return p.memory
    return learned.get(p.family) if learned else None


def pick_from_queues(queues, devices, running_by_owner=None, memory_margin=0, any_gpu=None,
                     learned=None, any_cpu=None, last_start=None, stagger_unknown=False,
                     holds=None, busy=frozenset()):
    """Choose which queued tasks start now, and where.

    ``queues``: {owner: [Pending, ...] sorted by ``order_key``}, not mutated.
    ``devices``: {id: DeviceState}, not mutated. ``running_by_owner``: {owner: running}.
    Free slots go to owners round-robin, fewest running first (ties: the owner whose next
    task is highest priority, then oldest), and inside one owner by priority, then
    submission order. A task goes to the allowed device with the most free slots (ties: its
    own preference order). A blocked device takes nothing. A device with a memory figure
    takes a task only if the task's need (``need_of``; 0 when unknown) plus the margin fits
    in its available memory (free minus what running tasks reserved); each start there
    reserves its need, so several tasks may start on one device in one call while they fit.
    ``stagger_unknown``: a device that takes a task of unknown need takes nothing more in
    this call. Tasks that fit nowhere keep their place. Returns Placements; no limit is ever
    exceeded. ``holds``: a dict, filled with {device: Hold} for each device left with a free
    slot while a task allowed there waits.
    A task whose devices are ("gpu*",) may use every GPU (``any_gpu``, default: every device
    of ``devices`` but the CPU), one whose devices are ("cpu*",) every CPU device ("NODE/cpu"
    of a cluster; ``any_cpu``). ``last_start`` ({owner: n}, larger is more recent) breaks
    ties between owners with as many running: the owner served least recently goes first,
    so that even a single slot alternates between owners.
    ``busy``: configs that are running now; a task of one of them waits (keeping its place),
    and each placement makes its config busy for the rest of the call, so one config never
    runs twice at once.
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
    avail = {d.id: d.available for d in devices.values()}
    blocked = {d.id: d.blocked for d in devices.values() if d.blocked}
    load = dict(running_by_owner or {})
    recent = dict(last_start or {})
    stamp = max(recent.values(), default=0)
    cursor = {o: 0 for o, q in queues.items() if q}
    taken = set()
    # Free slots and memory only shrink during one call: a (devices, need) that fit nowhere
    # once fits nowhere for the rest of it, so a long queue of like tasks is scanned cheaply.
    unfit = set()
    # Device lists none of whose devices could take even a task of no need: every later task
    # with one of them is skipped at once (it could neither start nor add a hold; see below).
    dead = set()
    seen = {} if holds is not None else None
    busy = set(busy)
    placements = []

    def fits(dev, need):
        if free.get(dev, 0) <= 0 or dev in blocked:
            return False
        a = avail.get(dev)
        return a is None or (need or 0) + memory_margin <= a

    while total_free and cursor:
        owner = min(cursor, key=lambda o: (load.get(o, 0), recent.get(o, float("-inf")),
                                           order_key(queues[o][cursor[o]]), o))
        q = queues[owner]
        chosen = None
        for idx in range(cursor[owner], len(q)):
            p = q[idx]
            if p.devices in dead or p.id in taken or (p.config and p.config in busy):
                continue
            need = p.memory or (learned.get(p.family) if learned else None)  # need_of, inline
            sig = (p.devices, need)
            if sig in unfit:
                continue
            allowed = any_gpu if p.devices == (ANY_GPU,) else \
                any_cpu if p.devices == (ANY_CPU,) else p.devices
            options = [d for d in allowed if fits(d, need)]
            if options:
                chosen = (p, need, max(options, key=lambda d: (free[d], -allowed.index(d))))
                break
            unfit.add(sig)
            if seen is not None:
                for d in allowed:
                    if free.get(d, 0) > 0 and d not in seen:
                        seen[d] = Hold(d, p.id, need, avail.get(d), blocked.get(d, ""))
            if not any(fits(d, 0) for d in allowed):
                # Free slots and memory only shrink and blocks only grow during one call, so
                # no later task with this device list fits; and this one already left its
                # hold on each of its devices with a free slot.
                dead.add(p.devices)
        if chosen is None:
            del cursor[owner]  # nothing of this owner's fits anywhere now
            continue
        p, need, dev = chosen
        taken.add(p.id)
        if p.config:
            busy.add(p.config)
        while cursor[owner] < len(q) and q[cursor[owner]].id in taken:
            cursor[owner] += 1
        if cursor[owner] >= len(q):
            del cursor[owner]
        free[dev] -= 1
        total_free -= 1
        if avail.get(dev) is not None:
            avail[dev] -= need or 0
            if stagger_unknown and need is None:
                blocked[dev] = f"settling: task {p.id}'s memory need is unknown"
        load[owner] = load.get(owner, 0) + 1
        stamp += 1
        recent[owner] = stamp
        placements.append(Placement(p.id, dev, owner))
    if seen is not None:
        holds.update({d: h for d, h in seen.items() if free[d] > 0})
    return placements
