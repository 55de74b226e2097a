// The confirmation box of every destructive action: a modal <dialog> that says what will
// happen and to how much, with the safe choice focused. Forms of the server-rendered pages ask
// it through data-confirm attributes.

import { h } from "./util.js";

let dialog = null;

function build() {
  const title = h("h2.confirm-dialog-title", { id: "confirm-dialog-title" });
  const body = h("div.confirm-dialog-body", { id: "confirm-dialog-body" });
  const ok = h("button.btn.btn-danger", { type: "submit", value: "ok" });
  const cancel = h("button.btn", { type: "submit", value: "cancel" });
  const form = h("form.confirm-dialog-form", { method: "dialog" },
    title, body, h("div.form-actions.confirm-dialog-actions", null, ok, cancel));
  const node = h("dialog.confirm-dialog", {
    id: "confirm-dialog", "aria-labelledby": "confirm-dialog-title", "aria-describedby": "confirm-dialog-body",
  }, form);
  document.body.append(node);
  return { node, title, body, ok, cancel };
}

/**
 * Ask before a destructive action; resolve to true when confirmed.
 * ``body``: a string, a node, or a list of them (one paragraph each). ``danger``: the confirm
 * button is red (default true).
 */
export function confirmAction({ title, body, confirm, cancel = "Keep", danger = true }) {
  if (!dialog) dialog = build();
  const d = dialog;
  if (d.node.open) d.node.close("cancel");
  d.title.textContent = title;
  const parts = Array.isArray(body) ? body : [body];
  d.body.replaceChildren(...parts.filter(Boolean).map((p) => (p instanceof Node ? p : h("p", null, p))));
  d.ok.textContent = confirm;
  d.ok.className = danger ? "btn btn-danger" : "btn btn-primary";
  d.cancel.textContent = cancel;
  d.node.returnValue = "";
  return new Promise((resolve) => {
    d.node.addEventListener("close", () => resolve(d.node.returnValue === "ok"), { once: true });
    d.node.showModal();
    d.cancel.focus();
  });
}

/** Make every form[data-confirm] ask first (title = data-confirm, data-confirm-body, data-confirm-ok). */
export function confirmForms(root = document) {
  for (const form of root.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", async (e) => {
      if (form.dataset.confirmed) return;
      e.preventDefault();
      const ok = await confirmAction({
        title: form.dataset.confirm,
        body: (form.dataset.confirmBody || "").split("\n").filter(Boolean),
        confirm: form.dataset.confirmOk || "Confirm",
        cancel: form.dataset.confirmCancel || "Keep",
      });
      if (ok) {
        form.dataset.confirmed = "1";
        form.requestSubmit();
      }
    });
  }
}
