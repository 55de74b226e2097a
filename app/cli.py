"""Command lines: the seed-compatible multi-run, and ``python -m app`` (serve, users, token)."""

import argparse
import getpass
import os
import signal
import sys
import threading

from . import configs as configs_mod
from . import settings as settings_mod
from .errors import SlotrunError
from .task import FINAL_STATES, RUNNING, SKIPPED, SUCCEEDED

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Stop(Exception):
    """Raised in the main thread by SIGINT / SIGTERM."""


def _bool(text):
    try:
        return settings_mod.parse_bool(text)
    except SlotrunError:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}") from None


def _slots(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"slot counts are whole numbers (0 or more), not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"slot counts cannot be negative: {text}")
    return value


def multi_run_parser():
    """Return the argument parser of multi-run.py."""
    p = argparse.ArgumentParser(
        prog="multi-run.py", allow_abbrev=False,
        description="Run every config matching KEY, python run.py -c CONFIG each, on free GPU "
                    "(or CPU) slots: GPU i runs at most N_i tasks at once, and the next task "
                    "starts as soon as one finishes.",
        epilog='examples:\n  python multi-run.py -c exp-1 -d 0 1 0 1 -check false\n'
               '  python multi-run.py -c "exp-(2|3)-1-\\d*" -gpu false -d 3 -check false',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", "-config", dest="key", required=True, metavar="KEY",
                   help="Python regular expression searched in each config path "
                        "(configs/.../name.yaml); *-base.yaml and *_base.yaml are never run")
    p.add_argument("-d", "--devices", "-devices", dest="slots", nargs="+", type=_slots,
                   metavar="N", help="slots per GPU: N_0 N_1 ... (with -gpu false: one number, "
                                     "the CPU slots); default 1 per GPU, 1 CPU slot")
    p.add_argument("-gpu", "--gpu", type=_bool, default=True, metavar="true|false",
                   help="run on GPUs (default true) or on the CPU (false)")
    p.add_argument("-check", "--check", type=_bool, default=True, metavar="true|false",
                   help="list the configs found and ask before running (default true)")
    p.add_argument("-w", "-overwrite", "--overwrite", dest="overwrite", type=_bool, default=False,
                   metavar="true|false", help="rerun configs whose results are already complete "
                                              "(default false: skip them)")
    p.add_argument("--command", default=None, metavar="TEMPLATE",
                   help="task command template (default '{python} run.py -c {config} "
                        "--overwrite {overwrite} {device_args}', what the original tool ran); "
                        "placeholders {python} {config} {name} {results} {overwrite} "
                        "(True/False) {device_args} (-d 0 on a GPU, nothing on the CPU) {gpu} "
                        "{device} {task_id} {batch_id}")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="workspace folder (default: the current folder or $SLOTRUN_WORKSPACE)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="submit the batch to a running slotrun server (token from $SLOTRUN_TOKEN) "
                        "instead of running it here")
    return p


def _err(message):
    print(f"error: {message}", file=sys.stderr)


def _confirm(configs, skipped):
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
        import select

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
    from .scheduler import command_values, render_command

    values = command_values(config, overwrite, python="python", task_id="", device="",
                            batch_id="", results=configs_mod.results_dir_for(config))
    try:
        return " ".join(render_command(template, values))
    except (KeyError, ValueError):
        return template


def multi_run(argv=None):
    """Run multi-run.py; return its exit status."""
    parser = multi_run_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.load({"workspace": args.workspace, "command": args.command})
        if args.server:
            from .remote import submit_remote

            return submit_remote(args, settings)
        return _multi_run_local(args, settings)
    except SlotrunError as e:
        _err(e.message)
        return EXIT_USAGE


def _multi_run_local(args, settings):
    from .devices import no_gpu_message, open_inventory
    from .scheduler import Engine, check_template, state_dir
    from .store import Store
    from .task import CPU

    ws = settings["workspace"]
    check_template(settings["command"])
    if not os.path.isdir(os.path.join(ws, settings["configs_dir"])):
        raise SlotrunError(f"no {settings['configs_dir']}/ folder in the workspace {ws}; run "
                           "multi-run.py where configs/ is, or pass --workspace DIR")
    found = configs_mod.match_configs(ws, args.key, settings["configs_dir"])
    if not found:
        raise SlotrunError(f"no config in {settings['configs_dir']}/ matches {args.key!r}")
    inventory = open_inventory()
    gpus = [d.id for d in inventory.gpus()]
    if args.gpu:
        if not gpus:
            raise SlotrunError(no_gpu_message(inventory))
        slots = args.slots if args.slots is not None else [settings["gpu_slots"]] * len(gpus)
        if len(slots) > len(gpus):
            raise SlotrunError(f"-d gives {len(slots)} slot counts but {len(gpus)} GPU(s) were "
                               f"found ({', '.join(gpus)}); give at most {len(gpus)}")
        limits = {g: (slots[i] if i < len(slots) else 0) for i, g in enumerate(gpus)}
        limits[CPU] = 0
    else:
        slots = args.slots if args.slots is not None else [settings["cpu_slots"]]
        if len(slots) != 1:
            raise SlotrunError(f"with -gpu false, -d takes one number (the CPU slots), not "
                               f"{len(slots)}: {' '.join(map(str, slots))}")
        limits = {g: 0 for g in gpus}
        limits[CPU] = slots[0]
    if not any(limits.values()):
        raise SlotrunError("every slot count is 0, so nothing could run; give at least one "
                           "device a slot, e.g. -d 1")
    complete = {c for c in found if configs_mod.completed_marker(ws, c, settings)}
    skipped_now = set() if args.overwrite else complete
    if args.check and not _confirm(found, skipped_now):
        print("Nothing was run (answer y to run, or pass -check false).")
        return EXIT_FAILED

    store = Store(os.path.join(state_dir(ws), "state.db"))
    printer = _Printer(settings["command"], args.overwrite)
    engine = Engine(settings, store, inventory, publish=printer, only_own_batches=True,
                    limits=limits)
    engine.start()
    stop = _install_signal_handlers()
    interrupted = False
    try:
        owner = getpass.getuser()
        batch = engine.submit(found, owner, use_gpu=args.gpu, overwrite=args.overwrite,
                              pattern=args.key, command=settings["command"])
        printer.expect(batch)
        printer.done.wait()
    except _Stop:
        interrupted = True
        print(f"Interrupted: stopping {len(engine.running)} running task(s)...", flush=True)
        engine.stop(kill_tasks=True)
    finally:
        stop()
        if not interrupted:
            engine.stop(kill_tasks=False)
        inventory.close()
    return printer.summary(interrupted)


def _install_signal_handlers():
    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for s, h in old.items():
            signal.signal(s, h)
    return restore


class _Printer:
    """Prints the original tool's console lines from the engine's task events."""

    def __init__(self, template, overwrite=False):
        self.template = template
        self.overwrite = overwrite
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.batch_id = None
        self.early = []
        self.total = 0
        self.finished = 0
        self.counts = {}
        self.ids = set()
        self.shown = {}  # task id -> lines already printed ("start", "end"): events may repeat

    def expect(self, batch):
        with self.lock:
            self.batch_id = batch["id"]
            self.ids = {t["id"] for t in batch["tasks"]}
            skipped = [t for t in batch["tasks"] if t["state"] == SKIPPED]
            self.total = len(batch["tasks"]) - len(skipped)
            self.counts[SKIPPED] = len(skipped)
            for t in skipped:
                print(f"Skip {t['config']} (results already complete; -w true reruns it)")
            early, self.early = self.early, []
        for t in early:
            self.__call__("task", t)
        self._check_done()

    def __call__(self, event, t):
        if event != "task":
            return
        with self.lock:
            if self.batch_id is None:
                self.early.append(t)
                return
            if t["id"] not in self.ids or t["state"] == SKIPPED:
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
            else:
                why = t.get("message") or t["state"]
                log = f" (log: .slotrun/runs/{t['id']}-{t['attempts']}/output.log)" if t["attempts"] else ""
                print(f"The process {t['state']}: {cmd} [{self.finished}/{self.total}] - {why}{log}",
                      flush=True)
        self._check_done()

    def _check_done(self):
        if self.batch_id is not None and self.finished >= self.total:
            self.done.set()

    def summary(self, interrupted):
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
        return EXIT_OK if ok + skipped == self.total + skipped else EXIT_FAILED


def main(argv=None):
    """Run ``python -m app``; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m app", description="slotrun: run simulation "
                                "tasks on per-GPU slots, with a live web dashboard.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.add_parser("multi-run", help="run configs headless (the same options as multi-run.py)",
                   add_help=False)
    from . import accounts_cli, serve_cli, sweep_cli

    serve_cli.add_commands(sub)
    accounts_cli.add_commands(sub)
    sweep_cli.add_commands(sub)
    if argv and argv[0] == "multi-run":
        return multi_run(argv[1:])
    args = p.parse_args(argv)
    if not args.cmd:
        p.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except SlotrunError as e:
        _err(e.message)
        return EXIT_USAGE
