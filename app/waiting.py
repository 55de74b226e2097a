"""The queued tasks the engine holds in memory (scheduler thread only).

By task id; per owner, in the order the pick rule serves them (``order_key``); and counted
per config (a config with a queued task) and per device list (what the queue wants, for
readers' slot summary). ``stale`` is the engine's set of view parts to copy again.
"""

import bisect

from .admission import family_of
from .engine_records import Queued
from .task import ANY_GPU, Pending, gpu_index, order_key


class WaitingTasks:
    """The queued tasks in memory (see the module's docstring)."""

    def __init__(self, stale, on_gpu_work=None):
        self.by_id = {}  # task id -> Queued
        self.queues = {}  # owner -> [Pending] sorted by order_key
        self.configs = {}  # config -> how many of its tasks are queued
        self.wanted = {}  # device tuple -> queued tasks that may use it
        self.gpu = 0  # queued tasks that may run on a GPU: the memory monitor reads while > 0
        self._stale = stale
        self._on_gpu_work = on_gpu_work  # called when the first task that may use a GPU waits

    def __len__(self):
        return len(self.by_id)

    def __contains__(self, task_id):
        return task_id in self.by_id

    def get(self, task_id):
        """Return a queued task's Queued record, or None."""
        return self.by_id.get(task_id)

    def of_batches(self, batch_ids):
        """Return the ids of the queued tasks of these batches."""
        return [tid for tid, q in self.by_id.items() if q.batch_id in batch_ids]

    def add(self, t):
        """Queue a task from its store row (again, if it was queued already)."""
        if t["id"] in self.by_id:
            self.remove(t["id"])
        p = Pending(t["id"], t["owner"], tuple(t["devices"]), t["priority"], t["seq"], t["memory"],
                    family_of(t["config"]), t["config"])
        self.put(Queued(p, t["batch_id"], t["config"], t["attempts"]))

    def put(self, item):
        """Queue a Queued record (a task taken out, going back where it was)."""
        p = item.pending
        self.by_id[p.id] = item
        self._count_gpu(p.devices, 1)
        self.configs[item.config] = self.configs.get(item.config, 0) + 1
        self.wanted[p.devices] = self.wanted.get(p.devices, 0) + 1
        self._stale.add("queue")
        q = self.queues.setdefault(p.owner, [])
        if not q or order_key(p) > order_key(q[-1]):
            q.append(p)
        else:
            bisect.insort(q, p, key=order_key)

    def remove(self, task_id):
        """Take a task out of the queue; return its Queued record (None if not queued)."""
        item = self.by_id.pop(task_id, None)
        if item is None:
            return None
        self._count_gpu(item.pending.devices, -1)
        left = self.configs.pop(item.config, 1) - 1
        if left:
            self.configs[item.config] = left
        wanted = self.wanted.pop(item.pending.devices, 1) - 1
        if wanted:
            self.wanted[item.pending.devices] = wanted
        self._stale.add("queue")
        q = self.queues.get(item.pending.owner, [])
        i = bisect.bisect_left(q, order_key(item.pending), key=order_key)
        if i < len(q) and q[i].id == task_id:
            del q[i]
        else:
            q[:] = [x for x in q if x.id != task_id]
        if not q:
            self.queues.pop(item.pending.owner, None)
        return item

    def _count_gpu(self, devices, step):
        if any(d == ANY_GPU or gpu_index(d) is not None for d in devices):
            self.gpu += step
            if step > 0 and self.gpu == 1 and self._on_gpu_work is not None:
                self._on_gpu_work()
