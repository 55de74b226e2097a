"""The pure pick rule: unit cases and property-based tests, including whole simulated runs."""

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from app.task import DeviceState, Hold, Pending, need_of, order_key, pick_from_queues


def pick_next(pending, devices, running_by_owner=None, memory_margin=0, **options):
    """Return ``pick_from_queues`` of a flat list of Pending, queued per owner as the engine
    queues them (sorted by ``order_key``)."""
    queues = {}
    for p in pending:
        queues.setdefault(p.owner, []).append(p)
    for q in queues.values():
        q.sort(key=order_key)
    return pick_from_queues(queues, devices, running_by_owner, memory_margin, **options)


def devs(limits, running=None):
    running = running or {}
    return {d: DeviceState(d, n, running.get(d, 0)) for d, n in limits.items()}


def test_fills_free_slots_in_submission_order():
    pending = [Pending(i, "ann", ("gpu0", "gpu1"), seq=i) for i in range(5)]
    out = pick_next(pending, devs({"gpu0": 1, "gpu1": 2}))
    assert [p.task_id for p in out] == [0, 1, 2]
    assert sorted(p.device for p in out) == ["gpu0", "gpu1", "gpu1"]


def test_respects_zero_limits_and_running_tasks():
    pending = [Pending(i, "ann", ("gpu0", "gpu1", "gpu2", "gpu3"), seq=i) for i in range(3)]
    out = pick_next(pending, devs({"gpu0": 0, "gpu1": 1, "gpu2": 0, "gpu3": 1}, {"gpu1": 1}))
    assert [(p.task_id, p.device) for p in out] == [(0, "gpu3")]


def test_task_only_goes_to_allowed_devices():
    pending = [Pending(1, "ann", ("gpu0",), seq=1), Pending(2, "ann", ("gpu1",), seq=2)]
    out = pick_next(pending, devs({"gpu0": 0, "gpu1": 1}))
    assert [(p.task_id, p.device) for p in out] == [(2, "gpu1")]


def test_any_gpu_wildcard_excludes_cpu():
    pending = [Pending(i, "ann", ("gpu*",), seq=i) for i in range(4)]
    out = pick_next(pending, devs({"gpu0": 1, "gpu1": 1, "cpu": 4}))
    assert sorted(p.device for p in out) == ["gpu0", "gpu1"]


def test_priority_first_within_owner():
    pending = [Pending(1, "ann", ("cpu",), seq=1), Pending(2, "ann", ("cpu",), priority=5, seq=2)]
    assert [p.task_id for p in pick_next(pending, devs({"cpu": 1}))] == [2]


def test_round_robin_across_owners():
    big = [Pending(i, "bob", ("cpu",), seq=i) for i in range(3000)]
    small = [Pending(10000 + i, "ann", ("cpu",), seq=5000 + i) for i in range(3)]
    out = pick_next(big + small, devs({"cpu": 4}))
    owners = [p.owner for p in out]
    assert owners.count("ann") == 2 and owners.count("bob") == 2


def test_owner_with_fewer_running_goes_first():
    pending = [Pending(1, "bob", ("cpu",), seq=1), Pending(2, "ann", ("cpu",), seq=2)]
    out = pick_next(pending, devs({"cpu": 3}, {"cpu": 2}), running_by_owner={"bob": 2})
    assert [p.owner for p in out] == ["ann"]


GIB = 1024**3


def test_memory_guard_starts_every_task_that_fits_at_once():
    pending = [Pending(i, "ann", ("gpu0", "gpu1"), seq=i, memory=6 * GIB) for i in range(5)]
    d = {"gpu0": DeviceState("gpu0", 4, 0, free_memory=20 * GIB),
         "gpu1": DeviceState("gpu1", 4, 0, free_memory=5 * GIB)}
    holds = {}
    out = pick_next(pending, d, memory_margin=GIB, holds=holds)
    # gpu1 cannot hold 6 GiB + margin; gpu0 takes three at once (3 x 6 + 1 <= 20), not four.
    assert [(p.task_id, p.device) for p in out] == [(0, "gpu0"), (1, "gpu0"), (2, "gpu0")]
    assert holds["gpu0"] == Hold("gpu0", 3, 6 * GIB, 2 * GIB)
    assert holds["gpu1"] == Hold("gpu1", 3, 6 * GIB, 5 * GIB)


def test_reservations_of_running_tasks_count():
    pending = [Pending(i, "ann", ("gpu0",), seq=i, memory=6 * GIB) for i in range(3)]
    d = {"gpu0": DeviceState("gpu0", 4, 2, free_memory=20 * GIB, reserved=9 * GIB)}
    out = pick_next(pending, d, memory_margin=GIB)
    assert [p.task_id for p in out] == [0]  # 20 - 9 = 11 GiB: one 6 GiB task (+1), not two


def test_unknown_need_trusts_the_slot_limit_and_learned_zero_is_known():
    pending = [Pending(i, "ann", ("gpu0",), seq=i, family="configs/x") for i in range(5)]
    d = {"gpu0": DeviceState("gpu0", 4, 0, free_memory=2 * GIB)}
    assert len(pick_next(pending, d, memory_margin=GIB)) == 4
    assert len(pick_next(pending, d, memory_margin=GIB, learned={"configs/x": 0})) == 4
    # Learned: 1.5 GiB each, one fits; a full GPU takes none even of an unknown need.
    assert len(pick_next(pending, d, memory_margin=GIB // 2,
                         learned={"configs/x": 3 * GIB // 2})) == 1
    d["gpu0"].free_memory = GIB // 4
    assert pick_next(pending, d, memory_margin=GIB // 2) == []


def test_blocked_device_and_staggered_unknown_needs():
    pending = [Pending(i, "ann", ("gpu0", "gpu1"), seq=i) for i in range(4)]
    d = {"gpu0": DeviceState("gpu0", 4, 0, free_memory=20 * GIB, blocked="gpu0 cannot be read"),
         "gpu1": DeviceState("gpu1", 4, 0, free_memory=20 * GIB)}
    holds = {}
    out = pick_next(pending, d, holds=holds)
    assert [p.device for p in out] == ["gpu1"] * 4
    assert holds == {}  # gpu0 has free slots but nothing waits any more
    holds = {}
    out = pick_next(pending, d, stagger_unknown=True, holds=holds)
    assert [(p.task_id, p.device) for p in out] == [(0, "gpu1")]
    assert holds["gpu0"].blocked == "gpu0 cannot be read"
    assert holds["gpu1"].blocked.startswith("settling")
    # A known need is not staggered.
    out = pick_next(pending, d, stagger_unknown=True, learned={"": GIB})
    assert len(out) == 4


def test_a_long_queue_that_fits_nowhere_keeps_its_holds_and_a_later_task_that_fits_starts():
    # Both GPUs' memory is full: 5,000 GPU tasks wait, each owner's first one leaves the
    # holds; the GPU task of another device list behind them, and the CPU task, still start.
    ann = [Pending(i, "ann", ("gpu*",), seq=i, config=f"a{i}") for i in range(5000)]
    ann.append(Pending(9000, "ann", ("gpu0", "cpu"), seq=9000, config="late"))
    bob = [Pending(10000 + i, "bob", ("gpu1",), seq=10000 + i) for i in range(3)]
    d = {"gpu0": DeviceState("gpu0", 4, 1, free_memory=GIB // 4),
         "gpu1": DeviceState("gpu1", 4, 1, free_memory=GIB // 4),
         "cpu": DeviceState("cpu", 1, 0)}
    holds = {}
    out = pick_next(ann + bob, d, memory_margin=GIB // 2, holds=holds)
    assert [(p.task_id, p.device) for p in out] == [(9000, "cpu")]
    assert holds == {"gpu0": Hold("gpu0", 0, None, GIB // 4),
                     "gpu1": Hold("gpu1", 0, None, GIB // 4)}
    # A task whose config runs is passed over without taking the hold from the one behind it.
    holds = {}
    out = pick_next(ann + bob, d, memory_margin=GIB // 2, holds=holds, busy={"a0"})
    assert holds["gpu0"] == Hold("gpu0", 1, None, GIB // 4)


# -- properties ---------------------------------------------------------------------------

DEVICE_IDS = ["gpu0", "gpu1", "gpu2", "cpu"]

limits_st = st.fixed_dictionaries({d: st.integers(0, 3) for d in DEVICE_IDS})
task_st = st.tuples(st.sampled_from(["ann", "bob", "cy"]),
                    st.lists(st.sampled_from(DEVICE_IDS), min_size=1, max_size=4, unique=True),
                    st.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(limits_st, st.fixed_dictionaries({d: st.integers(0, 3) for d in DEVICE_IDS}),
       st.lists(task_st, max_size=30))
def test_pick_never_exceeds_limits_and_leaves_no_usable_slot_idle(limits, running, tasks):
    running = {d: min(running[d], limits[d]) for d in DEVICE_IDS}
    pending = [Pending(i, o, tuple(ds), pr, i) for i, (o, ds, pr) in enumerate(tasks)]
    out = pick_next(pending, devs(limits, running))
    ids = [p.task_id for p in out]
    assert len(ids) == len(set(ids))
    used = dict(running)
    by_id = {p.id: p for p in pending}
    for pl in out:
        assert pl.device in by_id[pl.task_id].devices
        used[pl.device] += 1
    for d in DEVICE_IDS:
        assert used[d] <= max(limits[d], running[d])
    placed = set(ids)
    for p in pending:
        if p.id not in placed:
            assert all(used[d] >= limits[d] for d in p.devices), "a runnable task was left waiting"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ann", "bob", "cy", "dee"]), min_size=1, max_size=40),
       st.integers(1, 8))
def test_fair_share_balances_owners(owners, slots):
    pending = [Pending(i, o, ("cpu",), 0, i) for i, o in enumerate(owners)]
    out = pick_next(pending, devs({"cpu": slots}))
    got = {}
    for pl in out:
        got[pl.owner] = got.get(pl.owner, 0) + 1
    wanting = {o: owners.count(o) for o in set(owners)}
    # An owner gets fewer than another only when it has nothing more to run.
    for a in wanting:
        for b in wanting:
            if got.get(a, 0) + 1 < got.get(b, 0):
                assert got.get(a, 0) == wanting[a]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=4).filter(any),
       st.lists(st.tuples(st.floats(0.01, 5.0), st.sampled_from(["ann", "bob"])), min_size=1,
                max_size=40))
def test_whole_simulated_run(limits_list, tasks):
    """Event-driven simulation: every task runs exactly once, limits hold at every instant,
    and no slot sits idle while a runnable task waits."""
    limits = {f"gpu{i}": n for i, n in enumerate(limits_list)}
    pending = {i: Pending(i, o, ("gpu*",), 0, i) for i, (_, o) in enumerate(tasks)}
    duration = {i: d for i, (d, _) in enumerate(tasks)}
    running = {}  # task -> device
    events = []
    now = 0.0
    started = []
    while pending or running:
        counts = {d: 0 for d in limits}
        owners = {}
        for t, d in running.items():
            counts[d] += 1
            owners[tasks[t][1]] = owners.get(tasks[t][1], 0) + 1
        out = pick_next(list(pending.values()), devs(limits, counts), owners)
        for pl in out:
            del pending[pl.task_id]
            running[pl.task_id] = pl.device
            counts[pl.device] += 1
            started.append(pl.task_id)
            heapq.heappush(events, (now + duration[pl.task_id], pl.task_id))
        for d in limits:
            assert counts[d] <= limits[d]
        if pending:
            assert all(counts[d] >= limits[d] for d in limits), "idle slot with work waiting"
        assert events, "tasks wait but nothing runs"
        now, t = heapq.heappop(events)
        del running[t]
    assert sorted(started) == list(range(len(tasks)))


def test_large_queue_takes_the_head_without_mutating_it():
    pending = [Pending(i, "ann", ("cpu",), 0, i) for i in range(100000)]
    queues = {"ann": pending}
    out = pick_from_queues(queues, devs({"cpu": 2}))
    assert [p.task_id for p in out] == [0, 1]
    assert len(queues["ann"]) == 100000  # input not mutated


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30))
def test_one_slot_alternates_between_owners(n_a, n_b):
    """With one slot, starts alternate between owners while both have work."""
    queues = {"ann": [Pending(i, "ann", ("cpu",), 0, i) for i in range(n_a)],
              "bob": [Pending(1000 + i, "bob", ("cpu",), 0, 1000 + i) for i in range(n_b)]}
    last, order, stamp = {}, [], 0
    while queues["ann"] or queues["bob"]:
        [pl] = pick_from_queues({o: q for o, q in queues.items() if q}, devs({"cpu": 1}),
                                last_start=last)
        stamp += 1
        last[pl.owner] = stamp
        order.append(pl.owner)
        queues[pl.owner] = [p for p in queues[pl.owner] if p.id != pl.task_id]
    both = 2 * min(n_a, n_b)
    assert all(order[i] != order[i + 1] for i in range(both - 1))


# -- properties of the memory rule ------------------------------------------------------------

MEM_DEVICES = ["gpu0", "gpu1", "gpu2"]
FAMILIES = ["configs/a", "configs/b", "configs/c"]
sizes = st.integers(0, 12).map(lambda n: n * GIB // 2)

gpu_st = st.fixed_dictionaries({
    "limit": st.integers(0, 4), "running": st.integers(0, 4),
    "free": st.one_of(st.none(), st.integers(0, 24).map(lambda n: n * GIB)),
    "reserved": st.integers(0, 16).map(lambda n: n * GIB // 2),
    "blocked": st.sampled_from(["", "", "", "down"])})
mem_task_st = st.tuples(st.sampled_from(["ann", "bob"]),
                        st.lists(st.sampled_from(MEM_DEVICES), min_size=1, max_size=3, unique=True),
                        st.one_of(st.just(0), sizes),  # declared (0: not declared)
                        st.sampled_from(FAMILIES))


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({d: gpu_st for d in MEM_DEVICES}),
       st.lists(mem_task_st, max_size=25),
       st.dictionaries(st.sampled_from(FAMILIES), sizes),  # learned needs (0 included)
       st.sampled_from([0, GIB // 2, GIB]), st.booleans())
def test_no_start_exceeds_free_minus_reserved_and_no_task_waits_while_one_fits(
        gpus, tasks, learned, margin, stagger):
    devices = {d: DeviceState(d, g["limit"], min(g["running"], g["limit"]), g["free"],
                              g["reserved"], g["blocked"]) for d, g in gpus.items()}
    pending = [Pending(i, o, tuple(ds), 0, i, mem, fam) for i, (o, ds, mem, fam) in enumerate(tasks)]
    holds = {}
    out = pick_next(pending, devices, memory_margin=margin, learned=learned,
                    stagger_unknown=stagger, holds=holds)
    by_id = {p.id: p for p in pending}
    placed = {pl.task_id for pl in out}
    assert len(placed) == len(out)
    slots = {d: s.free_slots for d, s in devices.items()}
    left = {d: s.available for d, s in devices.items()}
    blocked = {d for d, s in devices.items() if s.blocked}
    for pl in out:
        p, dev = by_id[pl.task_id], pl.device
        need = need_of(p, learned)
        assert dev in p.devices and dev not in blocked
        assert slots[dev] > 0
        slots[dev] -= 1
        if left[dev] is not None:
            # Each start fits in what is free minus what running and earlier starts reserved.
            assert (need or 0) + margin <= left[dev]
            left[dev] -= need or 0
            if stagger and need is None:
                blocked.add(dev)
    for p in pending:
        if p.id in placed:
            continue
        need = need_of(p, learned)
        for dev in p.devices:
            fits = slots[dev] > 0 and dev not in blocked and \
                (left[dev] is None or (need or 0) + margin <= left[dev])
            assert not fits, f"task {p.id} waits while it fits on {dev}"
            if slots[dev] > 0:
                assert dev in holds, f"{dev} has a free slot, task {p.id} waits, no reason given"
    assert all(slots[d] > 0 for d in holds)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=3).filter(any),
       st.lists(st.tuples(st.floats(0.05, 3.0), sizes, st.floats(0.0, 1.0)), min_size=1,
                max_size=30))
def test_whole_run_with_memory_never_overcommits_and_refills_at_once(limits_list, tasks):
    """Event-driven run on 24 GiB GPUs: a task takes its declared need some time after it
    starts. The engine's view is free memory minus reservations; at no instant do the running
    tasks' needs overflow a GPU, and no slot stays idle while a waiting task fits."""
    total, margin = 24 * GIB, GIB // 2
    limits = {f"gpu{i}": n for i, n in enumerate(limits_list)}
    runnable = {i for i, (_, need, _) in enumerate(tasks) if need + margin <= total}
    pending = {i: Pending(i, "ann", ("gpu*",), 0, i, tasks[i][1] or 1) for i in runnable}
    running = {}  # task -> (device, allocates_at)
    events = []
    now = 0.0
    while pending or running:
        def state(d):
            on = [t for t, (dev, _) in running.items() if dev == d]
            used = sum(tasks[t][1] for t in on if running[t][1] <= now)
            reserved = sum(tasks[t][1] for t in on if running[t][1] > now)
            return DeviceState(d, limits[d], len(on), total - used, reserved)
        devices = {d: state(d) for d in limits}
        out = pick_next(list(pending.values()), devices, memory_margin=margin)
        for pl in out:
            t = pl.task_id
            dur, need, alloc = tasks[t]
            del pending[t]
            running[t] = (pl.device, now + alloc * dur)
            heapq.heappush(events, (now + dur, t))
        for d in limits:
            needs = [tasks[t][1] for t, (dev, _) in running.items() if dev == d]
            assert len(needs) <= limits[d]
            assert sum(needs) + (margin if needs else 0) <= total, "overcommitted"
        for p in pending.values():
            for d in limits:
                s = state(d)
                assert not (s.free_slots and p.memory + margin <= s.available), \
                    "a slot stays idle while a waiting task fits"
        assert events, "tasks wait but nothing runs"
        now, t = heapq.heappop(events)
        del running[t]
    assert not running


# -- one run of a config at a time -----------------------------------------------------------

def test_a_busy_config_waits_and_keeps_its_place():
    pending = [Pending(1, "ann", ("cpu",), seq=1, config="c/a.yaml"),
               Pending(2, "ann", ("cpu",), seq=2, config="c/b.yaml"),
               Pending(3, "bob", ("cpu",), seq=3, config="c/a.yaml")]
    out = pick_next(pending, devs({"cpu": 3}), busy={"c/a.yaml"})
    assert [p.task_id for p in out] == [2]
    # Two queued tasks of one config: only the first starts, even with slots to spare.
    out = pick_next(pending, devs({"cpu": 3}))
    assert sorted(p.task_id for p in out) == [1, 2]


config_task_st = st.tuples(st.sampled_from(["ann", "bob", "cy"]),
                           st.lists(st.sampled_from(DEVICE_IDS), min_size=1, max_size=4,
                                    unique=True),
                           st.sampled_from(["c/1.yaml", "c/2.yaml", "c/3.yaml", "c/4.yaml"]))


@settings(max_examples=300, deadline=None)
@given(limits_st, st.lists(config_task_st, max_size=30),
       st.sets(st.sampled_from(["c/1.yaml", "c/2.yaml", "c/3.yaml", "c/4.yaml"])))
def test_pick_never_starts_a_busy_config_nor_one_twice(limits, tasks, busy):
    pending = [Pending(i, o, tuple(ds), 0, i, config=c) for i, (o, ds, c) in enumerate(tasks)]
    out = pick_next(pending, devs(limits), busy=frozenset(busy))
    by_id = {p.id: p for p in pending}
    configs = [by_id[pl.task_id].config for pl in out]
    assert len(configs) == len(set(configs)), "one config placed twice"
    assert not set(configs) & busy, "a running config placed again"
    used = {d: 0 for d in DEVICE_IDS}
    for pl in out:
        used[pl.device] += 1
    blocked = busy | set(configs)
    for p in pending:
        if p.id not in {pl.task_id for pl in out} and p.config not in blocked:
            assert all(used[d] >= limits[d] for d in p.devices), "a runnable task was left waiting"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=4).filter(any),
       st.lists(st.tuples(st.floats(0.01, 5.0), st.sampled_from(["ann", "bob"]),
                          st.integers(0, 5)), min_size=1, max_size=40))
def test_whole_simulated_run_never_runs_one_config_twice_at_once(limits_list, tasks):
    """Overlapping batches (one config queued several times, by several owners): every task
    runs, limits hold, and no two running tasks ever share a config."""
    limits = {f"gpu{i}": n for i, n in enumerate(limits_list)}
    pending = {i: Pending(i, o, ("gpu*",), 0, i, config=f"c/{c}.yaml")
               for i, (_, o, c) in enumerate(tasks)}
    duration = {i: d for i, (d, _, _) in enumerate(tasks)}
    running = {}  # task -> device
    events = []
    now = 0.0
    started = []
    while pending or running:
        counts = {d: 0 for d in limits}
        for d in running.values():
            counts[d] += 1
        busy = frozenset(f"c/{tasks[t][2]}.yaml" for t in running)
        out = pick_next(list(pending.values()), devs(limits, counts), busy=busy)
        for pl in out:
            del pending[pl.task_id]
            running[pl.task_id] = pl.device
            counts[pl.device] += 1
            started.append(pl.task_id)
            heapq.heappush(events, (now + duration[pl.task_id], pl.task_id))
        live = [tasks[t][2] for t in running]
        assert len(live) == len(set(live)), "one config running twice at once"
        for d in limits:
            assert counts[d] <= limits[d]
        assert events, "tasks wait but nothing runs"
        now, t = heapq.heappop(events)
        del running[t]
    assert sorted(started) == list(range(len(tasks)))
