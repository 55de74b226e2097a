"""The console of the command lines: the original tool's lines, the question before a run,
Ctrl-C handling and the exit statuses, shared by a local run (``cli``) and a run submitted
to a server (``remote``).
"""

import select
import signal
import sys
import threading

from . import configs as configs_mod
from .commands import command_values, render_command
from .task import FINAL_STATES, RUNNING, SKIPPED, SUCCEEDED

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Stop(Exception):
    """Raised in the main thread by SIGINT / SIGTERM."""


def print_error(message):
    """Print one ``error: ...`` line on stderr."""
    print(f"error: {message}", file=sys.stderr)


def confirm(configs, skipped):
    """List the configs found and ask ``run these? [y/n]``; return True on yes.

    Without a terminal it waits at most 10 s for a piped answer, then counts it as no.
    """
    print(f"Found {len(configs)} config(s):")
    for c in configs:
        print(f"  {c}{'  (results complete: will be skipped)' if c in skipped else ''}")
    print("run these? [y/n] ", end="", flush=True)
    if sys.stdin is None or sys.stdin.closed:
        answer = ""
    elif sys.stdin.isatty():
        try:
            answer = sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            answer = ""
    else:
        try:
            ready, _, _ = select.select([sys.stdin], [], [], 10)
            answer = sys.stdin.readline() if ready else ""
        except (OSError, ValueError):
            answer = ""
    print()
    return answer.strip().lower() in ("y", "yes")


def display_command(template, config, overwrite=False):
    """Return the command as the console shows it, as the original tool printed it.

    ``python`` stands for the interpreter, and the GPU arguments are left out: the original
    printed its command before it appended ``-d GPU_ID``.
    """
    values = command_values(config, overwrite, python="python", task_id="", device="",
                            batch_id="", results=configs_mod.results_dir_for(config))
    try:
        return " ".join(render_command(template, values))
    except (KeyError, ValueError):
        return template


def install_signal_handlers():
    """Make SIGINT and SIGTERM raise ``Stop`` in the main thread; return a function that
    puts the previous handlers back."""
    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for s, h in old.items():
            signal.signal(s, h)
    return restore


class Printer:
    """Prints the original tool's console lines from the engine's task events."""

    def __init__(self, template, overwrite=False):
        self.template = template
        self.overwrite = overwrite
        self.done = threading.Event()
        self.changed = threading.Event()  # set on every end, on done and on a fault
        self.lock = threading.Lock()
        self.batch_id = None
        self.early = []
        self.total = 0
        self.finished = 0
        self.counts = {}
        self.ids = set()
        self.shown = {}  # task id -> lines already printed ("start", "end"): events may repeat
        self.fault = None  # why the queue paused itself, once it did (a local run)
        self.skipped_at_submit = set()

    def expect(self, batch):
        """Follow ``batch`` (as submitted): print its skipped configs, replay early events."""
        with self.lock:
            self.batch_id = batch["id"]
            self.ids = {t["id"] for t in batch["tasks"]}
            skipped = [t for t in batch["tasks"] if t["state"] == SKIPPED]
            self.skipped_at_submit = {t["id"] for t in skipped}
            self.total = len(batch["tasks"]) - len(skipped)
            self.counts[SKIPPED] = len(skipped)
            for t in skipped:
                print(f"Skip {t['config']} (results already complete; -w true reruns it)")
            early, self.early = self.early, []
        for t in early:
            self.__call__("task", t)
        self._check_done()

    def running(self):
        """Return how many of the batch's tasks started and have not ended."""
        with self.lock:
            return sum(1 for s in self.shown.values() if "start" in s and "end" not in s)

    def __call__(self, event, t):
        if event == "queue":
            self._on_queue(t)
            return
        if event != "task":
            return
        with self.lock:
            if self.batch_id is None:
                self.early.append(t)
                return
            if t["id"] not in self.ids or t["id"] in self.skipped_at_submit:
                return
            shown = self.shown.setdefault(t["id"], set())
            started = t["state"] == RUNNING or (t["state"] in FINAL_STATES and t.get("attempts"))
            if started and "start" not in shown:
                shown.add("start")
                print(f"Start the process with {t['config']}", flush=True)
            if t["state"] not in FINAL_STATES or "end" in shown:
                return
            shown.add("end")
            self.finished += 1
            self.counts[t["state"]] = self.counts.get(t["state"], 0) + 1
            cmd = display_command(self.template, t["config"], self.overwrite)
            if t["state"] == SUCCEEDED:
                print(f"The process finished: {cmd} [{self.finished}/{self.total}]", flush=True)
            elif t["state"] == SKIPPED:
                # Completed meanwhile by another run of the same config (an overlapping batch).
                print(f"Skip {t['config']}: {t.get('message') or 'results already complete'} "
                      f"[{self.finished}/{self.total}]", flush=True)
            else:
                why = t.get("message") or t["state"]
                log = f" (log: .slotrun/runs/{t['id']}-{t['attempts']}/output.log)" if t["attempts"] else ""
                print(f"The process {t['state']}: {cmd} [{self.finished}/{self.total}] - {why}{log}",
                      flush=True)
        self._check_done()
        self.changed.set()

    def _on_queue(self, q):
        """A local run's queue paused itself for a fault: say why, and start nothing more."""
        if not (q.get("paused") and q.get("auto")) or self.fault is not None:
            return
        self.fault = q.get("reason") or "a fault"
        n = self.running()
        print(f"The queue paused itself: {self.fault}", file=sys.stderr, flush=True)
        if n:
            print(f"No new task starts; waiting for the {n} running task(s) to end "
                  "(Ctrl-C stops them).", flush=True)
        self.changed.set()

    def _check_done(self):
        if self.batch_id is not None and self.finished >= self.total:
            self.done.set()
            self.changed.set()

    def summary(self, interrupted):
        """Print the summary line; return the exit status of the run."""
        c = self.counts
        ok, skipped = c.get(SUCCEEDED, 0), c.get(SKIPPED, 0)
        failed = c.get("failed", 0)
        other = {k: v for k, v in c.items() if k not in (SUCCEEDED, SKIPPED, "failed") and v}
        line = f"Summary: {ok} succeeded, {failed} failed, {skipped} skipped"
        for k, v in sorted(other.items()):
            line += f", {v} {k}"
        not_started = self.total - self.finished
        if not_started > 0:
            line += f", {not_started} not run"
        print(line, flush=True)
        if interrupted:
            print("Run the same command again to resume: completed configs are skipped.")
            return EXIT_INTERRUPTED
        complete = ok + skipped == self.total + len(self.skipped_at_submit)
        if self.fault is not None and not complete:
            print_error(f"stopped early: the queue paused itself ({self.fault}); fix that, "
                        "then run the same command again to resume (completed configs are "
                        "skipped)")
        return EXIT_OK if complete else EXIT_FAILED
