// The JSON API under /api/v1, as the page uses it (scripts can do the same calls).

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
export async function api(method, path, { params, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, signal, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const csrf = bootstrap().csrf_token;
  if (csrf && method !== "GET") headers["X-CSRFToken"] = csrf;
  let response;
  try {
    response = await fetch(apiUrl(path, params), init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("The server cannot be reached.", 0);
  }
  const type = response.headers.get("Content-Type") || "";
  let data = null;
  if (type.includes("application/json")) {
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
  } else {
    data = await response.text();
  }
  if (!response.ok) {
    const message = data && typeof data === "object" && data.error
      ? data.error
      : `${response.status} ${response.statusText || "error"}`;
    if (response.status === 401 && bootstrap().login_url) {
      window.location.assign(bootstrap().login_url + "?next=" + encodeURIComponent(location.pathname));
    }
    throw new ApiError(message, response.status);
  }
  return data;
}

export const get = (path, params, signal) => api("GET", path, { params, signal });
export const post = (path, body) => api("POST", path, { body: body === undefined ? {} : body });
export const patch = (path, body) => api("PATCH", path, { body });
