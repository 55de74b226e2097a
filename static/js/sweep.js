// The sweep page: pick a base config, list parameters and their values, preview, create.
//
// The server does all the work (POST /sweeps/preview, POST /sweeps); this page only turns
// the form into the request body and shows the answers, so the page, the API and the
// command line make exactly the same files.

import { get, post } from "./api.js";
import { bootstrap, debounce, h, may, plural, root, setText, toast } from "./util.js";

const $ = (id) => document.getElementById(id);
const form = $("sweep-form");
const baseInput = $("sweep-base");
const folderInput = $("sweep-folder");
const paramsBox = $("sweep-params");
const createButton = $("sweep-create");
const PREVIEW_ROWS = 200;

let baseParams = []; // [{path, value}] of the chosen base, base resolved
let rows = []; // the parameter rows of the form
let lastPreview = null;
let previewSeq = 0;
let nextRowId = 1;

// -- values ---------------------------------------------------------------------------------------

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

/** Return a typed value from the text of one list item: 2 -> 2, true -> true, "a b" -> "a b". */
export function parseItem(text) {
  const t = text.trim();
  if (NUMBER.test(t)) return Number(t);
  if (t === "true" || t === "false") return t === "true";
  if (t === "null") return null;
  const quoted = /^"(.*)"$|^'(.*)'$/.exec(t);
  if (quoted) return quoted[1] ?? quoted[2];
  return t;
}

/** Return the values of a list field ("1, 2, 3" or a JSON list), or throw naming the problem. */
export function parseList(text) {
  const t = text.trim();
  if (!t) throw new Error("give at least one value, e.g. 1, 2, 3");
  if (t.startsWith("[")) {
    let v;
    try {
      v = JSON.parse(t);
    } catch (e) {
      throw new Error("not a JSON list; write 1, 2, 3 or [1, 2, 3]");
    }
    if (!Array.isArray(v)) throw new Error("not a list");
    return v;
  }
  const items = t.split(",");
  if (items.some((i) => !i.trim())) throw new Error("an empty value between commas");
  return items.map(parseItem);
}

function numberOrText(text) {
  const t = String(text).trim();
  return NUMBER.test(t) ? Number(t) : t;
}

/** Return the request's values for one parameter row (a list or a range object). */
function rowSpec(row) {
  if (row.kind === "list") return parseList(row.list);
  const spec = { start: numberOrText(row.start), stop: numberOrText(row.stop) };
  if (row.kind === "step") spec.step = numberOrText(row.step);
  else spec.count = numberOrText(row.count);
  return spec;
}

function mode() {
  return form.querySelector('input[name="mode"]:checked').value;
}

function suggestedFolder() {
  const first = rows.find((r) => r.path.trim());
  if (!first) return "";
  const last = first.path.trim().split(".").pop().replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[-.]+/, "");
  return last || "sweep";
}

function folder() {
  return folderInput.value.trim() || suggestedFolder();
}

/** Return the request body from the form, or throw an Error naming what to fix. */
function body() {
  const base = baseInput.value.trim();
  if (!base) throw new Error("pick a base config");
  const params = {};
  const used = rows.filter((r) => r.path.trim());
  if (!used.length) throw new Error("add a parameter to vary");
  for (const r of used) {
    const path = r.path.trim();
    if (path in params) throw new Error(`${path} is listed twice`);
    try {
      params[path] = rowSpec(r);
    } catch (e) {
      throw new Error(`${path}: ${e.message}`);
    }
  }
  return { base, folder: folder(), mode: mode(), params, replace: $("sweep-replace").checked };
}

// -- the base config ------------------------------------------------------------------------------

async function loadBases() {
  try {
    const data = await get("/sweeps/bases");
    $("sweep-bases").replaceChildren(...data.configs.map((c) => h("option", { value: c })));
  } catch (e) {
    toast(`Could not list the configs: ${e.message}`, "error");
  }
}

let baseSeq = 0;
let loadedBase = null;
async function loadBase() {
  const base = baseInput.value.trim();
  if (base === loadedBase) return; // "input" and "change" both ask; once is enough
  loadedBase = base;
  const status = $("sweep-base-status");
  const seq = ++baseSeq;
  if (!base) {
    baseParams = [];
    renderChips();
    setText(status, "Type or pick a config under configs/.");
    status.dataset.kind = "";
    return;
  }
  try {
    const data = await get("/sweeps/params", { config: base });
    if (seq !== baseSeq) return;
    baseParams = data.params;
    const via = data.bases.length ? ` (with its base ${data.bases.join(", ")})` : "";
    setText(status, `${plural(data.params.length, "parameter")}${via}`);
    status.dataset.kind = "ok";
  } catch (e) {
    if (seq !== baseSeq) return;
    baseParams = [];
    setText(status, e.message);
    status.dataset.kind = "error";
  }
  renderChips();
  renderRows();
  schedulePreview();
}

function shortValue(v) {
  const text = typeof v === "string" ? v : JSON.stringify(v);
  return text.length > 24 ? `${text.slice(0, 23)}…` : text;
}

function renderChips() {
  const field = $("base-params-field");
  field.hidden = !baseParams.length;
  const chosen = new Set(rows.map((r) => r.path.trim()));
  $("base-params").replaceChildren(...baseParams.map((p) => h("button.param-chip", {
    type: "button", role: "listitem", disabled: chosen.has(p.path),
    title: `Vary ${p.path} (now ${shortValue(p.value)})`,
    onclick: () => addRow(p.path, p.value),
  }, h("span.mono", null, p.path), h("span.param-chip-value", null, shortValue(p.value)))));
  const list = h("datalist", { id: "sweep-param-paths" }, ...baseParams.map((p) => h("option", { value: p.path })));
  document.getElementById("sweep-param-paths")?.remove();
  form.append(list);
}

// -- parameter rows ---------------------------------------------------------------------------------

function defaultsFor(value) {
  if (typeof value === "number") {
    const step = Number.isInteger(value) && value !== 0 ? Math.abs(value) : Math.abs(value) || 1;
    const a = value;
    return { list: [a, a * 2, a * 3].map((x) => +x.toPrecision(12)).join(", "), start: String(a), stop: String(+(a * 3).toPrecision(12)), step: String(step), count: "3" };
  }
  const text = value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value);
  return { list: text, start: "", stop: "", step: "", count: "3" };
}

function addRow(path = "", value = undefined) {
  const d = defaultsFor(value);
  rows.push({ id: nextRowId++, path, kind: "list", ...d });
  renderRows();
  renderChips();
  schedulePreview();
  const last = paramsBox.querySelector(".param-row:last-child input[data-key='list']");
  if (last && path) last.focus();
}

function removeRow(id) {
  rows = rows.filter((r) => r.id !== id);
  renderRows();
  renderChips();
  schedulePreview();
}

function input(row, key, label, attrs = {}) {
  return h("label.param-input", null, h("span.param-input-label", null, label),
    h("input.mono", {
      type: "text", value: row[key], spellcheck: "false", dataset: { key },
      "aria-label": `${label} of ${row.path || "the parameter"}`,
      oninput: (e) => { row[key] = e.target.value; if (key === "path") renderChips(); schedulePreview(); },
      ...attrs,
    }));
}

function renderRows() {
  paramsBox.replaceChildren(...rows.map((row, i) => {
    const kind = h("select", {
      "aria-label": `Values of ${row.path || "parameter " + (i + 1)}`,
      onchange: (e) => { row.kind = e.target.value; renderRows(); schedulePreview(); },
    }, h("option", { value: "list", selected: row.kind === "list" }, "values"),
    h("option", { value: "step", selected: row.kind === "step" }, "range by step"),
    h("option", { value: "count", selected: row.kind === "count" }, "range by count"));
    const values = row.kind === "list"
      ? [input(row, "list", "Values", { placeholder: "1, 2, 3", class: "param-list" })]
      : [input(row, "start", "From", { class: "param-num" }), input(row, "stop", "to", { class: "param-num" }),
        row.kind === "step" ? input(row, "step", "step", { class: "param-num" }) : input(row, "count", "count", { class: "param-num" })];
    return h("div.param-row", { dataset: { row: String(row.id) } },
      h("span.param-index", { "aria-hidden": "true" }, String(i + 1)),
      input(row, "path", "YAML path", { list: "sweep-param-paths", placeholder: "model_params.radius", class: "param-path" }),
      kind,
      h("button.btn.btn-sm.btn-danger-ghost.param-remove", { type: "button", "aria-label": `Remove ${row.path || "parameter " + (i + 1)}`, onclick: () => removeRow(row.id) }, "Remove"),
      h("div.param-values", { dataset: { kind: row.kind } }, ...values));
  }));
  if (!rows.length) paramsBox.append(h("p.muted.param-empty", null, "No parameter yet: click one of the base's parameters above, or add one."));
}

// -- preview and create -------------------------------------------------------------------------------

const schedulePreview = debounce(() => preview(), 250);

function showError(message) {
  const box = $("sweep-error");
  box.hidden = !message;
  setText(box, message || "");
}

async function preview() {
  const seq = ++previewSeq;
  folderInput.placeholder = suggestedFolder() ? `${suggestedFolder()} (suggested)` : "e.g. radius";
  const name = (folder().split("/").pop() || "FOLDER");
  setText($("name-example"), `${name}-${rows.filter((r) => r.path.trim()).map(() => "1").join("-") || "1"}.yaml`);
  let request;
  try {
    request = body();
  } catch (e) {
    lastPreview = null;
    renderPreview(null, e.message);
    return;
  }
  try {
    const data = await post("/sweeps/preview", request);
    if (seq !== previewSeq) return;
    lastPreview = data;
    renderPreview(data, null);
  } catch (e) {
    if (seq !== previewSeq) return;
    lastPreview = null;
    renderPreview(null, e.message);
  }
}

function renderPreview(data, error) {
  const table = $("sweep-preview");
  const empty = $("sweep-preview-empty");
  showError(error && rows.some((r) => r.path.trim()) && baseInput.value.trim() ? error : "");
  createButton.disabled = !data || !may("submit");
  if (!data) {
    table.hidden = true;
    empty.hidden = false;
    setText(empty, error ? `Nothing to preview yet: ${error}.` : "Pick a base config and a parameter to see the configs this sweep makes.");
    setText($("sweep-count"), "");
    setText($("sweep-hint"), "");
    createButton.textContent = "Create";
    return;
  }
  const existing = new Set(data.existing);
  const start = $("sweep-start").checked;
  createButton.textContent = `${start ? "Create and start" : "Create"} ${plural(data.count, "config")}`;
  const clash = data.existing.length && !$("sweep-replace").checked;
  setText($("sweep-hint"), clash ? `${data.existing.length} of these files exist: tick “Replace” or choose another folder.` : `in ${data.folder}/`);
  $("sweep-hint").dataset.kind = clash ? "warn" : "";
  setText($("sweep-count"), `${plural(data.count, "config")} · ${data.mode}`);
  empty.hidden = true;
  table.hidden = false;
  $("sweep-preview-head").replaceChildren(h("th", { scope: "col" }, "Config"),
    ...data.params.map((p) => h("th", { scope: "col", class: "mono" }, p.path)));
  const body = data.rows.slice(0, PREVIEW_ROWS).map((r) => h("tr", { dataset: { config: r.config } },
    h("td.mono", null, r.config.split("/").pop(), existing.has(r.config) ? h("span.badge.exists-badge", { title: "This file exists already" }, "exists") : null),
    ...data.params.map((p) => h("td.mono", null, shortValue(r.values[p.path])))));
  if (data.rows.length > PREVIEW_ROWS) {
    body.push(h("tr", null, h("td.muted", { colspan: String(data.params.length + 1) }, `… and ${data.rows.length - PREVIEW_ROWS} more`)));
  }
  $("sweep-preview-body").replaceChildren(...body);
}

async function create(event) {
  event.preventDefault();
  if (createButton.disabled) return;
  let request;
  try {
    request = body();
  } catch (e) {
    showError(e.message);
    return;
  }
  const start = $("sweep-start").checked;
  request.start = start;
  if (start) {
    request.batch = { use_gpu: form.querySelector('input[name="sweep-target"]:checked').value === "gpu" };
  }
  createButton.disabled = true;
  showError("");
  try {
    const data = await post("/sweeps", request);
    const done = $("sweep-done");
    const folderPath = data.configs.length ? data.configs[0].split("/").slice(0, -1).join("/") : "";
    const parts = [h("p", null, `Created ${plural(data.configs.length, "config")} in `, h("span.mono", null, `${folderPath}/`), ".")];
    if (data.batch) {
      parts.push(h("p", null, `Batch #${data.batch.id} started (${plural(data.batch.total, "task")}). `,
        h("a.btn.btn-sm.btn-primary", { href: `${root()}/batches/${data.batch.id}/results`, id: "open-results" }, "Open its results table")));
    } else {
      const pattern = `^${folderPath}/`;
      parts.push(h("p", null, h("a", { href: `${root()}/results?pattern=${encodeURIComponent(pattern)}` }, "Results table of these configs"),
        " · start them from the dashboard with the pattern ", h("span.mono", null, pattern)));
    }
    done.replaceChildren(...parts);
    done.hidden = false;
    toast(`Created ${plural(data.configs.length, "config")}`, "ok");
    schedulePreview();
  } catch (e) {
    showError(e.message);
    createButton.disabled = false;
  }
}

function init() {
  baseInput.addEventListener("change", loadBase);
  baseInput.addEventListener("input", debounce(loadBase, 300));
  folderInput.addEventListener("input", schedulePreview);
  form.addEventListener("change", (e) => {
    if (e.target.name === "mode" || e.target.id === "sweep-replace" || e.target.id === "sweep-start") schedulePreview();
    if (e.target.id === "sweep-start") $("sweep-target").hidden = !e.target.checked;
  });
  $("add-param").addEventListener("click", () => addRow());
  form.addEventListener("submit", create);
  renderRows();
  loadBases();
  const preset = bootstrap().sweep_base;
  if (preset) {
    baseInput.value = preset;
    loadBase();
  }
}

init();
