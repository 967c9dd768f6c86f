"""A real browser (Debian's headless chromium, driven by Playwright) logs in to the gateway,
opens a lab at /labs/{id}/lab, starts a Python kernel and runs a cell. The screenshot is kept
under $HPCGW_ARTIFACTS (CI keeps that folder)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from .conftest import (
    Api,
    Gateway,
    add_users,
    cancel_quietly,
    start_gateway,
    stop_gateway,
    write_config,
)
from .lab_helpers import request_lab, wait_ready

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def local_gateway(dev_config: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Gateway]:
    """A gateway of this module's own on the local transport (the proxy path past the tunnel
    is the same for both transports; test_labs covers both)."""
    home = tmp_path_factory.mktemp("browser-gateway")
    config = home / "gateway.toml"
    write_config(dev_config, config, home / "data")
    tokens = add_users(config)
    process, url = start_gateway(config, home / "gateway.log")
    yield Gateway(url, config, tokens, process, home / "gateway.log")
    stop_gateway(process)


@pytest.fixture
def lab(local_gateway: Gateway) -> Iterator[dict[str, Any]]:
    async def start() -> dict[str, Any]:
        api = Api(local_gateway, "alice")
        job = await request_lab(api, partition="gpu", gpus=1, time="00:15:00",
                                name="browser lab")
        return await wait_ready(api, job["id"])
    job = asyncio.run(start())
    yield job
    cancel_quietly(local_gateway, [job["id"]])


def _log_in(page: Page, gateway: Gateway, lab_url: str) -> None:
    # ?reset: JupyterLab starts from a fresh workspace (a launcher), not from the layout an
    # earlier session of the same unix user saved.
    page.goto(f"{gateway.url}{lab_url}?reset")
    expect(page).to_have_url(f"{gateway.url}/login?next={lab_url}?reset", timeout=30_000)
    page.fill("input[name=token]", gateway.tokens["alice"])
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(gateway.url + lab_url)), timeout=30_000)


def _run_cell(page: Page, code: str) -> str:
    """Open a Python 3 notebook from the launcher, type ``code`` in its first cell and run it;
    the cell's output. On a loaded machine the first run can be sent before the kernel's
    WebSocket is connected and be dropped (the cell stays ``[ ]``): run it again, as a user
    would, up to three times."""
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click(timeout=120_000)
    cell = page.locator(".jp-Notebook .jp-Cell").first
    editor = cell.locator(".cm-content")
    editor.wait_for(timeout=120_000)
    expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle").first).to_be_visible(
        timeout=120_000)
    editor.click()
    page.keyboard.type(code)
    output = cell.locator(".jp-OutputArea-output")
    for _ in range(3):
        editor.click()
        page.keyboard.press("Control+Enter")  # run, and stay in this cell
        try:
            expect(output).to_contain_text("GPU", timeout=40_000)
            return output.inner_text()
        except AssertionError:
            continue
    expect(output).to_contain_text("GPU", timeout=1_000)
    return output.inner_text()


def test_browser_opens_the_lab_and_runs_a_cell(lab: dict[str, Any], local_gateway: Gateway
                                               ) -> None:
    artifacts = Path(os.environ.get("HPCGW_ARTIFACTS", "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            _log_in(page, local_gateway, lab["lab_url"])
            expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
            expect(page.locator(".jp-DirListing")).to_be_visible()  # the file browser
            text = _run_cell(page, "import os\nprint('GPU', os.environ['CUDA_VISIBLE_DEVICES'])")
        finally:
            page.screenshot(path=str(artifacts / "lab-browser.png"))  # also what a failure saw
            browser.close()
    assert text.strip() in ("GPU 0", "GPU 1")
