// Batches list: progress (done/total, failures, ETA), priority, cancel, results zip, show tasks.

import * as api from "./api.js";
import { confirmAction } from "./confirm.js";
import {
  formatDuration, formatFullTime, formatTime, h, may, mayAct, plural, rafBatch, root, saveWholeNumber,
  setText, throttle, toast,
} from "./util.js";

/**
 * Extra links of a batch's footer, for pages other modules add (e.g. a batch's results):
 * functions (batch summary) -> an element or null, called whenever the batch's actions are
 * drawn. Register with ``batchLinks.push(fn)`` before the page loads its batches.
 */
export const batchLinks = [];

const SHOWN = 20; // batches listed at first; "Show older" adds more
const SEGMENTS = ["succeeded", "failed", "interrupted", "cancelled", "skipped", "running"];

/** Return {done, total, failed, running, queued, active} for a batch summary. */
export function batchProgress(b) {
  const c = b.counts;
  return {
    total: b.total, done: b.done, running: c.running, queued: c.queued,
    failed: c.failed + c.interrupted, active: c.running + c.queued > 0,
  };
}

export class BatchesPanel {
  constructor(container, { meta, onBatches, onShowTasks, onTimeline, owner } = {}) {
    this.container = container;
    this.meta = meta;
    this.onBatches = onBatches || (() => {});
    this.onShowTasks = onShowTasks || (() => {});
    this.onTimeline = onTimeline || (() => {});
    this.batches = new Map(); // id -> summary
    this.items = new Map(); // id -> {root, parts}
    this.dirty = new Set();
    this.limit = SHOWN;
    this.totalBatches = null;
    this.selected = "";
    this.owner = owner || ""; // show one owner's batches ("" everyone's), as the tasks table
    this.summaryAt = new Map(); // batch id -> when its last summary with counts arrived
    this.paint = rafBatch(() => this.flush());
    this.refresh = throttle(() => this.load(), 1000);
    this.seq = 0;
    container.addEventListener("click", (e) => this.onClick(e));
  }

  /** Fetch the newest batches over REST. */
  async load() {
    const seq = ++this.seq;
    let data;
    try {
      data = await api.batches({ per_page: this.limit, owner: this.owner });
    } catch (e) {
      if (seq !== this.seq) return;
      this.container.setAttribute("aria-busy", "false");
      this.container.replaceChildren(h("p.error-text", { role: "alert" }, `Cannot load batches: ${e.message} `,
        h("button.btn.btn-sm", { type: "button", onclick: () => this.refresh.now() }, "Try again")));
      this.items.clear();
      return;
    }
    if (seq !== this.seq) return;
    const list = data.batches;
    this.totalBatches = data.total;
    this.batches = new Map(list.map((b) => [b.id, b]));
    this.render();
  }

  list() {
    return [...this.batches.values()].sort((a, b) => b.id - a.id);
  }

  render() {
    this.container.setAttribute("aria-busy", "false");
    const list = this.list();
    if (!list.length) {
      this.items.clear();
      this.container.replaceChildren(h("p.empty", null, this.owner
        ? `No batches of ${this.owner} yet.` : "No batches yet. Type a pattern under New batch to start one."));
    } else {
      const nodes = list.map((b) => {
        let item = this.items.get(b.id);
        if (!item) {
          item = this.build(b);
          this.items.set(b.id, item);
        }
        this.patch(item, b);
        return item.root;
      });
      for (const id of [...this.items.keys()]) if (!this.batches.has(id)) this.items.delete(id);
      const more = this.totalBatches !== null && this.totalBatches > list.length
        ? h("button.btn.btn-sm.btn-ghost.more-batches", { type: "button", dataset: { action: "more" } },
          `Show older batches (${(this.totalBatches - list.length).toLocaleString()} more)`)
        : null;
      this.container.replaceChildren(...nodes, ...(more ? [more] : []));
    }
    const active = list.filter((b) => batchProgress(b).active).length;
    if (this.meta) setText(this.meta, list.length ? `${active} active · ${this.totalBatches} in all` : "");
    this.onBatches(list);
  }

  build(b) {
    const p = {
      id: h("span.batch-id"),
      pattern: h("code.batch-pattern"),
      info: h("span.batch-info.muted"),
      status: h("span.batch-status"),
      bar: h("div.progress", { role: "progressbar", "aria-valuemin": "0" }),
      segs: {},
      text: h("span.batch-text"),
      actions: h("span.batch-actions"),
      actionKey: "",
      priority: h("span.batch-priority"), // shown when not 0
      priorityEdit: null, // admins: a number input while the batch has work left
    };
    if (may("priority")) this.buildPriority(p, b.id);
    for (const s of SEGMENTS) {
      p.segs[s] = h("span.seg", { dataset: { state: s } });
      p.bar.append(p.segs[s]);
    }
    p.root = h("article.batch", { dataset: { batch: String(b.id) }, "aria-label": `Batch ${b.id}` },
      h("div.batch-head", null, p.id, p.pattern, p.status, p.priority, p.priorityEdit, p.info),
      p.bar,
      h("div.batch-foot", null, p.text, p.actions));
    return p;
  }

  /** Add the admin's priority input (Enter or leaving the field saves, Esc undoes). */
  buildPriority(p, id) {
    const input = h("input.priority-input", {
      type: "number", min: "-1000", max: "1000", step: "1", inputmode: "numeric",
      "aria-label": `Priority of batch ${id}`,
      title: "Higher starts first within its owner's queue (-1000 to 1000)",
    });
    const status = h("span.priority-status", { "aria-live": "polite" });
    const shown = () => String(Number(this.batches.get(id)?.priority || 0));
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        this.savePriority(id, input, status);
      } else if (e.key === "Escape") {
        input.value = shown();
        input.classList.remove("is-dirty", "is-invalid");
        setText(status, "");
      }
    });
    input.addEventListener("input", () => input.classList.toggle("is-dirty", input.value !== shown()));
    input.addEventListener("blur", () => this.savePriority(id, input, status));
    p.priorityInput = input;
    p.priorityStatus = status;
    p.priorityEdit = h("label.batch-priority-edit", { hidden: true }, h("span.muted", null, "Priority"), input, status);
  }

  async savePriority(id, input, status) {
    const b = this.batches.get(id);
    if (!b) return;
    await saveWholeNumber(input, status, {
      current: Number(b.priority || 0), min: -1000, max: 1000, hint: "-1000 to 1000",
      failed: `Batch #${id}: priority not changed`,
      send: async (n) => {
        const summary = await api.setPriority(id, n);
        setText(status, "");
        this.onBatch(summary);
        toast(`Batch #${id}: priority ${n}`, "ok", 2500);
      },
    });
  }

  patch(p, b) {
    const pr = batchProgress(b);
    const priority = Number(b.priority || 0);
    // Priority only orders queued work: admins edit it while the batch has some left.
    const editing = Boolean(p.priorityEdit) && pr.active;
    if (p.priorityEdit) {
      p.priorityEdit.hidden = !editing;
      const input = p.priorityInput;
      const busy = document.activeElement === input || input.classList.contains("is-dirty");
      if (!busy && input.value !== String(priority)) input.value = String(priority);
    }
    p.priority.hidden = editing || !priority;
    setText(p.priority, priority ? `priority ${priority > 0 ? "+" : ""}${priority}` : "");
    p.priority.title = priority ? "Higher starts first within its owner's queue" : "";
    const c = b.counts || {};
    p.root.classList.toggle("is-selected", String(b.id) === this.selected);
    setText(p.id, `#${b.id}`);
    setText(p.pattern, b.pattern || "");
    p.pattern.title = b.pattern || "";
    const where = b.use_gpu === false ? "CPU" : Array.isArray(b.devices) && b.devices.length && !b.devices.includes("gpu*")
      ? b.devices.join(", ") : "any GPU";
    setText(p.info, [b.owner, formatTime(b.created_at), where].filter(Boolean).join(" · "));
    p.info.title = formatFullTime(b.created_at);
    const cancelled = c.cancelled || 0;
    let status = "";
    let label = "";
    if (pr.running) [status, label] = ["running", "running"];
    else if (pr.queued) [status, label] = ["queued", "queued"];
    else if (pr.failed) [status, label] = ["failed", "finished with failures"];
    else if (cancelled && cancelled + (c.skipped || 0) >= pr.total) [status, label] = ["cancelled", "cancelled"];
    else if (pr.total && pr.done >= pr.total) [status, label] = ["succeeded", cancelled ? "done, some cancelled" : "done"];
    p.status.dataset.state = status;
    p.status.className = status ? "batch-status badge" : "batch-status";
    setText(p.status, label);
    for (const s of SEGMENTS) {
      const n = c[s] || 0;
      p.segs[s].style.width = pr.total ? `${(100 * n) / pr.total}%` : "0";
      p.segs[s].title = n ? `${n} ${s}` : "";
    }
    p.bar.setAttribute("aria-valuemax", String(pr.total));
    p.bar.setAttribute("aria-valuenow", String(pr.done));
    p.bar.setAttribute("aria-label", `Batch ${b.id}: ${pr.done} of ${pr.total} done`);
    const parts = [`${pr.done.toLocaleString()}/${pr.total.toLocaleString()} done`];
    if (pr.failed) parts.push(`${pr.failed.toLocaleString()} failed`);
    if (cancelled) parts.push(`${cancelled.toLocaleString()} cancelled`);
    if (c.skipped) parts.push(`${c.skipped.toLocaleString()} skipped (already complete)`);
    if (pr.running) parts.push(`${pr.running} running`);
    if (pr.queued) parts.push(`${pr.queued.toLocaleString()} queued`);
    if (pr.active && b.eta !== null && b.eta !== undefined) parts.push(`ETA ${formatDuration(b.eta)}`);
    else if (!pr.active && b.finished_at && b.created_at) parts.push(`took ${formatDuration(toSeconds(b.finished_at) - toSeconds(b.created_at))}`);
    setText(p.text, parts.join(" · "));
    const key = `${pr.active}|${mayAct(b.owner)}`;
    if (p.actionKey !== key) {
      p.actionKey = key;
      const buttons = [
        h("button.btn.btn-sm.btn-ghost", { type: "button", dataset: { action: "tasks" }, "aria-label": `Show the tasks of batch ${b.id}` }, "Tasks"),
        h("button.btn.btn-sm.btn-ghost", { type: "button", dataset: { action: "timeline" }, "aria-label": `Show the timeline of batch ${b.id}` }, "Timeline"),
        h("a.btn.btn-sm.btn-ghost", {
          href: `${root()}/batches/${b.id}/results`, "aria-label": `Results table of batch ${b.id}`,
        }, "Results"),
        h("a.btn.btn-sm.btn-ghost", {
          href: api.batchZipUrl(b.id), download: `batch-${b.id}-results.zip`,
          "aria-label": `Download the results of batch ${b.id} as a zip`,
        }, "Results .zip"),
      ];
      for (const link of batchLinks) {
        const extra = link(b);
        if (extra) buttons.push(extra);
      }
      if (pr.active && mayAct(b.owner)) {
        buttons.push(h("button.btn.btn-sm.btn-danger-ghost.act", { type: "button", dataset: { action: "cancel" }, "aria-label": `Cancel batch ${b.id}` }, "Cancel"));
      }
      p.actions.replaceChildren(...buttons);
    }
  }

  /** Apply a "batch" event (a summary, possibly partial). */
  onBatch(b) {
    if (this.owner && b.owner !== this.owner) return; // not shown
    const known = this.batches.get(b.id);
    if (!known) {
      this.refresh();
      return;
    }
    Object.assign(known, b);
    this.summaryAt.set(b.id, performance.now());
    this.dirty.add(b.id);
    this.paint();
  }

  /** Show one owner's batches ("" for everyone's). */
  setOwner(owner) {
    if (owner === this.owner) return;
    this.owner = owner;
    this.limit = SHOWN;
    this.refresh.now();
  }

  /**
   * Note that a task of this batch changed. The server normally follows with a "batch" event
   * carrying the new counts; when none comes shortly, the list is re-fetched (throttled).
   */
  onTask(t) {
    const id = t.batch;
    if (this.owner && t.owner !== this.owner) return; // not shown
    if (!this.batches.has(id)) {
      this.refresh();
      return;
    }
    const at = performance.now();
    setTimeout(() => {
      if ((this.summaryAt.get(id) || 0) < at) this.refresh();
    }, 1200); // the server sends batch summaries at most twice a second
  }

  flush() {
    let anyNew = false;
    for (const id of this.dirty) {
      const item = this.items.get(id);
      const b = this.batches.get(id);
      if (item && b) this.patch(item, b);
      else anyNew = true;
    }
    this.dirty.clear();
    if (anyNew) this.render();
    else {
      const list = this.list();
      const active = list.filter((b) => batchProgress(b).active).length;
      if (this.meta) setText(this.meta, `${active} active · ${this.totalBatches} in all`);
    }
  }

  /** Highlight the batch the tasks table is filtered on. */
  select(id) {
    this.selected = id ? String(id) : "";
    for (const [bid, item] of this.items) item.root.classList.toggle("is-selected", String(bid) === this.selected);
  }

  async onClick(e) {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    if (action === "more") {
      this.limit += SHOWN;
      this.refresh.now();
      return;
    }
    const id = Number(button.closest(".batch").dataset.batch);
    if (action === "tasks") {
      this.onShowTasks(id);
    } else if (action === "timeline") {
      this.onTimeline(id);
    } else if (action === "cancel") {
      const b = this.batches.get(id);
      const pr = b ? batchProgress(b) : { running: 0, queued: 0 };
      const ok = await confirmAction({
        title: `Cancel batch #${id}?`,
        body: cancelBatchText(b, pr),
        confirm: `Cancel ${plural(pr.running + pr.queued, "task")}`,
        cancel: "Keep the batch",
      });
      if (!ok) return;
      button.disabled = true;
      try {
        const res = await api.cancelBatch(id);
        toast(`Batch #${id}: ${plural(res.cancelled, "queued task")} cancelled` +
          (res.stopping ? `, ${plural(res.stopping, "running task")} stopping` : ""), "ok", 3000);
        this.refresh();
      } catch (err) {
        toast(`Batch #${id}: ${err.message}`, "error");
        button.disabled = false;
      }
    }
  }
}

/** Return the paragraphs of a batch cancel's confirmation. */
export function cancelBatchText(b, pr) {
  const parts = [];
  if (pr.running) {
    parts.push(`${plural(pr.running, "running task")} ${pr.running === 1 ? "is" : "are"} stopped: ` +
      "the work done so far is lost.");
  }
  if (pr.queued) parts.push(`${plural(pr.queued, "queued task")} will not start.`);
  if (b && pr.done) parts.push(`The ${plural(pr.done, "finished task")} and ${pr.done === 1 ? "its" : "their"} results stay.`);
  return parts;
}

function toSeconds(v) {
  return typeof v === "number" ? v : Date.parse(v) / 1000;
}
