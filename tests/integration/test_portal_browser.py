"""The browser portal in a real browser (Debian's headless chromium, driven by Playwright)
against the real dev cluster and a gateway of the test's own.

A user logs in (single sign-on through the dev cluster's OpenID Connect provider, or a token),
submits a notebook through the form with a changed
parameter and a side file, watches it reach ``succeeded`` without reloading, reads its live
log, views the rendered notebook and downloads it; starts a lab, opens it, stops it, and opens
it again to get the page that says it ended. Job names, parameters, notebook outputs and log
lines hold ``<script>``, ``<img onerror>`` and ``javascript:``: they must show as text, and no
dialog may open. Every page: no console error, axe-core finds no serious or critical
violation, a screenshot under $HPCGW_ARTIFACTS/portal/.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from .conftest import Gateway, cancel_quietly, dev_oidc, dev_source, oidc_section, own_gateway

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
AXE = Path(__file__).resolve().parents[1] / "browser" / "node_modules" / "axe-core" / "axe.min.js"
HOSTILE = "<script>alert(1)</script> <img src=x onerror=alert(2)> javascript:alert(3)"
pytestmark = pytest.mark.timeout(600)


def notebook() -> bytes:
    """A notebook with a ``parameters`` cell (greeting, count), a cell that reads the side
    file, one whose outputs (HTML, text, log) carry the hostile text, one writing an output."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('greeting = "hello"\ncount = 2')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("print('side file says', open('data.txt').read().strip())"),
        nbformat.v4.new_code_cell(
            "from IPython.display import HTML, display\n"
            f"display(HTML({HOSTILE!r}))\nprint('log line', {HOSTILE!r})\n"
            "print('greeting is', greeting, count)"),
        nbformat.v4.new_code_cell("open('result.txt', 'w').write(greeting * count)"),
    ]
    return nbformat.writes(nb).encode()


@pytest.fixture(scope="module")
def portal_gateway(dev_config: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Gateway]:
    """A gateway with single sign-on through the dev cluster's OpenID Connect provider."""
    home = tmp_path_factory.mktemp("portal-gateway")
    with own_gateway(dev_source(dev_config, "local"), home, oidc_section(dev_oidc())
                     ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("HPCGW_ARTIFACTS", "artifacts")) / "portal"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Watched:
    """A page with its console errors, page errors and dialogs recorded."""

    def __init__(self, page: Page) -> None:
        self.page, self.errors, self.dialogs = page, [], []  # type: ignore[var-annotated]
        page.on("console", lambda m: self.errors.append(f"{m.text} ({m.location.get('url')})")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def expect_status(self, url: str) -> None:
        """Forget Chromium's console line about the page's own 4xx status (it is meant)."""
        self.errors = [e for e in self.errors
                       if not (e.startswith("Failed to load resource") and e.endswith(f"({url})"))]

    def forget_origin(self, origin: str) -> None:
        """Forget what another site's pages logged (the sign-on provider's missing favicon)."""
        self.errors = [e for e in self.errors if f"({origin}/" not in e]

    def check(self, shots: Path, name: str) -> None:
        """No console error or dialog so far; axe finds nothing serious; a screenshot."""
        self.page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        assert not self.errors, f"console errors on {name}: {self.errors}"
        assert not self.dialogs, f"dialogs opened on {name}: {self.dialogs}"
        found = self.page.evaluate(
            "async () => (await axe.run(document, {iframes: false})).violations"
            ".filter(v => ['serious', 'critical'].includes(v.impact))"
            ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.html)}))")
        assert found == [], f"axe on {name}: {json.dumps(found, indent=1)}"


@pytest.fixture
def browser_context(portal_gateway: Gateway, tmp_path: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900},
                                      accept_downloads=True)
        context.add_init_script(path=str(AXE))  # CDP-injected: not subject to the page's CSP
        try:
            yield context
        finally:
            context.close()
            browser.close()


def log_in(page: Page, gateway: Gateway, sso: bool = False) -> None:
    """Log in as alice from the login page: with her token, or (``sso``) through the
    provider's own login form with her password there."""
    page.goto(f"{gateway.url}/")
    expect(page).to_have_url(f"{gateway.url}/login?next=/", timeout=30_000)
    if sso:
        page.click("#sso")
        expect(page.locator("input[name=login]")).to_be_visible(timeout=30_000)
        page.fill("input[name=login]", "alice")
        page.fill("input[name=password]", dev_oidc()["passwords"]["alice"])
    else:
        page.fill("input[name=token]", gateway.tokens["alice"])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{gateway.url}/", timeout=30_000)
    expect(page.locator("#live")).to_have_text(re.compile("^Live"), timeout=30_000)


def card(page: Page, name: str) -> Any:
    return page.locator("#jobs li.card", has_text=name)


def test_notebook_run_through_the_portal(portal_gateway: Gateway, browser_context: BrowserContext,
                                         shots: Path, tmp_path: Path) -> None:
    # Notifications allowed, and each one the page shows recorded in window.__notes.
    browser_context.grant_permissions(["notifications"], origin=portal_gateway.url)
    browser_context.add_init_script(
        "window.__notes = []; const Shown = window.Notification;"
        "window.Notification = class extends Shown {"
        "  constructor(title, options) {"
        "    super(title, options); window.__notes.push(options.body); }"
        "  static get permission() { return Shown.permission; } };")
    page = browser_context.new_page()
    watched = Watched(page)
    log_in(page, portal_gateway, sso=True)
    watched.forget_origin(dev_oidc()["issuer"])
    watched.check(shots, "dashboard")
    side = tmp_path / "data.txt"
    side.write_text("forty-two\n")
    page.set_input_files("#nb-file", files=[{"name": "greet.ipynb", "mimeType":
                                             "application/x-ipynb+json", "buffer": notebook()}])
    expect(page.locator("#param-greeting")).to_have_value("hello")
    expect(page.locator("#param-count")).to_have_value("2")
    page.fill("#param-greeting", HOSTILE)
    page.fill("#run-name", "run " + HOSTILE)
    page.set_input_files("#run-side", str(side))
    page.fill("#run-outputs", "result.txt")
    page.select_option("#run-partition", "gpu")
    page.fill("#run-gpus", "3")  # over the partition's 2: explained before submitting
    expect(page.locator("#run-problems")).to_contain_text("at most 2 GPUs")
    page.fill("#run-gpus", "0")
    page.fill("#run-time", "00:10:00")
    expect(page.locator("#run-problems li")).to_have_count(0)
    page.evaluate("window.__noReload = true")
    page.click("#run-submit")
    job = card(page, "run <script>")
    expect(job).to_be_visible(timeout=30_000)
    expect(job.locator(".state")).to_have_text("succeeded", timeout=180_000)
    assert page.evaluate("window.__noReload") is True  # the state came live, no reload
    expect(page).to_have_title(f"run {HOSTILE}: succeeded — hpcgw")
    assert f"run {HOSTILE}: succeeded" in page.evaluate("window.__notes")
    watched.check(shots, "dashboard-succeeded")

    job.locator("h3 a").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f]{16}$"))
    expect(page.locator("#job-name")).to_have_text("run " + HOSTILE)
    expect(page.locator("#log")).to_contain_text("side file says forty-two", timeout=30_000)
    expect(page.locator("#log")).to_contain_text("log line " + HOSTILE)
    expect(page.locator("#files")).to_contain_text("result.txt")
    frame = page.frame_locator("#notebook")
    expect(frame.locator("body")).to_contain_text("greeting is " + HOSTILE, timeout=30_000)
    # the HTML output shows as its text/plain form, never as markup
    expect(frame.locator("body")).to_contain_text("IPython.core.display.HTML object")
    assert frame.locator("img").count() == 0
    with page.expect_download() as download:
        page.click("#download-nb")
    saved = tmp_path / "executed.ipynb"
    download.value.save_as(saved)
    executed = json.loads(saved.read_text())
    assert any("greeting is" in "".join(o.get("text", "")) for c in executed["cells"]
               for o in c.get("outputs", []))
    watched.check(shots, "job")
    rendered = browser_context.new_page()
    rendered.goto(portal_gateway.url + (page.locator("#notebook").get_attribute("src") or ""))
    rendered.screenshot(path=str(shots / "notebook.png"), full_page=True)


def test_lab_through_the_portal(portal_gateway: Gateway, browser_context: BrowserContext,
                                shots: Path) -> None:
    page = browser_context.new_page()
    watched = Watched(page)
    log_in(page, portal_gateway)
    page.fill("#lab-name", "lab " + HOSTILE)
    page.fill("#lab-time", "00:10:00")
    page.click("#lab-submit")
    lab = card(page, "lab <script>")
    job_id = lab.get_attribute("data-job", timeout=30_000) or ""
    try:
        open_link = lab.get_by_role("link", name="Open")
        expect(open_link).to_be_visible(timeout=180_000)
        expect(lab.locator(".clock")).to_contain_text("left")
        watched.check(shots, "dashboard-lab-ready")
        with browser_context.expect_page() as opened:
            open_link.click()
        jupyter = opened.value
        expect(jupyter).to_have_url(re.compile(f"/labs/{job_id}/lab"), timeout=60_000)
        jupyter.locator("#jp-main-dock-panel").wait_for(timeout=120_000)
        jupyter.screenshot(path=str(shots / "lab.png"))
        jupyter.close()
        lab.get_by_role("button", name=re.compile("^Stop")).click()
        expect(lab.locator(".state")).to_have_text("cancelled", timeout=120_000)
        watched.check(shots, "dashboard-lab-stopped")
        page.goto(f"{portal_gateway.url}/labs/{job_id}/lab")
        watched.expect_status(page.url)  # the page's own 404, logged by Chromium
        expect(page.locator("h1")).to_have_text("This lab is not running")
        expect(page.locator("main")).to_contain_text("lab " + HOSTILE)
        expect(page.get_by_role("link", name="Back to your jobs")).to_be_visible()
        watched.check(shots, "lab-ended")
    finally:  # Playwright's loop runs in this thread: cancel from another one
        with ThreadPoolExecutor(1) as pool:
            pool.submit(cancel_quietly, portal_gateway, [job_id] if job_id else []).result()


def test_phone_screen_and_admin_page(portal_gateway: Gateway, browser_context: BrowserContext,
                                     shots: Path) -> None:
    page = browser_context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    watched = Watched(page)
    log_in(page, portal_gateway)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    watched.check(shots, "dashboard-phone")
    page.goto(f"{portal_gateway.url}/admin")
    expect(page.locator("h1")).to_have_text("Not allowed")
    watched.expect_status(page.url)  # the page's own 403, logged by Chromium
    watched.check(shots, "admin-refused")
