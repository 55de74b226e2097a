"""The dashboard in a real browser: Debian's Chromium driven by Playwright, a real server.

One server (``python -m app serve``) runs on a loopback port for the whole module, in a fresh
workspace with four simulated GPUs; each test opens its own browser page on it.
"""

import io
import json
import os
import re
import zipfile

import pytest

from tests.helpers import (CHROMIUM, ServerProcess, checked_page, launch_chromium, make_workspace,
                           task_env, wait_for)
from tests.test_faults import unwritable

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect

LIVE_CONFIG = """\
# A slower task that prints progress lines: the task page must show them as they come.
model_params:
  name: circle
  radius: 2.0
  sim_time: 5
  progress_steps: 25
"""


# -- the server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Start a real server in a fresh workspace with 4 simulated GPUs; stop it afterwards."""
    base = tmp_path_factory.mktemp("browser")
    ws = make_workspace(base / "ws")
    os.makedirs(os.path.join(ws, "configs", "live"))
    with open(os.path.join(ws, "configs", "live", "live-1.yaml"), "w", encoding="utf-8") as f:
        f.write(LIVE_CONFIG)
    env = task_env(SLOTRUN_FAKE_GPUS=4, SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu"),
                   SLOTRUN_AUTH="false", SLOTRUN_DEVICE_REFRESH="0.5",
                   SLOTRUN_PAGE_SIZE=8)  # small pages, so that paging is exercised
    # The configs' own sim_time applies: 1.5 s for the samples, 5 s for the live one.
    env.pop("SLOTRUN_SIM_TIME", None)
    env.pop("SLOTRUN_WORKSPACE", None)
    srv = ServerProcess(base / "server.log", env, cwd=ws)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    """Launch Debian's Chromium headless (Playwright's own browser download is not used)."""
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page (own context) at laptop size; JavaScript errors fail the test."""
    with checked_page(browser, accept_downloads=True) as pg:
        yield pg


def submit(server, pattern, **extra):
    """Start a batch through the API; return its JSON."""
    status, body = server.json_api("POST", "/batches", {"pattern": pattern, "use_gpu": True,
                                                   "overwrite": True, **extra})
    assert status == 201, body
    return body


def wait_batch_done(server, batch_id, timeout=30):
    """Wait until no task of the batch is queued or running; return the batch JSON."""
    def done():
        status, b = server.json_api("GET", f"/batches/{batch_id}")
        counts = (b or {}).get("counts") or {}
        return b if status == 200 and not counts.get("queued") and not counts.get("running") else None
    return wait_for(done, timeout=timeout, interval=0.2, message=f"batch {batch_id} did not finish")


# -- the tests -----------------------------------------------------------------------------------

def test_regex_preview_lists_matching_configs_and_explains_invalid_ones(page, server):
    page.goto(server.url + "/")
    pattern = page.get_by_label("Configs matching")
    pattern.fill("exp-(2|3)-1")
    status = page.locator("#pattern-status")
    expect(status).to_have_text("4 configs match")
    items = page.locator("#preview-list li")
    expect(items).to_have_count(4)
    assert sorted(items.all_inner_texts()) == [
        "exp-2/exp-2-1-1.yaml", "exp-2/exp-2-1-2.yaml", "exp-3/exp-3-1-1.yaml", "exp-3/exp-3-1-2.yaml"]
    # Bases are never tasks: exp-1 has three configs, not four.
    pattern.fill("exp-1")
    expect(status).to_have_text(re.compile(r"^3 configs match"))
    expect(page.locator("#preview-list li", has_text="base")).to_have_count(0)

    pattern.fill("exp-(")
    expect(status).to_contain_text("Invalid pattern")
    expect(pattern).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#preview-list")).to_be_hidden()
    expect(page.get_by_role("button", name="Check…")).to_be_disabled()

    pattern.fill("no-such-config")
    expect(status).to_have_text("No config matches this pattern.")


def test_slot_limit_is_edited_in_place(page, server):
    page.goto(server.url + "/")
    field = page.get_by_label("Slot limit for gpu2")
    expect(field).to_have_value(re.compile(r"^\d+$"))
    # Keyboard only: focus, type, Enter.
    field.focus()
    field.press("Control+a")
    field.type("3")
    field.press("Enter")
    card = page.locator('.device-card[data-device="gpu2"]')
    expect(card.locator(".slot-status")).to_have_text("saved")
    wait_for(lambda: {d["id"]: d for d in server.json_api("GET", "/devices")[1]["devices"]}["gpu2"]["slots"] == 3,
             timeout=5, message="the server did not take the new slot limit")
    # Three pips are drawn, and a reload shows the stored value.
    expect(card.locator(".pip")).to_have_count(3)
    page.reload()
    expect(page.get_by_label("Slot limit for gpu2")).to_have_value("3")
    # Leaving the field also saves; a bad value is refused without a request.
    field = page.get_by_label("Slot limit for gpu2")
    field.fill("-1")
    field.press("Tab")
    expect(card.locator(".slot-status")).to_have_text("0 to 1000")
    field.fill("1")
    field.press("Tab")
    expect(card.locator(".slot-status")).to_have_text("saved")
    wait_for(lambda: {d["id"]: d for d in server.json_api("GET", "/devices")[1]["devices"]}["gpu2"]["slots"] == 1,
             timeout=5)


def test_start_a_batch_and_watch_it_finish_without_reloading(page, server):
    page.goto(server.url + "/")
    expect(page.locator("#live-badge")).to_have_attribute("data-state", "live")
    page.evaluate("window.__sameDocument = true")
    page.get_by_label("Configs matching").fill("exp-1")
    expect(page.locator("#pattern-status")).to_have_text(re.compile(r"^3 configs match"))
    page.get_by_label("Overwrite: rerun configs whose results are already complete").check()
    page.get_by_role("button", name="Check…").click()
    confirm = page.locator("#confirm")
    expect(confirm).to_be_visible()
    expect(confirm.locator("li")).to_have_count(3)
    expect(confirm).to_contain_text("any GPU")
    page.get_by_role("button", name="Start 3 tasks").click()
    expect(page.locator(".toast")).to_contain_text("3 tasks queued")

    batch = page.locator(".batch").first
    batch_id = batch.get_attribute("data-batch")
    expect(batch.locator(".batch-pattern")).to_have_text("exp-1")
    # The rows appear and reach "succeeded" through live events alone.
    page.locator(f'.batch[data-batch="{batch_id}"]').get_by_role("button", name="Tasks").click()
    rows = page.locator("#tasks-body tr")
    expect(rows).to_have_count(3)
    for i in range(3):
        expect(rows.nth(i).locator(".badge")).to_have_text("succeeded", timeout=30000)
    expect(batch.locator(".batch-text")).to_contain_text("3/3 done")
    expect(rows.first.locator("td.device-cell")).to_have_text(re.compile(r"^gpu\d"))
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    expect(page.locator('[data-count="succeeded"]')).not_to_have_text("0")
    # Slot usage is live too: once the batch is done, no slot is shown busy.
    expect(page.locator('[data-count="slots"]')).to_have_text(re.compile(r"^0 / \d+$"))
    for running in page.locator(".device-card .slot-running").all():
        expect(running).to_have_text("0")


def test_task_page_shows_a_live_log_and_its_details(page, server):
    batch = submit(server, "live-1")
    task_id = batch["tasks"][0]["id"]
    page.goto(f"{server.url}/tasks/{task_id}")
    expect(page.locator("#task-config")).to_have_text("configs/live/live-1.yaml")
    expect(page.locator("#task-config-text")).to_contain_text("progress_steps: 25")
    # Lines arrive while the task runs (5 s for 25 steps), then the state turns without reload.
    log = page.locator("#log")
    expect(page.locator("#task-state")).to_have_text("running", timeout=15000)
    expect(log).to_contain_text("step 3/25", timeout=10000)
    expect(page.locator("#log-status")).to_have_text("live")
    mid = log.inner_text()
    assert "step 25/25" not in mid, "the whole log arrived at once: not a live tail"
    expect(log).to_contain_text("step 25/25", timeout=15000)
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=10000)
    expect(log).to_contain_text("done in")
    expect(page.locator("#task-command")).to_contain_text("run.py -c configs/live/live-1.yaml")
    expect(page.locator(".attempts-table tbody tr")).to_have_count(1)
    expect(page.locator(".attempts-table tbody tr .badge")).to_have_text("succeeded")
    # Auto-scroll kept the newest line in view.
    at_bottom = page.evaluate("(() => { const l = document.getElementById('log');"
                              " return l.scrollHeight - l.scrollTop - l.clientHeight < 30; })()")
    assert at_bottom
    # The results browser lists the files the task wrote; the full log downloads.
    expect(page.locator("#files")).to_contain_text("meta.json")
    with page.expect_download() as info:
        page.locator("#log-download").click()
    text = open(info.value.path(), encoding="utf-8").read()
    assert "step 1/25" in text and "step 25/25" in text


FLOOD_COMMAND = (
    "{python} -u -c \"import sys, time\n"
    "for j in range(40):\n"
    "    sys.stdout.write(''.join('flood %d %d\\n' % (j, i) for i in range(20000)))\n"
    "    time.sleep(0.05)\n\""
)


def test_a_flooding_log_is_capped_and_the_page_stays_responsive(page, server):
    batch = submit(server, "exp-1-2", command=FLOOD_COMMAND)
    task_id = batch["tasks"][0]["id"]
    page.goto(f"{server.url}/tasks/{task_id}")
    log = page.locator("#log")
    expect(log).to_contain_text("flood", timeout=15000)
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=30000)
    # 800,000 lines were printed; the server skipped what it could not push, and the page
    # keeps at most 5,000 lines in the DOM.
    expect(page.locator("#log-note")).to_contain_text("Showing the last 5,000 lines")
    lines = page.evaluate("document.getElementById('log').textContent.split('\\n').length")
    assert 1000 < lines <= 5002, lines
    expect(log).to_contain_text("flood 39 19999")
    assert server.json_api("GET", f"/tasks/{task_id}")[1]["exit_code"] == 0


def test_results_download_as_zip(page, server):
    batch = submit(server, "exp-2-2")
    wait_batch_done(server, batch["id"])
    page.goto(server.url + "/")
    card = page.locator(f'.batch[data-batch="{batch["id"]}"]')
    expect(card.locator(".batch-text")).to_contain_text("2/2 done")
    with page.expect_download() as info:
        card.get_by_role("link", name=re.compile("Download the results of batch")).click()
    with zipfile.ZipFile(info.value.path()) as z:
        names = z.namelist()
        assert z.testzip() is None
        metas = [n for n in names if n.endswith("meta.json")]
        assert len(metas) == 2, names
        assert any("exp-2-2-1" in n for n in metas) and any("exp-2-2-2" in n for n in metas), names
        meta = json.load(io.TextIOWrapper(z.open(metas[0]), encoding="utf-8"))
        assert meta["model"]

    # One task's zip from its page, and a single file from its results browser.
    task_id = batch["tasks"][0]["id"]
    page.goto(f"{server.url}/tasks/{task_id}")
    with page.expect_download() as info:
        page.locator("#results-zip").click()
    with zipfile.ZipFile(info.value.path()) as z:
        assert any(n.endswith("meta.json") for n in z.namelist()), z.namelist()
    with page.expect_download() as info:
        page.locator("#files a.file-link", has_text="meta.json").click()
    assert json.load(open(info.value.path(), encoding="utf-8"))["config"].endswith(".yaml")


def test_filters_pagination_and_actions(page, server):
    # A batch that waits: its tasks stay queued while the queue is paused.
    assert server.json_api("POST", "/queue/pause")[0] == 200
    try:
        batch = submit(server, "exp-3")
        page.goto(server.url + "/?state=queued")
        expect(page.locator("#filter-state")).to_have_value("queued")
        rows = page.locator("#tasks-body tr")
        expect(rows).to_have_count(4)
        expect(page.locator("#queue-state")).to_contain_text("paused")
        # Queued rows say what they wait for: the pause, not a free slot.
        expect(rows.locator(".task-line")).to_have_text(["queue paused"] * 4)
        # Cancel one task from its row: it asks first, then the task leaves the "queued" view live.
        first = rows.first
        tid = first.get_attribute("data-task")
        config = server.json_api("GET", f"/tasks/{tid}")[1]["config"][len("configs/"):]
        first.get_by_role("button", name=f"Cancel task {tid}").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_have_text(f"Cancel task {tid}?{config} has not started: it will not run. "
                                    "Retry queues it again.Cancel taskKeep it queued")
        dialog.get_by_role("button", name="Keep it queued").click()
        expect(dialog).to_be_hidden()
        assert server.json_api("GET", f"/tasks/{tid}")[1]["state"] == "queued"
        first.get_by_role("button", name=f"Cancel task {tid}").click()
        dialog.get_by_role("button", name="Cancel task").click()
        expect(rows).to_have_count(3)
        assert server.json_api("GET", f"/tasks/{tid}")[1]["state"] == "cancelled"
        # Retry it: it is queued again.
        page.select_option("#filter-state", "cancelled")
        row = page.locator(f'#tasks-body tr[data-task="{tid}"]')
        row.get_by_role("button", name=f"Retry task {tid}").click()
        expect(row).to_have_count(0)
        assert server.json_api("GET", f"/tasks/{tid}")[1]["state"] == "queued"
        # Cancel the whole batch (after a confirmation), then everything of it is cancelled.
        page.select_option("#filter-state", "")
        card = page.locator(f'.batch[data-batch="{batch["id"]}"]')
        card.get_by_role("button", name=f"Cancel batch {batch['id']}").click()
        expect(dialog).to_have_text(f"Cancel batch #{batch['id']}?4 queued tasks will not start."
                                    "Cancel 4 tasksKeep the batch")
        dialog.get_by_role("button", name="Cancel 4 tasks").click()
        page.select_option("#filter-batch", str(batch["id"]))
        for i in range(4):
            expect(rows.nth(i).locator(".badge")).to_have_text("cancelled")
        # Sorting by config: the server sorts (across pages), the address keeps it.
        page.get_by_role("button", name="Config").click()
        expect(page.locator('th[data-sort="config"]')).to_have_attribute("aria-sort", "ascending")
        expect(page).to_have_url(re.compile(r"[?&]sort=config\b"))
        listed = server.json_api("GET", f"/tasks?batch={batch['id']}&sort=config")[1]["tasks"]
        ids = [t["id"] for t in listed]
        expect(rows.first).to_have_attribute("data-task", str(ids[0]))
        assert [int(r.get_attribute("data-task")) for r in rows.all()] == ids
        names = page.locator("#tasks-body td.config-cell").all_inner_texts()
        assert names == sorted(names)
        expect(page.locator("#page-next")).to_have_text("Next ›")
        # A filter with no match says so.
        page.select_option("#filter-state", "running")
        expect(page.locator("#tasks-empty")).to_contain_text("No task matches these filters")
        # Paging: 8 tasks a page, newest first; the address keeps the view.
        page.get_by_role("button", name="Clear filters").first.click()
        page.get_by_role("button", name="ID", exact=True).click()
        expect(page.locator('th[data-sort="id"]')).to_have_attribute("aria-sort", "descending")
        if server.json_api("GET", "/tasks")[1]["total"] <= 8:
            submit(server, "exp-(1|2)")  # 7 more, queued while the queue is paused
        total = server.json_api("GET", "/tasks")[1]["total"]
        assert total > 8
        expect(page.locator("#page-info")).to_have_text(f"Page 1 of {-(-total // 8)}")
        expect(rows).to_have_count(8)
        first_ids = [int(r.get_attribute("data-task")) for r in rows.all()]
        page.get_by_role("button", name="Older ›").click()
        expect(page.locator("#page-info")).to_have_text(f"Page 2 of {-(-total // 8)}")
        expect(page.locator("#tasks-meta")).to_contain_text(f"9–{min(16, total)} of {total}")
        assert "page=2" in page.url
        older = [int(r.get_attribute("data-task")) for r in rows.all()]
        assert max(older) < min(first_ids)
        # Sorted by config, page 2 goes on where page 1 ended: the server sorts every page.
        page.get_by_role("button", name="Config").click()
        expect(page.locator("#page-info")).to_have_text(f"Page 1 of {-(-total // 8)}")
        page.get_by_role("button", name="Next ›").click()
        expect(page.locator("#page-info")).to_have_text(f"Page 2 of {-(-total // 8)}")
        listed = server.json_api("GET", "/tasks?sort=config&per_page=8&page=2")[1]["tasks"]
        want = [t["id"] for t in listed]
        expect(rows.first).to_have_attribute("data-task", str(want[0]))
        assert [int(r.get_attribute("data-task")) for r in rows.all()] == want
    finally:
        server.json_api("POST", "/queue/resume")


def test_a_queue_paused_by_a_fault_says_why_and_resumes_by_itself(browser, tmp_path):
    """The run folders cannot be made: the queue pauses itself and the page says why; once
    they can, it resumes by itself, the page says so live, and every task runs."""
    ws = make_workspace(tmp_path / "ws")
    env = task_env(SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"),
                   SLOTRUN_AUTH="false", SLOTRUN_FAULT_PAUSE_AFTER=1, SLOTRUN_SIM_TIME=0.2)
    env.pop("SLOTRUN_WORKSPACE", None)
    srv = ServerProcess(tmp_path / "server.log", env, cwd=ws)
    runs = os.path.join(ws, ".slotrun", "runs")
    try:
        with checked_page(browser) as page:
            page.goto(srv.url + "/")
            state = page.locator("#queue-state")
            expect(state).to_have_text("Queue running")
            with unwritable(runs):
                batch = submit(srv, "exp-1")
                expect(state).to_contain_text(
                    "Queue paused by a fault, resumes by itself: could not start task")
                assert "runs" in state.get_attribute("title")
                page.select_option("#filter-state", "queued")
                lines = page.locator("#tasks-body tr .task-line")
                expect(lines.first).to_have_text("queue paused (fault)")
                expect(lines.first).to_have_attribute(
                    "title", re.compile(r"^queue paused \(fault\)\ncould not start task"))
                page.reload()  # a page opened during the pause says why too
                expect(state).to_contain_text(
                    "Queue paused by a fault, resumes by itself: could not start task")
                tasks = srv.json_api("GET", f"/tasks?batch={batch['id']}")[1]["tasks"]
                assert {t["state"] for t in tasks} == {"queued"}  # nothing failed meanwhile
            expect(state).to_have_text("Queue running")
            wait_batch_done(srv, batch["id"])
            page.select_option("#filter-state", "")
            expect(page.locator("#tasks-body tr .task-line", has_text="queue")).to_have_count(0)
        tasks = srv.json_api("GET", f"/tasks?batch={batch['id']}")[1]["tasks"]
        assert len(tasks) == 3 and {t["state"] for t in tasks} == {"succeeded"}
    finally:
        srv.stop()


def test_page_reconnects_after_a_server_restart_and_catches_up(page, server):
    page.goto(server.url + "/")
    badge = page.locator("#live-badge")
    expect(badge).to_have_attribute("data-state", "live")
    expect(badge).to_have_text("Live")
    server.stop()
    expect(badge).to_have_attribute("data-state", "reconnecting")
    expect(badge).to_have_text("Reconnecting…")
    server.start()
    # A batch started while this page was cut off shows up once it is back.
    batch = submit(server, "exp-1-1")
    expect(badge).to_have_attribute("data-state", "live", timeout=20000)
    card = page.locator(f'.batch[data-batch="{batch["id"]}"]')
    expect(card.locator(".batch-text")).to_contain_text("1/1 done", timeout=20000)
    row = page.locator(f'#tasks-body tr[data-task="{batch["tasks"][0]["id"]}"]')
    expect(row.locator(".badge")).to_have_text("succeeded")


@pytest.mark.parametrize("width", [1280, 1920])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots(browser, server, artifacts_dir, width, scheme):
    """Save the dashboard and a task page at laptop and wide sizes, light and dark."""
    if not server.json_api("GET", "/tasks?state=succeeded")[1]["tasks"]:
        wait_batch_done(server, submit(server, "exp-1")["id"])
    context = browser.new_context(viewport={"width": width, "height": 1000}, color_scheme=scheme)
    try:
        pg = context.new_page()
        pg.goto(server.url + "/")
        expect(pg.locator("#live-badge")).to_have_attribute("data-state", "live")
        expect(pg.locator(".device-card")).to_have_count(5)
        expect(pg.locator("#tasks-body tr").first).to_be_visible()
        pg.get_by_label("Configs matching").fill("exp-(1|2)")
        expect(pg.locator("#pattern-status")).to_have_text(re.compile(r"^7 configs match"))
        bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
        dark = sum(int(x) for x in re.findall(r"\d+", bg)[:3]) < 3 * 128
        assert dark == (scheme == "dark"), f"{scheme} scheme but body background is {bg}"
        pg.screenshot(path=os.path.join(artifacts_dir, f"dashboard-{width}-{scheme}.png"), full_page=True)
        # The page fits the window: no horizontal scrolling.
        assert pg.evaluate("document.documentElement.scrollWidth") <= width
        status, listing = server.json_api("GET", "/tasks?state=succeeded")
        task_id = listing["tasks"][0]["id"]
        pg.goto(f"{server.url}/tasks/{task_id}")
        expect(pg.locator("#task-state")).to_have_text("succeeded")
        expect(pg.locator("#log")).to_contain_text("done in")
        pg.screenshot(path=os.path.join(artifacts_dir, f"task-{width}-{scheme}.png"), full_page=True)
        assert pg.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        context.close()


# -- accounts: a second server with logins on ----------------------------------------------------

ACCOUNTS = {"ada": "admin", "mia": "member", "vic": "viewer"}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A real server with accounts on (an admin, a member, a viewer), 2 simulated GPUs."""
    from app.accounts import Accounts
    from app.store import Store

    base = tmp_path_factory.mktemp("browser-auth")
    ws = make_workspace(base / "ws")
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    for name, role in ACCOUNTS.items():
        acc.add_user(name, role, f"pw-{name}-123")
    env = task_env(SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu"),
                   SLOTRUN_AUTH="true", SLOTRUN_SIM_TIME=0.3)
    env.pop("SLOTRUN_WORKSPACE", None)
    srv = ServerProcess(base / "server.log", env, cwd=ws, ready_status=401)
    srv.tokens = {name: acc.create_token(name, "browser")[1] for name in ACCOUNTS}
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def auth_page(browser, auth_server):
    """A fresh page on the accounts server; JavaScript errors fail the test."""
    with checked_page(browser) as pg:
        yield pg


def sign_in(page, server, name):
    """Log in through the login page (the dashboard sends a stranger there)."""
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(f"pw-{name}-123")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(server.url + "/")
    expect(page.locator("#user-menu .user-name")).to_contain_text(name)


def test_log_in_submit_and_log_out(auth_page, auth_server):
    page = auth_page
    sign_in(page, auth_server, "mia")
    # The live connection signs in with the session (and the page's CSRF token).
    expect(page.locator("#live-badge")).to_have_attribute("data-state", "live")
    page.get_by_label("Configs matching").fill("exp-1")
    expect(page.locator("#pattern-status")).to_have_text(re.compile(r"^3 configs match"))
    page.get_by_label("Overwrite: rerun configs whose results are already complete").check()
    page.get_by_role("button", name="Check…").click()
    page.get_by_role("button", name="Start 3 tasks").click()
    expect(page.locator(".toast")).to_contain_text("3 tasks queued")
    status, batches = auth_server.json_api("GET", "/batches", token=auth_server.tokens["ada"])
    assert status == 200 and batches["batches"][0]["owner"] == "mia"
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(auth_server.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    assert page.evaluate("fetch('/api/v1/status').then(r => r.status)") == 401


def test_a_viewer_sees_no_cancel_buttons_and_the_api_refuses_anyway(auth_page, auth_server):
    page = auth_page
    tokens = auth_server.tokens
    assert auth_server.json_api("POST", "/queue/pause", {}, tokens["ada"])[0] == 200
    try:
        status, batch = auth_server.json_api("POST", "/batches", {
            "pattern": "exp-2", "use_gpu": True, "overwrite": True}, tokens["mia"])
        assert status == 201, batch
        tid = batch["tasks"][0]["id"]
        sign_in(page, auth_server, "vic")
        expect(page.locator("body")).to_have_class(re.compile(r"\bread-only\b"))
        row = page.locator(f'#tasks-body tr[data-task="{tid}"]')
        expect(row.locator(".badge")).to_have_text("queued")
        expect(page.get_by_role("button", name=re.compile(r"^Cancel task"))).to_have_count(0)
        expect(page.get_by_role("button", name=re.compile(r"^Cancel batch"))).to_have_count(0)
        expect(page.get_by_role("button", name=re.compile(r"^Retry task"))).to_have_count(0)
        expect(page.locator("#new-batch-panel")).to_be_hidden()
        # The API refuses even a hand-made call with the page's own CSRF token.
        answer = page.evaluate("""async (tid) => {
            const boot = JSON.parse(document.getElementById('bootstrap').textContent);
            const r = await fetch(`/api/v1/tasks/${tid}/cancel`, {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRFToken': boot.csrf_token},
                body: '{}'});
            return [r.status, (await r.json()).error];
        }""", tid)
        assert answer[0] == 403 and "viewer (read-only)" in answer[1], answer
        assert auth_server.json_api("GET", f"/tasks/{tid}", token=tokens["ada"])[1]["state"] == "queued"
    finally:
        auth_server.json_api("POST", "/queue/resume", {}, tokens["ada"])


SLEEP_COMMAND = '{python} -c "import time; time.sleep(60)"'  # runs until cancelled


def test_controls_follow_the_permissions_of_admins_and_members(auth_page, auth_server):
    page = auth_page
    tokens = auth_server.tokens

    def call(method, path, body, who):
        status, answer = auth_server.json_api(method, path, body, tokens[who])
        assert status in (200, 201), answer
        return answer

    def counts():
        return call("GET", "/status", None, "ada")["counts"]

    wait_for(lambda: not counts()["queued"] and not counts()["running"], timeout=30,
             interval=0.2, message="tasks of earlier tests are still active")
    # Both GPUs busy (one task of mia's, one of ada's), and a batch of mia's waiting.
    own = call("POST", "/batches", {"pattern": "exp-1-1", "overwrite": True,
                                    "command": SLEEP_COMMAND}, "mia")
    other = call("POST", "/batches", {"pattern": "exp-1-2", "overwrite": True,
                                      "command": SLEEP_COMMAND}, "ada")
    own_task, other_task = own["tasks"][0]["id"], other["tasks"][0]["id"]
    wait_for(lambda: counts()["running"] == 2, timeout=20, interval=0.1,
             message="the two sleeping tasks did not start")
    waiting = call("POST", "/batches", {"pattern": "exp-2", "overwrite": True,
                                        "command": SLEEP_COMMAND}, "mia")
    try:
        # An admin sees every control, and sets the waiting batch's priority in place.
        sign_in(page, auth_server, "ada")
        expect(page.locator("#queue-toggle")).to_have_text("Pause queue")
        expect(page.locator(".device-card .slot-input")).to_have_count(3)
        card = page.locator(f'.batch[data-batch="{waiting["id"]}"]')
        priority = card.get_by_label(f"Priority of batch {waiting['id']}")
        expect(priority).to_have_value("0")
        priority.fill("7")
        priority.press("Enter")
        expect(page.locator(".toast")).to_contain_text(f"Batch #{waiting['id']}: priority 7")
        wait_for(lambda: call("GET", f"/batches/{waiting['id']}", None, "ada")["priority"] == 7,
                 timeout=5, message="the server did not take the new priority")
        queued = call("GET", f"/tasks?batch={waiting['id']}", None, "ada")["tasks"]
        assert {t["priority"] for t in queued} == {7}
        page.reload()
        expect(page.get_by_label(f"Priority of batch {waiting['id']}")).to_have_value("7")
        # Whoever owns it, every running task offers Cancel to an admin.
        for tid in (own_task, other_task):
            expect(page.get_by_role("button", name=f"Cancel task {tid}")).to_have_count(1)
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/login$"))

        # A member: no slot inputs, no pause button, no priority input, but the figures.
        sign_in(page, auth_server, "mia")
        expect(page.locator("#queue-state")).to_have_text("Queue running")
        expect(page.locator("#queue-toggle")).to_have_count(0)
        expect(page.locator(".device-card")).to_have_count(3)
        expect(page.locator(".slot-input")).to_have_count(0)
        gpus = page.locator('.device-card[data-kind="gpu"] .slots-row')
        expect(gpus.first).to_contain_text(re.compile(r"1\s*/\s*1"))
        expect(page.locator(".priority-input")).to_have_count(0)
        card = page.locator(f'.batch[data-batch="{waiting["id"]}"]')
        expect(card.locator(".batch-priority")).to_have_text("priority +7")
        # Cancel on her own running task and batches only.
        own_row = page.locator(f'#tasks-body tr[data-task="{own_task}"]')
        other_row = page.locator(f'#tasks-body tr[data-task="{other_task}"]')
        expect(own_row.locator(".badge")).to_have_text("running")
        expect(other_row.locator(".badge")).to_have_text("running")
        expect(own_row.get_by_role("button", name=f"Cancel task {own_task}")).to_be_visible()
        actions = re.compile(r"^(Cancel|Retry) task")
        expect(other_row.get_by_role("button", name=actions)).to_have_count(0)
        expect(page.get_by_role("button", name=f"Cancel batch {waiting['id']}")).to_be_visible()
        expect(page.get_by_role("button", name=f"Cancel batch {other['id']}")).to_have_count(0)
        # "Suggest slots" proposes limits, but only an admin can apply them.
        page.get_by_role("button", name="Suggest slots…").click()
        page.select_option("#suggest-source", "need")
        page.locator("#suggest-need").fill("1GiB")
        page.get_by_role("button", name="Propose").click()
        expect(page.locator(".suggest-result")).to_be_visible()
        expect(page.locator(".suggest-note")).to_be_visible()
        expect(page.get_by_role("button", name=re.compile(r"^Apply to"))).to_have_count(0)
        # Her own task's Cancel works from the row; the row turns through a live event.
        expect(page.locator("#live-badge")).to_have_attribute("data-state", "live")
        own_row.get_by_role("button", name=f"Cancel task {own_task}").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_have_text(re.compile(
            rf"^Cancel task {own_task}\?exp-1/exp-1-1\.yaml is running on gpu\d · 0 \([\d.]+ s so far\)\."
            r"Its processes are stopped \(SIGTERM, then SIGKILL after 5 s\) and the work done so far is "
            r"lost\. Retry runs it again from the start\.Cancel taskKeep it running$"))
        dialog.get_by_role("button", name="Cancel task").click()
        wait_for(lambda: call("GET", f"/tasks/{own_task}", None, "mia")["state"] == "cancelled",
                 timeout=15, interval=0.1, message="the task was not cancelled")
        expect(own_row.locator(".badge")).to_have_text("cancelled")
    finally:
        for batch in (own, other, waiting):
            auth_server.json_api("POST", f"/batches/{batch['id']}/cancel", {}, tokens["ada"])
        wait_for(lambda: not counts()["running"], timeout=30, interval=0.2,
                 message="the sleeping tasks were not stopped")
