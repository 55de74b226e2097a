// Tasks table for a team: filter by owner (mine / everyone / a user, remembered), a text in the
// config path, state and batch; sort (by the server, across pages); paginate; each row shows its
// owner and its log's last line (or why it failed); patch rows live; cancel and retry a task,
// or every task the filters select at once.

import * as api from "./api.js";
import { confirmAction } from "./confirm.js";
import {
  ACTIVE_STATES, FINAL_STATES, RETRYABLE_STATES, bootstrap, debounce, deviceLabel, formatDuration,
  formatFullTime, formatTime, h, mayAct, plural, rafBatch, readOnly, remember, remembered, root, setText,
  stateBadge, throttle, toast,
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
  constructor(section, { onFilter, onDemo } = {}) {
    this.section = section;
    this.onFilter = onFilter || (() => {});
    this.onDemo = onDemo || null;
    this.$ = (id) => section.querySelector(`#${id}`);
    this.body = this.$("tasks-body");
    this.empty = this.$("tasks-empty");
    this.meta = this.$("tasks-meta");
    this.batchSelect = this.$("filter-batch");
    this.stateSelect = this.$("filter-state");
    this.ownerSelect = this.$("filter-owner");
    this.search = this.$("filter-search");
    this.perPage = Number(bootstrap().page_size) || 50;
    this.filter = { batch: "", state: "", owner: "", q: "" };
    this.page = 1;
    this.pages = 1;
    this.total = 0;
    this.sort = { key: "id", dir: "desc" };
    this.rows = new Map(); // task id -> {tr, task, cells}
    this.progress = new Map(); // running task id -> {done, total} from "progress" events
    this.lines = new Map(); // running task id -> its log's last line, from "lines" events
    this.waits = null; // what queued tasks wait for, while the queue is paused
    this.waitsWhy = null; // and why it paused (a row's title)
    this.dirty = new Set();
    this.paint = rafBatch(() => this.flush());
    this.refresh = throttle(() => this.load(), 700);
    this.seq = 0;
    this.user = bootstrap().user ? bootstrap().user.name : "";
    this.readFromUrl();

    this.batchSelect.addEventListener("change", () => this.setFilter({ batch: this.batchSelect.value }));
    this.stateSelect.addEventListener("change", () => this.setFilter({ state: this.stateSelect.value }));
    this.ownerSelect.addEventListener("change", () => this.setFilter({ owner: this.ownerSelect.value }));
    const typed = debounce(() => this.setFilter({ q: this.search.value.trim() }), 250);
    this.typed = typed;
    this.search.addEventListener("input", typed);
    this.search.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        typed.cancel();
        this.setFilter({ q: this.search.value.trim() });
      }
    });
    this.$("filter-clear").addEventListener("click", () => this.clearFilters());
    this.$("page-first").addEventListener("click", () => this.go(1));
    this.$("page-prev").addEventListener("click", () => this.go(this.page - 1));
    this.$("page-next").addEventListener("click", () => this.go(this.page + 1));
    this.$("page-last").addEventListener("click", () => this.go(this.pages));
    this.$("bulk-cancel").addEventListener("click", () => this.bulk("cancel"));
    this.$("bulk-retry").addEventListener("click", () => this.bulk("retry"));
    this.$("bulk").hidden = readOnly();
    for (const th of section.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => this.setSort(th.dataset.sort));
    }
    this.body.addEventListener("click", (e) => this.onClick(e));
    setInterval(() => this.tick(), 1000);
  }

  /** The owner filter remembered for this user in this browser (the address wins). */
  ownerKey() {
    return `owner.${this.user || "-"}`;
  }

  readFromUrl() {
    const q = new URLSearchParams(location.search);
    // /batches/<id> renders this page with the batch in the bootstrap data.
    this.filter.batch = q.get("batch") || (bootstrap().batch ? String(bootstrap().batch) : "");
    this.filter.state = q.get("state") || "";
    this.filter.owner = q.has("owner") ? q.get("owner") : remembered(this.ownerKey(), "");
    this.filter.q = q.get("q") || "";
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
    set("owner", this.filter.owner);
    set("q", this.filter.q);
    set("page", this.page > 1 ? this.page : "");
    const sort = `${this.sort.dir === "desc" ? "-" : ""}${this.sort.key}`;
    set("sort", sort === "-id" ? "" : sort);
    const qs = q.toString();
    history.replaceState(null, "", location.pathname + (qs ? `?${qs}` : "") + location.hash);
  }

  /** True when some filter is set (the owner filter counts: "mine" hides the others' tasks). */
  filtered() {
    return Boolean(this.filter.batch || this.filter.state || this.filter.owner || this.filter.q);
  }

  ensureOption(select, value, label) {
    if (value && !select.querySelector(`option[value="${CSS.escape(value)}"]`)) {
      select.append(h("option", { value }, label));
    }
  }

  syncControls() {
    this.ensureOption(this.batchSelect, this.filter.batch, `#${this.filter.batch}`);
    this.ensureOption(this.ownerSelect, this.filter.owner, this.filter.owner);
    this.batchSelect.value = this.filter.batch;
    this.stateSelect.value = this.filter.state;
    this.ownerSelect.value = this.filter.owner;
    if (this.search.value.trim() !== this.filter.q) this.search.value = this.filter.q;
    this.$("filter-clear").hidden = !(this.filter.batch || this.filter.state || this.filter.q);
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
      options.push(h("option", { value: String(b.id) }, `#${b.id} · ${b.pattern}`.slice(0, 60)));
    }
    if (current && !batches.some((b) => String(b.id) === current)) {
      options.push(h("option", { value: current }, `#${current}`));
    }
    this.batchSelect.replaceChildren(...options);
    this.batchSelect.value = current;
  }

  /** Offer everyone who submitted work in the owner filter (GET /owners). */
  setOwners(owners) {
    const mine = this.ownerSelect.querySelector("option[data-mine]");
    const options = [h("option", { value: "" }, "Everyone")];
    if (mine) options.push(mine);
    for (const o of owners) {
      if (mine && o.name === this.user) continue;
      options.push(h("option", { value: o.name }, `${o.name} (${o.tasks.toLocaleString()})`));
    }
    this.ownerSelect.replaceChildren(...options);
    this.ensureOption(this.ownerSelect, this.filter.owner, this.filter.owner);
    this.ownerSelect.value = this.filter.owner;
  }

  setFilter(change) {
    Object.assign(this.filter, change);
    if ("owner" in change) remember(this.ownerKey(), this.filter.owner || null);
    this.page = 1;
    this.syncControls();
    this.writeUrl();
    this.onFilter(this.filter);
    this.refresh.now();
  }

  /** Clear batch, state and search; the owner filter stays (it is a standing choice). */
  clearFilters() {
    this.setFilter({ batch: "", state: "", q: "" });
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

  /** The filter as the API takes it (GET /tasks, POST /tasks/cancel|retry). */
  apiFilter() {
    return {
      batch: this.filter.batch ? Number(this.filter.batch) : null,
      state: this.filter.state || null,
      owner: this.filter.owner || null,
      q: this.filter.q || null,
    };
  }

  /** Fetch the current page over REST and redraw the table. */
  async load() {
    const seq = ++this.seq;
    const params = {
      ...this.apiFilter(), page: this.page, per_page: this.perPage, sort: this.sort.key, order: this.sort.dir,
    };
    let data;
    try {
      data = await api.tasks(params);
    } catch (e) {
      if (seq !== this.seq) return;
      this.showError(e.message);
      return;
    }
    if (seq !== this.seq) return;
    this.total = data.total;
    this.pages = data.pages;
    if (this.page > this.pages) {
      this.page = this.pages;
      this.writeUrl();
      this.refresh();
      return;
    }
    // The server sorted the whole list (then by id), so pages follow one another.
    this.render(data.tasks);
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
      this.lines.delete(t.id); // the page's answer is newer than the last "lines" event
      this.patchRow(row);
      keep.set(t.id, row);
      frag.push(row.tr);
    }
    this.rows = keep;
    this.body.replaceChildren(...frag);
    this.dirty.clear();
    if (!tasks.length) {
      this.empty.hidden = false;
      this.empty.replaceChildren(this.emptyText());
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
    this.$("bulk-cancel").disabled = !this.total;
    this.$("bulk-retry").disabled = !this.total;
  }

  emptyText() {
    const f = this.filter;
    if (f.batch || f.state || f.q) {
      return h("p", null, "No task matches these filters. ",
        h("button.btn.btn-sm", { type: "button", onclick: () => this.clearFilters() }, "Clear filters"));
    }
    if (f.owner) {
      const who = f.owner === this.user ? "You have" : `${f.owner} has`;
      return h("p", null, `${who} no tasks yet. `,
        h("button.btn.btn-sm", { type: "button", onclick: () => this.setFilter({ owner: "" }) }, "Show everyone's"));
    }
    const demo = bootstrap().demo_pattern;
    if (demo && this.onDemo) {
      return h("p", null, "No tasks yet. Start a batch under New batch, or ",
        h("button.btn.btn-sm.btn-primary", { type: "button", onclick: () => this.onDemo(demo) }, "Try the demo batch"),
        ` (${demo}: tasks that run for half a minute with live logs, progress and GPU memory).`);
    }
    return h("p", null, "No tasks yet. Start a batch: type a pattern under ", h("a", { href: "#new-batch-panel" }, "New batch"), ".");
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
    const line = h("span.task-line");
    const cells = {
      id: h("td.num.col-id", null, h("a", { href: taskHref }, String(t.id))),
      config: h("td.config-cell.col-config", null, h("a.mono.config-link", { href: taskHref }), line),
      owner: h("td.owner-cell.col-owner"),
      batch: h("td.num.col-batch", null, h("button.link-button", { type: "button", dataset: { action: "filter-batch" }, title: "Show only this batch" })),
      state: h("td.state-cell.col-state"),
      device: h("td.mono.device-cell.col-device"),
      started: h("td.time-cell.col-started"),
      duration: h("td.num.duration-cell.col-duration"),
      exit: h("td.num.mono.col-exit"),
      actions: h("td.actions-cell"),
    };
    const tr = h("tr", { dataset: { task: String(t.id) } }, ...Object.values(cells));
    const prog = h("span.task-progress", { hidden: true, role: "progressbar", "aria-valuemin": "0" },
      h("span.task-progress-bar", { "aria-hidden": "true" }, h("span.task-progress-fill")),
      h("span.task-progress-text"));
    return { tr, task: { ...t }, cells, key: {}, prog, line };
  }

  /** Return the second line of a row: why it failed, what it printed last, or why it waits. */
  lineOf(t) {
    const live = t.state === "running" ? this.lines.get(t.id) : undefined;
    const last = live ?? t.last_line;
    if (t.state === "failed" || t.state === "interrupted") {
      // The log's last line names the error better than "exit code 1"; the message stays in the title.
      return { text: last && last !== t.message ? last : t.message || last || "", kind: "error" };
    }
    if (t.state === "queued") {
      return { text: this.waits || "waiting for a free slot", kind: "muted", why: this.waits ? this.waitsWhy : null };
    }
    if (t.state === "running" && !last) return { text: "started: no output yet", kind: "muted" };
    if (t.state === "skipped" || t.state === "cancelled") return { text: t.message || last || "", kind: "muted" };
    return { text: last || "", kind: "" };
  }

  patchRow(row) {
    const t = row.task;
    const { cells, key } = row;
    row.tr.dataset.state = t.state;
    row.tr.dataset.mine = t.owner === this.user ? "1" : "0";
    const config = cells.config.firstChild;
    setText(config, t.config.replace(/^configs\//, ""));
    config.title = t.config;
    const line = this.lineOf(t);
    setText(row.line, line.text);
    row.line.dataset.kind = line.kind;
    row.line.title = [line.text, line.why, t.message && t.message !== line.text ? t.message : ""].filter(Boolean).join("\n");
    setText(cells.owner, t.owner);
    cells.owner.title = t.owner === this.user ? "You" : "";
    setText(cells.batch.firstChild, t.batch);
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

  /** Apply a "progress" event: {task, batch, done, total}. */
  onProgress(p) {
    this.progress.set(p.task, { done: p.done, total: p.total });
    if (this.rows.has(p.task)) {
      this.dirty.add(p.task);
      this.paint();
    }
  }

  /** Apply a "lines" event: {lines: {task id: last line}} of running tasks. */
  onLines(msg) {
    for (const [key, line] of Object.entries(msg.lines)) {
      const tid = Number(key);
      this.lines.set(tid, line);
      if (this.rows.has(tid)) this.dirty.add(tid);
    }
    this.paint();
  }

  /** Say why the queued tasks wait: for a free slot, or for the queue's pause to end (and why
   * it paused: a user, or a fault slotrun waits out). */
  setQueue(paused, pause) {
    // Short enough for the row; the reason is in the row's title (and the top bar).
    let waits = null;
    if (paused) waits = pause && pause.auto ? "queue paused (fault)" : "queue paused";
    const why = paused && pause && pause.reason ? pause.reason : null;
    if (waits === this.waits && why === this.waitsWhy) return;
    this.waits = waits;
    this.waitsWhy = why;
    for (const row of this.rows.values()) if (row.task.state === "queued") this.dirty.add(row.task.id);
    this.paint();
  }

  /** Take GET /progress's list (the running tasks' progress). */
  setProgress(list) {
    for (const p of list) this.progress.set(p.task, { done: p.done, total: p.total });
    for (const row of this.rows.values()) if (row.task.state === "running") this.dirty.add(row.task.id);
    this.paint();
  }

  /** Return true when a task belongs in the table under the current filters. */
  matches(t) {
    const f = this.filter;
    return (!f.batch || String(t.batch) === f.batch) && (!f.state || t.state === f.state) &&
      (!f.owner || t.owner === f.owner) && (!f.q || t.config.toLowerCase().includes(f.q.toLowerCase()));
  }

  /** Apply a "task" event: patch the row if shown, re-fetch the page if the set of rows changes. */
  onTask(t) {
    if (t.state !== "running") {
      this.progress.delete(t.id);
      this.lines.delete(t.id);
    }
    const row = this.rows.get(t.id);
    const matches = this.matches(t);
    if (row) {
      const moved = LIVE_KEYS.has(this.sort.key) && row.task.state !== t.state;
      const ended = FINAL_STATES.has(t.state) && row.task.state !== t.state;
      row.task = { ...row.task, ...t };
      this.dirty.add(t.id);
      this.paint();
      // Out of the filter, its place in the server's order changed, or it ended (its last
      // line, or why it failed, comes with the page): fetch the page again.
      if (!matches || moved || ended) this.refresh();
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
    const row = this.rows.get(id);
    if (action === "filter-batch") {
      this.setFilter({ batch: button.textContent });
      return;
    }
    if (action === "cancel" && !(await confirmCancelTask(row.task))) return;
    button.disabled = true;
    try {
      const task = action === "cancel" ? await api.cancelTask(id) : await api.retryTask(id);
      const shown = this.rows.get(id);
      if (!isStale(shown && shown.task, task)) this.onTask(task);
      toast(action === "cancel" ? `Task ${id} cancelled` : `Task ${id} queued again`, "ok", 2500);
    } catch (err) {
      toast(`Task ${id}: ${err.message}`, "error");
      button.disabled = false;
    }
  }

  /** Cancel or retry every task the filters select, after a confirmation with the numbers. */
  async bulk(action) {
    // A search still being typed counts: the action must act on what the box says.
    if (this.search.value.trim() !== this.filter.q) {
      this.typed.cancel();
      this.setFilter({ q: this.search.value.trim() });
    }
    const filter = this.apiFilter();
    const button = this.$(`bulk-${action}`);
    button.disabled = true;
    try {
      const plan = await api.bulk(action, filter, true);
      const text = bulkText(plan, this.filterText(), this.user && !bootstrap().permissions.users);
      if (!plan.affected) {
        await confirmAction({ title: text.title, body: text.body, confirm: "OK", cancel: "Close", danger: false });
        return;
      }
      const ok = await confirmAction({
        title: text.title, body: text.body, confirm: text.confirm,
        cancel: action === "cancel" ? "Keep them" : "Not now", danger: action === "cancel",
      });
      if (!ok) return;
      const done = await api.bulk(action, filter, false);
      toast(bulkDoneText(done), "ok", 4000);
      this.refresh();
    } catch (err) {
      toast(`Not done: ${err.message}`, "error");
    } finally {
      button.disabled = !this.total;
    }
  }

  /** Return the filters in words ("owner mia, state failed, config containing exp-2"). */
  filterText() {
    const f = this.filter;
    const parts = [];
    if (f.owner) parts.push(f.owner === this.user ? "your tasks" : `${f.owner}'s tasks`);
    if (f.batch) parts.push(`batch #${f.batch}`);
    if (f.state) parts.push(`state ${f.state}`);
    if (f.q) parts.push(`config containing “${f.q}”`);
    return parts.length ? parts.join(", ") : "all tasks";
  }
}

/** Ask before cancelling one task; resolve to true when confirmed. */
export function confirmCancelTask(t) {
  const name = t.config.replace(/^configs\//, "");
  const running = t.state === "running";
  const grace = Number(bootstrap().kill_grace) || 5;
  return confirmAction({
    title: `Cancel task ${t.id}?`,
    body: running
      ? [`${name} is running on ${deviceLabel(t)} (${formatDuration(taskDuration(t))} so far).`,
        `Its processes are stopped (SIGTERM, then SIGKILL after ${grace} s) and the work done so far is lost. Retry runs it again from the start.`]
      : [`${name} has not started: it will not run. Retry queues it again.`],
    confirm: "Cancel task",
    cancel: running ? "Keep it running" : "Keep it queued",
  });
}

/** Return the confirmation of a bulk action from its dry run: {title, body, confirm}. */
export function bulkText(plan, what, member) {
  const n = plan.affected;
  const body = [];
  let title;
  let confirm;
  if (plan.action === "cancel") {
    title = n ? `Cancel ${plural(n, "task")}?` : "No task to cancel";
    if (plan.running) body.push(`${plural(plan.running, "running task")} ${plan.running === 1 ? "is" : "are"} stopped: the work done so far is lost.`);
    if (plan.queued) body.push(`${plural(plan.queued, "queued task")} will not start.`);
    confirm = `Cancel ${plural(n, "task")}`;
  } else {
    title = n ? `Retry ${plural(n, "task")}?` : "No task to retry";
    if (n) body.push(`${plural(n, "failed, cancelled or interrupted task")} ${n === 1 ? "is" : "are"} queued again, at the end of the queue.`);
    confirm = `Retry ${plural(n, "task")}`;
  }
  const context = [`${plural(plan.matched, "task")} match${plan.matched === 1 ? "es" : ""} ${what}.`];
  if (plan.other_state) {
    context.push(`${plural(plan.other_state, "task")} ${plan.other_state === 1 ? "is" : "are"} left alone: ` +
      (plan.action === "cancel" ? "already finished." : "not failed, cancelled or interrupted."));
  }
  if (plan.not_yours) {
    context.push(`${plural(plan.not_yours, "task")} of other users ${plan.not_yours === 1 ? "is" : "are"} skipped` +
      (member ? ": only their owners or an admin may touch them." : "."));
  }
  return { title, body: [...body, context.join(" ")], confirm };
}

/** Return the toast after a bulk action. */
export function bulkDoneText(done) {
  const skipped = done.not_yours ? ` (${plural(done.not_yours, "task")} of other users skipped)` : "";
  if (done.action === "cancel") {
    const parts = [];
    if (done.queued) parts.push(`${plural(done.queued, "queued task")} cancelled`);
    if (done.running) parts.push(`${plural(done.running, "running task")} stopping`);
    return `${parts.join(", ") || "Nothing to cancel"}${skipped}`;
  }
  return `${done.affected ? `${plural(done.affected, "task")} queued again` : "Nothing to retry"}${skipped}`;
}
