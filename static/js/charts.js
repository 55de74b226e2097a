// Live per-device charts of the last hour: utilisation and memory, slotrun's tasks marked.
//
// The samples come from GET /devices/history once, then from "history" events (one sample
// of every device per device_refresh seconds). uPlot (static/node_modules, loaded by the page
// as window.uPlot) draws them; each chart repaints at most once per animation frame.

import { formatBytes, formatTime, h, rafBatch, setText } from "./util.js";

export const HOUR = 3600;
const PALETTE = ["#2563eb", "#db2777", "#0d9488", "#d97706", "#7c3aed", "#16a34a", "#dc2626", "#0891b2"];
const MAX_LANES = 6;

/** The last hour of samples per device, column by column (bounded by time). */
export class History {
  constructor() {
    this.devices = new Map(); // id -> {t, util, used, total, mine, tasks}
    this.interval = 2;
  }

  /** Replace everything with a GET /devices/history answer. */
  load(data) {
    if (!data || !Array.isArray(data.devices)) return;
    if (data.interval) this.interval = Number(data.interval);
    const fresh = new Map();
    for (const d of data.devices) {
      const old = this.devices.get(d.id);
      const cols = { t: [...d.t], util: [...d.util], used: [...d.used], total: [...d.total], mine: [...d.mine], tasks: [...d.tasks] };
      // Samples that arrived by event while the request was on its way are kept.
      if (old) {
        const last = cols.t.length ? cols.t[cols.t.length - 1] : -Infinity;
        for (let i = 0; i < old.t.length; i += 1) {
          if (old.t[i] > last) for (const k of Object.keys(cols)) cols[k].push(old[k][i]);
        }
      }
      fresh.set(d.id, cols);
    }
    this.devices = fresh;
  }

  /** Append one "history" event ({t, devices: {id: {util, used, total, mine, tasks}}}). */
  add(event) {
    if (!event || !event.devices) return;
    if (event.interval) this.interval = Number(event.interval);
    const t = Number(event.t);
    for (const [id, s] of Object.entries(event.devices)) {
      let cols = this.devices.get(id);
      if (!cols) {
        cols = { t: [], util: [], used: [], total: [], mine: [], tasks: [] };
        this.devices.set(id, cols);
      }
      if (cols.t.length && cols.t[cols.t.length - 1] >= t) continue;
      cols.t.push(t);
      cols.util.push(s.util ?? null);
      cols.used.push(s.used ?? null);
      cols.total.push(s.total ?? null);
      cols.mine.push(s.mine ?? null);
      cols.tasks.push(s.tasks || []);
      // Keep the last hour only (dropped in chunks, so trimming stays cheap).
      const limit = t - HOUR;
      if (cols.t[0] < limit - 60) {
        let n = 0;
        while (n < cols.t.length && cols.t[n] < limit) n += 1;
        for (const k of Object.keys(cols)) cols[k].splice(0, n);
      }
    }
  }

  get(id) {
    return this.devices.get(id) || null;
  }
}

/** Format an axis time: 14:03:20 for second steps, 14:03 otherwise. */
function clock(t, incr) {
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  const hm = `${p(d.getHours())}:${p(d.getMinutes())}`;
  return incr < 60 ? `${hm}:${p(d.getSeconds())}` : hm;
}

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

function withAlpha(color, a) {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  const n = parseInt(m[1], 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

/** Return a stable colour for a task id. */
export function taskColor(id) {
  return PALETTE[Math.abs(Number(id) * 2654435761) % PALETTE.length];
}

/** Return [{id, i0, i1, lane}] : the index runs during which each task was seen running. */
export function taskRuns(tasks, from = 0) {
  const open = new Map();
  const runs = [];
  for (let i = from; i < tasks.length; i += 1) {
    const now = new Set(tasks[i] || []);
    for (const [id, run] of open) {
      if (!now.has(id)) {
        runs.push(run);
        open.delete(id);
      }
    }
    for (const id of now) {
      const run = open.get(id);
      if (run) run.i1 = i;
      else open.set(id, { id, i0: i, i1: i });
    }
  }
  runs.push(...open.values());
  runs.sort((a, b) => a.i0 - b.i0 || a.id - b.id);
  const lanes = []; // last index used per lane
  for (const r of runs) {
    let lane = lanes.findIndex((end) => end < r.i0);
    if (lane < 0) {
      lane = lanes.length < MAX_LANES ? lanes.length : MAX_LANES - 1;
      if (lane === lanes.length) lanes.push(-1);
    }
    lanes[lane] = Math.max(lanes[lane], r.i1);
    r.lane = lane;
  }
  return runs;
}

/** One device's chart: a readout line and a uPlot canvas that follows the card's width. */
export class DeviceChart {
  constructor(root, { height = 92, windowSeconds = HOUR } = {}) {
    this.root = root;
    this.height = height;
    this.window = windowSeconds;
    this.cols = null;
    this.plot = null;
    this.readout = h("div.chart-readout", { "aria-live": "off" });
    this.box = h("div.chart-plot", { role: "img", "aria-label": "Utilisation and memory, last hour" });
    this.empty = h("div.chart-empty", null, "Collecting samples…");
    root.replaceChildren(this.readout, this.box, this.empty);
    root.classList.add("device-chart");
    root.dataset.points = "0";
    this.paint = rafBatch(() => this.draw());
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(root);
  }

  /** Take a device's columns (a History entry); drawn on the next frame. */
  update(cols) {
    this.cols = cols;
    this.paint();
  }

  setWindow(seconds) {
    this.window = seconds;
    if (this.plot) this.plot.setScale("x", this.xRange());
    this.paint();
  }

  xRange() {
    const t = this.cols ? this.cols.t : [];
    const max = t.length ? t[t.length - 1] : Date.now() / 1000;
    const min = t.length ? Math.max(t[0], max - this.window) : max - 60;
    return { min: Math.min(min, max - 20), max };
  }

  options(width) {
    const muted = cssVar("--muted", "#5d6672");
    const grid = cssVar("--border", "#e1e4e9");
    const mem = cssVar("--accent", "#2563eb");
    const util = cssVar("--succeeded", "#15803d");
    const font = `10.5px ${cssVar("--font", "system-ui")}`;
    return {
      width,
      height: this.height,
      padding: [9, 12, 0, 0],
      legend: { show: false },
      select: { show: false },
      cursor: { y: false, points: { show: false }, drag: { x: false, y: false, setScale: false } },
      scales: {
        x: { time: true, range: () => { const r = this.xRange(); return [r.min, r.max]; } },
        pct: { auto: false, range: [0, 100] },
      },
      series: [
        {},
        { label: "slotrun memory", scale: "pct", stroke: "transparent", width: 0, fill: withAlpha(mem, 0.18), points: { show: false } },
        { label: "Memory", scale: "pct", stroke: mem, width: 1.5, points: { show: false } },
        { label: "Utilisation", scale: "pct", stroke: util, width: 1.25, points: { show: false } },
      ],
      axes: [
        {
          stroke: muted, font, size: 18, gap: 2, space: 72, ticks: { show: false }, grid: { stroke: grid, width: 1 },
          // A label centred nearer an edge than half its width would be cut off, or run into
          // the "%" labels: those ticks keep their grid line but get no label.
          values: (u, splits, axis, space, incr) => {
            const { min, max } = u.scales.x;
            // The plot's width in CSS pixels (before the first layout: the canvas minus the axis).
            const plot = u.bbox.width ? u.bbox.width / (devicePixelRatio || 1) : u.width - 48;
            const half = incr < 60 ? 26 : 16;
            return splits.map((v) => {
              const x = max > min ? ((v - min) / (max - min)) * plot : 0;
              return x < half || x > plot - half ? null : clock(v, incr);
            });
          },
        },
        {
          scale: "pct", stroke: muted, font, size: 36, gap: 3, ticks: { show: false },
          // No "0%": the bottom line is the time axis; its labels sit just below it.
          grid: { stroke: grid, width: 1 }, splits: () => [0, 50, 100], values: (u, vals) => vals.map((v) => (v ? `${v}%` : "")),
        },
      ],
      hooks: {
        draw: [(u) => this.drawTasks(u)],
        setCursor: [(u) => this.showReadout(u.cursor.idx)],
      },
    };
  }

  data() {
    const c = this.cols;
    const pct = (arr) => arr.map((v, i) => (v === null || v === undefined || !c.total[i] ? null : (100 * v) / c.total[i]));
    return [c.t, pct(c.mine), pct(c.used), c.util.map((v) => (v === null || v === undefined ? null : Number(v)))];
  }

  draw() {
    const n = this.cols ? this.cols.t.length : 0;
    this.root.dataset.points = String(n);
    this.empty.hidden = n > 0;
    this.box.hidden = n === 0;
    if (!n) {
      setText(this.readout, "");
      return;
    }
    const width = Math.floor(this.root.clientWidth);
    if (!this.plot) {
      if (typeof window.uPlot !== "function") {
        setText(this.empty, "No chart: its library is missing (npm ci --prefix static)");
        this.empty.hidden = false;
        this.box.hidden = true;
      }
      if (width < 40 || typeof window.uPlot !== "function") {
        this.showReadout(null);
        return;
      }
      this.plot = new window.uPlot(this.options(width), this.data(), this.box);
    } else {
      this.plot.setData(this.data());
    }
    this.showReadout(this.plot.cursor.idx);
  }

  fit() {
    if (!this.plot) {
      if (this.cols) this.paint();
      return;
    }
    const width = Math.floor(this.root.clientWidth);
    if (width >= 40 && Math.abs(width - this.plot.width) > 1) this.plot.setSize({ width, height: this.height });
  }

  /** Mark slotrun's tasks: one thin coloured lane per concurrent task along the bottom. */
  drawTasks(u) {
    const c = this.cols;
    if (!c) return;
    const { left, top, width, height } = u.bbox;
    const dpr = devicePixelRatio || 1;
    const laneH = 3 * dpr;
    const xmin = u.scales.x.min;
    let from = 0;
    while (from < c.t.length && c.t[from] < xmin) from += 1;
    const runs = taskRuns(c.tasks, Math.max(0, from - 1));
    const ctx = u.ctx;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    const step = this.interval(c);
    for (const r of runs) {
      const x0 = u.valToPos(c.t[r.i0], "x", true);
      const x1 = u.valToPos(c.t[r.i1] + step * 0.9, "x", true);
      const y = top + height - (r.lane + 1) * (laneH + dpr);
      ctx.fillStyle = taskColor(r.id);
      ctx.globalAlpha = 0.95;
      ctx.fillRect(x0, y, Math.max(2 * dpr, x1 - x0), laneH);
      ctx.globalAlpha = 0.35;
      ctx.fillRect(x0, top, dpr, height - (r.lane + 1) * (laneH + dpr));
    }
    ctx.restore();
  }

  interval(c) {
    const n = c.t.length;
    return n > 1 ? Math.min(10, c.t[n - 1] - c.t[n - 2]) : 2;
  }

  showReadout(idx) {
    const c = this.cols;
    if (!c || !c.t.length) return;
    const hover = idx !== null && idx !== undefined && idx >= 0 && idx < c.t.length;
    const i = hover ? idx : c.t.length - 1;
    const util = c.util[i] !== null && c.util[i] !== undefined ? `${Math.round(c.util[i])}%` : "–";
    const mem = c.total[i] ? formatBytes(c.used[i]) : "–";
    const tasks = c.tasks[i] || [];
    const key = `${hover ? c.t[i] : ""}|${util}|${mem}|${c.mine[i]}|${tasks.join(",")}`;
    if (this.readout.dataset.key === key) return;
    this.readout.dataset.key = key;
    const item = (cls, label, value, title) => h(`span.chart-item.${cls}`, { title }, h("span.chart-key", null, label), " ", value);
    this.readout.replaceChildren(...[
      hover ? h("span.chart-time", null, formatTime(c.t[i])) : null,
      item("is-util", "util", util, "GPU utilisation"),
      item("is-mem", "mem", mem, "Memory used on the device (all processes)"),
      c.mine[i] ? item("is-mine", "slotrun", formatBytes(c.mine[i]), "Memory held by slotrun's tasks") : null,
      ...tasks.slice(0, 6).map((id) => h("span.chart-task", { style: { "--task": taskColor(id) }, title: `slotrun task ${id}` }, `#${id}`)),
      tasks.length > 6 ? h("span.muted", null, `+${tasks.length - 6}`) : null,
    ].filter(Boolean));
  }

  /** Redraw with the current colours (after a light / dark switch). */
  restyle() {
    if (this.plot) {
      this.plot.destroy();
      this.plot = null;
      this.box.replaceChildren();
    }
    this.paint();
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
