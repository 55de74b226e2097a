"""Insight in a real browser: live GPU charts, a batch's timeline, task progress bars, slot
suggestions, the memory preview and the out-of-memory note, on a real server with two
simulated GPUs (Debian's Chromium driven by Playwright). Screenshots go to test-artifacts/."""

import os
import re

import pytest

from tests.helpers import CHROMIUM, ServerProcess, launch_chromium, make_workspace, task_env, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect

GIB = 1024**3

# A family declaring its GPU memory (admission lets three fit on a 24 GiB GPU) and printing
# progress lines ("step i/n").
MEM_CONFIG = """\
model_params:
  name: circle
  radius: {radius}
  sim_time: {sim_time}
  progress_steps: 20
  gpu_memory: [[0, 1GiB], [0.3, 6GiB]]
"""

# A family that grows late without declaring it: both tasks look small when they start, then
# the second cannot get its memory and dies out of memory.
OOM_CONFIG = """\
model_params:
  name: circle
  radius: {radius}
  sim_time: 5
  sim_gpu_memory: [[0, 1GiB], [1.2, 14GiB]]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server on two simulated GPUs (two slots each) in a fresh workspace."""
    base = tmp_path_factory.mktemp("insight")
    ws = make_workspace(base / "ws")
    for family, text, n in (("mem", MEM_CONFIG, 6), ("oom", OOM_CONFIG, 2)):
        folder = os.path.join(ws, "configs", family)
        os.makedirs(folder)
        for i in range(n):
            with open(os.path.join(folder, f"{family}-{i}.yaml"), "w", encoding="utf-8") as f:
                f.write(text.format(radius=i + 1.0, sim_time=4 + (i % 3)))
    # A longer one, so that its progress can be watched on two pages in turn.
    with open(os.path.join(ws, "configs", "mem", "long-0.yaml"), "w", encoding="utf-8") as f:
        f.write(MEM_CONFIG.format(radius=9.0, sim_time=9))
    env = task_env(SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu"),
                   SLOTRUN_AUTH="false", SLOTRUN_DEVICE_REFRESH="0.5", SLOTRUN_GPU_SLOTS=2,
                   SLOTRUN_MEMORY_SAMPLE_INTERVAL="0.1")
    env.pop("SLOTRUN_SIM_TIME", None)  # the configs' own sim_time applies
    env.pop("SLOTRUN_WORKSPACE", None)
    srv = ServerProcess(base / "server.log", env, cwd=ws)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, width=1280, scheme="light"):
    """Return (context, page, errors): a fresh page whose JavaScript errors are collected."""
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    pg = context.new_page()
    pg.set_default_timeout(15000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return context, pg, errors


@pytest.fixture
def page(browser, server):
    context, pg, errors = open_page(browser)
    yield pg
    context.close()
    bad = [e for e in errors if not e.startswith("Failed to load resource")
           and "websocket" not in e.lower()]
    assert not bad, f"JavaScript errors on the page: {bad}"


def submit(server, pattern, **extra):
    status, body = server.json_api("POST", "/batches", {"pattern": pattern, "overwrite": True, **extra})
    assert status == 201, body
    return body


def wait_batch_done(server, batch_id, timeout=30):
    def done():
        status, b = server.json_api("GET", f"/batches/{batch_id}")
        return b if status == 200 and b["finished"] else None
    return wait_for(done, timeout=timeout, interval=0.2, message=f"batch {batch_id} did not finish")


def points(page, device):
    value = page.locator(f'.chart-card[data-device="{device}"] .device-chart').get_attribute("data-points")
    return int(value or 0)


# -- the tests -----------------------------------------------------------------------------------

def test_gpu_charts_render_and_grow_live_with_tasks_marked(page, server, artifacts_dir):
    page.goto(server.url + "/")
    expect(page.locator("#live-badge")).to_have_attribute("data-state", "live")
    # The charts are one click away from the device strip.
    charts = page.get_by_role("button", name="Charts")
    expect(charts).to_have_attribute("aria-expanded", "false")
    charts.click()
    expect(charts).to_have_attribute("aria-expanded", "true")
    chart = page.locator('.chart-card[data-device="gpu0"] .device-chart')
    expect(chart.locator("canvas").first).to_be_visible()
    expect(page.locator(".chart-card .device-chart canvas")).not_to_have_count(0)
    first = points(page, "gpu0")
    assert first > 0
    # New samples arrive by "history" events (every 0.5 s here): the charts grow, no reload.
    wait_for(lambda: points(page, "gpu0") >= first + 4, timeout=10, interval=0.1,
             message="the gpu0 chart did not grow")
    batch = submit(server, "mem-0", devices=["gpu1"])
    tid = batch["tasks"][0]["id"]
    # The running task is marked on gpu1's chart and its memory shows in the readout.
    readout = page.locator('.chart-card[data-device="gpu1"] .chart-readout')
    expect(readout.locator(".chart-task", has_text=f"#{tid}")).to_be_visible(timeout=15000)
    expect(readout).to_contain_text("slotrun 6.0 GiB")
    n = points(page, "gpu1")
    wait_for(lambda: points(page, "gpu1") > n, timeout=5, interval=0.1)
    # Hovering the plot reads out the sample under the cursor.
    box = chart.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    expect(chart.locator(".chart-readout")).to_contain_text(re.compile(r"\d\d:\d\d:\d\d"))
    page.locator("#devices-panel").screenshot(path=os.path.join(artifacts_dir, "insight-gpu-charts.png"))
    # A shorter window is one click.
    page.get_by_text("5 min", exact=True).click()
    expect(page.locator('#history-window input[value="300"]')).to_be_checked()
    # Whether the charts are open is remembered in this browser.
    page.reload()
    expect(page.locator(".chart-card .device-chart canvas")).not_to_have_count(0)
    page.get_by_role("button", name="Charts").click()
    expect(page.locator("#device-charts")).to_be_hidden()
    wait_batch_done(server, batch["id"])


def test_timeline_renders_bars_that_change_state_live(page, server, artifacts_dir):
    batch = submit(server, "configs/mem/mem-[0-3]")
    page.goto(server.url + "/")
    card = page.locator(f'.batch[data-batch="{batch["id"]}"]')
    card.get_by_role("button", name=f"Show the timeline of batch {batch['id']}").click()
    panel = page.locator("#timeline-panel")
    expect(panel).to_be_visible()
    expect(page.locator("#timeline-title")).to_have_text(f"Timeline · batch #{batch['id']}")
    assert f"timeline={batch['id']}" in page.url
    bars = panel.locator(".tl-bar")
    expect(panel.locator('.tl-bar[data-state="running"]').first).to_be_visible(timeout=15000)
    # One row per device slot in use; hovering a bar explains it.
    expect(panel.locator(".tl-row:not(.tl-head)")).not_to_have_count(0)
    bar = panel.locator('.tl-bar[data-state="running"]').first
    bar.hover()
    tip = page.locator("#timeline-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("Duration")
    expect(tip).to_contain_text("so far")
    expect(tip).to_contain_text("Peak memory")
    width0 = bar.bounding_box()["width"]
    panel.screenshot(path=os.path.join(artifacts_dir, "insight-timeline-running.png"))
    # Live: bars appear as tasks start and turn green as they succeed, without a reload.
    expect(bars).to_have_count(4, timeout=20000)
    expect(panel.locator('.tl-bar[data-state="succeeded"]')).to_have_count(4, timeout=25000)
    page.mouse.move(0, 0)
    expect(tip).to_be_hidden()
    done = panel.locator(".tl-bar").first
    done.hover()
    expect(tip).to_contain_text(re.compile(r"Exit code\s*0"))
    expect(tip).to_contain_text(re.compile(r"Peak memory\s*6\.0 GiB"))
    assert done.bounding_box()["width"] > 0 and width0 > 0
    expect(page.locator("#timeline-meta")).to_contain_text("4 succeeded")
    panel.screenshot(path=os.path.join(artifacts_dir, "insight-timeline-done.png"))
    # The timeline stays open across a reload (it is in the address) and closes.
    page.reload()
    expect(panel.locator('.tl-bar[data-state="succeeded"]')).to_have_count(4)
    page.get_by_role("button", name="Close the timeline").click()
    expect(panel).to_be_hidden()
    assert "timeline=" not in page.url


def test_progress_bars_appear_and_advance(page, server, artifacts_dir):
    batch = submit(server, "long-0", devices=["gpu0"])
    tid = batch["tasks"][0]["id"]
    page.goto(server.url + "/")
    prog = page.locator(f'#tasks-body tr[data-task="{tid}"] .task-progress')
    expect(prog).to_be_visible(timeout=15000)
    first = int(prog.get_attribute("aria-valuenow"))
    assert prog.get_attribute("aria-valuemax") == "20"
    wait_for(lambda: int(prog.get_attribute("aria-valuenow") or 0) > first, timeout=10, interval=0.1,
             message="the progress bar did not advance")
    expect(prog.locator(".task-progress-text")).to_have_text(re.compile(r"^\d+%$"))
    page.locator("#tasks").screenshot(path=os.path.join(artifacts_dir, "insight-task-progress.png"))

    # The task page shows it too, with the GPU memory the task holds.
    page.goto(f"{server.url}/tasks/{tid}")
    bar = page.locator('[data-wrap="progress"] .task-progress')
    expect(bar).to_be_visible()
    expect(bar.locator(".task-progress-text")).to_have_text(re.compile(r"^\d+ / 20"))
    now = int(bar.get_attribute("aria-valuenow"))
    wait_for(lambda: int(bar.get_attribute("aria-valuenow") or 0) > now, timeout=10, interval=0.1)
    expect(page.locator('[data-fact="memory"]')).to_contain_text("expects 6.0 GiB (declared)")
    expect(page.locator('[data-fact="memory"]')).to_contain_text(re.compile(r"GiB now|peak"))
    page.screenshot(path=os.path.join(artifacts_dir, "insight-task-page.png"))
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=20000)
    expect(bar.locator(".task-progress-text")).to_have_text("20 / 20")
    expect(page.locator('[data-fact="memory"]')).to_contain_text("peak 6.0 GiB")


def test_suggest_slots_and_the_memory_preview(page, server, artifacts_dir):
    page.goto(server.url + "/")
    page.get_by_role("button", name="Suggest slots…").click()
    box = page.locator("#suggest-box")
    expect(box).to_be_visible()
    # "mem" tasks ran earlier: their learned need is offered; a typed size works too.
    page.select_option("#suggest-source", "need")
    page.locator("#suggest-need").fill("lots")
    box.get_by_role("button", name="Propose").click()
    expect(box.locator(".suggest-status")).to_contain_text("not a memory size")
    page.locator("#suggest-need").fill("7GiB")
    box.get_by_role("button", name="Propose").click()
    item = box.locator('.suggest-item[data-device="gpu0"]')
    expect(item.locator(".suggest-to")).to_have_text("3")  # (24 GiB - 512 MiB) // 7 GiB
    page.locator("#devices-panel").screenshot(path=os.path.join(artifacts_dir, "insight-suggest.png"))
    box.get_by_role("button", name="Apply to 2 GPUs").click()
    expect(page.locator(".toast")).to_contain_text("Slot limits set: gpu0 3, gpu1 3")
    expect(page.get_by_label("Slot limit for gpu0")).to_have_value("3")
    devs = {d["id"]: d for d in server.json_api("GET", "/devices")[1]["devices"]}
    assert devs["gpu0"]["slots"] == 3 and devs["gpu1"]["slots"] == 3
    expect(box.get_by_role("button", name="Already set")).to_be_disabled()
    for dev in ("gpu0", "gpu1"):
        assert server.json_api("PATCH", f"/devices/{dev}", {"slots": 2})[0] == 200

    # The batch form names the expected memory per family and offers a suggestion for it.
    page.get_by_label("Configs matching").fill("mem|exp-1")
    preview = page.locator("#memory-preview")
    expect(preview).to_be_visible()
    expect(preview.locator('.mem-family[data-family="configs/mem"]')).to_contain_text("6.0 GiB")
    expect(preview.locator('.mem-family[data-family="configs/mem"]')).to_contain_text("declared")
    expect(preview.locator('.mem-family[data-family="configs/exp-1"]')).to_contain_text("unknown")
    preview.get_by_role("button", name="Suggest slots").click()
    expect(box.locator('.suggest-item[data-device="gpu1"] .suggest-to')).to_have_text("3")
    page.locator("#new-batch-panel").screenshot(path=os.path.join(artifacts_dir, "insight-batch-form.png"))
    page.get_by_role("button", name="Close the slot suggestion").click()
    expect(box).to_be_hidden()


def test_an_out_of_memory_cap_is_shown_on_the_device_card(page, server, artifacts_dir):
    page.goto(server.url + "/")
    batch = submit(server, "configs/oom/", devices=["gpu1"])
    card = page.locator('.device-card[data-device="gpu1"]')
    note = card.locator(".device-note")
    expect(note).to_have_attribute("data-kind", "oom", timeout=20000)
    expect(note).to_contain_text("Out of memory: limited to 1")
    expect(card.locator(".pip.capped")).to_have_count(1)
    card.screenshot(path=os.path.join(artifacts_dir, "insight-oom-card.png"))
    wait_batch_done(server, batch["id"])
    # Once a task finished there, the cap is lifted and the note goes.
    expect(note).to_be_hidden()
    states = [t["state"] for t in server.json_api("GET", f"/batches/{batch['id']}")[1]["tasks"]]
    assert states == ["succeeded", "succeeded"]


@pytest.mark.parametrize("width,scheme", [(1280, "light"), (1920, "dark"), (1280, "dark"), (1920, "light")])
def test_screenshots(browser, server, artifacts_dir, width, scheme):
    """Save the dashboard with charts and a live timeline, at laptop and wide sizes."""
    status, listing = server.json_api("GET", "/batches")
    running = [b for b in listing["batches"] if b["pattern"] == "mem-[345]" and not b["finished"]]
    batch = running[0] if running else submit(server, "mem-[345]")
    context, pg, errors = open_page(browser, width, scheme)
    try:
        pg.goto(f"{server.url}/?timeline={batch['id']}")
        expect(pg.locator("#live-badge")).to_have_attribute("data-state", "live")
        pg.get_by_role("button", name="Charts").click()
        expect(pg.locator(".chart-card .device-chart canvas")).to_have_count(3)
        expect(pg.locator("#timeline-panel .tl-bar").first).to_be_visible()
        expect(pg.locator("#tasks-body tr").first).to_be_visible()
        pg.get_by_label("Configs matching").fill("mem")
        expect(pg.locator("#memory-preview")).to_be_visible()
        pg.wait_for_function("document.querySelectorAll('.device-chart[data-points]').length === 3")
        pg.screenshot(path=os.path.join(artifacts_dir, f"insight-dashboard-{width}-{scheme}.png"),
                      full_page=True)
        assert pg.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        context.close()
    assert not [e for e in errors if not e.startswith("Failed to load resource")
                and "websocket" not in e.lower()], errors
