"""Browser notifications in a real browser: turned on from the account page with a click, then
shown by the dashboard for "my batch finished" and "a task of mine failed"."""

import os

import pytest

from tests.helpers import CHROMIUM, ServerProcess, checked_page, launch_chromium, make_workspace, \
    task_env, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect

# Record every notification the page shows (then show it as usual).
RECORD = """
(() => {
  const Real = window.Notification;
  window.__shown = [];
  function Recorded(title, options) {
    window.__shown.push({ title, body: (options || {}).body, tag: (options || {}).tag });
    return new Real(title, options);
  }
  Recorded.requestPermission = (...a) => Real.requestPermission(...a);
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  window.Notification = Recorded;
})();
"""


def test_browser_notifications_for_my_batch_and_my_failed_task(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    os.makedirs(os.path.join(ws, "configs", "bad"))
    with open(os.path.join(ws, "configs", "bad", "bad-1.yaml"), "w") as f:
        f.write("model_params: {name: hexagon, radius: 1}\n")
    server = ServerProcess(tmp_path / "server.log", task_env(
        SLOTRUN_AUTH="false", SLOTRUN_SIM_TIME=0.5, SLOTRUN_CPU_SLOTS=2,
        SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu")), ws)
    try:
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                with checked_page(browser, permissions=["notifications"]) as page:
                    page.add_init_script(RECORD)
                    page.goto(server.url + "/account")
                    status = page.locator("#browser-notify-status")
                    expect(status).to_have_text("Off in this browser.")
                    page.get_by_role("button", name="Turn on browser notifications").click()
                    expect(status).to_have_text("On in this browser.")
                    page.get_by_role("button", name="Show a test notification").click()
                    wait_for(lambda: page.evaluate("window.__shown.length") == 1, 5)

                    page.goto(server.url + "/")
                    expect(page.locator("#live-badge")).to_have_attribute("data-state", "live")
                    status_code, batch = server.json_api("POST", "/batches", {
                        "pattern": "exp-1-1|bad-1", "use_gpu": False})
                    assert status_code == 201, batch
                    shown = wait_for(lambda: (lambda s: s if len(s) >= 2 else None)(
                        page.evaluate("window.__shown")), 30, interval=0.1)
                    titles = [n["title"] for n in shown]
                    failed = next(t for t in batch["tasks"] if "bad-1" in t["config"])
                    assert f"Task {failed['id']} failed" in titles, shown
                    assert f"Batch {batch['id']} finished" in titles, shown
                    done = next(n for n in shown if n["title"].startswith("Batch"))
                    assert done["body"] == "exp-1-1|bad-1: 1 succeeded, 1 failed"
                    page.wait_for_timeout(1500)  # later batch events must not repeat it
                    assert len(page.evaluate("window.__shown")) == len(shown)
            finally:
                browser.close()
    finally:
        server.stop()
