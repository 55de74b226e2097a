// The results table of a batch (or of the configs matching a pattern): sortable, filterable,
// the best value of each metric highlighted, a CSV download and a uPlot chart of a metric
// against a parameter. It re-fetches GET /batches/<id>/results (at most once a second) as
// the batch's tasks change.

import { apiUrl, get } from "./api.js";
import * as live from "./live.js";
import { bootstrap, formatBytes, formatDuration, h, root, setText, stateBadge, throttle } from "./util.js";

const $ = (id) => document.getElementById(id);
const info = bootstrap().results || {};
const batchId = info.batch ?? null;
let pattern = info.pattern || "";

const PALETTE = ["#2563eb", "#db2777", "#0d9488", "#d97706", "#7c3aed", "#16a34a", "#dc2626", "#0891b2"];
const FIXED = [
  { key: "config", label: "Config" },
  { key: "state", label: "State" },
  { key: "duration", label: "Duration", num: true },
  { key: "peak_memory", label: "Peak GPU memory", num: true },
];

let data = null;
let sort = { key: "config", dir: 1 };
const goalOverride = new Map(); // metric -> "min" | "max" chosen in the page
let plot = null;
let plotKey = "";
let groupChosen = false; // the user picked "colour by" (even "nothing"): keep it

// -- values -----------------------------------------------------------------------------------------

/** Return a row's value for a column key ("config", "p:<path>", "m:<metric>" ...). */
function valueOf(row, key) {
  if (key.startsWith("p:")) return row.params[key.slice(2)];
  if (key.startsWith("m:")) return row.metrics[key.slice(2)];
  return row[key];
}

/** Format a number compactly (6 significant digits), anything else as text. */
export function formatValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    const abs = Math.abs(v);
    if (abs !== 0 && (abs >= 1e6 || abs < 1e-4)) return v.toExponential(3);
    return String(+v.toPrecision(6));
  }
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

function compare(a, b) {
  const na = a === null || a === undefined || a === "";
  const nb = b === null || b === undefined || b === "";
  if (na || nb) return na === nb ? 0 : na ? 1 : -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(formatValue(a)).localeCompare(String(formatValue(b)), undefined, { numeric: true });
}

function goal(metric) {
  return goalOverride.get(metric) || (data && data.goals[metric]) || "max";
}

// -- filtering ---------------------------------------------------------------------------------------

const TERM = /^([A-Za-z0-9_.\-/]+)\s*(<=|>=|!=|=|<|>)\s*(.+)$/;

/** Return a predicate for the filter text: words match any cell; name<op>value compares. */
export function makeFilter(text, params, metrics) {
  const terms = text.trim().split(/\s+/).filter(Boolean);
  const tests = terms.map((term) => {
    const m = TERM.exec(term);
    if (m) {
      const [, name, op, raw] = m;
      const keys = [...metrics.map((x) => `m:${x}`), ...params.map((x) => `p:${x}`), "duration", "state"]
        .filter((k) => k.replace(/^[pm]:/, "") === name || k.replace(/^[pm]:/, "").endsWith(`.${name}`));
      const want = Number.isNaN(Number(raw)) ? raw : Number(raw);
      return (row) => keys.some((k) => {
        const v = valueOf(row, k);
        if (v === undefined || v === null) return false;
        const c = typeof want === "number" && typeof v === "number" ? v - want : String(v).localeCompare(String(want));
        return { "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0, "=": c === 0, "!=": c !== 0 }[op];
      });
    }
    const needle = term.toLowerCase();
    return (row) => [row.config, row.state, ...Object.values(row.params).map(formatValue)]
      .some((v) => String(v ?? "").toLowerCase().includes(needle));
  });
  return (row) => tests.every((t) => t(row));
}

function visibleRows() {
  if (!data) return [];
  const state = $("results-state").value;
  const keep = makeFilter($("results-filter").value, data.params, data.metrics);
  const rows = data.rows.filter((r) => (!state || r.state === state) && keep(r));
  rows.sort((a, b) => sort.dir * compare(valueOf(a, sort.key), valueOf(b, sort.key)) ||
    compare(a.config, b.config));
  return rows;
}

// -- the table ------------------------------------------------------------------------------------------

function columns() {
  const fixed = FIXED.filter((c) => c.key !== "peak_memory" || data.rows.some((r) => r.peak_memory));
  return [...fixed, ...data.params.map((p) => ({ key: `p:${p}`, label: p, param: true })),
    ...data.metrics.map((m) => ({ key: `m:${m}`, label: m, metric: m, num: true }))];
}

/** Return a header label: a dotted path's last part, its prefix small above it. */
function headLabel(label) {
  const cut = label.lastIndexOf(".");
  if (cut <= 0) return [label];
  return [h("span.head-prefix", null, label.slice(0, cut + 1)), label.slice(cut + 1)];
}

function renderHead() {
  const cells = columns().map((c) => {
    const sorted = sort.key === c.key;
    const th = h("th", {
      scope: "col", class: [c.num ? "num" : "", c.param ? "param-col" : "", c.metric ? "metric-col" : ""].join(" "),
      dataset: { sort: c.key }, "aria-sort": sorted ? (sort.dir > 0 ? "ascending" : "descending") : null,
    }, h("button", { type: "button", title: `Sort by ${c.label}`, onclick: () => setSort(c.key) }, ...headLabel(c.label)));
    if (c.metric) {
      const g = goal(c.metric);
      th.append(h("button.goal-toggle", {
        type: "button", dataset: { goal: g },
        title: `Best = ${g === "min" ? "lowest" : "highest"}; click to switch`,
        "aria-label": `Best ${c.metric} is the ${g === "min" ? "lowest" : "highest"}; switch`,
        onclick: (e) => { e.stopPropagation(); goalOverride.set(c.metric, g === "min" ? "max" : "min"); render(); },
      }, g === "min" ? "↓best" : "↑best"));
    }
    return th;
  });
  $("results-head-row").replaceChildren(...cells);
}

function setSort(key) {
  sort = sort.key === key ? { key, dir: -sort.dir } : { key, dir: key.startsWith("m:") && goal(key.slice(2)) === "max" ? -1 : 1 };
  render();
}

function bestValues(rows) {
  const best = new Map();
  for (const m of data.metrics) {
    const nums = rows.map((r) => r.metrics[m]).filter((v) => typeof v === "number");
    const lo = Math.min(...nums);
    const hi = Math.max(...nums);
    if (nums.length > 1 && lo !== hi) best.set(m, goal(m) === "min" ? lo : hi); // all equal: no best
  }
  return best;
}

/** Return the folder every row's config is in ("" when they differ): the table shows names. */
function commonFolder() {
  const folders = new Set(data.rows.map((r) => r.config.slice(0, r.config.lastIndexOf("/") + 1)));
  return folders.size === 1 ? [...folders][0] : "";
}

function renderBody(rows) {
  const best = bestValues(rows);
  const showPeak = data.rows.some((r) => r.peak_memory);
  const folder = commonFolder();
  const shown = (config) => (folder ? config.slice(folder.length) : config.replace(/^configs\//, ""));
  const body = rows.map((r) => {
    const config = r.task
      ? h("a", { href: `${root()}/tasks/${r.task}`, title: r.note || r.config }, shown(r.config))
      : h("span", { title: r.note || `${r.config}: not run yet` }, shown(r.config));
    const cells = [
      h("td.config-cell.mono", null, config),
      h("td", null, r.state ? stateBadge(r.state) : h("span.muted", null, "not run")),
      h("td.num", null, r.duration === null ? "" : formatDuration(r.duration)),
      showPeak ? h("td.num", null, r.peak_memory ? formatBytes(r.peak_memory) : "") : null,
      ...data.params.map((p) => h("td.mono.param-cell", { title: p, class: typeof r.params[p] === "number" ? "num" : "" }, formatValue(r.params[p]))),
      ...data.metrics.map((m) => {
        const v = r.metrics[m];
        const isBest = best.has(m) && v === best.get(m);
        return h("td.num.metric-cell", {
          class: isBest ? "is-best" : "", title: v === undefined ? "" : `${m} = ${v}${isBest ? " (best)" : ""}`,
          dataset: { metric: m },
        }, formatValue(v));
      }),
    ];
    return h("tr", { dataset: { config: r.config, state: r.state || "" } }, ...cells);
  });
  $("results-body").replaceChildren(...body);
  const empty = $("results-empty");
  empty.hidden = rows.length > 0;
  if (!rows.length) setText(empty, data.rows.length ? "No row matches the filter." : "No config to show.");
}

function renderSummary(rows) {
  const counts = {};
  for (const r of data.rows) counts[r.state || "not run"] = (counts[r.state || "not run"] || 0) + 1;
  setText($("results-summary"), Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(" · "));
  const folder = commonFolder();
  setText($("results-meta"), `${folder ? `in ${folder} · ` : ""}${rows.length} of ${data.rows.length} rows · ${data.params.length} parameters · ${data.metrics.length} metrics`);
  const note = $("results-note");
  const parts = [];
  if (data.truncated) parts.push("Only the first 5,000 configs are shown.");
  parts.push(`Metrics read from ${data.sources.join(", ")} in each results folder.`);
  if (!data.params.length && data.rows.length > 1) parts.push("No parameter differs between these configs.");
  setText(note, parts.join(" "));
  note.hidden = false;
}

function fillStates() {
  const select = $("results-state");
  const have = [...new Set(data.rows.map((r) => r.state).filter(Boolean))];
  const current = select.value;
  const options = [h("option", { value: "" }, "All states"), ...have.map((s) => h("option", { value: s, selected: s === current }, s))];
  if (select.options.length !== options.length || [...select.options].some((o, i) => o.value !== options[i].value)) {
    select.replaceChildren(...options);
  }
}

function render() {
  if (!data) return;
  fillStates();
  const rows = visibleRows();
  renderHead();
  renderBody(rows);
  renderSummary(rows);
  renderPlot(rows);
}

// -- the plot ------------------------------------------------------------------------------------------

function fillSelect(select, values, keep, blank) {
  const current = select.value;
  const options = (blank ? [h("option", { value: "" }, blank)] : []).concat(values.map((v) => h("option", { value: v }, v)));
  const same = select.options.length === options.length && [...select.options].every((o, i) => o.value === options[i].value);
  if (!same) {
    const fresh = select.options.length === 0;
    select.replaceChildren(...options);
    if (!fresh && (values.includes(current) || (blank && current === ""))) select.value = current;
    else if (keep !== undefined && keep !== null) select.value = keep;
  }
}

function renderPlot(rows) {
  const metrics = data.metrics;
  const params = data.params;
  const distinct = (p) => new Set(data.rows.map((r) => formatValue(r.params[p]))).size;
  const numericParam = (p) => data.rows.every((r) => r.params[p] === undefined || typeof r.params[p] === "number");
  // By default: against the numeric parameter with the most values, coloured by another one.
  const xDefault = [...params].sort((a, b) => (numericParam(b) - numericParam(a)) || (distinct(b) - distinct(a)))[0];
  fillSelect($("plot-metric"), metrics, metrics[0]);
  fillSelect($("plot-param"), params, xDefault);
  const metric = $("plot-metric").value;
  const param = $("plot-param").value;
  const others = params.filter((p) => p !== param);
  const groupDefault = groupChosen ? "" : (others.find((p) => distinct(p) <= PALETTE.length) || "");
  fillSelect($("plot-group"), others, groupDefault, "nothing");
  const group = $("plot-group").value;
  const empty = $("plot-empty");
  const box = $("plot");
  const why = !metrics.length ? "No metric yet: the table fills in as tasks finish."
    : !params.length ? "No parameter differs between these configs: nothing to plot against." : "";
  const points = why ? [] : rows.filter((r) => typeof r.metrics[metric] === "number" && r.params[param] !== undefined);
  if (why || !points.length) {
    empty.hidden = false;
    setText(empty, why || `No ${metric} value yet.`);
    box.hidden = true;
    setText($("plot-meta"), "");
    return;
  }
  empty.hidden = true;
  box.hidden = false;
  if (typeof window.uPlot !== "function") {
    box.replaceChildren(h("p.empty", null, "The chart library is not installed (npm ci --prefix static)."));
    return;
  }
  const numeric = points.every((r) => typeof r.params[param] === "number");
  const cats = numeric ? [] : [...new Set(points.map((r) => formatValue(r.params[param])))].sort((a, b) => compare(a, b));
  const xOf = (r) => (numeric ? r.params[param] : cats.indexOf(formatValue(r.params[param])));
  const sorted = [...points].sort((a, b) => xOf(a) - xOf(b));
  const groups = group ? [...new Set(sorted.map((r) => formatValue(r.params[group])))].sort((a, b) => compare(a, b)) : [""];
  const xs = sorted.map(xOf);
  const ys = groups.map((g) => sorted.map((r) => (!group || formatValue(r.params[group]) === g ? r.metrics[metric] : null)));
  // A line only where each group has one value per x; otherwise only the points.
  const lines = groups.every((g) => {
    const seen = new Set();
    return sorted.every((r) => (group && formatValue(r.params[group]) !== g) || (!seen.has(xOf(r)) && seen.add(xOf(r))));
  });
  setText($("plot-meta"), `${points.length} point${points.length === 1 ? "" : "s"}`);
  const key = [metric, param, group, numeric, lines, groups.join("\u0001"), cats.join("\u0001")].join("|");
  const plotData = [xs, ...ys];
  const width = Math.max(300, box.clientWidth || 600);
  if (plot && plotKey === key) {
    plot.setData(plotData);
    return;
  }
  if (plot) plot.destroy();
  plotKey = key;
  const style = getComputedStyle(document.body);
  const axisColor = style.color;
  const grid = { stroke: "rgba(128,128,128,0.18)", width: 1 };
  const series = [{ label: param, value: (u, v) => (v === null ? "" : numeric ? formatValue(v) : cats[v] ?? "") }];
  groups.forEach((g, i) => {
    const color = PALETTE[i % PALETTE.length];
    series.push({
      label: group ? `${group.split(".").pop()} = ${g}` : metric,
      stroke: color, width: lines ? 1.5 : 0, spanGaps: true,
      points: { show: true, size: 8, fill: color, stroke: color },
      paths: lines ? undefined : () => null,
      value: (u, v) => (v === null ? "" : formatValue(v)),
    });
  });
  const opts = {
    width, height: 320, series,
    scales: {
      x: numeric
        ? { time: false, range: (u, lo, hi) => { const pad = (hi - lo) * 0.05 || Math.abs(lo) * 0.1 || 1; return [lo - pad, hi + pad]; } }
        : { time: false, range: [-0.5, cats.length - 0.5] },
    },
    axes: [
      { label: param, stroke: axisColor, grid,
        ...(numeric ? {} : { splits: () => cats.map((_, i) => i), values: (u, ticks) => ticks.map((t) => cats[t] ?? "") }) },
      { label: metric, stroke: axisColor, grid, size: 70, values: (u, ticks) => ticks.map(formatValue) },
    ],
    legend: { show: true },
    cursor: { points: { size: 10 } },
  };
  box.replaceChildren();
  plot = new window.uPlot(opts, plotData, box);
}

// -- loading ---------------------------------------------------------------------------------------------

async function load() {
  if (batchId === null && !pattern) {
    data = null;
    setText($("results-empty"), "Type a pattern above to see the results of the configs it matches.");
    $("plot-panel").hidden = true;
    return;
  }
  $("plot-panel").hidden = false;
  try {
    data = batchId !== null ? await get(`/batches/${batchId}/results`) : await get("/results", { pattern });
  } catch (e) {
    setText($("results-empty"), e.message);
    $("results-empty").hidden = false;
    return;
  }
  render();
}

const refresh = throttle(load, 1000);

function init() {
  const csv = $("results-csv");
  if (batchId !== null) {
    csv.href = apiUrl(`/batches/${batchId}/results.csv`);
    csv.setAttribute("download", `batch-${batchId}-results.csv`);
  } else {
    csv.href = apiUrl("/results.csv", { pattern });
    csv.hidden = !pattern;
  }
  $("results-filter").addEventListener("input", () => render());
  $("results-state").addEventListener("change", () => render());
  for (const id of ["plot-metric", "plot-param", "plot-group"]) {
    $(id).addEventListener("change", () => { if (id === "plot-group") groupChosen = true; render(); });
  }
  const form = $("results-pattern-form");
  if (form) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      pattern = $("results-pattern").value.trim();
      const url = new URL(location.href);
      url.searchParams.set("pattern", pattern);
      history.replaceState(null, "", url);
      csv.href = apiUrl("/results.csv", { pattern });
      csv.hidden = !pattern;
      load();
    });
  }
  if (typeof ResizeObserver === "function") {
    new ResizeObserver(() => {
      if (plot) plot.setSize({ width: Math.max(300, $("plot").clientWidth), height: 320 });
    }).observe($("plot"));
  }
  live.on("task", (t) => {
    if (!data) return;
    if (batchId !== null ? t.batch === batchId : data.rows.some((r) => r.config === t.config)) refresh();
  });
  live.on("tasks", () => refresh());
  live.onResync(() => refresh());
  live.connect();
  load();
}

init();
