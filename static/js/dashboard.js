// The dashboard page: wires the panels to the REST API and the live Socket.IO events.

import { get, post } from "./api.js";
import { BatchForm } from "./batchform.js";
import { BatchesPanel } from "./batches.js";
import { History } from "./charts.js";
import { DevicesPanel, SuggestSlots } from "./devices.js";
import * as live from "./live.js";
import { TasksTable } from "./tasks.js";
import { Timeline } from "./timeline.js";
import { bootstrap, may, rafBatch, setText, throttle, toast } from "./util.js";

const OTHER = ["cancelled", "interrupted", "skipped"];

/** Summary tiles and the queue's pause switch. */
class Summary {
  constructor() {
    this.counts = {};
    this.slots = { used: 0, total: 0 };
    this.paused = null;
    this.paint = rafBatch(() => this.flush());
    this.refresh = throttle(() => this.load(), 800);
    this.toggle = document.getElementById("queue-toggle");
    this.control = document.getElementById("queue-control");
    if (this.toggle) this.toggle.addEventListener("click", () => this.flipQueue());
  }

  async load() {
    const status = await get("/status");
    const counts = status.counts || status.tasks || status.states || {};
    if (counts && typeof counts === "object") this.counts = counts;
    if (status.paused !== undefined) this.paused = Boolean(status.paused);
    else if (status.queue && status.queue.paused !== undefined) this.paused = Boolean(status.queue.paused);
    this.paint();
  }

  setDevices(devices) {
    this.slots = devices.reduce((acc, d) => ({
      used: acc.used + Number(d.running || 0), total: acc.total + Number(d.slots || 0),
      held: acc.held + Number(d.held || 0),
    }), { used: 0, total: 0, held: 0 });
    this.paint();
  }

  /** Apply a "queue" event: {paused, counts, total}. */
  setQueue(q) {
    if (!q) return;
    if (q.paused !== undefined) this.paused = Boolean(q.paused);
    if (q.counts) {
      this.counts = q.counts;
      this.liveCounts = true;
    }
    this.paint();
  }

  /** Re-fetch the counts after a change, unless the server pushes them itself. */
  changed() {
    if (!this.liveCounts) this.refresh();
  }

  flush() {
    const c = this.counts;
    for (const state of ["queued", "running", "succeeded", "failed"]) {
      const node = document.querySelector(`[data-count="${state}"]`);
      if (node) setText(node, (c[state] || 0).toLocaleString());
    }
    const other = OTHER.map((s) => c[s] || 0);
    setText(document.querySelector('[data-count="other"]'), other.reduce((a, b) => a + b, 0).toLocaleString());
    setText(document.querySelector('[data-count="other-detail"]'),
      OTHER.map((s, i) => `${other[i].toLocaleString()} ${s}`).join(" · "));
    setText(document.querySelector('[data-count="slots"]'), `${this.slots.used} / ${this.slots.total}`);
    // Slots held back by evidence (memory, a fault) are not free for the waiting tasks.
    const held = this.slots.held || 0;
    const free = Math.max(0, this.slots.total - this.slots.used - held);
    setText(document.querySelector('[data-count="slots-detail"]'),
      this.slots.total ? `${free} free${held ? ` · ${held} held back (see devices)` : ""}${this.paused ? " · queue paused" : ""}` : "no slots: set a limit below");
    const failedTile = document.querySelector('.tile[data-state="failed"]');
    if (failedTile) failedTile.classList.toggle("is-alert", (c.failed || 0) > 0);
    if (this.control && this.paused !== null) {
      this.control.hidden = false;
      this.control.dataset.paused = this.paused ? "1" : "0";
      setText(document.getElementById("queue-state"), this.paused ? "Queue paused: nothing new starts" : "Queue running");
      if (this.toggle) {
        this.toggle.hidden = !may("queue");
        setText(this.toggle, this.paused ? "Resume queue" : "Pause queue");
      }
    }
  }

  async flipQueue() {
    if (!may("queue")) return;
    const pause = !this.paused;
    this.toggle.disabled = true;
    try {
      await post(pause ? "/queue/pause" : "/queue/resume");
      this.setQueue({ paused: pause });
      toast(pause ? "Queue paused: running tasks go on, nothing new starts" : "Queue resumed", "ok", 3000);
    } catch (e) {
      toast(`Queue not ${pause ? "paused" : "resumed"}: ${e.message}`, "error");
    } finally {
      this.toggle.disabled = false;
    }
  }
}

/** Keep the batch whose timeline is shown in the address (?timeline=ID). */
function timelineInUrl(id) {
  const q = new URLSearchParams(location.search);
  if (id) q.set("timeline", String(id));
  else q.delete("timeline");
  const qs = q.toString();
  history.replaceState(null, "", location.pathname + (qs ? `?${qs}` : "") + location.hash);
}

function main() {
  const summary = new Summary();
  const timeline = new Timeline(document.getElementById("timeline-panel"), {
    onClose: () => timelineInUrl(null),
  });
  const tasks = new TasksTable(document.getElementById("tasks"), {
    onFilter: (f) => batches.select(f.batch),
  });
  const batches = new BatchesPanel(document.getElementById("batches"), {
    meta: document.getElementById("batches-meta"),
    onBatches: (list) => {
      tasks.setBatches(list);
      batches.select(tasks.filter.batch);
    },
    onShowTasks: (id) => {
      tasks.setFilter({ batch: String(id), state: "" });
      document.getElementById("tasks").scrollIntoView({ behavior: "smooth", block: "start" });
    },
    onTimeline: (id) => {
      timeline.show(id, { scroll: true });
      timelineInUrl(id);
    },
  });
  // Without the right to submit, the form is not shown and never wired.
  const form = !may("submit") ? null : new BatchForm(document.getElementById("batch-form"), {
    onSuggest: (what) => {
      suggest.open(what);
      document.getElementById("devices-panel").scrollIntoView({ behavior: "smooth", block: "start" });
    },
    onStarted: (batch) => {
      batches.refresh.now();
      summary.refresh();
      if (tasks.filter.batch) tasks.setFilter({ batch: String(batch.id), state: "" });
      else tasks.refresh.now();
    },
  });
  const gpuHistory = new History();
  const devices = new DevicesPanel(document.getElementById("devices"), {
    history: gpuHistory,
    onChange: (list) => {
      if (form) form.setDevices(list);
      summary.setDevices(list);
    },
  });
  const suggest = new SuggestSlots(document.getElementById("suggest-box"),
    document.getElementById("suggest-button"), devices);
  document.getElementById("history-window").addEventListener("change", (e) => {
    devices.setWindow(Number(e.target.value));
  });
  const loadHistory = async () => {
    try {
      gpuHistory.load(await get("/devices/history", { minutes: 60 }));
      devices.historyChanged();
    } catch (e) {
      console.warn("cannot load the device history", e);
    }
  };
  const loadProgress = async () => {
    try {
      tasks.setProgress((await get("/progress")).tasks);
    } catch (e) {
      console.warn("cannot load task progress", e);
    }
  };

  for (const tile of document.querySelectorAll(".tile[data-filter]")) {
    tile.addEventListener("click", (e) => {
      e.preventDefault();
      const state = tile.dataset.filter;
      tasks.setFilter({ state: tasks.filter.state === state ? "" : state });
      document.getElementById("tasks").scrollIntoView({ behavior: "smooth", block: "start" });
    });
  }

  const loadDevices = async () => {
    try {
      const data = await get("/devices");
      devices.setDevices(data.devices || []);
    } catch (e) {
      const box = document.getElementById("devices");
      box.setAttribute("aria-busy", "false");
      box.replaceChildren(Object.assign(document.createElement("p"), {
        className: "error-text", textContent: `Cannot load devices: ${e.message}`,
      }));
    }
  };

  live.on("task", (t) => {
    tasks.onTask(t);
    batches.onTask(t);
    timeline.onTask(t);
    summary.changed();
  });
  live.on("history", (sample) => {
    gpuHistory.add(sample);
    devices.historyChanged();
  });
  live.on("progress", (p) => tasks.onProgress(p));
  live.on("batch", (b) => {
    batches.onBatch(b);
    summary.changed();
  });
  // A burst too large to send task by task: fetch what is shown instead.
  live.on("tasks", () => {
    tasks.refresh();
    batches.refresh();
    summary.refresh();
  });
  live.on("devices", (data) => devices.setDevices((data && data.devices) || data || []));
  live.on("slots", (usage) => devices.setSlots(usage));
  live.on("queue", (q) => summary.setQueue(q));
  // After a reconnect (server restart, network drop) everything is fetched again.
  live.onResync((again) => {
    if (!again) return;
    loadDevices().then(loadHistory);
    batches.refresh.now();
    tasks.refresh.now();
    summary.refresh();
    loadProgress();
    if (timeline.batchId !== null) timeline.refresh.now();
  });

  loadDevices().then(loadHistory);
  loadProgress();
  const shown = new URLSearchParams(location.search).get("timeline") || bootstrap().batch;
  if (shown && /^\d+$/.test(String(shown))) timeline.show(shown);
  batches.refresh.now();
  tasks.refresh.now();
  summary.refresh.now();
  live.connect();
  window.slotrun = { tasks, batches, devices, summary, form, timeline, suggest, history: gpuHistory };
}

main();
