// The summary tiles and the queue's pause switch. Every tile is drawn from one payload, the
// "queue" event (or GET /status after a reconnect): {paused, counts, total, slots}, so two
// tiles never disagree.

import * as api from "./api.js";
import { may, rafBatch, setText, throttle, toast } from "./util.js";

const OTHER = ["cancelled", "interrupted", "skipped"];

/** Return the sub-line of the slots tile and its value from the slot summary. */
export function slotsText(slots, paused) {
  const s = slots || {};
  if (!s.total) return { value: "0 / 0", sub: "no slots: set a limit on a device" };
  if (!s.waiting) {
    return {
      value: `${s.used} / ${s.total}`,
      sub: `${s.free ? `${s.free} free` : "all busy"}${paused ? " · queue paused" : ""}`,
    };
  }
  // Tasks wait: count only the slots of the devices they may use (not an idle CPU slot
  // while GPU tasks wait).
  const idle = s.free - s.usable_free;
  let sub;
  if (paused) sub = `queue paused, ${s.waiting.toLocaleString()} waiting`;
  else if (s.usable_free) sub = `${s.usable_free} free for ${s.waiting.toLocaleString()} waiting`;
  else sub = `none free for ${s.waiting.toLocaleString()} waiting`;
  if (idle > 0) sub += ` · ${idle} other idle`;
  return { value: `${s.usable_used} / ${s.usable}`, sub };
}

/** The queue's state in words: running, paused by a user, or paused by slotrun for a fault
 * (with the fault; the queue resumes by itself once it is gone). */
export function queueStateText(paused, pause) {
  if (!paused) return "Queue running";
  if (pause && pause.auto && pause.reason) return `Queue paused by a fault, resumes by itself: ${pause.reason}`;
  if (pause && pause.reason) return `Queue paused: ${pause.reason}`;
  return "Queue paused: nothing new starts";
}

/** The summary tiles and the queue's pause switch. */
export class Summary {
  constructor({ onQueue } = {}) {
    this.onQueue = onQueue || (() => {}); // told (paused, pause) whenever the queue's state is known
    this.counts = {};
    this.slots = null;
    this.paused = null;
    this.pause = null; // {auto, reason, since} while paused
    this.paint = rafBatch(() => this.flush());
    this.refresh = throttle(() => this.load(), 800);
    this.toggle = document.getElementById("queue-toggle");
    this.control = document.getElementById("queue-control");
    if (this.toggle) this.toggle.addEventListener("click", () => this.flipQueue());
  }

  /** Fetch GET /status (on load and after a reconnect). */
  async load() {
    try {
      this.setQueue(await api.status());
    } catch (e) {
      console.warn("cannot load the queue's status", e); // the next event or reconnect brings it
    }
  }

  /** Apply a "queue" event ({paused, auto, reason, since, counts, total, slots}) or a GET /status
   * answer ({paused, queue: {paused, auto, reason, since}, counts, total, slots}). */
  setQueue(q) {
    if (!q) return;
    if (q.paused !== undefined) {
      const p = q.queue || q; // GET /status gives the pause's details under "queue"
      this.paused = Boolean(q.paused);
      this.pause = q.paused ? { auto: Boolean(p.auto), reason: p.reason || null, since: p.since || null } : null;
      this.onQueue(this.paused, this.pause);
    }
    if (q.counts) this.counts = q.counts;
    if (q.slots) this.slots = q.slots;
    this.paint();
  }

  flush() {
    const c = this.counts;
    for (const state of ["queued", "running", "succeeded", "failed"]) {
      setText(document.querySelector(`[data-count="${state}"]`), (c[state] || 0).toLocaleString());
    }
    const other = OTHER.map((s) => c[s] || 0);
    const otherTotal = other.reduce((a, b) => a + b, 0);
    setText(document.querySelector('[data-count="other"]'), otherTotal.toLocaleString());
    const parts = OTHER.map((s, i) => (other[i] ? `${other[i].toLocaleString()} ${s}` : null)).filter(Boolean);
    const otherSub = document.querySelector('[data-count="other-detail"]');
    setText(otherSub, parts.length ? parts.join(" · ") : "cancelled, interrupted, skipped");
    otherSub.parentElement.title = OTHER.map((s, i) => `${other[i].toLocaleString()} ${s}`).join("\n");
    const slots = slotsText(this.slots, this.paused);
    setText(document.querySelector('[data-count="slots"]'), this.slots ? slots.value : "–");
    setText(document.querySelector('[data-count="slots-detail"]'), this.slots ? slots.sub : "");
    const failedTile = document.querySelector('.tile[data-state="failed"]');
    if (failedTile) failedTile.classList.toggle("is-alert", (c.failed || 0) > 0);
    if (this.control && this.paused !== null) {
      this.control.hidden = false;
      this.control.dataset.paused = this.paused ? "1" : "0";
      const state = document.getElementById("queue-state");
      setText(state, queueStateText(this.paused, this.pause));
      state.title = this.pause && this.pause.reason ? this.pause.reason : "";
      if (this.toggle) {
        this.toggle.hidden = !may("queue");
        setText(this.toggle, this.paused ? "Resume queue" : "Pause queue");
      }
    }
  }

  async flipQueue() {
    if (!may("queue")) return;
    const pause = !this.paused;
    this.toggle.disabled = true;
    try {
      const answer = await api.setPaused(pause);
      this.setQueue({ paused: answer.paused });
      toast(pause ? "Queue paused: running tasks go on, nothing new starts" : "Queue resumed", "ok", 3000);
    } catch (e) {
      toast(`Queue not ${pause ? "paused" : "resumed"}: ${e.message}`, "error");
    } finally {
      this.toggle.disabled = false;
    }
  }
}
