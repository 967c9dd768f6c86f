"""The gateway's logs: JSON events with their fields, the request's id and user on everything
logged while serving it, an access event per request, state changes as events, no secret, and
no raw control character from what a job or client wrote, in either format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import logs
from gateway.config import parse_config
from gateway.server import STORE, make_app, server_options

if TYPE_CHECKING:
    from conftest import FakeClusters

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged during the test, as the gateway writes it (JSON)."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.configure("info", "json", stream)
    yield stream
    root.handlers[:], root.level = saved


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_is_one_json_line_with_its_fields(captured: io.StringIO) -> None:
    log = logging.getLogger("hpcgw.test")
    with logs.log_context(request_id="r1", user="alice"):
        log.info("job %s moved", "j1", extra={"job_id": "j1", "to_state": "running"})
        with logs.log_context(user="bob"):
            log.warning("inner")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("outside")
    first, inner, outside = events(captured)
    assert first["event"] == "job j1 moved" and first["level"] == "info"
    assert (first["request_id"], first["user"], first["job_id"], first["to_state"]) == (
        "r1", "alice", "j1", "running")
    assert first["time"].endswith("Z") and first["logger"] == "hpcgw.test"
    assert inner["user"] == "bob" and inner["request_id"] == "r1"
    assert "request_id" not in outside and "ValueError: boom" in outside["error"]


def test_text_lines_carry_the_fields_too() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("warning", "text", stream)
        logging.getLogger("x").info("not shown")
        logging.getLogger("x").warning("shown", extra={"job_id": "j2"})
    finally:
        root.handlers[:], root.level = saved
    assert stream.getvalue().count("\n") == 1
    assert "WARNING x: shown [job_id=j2]" in stream.getvalue()


# What bob's stager (or a failing command's stderr) may say: a terminal title set with BEL, a
# cleared screen, a newline and a forged record, an 8-bit CSI, a line separator, a lone
# surrogate; around a name that must stay as it is.
HOSTILE = ("José \x1b]0;hpcgw: all good\x07\x1b[2J\x1b[H"
           "\n2030-01-01 00:00:00,000 INFO gateway.store: job 42 succeeded\x9b2J\u2028\ud800")
ESCAPED = ("José \\x1b]0;hpcgw: all good\\x07\\x1b[2J\\x1b[H"
           "\\n2030-01-01 00:00:00,000 INFO gateway.store: job 42 succeeded\\x9b2J\\u2028\\ud800")


def logged(log_format: logs.LogFormat, emit: Callable[[logging.Logger], None]) -> str:
    """What ``emit`` logs, as the gateway writes it in ``log_format``."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("info", log_format, stream)
        emit(logging.getLogger("gateway.jobs.stager"))
    finally:
        root.handlers[:], root.level = saved
    return stream.getvalue()


def raw_controls(text: str) -> list[str]:
    """The characters of ``text`` no terminal should get from a log line (its end aside)."""
    return [f"U+{ord(c):04X}" for c in text.removesuffix("\n")
            if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"]


@pytest.mark.parametrize(("text", "escaped"), [
    ("José Müller, 東京, \u00a0, 😀, a\\path", "José Müller, 東京, \u00a0, 😀, a\\path"),
    ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
    ("a\nb\rc\td\x00\x7f", "a\\nb\\rc\\td\\x00\\x7f"),
    ("\x9b2J \xad", "\\x9b2J \\xad"),  # C1 CSI, soft hyphen (Cf)
    ("\u2028\u2029\u202e\ufeff", "\\u2028\\u2029\\u202e\\ufeff"),  # separators, bidi, BOM
    ("\ud800 \ue000 \U000f0000 \U0010ffff", "\\ud800 \\ue000 \\U000f0000 \\U0010ffff"),
])
def test_escape_controls_makes_only_invisible_characters_visible(text: str,
                                                                  escaped: str) -> None:
    assert logs.escape_controls(text) == escaped
    assert not raw_controls(logs.escape_controls(text))


def test_a_hostile_text_line_stays_one_line_escaped() -> None:
    def emit(log: logging.Logger) -> None:
        log.info("job %s: staging failed: %s", "j2", HOSTILE, extra={
            "job_id": "j2", "reason": HOSTILE, "requests": [{"path": HOSTILE}]})

    written = logged("text", emit)
    assert written.count("\n") == 1 and not raw_controls(written), ascii(written)
    assert f"gateway.jobs.stager: job j2: staging failed: {ESCAPED} [job_id=j2 " in written
    assert f" reason={ESCAPED} requests=" in written


def test_a_hostile_traceback_is_escaped_and_indented_in_the_text_format() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError(f"the stager said: {HOSTILE}")
        except ValueError:
            log.exception("job j2: staging failed unexpectedly")

    first, *below = logged("text", emit).removesuffix("\n").split("\n")
    assert first.endswith("gateway.jobs.stager: job j2: staging failed unexpectedly")
    assert below and all(line.startswith(logs.TRACEBACK_INDENT) for line in below), below
    assert not any(raw_controls(line) for line in below), below
    assert any("the stager said: José \\x1b]0;hpcgw: all good\\x07" in line for line in below)
    assert any(line == f"{logs.TRACEBACK_INDENT}2030-01-01 00:00:00,000 INFO gateway.store: "
               "job 42 succeeded\\x9b2J\\u2028\\ud800" for line in below), below


def test_a_hostile_json_line_is_ascii_and_gives_every_string_back() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            log.exception(HOSTILE, extra={"reason": HOSTILE, "requests": [{"path": HOSTILE}]})

    written = logged("json", emit)
    assert written.isascii() and not raw_controls(written), ascii(written)
    (event,) = events(io.StringIO(written))
    assert (event["event"], event["reason"], event["requests"]) == (
        HOSTILE, HOSTILE, [{"path": HOSTILE}])
    assert HOSTILE in event["error"]


@pytest.mark.parametrize(("path", "logged"), [
    ("/labs/x/lab?token=abc&reset", "/labs/x/lab?token=***&reset"),
    ("/login?next=/jobs&code=c&state=s", "/login?next=/jobs&code=***&state=***"),
    ("/api/v1/jobs?limit=5", "/api/v1/jobs?limit=5"),
    ("/x?api_key=1&Secret=2", "/x?api_key=***&Secret=***"),
])
def test_credential_like_query_values_are_masked(path: str, logged: str) -> None:
    assert logs.masked_path(path) == logged


async def test_a_request_is_logged_with_its_id_user_and_the_jobs_moves(
        captured: io.StringIO, tmp_path: Path, aiohttp_client: ClientFactory,
        aiohttp_server: ClientFactory, fake_clusters: FakeClusters,
        make_raw_config: Callable[..., dict[str, Any]],
        make_notebook: Callable[..., bytes]) -> None:
    config = parse_config(make_raw_config(tmp_path / "data"))
    app = make_app(config, cluster_factory=fake_clusters)
    client = await aiohttp_client(await aiohttp_server(app, **server_options(config)))
    store = app[STORE]
    token = store.users.issue_token(store.users.add_user("alice", "alice"))
    auth = {"Authorization": f"Bearer {token}"}
    refused = await client.get("/api/v1/jobs?token=in-the-query", headers=auth)
    assert refused.status == 422  # not a filter of the list
    answer = await client.post("/api/v1/jobs", data=upload(make_notebook()), headers=auth)
    assert answer.status == 201
    request_id = answer.headers["X-Request-Id"]
    job_id = (await answer.json())["id"]
    # aiohttp writes the access event once the response is done, maybe after the client has it
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not any(e.get("request_id") == request_id and e["logger"] == "hpcgw.access"
                  for e in events(captured)):
        assert loop.time() < deadline, captured.getvalue()[-3000:]
        await asyncio.sleep(0.01)
    seen = events(captured)
    access = [e for e in seen if e["logger"] == "hpcgw.access"]
    mine = next(e for e in access if e["request_id"] == request_id)
    assert (mine["method"], mine["path"], mine["status"], mine["user"]) == (
        "POST", "/api/v1/jobs", 201, "alice")
    assert any(e["path"] == "/api/v1/jobs?token=***" and e["status"] == 422 for e in access)
    accepted = next(e for e in seen if e.get("job_id") == job_id)
    assert (accepted["to_state"], accepted["request_id"], accepted["user"]) == (
        "accepted", request_id, "alice")
    assert token not in captured.getvalue() and "in-the-query" not in captured.getvalue()


def upload(notebook: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("notebook", notebook, filename="nb.ipynb")
    form.add_field("spec", "{}", content_type="application/json")
    return form


async def test_the_request_id_is_the_gateways_own(aiohttp_client: ClientFactory) -> None:
    """A client's X-Request-Id is not taken into the logs (it could forge another's)."""
    from gateway.api.requestlog import request_context, request_id_header

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application(middlewares=[request_context])
    app.on_response_prepare.append(request_id_header)
    app.router.add_get("/", hello)
    client = await aiohttp_client(app)
    answer = await client.get("/", headers={"X-Request-Id": "forged"})
    assert len(answer.headers["X-Request-Id"]) == 16
    assert answer.headers["X-Request-Id"] != "forged"
