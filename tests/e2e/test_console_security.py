"""The console in headless Chromium against a server that needs a management token: the token
typed in the page opens it, and text from the server (an adapter source path holding HTML) is
shown as text, never run."""

from __future__ import annotations

import importlib.util

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import CHROMIUM, FLAGS, make_adapter_dir, make_store

pytestmark = pytest.mark.slow
HOSTILE = "<img src=x onerror=window.pwned=1>"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright")
def test_console_with_token_renders_text_not_html(tmp_path):
    from playwright.sync_api import sync_playwright

    store = make_store(tmp_path, adapters=())
    hostile = make_adapter_dir(store / "extra", HOSTILE)
    plain = make_adapter_dir(store / "extra", "plain")
    auth = {"Authorization": "Bearer s3cret"}
    env = {"LORASERVE_MANAGEMENT_TOKEN": "s3cret"}
    with ServerProcess(["--model-store", str(store)], env=env) as server, sync_playwright() as playwright:
        assert server.client.get("/models").status_code == 401
        reply = server.client.post(
            "/models/echo/adapters", params={"name": "hostile", "src": str(hostile)}, headers=auth
        )
        assert reply.status_code == 200, reply.text
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server.base_url + "/console")
        page.wait_for_selector("#auth:has-text('needs a token')")
        page.fill("#token", "s3cret")
        page.dispatch_event("#token", "change")
        page.wait_for_selector('tr[data-adapter="hostile"]')
        assert HOSTILE in page.inner_text("#models")  # shown as text ...
        assert page.query_selector("#models img") is None  # ... not parsed as HTML
        assert page.evaluate("window.pwned") is None
        page.fill("#reg-name", "plain")
        page.fill("#reg-src", str(plain))
        page.click("#reg-button")
        page.wait_for_selector('tr[data-adapter="plain"]')
        page.click('button[data-delete="echo/plain"]')
        page.wait_for_selector('tr[data-adapter="plain"]', state="detached")
        assert server.client.get("/models/echo/adapters/plain", headers=auth).status_code == 404
        browser.close()
