// "New batch" form: live regex preview, device choice, a check step, and the start call.

import * as api from "./api.js";
import { debounce, formatBytes, h, plural, setText, toast } from "./util.js";

const PREVIEW_SHOWN = 300; // configs listed in the DOM; the count always covers them all
const FAMILIES_SHOWN = 6; // families named in the memory preview

export class BatchForm {
  constructor(form, { onStarted, onSuggest } = {}) {
    this.form = form;
    this.onStarted = onStarted || (() => {});
    this.onSuggest = onSuggest || null;
    this.$ = (id) => form.querySelector(`#${id}`);
    this.pattern = this.$("pattern");
    this.status = this.$("pattern-status");
    this.preview = this.$("preview-list");
    this.checkButton = this.$("check-button");
    this.confirm = this.$("confirm");
    this.error = this.$("form-error");
    this.deviceChecks = this.$("device-checks");
    this.deviceChoice = this.$("device-choice");
    this.memoryBox = this.$("memory-preview");
    this.families = null; // GET /memory/predict's families for the current pattern
    this.configs = null; // configs matching the current pattern (null: unknown / invalid)
    this.complete = new Set(); // those of them whose results are already complete
    this.previewFor = null; // the pattern this.configs belong to
    this.seq = 0;
    this.controller = null;
    this.devices = [];
    this.deviceKey = "";
    this.starting = false;

    this.schedulePreview = debounce(() => this.loadPreview(), 250);
    this.pattern.addEventListener("input", () => {
      this.hideConfirm();
      this.hideError();
      this.checkButton.disabled = true;
      if (this.pattern.value.trim()) {
        this.setStatus("Matching…", "info");
        this.schedulePreview();
      } else {
        this.schedulePreview.cancel();
        this.showPreview(null);
        this.showMemory(null);
        this.setStatus("Type a pattern to see the matching configs (. matches all).", "info");
      }
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.check();
    });
    form.addEventListener("change", (e) => {
      if (e.target.name === "target") {
        this.renderDeviceChecks(true);
        this.showMemory(this.families);
      }
      if (e.target.id === "overwrite") this.updateCompleteNote();
      if (e.target !== this.pattern) this.hideConfirm();
    });
    this.$("start-button").addEventListener("click", () => this.start());
    this.$("back-button").addEventListener("click", () => {
      this.hideConfirm();
      this.pattern.focus();
    });
  }

  /** Put a pattern in the form and preview it (the "Try the demo batch" button). */
  fill(pattern) {
    this.pattern.value = pattern;
    this.pattern.dispatchEvent(new Event("input"));
    this.form.scrollIntoView({ block: "nearest" });
    this.pattern.focus();
  }

  setStatus(text, kind) {
    setText(this.status, text);
    this.status.dataset.kind = kind;
    this.pattern.classList.toggle("is-invalid", kind === "error");
    this.pattern.setAttribute("aria-invalid", kind === "error" ? "true" : "false");
  }

  async loadPreview() {
    const pattern = this.pattern.value.trim();
    if (!pattern) return;
    const seq = ++this.seq;
    if (this.controller) this.controller.abort();
    this.controller = new AbortController();
    try {
      const data = await api.configs(pattern, this.controller.signal);
      if (seq !== this.seq) return;
      this.configs = data.configs;
      this.complete = new Set(data.complete);
      this.previewFor = pattern;
      const n = this.configs.length;
      this.setStatus(n ? `${plural(n, "config")} match` : "No config matches this pattern.", n ? "ok" : "warn");
      this.updateCompleteNote();
      this.showPreview(this.configs);
      this.checkButton.disabled = n === 0;
      if (n) this.loadMemory(pattern, seq);
      else this.showMemory(null);
    } catch (e) {
      if (e.name === "AbortError" || seq !== this.seq) return;
      this.configs = null;
      this.previewFor = null;
      this.showPreview(null);
      this.showMemory(null);
      this.setStatus(e.status === 400 ? `Invalid pattern: ${e.message}` : `Cannot preview: ${e.message}`, "error");
      this.checkButton.disabled = true;
    }
  }

  /** Fetch the expected GPU memory per family of the pattern's configs (declared or learned). */
  async loadMemory(pattern, seq) {
    try {
      const data = await api.predictMemory(pattern, this.controller ? this.controller.signal : undefined);
      if (seq !== this.seq) return;
      this.showMemory(data.families);
    } catch (e) {
      if (e.name === "AbortError" || seq !== this.seq) return;
      this.showMemory(null);
    }
  }

  /** Return the largest known need of the shown families, or 0. */
  largestNeed() {
    return Math.max(0, ...(this.families || []).map((f) => Number(f.need) || 0));
  }

  showMemory(families) {
    this.families = families;
    const box = this.memoryBox;
    if (!box) return;
    const known = (families || []).filter((f) => f.need);
    if (!(families || []).length || this.target() !== "gpu") {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    const items = families.slice(0, FAMILIES_SHOWN).map((f) => h("span.mem-family", {
      dataset: { source: f.source || "unknown", family: f.family },
      title: f.note ? `${f.family}: ${f.note}` : f.need ? `${f.family}: ${formatBytes(f.need)} per task, ${f.source === "learned"
        ? "the largest peak seen in its finished tasks" : "declared as gpu_memory in its configs"}`
        : `${f.family}: no need known (declare gpu_memory, or let one task finish to learn it)`,
    }, h("span.mem-name", null, f.family.replace(/^configs\//, "")),
    h("span.mem-need", null, f.source ? formatBytes(f.need || 0) : "unknown"),
    f.source ? h("span.mem-source", null, f.source) : null));
    if (families.length > FAMILIES_SHOWN) items.push(h("span.muted", null, `+${families.length - FAMILIES_SHOWN} more`));
    const suggest = known.length && this.onSuggest
      ? h("button.link-button.act", {
        type: "button",
        onclick: () => this.onSuggest({ need: this.largestNeed(), label: `the largest need of ${this.pattern.value.trim()}` }),
      }, "Suggest slots")
      : null;
    box.replaceChildren(h("span.mem-title", null, "GPU memory per task:"), ...items, ...(suggest ? [suggest] : []));
    box.hidden = false;
  }

  updateCompleteNote() {
    if (!this.configs || !this.configs.length) return;
    const complete = this.configs.filter((c) => this.complete.has(c)).length;
    const base = `${plural(this.configs.length, "config")} match`;
    if (!complete) {
      setText(this.status, base);
      return;
    }
    setText(this.status, `${base} · ${complete} already complete` +
      (this.$("overwrite").checked ? " (will run again)" : " (skipped unless Overwrite)"));
  }

  showPreview(configs) {
    const list = this.preview;
    if (!configs || !configs.length) {
      list.hidden = true;
      list.replaceChildren();
      return;
    }
    list.hidden = false;
    list.replaceChildren(...this.configItems(configs));
  }

  configItems(configs) {
    const items = configs.slice(0, PREVIEW_SHOWN).map((c) => {
      const done = this.complete.has(c);
      return h("li", { title: done ? `${c}: results complete` : c, class: done ? "is-complete" : null },
        c.replace(/^configs\//, ""));
    });
    if (configs.length > PREVIEW_SHOWN) {
      items.push(h("li.more", null, `… and ${configs.length - PREVIEW_SHOWN} more`));
    }
    return items;
  }

  /** Take the current device list (keeps the user's ticks when the set of GPUs is unchanged). */
  setDevices(devices) {
    this.devices = devices;
    const key = devices.map((d) => d.id).join(",");
    const changed = key !== this.deviceKey;
    this.deviceKey = key;
    const gpus = devices.filter((d) => d.kind !== "cpu");
    const gpuRadio = this.form.querySelector('input[name="target"][value="gpu"]');
    const cpuRadio = this.form.querySelector('input[name="target"][value="cpu"]');
    gpuRadio.disabled = gpus.length === 0;
    cpuRadio.disabled = !devices.some((d) => d.kind === "cpu");
    if (!gpus.length && gpuRadio.checked && !cpuRadio.disabled) cpuRadio.checked = true;
    if (changed) this.renderDeviceChecks(false);
    else this.updateDeviceLabels();
  }

  target() {
    const checked = this.form.querySelector('input[name="target"]:checked');
    return checked ? checked.value : "gpu";
  }

  renderDeviceChecks(keep) {
    const useGpu = this.target() === "gpu";
    const previous = new Set(this.selectedDevices() || []);
    const hadSelection = keep && previous.size > 0;
    const gpus = this.devices.filter((d) => d.kind !== "cpu");
    this.deviceChoice.hidden = !useGpu;
    if (!useGpu) return;
    if (!gpus.length) {
      this.deviceChecks.replaceChildren(h("span.muted", null, "No GPUs on this server: run on the CPU."));
      return;
    }
    this.deviceChecks.replaceChildren(...gpus.map((d) => h("label.check", { dataset: { device: d.id } },
      h("input", { type: "checkbox", name: "devices", value: d.id, checked: hadSelection ? previous.has(d.id) : true }),
      h("span.check-id", null, d.id),
      h("span.check-meta.muted", null, ""))));
    this.updateDeviceLabels();
  }

  updateDeviceLabels() {
    for (const d of this.devices) {
      const meta = this.deviceChecks.querySelector(`label[data-device="${CSS.escape(d.id)}"] .check-meta`);
      if (meta) setText(meta, `${d.slots ?? 0} slot${d.slots === 1 ? "" : "s"}`);
    }
  }

  /** Return the ticked GPU ids, or null when every GPU is ticked (the batch may use any). */
  selectedDevices() {
    const boxes = [...this.deviceChecks.querySelectorAll('input[name="devices"]')];
    if (!boxes.length) return null;
    const ticked = boxes.filter((b) => b.checked).map((b) => b.value);
    return ticked.length === boxes.length ? null : ticked;
  }

  /** Return the request body for POST /batches, or throw an Error naming what is missing. */
  body() {
    const pattern = this.pattern.value.trim();
    const useGpu = this.target() === "gpu";
    const body = { pattern, use_gpu: useGpu, overwrite: this.$("overwrite").checked };
    if (useGpu) {
      const devices = this.selectedDevices();
      if (devices && !devices.length) throw new Error("Tick at least one GPU, or run on the CPU.");
      if (devices) body.devices = devices;
    }
    const command = this.$("command").value.trim();
    if (command) body.command = command;
    return body;
  }

  async check() {
    this.hideError();
    const pattern = this.pattern.value.trim();
    if (!pattern) {
      this.setStatus("Type a pattern first.", "error");
      this.pattern.focus();
      return;
    }
    if (this.previewFor !== pattern) {
      this.schedulePreview.cancel();
      await this.loadPreview();
    }
    if (!this.configs || !this.configs.length) return;
    let body;
    try {
      body = this.body();
    } catch (e) {
      this.showError(e.message);
      return;
    }
    const facts = confirmFacts(body, this.configs.length,
      this.configs.filter((c) => this.complete.has(c)).length, body.use_gpu ? this.largestNeed() : 0);
    // Each fact is one <dt>/<dd> pair; facts that do not apply are left out, not "null".
    this.$("confirm-facts").replaceChildren(...facts.flatMap(([k, v, cls]) => [h("dt", null, k), h(cls ? `dd.${cls}` : "dd", null, v)]));
    this.$("confirm-list").replaceChildren(...this.configItems(this.configs));
    const runs = body.overwrite ? this.configs.length : this.configs.length - this.configs.filter((c) => this.complete.has(c)).length;
    setText(this.$("start-button"), runs ? `Start ${plural(runs, "task")}` : "Start (all will be skipped)");
    this.confirm.hidden = false;
    this.checkButton.hidden = true;
    this.preview.hidden = true;
    this.$("start-button").focus();
  }

  hideConfirm() {
    if (this.confirm.hidden) return;
    this.confirm.hidden = true;
    this.checkButton.hidden = false;
    if (this.configs && this.configs.length) this.preview.hidden = false;
  }

  showError(message) {
    setText(this.error, message);
    this.error.hidden = false;
  }

  hideError() {
    this.error.hidden = true;
  }

  async start() {
    if (this.starting) return;
    let body;
    try {
      body = this.body();
    } catch (e) {
      this.showError(e.message);
      return;
    }
    this.starting = true;
    const button = this.$("start-button");
    button.disabled = true;
    setText(button, "Starting…");
    try {
      const batch = await api.submitBatch(body);
      const skipped = batch.counts.skipped || 0;
      toast(`Batch #${batch.id} started: ${plural(batch.total - skipped, "task")} queued` +
        (skipped ? `, ${skipped} already complete (skipped)` : ""), "ok");
      this.hideConfirm();
      this.onStarted(batch);
    } catch (e) {
      this.showError(`Not started: ${e.message}`);
    } finally {
      this.starting = false;
      button.disabled = false;
    }
  }
}

/**
 * Return the facts the start confirmation lists, as [label, text, class?] rows: configs,
 * where they run, the expected GPU memory (when known), overwrite, and the command (when set).
 */
export function confirmFacts(body, count, complete, need) {
  const facts = [
    ["Configs", plural(count, "config") + (complete ? ` (${complete} with complete results)` : "")],
    ["Runs on", body.use_gpu ? (body.devices ? body.devices.join(", ") : "any GPU") : "CPU"],
  ];
  if (need) facts.push(["GPU memory", `up to ${formatBytes(need)} per task (expected)`]);
  facts.push(["Overwrite", body.overwrite ? "yes: complete results are run again"
    : complete ? `no: ${plural(complete, "config")} with complete results will be skipped` : "no"]);
  if (body.command) facts.push(["Command", body.command, "mono"]);
  return facts;
}
