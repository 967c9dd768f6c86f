"""The portal's pages against the fake cluster: the dashboard, the job page, the admin page,
the rendered notebook (sanitised, sandboxed), the page for an ended or unknown lab, the
static files; and the browser-side parameter parser (params.js, run with node)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.keys import SERVICE
from gateway.api.portal import MAX_PAGE_RENDERS
from gateway.api.rendered import (
    CSP,
    MARKDOWN_BUDGET,
    MAX_SHOWN,
    PAGE_TEXT_BUDGET,
    STYLE_HASH,
    notebook_cells,
    render_notebook,
    rendered_page,
)
from gateway.config import parse_config
from gateway.offload import WorkFailed
from gateway.server import STORE, make_app
from gateway.states import State
from tests.factories import add_job

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
STATIC = Path(__file__).resolve().parents[2] / "gateway" / "api" / "static"
HOSTILE = ['<script>alert(1)</script>', '<img src=x onerror=alert(1)>', 'javascript:alert(1)']
PAGE = {"Accept": "text/html"}


@pytest.fixture
async def portal(tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: Any,
               make_raw_config: Callable[..., dict[str, Any]]
               ) -> tuple[TestClient[Any, Any], dict[str, str]]:
    app = make_app(parse_config(make_raw_config(tmp_path / "data")), cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    users = app[STORE].users
    tokens = {name: users.issue_token(users.add_user(name, name, admin=name == "root"))
              for name in ("alice", "bob", "root")}
    return client, tokens


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **PAGE}


async def test_dashboard_admin_and_job_pages(portal: tuple[TestClient[Any, Any], dict[str, str]]
                                             ) -> None:
    client, tokens = portal
    page = await client.get("/", headers=auth(tokens["alice"]))
    text = await page.text()
    assert page.status == 200 and "Run a notebook" in text and "Start a lab" in text
    assert '<script type="module" src="/static/dashboard.js">' in text
    assert "<script>" not in text  # no inline script: the CSP allows none
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    refused = await client.get("/admin", headers=auth(tokens["alice"]))
    assert refused.status == 403 and "Only administrators" in await refused.text()
    allowed = await client.get("/admin", headers=auth(tokens["root"]))
    assert allowed.status == 200 and "Every user&#39;s jobs" in await allowed.text()
    lab = await client.post("/api/v1/jobs", json={"kind": "lab", "name": HOSTILE[0]},
                            headers={"Authorization": f"Bearer {tokens['alice']}"})
    job_id = (await lab.json())["id"]
    mine = await client.get(f"/jobs/{job_id}", headers=auth(tokens["alice"]))
    assert mine.status == 200 and f'data-job="{job_id}"' in await mine.text()
    theirs = await client.get(f"/jobs/{job_id}", headers=auth(tokens["bob"]))
    assert theirs.status == 404 and "No such job" in await theirs.text()
    anonymous = await client.get("/", headers=PAGE, allow_redirects=False)
    assert anonymous.status == 302 and anonymous.headers["Location"].startswith("/login")


async def test_static_files_are_public(portal: tuple[TestClient[Any, Any], dict[str, str]]
                                       ) -> None:
    client, _ = portal
    script = await client.get("/static/common.js")
    assert script.status == 200 and "javascript" in script.headers["Content-Type"]
    assert (await client.get("/static/nothing.js")).status == 404


async def test_an_ended_or_unknown_lab_gets_a_page(
        portal: tuple[TestClient[Any, Any], dict[str, str]]) -> None:
    client, tokens = portal
    bearer = {"Authorization": f"Bearer {tokens['alice']}"}
    lab = await (await client.post("/api/v1/jobs", json={"kind": "lab", "name": HOSTILE[1]},
                                   headers=bearer)).json()
    await client.post(f"/api/v1/jobs/{lab['id']}/cancel", headers=bearer)
    for _ in range(500):  # the fake cluster moves the lab to cancelled within a few polls
        state = (await (await client.get(f"/api/v1/jobs/{lab['id']}", headers=bearer)).json())
        if state["state"] == "cancelled":
            break
        await asyncio.sleep(0.02)
    ended = await client.get(f"/labs/{lab['id']}/lab", headers=auth(tokens["alice"]))
    text = await ended.text()
    assert ended.status == 404 and ended.content_type == "text/html"
    assert "has ended" in text and '<a href="/">' in text
    assert HOSTILE[1] not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    unknown = await client.get("/labs/0123456789abcdef/lab", headers=auth(tokens["alice"]))
    assert unknown.status == 404 and "No such lab" in await unknown.text()
    as_api = await client.get(f"/labs/{lab['id']}/api/status", headers=bearer)
    assert as_api.content_type == "application/problem+json"  # not a browser: a problem


def hostile_notebook() -> dict[str, Any]:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": HOSTILE},
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": "print(1)",
         "outputs": [
             {"output_type": "stream", "name": "stdout", "text": HOSTILE[0]},
             {"output_type": "display_data", "metadata": {},
              "data": {"text/html": HOSTILE[1], "text/plain": HOSTILE[2]}},
             {"output_type": "display_data", "metadata": {},
              "data": {"application/javascript": "alert(1)"}},
             {"output_type": "display_data", "metadata": {},
              "data": {"image/png": "iVBORw0KGgo=\n"}},
             {"output_type": "display_data", "metadata": {},
              "data": {"image/png": "\"><script>alert(1)</script>"}},
             {"output_type": "error", "ename": "E", "evalue": HOSTILE[0],
              "traceback": ["\x1b[31m" + HOSTILE[1] + "\x1b[0m"]}]}]}


def test_the_rendered_notebook_shows_markup_as_text(tmp_path: Path) -> None:
    path = tmp_path / "output.ipynb"
    path.write_text(json.dumps(hostile_notebook()))
    html = render_notebook(path, HOSTILE[0])
    for text in HOSTILE[:2]:
        assert text not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 0 and "<img src=x" not in html
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in html
    assert "application/javascript" in html  # named in a note, never run
    assert "\x1b" not in html
    assert html.count("<img ") == 1  # the bad base64 image is not an image


def test_the_notebook_csp_sandboxes_and_allows_only_its_style() -> None:
    assert CSP.startswith("sandbox;") and "allow-scripts" not in CSP
    assert f"style-src '{STYLE_HASH}'" in CSP and "script-src" not in CSP


def test_cells_of_an_odd_notebook_are_skipped_not_fatal() -> None:
    assert notebook_cells({"cells": [1, {"cell_type": "code", "outputs": "x"}]}) == [
        {"type": "code", "source": "", "html": None, "count": None, "outputs": []}]


async def test_the_rendered_notebook_route(portal: tuple[TestClient[Any, Any], dict[str, str]]
                                           ) -> None:
    client, tokens = portal
    missing = await client.get("/jobs/0123456789abcdef/notebook.html",
                               headers=auth(tokens["alice"]))
    assert missing.status == 404


NODE = shutil.which("node") or "node"  # dev-cluster installs it; missing, the tests fail


def test_params_js_reads_the_parameters_cell(tmp_path: Path) -> None:
    source = ("alpha = 0.1  # learning rate\nepochs: int = 3\nname = 'it''s'\n"
              "label = \"<script>x</script>\"\nflag = True\nnothing = None\n"
              "items = [1, 2]\nimport os\nif = 3\nbig = 1_000\n")
    notebook = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]},
                           "source": source}]}
    script = tmp_path / "check.mjs"
    script.write_text(
        f"import * as p from {json.dumps((STATIC / 'params.js').as_uri())};\n"
        f"const params = p.findParameters({json.dumps(notebook)});\n"
        "const changed = p.changedParameters(params, {alpha: 0.1, epochs: 5, flag: true});\n"
        "console.log(JSON.stringify({params, changed, "
        "bad: p.readValue({type: 'int'}, '1.5'), none: p.findParameters({cells: []})}));\n")
    run = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=60,
                         check=True)
    answer = json.loads(run.stdout)
    assert answer["params"] == [
        {"name": "alpha", "type": "float", "value": 0.1},
        {"name": "epochs", "type": "int", "value": 3},
        {"name": "label", "type": "str", "value": "<script>x</script>"},
        {"name": "flag", "type": "bool", "value": True},
        {"name": "nothing", "type": "none", "value": None},
        {"name": "big", "type": "int", "value": 1000},
    ]
    assert answer["changed"] == {"epochs": 5}
    assert answer["bad"] == {"error": "a whole number"} and answer["none"] == []


def test_the_idle_warning_shows_in_the_last_quarter_of_the_idle_timeout(tmp_path: Path) -> None:
    script = tmp_path / "idle.mjs"
    script.write_text(
        f"import * as c from {json.dumps((STATIC / 'common.js').as_uri())};\n"
        "const now = Date.parse('2026-12-02T12:00:00Z');\n"
        "const lab = (state, last) => ({state, last_activity: last});\n"
        "const left = (job) => c.idleLeft(job, 3600, now);\n"
        "console.log(JSON.stringify({\n"
        "  fresh: left(lab('ready', '2026-12-02T11:50:00.000Z')),\n"
        "  old: left(lab('ready', '2026-12-02T11:10:00.000Z')),\n"
        "  over: left(lab('ready', '2026-12-02T10:00:00.000Z')),\n"
        "  running: left(lab('running', '2026-12-02T11:10:00.000Z')),\n"
        "  unknown: left(lab('ready', null)),\n"
        "  warnFresh: c.idleWarns(3000, 3600), warnOld: c.idleWarns(600, 3600),\n"
        "  warnShort: c.idleWarns(30, 120), quietShort: c.idleWarns(31, 120),\n"
        "}));\n")
    run = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=60,
                         check=True)
    assert json.loads(run.stdout) == {
        "fresh": 3000, "old": 600, "over": 0, "running": None, "unknown": None,
        "warnFresh": False, "warnOld": True, "warnShort": True, "quietShort": False}


def test_markdown_cells_are_rendered_without_their_html_or_script_links(tmp_path: Path) -> None:
    source = ("# Results\n\nSome **bold** text and [a link](https://example.org/x).\n\n"
              "<script>alert(1)</script> <img src=x onerror=alert(1)>\n\n"
              "[click](javascript:alert(1)) [file](file:///etc/passwd) "
              "![pixel](data:image/png;base64,iVBORw0KGgo=)\n")
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": source}]}
    path = tmp_path / "output.ipynb"
    path.write_text(json.dumps(notebook))
    html = render_notebook(path, "md")
    assert "<h1>Results</h1>" in html and "<strong>bold</strong>" in html
    assert '<a href="https://example.org/x">a link</a>' in html
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    assert 'href="javascript:' not in html and 'href="file:' not in html
    assert '<img src="data:image/png;base64,iVBORw0KGgo=" alt="pixel"' in html


def test_markdown_past_the_page_budget_is_text_and_fast(tmp_path: Path) -> None:
    hostile = "![[" * (MARKDOWN_BUDGET // 3 + 1)  # markdown-it's slowest kind of input
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "*first*"},
        {"cell_type": "markdown", "metadata": {}, "source": hostile}]}
    cells = notebook_cells(notebook)
    assert cells[0]["html"] is not None and cells[1]["html"] is None  # over budget: text


def test_the_rendered_page_is_kept_until_the_notebook_changes(tmp_path: Path) -> None:
    path = tmp_path / "output.ipynb"
    path.write_text(json.dumps(hostile_notebook()))
    first = rendered_page(path, "one")
    assert (tmp_path / "output.html").read_text() == first
    assert rendered_page(path, "two") == first  # kept: not rendered again
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # the notebook is newer
    assert "two" in rendered_page(path, "two")


# -- what one page costs: the red-team's notebook of empty cells made 26 bytes of HTML per byte
#    and about 320 MiB of memory per MiB; its views rendered as many at once as were asked --


def test_a_notebook_of_empty_cells_renders_at_most_max_shown_of_them(tmp_path: Path) -> None:
    path = tmp_path / "output.ipynb"
    path.write_text(json.dumps({"cells": [{}] * 200_000}))  # 0.6 MiB
    html = render_notebook(path, "nb")
    assert html.count('class="cell md"') == MAX_SHOWN + 1  # and the note that says so
    assert "the rest of the notebook is not shown here" in html
    assert len(html) < 4 * 1024 * 1024


def test_outputs_past_the_page_text_budget_are_left_out(tmp_path: Path) -> None:
    big = {"output_type": "stream", "name": "stdout", "text": "x" * 190_000}
    cells = notebook_cells({"cells": [{"cell_type": "code", "outputs": [big] * 1000}]})
    shown = sum(len(output["text"]) for output in cells[0]["outputs"])
    assert PAGE_TEXT_BUDGET <= shown < PAGE_TEXT_BUDGET + 200_000
    assert len(cells) == 2 and cells[1]["source"].startswith("… the rest of the notebook")


async def test_a_user_gets_a_few_notebook_pages_rendered_at_once(
        portal: tuple[TestClient[Any, Any], dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bob's page past MAX_PAGE_RENDERS being rendered is a 429; alice's is not refused. A
    page the renderer gives up on (too long, too much memory) is the too-big page."""
    client, tokens = portal
    store = client.server.app[STORE]
    jobs = {}
    for name in ("alice", "bob"):
        user = store.users.get_user(name)
        job = add_job(store, user, f"{name[0]}" * 16, state=State.SUCCEEDED, has_notebook=1)
        directory = client.server.app[SERVICE].ctx.job_dir(job["id"])
        directory.mkdir(parents=True)
        (directory / "output.ipynb").write_text(json.dumps(hostile_notebook()))
        jobs[name] = job["id"]
    gate, started = asyncio.Event(), list[int]()
    real_run = client.server.app[SERVICE].offload.run

    async def gated_run(size: int, function: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(1)
        await asyncio.wait_for(gate.wait(), 10)
        return await real_run(size, function, *args, **kwargs)

    def view(name: str) -> Any:
        return client.get(f"/jobs/{jobs[name]}/notebook.html", headers=auth(tokens[name]))

    monkeypatch.setattr(client.server.app[SERVICE].offload, "run", gated_run)
    bobs = [asyncio.ensure_future(view("bob")) for _ in range(MAX_PAGE_RENDERS)]
    async with asyncio.timeout(10):
        while len(started) < MAX_PAGE_RENDERS:
            await asyncio.sleep(0.01)
    assert (await view("bob")).status == 429
    alices = asyncio.ensure_future(view("alice"))
    gate.set()
    assert {(await page).status for page in (*bobs, alices)} == {200}

    async def given_up(size: int, function: Any, *args: Any, **kwargs: Any) -> Any:
        raise WorkFailed("too long")

    monkeypatch.setattr(client.server.app[SERVICE].offload, "run", given_up)
    (client.server.app[SERVICE].ctx.job_dir(jobs["bob"]) / "output.html").unlink()
    page = await client.get(f"/jobs/{jobs['bob']}/notebook.html", headers=auth(tokens["bob"]))
    assert page.status == 200 and "too big to show here" in await page.text()
