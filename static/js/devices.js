// Devices: a compact strip with one card per GPU (and the CPU): memory and slots at a glance,
// the slot limit editable in place for admins, and the engine's note when a device starts
// fewer tasks than its limit. The charts of the last hour (utilisation, memory, slotrun's
// tasks) are one click away, in the Charts view under the strip. Plus "Suggest slots" (slot
// limits from each GPU's memory and a task's expected need).

import * as api from "./api.js";
import { DeviceChart, HOUR } from "./charts.js";
import { formatBytes, h, may, plural, rafBatch, saveWholeNumber, setText, toast } from "./util.js";

// Keys the engine adds to a device while they apply; absent from an update means "cleared".
const ENGINE_NOTES = ["effective", "note", "hold", "held", "waiting_task"];

/** The devices panel; ``onChange(devices)`` hears every new device list. */
export class DevicesPanel {
  constructor(container, { onChange, history, charts } = {}) {
    this.container = container;
    this.chartsBox = charts || null; // the Charts view (hidden until asked for)
    this.onChange = onChange || (() => {});
    this.history = history || null; // charts.History shared with the page
    this.window = HOUR; // seconds of history the charts show
    this.devices = new Map(); // id -> latest device dict
    this.cards = new Map(); // id -> {root, parts...}
    this.charts = new Map(); // id -> {root, chart} while the Charts view is open
    this.dirty = new Set(); // device ids whose figures changed since the last paint
    this.paint = rafBatch(() => this.flush());
    this.loaded = false;
    const dark = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
    if (dark && dark.addEventListener) {
      dark.addEventListener("change", () => {
        for (const c of this.charts.values()) c.chart.restyle();
      });
    }
  }

  /** Replace the whole device list (REST answer or a "devices" event). */
  setDevices(list) {
    const ids = list.map((d) => d.id);
    const sameSet = ids.length === this.devices.size && ids.every((id) => this.devices.has(id));
    for (const d of list) {
      const merged = { ...(this.devices.get(d.id) || {}), ...d };
      for (const k of ENGINE_NOTES) if (!(k in d)) delete merged[k];
      this.devices.set(d.id, merged);
      this.dirty.add(d.id);
    }
    if (!sameSet) {
      for (const id of [...this.devices.keys()]) if (!ids.includes(id)) this.devices.delete(id);
      this.rebuild(ids);
    }
    this.loaded = true;
    this.paint();
    this.onChange(this.list());
  }

  /** Apply a "slots" event: {device: {slots, running, effective?, hold?, note?, held?, waiting_task?}}. */
  setSlots(usage) {
    for (const [id, u] of Object.entries(usage || {})) {
      const d = this.devices.get(id);
      if (!d) continue;
      d.slots = u.slots;
      d.running = u.running;
      for (const k of ENGINE_NOTES) {
        if (k in u) d[k] = u[k];
        else delete d[k];
      }
      this.dirty.add(id);
    }
    this.paint();
    this.onChange(this.list());
  }

  /** Return the devices in display order (GPUs by index, then the CPU). */
  list() {
    return [...this.devices.values()];
  }

  /** Redraw the charts from the shared history (after a sample or a history load). */
  historyChanged() {
    if (!this.history) return;
    for (const [id, c] of this.charts) {
      const cols = this.history.get(id);
      if (cols) c.chart.update(cols);
    }
  }

  /** Show the last ``seconds`` of history in every chart. */
  setWindow(seconds) {
    this.window = seconds;
    for (const c of this.charts.values()) c.chart.setWindow(seconds);
  }

  /** Open or close the Charts view (charts are built only while it is open). */
  showCharts(open) {
    if (!this.chartsBox) return;
    this.chartsBox.hidden = !open;
    if (open) this.buildCharts();
    else this.dropCharts();
  }

  chartsOpen() {
    return Boolean(this.chartsBox && !this.chartsBox.hidden);
  }

  dropCharts() {
    for (const c of this.charts.values()) c.chart.destroy();
    this.charts.clear();
    if (this.chartsBox) this.chartsBox.replaceChildren();
  }

  buildCharts() {
    this.dropCharts();
    if (!this.chartsBox) return;
    for (const d of this.devices.values()) {
      const box = h("div.device-chart");
      const label = d.kind === "cpu" ? "CPU" : d.id;
      const root = h("article.chart-card", { dataset: { device: d.id }, "aria-label": `${label} over time` },
        h("header.chart-head", null, h("span.device-id", null, label), h("span.device-name", { title: d.name || "" }, d.name || "")),
        box);
      const chart = new DeviceChart(box, { windowSeconds: this.window });
      this.charts.set(d.id, { root, chart });
      this.chartsBox.append(root);
      const cols = this.history && this.history.get(d.id);
      if (cols) chart.update(cols);
    }
    if (!this.devices.size) this.chartsBox.append(h("p.empty", null, "No devices to chart."));
  }

  rebuild(ids) {
    this.container.replaceChildren();
    this.cards.clear();
    this.container.setAttribute("aria-busy", "false");
    if (!ids.length) {
      this.container.append(h("p.empty", null, "No devices found. The server sees no GPU and no CPU slots."));
    }
    for (const id of ids) {
      const card = this.buildCard(this.devices.get(id));
      this.cards.set(id, card);
      this.container.append(card.root);
    }
    if (this.chartsOpen()) this.buildCharts();
  }

  buildCard(d) {
    const isGpu = d.kind !== "cpu";
    const label = isGpu ? d.id : "CPU";
    const slotStatus = h("span.slot-status", { "aria-live": "polite" });
    const inputId = `slots-${d.id.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
    let input = null;
    if (may("slots")) {
      input = h("input.slot-input", {
        id: inputId, type: "number", min: "0", max: "1000", step: "1", inputmode: "numeric",
        value: String(d.slots ?? 0),
        "aria-label": `Slot limit for ${label}`,
        title: "Tasks this device may run at once (Enter or leave the field to save, Esc to undo)",
      });
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") {
          e.preventDefault();
          this.save(d.id, input, slotStatus);
        } else if (e.key === "Escape") {
          input.value = String(this.devices.get(d.id).slots ?? 0);
          input.classList.remove("is-dirty", "is-invalid");
          setText(slotStatus, "");
        }
      });
      input.addEventListener("input", () => {
        input.classList.toggle("is-dirty", input.value !== String(this.devices.get(d.id).slots ?? 0));
      });
      input.addEventListener("blur", () => this.save(d.id, input, slotStatus));
    }
    // Without the right to change it, the limit is plain text: "running / limit".
    const limit = input || h("span.slot-limit-ro", {
      "aria-label": `Slot limit for ${label}`, title: "Tasks this device may run at once (an admin changes it)",
    });
    const parts = {
      root: null,
      name: h("span.device-name"),
      node: h("span.device-node"),
      util: h("span.device-util", { title: "Utilisation" }),
      memBar: h("span.bar-fill"),
      memText: h("span.meter-value"),
      note: h("p.device-note", { role: "status" }),
      pips: h("span.pips", { "aria-hidden": "true" }),
      running: h("span.slot-running"),
      limit,
      input,
      slotStatus,
    };
    parts.memRow = h("div.meter", null,
      h("span.meter-label", null, "Mem"),
      h("span.bar", { "aria-hidden": "true" }, parts.memBar),
      parts.memText);
    parts.root = h("article.device-card", { dataset: { device: d.id, kind: isGpu ? "gpu" : "cpu" }, "aria-label": label },
      h("header.device-head", null, h("span.device-id", null, label), parts.name, parts.node, parts.util),
      parts.memRow,
      h("div.slots-row", null,
        h("span.meter-label", null, "Slots"),
        parts.pips,
        h(input ? "label.slot-count" : "span.slot-count", input ? { for: inputId } : null,
          parts.running, h("span.slot-sep", { "aria-hidden": "true" }, "/")),
        limit,
        slotStatus),
      parts.note);
    return parts;
  }

  flush() {
    const multiNode = new Set(this.list().map((d) => d.node || "")).size > 1;
    for (const id of this.dirty) {
      const d = this.devices.get(id);
      const c = this.cards.get(id);
      if (!d || !c) continue;
      setText(c.name, d.kind === "cpu" ? (d.name && d.name !== "cpu" ? d.name : "processor slots") : d.name || "");
      c.name.title = d.name || "";
      // The machine's name matters only when the devices span several machines (Ray).
      setText(c.node, multiNode ? d.node || "" : "");
      const total = Number(d.memory_total) || 0;
      const used = Number(d.memory_used) || 0;
      c.memRow.hidden = !total;
      if (total) {
        const frac = Math.min(1, used / total);
        c.memBar.style.width = `${(frac * 100).toFixed(1)}%`;
        c.memBar.dataset.level = frac > 0.95 ? "high" : frac > 0.8 ? "warn" : "ok";
        setText(c.memText, memoryText(used, total));
        c.memRow.title = `Memory: ${formatBytes(used)} used, ${formatBytes(d.memory_free ?? total - used)} free`;
      }
      const util = d.utilization;
      setText(c.util, util === null || util === undefined ? "" : `${Math.round(Number(util))}%`);
      const slots = Number(d.slots ?? 0);
      const running = Number(d.running ?? 0);
      const capped = d.effective !== undefined && d.effective !== null && Number(d.effective) < slots;
      const effective = capped ? Number(d.effective) : slots;
      setText(c.running, running);
      if (c.input) {
        const editing = document.activeElement === c.input || c.input.classList.contains("is-dirty");
        if (!editing && c.input.value !== String(slots)) c.input.value = String(slots);
      } else {
        setText(c.limit, slots);
      }
      this.drawPips(c.pips, running, slots, effective);
      c.root.dataset.busy = running >= effective && effective > 0 ? "full" : running > 0 ? "some" : "idle";
      this.drawNote(c, d, capped, effective);
    }
    this.dirty.clear();
  }

  /** Say why a device starts fewer tasks than its limit, in the engine's words (``note``). */
  drawNote(c, d, capped, effective) {
    let kind = "";
    let text = "";
    if (d.note) {
      kind = d.hold || "oom";
      const warn = kind === "oom" || kind === "fault";
      text = `${warn ? "⚠ " : ""}${d.note.charAt(0).toUpperCase()}${d.note.slice(1)}`;
    } else if (capped) {
      kind = "oom";
      text = `⚠ Limited to ${effective} for now`;
    }
    c.root.dataset.note = kind;
    c.note.dataset.kind = kind;
    c.note.hidden = !text;
    setText(c.note, text);
    c.note.title = capped ? `Slot limit ${d.slots}, effective limit ${effective}. ${d.note || ""}`.trim() : text;
  }

  drawPips(node, running, slots, effective = slots) {
    const shown = Math.max(slots, running);
    if (shown > 16) {
      setText(node, "");
      node.dataset.many = "1";
      return;
    }
    delete node.dataset.many;
    const key = `${running}/${slots}/${effective}`;
    if (node.dataset.key === key) return;
    node.dataset.key = key;
    node.replaceChildren(...Array.from({ length: shown }, (_, i) =>
      h("span.pip", { class: i < running ? (i < slots ? "on" : "over") : i >= effective ? "capped" : "" })));
  }

  async save(id, input, status) {
    const d = this.devices.get(id);
    await saveWholeNumber(input, status, {
      current: d.slots ?? 0, min: 0, max: 1000, hint: "0 to 1000",
      failed: `Slot limit for ${id} not changed`,
      send: async (n) => {
        const dev = await api.setSlots(id, n);
        d.slots = dev.slots;
        d.running = dev.running;
        setText(status, "saved");
        status.dataset.kind = "ok";
        setTimeout(() => {
          if (status.textContent === "saved") setText(status, "");
        }, 2000);
        this.dirty.add(id);
        this.paint();
        this.onChange(this.list());
      },
    });
  }
}

/**
 * "Suggest slots": pick a memory need (a family's learned need, or a size), see the slot limit
 * each GPU would get (memory total minus the margin, divided by the need), apply with one click.
 */
export class SuggestSlots {
  constructor(box, button, panel) {
    this.box = box;
    this.button = button;
    this.panel = panel;
    this.proposal = null;
    this.source = h("select.suggest-source", { id: "suggest-source", "aria-label": "Memory need per task" });
    this.need = h("input.suggest-need.mono", {
      id: "suggest-need", type: "text", placeholder: "e.g. 6GiB", spellcheck: "false",
      "aria-label": "Memory per task (e.g. 6GiB)",
    });
    this.status = h("span.suggest-status", { "aria-live": "polite" });
    this.result = h("div.suggest-result", { hidden: true });
    const form = h("form.suggest-form", { novalidate: true, autocomplete: "off" },
      h("label.suggest-label", { for: "suggest-source" }, "Memory per task"),
      this.source, this.need,
      h("button.btn.btn-sm.btn-primary", { type: "submit" }, "Propose"),
      h("button.btn.btn-sm.btn-ghost.push", { type: "button", onclick: () => this.close(), "aria-label": "Close the slot suggestion" }, "Close"));
    box.replaceChildren(form, this.status, this.result);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.propose();
    });
    this.source.addEventListener("change", () => {
      this.need.hidden = this.source.value !== "need";
      if (!this.need.hidden) this.need.focus();
      this.result.hidden = true;
    });
    button.addEventListener("click", () => (box.hidden ? this.open() : this.close()));
  }

  /** Open the box; ``need`` (bytes) and ``label`` pre-fill it and propose at once. */
  async open({ need, label } = {}) {
    this.box.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    await this.loadFamilies();
    if (need) {
      this.source.value = "need";
      this.need.hidden = false;
      this.need.value = sizeText(need);
      this.label = label || "";
      await this.propose();
    } else {
      this.label = "";
      this.source.focus();
    }
  }

  close() {
    this.box.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
    this.result.hidden = true;
    setText(this.status, "");
  }

  async loadFamilies() {
    let fams = [];
    try {
      fams = (await api.predictMemory()).families;
    } catch (e) {
      setText(this.status, `Cannot load learned needs: ${e.message}`);
    }
    const keep = this.source.value;
    const options = fams.map((f) => h("option", { value: `family:${f.family}` },
      `${f.family.replace(/^configs\//, "")} · ${formatBytes(f.need)} learned`));
    options.push(h("option", { value: "need" }, fams.length ? "A size I type…" : "Type a size…"));
    this.source.replaceChildren(...options);
    if (keep && [...this.source.options].some((o) => o.value === keep)) this.source.value = keep;
    this.need.hidden = this.source.value !== "need";
  }

  async propose() {
    const value = this.source.value;
    const params = {};
    if (value === "need") {
      const text = this.need.value.trim();
      if (!text) {
        this.showError("Type the memory one task needs, e.g. 6GiB.");
        this.need.focus();
        return;
      }
      params.need = text;
    } else {
      params.family = value.slice("family:".length);
    }
    setText(this.status, "Computing…");
    this.status.dataset.kind = "info";
    let s;
    try {
      s = await api.suggestSlots(params);
    } catch (e) {
      this.showError(e.message);
      return;
    }
    this.proposal = s;
    setText(this.status, "");
    this.render(s);
  }

  showError(message) {
    this.result.hidden = true;
    setText(this.status, message);
    this.status.dataset.kind = "error";
  }

  render(s) {
    const rows = Object.entries(s.slots).map(([id, n]) => {
      const cur = s.current[id] ?? this.panel.devices.get(id)?.slots ?? 0;
      const dev = this.panel.devices.get(id);
      return h("li.suggest-item", { dataset: { device: id, change: n === cur ? "same" : n > cur ? "up" : "down" } },
        h("span.suggest-id", null, id),
        h("span.suggest-from", null, String(cur)),
        h("span.suggest-arrow", { "aria-hidden": "true" }, "→"),
        h("span.suggest-to", { "aria-label": `proposed ${n}` }, String(n)),
        dev && dev.memory_total ? h("span.suggest-mem.muted", null, formatBytes(dev.memory_total)) : null);
    });
    const changes = Object.entries(s.slots).filter(([id, n]) => n !== (s.current[id] ?? 0));
    const from = s.source === "learned" ? `learned from ${s.family}` : this.label || "as given";
    // Only admins change slot limits: others see the proposal, to pass on.
    const action = may("slots")
      ? h("button.btn.btn-sm.btn-primary", {
        type: "button", disabled: !changes.length, onclick: (e) => this.apply(e.currentTarget),
      }, changes.length ? `Apply to ${plural(changes.length, "GPU")}` : "Already set")
      : h("span.suggest-note.muted", null, changes.length ? "An admin can apply these limits." : "Already set.");
    this.result.replaceChildren(
      h("ul.suggest-list", { "aria-label": "Proposed slot limits" }, rows),
      h("p.suggest-why.muted", null,
        `${formatBytes(s.need)} per task (${from}); each GPU: (memory − ${formatBytes(s.margin)} margin) ÷ need.`),
      h("div.suggest-actions", null, action));
    this.result.hidden = false;
  }

  async apply(button) {
    const s = this.proposal;
    if (!s || !may("slots")) return;
    button.disabled = true;
    const done = [];
    const failed = [];
    for (const [id, n] of Object.entries(s.slots)) {
      if (n === (s.current[id] ?? 0)) continue;
      try {
        const res = await api.setSlots(id, n);
        const d = this.panel.devices.get(id);
        if (d) {
          d.slots = res.slots;
          this.panel.dirty.add(id);
        }
        s.current[id] = n;
        done.push(`${id} ${n}`);
      } catch (e) {
        failed.push(`${id}: ${e.message}`);
      }
    }
    this.panel.paint();
    this.panel.onChange(this.panel.list());
    if (done.length) toast(`Slot limits set: ${done.join(", ")}`, "ok", 3000);
    if (failed.length) toast(`Not set: ${failed.join("; ")}`, "error");
    this.render(s);
  }
}

/** Return "6.2/24 GiB": used and total memory in the total's unit, compactly. */
export function memoryText(used, total) {
  const units = [["TiB", 1024 ** 4], ["GiB", 1024 ** 3], ["MiB", 1024 ** 2]];
  const [unit, f] = units.find(([, n]) => total >= n) || ["B", 1];
  const num = (v) => {
    const x = v / f;
    return x >= 100 || Number.isInteger(x) ? String(Math.round(x)) : x.toFixed(1);
  };
  return `${num(used)}/${num(total)} ${unit}`;
}

/** Return a byte count as the API's size text (6GiB, 512MiB, or bytes). */
export function sizeText(bytes) {
  const n = Number(bytes);
  for (const [unit, f] of [["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]]) {
    if (n >= f) return `${Math.round((n / f) * 100) / 100}${unit}`;
  }
  return String(Math.round(n));
}
