"""The sweep form, the results table and its plot in a real browser (Chromium + Playwright).

One server for the module (accounts off, two simulated GPUs, tasks of 0.6 s): a sweep is made
in the page, started, and its results table fills in live; then sorting, filtering, the best
value, the CSV download and the plot. Screenshots at 1440x900 and 1024x768 go to
test-artifacts/.
"""

import csv
import io
import math
import os
import re

import pytest
import yaml

from tests.helpers import CHROMIUM, ServerProcess, checked_page, launch_chromium, make_workspace, \
    task_env

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect

SIZES = ((1440, 900), (1024, 768))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server, accounts off, two simulated GPUs; tasks take 0.6 s."""
    base = tmp_path_factory.mktemp("sweeps-browser")
    ws = make_workspace(base / "ws")
    env = task_env(SLOTRUN_FAKE_GPUS=2, SLOTRUN_FAKE_GPU_DIR=str(base / "fakegpu"),
                   SLOTRUN_AUTH="false", SLOTRUN_SIM_TIME=0.6)
    env.pop("SLOTRUN_WORKSPACE", None)
    srv = ServerProcess(base / "server.log", env, cwd=ws)
    srv.workspace = ws
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless."""
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def fill_sweep(page):
    """Fill the form: radius 1, 2, 3 and sim_time 0.2 to 0.4 by 0.2, in the folder radius."""
    page.get_by_label("Base config").fill("configs/exp-1/exp-1-1.yaml")
    expect(page.locator("#sweep-base-status")).to_contain_text("3 parameters")
    page.locator(".param-chip", has_text="model_params.radius").click()
    page.locator(".param-chip", has_text="model_params.sim_time").click()
    rows = page.locator(".param-row")
    expect(rows).to_have_count(2)
    rows.nth(0).locator("input[data-key=list]").fill("1, 2, 3")
    rows.nth(1).locator("select").select_option("step")
    rows.nth(1).locator("input[data-key=start]").fill("0.2")
    rows.nth(1).locator("input[data-key=stop]").fill("0.4")
    rows.nth(1).locator("input[data-key=step]").fill("0.2")


def test_sweep_form_previews_refuses_bad_input_and_starts_a_batch(browser, server, artifacts_dir):
    ws = server.workspace
    with checked_page(browser) as page:
        page.set_viewport_size({"width": 1440, "height": 900})
        page.goto(server.url + "/")
        page.get_by_role("link", name="New sweep…").click()
        expect(page).to_have_url(re.compile(r"/sweep$"))
        page.wait_for_load_state("load")  # the form's script listens from now on
        fill_sweep(page)
        # A folder escaping configs/ is named as the problem; nothing can be created.
        page.get_by_label("Folder under configs/").fill("../outside")
        expect(page.locator("#sweep-error")).to_contain_text("'..' is not allowed")
        expect(page.locator("#sweep-create")).to_be_disabled()
        page.get_by_label("Folder under configs/").fill("radius")
        preview = page.locator("#sweep-preview-body tr")
        expect(preview).to_have_count(6)
        expect(page.locator("#sweep-error")).to_be_hidden()
        names = [preview.nth(i).locator("td").first.inner_text() for i in range(6)]
        assert names == [f"radius-{i}-{j}.yaml" for i in (1, 2, 3) for j in (1, 2)]
        expect(preview.nth(3)).to_contain_text("0.4")
        expect(page.locator("#sweep-count")).to_have_text("6 configs · grid")
        # Zip needs as many values per parameter: the preview says so.
        page.get_by_text("Zip (in lock-step)").click()
        expect(page.locator("#sweep-error")).to_contain_text("as many values")
        page.get_by_text("Grid (every combination)").click()
        expect(preview).to_have_count(6)
        for w, h in SIZES:
            page.set_viewport_size({"width": w, "height": h})
            page.screenshot(path=os.path.join(artifacts_dir, f"sweep-form-{w}.png"), full_page=True)
        page.set_viewport_size({"width": 1440, "height": 900})
        create = page.get_by_role("button", name="Create and start 6 configs")
        create.click()
        done = page.locator("#sweep-done")
        expect(done).to_contain_text("Created 6 configs in configs/radius/")
        expect(done).to_contain_text("started (6 tasks)")
        with open(os.path.join(ws, "configs", "radius", "radius-2-2.yaml")) as f:
            assert yaml.safe_load(f) == {"base": "../exp-1/exp-1-base.yaml",
                                         "model_params": {"radius": 2, "sim_time": 0.4}}
        # The same sweep again: the files exist, the page says so and refuses.
        expect(page.locator("#sweep-hint")).to_contain_text("6 of these files exist")
        create.click()
        expect(page.locator("#sweep-error")).to_contain_text("exist already")
        page.get_by_role("link", name="Open its results table").click()
        expect(page).to_have_url(re.compile(r"/batches/\d+/results$"))
        # Live: the rows reach "succeeded" without a reload.
        rows = page.locator("#results-body tr")
        expect(rows).to_have_count(6)
        expect(page.locator("#results-body .badge", has_text="succeeded")).to_have_count(6,
                                                                                     timeout=30000)


def test_results_table_sorts_filters_highlights_downloads_and_plots(browser, server,
                                                                    artifacts_dir):
    status, out = server.json_api("POST", "/sweeps", {
        "base": "configs/exp-2/exp-2-1-1.yaml", "folder": "rect", "start": True,
        "params": {"model_params.length": [1, 2, 3], "model_params.width": [1, 4]},
        "batch": {"use_gpu": False}})
    assert status == 201, out
    batch = out["batch"]["id"]
    with checked_page(browser, accept_downloads=True) as page:
        page.set_viewport_size({"width": 1440, "height": 900})
        page.goto(f"{server.url}/batches/{batch}/results")
        rows = page.locator("#results-body tr")
        expect(rows).to_have_count(6)
        expect(page.locator("#results-body .badge", has_text="succeeded")).to_have_count(6,
                                                                                     timeout=40000)
        expect(page.locator("#results-meta")).to_contain_text("2 parameters")
        # Best area (3 x 4 = 12) is highlighted; lower-is-better time metric is not flagged.
        best = page.locator('td.metric-cell.is-best[data-metric="area"]')
        expect(best).to_have_count(1)
        expect(best).to_have_text("12")
        expect(best.locator("xpath=..")).to_have_attribute("data-config", "configs/rect/rect-3-2.yaml")
        # Sorting by a metric puts its best first; a second click reverses; then filter.
        head = page.locator('th[data-sort="m:area"] button').first
        head.click()
        expect(rows.first).to_have_attribute("data-config", "configs/rect/rect-3-2.yaml")
        expect(page.locator('th[data-sort="m:area"]')).to_have_attribute("aria-sort", "descending")
        head.click()
        expect(rows.first).to_have_attribute("data-config", "configs/rect/rect-1-1.yaml")
        page.get_by_role("textbox", name="Filter").fill("width=4 area>4")
        expect(rows).to_have_count(2)  # 2 x 4 and 3 x 4
        page.get_by_role("textbox", name="Filter").fill("")
        expect(rows).to_have_count(6)
        # The plot: area against length, coloured by width (two series).
        expect(page.locator("#plot-param")).to_have_value("model_params.length")
        expect(page.locator("#plot-group")).to_have_value("model_params.width")
        expect(page.locator("#plot canvas")).to_have_count(1)
        legend = page.locator("#plot .u-legend .u-series")
        expect(legend).to_have_count(3)
        expect(legend.nth(2)).to_contain_text("width = 4")
        drawn = page.evaluate("""() => { const c = document.querySelector('#plot canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
        assert drawn > 500, "the plot drew nothing"
        page.select_option("#plot-metric", "perimeter")
        expect(page.locator("#plot .u-legend")).to_be_visible()
        page.select_option("#plot-metric", "area")
        for w, h in SIZES:
            page.set_viewport_size({"width": w, "height": h})
            page.wait_for_timeout(300)  # the chart follows the width
            page.screenshot(path=os.path.join(artifacts_dir, f"results-{w}.png"), full_page=True)
        with page.expect_download() as info:
            page.get_by_role("link", name="Download CSV").click()
        text = open(info.value.path(), encoding="utf-8").read()
        table = list(csv.DictReader(io.StringIO(text)))
        assert len(table) == 6
        last = next(r for r in table if r["config"] == "configs/rect/rect-3-2.yaml")
        assert last["model_params.length"] == "3" and last["model_params.width"] == "4"
        assert float(last["area"]) == 12 and math.isclose(float(last["diagonal"]), 5)
