// Every page: forms marked data-confirm (removing a user, revoking a token) ask first.

import { confirmForms } from "./confirm.js";

confirmForms();

// A "Copy" button next to a read-only field (an invite link): data-copy names the field.
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", async () => {
    const field = document.getElementById(button.dataset.copy);
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
    } catch (e) {
      document.execCommand("copy"); // plain http on a lab server: no clipboard API
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  });
}
