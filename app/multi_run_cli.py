"""multi-run.py: the original tool's command line, run here or submitted to a server."""

import argparse
import getpass
import os

from . import configs as configs_mod
from . import settings as settings_mod
from .commands import check_template
from .console import (EXIT_FAILED, EXIT_USAGE, Printer, Stop, confirm, install_signal_handlers,
                      print_error)
from .devices import no_gpu_message, open_inventory
from .errors import SlotrunError
from .executors import claim_orphans
from .paths import state_db
from .scheduler import Engine
from .store import Store
from .task import CPU, SKIPPED


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


def multi_run_parser(prog="multi-run.py"):
    """Return the argument parser of multi-run.py (also ``slotrun run``)."""
    shown = "python multi-run.py" if prog == "multi-run.py" else prog
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Run every config matching KEY, python run.py -c CONFIG each, on free GPU "
                    "(or CPU) slots: GPU i runs at most N_i tasks at once, and the next task "
                    "starts as soon as one finishes.",
        epilog=f'examples:\n  {shown} -c exp-1 -d 0 1 0 1 -check false\n'
               f'  {shown} -c "exp-(2|3)-1-\\d*" -gpu false -d 3 -check false',
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


def multi_run(argv=None, prog="multi-run.py"):
    """Run multi-run.py (or ``slotrun run``); return its exit status."""
    parser = multi_run_parser(prog)
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.load({"workspace": args.workspace, "command": args.command})
        if args.server:
            # Imported here: its HTTP and Socket.IO clients take longer to import than a
            # local run takes to start its first task.
            from .remote import submit_remote

            return submit_remote(args, settings)
        return _multi_run_local(args, settings)
    except SlotrunError as e:
        print_error(e.message)
        return EXIT_USAGE


def _multi_run_local(args, settings):
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
    if args.check and not confirm(found, skipped_now):
        print("Nothing was run (answer y to run, or pass -check false).")
        return EXIT_FAILED

    claim_orphans(settings)  # this process's children are its tasks: it reaps their orphans
    store = Store(state_db(ws))
    printer = Printer(settings["command"], args.overwrite)
    # A headless run does not wait for a fault to go away: it stops starting tasks, lets the
    # running ones end, and exits non-zero with the reason (see _follow).
    engine = Engine(settings, store, inventory, publish=printer, only_own_batches=True,
                    limits=limits, auto_resume=False)
    engine.start()
    stop = install_signal_handlers()
    interrupted = False
    try:
        owner = getpass.getuser()
        batch = engine.submit(found, owner, use_gpu=args.gpu, overwrite=args.overwrite,
                              pattern=args.key, command=settings["command"],
                              headless=f"pid {os.getpid()} on {engine.node}")
        printer.expect(batch)
        mine = {t["config"] for t in batch["tasks"] if t["state"] != SKIPPED}
        readopted = {r.config: r.task_id for r in engine.view.running.values()
                     if r.batch_id != batch["id"]}
        for config, task_id in sorted(readopted.items()):
            if config in mine:
                print(f"Wait for {config}: it still runs from an earlier run (task {task_id}); "
                      "skipped if that run completes it", flush=True)
        _follow(printer, engine)
    except Stop:
        interrupted = True
        print(f"Interrupted: stopping {len(engine.view.running)} running task(s)...", flush=True)
        engine.stop(kill_tasks=True)
    finally:
        stop()
        if not interrupted:
            # After a fault, what is still queued is ended now (or by the next engine).
            engine.stop(kill_tasks=printer.fault is not None,
                        reason=printer.fault and f"not started: the queue paused itself "
                                                 f"({printer.fault})")
        inventory.close()
    return printer.summary(interrupted)


def _follow(printer, engine):
    """Wait until every task of the batch ended, or the queue paused itself for a fault and
    no process of the run is left (their ends may not be written down: the fault)."""
    while True:
        printer.changed.clear()
        if printer.done.is_set() or (printer.fault is not None and not engine.view.running):
            return
        # After a fault an end may be announced only once it is written down: look again
        # now and then instead of waiting for its event.
        printer.changed.wait(None if printer.fault is None else 0.5)
