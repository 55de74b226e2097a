"""Slot-gap task: record its own start and end (time.time_ns) and exit at once.

Usage: python -I -S stamp.py STAMP_FILE SECONDS. One line "start_ns end_ns" is appended
to STAMP_FILE (one small O_APPEND write, atomic among concurrent tasks). os._exit right
after the end stamp keeps interpreter shutdown out of the measured gap.
"""
import time

START = time.time_ns()

import os  # noqa: E402
import sys  # noqa: E402

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
time.sleep(float(sys.argv[2]))
END = time.time_ns()
os.write(fd, b"%d %d\n" % (START, END))
os._exit(0)
