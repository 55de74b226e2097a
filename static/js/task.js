// A task's page: facts, actions, config, command, attempts, live log tail and results browser.

import * as api from "./api.js";
import * as live from "./live.js";
import { LogView, MAX_LINES, describeDropped } from "./logview.js";
import { confirmCancelTask, isStale, progressLeft, taskDuration } from "./tasks.js";
import {
  ACTIVE_STATES, RETRYABLE_STATES, bootstrap, deviceLabel, formatBytes, formatDuration, formatFullTime,
  formatTime, h, mayAct, rafBatch, root, setText, stateBadge, toast,
} from "./util.js";

const TAIL_LINES = Number(bootstrap().log_tail) || 500;

const page = document.getElementById("task-page");
const taskId = Number(page.dataset.task);
const $ = (id) => document.getElementById(id);

let task = null;
let progress = null; // {done, total} from the log's progress lines
let expected = null; // {need, source}: the memory this task's family is expected to need
let actionKey = "";
let logStarted = false; // true once some log text (REST or live) has been shown

// -- facts and actions --------------------------------------------------------------------------

const paintTask = rafBatch(() => renderTask());

function renderTask() {
  if (!task) return;
  setText($("task-config"), task.config || "");
  document.title = `slotrun · ${task.state} · ${(task.config || "").replace(/^configs\//, "")}`;
  const badge = $("task-state");
  badge.dataset.state = task.state;
  setText(badge, task.state);
  const batch = task.batch;
  if (batch !== undefined && batch !== null) {
    const crumb = $("crumb-batch");
    crumb.hidden = false;
    $("crumb-batch-sep").hidden = false;
    crumb.href = `${root()}/?batch=${batch}&timeline=${batch}#tasks`;
    crumb.title = "The batch's tasks and timeline";
    setText(crumb, `Batch #${batch}`);
  }
  const fact = (name, text, title) => {
    const node = page.querySelector(`[data-fact="${name}"]`);
    setText(node, text === "" || text === null || text === undefined ? "–" : text);
    if (title !== undefined) node.title = title;
  };
  fact("device", deviceLabel(task));
  fact("started", formatTime(task.started_at), formatFullTime(task.started_at));
  fact("finished", formatTime(task.finished_at), formatFullTime(task.finished_at));
  fact("duration", formatDuration(taskDuration(task)));
  fact("exit", task.exit_code ?? "");
  fact("attempts", task.attempts);
  fact("owner", task.owner || "");
  renderProgress();
  renderMemory();
  $("task-insight").hidden = page.querySelector('[data-wrap="progress"]').hidden &&
    page.querySelector('[data-wrap="memory"]').hidden;
  const msg = $("task-message");
  msg.hidden = !task.message;
  setText(msg, task.message || "");
  msg.dataset.state = task.state;

  const key = `${task.state}|${mayAct(task.owner)}`;
  if (key !== actionKey) {
    actionKey = key;
    const buttons = [];
    if (mayAct(task.owner) && ACTIVE_STATES.has(task.state)) {
      buttons.push(h("button.btn.btn-danger.act", { type: "button", onclick: () => act("cancel") }, "Cancel task"));
    }
    if (mayAct(task.owner) && RETRYABLE_STATES.has(task.state)) {
      buttons.push(h("button.btn.btn-primary.act", { type: "button", onclick: () => act("retry") }, "Retry"));
    }
    $("task-actions").replaceChildren(...buttons);
  }
  setLogStatus();
}

function renderProgress() {
  const wrap = page.querySelector('[data-wrap="progress"]');
  const p = progress;
  wrap.hidden = !p;
  if (!p) return;
  const bar = wrap.querySelector(".task-progress");
  const frac = Math.max(0, Math.min(1, p.done / p.total));
  bar.querySelector(".task-progress-fill").style.width = `${(frac * 100).toFixed(1)}%`;
  bar.setAttribute("aria-valuemax", String(p.total));
  bar.setAttribute("aria-valuenow", String(p.done));
  bar.dataset.state = task.state;
  const left = task.state === "running" ? progressLeft(task, p) : null;
  setText(bar.querySelector(".task-progress-text"),
    `${p.done.toLocaleString()} / ${p.total.toLocaleString()}${left !== null ? ` · ~${formatDuration(left)} left` : ""}`);
}

function renderMemory() {
  const wrap = page.querySelector('[data-wrap="memory"]');
  const parts = [];
  const attempts = task.attempts_list || [];
  const last = attempts.length ? attempts[attempts.length - 1] : null;
  if (task.state === "running" && task.memory_now !== undefined && task.memory_now !== null) {
    parts.push(`${formatBytes(task.memory_now)} now`);
  }
  const peak = task.state === "running" ? task.memory_peak : last && last.peak_memory;
  if (peak) parts.push(`peak ${formatBytes(peak)}`);
  if (expected && expected.need) parts.push(`expects ${formatBytes(expected.need)} (${expected.source})`);
  wrap.hidden = !parts.length;
  setText(page.querySelector('[data-fact="memory"]'), parts.join(" · "));
}

async function loadProgress() {
  try {
    const p = await api.taskProgress(taskId);
    progress = p.done !== null ? { done: p.done, total: p.total } : null;
    paintTask();
  } catch (e) {
    if (e.status !== 404) console.warn("progress unavailable", e);
  }
}

async function loadExpected() {
  if (!task || !task.config) return;
  if (task.memory) {
    expected = { need: task.memory, source: "declared" };
    return;
  }
  const gpu = (task.devices || []).some((d) => d !== "cpu");
  if (!gpu) return;
  try {
    const escaped = task.config.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const data = await api.predictMemory(`^${escaped}$`);
    const fam = data.families[0];
    expected = fam && fam.need ? { need: fam.need, source: fam.source } : null;
    paintTask();
  } catch (e) {
    expected = null;
  }
}

async function act(action) {
  if (action === "cancel" && !(await confirmCancelTask(task))) return;
  try {
    const t = action === "cancel" ? await api.cancelTask(taskId) : await api.retryTask(taskId);
    if (!isStale(task, t)) updateTask(t);
    toast(action === "cancel" ? "Task cancelled" : "Task queued again", "ok", 2500);
  } catch (e) {
    toast(`Not done: ${e.message}`, "error");
  }
}

function updateTask(t) {
  const wasRunning = task && task.state === "running";
  task = { ...(task || {}), ...t };
  paintTask();
  if (t.state && t.state !== "running" && wasRunning) {
    // Finished: the attempts table, results and the final log lines changed.
    loadTask();
    loadFiles(currentDir);
    loadProgress();
  } else if (t.state === "running" && !wasRunning) {
    loadTask();
  }
}

async function loadTask() {
  try {
    const t = await api.task(taskId);
    const first = !task || !task.config;
    task = { ...(task || {}), ...t };
    if (first) loadExpected();
    $("task-error").hidden = true;
    renderTask();
    renderDetails();
  } catch (e) {
    const err = $("task-error");
    err.hidden = false;
    setText(err, e instanceof api.ApiError && e.status === 404
      ? `Task ${taskId} does not exist.`
      : `Cannot load task ${taskId}: ${e.message}`);
  }
}

function renderDetails() {
  setText($("task-config-text"), task.config_text ?? "(the config as submitted is not available)");
  const argv = task.argv;
  setText($("task-command"), task.command ||
    (Array.isArray(argv) ? argv.map(shellQuote).join(" ") : "(not started yet: the command is set when it starts)"));
  const rows = [];
  for (const a of task.attempts_list || []) {
    rows.push(h("tr", null,
      h("td.num", null, a.number),
      h("td", null, stateBadge(a.state)),
      h("td.mono", { title: a.node ? `on ${a.node}` : "" }, deviceLabel(a)),
      h("td", { title: formatFullTime(a.started_at) }, formatTime(a.started_at)),
      h("td.num", null, formatDuration(a.duration)),
      h("td.num.mono", null, a.exit_code ?? "")));
    const note = [a.message, a.peak_memory ? `peak GPU memory ${formatBytes(a.peak_memory)}` : ""].filter(Boolean).join(" · ");
    if (note) rows.push(h("tr.note-row", null, h("td"), h("td.note-cell", { colspan: "5" }, note)));
  }
  $("attempts-body").replaceChildren(...(rows.length ? rows
    : [h("tr", null, h("td.empty", { colspan: "6" }, "No attempt yet: the task is waiting for a free slot."))]));
}

function shellQuote(arg) {
  const s = String(arg);
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

// -- live log -----------------------------------------------------------------------------------

const logView = new LogView($("log"), {
  onTrim: (dropped) => describeDropped($("log-note"), dropped, MAX_LINES),
});
const autoScroll = $("log-autoscroll");
autoScroll.addEventListener("change", () => {
  logView.autoScroll = autoScroll.checked;
  if (autoScroll.checked) logView.scrollToEnd();
});
logView.onScrollAway = () => {
  autoScroll.checked = false;
  logView.autoScroll = false;
};
$("log-wrap").addEventListener("change", (e) => $("log").classList.toggle("wrap", e.target.checked));
let truncatedNote = "";

function setLogStatus() {
  const state = task ? task.state : null;
  let text;
  if (!live.connected()) text = "not live: reconnecting…";
  else if (state === "running") text = "live";
  else if (state === "queued") text = "waiting for a slot";
  else text = "finished";
  const node = $("log-status");
  setText(node, text + truncatedNote);
  node.dataset.state = text === "live" ? "live" : "idle";
}

live.on("log", (msg) => {
  if (msg.task !== taskId) return;
  if (msg.reset) {
    logView.clear();
  }
  if (msg.truncated && !msg.reset) {
    logView.append("\n… (output too fast: some lines skipped here; the full log has them) …\n");
  }
  logView.append(msg.data);
  logStarted = true;
});

live.on("task", (t) => {
  if (t.id === taskId) updateTask(t);
});

// Changes this page missed (a burst too large to send, or a connection that fell behind).
live.on("tasks", () => loadTask());

// A running GPU task's memory, as the engine samples it, pushed to the log's followers.
live.on("memory", (m) => {
  if (m.task !== taskId || !task) return;
  task = { ...task, memory_now: m.memory_now, memory_peak: m.memory_peak };
  paintTask();
});

live.on("progress", (p) => {
  if (p.task !== taskId) return;
  progress = { done: p.done, total: p.total };
  paintTask();
});

live.onResync((again) => {
  live.emit("follow", { task: taskId, lines: TAIL_LINES }, (answer) => {
    if (answer && answer.error) setText($("log-status"), `log not available: ${answer.error}`);
  });
  setLogStatus();
  if (again) {
    loadTask();
    loadFiles(currentDir);
    loadProgress();
  } else if (!task || ACTIVE_STATES.has(task.state)) {
    // Loaded before the connection was up: a change in between (its end) came to no one.
    loadTask();
  }
});

async function loadLogOverRest() {
  // Without a live connection, show the last lines once (the live follow replaces them later).
  if (logStarted || live.connected()) return;
  try {
    const data = await api.taskLog(taskId, TAIL_LINES);
    if (logStarted || live.connected()) return;
    logView.clear();
    logView.append(data.data);
    logStarted = true;
  } catch (e) {
    if (e.status !== 404) setText($("log-status"), `log unavailable: ${e.message}`);
  }
}

// -- results browser ----------------------------------------------------------------------------

let currentDir = "";

async function loadFiles(dir) {
  currentDir = dir;
  const box = $("files");
  let data;
  try {
    data = await api.files(taskId, dir);
  } catch (e) {
    box.replaceChildren(h("p.empty", null, e.status === 404
      ? (dir ? "This folder no longer exists." : "No results yet: the folder appears when the task writes to it.")
      : `Cannot list results: ${e.message}`));
    renderPath(dir);
    return;
  }
  // The server lists folders first, then files, each by name.
  const entries = data.entries;
  renderPath(dir);
  if (!entries.length) {
    box.replaceChildren(h("p.empty", null, dir ? "This folder is empty." : "No result files yet."));
    return;
  }
  const rows = entries.map((e) => {
    const folder = e.type === "dir";
    const name = folder
      ? h("button.link-button.file-dir", { type: "button", onclick: () => loadFiles(e.path) }, `${e.name}/`)
      : h("a.file-link", { href: api.fileUrl(taskId, e.path), download: e.name, title: `Download ${e.path}` }, e.name);
    return h("tr", null,
      h("td.file-name", null, fileIcon(folder), name),
      h("td.num.muted", null, folder ? "" : formatBytes(e.size)),
      h("td.muted", { title: formatFullTime(e.mtime) }, formatTime(e.mtime)));
  });
  box.replaceChildren(h("table.files-table", null,
    h("thead", null, h("tr", null, h("th", { scope: "col" }, "Name"), h("th.num", { scope: "col" }, "Size"), h("th", { scope: "col" }, "Modified"))),
    h("tbody", null, rows)));
  if (data.truncated) box.append(h("p.empty", null, "Only the first 5,000 entries are listed; the .zip has them all."));
}

const SVG = "http://www.w3.org/2000/svg";

/** Return a folder or document icon (an outline that reads as a file, not a checkbox). */
function fileIcon(folder) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("class", "file-icon");
  svg.setAttribute("aria-hidden", "true");
  svg.dataset.kind = folder ? "dir" : "file";
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", folder
    ? "M1.5 3.5h4.2l1.5 1.6h7.3v8.4h-13z"
    : "M3.5 1.5h6l3 3v10h-9z M9.5 1.5v3h3");
  svg.append(path);
  return svg;
}

function renderPath(dir) {
  const parts = dir.split("/").filter(Boolean);
  const crumbs = [h("button.link-button", { type: "button", onclick: () => loadFiles("") }, "results")];
  parts.forEach((p, i) => {
    crumbs.push(h("span.muted", { "aria-hidden": "true" }, " / "));
    const path = parts.slice(0, i + 1).join("/");
    crumbs.push(i === parts.length - 1 ? h("span", { "aria-current": "location" }, p)
      : h("button.link-button", { type: "button", onclick: () => loadFiles(path) }, p));
  });
  $("files-path").replaceChildren(...crumbs);
}

// -- start --------------------------------------------------------------------------------------

setInterval(() => {
  if (task && task.state === "running") {
    setText(page.querySelector('[data-fact="duration"]'), formatDuration(taskDuration(task)));
    if (progress) renderProgress();
  }
}, 1000);

$("files-refresh").addEventListener("click", () => loadFiles(currentDir));
loadTask();
loadProgress();
loadFiles("");
live.connect();
setTimeout(loadLogOverRest, 1500);
setInterval(setLogStatus, 2000);
