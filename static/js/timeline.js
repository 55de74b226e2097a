// A batch's timeline (Gantt): one row per device slot, one bar per attempt coloured by state,
// live while the batch runs. Hovering (or focusing) a bar shows its config, duration, peak
// memory and exit code; clicking it opens the task.

import * as api from "./api.js";
import {
  formatBytes, formatDuration, formatFullTime, formatTime, h, plural, rafBatch, root, setText, throttle,
} from "./util.js";

const STATE_ORDER = ["running", "succeeded", "failed", "interrupted", "cancelled"];

function niceStep(span, target) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const raw = span / Math.max(1, target);
  return steps.find((s) => s >= raw) || 86400 * Math.ceil(raw / 86400);
}

function clock(t, step) {
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return step < 60 ? `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}` : `${p(d.getHours())}:${p(d.getMinutes())}`;
}

export class Timeline {
  constructor(panel, { onClose } = {}) {
    this.panel = panel;
    this.onClose = onClose || (() => {});
    this.body = panel.querySelector("#timeline");
    this.meta = panel.querySelector("#timeline-meta");
    this.title = panel.querySelector("#timeline-title");
    this.batchId = null;
    this.data = null;
    this.skew = 0; // server clock minus browser clock, seconds
    this.bars = new Map(); // "task:attempt" -> element
    this.refresh = throttle(() => this.load(), 1000);
    this.paint = rafBatch(() => this.draw());
    this.tip = h("div.tl-tip", { role: "tooltip", id: "timeline-tip", hidden: true });
    document.body.append(this.tip);
    panel.querySelector("#timeline-close").addEventListener("click", () => this.close());
    this.body.addEventListener("pointerover", (e) => this.hover(e.target.closest(".tl-bar"), e));
    this.body.addEventListener("pointermove", (e) => this.placeTip(e));
    this.body.addEventListener("pointerleave", () => this.hover(null));
    this.body.addEventListener("focusin", (e) => this.hover(e.target.closest(".tl-bar")));
    this.body.addEventListener("focusout", () => this.hover(null));
    this.timer = setInterval(() => {
      if (this.data && !this.data.finished && !this.panel.hidden) this.paint();
    }, 1000);
  }

  /** Show a batch's timeline (null hides the panel). */
  show(batchId, { scroll = false } = {}) {
    if (batchId === null || batchId === undefined || batchId === "") {
      this.close();
      return;
    }
    const id = Number(batchId);
    if (id !== this.batchId) {
      this.batchId = id;
      this.data = null;
      this.bars.clear();
      this.body.replaceChildren(h("p.empty", null, "Loading the timeline…"));
      setText(this.meta, "");
    }
    setText(this.title, `Timeline · batch #${id}`);
    this.panel.hidden = false;
    this.panel.dataset.batch = String(id);
    this.refresh.now();
    if (scroll) this.panel.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  close() {
    this.batchId = null;
    this.data = null;
    this.panel.hidden = true;
    this.hover(null);
    delete this.panel.dataset.batch;
    this.onClose();
  }

  /** A task changed: re-fetch when it belongs to the batch shown (at most once a second). */
  onTask(t) {
    if (this.batchId !== null && t.batch === this.batchId) this.refresh();
  }

  async load() {
    const id = this.batchId;
    if (id === null) return;
    let data;
    try {
      data = await api.timeline(id);
    } catch (e) {
      if (id !== this.batchId) return;
      this.body.replaceChildren(h("p.error-text", { role: "alert" }, `Cannot load the timeline: ${e.message} `,
        h("button.btn.btn-sm", { type: "button", onclick: () => this.refresh.now() }, "Try again")));
      return;
    }
    if (id !== this.batchId) return;
    this.skew = Number(data.now) - Date.now() / 1000;
    this.data = data;
    this.build();
  }

  now() {
    return Date.now() / 1000 + this.skew;
  }

  range() {
    const d = this.data;
    const start = d.start ?? d.created_at;
    const done = d.finished && d.end;
    let end = done ? d.end : this.now();
    const least = done ? 1 : 10; // a live view leaves room to grow
    if (end - start < least) end = start + least;
    return [start, end];
  }

  build() {
    const d = this.data;
    const counts = d.counts || {};
    const parts = STATE_ORDER.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
    if (counts.queued) parts.push(`${counts.queued} queued`);
    if (d.eta !== null && d.eta !== undefined && !d.finished) parts.push(`ETA ${formatDuration(d.eta)}`);
    if (d.truncated) parts.push("newest 5,000 runs shown");
    setText(this.meta, parts.join(" · "));
    if (!d.rows.length) {
      this.bars.clear();
      this.body.replaceChildren(h("p.empty", null, counts.queued
        ? `No task of this batch has started yet (${plural(counts.queued, "task")} queued).`
        : "No task of this batch ran (all were skipped or cancelled before starting)."));
      return;
    }
    const keep = new Map();
    const rows = d.rows.map((row) => {
      const track = h("div.tl-track");
      for (const b of row.bars) {
        const key = `${b.task}:${b.attempt}`;
        let el = this.bars.get(key);
        if (!el) {
          el = h("a.tl-bar", { href: `${root()}/tasks/${b.task}` }, h("span.tl-label"));
        }
        el.bar = b;
        el.dataset.state = b.state;
        el.dataset.task = String(b.task);
        setText(el.firstChild, b.name);
        el.setAttribute("aria-label", describe(b, this.now()));
        keep.set(key, el);
        track.append(el);
      }
      return h("div.tl-row", { dataset: { device: row.device, slot: String(row.slot) } },
        h("span.tl-slot", null, h("span.tl-dev", null, row.device), h("span.tl-slotno", null, ` · ${row.slot}`)), track);
    });
    this.bars = keep;
    this.axis = h("div.tl-axis", { "aria-hidden": "true" });
    this.spanLabel = h("span.tl-slot.tl-span", { title: "Time shown" });
    this.grid = h("div.tl-grid", null, h("div.tl-row.tl-head", null, this.spanLabel, this.axis), ...rows);
    this.body.replaceChildren(this.grid);
    this.draw();
  }

  /** Place the bars and the axis for the current time (running bars grow). */
  draw() {
    if (!this.data || !this.axis) return;
    const [start, end] = this.range();
    const span = end - start;
    const now = this.now();
    for (const el of this.bars.values()) {
      const b = el.bar;
      const e = b.end ?? now;
      el.style.left = `${(100 * (b.start - start)) / span}%`;
      el.style.width = `${Math.max(0, (100 * (e - b.start)) / span)}%`;
    }
    const width = this.axis.clientWidth || 600;
    const step = niceStep(span, Math.max(2, Math.floor(width / 90)));
    const first = Math.ceil(start / step) * step;
    const ticks = [];
    const edge = 100 - (100 * 34) / width; // a label centred nearer the right end would be cut
    for (let t = first; t <= end; t += step) {
      const at = (100 * (t - start)) / span;
      if (at <= edge && at >= 100 - edge) ticks.push(h("span.tl-tick", { style: { left: `${at}%` } }, clock(t, step)));
    }
    this.axis.replaceChildren(...ticks);
    this.grid.dataset.live = this.data.finished ? "0" : "1";
    setText(this.spanLabel, formatDuration(span));
    if (this.tipFor) this.fillTip(this.tipFor);
  }

  hover(el, e) {
    if (!el || !el.bar) {
      this.tipFor = null;
      this.tip.hidden = true;
      return;
    }
    this.tipFor = el;
    this.fillTip(el);
    this.tip.hidden = false;
    if (e) this.placeTip(e);
    else {
      const r = el.getBoundingClientRect();
      this.placeAt(r.left + Math.min(r.width, 40), r.bottom);
    }
  }

  fillTip(el) {
    const b = el.bar;
    const now = this.now();
    const dur = (b.end ?? now) - b.start;
    const facts = [
      ["State", b.state + (b.attempt > 1 ? ` (attempt ${b.attempt})` : "")],
      ["Device · slot", `${b.device} · ${b.slot}`],
      ["Started", formatFullTime(b.start)],
      ["Duration", formatDuration(dur) + (b.end === null ? " so far" : "")],
      ["Peak memory", b.peak_memory ? formatBytes(b.peak_memory) : "–"],
      ["Exit code", b.exit_code ?? "–"],
    ];
    const key = `${b.task}|${b.state}|${Math.floor(dur)}|${b.peak_memory}|${b.exit_code}`;
    if (this.tip.dataset.key === key) return;
    this.tip.dataset.key = key;
    // replaceChildren would print a null as "null": only nodes go in.
    const parts = [
      h("div.tl-tip-head", null, h("span.mono", null, `#${b.task}`), " ", h("span.mono", null, b.config.replace(/^configs\//, ""))),
      h("dl", null, facts.map(([k, v]) => [h("dt", null, k), h("dd", null, String(v))])),
    ];
    if (b.message) parts.push(h("p.tl-tip-msg", null, b.message));
    this.tip.replaceChildren(...parts);
  }

  placeTip(e) {
    if (this.tip.hidden || !e) return;
    this.placeAt(e.clientX + 12, e.clientY + 14);
  }

  placeAt(x, y) {
    const w = this.tip.offsetWidth || 260;
    const hgt = this.tip.offsetHeight || 120;
    const left = Math.min(x, window.innerWidth - w - 8);
    const top = y + hgt > window.innerHeight - 8 ? y - hgt - 24 : y;
    this.tip.style.left = `${Math.max(8, left)}px`;
    this.tip.style.top = `${Math.max(8, top)}px`;
  }
}

function describe(b, now) {
  const dur = (b.end ?? now) - b.start;
  return `Task ${b.task} ${b.config}: ${b.state}, started ${formatTime(b.start)}, ` +
    `${formatDuration(dur)}${b.peak_memory ? `, peak ${formatBytes(b.peak_memory)}` : ""}` +
    `${b.exit_code !== null && b.exit_code !== undefined ? `, exit ${b.exit_code}` : ""}`;
}
