// The dashboard page: wires the panels to the API client and the live Socket.IO events.

import * as api from "./api.js";
import { BatchForm } from "./batchform.js";
import { BatchesPanel } from "./batches.js";
import { History } from "./charts.js";
import { DevicesPanel, SuggestSlots } from "./devices.js";
import * as live from "./live.js";
import { Summary } from "./summary.js";
import { TasksTable } from "./tasks.js";
import { Timeline } from "./timeline.js";
import { bootstrap, h, may, remember, remembered, throttle } from "./util.js";

/** Keep the batch whose timeline is shown in the address (?timeline=ID). */
function timelineInUrl(id) {
  const q = new URLSearchParams(location.search);
  if (id) q.set("timeline", String(id));
  else q.delete("timeline");
  const qs = q.toString();
  history.replaceState(null, "", location.pathname + (qs ? `?${qs}` : "") + location.hash);
}

function main() {
  // Queued rows say when they wait for the queue's pause rather than for a slot.
  const summary = new Summary({ onQueue: (paused, pause) => tasks.setQueue(paused, pause) });
  const timeline = new Timeline(document.getElementById("timeline-panel"), {
    onClose: () => timelineInUrl(null),
  });
  let form = null;
  const tasks = new TasksTable(document.getElementById("tasks"), {
    onFilter: (f) => {
      batches.select(f.batch);
      batches.setOwner(f.owner);
    },
    onDemo: (pattern) => form && form.fill(pattern),
  });
  const batches = new BatchesPanel(document.getElementById("batches"), {
    meta: document.getElementById("batches-meta"),
    owner: tasks.filter.owner,
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
  const loadOwners = throttle(async () => {
    try {
      tasks.setOwners((await api.owners()).owners);
    } catch (e) {
      console.warn("cannot load the owners", e);
    }
  }, 2000);
  // Without the right to submit, the form is not shown and never wired.
  form = !may("submit") ? null : new BatchForm(document.getElementById("batch-form"), {
    onSuggest: (what) => {
      suggest.open(what);
      document.getElementById("devices-panel").scrollIntoView({ behavior: "smooth", block: "start" });
    },
    onStarted: () => {
      batches.refresh.now();
      summary.refresh();
      loadOwners();
      if (tasks.filter.batch) tasks.setFilter({ batch: "", state: "" });
      else tasks.refresh.now();
    },
  });
  const gpuHistory = new History();
  const devices = new DevicesPanel(document.getElementById("devices"), {
    history: gpuHistory,
    charts: document.getElementById("device-charts"),
    onChange: (list) => {
      if (form) form.setDevices(list);
    },
  });
  const suggest = new SuggestSlots(document.getElementById("suggest-box"),
    document.getElementById("suggest-button"), devices);
  const windowSwitch = document.getElementById("history-window");
  windowSwitch.addEventListener("change", (e) => devices.setWindow(Number(e.target.value)));
  // The charts are one click away; whether they are open is remembered in this browser.
  const chartsButton = document.getElementById("charts-button");
  const showCharts = (open) => {
    devices.showCharts(open);
    windowSwitch.hidden = !open;
    chartsButton.setAttribute("aria-expanded", String(open));
    chartsButton.classList.toggle("is-on", open);
    remember("charts", open ? "1" : null);
  };
  chartsButton.addEventListener("click", () => showCharts(!devices.chartsOpen()));

  const loadHistory = async () => {
    try {
      gpuHistory.load(await api.deviceHistory(60));
      devices.historyChanged();
    } catch (e) {
      console.warn("cannot load the device history", e);
    }
  };
  const loadProgress = async () => {
    try {
      tasks.setProgress((await api.progress()).tasks);
    } catch (e) {
      console.warn("cannot load task progress", e);
    }
  };

  for (const tile of document.querySelectorAll(".tile[data-filter]")) {
    tile.addEventListener("click", (e) => {
      e.preventDefault();
      const state = tile.dataset.filter;
      tasks.setFilter({ state: tasks.filter.state === state ? "" : state });
      document.getElementById("tasks").scrollIntoView({ behavior: "smooth", block: "nearest" });
    });
  }

  const loadDevices = async () => {
    try {
      devices.setDevices((await api.devices()).devices);
    } catch (e) {
      const box = document.getElementById("devices");
      box.setAttribute("aria-busy", "false");
      box.replaceChildren(h("p.error-text", null, `Cannot load devices: ${e.message}`));
    }
  };

  live.on("task", (t) => {
    tasks.onTask(t);
    batches.onTask(t);
    timeline.onTask(t);
  });
  live.on("history", (sample) => {
    gpuHistory.add(sample);
    devices.historyChanged();
  });
  live.on("progress", (p) => tasks.onProgress(p));
  live.on("lines", (msg) => tasks.onLines(msg));
  live.on("batch", (b) => {
    batches.onBatch(b);
    loadOwners();
  });
  // A burst too large to send task by task: fetch what is shown instead.
  live.on("tasks", () => {
    tasks.refresh();
    batches.refresh();
  });
  live.on("devices", (data) => devices.setDevices(data.devices));
  live.on("slots", (usage) => devices.setSlots(usage));
  live.on("queue", (q) => summary.setQueue(q));
  // After a reconnect (server restart, network drop) everything is fetched again.
  live.onResync((again) => {
    if (!again) {
      // The first load came before the connection was up: what changed in between (a task's
      // end) reached no one, so the lists are read once more.
      tasks.refresh();
      batches.refresh();
      summary.refresh();
      return;
    }
    loadDevices().then(loadHistory);
    batches.refresh.now();
    tasks.refresh.now();
    summary.refresh();
    loadProgress();
    loadOwners();
    if (timeline.batchId !== null) timeline.refresh.now();
  });

  loadDevices().then(() => {
    if (remembered("charts") === "1") showCharts(true);
    return loadHistory();
  });
  loadProgress();
  loadOwners();
  const shown = new URLSearchParams(location.search).get("timeline") || bootstrap().batch;
  if (shown && /^\d+$/.test(String(shown))) timeline.show(shown);
  batches.refresh.now();
  tasks.refresh.now();
  summary.refresh.now();
  live.connect();
  window.slotrun = { tasks, batches, devices, summary, form, timeline, suggest, history: gpuHistory };
}

main();
