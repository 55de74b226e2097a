// Devices panel: one card per GPU (and the CPU) with memory, utilisation and an editable slot limit.

import { patch } from "./api.js";
import { formatBytes, h, rafBatch, readOnly, setText, toast } from "./util.js";

const HISTORY = 90; // utilisation samples kept per device for the sparkline

/** The devices panel; ``onChange(devices)`` hears every new device list. */
export class DevicesPanel {
  constructor(container, { onChange } = {}) {
    this.container = container;
    this.onChange = onChange || (() => {});
    this.devices = new Map(); // id -> latest device dict
    this.cards = new Map(); // id -> {root, parts...}
    this.history = new Map(); // id -> [utilisation samples]
    this.dirty = new Set(); // device ids whose figures changed since the last paint
    this.paint = rafBatch(() => this.flush());
    this.loaded = false;
  }

  /** Replace the whole device list (REST answer or a "devices" event). */
  setDevices(list, { sample = false } = {}) {
    const ids = list.map((d) => d.id);
    const sameSet = ids.length === this.devices.size && ids.every((id) => this.devices.has(id));
    for (const d of list) {
      const old = this.devices.get(d.id) || {};
      this.devices.set(d.id, { ...old, ...d });
      if (sample && d.utilization !== null && d.utilization !== undefined) {
        const hist = this.history.get(d.id) || [];
        hist.push(Number(d.utilization));
        if (hist.length > HISTORY) hist.shift();
        this.history.set(d.id, hist);
      }
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

  /** Apply a "slots" event: {device: {slots, running}}. */
  setSlots(usage) {
    for (const [id, u] of Object.entries(usage || {})) {
      const d = this.devices.get(id);
      if (!d) continue;
      if (u.slots !== undefined) d.slots = u.slots;
      if (u.running !== undefined) d.running = u.running;
      this.dirty.add(id);
    }
    this.paint();
    this.onChange(this.list());
  }

  /** Return the devices in display order (GPUs by index, then the CPU). */
  list() {
    return [...this.devices.values()];
  }

  rebuild(ids) {
    this.container.replaceChildren();
    this.cards.clear();
    this.container.setAttribute("aria-busy", "false");
    if (!ids.length) {
      this.container.append(h("p.empty", null, "No devices found. The server sees no GPU and no CPU slots."));
      return;
    }
    for (const id of ids) {
      const card = this.buildCard(this.devices.get(id));
      this.cards.set(id, card);
      this.container.append(card.root);
    }
  }

  buildCard(d) {
    const isGpu = d.kind !== "cpu";
    const label = isGpu ? d.id : "CPU";
    const slotStatus = h("span.slot-status", { "aria-live": "polite" });
    const inputId = `slots-${d.id.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
    let input = null;
    if (!readOnly()) {
      input = h("input.slot-input", {
        id: inputId, type: "number", min: "0", max: "256", step: "1", inputmode: "numeric",
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
    const limit = input || h("span.slot-limit-ro", { "aria-label": `Slot limit for ${label}` });
    const parts = {
      root: null,
      name: h("span.device-name"),
      node: h("span.device-node"),
      memBar: h("span.bar-fill"),
      memText: h("span.meter-value"),
      utilBar: h("span.bar-fill"),
      utilText: h("span.meter-value"),
      spark: h("span.spark"),
      pips: h("span.pips", { "aria-hidden": "true" }),
      running: h("span.slot-running"),
      limit,
      input,
      slotStatus,
    };
    const memRow = h("div.meter", null,
      h("span.meter-label", null, "Memory"),
      parts.memText,
      h("span.bar", { "aria-hidden": "true" }, parts.memBar));
    const utilRow = h("div.meter", null,
      h("span.meter-label", null, "Utilisation"),
      parts.utilText,
      h("span.bar.bar-util", { "aria-hidden": "true" }, parts.utilBar),
      parts.spark);
    parts.memRow = memRow;
    parts.utilRow = utilRow;
    parts.root = h("article.device-card", { dataset: { device: d.id, kind: isGpu ? "gpu" : "cpu" }, "aria-label": label },
      h("header.device-head", null,
        h("span.device-id", null, label),
        parts.name,
        parts.node),
      memRow,
      utilRow,
      h("div.slots-row", null,
        h("span.meter-label", null, "Slots"),
        parts.pips,
        h(input ? "label.slot-count" : "span.slot-count", input ? { for: inputId } : null,
          parts.running, h("span.slot-sep", { "aria-hidden": "true" }, "/")),
        limit,
        slotStatus));
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
        setText(c.memText, `${formatBytes(used)} / ${formatBytes(total)}`);
        c.memRow.title = `${formatBytes(d.memory_free ?? total - used)} free`;
      }
      const util = d.utilization;
      const hasUtil = util !== null && util !== undefined;
      c.utilRow.hidden = !hasUtil;
      if (hasUtil) {
        c.utilBar.style.width = `${Math.max(0, Math.min(100, Number(util)))}%`;
        setText(c.utilText, `${Math.round(Number(util))} %`);
      }
      this.drawSpark(c.spark, this.history.get(id) || []);
      const slots = Number(d.slots ?? 0);
      const running = Number(d.running ?? 0);
      setText(c.running, running);
      if (c.input) {
        const editing = document.activeElement === c.input || c.input.classList.contains("is-dirty");
        if (!editing && c.input.value !== String(slots)) c.input.value = String(slots);
      } else {
        setText(c.limit, slots);
      }
      this.drawPips(c.pips, running, slots);
      c.root.dataset.busy = running >= slots && slots > 0 ? "full" : running > 0 ? "some" : "idle";
    }
    this.dirty.clear();
  }

  drawPips(node, running, slots) {
    const shown = Math.max(slots, running);
    if (shown > 16) {
      setText(node, "");
      node.dataset.many = "1";
      return;
    }
    delete node.dataset.many;
    const key = `${running}/${slots}`;
    if (node.dataset.key === key) return;
    node.dataset.key = key;
    node.replaceChildren(...Array.from({ length: shown }, (_, i) =>
      h("span.pip", { class: i < running ? (i < slots ? "on" : "over") : "" })));
  }

  drawSpark(node, samples) {
    if (!samples.length) {
      node.replaceChildren();
      return;
    }
    if (samples.length === 1) samples = [samples[0], samples[0]];
    const w = 100;
    const hgt = 18;
    const step = w / (HISTORY - 1);
    const x0 = w - step * (samples.length - 1);
    const pts = samples.map((v, i) => `${(x0 + i * step).toFixed(1)},${(hgt - (Math.max(0, Math.min(100, v)) / 100) * hgt).toFixed(1)}`);
    let svg = node.firstElementChild;
    if (!svg) {
      const ns = "http://www.w3.org/2000/svg";
      svg = document.createElementNS(ns, "svg");
      svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("aria-hidden", "true");
      const area = document.createElementNS(ns, "polygon");
      area.setAttribute("class", "spark-area");
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("class", "spark-line");
      svg.append(area, line);
      node.append(svg);
      node.title = "Utilisation, recent minutes";
    }
    svg.lastElementChild.setAttribute("points", pts.join(" "));
    svg.firstElementChild.setAttribute("points", `${x0.toFixed(1)},${hgt} ${pts.join(" ")} ${w},${hgt}`);
  }

  async save(id, input, status) {
    const d = this.devices.get(id);
    const text = input.value.trim();
    const current = String(d.slots ?? 0);
    if (text === current) {
      input.classList.remove("is-dirty", "is-invalid");
      return;
    }
    const n = Number(text);
    if (text === "" || !Number.isInteger(n) || n < 0) {
      input.classList.add("is-invalid");
      setText(status, "whole number ≥ 0");
      status.dataset.kind = "error";
      return;
    }
    if (input.dataset.saving === text) return;
    input.dataset.saving = text;
    setText(status, "saving…");
    status.dataset.kind = "info";
    try {
      const res = await patch(`/devices/${encodeURIComponent(id)}`, { slots: n });
      const dev = (res && (res.device || res)) || {};
      d.slots = dev.slots ?? n;
      if (dev.running !== undefined) d.running = dev.running;
      input.classList.remove("is-dirty", "is-invalid");
      setText(status, "saved");
      status.dataset.kind = "ok";
      setTimeout(() => {
        if (status.textContent === "saved") setText(status, "");
      }, 2000);
      this.dirty.add(id);
      this.paint();
      this.onChange(this.list());
    } catch (e) {
      input.classList.add("is-invalid");
      setText(status, "not saved");
      status.dataset.kind = "error";
      toast(`Slot limit for ${id} not changed: ${e.message}`, "error");
    } finally {
      delete input.dataset.saving;
    }
  }
}
