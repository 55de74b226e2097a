"""Run multi-run.py in this process and note when each step of its start-up ends.

Usage: python startup_trace.py OUT.json MULTI_RUN_ARGS...

OUT.json gets {"launched_ns": ..., "marks": [[what, ns], ...]} with wall-clock times
(``time.time_ns``): the interpreter ready (this script's first statement), the imports of
``app.multi_run_cli`` done, and the end of each public step a headless run takes (config
discovery, the GPU inventory, opening the store, the engine's start, the submit). The caller
passes the time it launched this process in BENCH_LAUNCHED_NS.
"""
import time

READY = time.time_ns()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

marks = [["interpreter ready", READY]]


def mark(what):
    marks.append([what, time.time_ns()])


def traced(owner, name, what):
    """Wrap ``owner.name`` to mark when each call ends (left alone if it does not exist)."""
    fn = getattr(owner, name, None)
    if fn is None:
        return

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            mark(what)
    setattr(owner, name, wrapper)


out = sys.argv[1]
sys.argv = ["multi-run.py"] + sys.argv[2:]
import app.multi_run_cli as cli  # noqa: E402

mark("imports done")
traced(cli.configs_mod, "match_configs", "configs found")
traced(cli, "open_inventory", "GPU inventory read")
traced(cli, "Store", "store opened (schema checked or created)")
traced(cli.Engine, "start", "engine started (lock, recovery, threads, first GPU reading)")
traced(cli.Engine, "submit", "batch recorded (submit answered)")
code = 1
try:
    code = cli.multi_run()
finally:
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"launched_ns": int(os.environ.get("BENCH_LAUNCHED_NS", "0")),
                   "marks": marks}, f)
sys.exit(code)
