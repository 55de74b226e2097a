// The live connection: one Socket.IO client per page, a status badge, and catch-up on reconnect.

import { bootstrap, root, setText } from "./util.js";

const handlers = new Map();
const resyncs = [];
let socket = null;
let everConnected = false;

const LABELS = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

function setBadge(state, detail) {
  const badge = document.getElementById("live-badge");
  if (!badge) return;
  badge.dataset.state = state;
  setText(badge.querySelector(".live-text"), LABELS[state] || state);
  badge.title = detail || (state === "live"
    ? "Connected: updates arrive as they happen"
    : "Not connected: the page will catch up when the connection returns");
  document.body.dataset.live = state;
}

/**
 * Register a handler for a server event ("task", "batch", "devices", "slots", "queue", "log").
 * The server sends task changes as lists ("task_list"); each item reaches the "task" handlers.
 */
export function on(event, fn) {
  if (!handlers.has(event)) {
    handlers.set(event, []);
    if (socket) socket.on(event, (data) => dispatch(event, data));
  }
  handlers.get(event).push(fn);
}

/** Register a function that re-fetches state over REST after every (re)connection. */
export function onResync(fn) {
  resyncs.push(fn);
}

/**
 * Send an event to the server (ignored while disconnected; resyncs re-send what matters).
 * ``ack`` receives the server's answer ({"error": ...} when the event was refused).
 */
export function emit(event, data, ack) {
  if (!socket || !socket.connected) return;
  if (ack) socket.emit(event, data, ack);
  else socket.emit(event, data);
}

/** Return true while the live connection is up. */
export function connected() {
  return Boolean(socket && socket.connected);
}

function dispatch(event, data) {
  for (const fn of handlers.get(event) || []) {
    try {
      fn(data);
    } catch (e) {
      console.error(`handler for ${event} failed`, e);
    }
  }
}

/** Open the connection (call once per page, after registering handlers). */
export function connect() {
  if (typeof window.io !== "function") {
    setBadge("offline", "The Socket.IO client is not installed (run npm install --prefix static)");
    return null;
  }
  const options = {
    path: bootstrap().socketio_path || `${root()}/socket.io`,
    reconnectionDelay: 500,
    reconnectionDelayMax: 5000,
    withCredentials: true,
  };
  if (bootstrap().socket_auth) options.auth = bootstrap().socket_auth;
  socket = window.io(options);
  for (const event of handlers.keys()) socket.on(event, (data) => dispatch(event, data));
  socket.on("task_list", (data) => {
    for (const t of (data && data.tasks) || []) dispatch("task", t);
  });
  socket.on("connect", () => {
    setBadge("live");
    const again = everConnected;
    everConnected = true;
    for (const fn of resyncs) {
      Promise.resolve().then(() => fn(again)).catch((e) => console.error("resync failed", e));
    }
  });
  socket.on("disconnect", (reason) => {
    setBadge("reconnecting", `Disconnected (${reason}); reconnecting…`);
    if (reason === "io server disconnect") socket.connect();
  });
  socket.on("connect_error", (err) => {
    setBadge(everConnected ? "reconnecting" : "connecting", `Cannot connect: ${err.message}`);
    // The server refused the sign-in (the session ended): log in again, then come back here.
    const login = bootstrap().login_url;
    if (login && /^sign in first/.test(err.message || "")) {
      window.location.assign(`${login}?next=${encodeURIComponent(location.pathname + location.search)}`);
    }
  });
  return socket;
}
