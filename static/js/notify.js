// Browser notifications: "my batch finished" and "a task of mine failed" (and "the queue
// paused itself"), from the Socket.IO events the open page already receives.
//
// Opt-in per browser (the permission is the browser's): the account page asks for it on a
// click and keeps the choice in localStorage. Every page that is connected shows them; the
// same notification from several open tabs is shown once (a shared tag).

import { get, post, request } from "./api.js";
import * as live from "./live.js";
import { bootstrap, root } from "./util.js";

const me = bootstrap().user ? bootstrap().user.name : null;
const KEY = me ? `slotrun.notify.${me}` : null;
const supported = typeof window.Notification === "function";

/** Return true when this browser shows slotrun's notifications to this user. */
export function enabled() {
  return Boolean(supported && KEY && localStorage.getItem(KEY) === "on" && Notification.permission === "granted");
}

/** Ask the browser for permission (must be called from a click); return the new state. */
export async function enable() {
  if (!supported) return "unsupported";
  const answer = Notification.permission === "granted" ? "granted" : await Notification.requestPermission();
  if (answer === "granted" && KEY) localStorage.setItem(KEY, "on");
  return answer;
}

/** Stop showing notifications in this browser. */
export function disable() {
  if (KEY) localStorage.setItem(KEY, "off");
}

/** Show one notification; a click opens ``link``. */
export function show(title, body, tag, link) {
  if (!enabled()) return null;
  const n = new Notification(title, { body, tag, renotify: false });
  n.onclick = () => {
    window.focus();
    if (link) window.location.assign(link);
    n.close();
  };
  return n;
}

const active = new Set(); // my batches seen with queued or running tasks on this page
const told = new Set(); // what this page has already shown

function once(key, fn) {
  if (told.has(key)) return;
  told.add(key);
  fn();
}

function onBatch(b) {
  if (!b || b.owner !== me || b.id === undefined) return;
  if (!b.finished) {
    active.add(b.id);
    return;
  }
  if (!active.has(b.id)) return; // finished before this page saw it run: nothing new
  active.delete(b.id);
  const c = b.counts || {};
  const parts = ["succeeded", "failed", "cancelled", "interrupted", "skipped"].filter((s) => c[s]).map((s) => `${c[s]} ${s}`);
  once(`batch-${b.id}-${b.finished_at}`, () => show(`Batch ${b.id} finished`,
    `${b.pattern}: ${parts.join(", ") || "no task"}`, `slotrun-batch-${b.id}`,
    `${root()}/batches/${b.id}/results`));
}

function onTask(t) {
  if (!t || t.owner !== me || t.state !== "failed") return;
  once(`task-${t.id}-${t.attempts}`, () => show(`Task ${t.id} failed`,
    `${t.config}${t.message ? ` (${t.message})` : ""}`, `slotrun-task-${t.id}-${t.attempts}`,
    `${root()}/tasks/${t.id}`));
}

function onQueue(q) {
  if (!q || !q.paused || !q.reason) return;
  once(`queue-${q.reason}`, () => show("The queue paused itself", q.reason, "slotrun-queue", `${root()}/`));
}

if (me && supported) {
  live.on("batch", onBatch);
  live.on("task", onTask);
  live.on("queue", onQueue);
}

// -- the account page's controls ----------------------------------------------------------------

function describe() {
  if (!supported) return "This browser has no notifications.";
  if (Notification.permission === "denied") return "Blocked in this browser's site settings: allow notifications for this site there.";
  return enabled() ? "On in this browser." : "Off in this browser.";
}

function initControls() {
  const box = document.getElementById("browser-notify");
  if (!box) return;
  const status = document.getElementById("browser-notify-status");
  const on = document.getElementById("browser-notify-on");
  const off = document.getElementById("browser-notify-off");
  const test = document.getElementById("browser-notify-test");
  const paint = () => {
    status.textContent = describe();
    status.dataset.kind = enabled() ? "ok" : (supported && Notification.permission === "denied" ? "error" : "");
    on.hidden = enabled();
    off.hidden = !enabled();
    test.hidden = !enabled();
    on.disabled = !supported || Notification.permission === "denied";
  };
  on.addEventListener("click", async () => {
    await enable();
    paint();
  });
  off.addEventListener("click", () => {
    disable();
    paint();
  });
  test.addEventListener("click", () => show("slotrun", "Notifications work in this browser.", "slotrun-test", null));
  paint();
}

/** The account page's webhook / e-mail form (GET and PUT /account/notifications). */
async function initAccountForm() {
  const form = document.getElementById("account-notify");
  if (!form) return;
  const status = document.getElementById("notify-status");
  const say = (text, kind) => {
    status.textContent = text;
    status.dataset.kind = kind || "";
  };
  const fill = (p) => {
    form.querySelector("#notify-webhook").value = p.webhook;
    const email = form.querySelector("#notify-email");
    email.value = p.email;
    email.disabled = !p.email_available && !p.email;
    document.getElementById("notify-email-note").hidden = p.email_available;
    for (const box of form.querySelectorAll('input[name="notify-event"]')) box.checked = p.events.includes(box.value);
  };
  try {
    fill(await get("/account/notifications"));
  } catch (e) {
    say(e.message, "error");
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say("saving…");
    try {
      fill(await request("PUT", "/account/notifications", { body: {
        webhook: form.querySelector("#notify-webhook").value.trim(),
        email: form.querySelector("#notify-email").value.trim(),
        events: [...form.querySelectorAll('input[name="notify-event"]:checked')].map((b) => b.value),
      } }));
      say("Saved.", "ok");
    } catch (e) {
      say(e.message, "error");
    }
  });
  document.getElementById("notify-test").addEventListener("click", async () => {
    say("sending…");
    try {
      const out = await post("/account/notifications/test", {});
      const parts = Object.entries(out).filter(([, r]) => r).map(([k, r]) => `${k}: ${r.detail}`);
      say(parts.join(" · "), Object.values(out).every((r) => !r || r.ok) ? "ok" : "error");
    } catch (e) {
      say(e.message, "error");
    }
  });
}

initControls();
initAccountForm();
