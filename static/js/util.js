// Small helpers shared by the dashboard's modules: DOM building, formatting, scheduling.

/** Return the page's bootstrap data (rendered by the server as JSON). */
export function bootstrap() {
  if (!bootstrap.cache) {
    const node = document.getElementById("bootstrap");
    let data = {};
    try {
      data = JSON.parse(node ? node.textContent : "{}") || {};
    } catch (e) {
      data = {};
    }
    bootstrap.cache = data;
  }
  return bootstrap.cache;
}

/** Return the URL prefix the app is mounted under ("" at the root). */
export function root() {
  return document.body.dataset.root || "";
}

/** Return true when this page must not offer actions (viewer / read-only mode). */
export function readOnly() {
  const b = bootstrap();
  return Boolean(b.read_only) || (b.user && b.user.role === "viewer");
}

/**
 * Return whether the page may offer an action: "submit", "slots", "queue", "priority" or
 * "users" (the bootstrap's permissions; the server checks every call again anyway).
 */
export function may(action) {
  const b = bootstrap();
  if (readOnly()) return false;
  if (!b.permissions) return !b.user || b.user.role === "admin";
  return Boolean(b.permissions[action]);
}

/** Return whether the current user may cancel or retry a task or batch with this owner. */
export function mayAct(owner) {
  if (readOnly()) return false;
  const b = bootstrap();
  if (!b.user || b.user.role === "admin") return true;
  return Boolean(owner) && b.user.name === owner;
}

/**
 * Build an element: h("button.btn.btn-sm", {type: "button", onclick}, "Text", child...).
 * Attributes starting with "on" become listeners; "dataset" and "style" take objects;
 * false / null / undefined attributes and children are skipped.
 */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const node = document.createElement(name || "div");
  if (classes.length) node.className = classes.join(" ");
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === false || value === null || value === undefined) continue;
      if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else if (key === "dataset") {
        Object.assign(node.dataset, value);
      } else if (key === "style" && typeof value === "object") {
        Object.assign(node.style, value);
      } else if (key === "class") {
        node.className = [node.className, value].filter(Boolean).join(" ");
      } else if (key in node && typeof value !== "string" && key !== "list") {
        node[key] = value;
      } else {
        node.setAttribute(key, value === true ? "" : String(value));
      }
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** Set an element's text only when it changed (keeps live patches cheap). */
export function setText(node, text) {
  if (!node) return;
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** Return a function that calls ``fn`` once per animation frame at most, with the latest args. */
export function rafBatch(fn) {
  let scheduled = false;
  return () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      fn();
    });
  };
}

/** Return a debounced version of ``fn`` (called ``wait`` ms after the last call). */
export function debounce(fn, wait) {
  let timer = null;
  const debounced = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
  debounced.cancel = () => clearTimeout(timer);
  return debounced;
}

/**
 * Return a throttled async caller: runs ``fn`` at most once per ``wait`` ms, always once more
 * after the last request (so the final state is never missed), never two at a time.
 */
export function throttle(fn, wait) {
  let running = false;
  let pending = false;
  let last = 0;
  let timer = null;
  const run = async () => {
    timer = null;
    if (running) {
      pending = true;
      return;
    }
    running = true;
    pending = false;
    last = Date.now();
    try {
      await fn();
    } catch (e) {
      console.error(e);
    } finally {
      running = false;
      if (pending) schedule();
    }
  };
  const schedule = () => {
    if (timer) return;
    const delay = Math.max(0, wait - (Date.now() - last));
    timer = setTimeout(run, delay);
  };
  schedule.now = () => {
    clearTimeout(timer);
    timer = null;
    return run();
  };
  return schedule;
}

/** Return a Date for an API timestamp (epoch seconds or an ISO string), or null. */
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return new Date(value * 1000);
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

const pad = (n) => String(n).padStart(2, "0");

/** Format a timestamp compactly: 14:03:22 today, "Nov 27 14:03" otherwise. */
export function formatTime(value) {
  const d = toDate(value);
  if (!d) return "";
  const now = new Date();
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (d.toDateString() === now.toDateString()) return `${hm}:${pad(d.getSeconds())}`;
  const month = d.toLocaleString("en", { month: "short" });
  const year = d.getFullYear() === now.getFullYear() ? "" : ` ${d.getFullYear()}`;
  return `${month} ${d.getDate()}${year} ${hm}`;
}

/** Format a timestamp fully, for tooltips. */
export function formatFullTime(value) {
  const d = toDate(value);
  if (!d) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Format seconds as 0.4 s / 12 s / 3m 05s / 2h 04m / 3d 2h. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  const s = Math.max(0, Number(seconds));
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${pad(Math.floor(s % 60))}s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h ${pad(m % 60)}m`;
  return `${Math.floor(hr / 24)}d ${hr % 24}h`;
}

/** Format a byte count with binary units (1.5 GiB). */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || Number.isNaN(bytes)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(bytes);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  const digits = i === 0 || v >= 100 ? 0 : v >= 10 ? 1 : 1;
  return `${v.toFixed(digits)} ${units[i]}`;
}

/** Return "1 config" / "3 configs". */
export function plural(n, word, many) {
  return `${n} ${n === 1 ? word : many || `${word}s`}`;
}

/** Show a short message in the corner; kind: "ok" | "error" | "info". */
export function toast(message, kind = "info", timeout = 5000) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h(`div.toast.toast-${kind}`, { role: kind === "error" ? "alert" : null },
    h("span.toast-text", null, message),
    h("button.toast-close", { type: "button", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"));
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  if (timeout) setTimeout(() => item.remove(), kind === "error" ? timeout * 2 : timeout);
}

/** Return the task states in display order. */
export const STATES = ["queued", "running", "succeeded", "failed", "cancelled", "interrupted", "skipped"];
export const FINAL_STATES = new Set(["succeeded", "failed", "cancelled", "interrupted", "skipped"]);
export const RETRYABLE_STATES = new Set(["failed", "cancelled", "interrupted"]);
export const ACTIVE_STATES = new Set(["queued", "running"]);

/** Return a state badge element. */
export function stateBadge(state) {
  return h("span.badge", { dataset: { state: state || "unknown" } }, state || "unknown");
}

/** Return a device label such as "gpu1 · slot 2" ("" when unplaced). */
export function deviceLabel(task) {
  if (!task.device) return "";
  return task.slot === null || task.slot === undefined ? task.device : `${task.device} · ${task.slot}`;
}

/**
 * Save an in-place whole-number input: nothing when unchanged, a message when out of range,
 * "saving…" while ``send(n)`` runs, and the input marked invalid when it fails.
 * Returns true once saved.
 */
export async function saveWholeNumber(input, status, { current, min, max, hint, send, failed }) {
  const text = input.value.trim();
  if (text === String(current)) {
    input.classList.remove("is-dirty", "is-invalid");
    return false;
  }
  const n = Number(text);
  if (text === "" || !Number.isInteger(n) || n < min || (max !== undefined && n > max)) {
    input.classList.add("is-invalid");
    setText(status, hint);
    status.dataset.kind = "error";
    return false;
  }
  if (input.dataset.saving === text) return false;
  input.dataset.saving = text;
  setText(status, "saving…");
  status.dataset.kind = "info";
  try {
    await send(n);
    input.classList.remove("is-dirty", "is-invalid");
    return true;
  } catch (e) {
    input.classList.add("is-invalid");
    setText(status, "not saved");
    status.dataset.kind = "error";
    toast(`${failed}: ${e.message}`, "error");
    return false;
  } finally {
    delete input.dataset.saving;
  }
}

/** Return a remembered value of this browser (localStorage), or ``fallback``. */
export function remembered(key, fallback = null) {
  try {
    const v = window.localStorage.getItem(`slotrun.${key}`);
    return v === null ? fallback : v;
  } catch (e) {
    return fallback;
  }
}

/** Remember a value in this browser (null forgets it). */
export function remember(key, value) {
  try {
    if (value === null || value === undefined) window.localStorage.removeItem(`slotrun.${key}`);
    else window.localStorage.setItem(`slotrun.${key}`, String(value));
  } catch (e) {
    // private mode or storage full: the choice is simply not kept
  }
}
