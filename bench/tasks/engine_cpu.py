"""Run a Python script in this process and record its CPU time: python engine_cpu.py OUT.json SCRIPT ARGS...

OUT.json gets the process's own CPU seconds (all its threads), the CPU seconds of its reaped
descendants (for multi-run.py: the task wrappers and the tasks) and the wall time.
"""
import json
import os
import resource
import runpy
import sys
import time

out, script = sys.argv[1], sys.argv[2]
sys.argv = [script] + sys.argv[3:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
t0 = time.perf_counter()
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"wall": time.perf_counter() - t0, "self_cpu": me.ru_utime + me.ru_stime,
                   "self_user": me.ru_utime, "self_sys": me.ru_stime,
                   "children_cpu": kids.ru_utime + kids.ru_stime,
                   "voluntary_switches": me.ru_nvcsw, "involuntary_switches": me.ru_nivcsw,
                   "exit": code}, f)
sys.exit(code)
