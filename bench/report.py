"""Scoring against the targets of issue 5, and the Markdown report (bench/RESULTS.md).

    python bench/report.py bench/out/results.json [RESULTS.md]   re-renders a saved run
"""

import json
import os
import sys

if __package__ in (None, ""):  # run as a script: python bench/report.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from .common import median  # noqa: E402
from . import server_bench  # noqa: E402
from .server_bench import modes_of  # noqa: E402

TOOL_ORDER = ["xargs", "slotrun-gpu", "slotrun", "slotrun-gpu-tmpfs", "slotrun-tmpfs",
              "simple_gpu_scheduler", "task-spooler", "GNU parallel", "Ray"]
# The rows judged against the targets: GPU mode (simulated GPUs, admission on) is the
# headline; CPU mode must meet them too. The tmpfs rows are diagnostics, never judged.
JUDGED = ("slotrun-gpu", "slotrun")
LABEL = {"slotrun-gpu": "GPU mode", "slotrun": "CPU mode"}
# The server workloads' modes (bench/server_bench.py MODES) as the judged rows.
MODE_TOOL = {"gpu": "slotrun-gpu", "cpu": "slotrun"}

# Targets of issue 15 (ratios within one run on the 2-core build machine).
W1_MAX_RATIO = 1.5
W2_MAX_BEHIND = 0.01
W3_MAX_RATIO = 1.03
GAP_MEDIAN_MS = 2.0
GAP_P95_MS = 6.0
FIRST_START_MS = 100.0


def _tools(wl):
    t = wl.get("tools", {})
    return [k for k in TOOL_ORDER if k in t] + [k for k in t if k not in TOOL_ORDER]


def _med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return median(vals) if vals else None


def _status(results, tool, entry):
    if entry.get("runs"):
        return "ok"
    if "error" in entry:
        return "error: " + entry["error"].splitlines()[0][:160]
    b = results.get("baselines", {}).get(tool, {})
    return b.get("note") or "not available"


def _all_met(verdicts):
    """Return True / False over the judged rows that ran, None when none ran."""
    vals = [v for v in verdicts.values() if v is not None]
    return None if not vals else all(vals)


def summarise(results):
    """Return the per-workload rows (median figures, ratios vs xargs) and target verdicts."""
    out = {}
    wls = results.get("workloads", {})
    base = results.get("baselines", {})
    listed = [t for t in TOOL_ORDER if t in results.get("tools", TOOL_ORDER)]

    def rows_for(wl, metric, ratio_of):
        entry = wls[wl]
        tools = _tools(entry)
        tools += [t for t in listed if t not in tools]
        ref = _med(entry["tools"].get("xargs", {}).get("runs", []), metric)
        rows = []
        for t in tools:
            e = entry["tools"].get(t, {"runs": []})
            if t not in entry["tools"] and base.get(t, {}).get("available"):
                continue  # not asked for in this run
            m = _med(e.get("runs", []), metric)
            row = {"tool": t, "status": _status(results, t, e), "runs": len(e.get("runs", [])),
                   metric: m, "ratio_vs_xargs": ratio_of(m, ref) if m is not None and ref else None,
                   "cpu": _med(e.get("runs", []), "cpu")}
            for extra in ("engine_span", "engine_efficiency", "gap_p95_ms", "gap_max_ms",
                          "first_start_ms", "engine_first_start_ms"):
                v = _med(e.get("runs", []), extra)
                if v is not None:
                    row[extra] = v
            walls = [r["wall"] for r in e.get("runs", []) if r.get("wall") is not None]
            if walls:
                row["walls"] = walls
            rows.append(row)
        return rows, ref

    def find(rows, tool):
        return next((r for r in rows if r["tool"] == tool), None)

    def judge(rows, test):
        verdicts = {}
        for t in JUDGED:
            r = find(rows, t)
            verdicts[t] = None if r is None or r["status"] != "ok" else bool(test(r))
        return verdicts

    if "w1" in wls:
        rows, ref = rows_for("w1", "wall", lambda m, r: m / r)
        verdicts = judge(rows, lambda r: r.get("ratio_vs_xargs") is not None
                         and r["ratio_vs_xargs"] <= W1_MAX_RATIO)
        for r in rows:
            if r.get("engine_span") and ref:
                r["engine_span_ratio"] = r["engine_span"] / ref
        out["w1"] = {"rows": rows, "xargs": ref, "metric": "wall", "verdicts": verdicts,
                     "met": _all_met(verdicts),
                     "target": f"end to end within {W1_MAX_RATIO:g}x xargs (durable records + "
                               "per-task logs included), GPU mode and CPU mode"}
    if "w2" in wls:
        rows, ref = rows_for("w2", "efficiency", lambda m, r: m / r)
        for r in rows:
            r["minus_xargs"] = (r["efficiency"] - ref) if r.get("efficiency") is not None and ref else None
            if r.get("engine_efficiency") is not None and ref:
                r["engine_minus_xargs"] = r["engine_efficiency"] - ref
        verdicts = judge(rows, lambda r: r.get("minus_xargs") is not None
                         and r["minus_xargs"] >= -W2_MAX_BEHIND)
        span = judge(rows, lambda r: r.get("engine_minus_xargs") is not None
                     and r["engine_minus_xargs"] >= -W2_MAX_BEHIND)
        out["w2"] = {"rows": rows, "xargs": ref, "metric": "efficiency", "verdicts": verdicts,
                     "met": _all_met(verdicts), "verdicts_engine_span": span,
                     "met_engine_span": _all_met(span),
                     "target": f"efficiency within {W2_MAX_BEHIND:g} of xargs, GPU mode and CPU mode"}
    if "w3" in wls:
        rows, ref = rows_for("w3", "wall", lambda m, r: m / r)
        verdicts = judge(rows, lambda r: r.get("ratio_vs_xargs") is not None
                         and r["ratio_vs_xargs"] <= W3_MAX_RATIO)
        out["w3"] = {"rows": rows, "xargs": ref, "metric": "wall", "verdicts": verdicts,
                     "met": _all_met(verdicts),
                     "target": f"within {round((W3_MAX_RATIO - 1) * 100):d}% of xargs, GPU mode "
                               "and CPU mode"}
    if "gap" in wls:
        rows, ref = rows_for("gap", "gap_median_ms", lambda m, r: m / r)
        floor = wls["gap"].get("floor", {}).get("runs", [])
        fmed = _med(floor, "gap_median_ms")
        fp95 = _med(floor, "gap_p95_ms")
        ffirst = _med(floor, "first_start_ms")
        for r in rows:
            if r.get("gap_median_ms") is not None and fmed is not None:
                r["net_median_ms"] = r["gap_median_ms"] - fmed
                r["net_p95_ms"] = r["gap_p95_ms"] - fmed
        xr = find(rows, "xargs")
        for r in rows:
            if r.get("net_median_ms") is not None and xr and xr.get("net_median_ms") is not None:
                r["net_minus_xargs_ms"] = r["net_median_ms"] - xr["net_median_ms"]
        verdicts = judge(rows, lambda r: r.get("net_median_ms") is not None
                         and r["net_median_ms"] <= GAP_MEDIAN_MS and r["net_p95_ms"] <= GAP_P95_MS)
        first = judge(rows, lambda r: r.get("first_start_ms") is not None
                      and r["first_start_ms"] <= FIRST_START_MS)
        out["gap"] = {"rows": rows, "xargs": ref, "metric": "gap_median_ms", "verdicts": verdicts,
                      "met": _all_met(verdicts), "floor_median_ms": fmed, "floor_p95_ms": fp95,
                      "floor_first_start_ms": ffirst,
                      "target": f"net of the interpreter: median <= {GAP_MEDIAN_MS:g} ms, p95 <= "
                                f"{GAP_P95_MS:g} ms, GPU mode and CPU mode"}
        out["gap"]["verdicts_first"] = first
        out["first_start"] = {"verdicts": first, "met": _all_met(first),
                              "floor_ms": ffirst,
                              "target": f"the first task runs its first statement within "
                                        f"{FIRST_START_MS:g} ms of the call (multi-run.py "
                                        "launched), GPU mode and CPU mode"}
    su = wls.get("startup")
    if su and "error" not in su:
        model = next(v for k, v in su.items() if k.startswith("sample model"))
        bare = next(v for k, v in su.items() if k.startswith("bare interpreter (python -c"))
        out["startup"] = {"model_ms": model["median"] * 1000, "bare_ms": bare["median"] * 1000,
                          "model_over_bare_ms": (model["median"] - bare["median"]) * 1000,
                          "met": model["median"] < 0.1,
                          "target": "the shipped sample models start in well under 100 ms"}
    for name in ("server", "logflood", "clients", "submits", "memory"):
        if name in wls:
            modes = modes_of(wls[name])
            out[name] = {"status": wls[name].get("status", "ok"), "met": wls[name].get("met"),
                         "verdicts": {MODE_TOOL[k]: m.get("met") if m.get("status") == "ok"
                                      else None for k, m in modes.items() if k in MODE_TOOL}}
    return out


# -- rendering -------------------------------------------------------------------------------

def _f(v, fmt="{:.3f}", none="–"):
    return none if v is None else fmt.format(v)


def _verdict(met):
    return "not run (no slotrun figure)" if met is None else "**met**" if met else "**not met**"


def _mt(met):
    return "slotrun not run" if met is None else "met" if met else "not met"


def _others(rows, key, fmt, skip=("xargs",) + JUDGED):
    parts = []
    for r in rows:
        if r["tool"] in skip:
            continue
        parts.append(f"{r['tool']} {fmt.format(r[key])}" if r.get(key) is not None
                     else f"{r['tool']} {r['status']}")
    return ", ".join(parts)


def _row(s, key, tool):
    return next((x for x in s[key]["rows"] if x["tool"] == tool), {}) if key in s else {}


def _judged(s, key, fig, verdicts="verdicts"):
    """Return "GPU mode FIG (met), CPU mode FIG (not met)" for a workload."""
    parts = []
    for t in JUDGED:
        r = _row(s, key, t)
        if not r:
            continue
        v = s[key].get(verdicts, {}).get(t)
        parts.append(f"{LABEL[t]} {fig(r)} ({_mt(v)})")
    return "; ".join(parts)


def targets(results):
    """Return [(measure, target, GPU mode, CPU mode, baseline, verdict)] of issue 15's targets."""
    s = results.get("summary", {})
    w = results.get("workloads", {})
    out = []

    def both(key, fig, verdicts="verdicts"):
        cells = []
        for t in JUDGED:
            r = _row(s, key, t)
            cells.append(fig(r) if r and r.get("status") == "ok" else "–")
        return cells

    def verdict(key, verdicts="verdicts"):
        v = s.get(key, {}).get(verdicts, {})
        return ", ".join(f"{LABEL[t]}: {_mt(v.get(t))}" for t in JUDGED if t in v)

    if "w1" in s:
        x = s["w1"]["xargs"]
        out.append(("W1 1000 × `true`, 8 slots, end to end", f"≤ {W1_MAX_RATIO:g}× xargs",
                    *both("w1", lambda r: f"{_f(r.get('ratio_vs_xargs'), '{:.2f}')}× "
                                          f"({_f(r.get('wall'), '{:.2f}')} s)"),
                    f"xargs {_f(x, '{:.2f}')} s", verdict("w1")))
    if "w2" in s:
        out.append(("W2 160 sleeps, 8 slots, efficiency", f"within {W2_MAX_BEHIND:g} of xargs",
                    *both("w2", lambda r: f"{_f(r.get('efficiency'))} "
                                          f"({_f(r.get('minus_xargs'), '{:+.3f}')}; engine span "
                                          f"{_f(r.get('engine_efficiency'))})"),
                    f"xargs {_f(s['w2']['xargs'])}", verdict("w2")))
    if "w3" in s:
        out.append(("W3 120 Python tasks, 4 slots", f"≤ {W3_MAX_RATIO:g}× xargs",
                    *both("w3", lambda r: f"{_f(r.get('ratio_vs_xargs'), '{:.3f}')}×"),
                    f"xargs {_f(s['w3']['xargs'], '{:.2f}')} s", verdict("w3")))
    if "gap" in s:
        xr = _row(s, "gap", "xargs")
        out.append(("slot gap net of the interpreter, median / p95",
                    f"≤ {GAP_MEDIAN_MS:g} / ≤ {GAP_P95_MS:g} ms",
                    *both("gap", lambda r: f"{_f(r.get('net_median_ms'), '{:.1f}')} / "
                                           f"{_f(r.get('net_p95_ms'), '{:.1f}')} ms"),
                    f"xargs {_f(xr.get('net_median_ms'), '{:.1f}')} / "
                    f"{_f(xr.get('net_p95_ms'), '{:.1f}')} ms", verdict("gap")))
        out.append(("first start after the call", f"≤ {FIRST_START_MS:g} ms",
                    *both("gap", lambda r: f"{_f(r.get('first_start_ms'), '{:.0f}')} ms"),
                    f"xargs {_f(xr.get('first_start_ms'), '{:.0f}')} ms, bare launcher "
                    f"{_f(s['first_start'].get('floor_ms'), '{:.0f}')} ms",
                    verdict("first_start")))
    def per_mode(name, fig, base=None):
        """Return a server workload's GPU-mode and CPU-mode cells, its baseline cell and
        its verdict; None when no mode ran."""
        e = w.get(name)
        modes = modes_of(e) if e else {}
        ran = {k: m for k, m in modes.items() if m.get("status") == "ok"}
        if not ran:
            return None
        cells = []
        for t in JUDGED:
            m = next((m for k, m in modes.items() if MODE_TOOL.get(k) == t), None)
            cells.append("–" if m is None else fig(m) if m.get("status") == "ok"
                         else m.get("status", "")[:100])
        baseline = "; ".join(f"{LABEL[MODE_TOOL[k]]} {base(m)}" for k, m in ran.items()
                             if k in MODE_TOOL) if base else ""
        return next(iter(ran.values())), cells, baseline, verdict(name)

    got = per_mode("clients", lambda m: (
        f"{m['with_clients']['server_cpu_per_task_ms']:.2f} ms per task "
        f"({_f(m.get('cpu_ratio'), '{:.2f}')}× {m['no_clients']['server_cpu_per_task_ms']:.2f} "
        f"ms); {m['with_clients'].get('clients_with_every_final_state')}/{m['clients']} "
        "clients complete"),
        lambda m: f"{m['no_clients']['server_cpu_per_task_ms']:.2f} ms")
    if got:
        first, cells, baseline, v = got
        out.append((f"{first['clients']} Socket.IO clients during {first['tasks']:,} tasks",
                    "server CPU per task ≤ 2× no clients (same mode); every client every "
                    "final state", *cells, "no clients, per task: " + baseline, v))
    got = per_mode("submits", lambda m: f"p95 {m['submit']['p95_ms']:.0f} ms "
                                        f"(median {m['submit']['median_ms']:.0f})")
    if got:
        first, cells, baseline, v = got
        out.append((f"{first['clients']} clients submitting at once", "submit p95 < 100 ms",
                    *cells, baseline, v))
    got = per_mode("memory", lambda m: f"{m['rss_after_batch_mb']:.0f} MB / "
                                       f"{m['rss_end_mb']:.0f} MB",
                   lambda m: f"{m['rss_start_mb']:.0f} MB")
    if got:
        first, cells, baseline, v = got
        out.append((f"server memory (RSS) after a {first['batch_tasks']:,}-task batch / after "
                    f"{first['finished_tasks']:,} finished tasks", "reported", *cells,
                    "at start: " + baseline, "reported"))
    return out


def load_ranges(results):
    """Return "W1 0.4–3.1 (1.2)" for each job workload: the load average after its runs."""
    out = []
    names = {"w1": "W1", "w2": "W2", "w3": "W3", "gap": "slot gap"}
    for wl, name in names.items():
        e = results.get("workloads", {}).get(wl)
        if not e:
            continue
        loads = [r["load1"] for t in e.get("tools", {}).values() for r in t.get("runs", [])
                 if r.get("load1") is not None]
        if loads:
            out.append(f"{name} {min(loads):.1f}–{max(loads):.1f} ({median(loads):.1f})")
    return out


def headline(results):
    """Return the lines a reader needs first: slotrun and every baseline beside xargs."""
    s = results.get("summary", {})
    rc = results.get("ray_cluster") or {}
    ray_start = (rc.get("init") or 0) + (rc.get("warmup") or 0)
    lines = []
    if "w1" in s:
        lines.append(f"W1 dispatch: xargs {_f(s['w1']['xargs'], '{:.2f}')} s; "
                     + _judged(s, "w1", lambda r: f"{_f(r.get('ratio_vs_xargs'), '{:.2f}')}x")
                     + f" (target <= {W1_MAX_RATIO:g}x); "
                     + _others(s["w1"]["rows"], "ratio_vs_xargs", "{:.2f}x")
                     + (f" (Ray + {ray_start:.1f} s cluster start)" if ray_start else ""))
    if "w2" in s:
        lines.append(f"W2 utilisation: xargs {_f(s['w2']['xargs'])}; "
                     + _judged(s, "w2", lambda r: f"{_f(r.get('efficiency'))} "
                               f"({_f(r.get('minus_xargs'), '{:+.3f}')}, engine span "
                               f"{_f(r.get('engine_efficiency'))})")
                     + f" (target within {W2_MAX_BEHIND:g}); "
                     + _others(s["w2"]["rows"], "efficiency", "{:.3f}"))
    if "w3" in s:
        lines.append(f"W3 Python tasks: xargs {_f(s['w3']['xargs'], '{:.2f}')} s; "
                     + _judged(s, "w3", lambda r: f"{_f(r.get('ratio_vs_xargs'), '{:.3f}')}x")
                     + f" (target <= {W3_MAX_RATIO:g}x); "
                     + _others(s["w3"]["rows"], "ratio_vs_xargs", "{:.3f}x"))
    if "gap" in s:
        x = _row(s, "gap", "xargs")
        lines.append(f"Slot gap, net median / p95 (ms): xargs {_f(x.get('net_median_ms'), '{:.1f}')} / "
                     f"{_f(x.get('net_p95_ms'), '{:.1f}')}; "
                     + _judged(s, "gap", lambda r: f"{_f(r.get('net_median_ms'), '{:.1f}')} / "
                               f"{_f(r.get('net_p95_ms'), '{:.1f}')}")
                     + f" (target <= {GAP_MEDIAN_MS:g} / <= {GAP_P95_MS:g}); "
                     + ", ".join(f"{y['tool']} {_f(y.get('net_median_ms'), '{:.1f}')} / "
                                 f"{_f(y.get('net_p95_ms'), '{:.1f}')}"
                                 for y in s["gap"]["rows"] if y["tool"] not in ("xargs",) + JUDGED
                                 and y.get("net_median_ms") is not None))
        lines.append(f"First start after the call (ms): xargs {_f(x.get('first_start_ms'), '{:.0f}')}; "
                     + _judged(s, "gap", lambda r: f"{_f(r.get('first_start_ms'), '{:.0f}')}",
                               "verdicts_first")
                     + f" (target <= {FIRST_START_MS:g}); "
                     + ", ".join(f"{y['tool']} {_f(y.get('first_start_ms'), '{:.0f}')}"
                                 for y in s["gap"]["rows"] if y["tool"] not in ("xargs",) + JUDGED
                                 and y.get("first_start_ms") is not None))
    if "startup" in s:
        lines.append(f"Sample model start-up: {s['startup']['model_ms']:.0f} ms (bare interpreter "
                     f"{s['startup']['bare_ms']:.0f} ms; target < 100 ms: {_mt(s['startup']['met'])})")
    w = results.get("workloads", {})

    def modes_line(name, head, fig):
        """Append "HEAD: GPU mode FIG; CPU mode FIG" (or why not run) for a server workload."""
        e = w[name]
        parts = [f"{LABEL.get(MODE_TOOL.get(k), k)} " + (fig(m) if m.get("status") == "ok"
                                                           else m.get("status", ""))
                 for k, m in modes_of(e).items()]
        lines.append(f"{head}: " + "; ".join(parts))

    if "server" in w:
        modes_line("server", "Server at scale", lambda e: (
            f"page p95 {e['page']['p95_ms']:.1f} ms, /api/v1/tasks p95 "
            f"{e['api_tasks']['p95_ms']:.1f} ms, {e['batch_tasks']:,}-task batch in "
            f"{e['batch_accept_s']:.2f} s, idle CPU {e['idle_cpu_pct']:.2f}% ({_mt(e.get('met'))})"))
    if "logflood" in w:
        modes_line("logflood", "Log flood", lambda e: (
            f"all bytes on disk: {'yes' if e['all_bytes_on_disk'] else 'NO'}, API p95 "
            f"{e['api']['p95_ms']:.1f} ms, memory +{e['rss_growth_mb']:.1f} MB, follower at most "
            f"{e['follower'].get('messages_per_s_max', 0)} msg/s ({_mt(e.get('met'))})"))
    if "clients" in w:
        modes_line("clients", "Socket.IO clients", lambda e: (
            f"{e['with_clients'].get('clients_with_every_final_state')}/{e['clients']} clients "
            f"got every final state; server CPU per task "
            f"{e['no_clients']['server_cpu_per_task_ms']:.2f} ms without clients, "
            f"{e['with_clients']['server_cpu_per_task_ms']:.2f} ms with them ({_mt(e.get('met'))})"))
    if "submits" in w:
        modes_line("submits", "Submits at once", lambda e: (
            f"{e['clients']} clients, submit p95 {e['submit']['p95_ms']:.0f} ms "
            f"(median {e['submit']['median_ms']:.0f} ms) ({_mt(e.get('met'))})"))
    if "memory" in w:
        modes_line("memory", "Server memory", lambda e: (
            f"{e['rss_start_mb']:.0f} MB at start, {e['rss_after_batch_mb']:.0f} MB after a "
            f"{e['batch_tasks']:,}-task batch, {e['rss_end_mb']:.0f} MB after "
            f"{e['finished_tasks']:,} finished tasks"))
    return "\n".join(lines)


def _row_cells(row, cols):
    return "| " + " | ".join(c(row) for c in cols) + " |"


def render(results):
    """Return RESULTS.md."""
    m = results["machine"]
    s = results.get("summary", {})
    w = results.get("workloads", {})
    L = []
    title = "slotrun benchmark results" + (" (smoke run: tiny sizes, not timings)" if results.get("smoke") else "")
    L += [f"# {title}", "",
          "Generated by `python bench/run.py` (raw data: `bench/out/results.json`, git-ignored). "
          "Every figure is the median of "
          f"{results['repeat']} run(s) per tool, the tools' order rotated between runs, and is "
          "compared with `xargs -P` measured in the same run on the same machine.", "",
          "## Machine", "",
          f"- date: {m['date']}",
          f"- `nproc`: {m['nproc']}; CPU: {m['cpu_model']}; RAM: {m['ram_gib']} GiB",
          f"- kernel: {m['kernel']} ({m['os']})",
          f"- Python: {m['python']} (`{m['python_path']}`, called by its path)",
          f"- 1-minute load average at start: {_f(m.get('loadavg_1min_at_start'), '{:.2f}')} "
          "(a shared, noisy machine: compare ratios within this run, not absolute times "
          "across runs)", "",
          "## Tools", "", "| tool | version | note |", "|---|---|---|"]
    for tool, b in results.get("baselines", {}).items():
        L.append(f"| {tool} | {b.get('version') or '–'} | {b.get('note', '')} |")
    L += ["", "How each tool runs a job of N commands on S slots (the same argument lists "
          "for all). Every tool runs each task through exactly one `/bin/sh`, as "
          "`xargs -P S sh -c` does (slotrun's wrapper shell is its one; Debian's dash forks "
          "for the command, so each tool pays one shell and one fork per task, and a shell "
          "builtin such as `true` runs inside the shell for all):", "",
          "- **xargs**: `xargs -P S -n 1 sh -c 'PREFIX \"$1\"' sh < params`.",
          "- **slotrun-gpu** (the headline row): `SLOTRUN_FAKE_GPUS=2 python multi-run.py -c "
          "'^configs/W/' -d S/2 S/2 -check false --command 'PREFIX {name}' --workspace WS` "
          "with one config per task: GPU mode on two simulated GPUs sharing the S slots, "
          "admission at its default (on; the tasks' memory need is unknown, so the slot "
          "limits are trusted). The figure is the whole command, start-up included; every "
          "task is recorded in SQLite, gets its own run folder, log file, pid and exit "
          "record and a done marker. *engine span* is the engine's own first start to last "
          "exit (from state.db).",
          "- **slotrun**: the same in CPU mode (`-gpu false -d S`).",
          "- **slotrun-gpu-tmpfs**, **slotrun-tmpfs** (W1 and slot gap only, diagnostics): "
          "the same with the workspace on tmpfs (`/dev/shm`), to separate slotrun's own cost "
          "from this machine's cost of creating files on its disk. Never judged.",
          "- **simple_gpu_scheduler**: `simple_gpu_scheduler --gpus 0 .. S-1 < commands` "
          "(each task through `sh -c`, one thread per task).",
          "- **task-spooler**: a fresh `tsp` server with S slots (started before the clock), "
          "one `tsp sh -c 'PREFIX \"$1\"' sh PARAM` per task from a shell script, then a last "
          "job needing all S slots (`tsp -N S true`) and `tsp -w`; each task's output in its "
          "own file.",
          "- **GNU parallel**: `PARALLEL_SHELL=/bin/sh parallel --will-cite -j S 'PREFIX' < "
          "params`.",
          "- **Ray**: one local cluster `ray.init(num_cpus=S, num_gpus=S)` for all jobs, "
          "`@ray.remote(max_calls=0)` tasks running `subprocess.run(['sh', '-c', ...])`, each "
          "asking for S_max/S declared GPUs; its start-up is reported separately.", "",
          "Python bytecode is cached for every run (`PYTHONPYCACHEPREFIX` under `bench/out/`, "
          "`PYTHONDONTWRITEBYTECODE` dropped), as for a user: an installed package ships "
          "compiled. The suite starts with an untimed warm-up run.", ""]
    tt = targets(results)
    if tt:
        L += ["## The targets (issue 15)", "",
              "GPU mode (simulated GPUs, admission on) is the headline; CPU mode must meet the "
              "targets too.", "",
              "| measure | target | GPU mode | CPU mode | baseline | result |",
              "|---|---|---|---|---|---|"]
        for row in tt:
            L.append("| " + " | ".join(row) + " |")
        L.append("")
        loads = load_ranges(results)
        if loads:
            L += ["The machine's 1-minute load average after each run (other people's tests ran "
                  "meanwhile), min–max (median): " + "; ".join(loads) + ".", ""]
    if results.get("ray_cluster"):
        rc = results["ray_cluster"]
        L += [f"Ray cluster: start {_f(rc.get('init'), '{:.2f}')} s + worker warm-up "
              f"{_f(rc.get('warmup'), '{:.2f}')} s, shut-down {_f(rc.get('shutdown'), '{:.2f}')} s "
              f"(not included in its per-job figures below).", ""]

    def table(key, head, cols):
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        for row in s[key]["rows"]:
            if row["status"] != "ok":
                L.append("| " + row["tool"] + " | " + row["status"] + " |" + " |" * (len(head) - 2))
                continue
            L.append(_row_cells(row, cols))
        L.append("")

    if "w1" in s:
        e = w["w1"]
        L += [f"## W1 dispatch: {e['tasks']} tasks of `true`, {e['slots']} slots", "",
              f"Target: {s['w1']['target']}. Result: {_verdict(s['w1']['met'])} ("
              + _judged(s, "w1", lambda r: f"{_f(r.get('ratio_vs_xargs'), '{:.2f}')}x") + ").", ""]
        table("w1", ["tool", "wall (s)", "ratio vs xargs", "CPU s (tool + tasks)", "note"],
              [lambda r: r["tool"], lambda r: _f(r.get("wall")),
               lambda r: _f(r.get("ratio_vs_xargs"), "{:.2f}x"), lambda r: _f(r.get("cpu"), "{:.2f}"),
               lambda r: ((f"engine span {r['engine_span']:.3f} s "
                           f"({r['engine_span_ratio']:.2f}x xargs' whole run); "
                           if r.get("engine_span") else "")
                          + "runs " + ", ".join(f"{x:.2f}" for x in r.get("walls", [])))])
    if "w2" in s:
        e = w["w2"]
        L += [f"## W2 utilisation: {e['tasks']} tasks sleeping 0.05–0.40 s (seeded), "
              f"{e['slots']} slots", "",
              f"Efficiency = (sum of durations {e['sum_durations']:.2f} s / slots) / wall. "
              f"Target: {s['w2']['target']}. Result, end to end (the figure in the table, "
              f"`multi-run.py`'s start-up and shut-down included): {_verdict(s['w2']['met'])} ("
              + _judged(s, "w2", lambda r: _f(r.get("minus_xargs"), "{:+.3f}")) + "); "
              f"over the engine's own span (first start to last exit, the figure a running "
              f"server sees): {_verdict(s['w2'].get('met_engine_span'))} ("
              + _judged(s, "w2", lambda r: _f(r.get("engine_minus_xargs"), "{:+.3f}"),
                        "verdicts_engine_span") + ").", ""]
        table("w2", ["tool", "efficiency", "vs xargs", "wall (s)", "note"],
              [lambda r: r["tool"], lambda r: _f(r.get("efficiency")),
               lambda r: _f(r.get("minus_xargs"), "{:+.3f}"),
               lambda r: _f(_med(w["w2"]["tools"][r["tool"]]["runs"], "wall")),
               lambda r: (f"engine span efficiency {r['engine_efficiency']:.3f}"
                          if r.get("engine_efficiency") else "")])
    if "w3" in s:
        e = w["w3"]
        L += [f"## W3 Python tasks: {e['tasks']} runs of a small Python program "
              f"(`bench/tasks/small_task.py`), {e['slots']} slots", "",
              f"Target: {s['w3']['target']}. Result: {_verdict(s['w3']['met'])} ("
              + _judged(s, "w3", lambda r: f"{_f(r.get('ratio_vs_xargs'), '{:.3f}')}x") + ").", ""]
        table("w3", ["tool", "wall (s)", "ratio vs xargs", "CPU s (tool + tasks)"],
              [lambda r: r["tool"], lambda r: _f(r.get("wall")),
               lambda r: _f(r.get("ratio_vs_xargs"), "{:.3f}x"), lambda r: _f(r.get("cpu"), "{:.2f}")])
    if "startup" in s:
        su = w["startup"]
        L += ["### Start-up of the shipped sample model", "",
              "`python run.py -c configs/exp-1/exp-1-1.yaml --overwrite True` with "
              "`SLOTRUN_SIM_TIME=0`, whole process, median:", "",
              "| command | median (ms) | min (ms) |", "|---|---|---|"]
        for k, v in su.items():
            if isinstance(v, dict) and "median" in v:
                L.append(f"| {k} | {v['median'] * 1000:.1f} | {v['min'] * 1000:.1f} |")
        L += ["", f"Target: {s['startup']['target']}. Result: {_verdict(s['startup']['met'])}: "
              f"{s['startup']['model_ms']:.0f} ms, of which {s['startup']['bare_ms']:.0f} ms is "
              "the interpreter's own start on this machine and "
              f"{s['startup']['model_over_bare_ms']:.0f} ms the model (imports of yaml and "
              "the model, reading the config, writing results).", ""]
        if su.get("imports"):
            L.append("Slowest top-level imports (`python -X importtime`, cumulative): "
                     + ", ".join(f"{i['module']} {i['cumulative_ms']:.1f} ms"
                                 for i in su["imports"][:6]) + ".")
            L.append("")
    if "gap" in s:
        e = w["gap"]
        g = s["gap"]
        L += [f"## Slot gap: {e['tasks']} tasks of 20–60 ms (seeded), {e['slots']} slots", "",
              "Each task (`bench/tasks/stamp.py`, run as `python -I -S`) appends its own start "
              "and end (`time.time_ns()`, the first statement and the last before `os._exit`). "
              "Gaps are matched without slot numbers: the k-th exit frees the slot of the "
              "(S+k)-th start. The raw gap includes the interpreter's own start (and exit); "
              "the *floor* is the same gap from a bare launcher (`posix_spawn` + `os.wait`, "
              "S slots, each task through one `sh` as for the tools, no records) "
              f"(median {_f(g['floor_median_ms'], '{:.2f}')} ms, p95 "
              f"{_f(g['floor_p95_ms'], '{:.2f}')} ms), and *net* = raw - floor median is what "
              "the tool itself adds. *First start* is the time from launching the tool to the "
              "first task's first statement (the bare launcher: "
              f"{_f(g.get('floor_first_start_ms'), '{:.1f}')} ms); *engine first start* is "
              "slotrun's own record of that start (`started_at` of the first attempt).", "",
              f"Target: {g['target']}. Result: {_verdict(g['met'])} ("
              + _judged(s, "gap", lambda r: f"{_f(r.get('net_median_ms'), '{:.2f}')} / "
                        f"{_f(r.get('net_p95_ms'), '{:.2f}')} ms") + ").", "",
              f"Target: {s['first_start']['target']}. Result: "
              f"{_verdict(s['first_start']['met'])} ("
              + _judged(s, "gap", lambda r: f"{_f(r.get('first_start_ms'), '{:.0f}')} ms",
                        "verdicts_first") + ").", ""]
        table("gap", ["tool", "raw median (ms)", "raw p95 (ms)", "net median (ms)", "net p95 (ms)",
                      "net median - xargs (ms)", "first start (ms)", "engine first start (ms)"],
              [lambda r: r["tool"], lambda r: _f(r.get("gap_median_ms"), "{:.2f}"),
               lambda r: _f(r.get("gap_p95_ms"), "{:.2f}"),
               lambda r: _f(r.get("net_median_ms"), "{:.2f}"),
               lambda r: _f(r.get("net_p95_ms"), "{:.2f}"),
               lambda r: _f(r.get("net_minus_xargs_ms"), "{:+.2f}"),
               lambda r: _f(r.get("first_start_ms"), "{:.1f}"),
               lambda r: _f(r.get("engine_first_start_ms"), "{:.1f}")])
    prof = results.get("profile")
    if prof:
        L += _render_profile(prof)
    for name in server_bench.WORKLOADS:
        if name in w:
            L += server_bench.render(name, w[name])
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
    if os.path.exists(notes) and not results.get("smoke"):
        with open(notes, encoding="utf-8") as f:
            L += [f.read().rstrip(), ""]
    L += ["## Closing note: the headline ratios", "", "```", headline(results), "```", ""]
    return "\n".join(L)


def _render_profile(prof):
    L = [f"## Where slotrun's W1 time goes (profile of {prof.get('tasks')} tasks, "
         f"{prof.get('slots')} slots)", ""]
    if "error" in prof:
        return L + [f"Profiling failed: {prof['error']}", ""]
    c = prof.get("cpu")
    if c:
        n = prof["tasks"]
        L += [f"Unprofiled run, CPU seconds by process: the engine process (all threads) "
              f"{c['self_cpu']:.2f} s = **{c['engine_cpu_per_task_ms']:.2f} ms per task** "
              f"({c['self_user']:.2f} user + {c['self_sys']:.2f} system); the per-task wrapper "
              f"shells and the tasks {c['children_cpu']:.2f} s = "
              f"{c['children_cpu_per_task_ms']:.2f} ms per task; wall {c['wall_total']:.2f} s "
              f"for {n} tasks (GPU mode). On {prof.get('nproc', 'this')} cores a run of `true` "
              "tasks is bound by CPU and by the scheduler thread's own time per task.", ""]
    fx = prof.get("fixed")
    if fx:
        L += [f"Fixed cost of one headless run (`multi-run.py` with a single `true` task, GPU "
              f"mode, median): **{fx['slotrun_one_task_s'] * 1000:.0f} ms** (xargs: "
              f"{fx['xargs_one_task_s'] * 1000:.0f} ms), of which the interpreter's start "
              f"{fx['python_bare_s'] * 1000:.0f} ms and importing `app.multi_run_cli` "
              f"{(fx['python_import_engine_s'] - fx['python_bare_s']) * 1000:.0f} ms more. "
              "Every end-to-end slotrun figure above includes it once.", ""]
        if fx.get("first_start_timeline"):
            L += ["Where the time to the first start goes (one task, GPU mode, a `python -I -S` "
                  "stamp as the task; `bench/tasks/startup_trace.py` notes when each step ends; "
                  "times from the call, median):", "",
                  "| step ends | ms after the call | step took (ms) |", "|---|---|---|"]
            prev = 0.0
            for x in fx["first_start_timeline"]:
                L.append(f"| {x['step']} | {x['ms']:.1f} | {x['ms'] - prev:.1f} |")
                prev = x["ms"]
            L += ["", f"The task's own interpreter (`python -I -S -c pass`) takes "
                  f"{fx['python_isolated_s'] * 1000:.1f} ms of the last step.", ""]
    fs = prof.get("fs")
    if fs:
        places = list(fs)
        L += ["Cost of the file operations slotrun does for every task, on the disk holding "
              "the workspaces and on tmpfs (µs per call, wall / CPU):", "",
              "| operation | " + " | ".join(places) + " |", "|---|" + "---|" * len(places)]
        for op in fs[places[0]]:
            L.append(f"| {op} | " + " | ".join(
                f"{fs[p][op]['wall_us']:.0f} / {fs[p][op]['cpu_us']:.0f}" for p in places) + " |")
        L += ["", "Per task slotrun creates its run folder `.slotrun/runs/<task>-<attempt>/` with "
              "two files (`output.log` and the wrapper's record of its pid and exit code, "
              "`status`), made ahead of the start by a thread of their own, off the path from "
              "one task's exit to the next start; and for a task that writes no results, its "
              "results folder (two levels here) and the `.done` marker. xargs creates none, "
              "task-spooler one (its output file).", ""]
    spy = prof.get("py_spy")
    if isinstance(spy, str):
        L += [f"py-spy: {spy}", ""]
        return L
    if spy:
        L += [f"py-spy (`record --threads --nonblocking --rate 1000`, GPU mode, active samples "
              f"only: {spy['samples']} samples, and {spy.get('wait_samples', 0)} more of threads "
              "waiting in epoll or on a lock left out; raw stacks in "
              f"`{spy.get('raw_file', '')}`):", "",
              "| what the engine was doing | share of engine CPU |", "|---|---|"]
        for x in spy["categories"]:
            L.append(f"| {x['name']} | {x['share'] * 100:.1f}% |")
        L += ["", "| thread | share |", "|---|---|"]
        for x in spy["threads"]:
            L.append(f"| {x['name']} | {x['share'] * 100:.1f}% |")
        L += ["", "Top slotrun functions, inclusive (a sample counts for every function on its stack):",
              "", "| function | share |", "|---|---|"]
        for x in spy["app_inclusive"][:15]:
            L.append(f"| `{x['name']}` | {x['share'] * 100:.1f}% |")
        L += ["", "Innermost frames (self time):", "", "| frame | share |", "|---|---|"]
        for x in spy["leaf_self"][:10]:
            L.append(f"| `{x['name']}` | {x['share'] * 100:.1f}% |")
        L.append("")
    return L


def main(argv):
    """Re-render RESULTS.md from a saved results.json."""
    with open(argv[1], encoding="utf-8") as f:
        results = json.load(f)
    results["summary"] = summarise(results)
    text = render(results)
    target = argv[2] if len(argv) > 2 else None
    if target:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
