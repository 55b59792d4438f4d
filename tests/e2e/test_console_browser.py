"""The web console in headless Chromium: lists adapters, streams an answer, registers one."""

from __future__ import annotations

import shutil

import pytest

from loraserve.testing.server import ServerProcess
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")
def test_console_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base = make_tiny_llama(tmp_path / "weights")
    model = tmp_path / "store" / "tiny"
    (model / "adapters").mkdir(parents=True)
    make_peft_adapter(base, model / "adapters" / "qv", rank=4)
    extra = make_peft_adapter(base, tmp_path / "store" / "extra" / "late", rank=4, seed=9)
    (model / "serving.properties").write_text(
        f"option.model_id={base}\noption.dtype=fp32\noption.max_lora_rank=8\noption.max_model_len=128\n")
    with ServerProcess(["--model-store", str(tmp_path / "store")]) as server, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server.base_url + "/console")
        page.wait_for_selector('tr[data-adapter="qv"]')
        assert "tiny" in page.inner_text("#models")
        page.select_option("#play-adapter", "qv")
        page.fill("#max-tokens", "6")
        page.click("#send")
        page.wait_for_selector('#answer[data-done="true"]')
        assert page.inner_text("#answer").strip()
        page.fill("#reg-name", "late")
        page.fill("#reg-src", str(extra))
        page.click("#reg-button")
        page.wait_for_selector('tr[data-adapter="late"]')
        assert server.client.get("/models/tiny/adapters/late").status_code == 200
        page.click('button[data-delete="tiny/late"]')
        page.wait_for_selector('tr[data-adapter="late"]', state="detached")
        browser.close()
