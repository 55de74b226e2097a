// A log view that takes text chunks at any rate, paints once per frame and keeps the last N lines.

import { rafBatch, setText } from "./util.js";

export const MAX_LINES = 5000;

function countNewlines(text) {
  let n = 0;
  for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) n += 1;
  return n;
}

export class LogView {
  constructor(pre, { maxLines = MAX_LINES, onTrim } = {}) {
    this.pre = pre;
    this.maxLines = maxLines;
    this.onTrim = onTrim || (() => {});
    this.pending = ""; // text received since the last paint
    this.nodes = []; // [{node: Text, lines: newline count}] in order
    this.lines = 0; // newlines in the DOM
    this.dropped = 0; // lines removed from the top to respect maxLines
    this.autoScroll = true;
    this.paint = rafBatch(() => this.flush());
    this.ignoreScroll = false;
    pre.addEventListener("scroll", () => {
      if (this.ignoreScroll) {
        this.ignoreScroll = false;
        return;
      }
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
      if (this.onScrollAway && this.autoScroll && !atBottom) this.onScrollAway();
    });
  }

  /** Drop everything shown. */
  clear() {
    this.pending = "";
    this.nodes = [];
    this.lines = 0;
    this.dropped = 0;
    this.pre.replaceChildren();
    this.onTrim(0);
  }

  /** Queue text for the next frame. */
  append(text) {
    if (!text) return;
    this.pending += text;
    // A flood between frames: keep only what could be shown anyway.
    if (this.pending.length > 4_000_000) {
      const cut = this.pending.indexOf("\n", this.pending.length - 2_000_000);
      this.pending = this.pending.slice(cut + 1);
      this.dropped += 1;
    }
    this.paint();
  }

  /** Return the text shown (for tests and copying). */
  text() {
    return this.pre.textContent;
  }

  flush() {
    if (!this.pending) return;
    let chunk = this.pending;
    this.pending = "";
    let n = countNewlines(chunk);
    if (n > this.maxLines) {
      // Only the tail of this chunk can stay: skip building nodes for the rest.
      let idx = chunk.length;
      for (let k = 0; k <= this.maxLines && idx > 0; k += 1) idx = chunk.lastIndexOf("\n", idx - 1);
      this.dropped += countNewlines(chunk.slice(0, idx + 1)) + this.lines;
      chunk = chunk.slice(idx + 1);
      n = countNewlines(chunk);
      this.pre.replaceChildren();
      this.nodes = [];
      this.lines = 0;
    }
    const node = document.createTextNode(chunk);
    this.pre.append(node);
    this.nodes.push({ node, lines: n });
    this.lines += n;
    while (this.lines > this.maxLines && this.nodes.length) {
      const first = this.nodes[0];
      const excess = this.lines - this.maxLines;
      if (first.lines <= excess) {
        first.node.remove();
        this.nodes.shift();
        this.lines -= first.lines;
        this.dropped += first.lines;
      } else {
        let idx = -1;
        for (let k = 0; k < excess; k += 1) idx = first.node.data.indexOf("\n", idx + 1);
        first.node.deleteData(0, idx + 1);
        first.lines -= excess;
        this.lines -= excess;
        this.dropped += excess;
      }
    }
    // Merge small text nodes now and then so the node list stays short.
    if (this.nodes.length > 200) {
      const text = this.pre.textContent;
      const merged = document.createTextNode(text);
      this.pre.replaceChildren(merged);
      this.nodes = [{ node: merged, lines: this.lines }];
    }
    this.onTrim(this.dropped);
    if (this.autoScroll) this.scrollToEnd();
  }

  scrollToEnd() {
    this.ignoreScroll = true;
    this.pre.scrollTop = this.pre.scrollHeight;
  }
}

export function describeDropped(node, dropped, maxLines) {
  setText(node, dropped ? `Showing the last ${maxLines.toLocaleString()} lines; older lines are in the full log.` : "");
  node.hidden = !dropped;
}
