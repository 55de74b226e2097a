// Tasks table: filter by batch and state, sort (by the server, across pages), paginate, patch
// rows live, cancel and retry.

import { get, post } from "./api.js";
import {
  ACTIVE_STATES, RETRYABLE_STATES, bootstrap, deviceLabel, formatDuration, formatFullTime, formatTime,
  h, mayAct, rafBatch, root, setText, stateBadge, throttle, toast,
} from "./util.js";

// The API's sort keys (GET /tasks?sort=KEY&order=asc|desc); these start descending.
const SORTABLE = ["id", "config", "batch", "state", "device", "started_at", "duration", "exit_code"];
const NEWEST_FIRST = new Set(["id", "started_at", "duration"]);
// Sort keys a task's live change can move it on (its row then needs the server's order).
const LIVE_KEYS = new Set(["state", "device", "started_at", "duration", "exit_code"]);

/** Seconds to add to the browser's clock to get the server's (0 when unknown). */
function clockSkew() {
  const t = bootstrap().server_time;
  if (typeof t !== "number") return 0;
  const skew = t - bootstrap.loadedAt;
  return Math.abs(skew) > 2 ? skew : 0;
}
bootstrap.loadedAt = Date.now() / 1000;

export function taskDuration(task) {
  if (task.started_at === null || task.started_at === undefined) return null;
  if (task.state === "running" && typeof task.started_at === "number") {
    return Date.now() / 1000 + clockSkew() - task.started_at;
  }
  return task.duration ?? null;
}

const STAGE = { queued: 0, running: 1 }; // any other state is an end (2)

/**
 * Return true when ``incoming`` is an older view of the task than ``current``: an action's
 * answer can arrive after the live event that followed it (a cancel answers "running" while
 * the process stops; the "cancelled" event may come first). Newer means queued again later,
 * a later attempt, or further along queued -> running -> ended.
 */
export function isStale(current, incoming) {
  if (!current || !incoming) return false;
  const key = (t) => [Number(t.queued_at) || 0, Number(t.attempts) || 0, STAGE[t.state] ?? 2];
  const a = key(current);
  const b = key(incoming);
  for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) return b[i] < a[i];
  return false;
}

/** Return the seconds a running task probably has left from its progress, or null. */
export function progressLeft(task, p) {
  const elapsed = taskDuration(task);
  if (!p || !p.done || elapsed === null || p.done >= p.total) return null;
  return (elapsed * (p.total - p.done)) / p.done;
}

export class TasksTable {
  constructor(section, { onFilter } = {}) {
    this.section = section;
    this.onFilter = onFilter || (() => {});
    this.$ = (id) => section.querySelector(`#${id}`);
    this.body = this.$("tasks-body");
    this.empty = this.$("tasks-empty");
    this.meta = this.$("tasks-meta");
    this.batchSelect = this.$("filter-batch");
    this.stateSelect = this.$("filter-state");
    this.perPage = Number(bootstrap().page_size) || 50;
    this.filter = { batch: "", state: "" };
    this.page = 1;
    this.pages = 1;
    this.total = 0;
    this.sort = { key: "id", dir: "desc" };
    this.rows = new Map(); // task id -> {tr, task, cells}
    this.progress = new Map(); // running task id -> {done, total} from "progress" events
    this.dirty = new Set();
    this.paint = rafBatch(() => this.flush());
    this.refresh = throttle(() => this.load(), 700);
    this.seq = 0;
    this.readFromUrl();

    this.batchSelect.addEventListener("change", () => this.setFilter({ batch: this.batchSelect.value }));
    this.stateSelect.addEventListener("change", () => this.setFilter({ state: this.stateSelect.value }));
    this.$("filter-clear").addEventListener("click", () => this.setFilter({ batch: "", state: "" }));
    this.$("page-first").addEventListener("click", () => this.go(1));
    this.$("page-prev").addEventListener("click", () => this.go(this.page - 1));
    this.$("page-next").addEventListener("click", () => this.go(this.page + 1));
    this.$("page-last").addEventListener("click", () => this.go(this.pages));
    for (const th of section.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => this.setSort(th.dataset.sort));
    }
    this.body.addEventListener("click", (e) => this.onClick(e));
    setInterval(() => this.tick(), 1000);
  }

  readFromUrl() {
    const q = new URLSearchParams(location.search);
    // /batches/<id> renders this page with the batch in the bootstrap data.
    this.filter.batch = q.get("batch") || (bootstrap().batch ? String(bootstrap().batch) : "");
    this.filter.state = q.get("state") || "";
    this.page = Math.max(1, Number(q.get("page")) || 1);
    const sort = q.get("sort");
    if (sort && SORTABLE.includes(sort.replace(/^-/, ""))) {
      this.sort = { key: sort.replace(/^-/, ""), dir: sort.startsWith("-") ? "desc" : "asc" };
    }
    this.syncControls();
  }

  writeUrl() {
    const q = new URLSearchParams(location.search);
    const set = (k, v) => (v ? q.set(k, v) : q.delete(k));
    set("batch", this.filter.batch);
    set("state", this.filter.state);
    set("page", this.page > 1 ? this.page : "");
    const sort = `${this.sort.dir === "desc" ? "-" : ""}${this.sort.key}`;
    set("sort", sort === "-id" ? "" : sort);
    const qs = q.toString();
    history.replaceState(null, "", location.pathname + (qs ? `?${qs}` : "") + location.hash);
  }

  syncControls() {
    if (this.filter.batch && !this.batchSelect.querySelector(`option[value="${CSS.escape(this.filter.batch)}"]`)) {
      this.batchSelect.append(h("option", { value: this.filter.batch }, `#${this.filter.batch}`));
    }
    this.batchSelect.value = this.filter.batch;
    this.stateSelect.value = this.filter.state;
    this.$("filter-clear").hidden = !this.filter.batch && !this.filter.state;
    for (const th of this.section.querySelectorAll("th[data-sort]")) {
      if (th.dataset.sort === this.sort.key) {
        th.setAttribute("aria-sort", this.sort.dir === "asc" ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    }
  }

  /** Offer these batches in the batch filter (newest first). */
  setBatches(batches) {
    const current = this.batchSelect.value || this.filter.batch;
    const options = [h("option", { value: "" }, "All batches")];
    for (const b of batches) {
      options.push(h("option", { value: String(b.id) }, `#${b.id} ${b.pattern ? `· ${b.pattern}` : ""}`.slice(0, 60)));
    }
    if (current && !batches.some((b) => String(b.id) === current)) {
      options.push(h("option", { value: current }, `#${current}`));
    }
    this.batchSelect.replaceChildren(...options);
    this.batchSelect.value = current;
  }

  setFilter(change) {
    Object.assign(this.filter, change);
    this.page = 1;
    this.syncControls();
    this.writeUrl();
    this.onFilter(this.filter);
    this.refresh.now();
  }

  setSort(key) {
    if (this.sort.key === key) this.sort.dir = this.sort.dir === "asc" ? "desc" : "asc";
    else this.sort = { key, dir: NEWEST_FIRST.has(key) ? "desc" : "asc" };
    this.page = 1;
    this.syncControls();
    this.writeUrl();
    this.refresh.now();
  }

  go(page) {
    const p = Math.max(1, Math.min(this.pages || 1, page));
    if (p === this.page) return;
    this.page = p;
    this.writeUrl();
    this.refresh.now();
  }

  /** Fetch the current page over REST and redraw the table. */
  async load() {
    const seq = ++this.seq;
    const params = {
      batch: this.filter.batch, state: this.filter.state, page: this.page, per_page: this.perPage,
      sort: this.sort.key, order: this.sort.dir,
    };
    let data;
    try {
      data = await get("/tasks", params);
    } catch (e) {
      if (seq !== this.seq) return;
      this.showError(e.message);
      return;
    }
    if (seq !== this.seq) return;
    this.total = data.total ?? (data.tasks || []).length;
    this.pages = Math.max(1, data.pages ?? Math.ceil(this.total / this.perPage));
    if (this.page > this.pages) {
      this.page = this.pages;
      this.writeUrl();
      this.refresh();
      return;
    }
    // The server sorted the whole list (then by id), so pages follow one another.
    this.render(data.tasks || []);
  }

  render(tasks) {
    this.section.querySelector(".table-wrap").removeAttribute("aria-busy");
    const keep = new Map();
    const frag = [];
    for (const t of tasks) {
      let row = this.rows.get(t.id);
      if (row) {
        row.task = { ...row.task, ...t };
      } else {
        row = this.buildRow(t);
      }
      this.patchRow(row);
      keep.set(t.id, row);
      frag.push(row.tr);
    }
    this.rows = keep;
    this.body.replaceChildren(...frag);
    this.dirty.clear();
    const filtered = this.filter.batch || this.filter.state;
    if (!tasks.length) {
      this.empty.hidden = false;
      this.empty.replaceChildren(filtered
        ? h("p", null, "No task matches these filters. ",
          h("button.btn.btn-sm", { type: "button", onclick: () => this.setFilter({ batch: "", state: "" }) }, "Clear filters"))
        : h("p", null, "No tasks yet. Start a batch: type a pattern under ", h("a", { href: "#new-batch-panel" }, "New batch"), "."));
    } else {
      this.empty.hidden = true;
    }
    const first = tasks.length ? (this.page - 1) * this.perPage + 1 : 0;
    setText(this.meta, tasks.length
      ? `${first.toLocaleString()}–${(first + tasks.length - 1).toLocaleString()} of ${this.total.toLocaleString()}`
      : `${this.total.toLocaleString()} tasks`);
    setText(this.$("page-info"), `Page ${this.page.toLocaleString()} of ${this.pages.toLocaleString()}`);
    this.$("page-first").disabled = this.page <= 1;
    this.$("page-prev").disabled = this.page <= 1;
    this.$("page-next").disabled = this.page >= this.pages;
    this.$("page-last").disabled = this.page >= this.pages;
    // "Newer" / "Older" only where the order is by age, newest first.
    const byAge = this.sort.key === "id" && this.sort.dir === "desc";
    setText(this.$("page-prev"), byAge ? "‹ Newer" : "‹ Previous");
    setText(this.$("page-next"), byAge ? "Older ›" : "Next ›");
    this.$("pager").hidden = this.pages <= 1;
  }

  showError(message) {
    this.rows.clear();
    this.body.replaceChildren();
    this.empty.hidden = false;
    this.empty.replaceChildren(h("p.error-text", { role: "alert" }, `Cannot load tasks: ${message} `,
      h("button.btn.btn-sm", { type: "button", onclick: () => this.refresh.now() }, "Try again")));
  }

  buildRow(t) {
    const taskHref = `${root()}/tasks/${t.id}`;
    const cells = {
      id: h("td.num", null, h("a", { href: taskHref }, String(t.id))),
      config: h("td.config-cell", null, h("a.mono", { href: taskHref })),
      batch: h("td.num", null, h("button.link-button", { type: "button", dataset: { action: "filter-batch" }, title: "Show only this batch" })),
      state: h("td.state-cell"),
      device: h("td.mono.device-cell"),
      started: h("td.time-cell"),
      duration: h("td.num.duration-cell"),
      exit: h("td.num.mono"),
      actions: h("td.actions-cell"),
    };
    const tr = h("tr", { dataset: { task: String(t.id) } }, ...Object.values(cells));
    const prog = h("span.task-progress", { hidden: true, role: "progressbar", "aria-valuemin": "0" },
      h("span.task-progress-bar", { "aria-hidden": "true" }, h("span.task-progress-fill")),
      h("span.task-progress-text"));
    return { tr, task: { ...t }, cells, key: {}, prog };
  }

  patchRow(row) {
    const t = row.task;
    const { cells, key } = row;
    row.tr.dataset.state = t.state;
    const config = cells.config.firstChild;
    setText(config, (t.config || "").replace(/^configs\//, ""));
    config.title = t.message ? `${t.config}\n${t.message}` : t.config || "";
    setText(cells.batch.firstChild, t.batch ?? t.batch_id ?? "");
    if (key.state !== t.state) {
      key.state = t.state;
      cells.state.replaceChildren(stateBadge(t.state), row.prog);
    }
    const badge = cells.state.firstChild;
    badge.title = t.message || (t.attempts > 1 ? `attempt ${t.attempts}` : "");
    this.patchProgress(row);
    setText(cells.device, deviceLabel(t));
    setText(cells.started, formatTime(t.started_at));
    cells.started.title = formatFullTime(t.started_at);
    setText(cells.duration, formatDuration(taskDuration(t)));
    setText(cells.exit, t.exit_code ?? "");
    cells.exit.dataset.bad = t.exit_code ? "1" : "0";
    const actionKey = `${t.state}|${mayAct(t.owner)}`;
    if (key.actions !== actionKey) {
      key.actions = actionKey;
      const buttons = [];
      if (mayAct(t.owner)) {
        if (ACTIVE_STATES.has(t.state)) {
          buttons.push(h("button.btn.btn-sm.btn-danger-ghost.act", {
            type: "button", dataset: { action: "cancel" }, "aria-label": `Cancel task ${t.id}`,
          }, "Cancel"));
        }
        if (RETRYABLE_STATES.has(t.state)) {
          buttons.push(h("button.btn.btn-sm.act", {
            type: "button", dataset: { action: "retry" }, "aria-label": `Retry task ${t.id}`,
          }, "Retry"));
        }
      }
      cells.actions.replaceChildren(...buttons);
    }
  }

  /** Show a running task's progress ({done, total}) in its row. */
  patchProgress(row) {
    const t = row.task;
    const p = t.state === "running" ? this.progress.get(t.id) : null;
    row.prog.hidden = !p;
    if (!p) return;
    const frac = Math.max(0, Math.min(1, p.done / p.total));
    row.prog.firstChild.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
    setText(row.prog.lastChild, `${Math.floor(frac * 100)}%`);
    row.prog.setAttribute("aria-valuemax", String(p.total));
    row.prog.setAttribute("aria-valuenow", String(p.done));
    row.prog.setAttribute("aria-label", `Task ${t.id}: ${p.done} of ${p.total}`);
    const left = progressLeft(t, p);
    row.prog.title = `${p.done} / ${p.total}${left !== null ? ` · about ${formatDuration(left)} left` : ""}`;
  }

  /** Apply a "progress" event: {task, done, total}. */
  onProgress(p) {
    if (!p || p.task === undefined || p.done === null || p.done === undefined) return;
    this.progress.set(Number(p.task), { done: Number(p.done), total: Number(p.total) });
    if (this.rows.has(Number(p.task))) {
      this.dirty.add(Number(p.task));
      this.paint();
    }
  }

  /** Take GET /progress's list (the running tasks' progress). */
  setProgress(list) {
    for (const p of list || []) this.progress.set(Number(p.task), { done: Number(p.done), total: Number(p.total) });
    for (const row of this.rows.values()) if (row.task.state === "running") this.dirty.add(row.task.id);
    this.paint();
  }

  /** Apply a "task" event: patch the row if shown, re-fetch the page if the set of rows changes. */
  onTask(t) {
    if (t && t.state && t.state !== "running") this.progress.delete(Number(t.id));
    const row = this.rows.get(t.id);
    const matches = (!this.filter.batch || String(t.batch ?? t.batch_id) === this.filter.batch) &&
      (!this.filter.state || t.state === this.filter.state);
    if (row) {
      const moved = LIVE_KEYS.has(this.sort.key) && row.task.state !== t.state;
      row.task = { ...row.task, ...t };
      this.dirty.add(t.id);
      this.paint();
      // Out of the filter, or its place in the server's order changed: fetch the page again.
      if (!matches || moved) this.refresh();
    } else if (matches) {
      // A new task (or one entering the filter): its place depends on the server's order.
      this.refresh();
    }
  }

  flush() {
    for (const id of this.dirty) {
      const row = this.rows.get(id);
      if (row) this.patchRow(row);
    }
    this.dirty.clear();
  }

  tick() {
    for (const row of this.rows.values()) {
      if (row.task.state === "running") setText(row.cells.duration, formatDuration(taskDuration(row.task)));
    }
  }

  async onClick(e) {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const tr = button.closest("tr");
    const id = Number(tr.dataset.task);
    const action = button.dataset.action;
    if (action === "filter-batch") {
      this.setFilter({ batch: button.textContent });
      return;
    }
    button.disabled = true;
    try {
      const res = await post(`/tasks/${id}/${action}`);
      const task = res && (res.task || (res.id === id ? res : null));
      const shown = this.rows.get(id);
      if (task && !isStale(shown && shown.task, task)) this.onTask(task);
      toast(action === "cancel" ? `Task ${id} cancelled` : `Task ${id} queued again`, "ok", 2500);
    } catch (err) {
      toast(`Task ${id}: ${err.message}`, "error");
      button.disabled = false;
    }
  }
}
