"""``POST /api/v1/jobs`` with hostile bodies: whatever arrives, the answer is a 4xx
problem+json (never a 500), and nothing reaches the (fake) cluster. Raw bytes go over a socket
where a well-behaved client could not produce them."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import parse_config
from gateway.server import STORE, make_app

if TYPE_CHECKING:
    from conftest import FakeClusters

PROBLEM = "application/problem+json"
LIMIT = 4096
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@dataclass
class Upload:
    client: TestClient[Any, Any]
    token: str
    notebook: bytes
    fakes: FakeClusters
    data: Path  # the gateway's data directory

    @property
    def port(self) -> int:
        port = self.client.server.port
        assert port is not None
        return port

    async def raw(self, head: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Send exactly these bytes as a request; (status, problem body)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = head.strip().replace("\n", "\r\n")
        writer.write(f"{head}\r\nAuthorization: Bearer {self.token}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert f"Content-Type: {PROBLEM}".encode() in header, header
        length = re.search(rb"Content-Length: (\d+)", header)
        assert length, header
        payload = await asyncio.wait_for(reader.readexactly(int(length[1])), 10)
        writer.close()  # (the server may still be reading what was announced)
        return int(header.split(b" ", 2)[1]), json.loads(payload)

    async def multipart(self, body: bytes, boundary: str | None = "XyZ",
                        length: int | None = None) -> tuple[int, dict[str, Any]]:
        content_type = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
        return await self.raw(f"""
POST /api/v1/jobs HTTP/1.1
Host: x
Content-Type: {content_type}
Content-Length: {len(body) if length is None else length}""", body)

    async def form(self, *parts: tuple[str, bytes]) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        for name, value in parts:
            if name == "notebook":
                form.add_field(name, value, filename="f")
            else:
                form.add_field(name, value.decode(), content_type="application/json")
        return await self.client.post("/api/v1/jobs", data=form,
                                      headers={"Authorization": f"Bearer {self.token}"})

    def nothing_submitted(self) -> bool:
        return not self.fakes.by_name["dev"].backend.submissions

    def nothing_kept(self) -> bool:
        """No job's directory (an upload, its side files) in the gateway's data directory."""
        jobs = self.data / "jobs"
        return not jobs.exists() or not any(jobs.iterdir())


@pytest.fixture
async def upload(
    tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
    make_raw_config: Callable[..., dict[str, Any]], make_notebook: Callable[..., bytes],
) -> Upload:
    config = parse_config(make_raw_config(tmp_path / "data", max_notebook_bytes=LIMIT,
                                          max_side_files_bytes=LIMIT))
    app = make_app(config, cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    store = app[STORE]
    token = store.users.issue_token(store.users.add_user("alice", "alice"))
    return Upload(client, token, make_notebook(), fake_clusters, tmp_path / "data")


def part(name: str | None, value: bytes, extra: str = "") -> bytes:
    disposition = "form-data" + (f'; name="{name}"' if name else "")
    head = f"--XyZ\r\nContent-Disposition: {disposition}\r\n{extra}\r\n"
    return head.encode() + value + b"\r\n"


END = b"--XyZ--\r\n"


def deep(levels: int) -> bytes:
    """``[[[...]]]``, nested ``levels`` deep; past 1000 levels only the opening brackets (what
    makes Python's parser recurse), so that 60,000 levels fit the 64 KiB spec cap."""
    return b"[" * levels + (b"]" * levels if levels <= 1000 else b"")


async def test_a_well_formed_raw_upload_is_accepted(upload: Upload) -> None:
    body = part("spec", b"{}") + part("notebook", upload.notebook) + END
    response = await upload.client.post("/api/v1/jobs", data=body, headers={
        "Authorization": f"Bearer {upload.token}",
        "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert response.status == 201, await response.text()


@pytest.mark.parametrize(("name", "body", "boundary", "status"), [
    ("no boundary", part("spec", b"{}") + END, None, 400),
    ("empty boundary", part("spec", b"{}") + END, '""', 400),
    ("boundary never appears", b"just some bytes\r\n", "XyZ", 400),
    ("bad part header", b"--XyZ\r\nContent-Disposition form-data\r\n\r\nx\r\n" + END, "XyZ", 400),
    ("part header too long",
     b"--XyZ\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\nx\r\n" + END, "XyZ", 400),
    ("part without a name", part(None, b"{}") + END, "XyZ", 400),
    ("truncated in a part", part("spec", b"{}") + b"--XyZ\r\nContent-Disposition: form-data; "
     b'name="notebook"\r\n\r\n{"cells": [', "XyZ", 400),
    ("no closing boundary", part("spec", b"{}") + part("notebook", b"{}"), "XyZ", 400),
    ("nested multipart", part("spec", b"--In\r\n\r\nx\r\n--In--\r\n",
                              "Content-Type: multipart/mixed; boundary=In\r\n") + END, "XyZ",
     400),
])
async def test_malformed_multipart_is_400(upload: Upload, name: str, body: bytes,
                                          boundary: str | None, status: int) -> None:
    got, problem = await upload.multipart(body, boundary)
    assert got == status, (name, problem)
    assert problem["status"] == status
    assert upload.nothing_submitted()


@pytest.mark.parametrize("name", ["notebook", "spec"])
async def test_a_repeated_part_is_422_naming_it(upload: Upload, name: str) -> None:
    parts = [("spec", b"{}"), ("notebook", upload.notebook), (name, b"{}")]
    response = await upload.form(*parts)
    assert response.status == 422
    assert (await response.json(content_type=PROBLEM))["fields"] == [name]
    assert upload.nothing_submitted()


async def test_the_whole_upload_is_capped_before_it_is_read(upload: Upload) -> None:
    # Announced far over every part's cap + margins, nothing sent: 413 at once.
    status, problem = await upload.multipart(b"", length=100 * 1024 * 1024)
    assert status == 413 and "at most" in problem["detail"]
    reader, writer = await asyncio.open_connection("127.0.0.1", upload.port)
    writer.write(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
                 b"Authorization: Bearer " + upload.token.encode() + b"\r\n\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 411 ")
    writer.close()
    # A preamble of junk larger than the cap, announced honestly, is refused unread too.
    status, _ = await upload.multipart(b"x" * 200_000 + b"\r\n" + part("spec", b"{}") + END)
    assert status == 413


@pytest.mark.parametrize(("levels", "status"), [(65, 400), (60_000, 400), (100_000, 413)])
async def test_deeply_nested_json_is_refused_not_a_crash(upload: Upload, levels: int,
                                                         status: int) -> None:
    response = await upload.form(("spec", deep(levels)), ("notebook", upload.notebook))
    assert response.status == status, await response.text()
    body = await response.json(content_type=PROBLEM)
    if status == 400:
        assert body["fields"] == ["spec"] and "nested" in body["detail"]
    response = await upload.client.post("/api/v1/jobs", data=deep(levels), headers={
        "Authorization": f"Bearer {upload.token}", "Content-Type": "application/json"})
    assert response.status == status, await response.text()
    if status == 400:
        assert (await response.json(content_type=PROBLEM))["fields"] == ["body"]
    wrapped = b'{"kind": "lab", "parameters": {"x": ' + deep(levels) + b"}}"
    response = await upload.client.post("/api/v1/jobs", data=wrapped, headers={
        "Authorization": f"Bearer {upload.token}", "Content-Type": "application/json"})
    assert response.status == status
    assert upload.nothing_submitted()


async def test_a_deep_notebook_is_422_not_a_crash(upload: Upload) -> None:
    response = await upload.form(("spec", b"{}"), ("notebook", deep(2000)))
    assert response.status == 422
    assert (await response.json(content_type=PROBLEM))["fields"] == ["notebook"]


@pytest.mark.parametrize("spec", [
    '{"parameters": {"p": "\\ud800"}}', '{"parameters": {"\\udfff": 1}}',
    '{"name": "n", "inputs": [{"storage": "s", "path": "in/\\udc80"}]}',
], ids=["parameter-value", "parameter-name", "input-path"])
async def test_a_lone_surrogate_is_refused_before_anything_is_kept(upload: Upload,
                                                                   spec: str) -> None:
    """``"\\ud800"`` is valid JSON but no text: it used to pass every check, then break the
    spec's serialisation after the upload was written, a 500 that left the notebook on the
    gateway's disk with no job row (retention never removed it, the submission rate limit
    never counted it): a way to fill the disk without a limit."""
    response = await upload.form(("spec", spec.encode()), ("notebook", upload.notebook))
    assert response.status == 400, await response.text()
    body = await response.json(content_type=PROBLEM)
    assert body["fields"] == ["spec"] and "surrogate" in body["detail"]
    lab = spec.replace("{", '{"kind": "lab", ', 1).encode()
    response = await upload.client.post("/api/v1/jobs", data=lab, headers={
        "Authorization": f"Bearer {upload.token}", "Content-Type": "application/json"})
    assert response.status == 400, await response.text()
    assert (await response.json(content_type=PROBLEM))["fields"] == ["body"]
    assert upload.nothing_kept() and upload.nothing_submitted()


async def test_a_job_that_cannot_be_stored_leaves_no_upload_behind(
        upload: Upload, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the store refuses the row (a full disk) after the upload was
    written; the upload goes again, whatever the answer."""
    store = upload.client.server.app[STORE]

    def disk_full(row: dict[str, Any]) -> dict[str, Any]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "insert_job", disk_full)
    response = await upload.form(("spec", b'{"name": "n"}'), ("notebook", upload.notebook))
    assert response.status == 500, await response.text()
    assert upload.nothing_kept() and upload.nothing_submitted()


async def test_a_lab_body_arriving_in_pieces_is_read_whole(upload: Upload) -> None:
    document = json.dumps({"kind": "lab", "name": "l" * 100}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(document), 10):
            yield document[i:i + 10]
            await asyncio.sleep(0.01)
    response = await upload.client.post("/api/v1/jobs", data=pieces(), headers={
        "Authorization": f"Bearer {upload.token}", "Content-Type": "application/json"})
    assert response.status == 201, await response.text()
    status, _ = await upload.raw(f"""
POST /api/v1/jobs HTTP/1.1
Host: x
Content-Type: application/json
Content-Length: {70 * 1024}""", b"{" * (70 * 1024))
    assert status == 413


async def test_bad_utf8_in_json_is_400(upload: Upload) -> None:
    response = await upload.client.post("/api/v1/jobs", data=b'{"kind": "\xff"}', headers={
        "Authorization": f"Bearer {upload.token}", "Content-Type": "application/json"})
    assert response.status == 400
