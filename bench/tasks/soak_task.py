"""Soak task: run for the config's sim_time seconds and record the run.

Usage: python -I -S soak_task.py CONFIG RUNS_FILE. One line "start_ns end_ns pid" is appended
to RUNS_FILE when the run ends (one small O_APPEND write), so every run of a config leaves
exactly one line: a config that ran twice has two.
"""
import time

START = time.time_ns()

import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

with open(sys.argv[1], encoding="utf-8") as f:
    seconds = float(re.search(r"sim_time:\s*([0-9.]+)", f.read()).group(1))
time.sleep(seconds)
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, b"%d %d %d\n" % (START, time.time_ns(), os.getpid()))
os._exit(0)
