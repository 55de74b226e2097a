"""The dashboard as a lab's shared queue, in a real browser (Debian's Chromium driven by
Playwright) on a real server with accounts on and four simulated GPUs: the first screen at
1440x900 and 1024x768, the start confirmation's exact text, the owner filter and search,
bulk cancel with its confirmation, confirmations on the account pages, and no JavaScript
error on any page. Screenshots go to test-artifacts/.
"""

import os
import re

import pytest

from tests.helpers import (CHROMIUM, ServerProcess, checked_page, launch_chromium, make_workspace,
                           task_env, wait_for)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect

USERS = {"ada": "admin", "mia": "member", "otto": "member"}
SLEEP = '{python} -c "import time; time.sleep(120)"'  # runs until cancelled


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with accounts on, 4 simulated GPUs, and finished work of mia and otto."""
    from app.accounts import Accounts
    from app.store import Store

    base = tmp_path_factory.mktemp("dashboard")
    ws = make_workspace(base / "ws")
    acc = Accounts(Store(os.path.join(ws, ".slotrun", "state.db")))
    for name, role in USERS.items():
        acc.add_user(name, role, f"pw-{name}-123")
    env = task_env(SLOTRUN_FAKE_GPUS=4, SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu"),
                   SLOTRUN_AUTH="true", SLOTRUN_SIM_TIME=0.2, SLOTRUN_KILL_GRACE=2)
    env.pop("SLOTRUN_WORKSPACE", None)
    srv = ServerProcess(base / "server.log", env, cwd=ws, ready_status=401)
    srv.tokens = {name: acc.create_token(name, "browser")[1] for name in USERS}
    try:
        for who, pattern in (("otto", "exp-2"), ("mia", "exp-1"), ("mia", "exp-3")):
            wait_batch(srv, submit(srv, who, pattern)["id"])
        yield srv
    finally:
        srv.stop()


def submit(server, who, pattern, **extra):
    """Start a batch as ``who`` through the API; return its JSON."""
    status, body = server.json_api("POST", "/batches", {"pattern": pattern, "overwrite": True,
                                                         **extra}, token=server.tokens[who])
    assert status == 201, body
    return body


def wait_batch(server, batch_id, timeout=30):
    """Wait until no task of the batch is queued or running."""
    wait_for(lambda: server.json_api("GET", f"/batches/{batch_id}", token=server.tokens["ada"])[1]
             ["finished"], timeout, interval=0.1, message=f"batch {batch_id} did not finish")


@pytest.fixture(scope="module")
def browser():
    """Launch Debian's Chromium headless (Playwright's own browser download is not used)."""
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def sign_in(page, server, name):
    """Log in through the login page."""
    page.goto(server.url + "/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(f"pw-{name}-123")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(server.url + "/")
    expect(page.locator("#live-badge")).to_have_attribute("data-state", "live")


def in_view(page, locator):
    """Return True when the element lies wholly inside the viewport (no scrolling needed)."""
    box = locator.bounding_box()
    size = page.viewport_size
    return (box is not None and box["y"] >= 0 and box["x"] >= 0
            and box["y"] + box["height"] <= size["height"] and box["x"] + box["width"] <= size["width"])


@pytest.mark.parametrize("width,height", [(1440, 900), (1024, 768)])
def test_the_first_screen_holds_the_batch_form_and_the_tasks(browser, server, artifacts_dir,
                                                            width, height):
    with checked_page(browser) as page:
        page.set_viewport_size({"width": width, "height": height})
        sign_in(page, server, "ada")
        expect(page.locator("#tasks-body tr")).to_have_count(11)
        expect(page.locator(".device-card")).to_have_count(5)
        # What a user comes for is on the first screen, without scrolling: the batch form
        # from its pattern to its button, and the first rows of the tasks table.
        for part in ("#pattern", "#check-button", ".tiles", "#devices"):
            assert in_view(page, page.locator(part)), f"{part} is not on the first screen"
        rows = page.locator("#tasks-body tr")
        for i in range(3):
            assert in_view(page, rows.nth(i)), f"task row {i + 1} is not on the first screen"
        # Each row shows its owner, and its last log line under the config.
        first = rows.first
        expect(first.locator(".owner-cell")).to_have_text(re.compile(r"^(mia|otto)$"))
        expect(first.locator(".task-line")).to_have_text(re.compile(r"^done in \d"))
        # Memory and slots at a glance; the charts one click away.
        expect(page.locator('.device-card[data-device="gpu0"] .meter-value')).to_have_text(
            re.compile(r"^[\d.]+/24 GiB$"))
        expect(page.locator("#device-charts")).to_be_hidden()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=os.path.join(artifacts_dir, f"dashboard-admin-{width}x{height}.png"))


def test_the_start_confirmation_says_exactly_what_will_run(browser, server, artifacts_dir):
    with checked_page(browser) as page:
        page.set_viewport_size({"width": 1440, "height": 900})
        sign_in(page, server, "mia")
        page.get_by_label("Configs matching").fill("exp-1")
        expect(page.locator("#pattern-status")).to_have_text(
            "3 configs match · 3 already complete (skipped unless Overwrite)")
        page.get_by_role("button", name="Check…").click()
        confirm = page.locator("#confirm")
        expect(confirm).to_be_visible()
        facts = confirm.locator("#confirm-facts")
        assert facts.inner_text().split("\n") == [
            "Configs", "3 configs (3 with complete results)", "Runs on", "any GPU",
            "Overwrite", "no: 3 configs with complete results will be skipped"]
        assert "null" not in confirm.inner_text() and "[object" not in confirm.inner_text()
        # Each label and its value sit side by side, the value taking the room it needs.
        labels = facts.locator("dt")
        values = facts.locator("dd")
        expect(labels).to_have_count(3)
        expect(values).to_have_count(3)
        for i in range(3):
            label, value = labels.nth(i).bounding_box(), values.nth(i).bounding_box()
            assert abs(label["y"] - value["y"]) < 2 and value["x"] > label["x"] + label["width"]
            assert value["height"] < 40, "the value is squeezed into a narrow column"
        expect(confirm.get_by_role("button", name="Start (all will be skipped)")).to_be_focused()
        confirm.screenshot(path=os.path.join(artifacts_dir, "confirm-start-batch.png"))
        # Overwrite, two GPUs and a command: each fact says so.
        page.get_by_role("button", name="Back").click()
        page.get_by_label("Overwrite: rerun configs whose results are already complete").check()
        page.locator('#device-checks input[value="gpu1"]').uncheck()
        page.locator('#device-checks input[value="gpu3"]').uncheck()
        page.locator("details.advanced summary").click()
        page.locator("#command").fill("{python} run.py -c {config}")
        page.get_by_role("button", name="Check…").click()
        assert facts.inner_text().split("\n") == [
            "Configs", "3 configs (3 with complete results)", "Runs on", "gpu0, gpu2",
            "Overwrite", "yes: complete results are run again", "Command",
            "{python} run.py -c {config}"]
        expect(confirm.locator("#confirm-list li")).to_have_count(3)
        page.get_by_role("button", name="Start 3 tasks").click()
        expect(page.locator(".toast").last).to_contain_text("3 tasks queued")


def test_owner_filter_and_search_are_server_side_and_remembered(browser, server):
    with checked_page(browser) as page:
        sign_in(page, server, "mia")
        rows = page.locator("#tasks-body tr")
        owner = page.get_by_label("Owner")
        expect(owner.locator("option")).to_have_text(["Everyone", "Mine (mia)", re.compile(r"^otto \(\d+\)$")])
        owner.select_option(label="Mine (mia)")
        expect(page).to_have_url(re.compile(r"[?&]owner=mia\b"))
        mine = server.json_api("GET", "/tasks?owner=mia&per_page=100", token=server.tokens["mia"])[1]
        expect(rows).to_have_count(mine["total"])
        assert set(page.locator("#tasks-body .owner-cell").all_inner_texts()) == {"mia"}
        # The batches follow the same owner filter.
        expect(page.locator(".batch .batch-info")).not_to_have_count(0)
        for info in page.locator(".batch .batch-info").all_inner_texts():
            assert info.startswith("mia ·"), info
        # Remembered in this browser: a fresh visit without the address keeps "Mine".
        page.goto(server.url + "/")
        expect(owner).to_have_value("mia")
        expect(rows).to_have_count(mine["total"])
        # Search in config paths (server-side, with the owner filter).
        page.get_by_label("Search config paths").fill("exp-3-2")
        expect(rows).to_have_count(2)
        expect(page).to_have_url(re.compile(r"[?&]q=exp-3-2\b"))
        assert all("exp-3-2" in c for c in page.locator("#tasks-body .config-link").all_inner_texts())
        expect(page.locator("#tasks-meta")).to_have_text("1–2 of 2")
        page.get_by_label("Search config paths").fill("no-such-config")
        expect(page.locator("#tasks-empty")).to_contain_text("No task matches these filters")
        page.get_by_role("button", name="Clear filters").last.click()
        expect(page.get_by_label("Search config paths")).to_have_value("")
        expect(rows).to_have_count(mine["total"])
        owner.select_option(label="Everyone")
        total = server.json_api("GET", "/tasks", token=server.tokens["mia"])[1]["total"]
        expect(page.locator("#tasks-meta")).to_contain_text(f"of {total}")


def test_bulk_cancel_confirms_how_many_and_skips_the_others_tasks(browser, server, artifacts_dir):
    assert server.json_api("POST", "/queue/pause", token=server.tokens["ada"])[0] == 200
    try:
        mine = submit(server, "mia", "exp-2-1", command=SLEEP)
        theirs = submit(server, "otto", "exp-2-1", command=SLEEP)
        with checked_page(browser) as page:
            sign_in(page, server, "mia")
            page.get_by_label("Owner").select_option(label="Everyone")
            page.get_by_label("State").select_option("queued")
            page.get_by_label("Search config paths").fill("exp-2-1")
            expect(page.locator("#tasks-body tr")).to_have_count(4)
            page.get_by_role("button", name="Cancel matching…").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_have_text(
                "Cancel 2 tasks?2 queued tasks will not start.4 tasks match state queued, config "
                "containing “exp-2-1”. 2 tasks of other users are skipped: only their owners or an "
                "admin may touch them.Cancel 2 tasksKeep them")
            dialog.screenshot(path=os.path.join(artifacts_dir, "confirm-bulk-cancel.png"))
            dialog.get_by_role("button", name="Keep them").click()
            expect(dialog).to_be_hidden()
            assert server.json_api("GET", f"/batches/{mine['id']}", token=server.tokens["mia"])[1][
                "counts"]["queued"] == 2
            page.get_by_role("button", name="Cancel matching…").click()
            dialog.get_by_role("button", name="Cancel 2 tasks").click()
            expect(page.locator(".toast").last).to_have_text(
                re.compile(r"^2 queued tasks cancelled \(2 tasks of other users skipped\)"))
            # Live: her two leave the "queued" view, otto's two stay.
            expect(page.locator("#tasks-body tr")).to_have_count(2)
            assert set(page.locator("#tasks-body .owner-cell").all_inner_texts()) == {"otto"}
            counts = server.json_api("GET", f"/batches/{theirs['id']}", token=server.tokens["ada"])[1]["counts"]
            assert counts["queued"] == 2
    finally:
        server.json_api("POST", "/tasks/cancel", {"q": "exp-2-1"}, token=server.tokens["ada"])
        server.json_api("POST", "/queue/resume", token=server.tokens["ada"])


def test_no_javascript_error_on_any_page_and_the_account_pages_confirm(browser, server):
    task = server.json_api("GET", "/tasks?state=succeeded", token=server.tokens["ada"])[1]["tasks"][0]
    with checked_page(browser) as page:
        page.goto(server.url + "/login")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        sign_in(page, server, "ada")
        for path, ready in ((f"/tasks/{task['id']}", "#task-state"), (f"/batches/{task['batch']}", "#tasks-body tr"),
                            ("/account", "#tokens-title"), ("/users", "#users-title"),
                            (f"/?timeline={task['batch']}", ".tl-bar")):
            page.goto(server.url + path)
            expect(page.locator(ready).first).to_be_visible()
        page.goto(server.url + "/no-such-page")
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        page.goto(f"{server.url}/tasks/{task['id']}")
        expect(page.locator("#files .file-icon").first).to_be_visible()
        # Removing a user asks first, and the answer "Keep" keeps them.
        page.goto(server.url + "/users")
        page.get_by_role("button", name="Remove otto").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_have_text("Remove otto?otto can no longer log in, and their API tokens stop "
                                    "working at once.Their batches and tasks stay, under their name."
                                    "Remove ottoKeep")
        dialog.get_by_role("button", name="Keep").click()
        expect(page.locator('tr[data-user="otto"]')).to_have_count(1)
        # Revoking a token asks too; confirmed, it is gone.
        page.goto(server.url + "/account")
        page.get_by_label("Label").fill("to revoke")
        page.get_by_role("button", name="Create token").click()
        row = page.locator("tr", has_text="to revoke")
        token_id = row.get_attribute("data-token")
        row.get_by_role("button", name=f"Revoke token {token_id}").click()
        expect(dialog).to_contain_text(f"Revoke token {token_id} (to revoke)?")
        dialog.get_by_role("button", name="Revoke token").click()
        expect(page.locator(f'tr[data-token="{token_id}"]')).to_have_count(0)


def test_a_teammate_joins_with_an_invite_link(browser, server, artifacts_dir):
    with checked_page(browser) as admin:
        sign_in(admin, server, "ada")
        admin.goto(server.url + "/users")
        admin.get_by_label("Role", exact=True).select_option("member")
        admin.get_by_label("The link works for").select_option(label="24 hours")
        admin.get_by_role("button", name="Create invite link").click()
        box = admin.locator(".new-invite")
        expect(box).to_contain_text("Invite link for a new user (member).")
        expect(box).to_contain_text("it works once, until")
        link = admin.get_by_label("The invite link").input_value()
        assert link.startswith(server.url + "/join?token=")
        expect(admin.locator(".invites-table tbody tr")).to_have_count(1)
        box.screenshot(path=os.path.join(artifacts_dir, "invite-link.png"))
    # The teammate, in another browser: the link, a name and a password, and they are in.
    with checked_page(browser) as guest:
        guest.goto(link)
        expect(guest.get_by_role("heading", name="Join slotrun as a member")).to_be_visible()
        expect(guest.locator(".auth-note")).to_contain_text("ada invited you.")
        guest.get_by_label("User name").fill("nell")
        guest.get_by_label("Password", exact=True).fill("pw-nell-123")
        guest.get_by_label("Repeat the password").fill("pw-nell-123")
        guest.get_by_role("button", name="Create my account and log in").click()
        expect(guest).to_have_url(server.url + "/")
        expect(guest.locator("#user-menu .user-name")).to_contain_text("nell")
        expect(guest.locator("#live-badge")).to_have_attribute("data-state", "live")
        # The link worked once.
        guest.goto(link)
        expect(guest.locator(".form-error")).to_contain_text("this invite link was already used (by nell, on ")
    with checked_page(browser) as admin:
        sign_in(admin, server, "ada")
        admin.goto(server.url + "/users")
        expect(admin.locator('tr[data-user="nell"] select')).to_have_value("member")
        expect(admin.locator(".invites-table")).to_have_count(0)
