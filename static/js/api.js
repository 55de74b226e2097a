// The one client of the JSON API under /api/v1 (docs/api.md). Every module of the page calls
// the server through the named functions below, and reads exactly the documented fields of
// their answers: nothing here guesses at another name for a field.

import { bootstrap, root } from "./util.js";

/** An API error carrying the HTTP status and the server's message. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** Return the absolute path of an API route ("/tasks/3" -> "/api/v1/tasks/3"). */
export function apiUrl(path, params) {
  const base = bootstrap().api || `${root()}/api/v1`;
  let url = base + path;
  if (params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== null && v !== undefined && v !== "") q.set(k, v);
    }
    const qs = q.toString();
    if (qs) url += (url.includes("?") ? "&" : "?") + qs;
  }
  return url;
}

/** Call the API and return its JSON; throw ApiError with the server's message on failure. */
export async function request(method, path, { params, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, signal, credentials: "same-origin" };
  if (method !== "GET") {
    // Every state-changing call says it sends JSON, even with an empty body (docs/api.md).
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
    const csrf = bootstrap().csrf_token;
    if (csrf) headers["X-CSRFToken"] = csrf;
  }
  let response;
  try {
    response = await fetch(apiUrl(path, params), init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("The server cannot be reached.", 0);
  }
  let data = null;
  try {
    data = await response.json(); // every answer of the API, errors included, is JSON
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string"
      ? data.error
      : `${response.status} ${response.statusText || "error"}`;
    if (response.status === 401 && bootstrap().login_url) {
      window.location.assign(bootstrap().login_url + "?next=" + encodeURIComponent(location.pathname));
    }
    throw new ApiError(message, response.status);
  }
  return data;
}

/** GET a route of the API (for pages with routes of their own; the dashboard uses the functions below). */
export const get = (path, params, signal) => request("GET", path, { params, signal });
/** POST JSON to a route of the API. */
export const post = (path, body) => request("POST", path, { body });
/** PATCH JSON to a route of the API. */
export const patch = (path, body) => request("PATCH", path, { body });
const id = (value) => encodeURIComponent(String(value));

/** A results path as URL segments ("a/b c" -> "a/b%20c"). */
export function filesPath(path) {
  return String(path || "").split("/").filter(Boolean).map(encodeURIComponent).join("/");
}

// -- status and queue ------------------------------------------------------------------------------

/** GET /status -> {counts, total, batches, paused, slots, user, role, auth, server_time, engine} */
export const status = () => get("/status");
/** POST /queue/pause or /queue/resume -> {paused} */
export const setPaused = (paused) => post(paused ? "/queue/pause" : "/queue/resume");

// -- configs and memory --------------------------------------------------------------------------

/** GET /configs?pattern= -> {pattern, configs, count, complete} */
export const configs = (pattern, signal) => get("/configs", { pattern }, signal);
/** GET /memory/predict[?pattern=] -> {pattern, families: [{family, configs, declared, learned, need, source}], sampled} */
export const predictMemory = (pattern, signal) => get("/memory/predict", { pattern }, signal);
/** GET /memory/suggest?need= | family= -> {need, source, config, family, margin, slots, current} */
export const suggestSlots = (params) => get("/memory/suggest", params);

// -- devices ----------------------------------------------------------------------------------------

/** GET /devices -> {devices: [device]} */
export const devices = () => get("/devices");
/** PATCH /devices/<id> {slots} -> device */
export const setSlots = (device, slots) => request("PATCH", `/devices/${id(device)}`, { body: { slots } });
/** GET /devices/history?minutes= -> {now, minutes, interval, devices} */
export const deviceHistory = (minutes) => get("/devices/history", { minutes });

// -- batches ----------------------------------------------------------------------------------------

/** POST /batches -> {id, total, counts, tasks: [{id, config, state}]} */
export const submitBatch = (body) => post("/batches", body);
/** GET /batches?page=&per_page=&owner= -> {batches: [summary], total, page, per_page, pages} */
export const batches = (params) => get("/batches", params);
/** POST /batches/<id>/cancel -> {id, cancelled, stopping} */
export const cancelBatch = (batchId) => post(`/batches/${id(batchId)}/cancel`);
/** POST /batches/<id>/priority {priority} -> summary */
export const setPriority = (batchId, priority) => post(`/batches/${id(batchId)}/priority`, { priority });
/** GET /batches/<id>/timeline -> {batch, now, start, end, created_at, finished, counts, total, eta, truncated, rows} */
export const timeline = (batchId) => get(`/batches/${id(batchId)}/timeline`);
/** The URL of a batch's results zip. */
export const batchZipUrl = (batchId) => apiUrl(`/batches/${id(batchId)}/results.zip`);

// -- tasks ------------------------------------------------------------------------------------------

/** GET /tasks?batch=&state=&owner=&q=&sort=&order=&page=&per_page= -> {tasks, total, page, per_page, pages, sort, order} */
export const tasks = (params, signal) => get("/tasks", params, signal);
/** GET /owners -> {owners: [{name, batches, tasks}]} */
export const owners = () => get("/owners");
/** GET /tasks/<id> -> a task with config_text, argv, command, results, attempts_list, ... */
export const task = (taskId) => get(`/tasks/${id(taskId)}`);
/** POST /tasks/<id>/cancel -> the task once it has stopped */
export const cancelTask = (taskId) => post(`/tasks/${id(taskId)}/cancel`);
/** POST /tasks/<id>/retry -> the task, queued again */
export const retryTask = (taskId) => post(`/tasks/${id(taskId)}/retry`);
/**
 * POST /tasks/cancel or /tasks/retry {batch, state, owner, q, dry_run} ->
 * {action, matched, affected, not_yours, other_state, (cancel:) queued, running, dry_run}
 */
export const bulk = (action, filter, dryRun) => post(`/tasks/${action}`, { ...filter, dry_run: Boolean(dryRun) });
/** GET /tasks/<id>/log?tail= -> {task, attempt, data, offset, size, truncated} */
export const taskLog = (taskId, tail) => get(`/tasks/${id(taskId)}/log`, { tail });
/** GET /tasks/<id>/progress -> {task, done, total, fraction, updated_at, state, pattern} */
export const taskProgress = (taskId) => get(`/tasks/${id(taskId)}/progress`);
/** GET /progress -> {tasks: [{task, batch, done, total, fraction, updated_at}]} */
export const progress = () => get("/progress");
/** GET /tasks/<id>/files/<folder>/ -> {task, results, path, entries: [{name, path, type, size, mtime, link}], truncated} */
export const files = (taskId, folder) => {
  const p = filesPath(folder);
  return get(`/tasks/${id(taskId)}/files/${p}${p ? "/" : ""}`);
};
/** The download URL of one results file. */
export const fileUrl = (taskId, path) => apiUrl(`/tasks/${id(taskId)}/files/${filesPath(path)}`);
