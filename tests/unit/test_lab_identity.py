"""The lab identity proof over real loopback sockets: the real job-side launcher
(``gateway/jobside/lab.py`` in the job environment's JupyterLab) proves it holds its token;
impostors and relays in front of it get nothing, the token least of all.

Attackers here are what a hostile cluster user can run: a listener on another loopback address
or port, one that relays every byte to the real lab, one that answers with a made-up proof.
Each records everything it receives, and the test checks the lab's token never arrived.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from gateway.proxy.identity import LabIdentity, LabNotProven, ProvenLabConnector, open_proven
from gateway.tokens import lab_proof, lab_token

REPO = Path(__file__).resolve().parents[2]
JOB_PYTHON = Path(os.environ.get("HPCGW_JOBENV", "/opt/hpcgw-jobenv")) / "bin" / "python"
JOB_ID = "00112233aabbccdd"
PREFIX = f"/labs/{JOB_ID}/"
TOKEN = lab_token("x" * 40, JOB_ID)
START_TIMEOUT = 60.0


@dataclass
class Lab:
    host: str
    port: int


@pytest.fixture(scope="module")
def real_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The real launcher on 127.0.0.1, port picked by the server, token read from the job's
    0600 ``lab.token`` and the port from the launcher's own report, ``lab.json`` (as the job
    script starts it; a missing job environment fails the test, never skips)."""
    assert JOB_PYTHON.exists(), f"no job-side Python at {JOB_PYTHON}: run scripts/dev-cluster up"
    workdir = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "gateway" / "jobside" / "lab.py", workdir / "lab.py")
    (workdir / "lab.token").write_text(TOKEN)
    (workdir / "lab.token").chmod(0o600)
    runtime = workdir / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "JUPYTER_RUNTIME_DIR": str(runtime)}
    process = subprocess.Popen(
        [str(JOB_PYTHON), "-I", "lab.py", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", "--ServerApp.port_retries=0",
         f"--ServerApp.base_url={PREFIX}", f"--ServerApp.root_dir={workdir}"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "lab.log").open("w"))
    report = workdir / "lab.json"
    deadline = time.monotonic() + START_TIMEOUT
    port = None
    while port is None:
        assert process.poll() is None, (workdir / "lab.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the launcher did not start"
        try:
            reported = json.loads(report.read_text())
        except OSError:  # not written yet (it is replaced whole, never seen half-written)
            time.sleep(0.1)
            continue
        assert reported == {"port": reported["port"], "pid": process.pid, "base_url": PREFIX}
        port = int(reported["port"])
    assert json.loads((workdir / "exit.json").read_text()) == {"status": "started"}
    yield Lab("127.0.0.1", port)
    process.terminate()
    process.wait(timeout=20)


@dataclass
class Listener:
    """A hostile listener: records every byte it gets; relays to ``relay_to`` if set, else
    answers every request with ``answer``."""

    relay_to: tuple[str, int] | None = None
    answer: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self, host: str) -> Listener:
        self.server = await asyncio.start_server(self._serve, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.relay_to is None:
            while data := await reader.read(65536):
                self.received += data
                if b"\r\n\r\n" in data:
                    writer.write(self.answer)
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.relay_to)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       record: bool) -> None:
            while data := await source.read(65536):
                if record:
                    self.received += data
                sink.write(data)
            sink.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False),
                             return_exceptions=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def listeners() -> AsyncIterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def _identity(port: int, ip: str | None = None, token: str = TOKEN) -> LabIdentity:
    return LabIdentity(token, PREFIX, port, ip)


async def _get_with_token(connector: ProvenLabConnector, host: str, port: int) -> int:
    """A request carrying the lab's token, as the proxy sends it, through ``connector``."""
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
            f"http://{host}:{port}{PREFIX}api/status",
            headers={"Authorization": f"token {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=10)) as answer:
        return answer.status


async def test_the_real_launcher_proves_it_holds_its_token(real_lab: Lab) -> None:
    sock = await open_proven(_identity(real_lab.port), real_lab.host, real_lab.port)
    sock.close()
    connector = ProvenLabConnector(_identity(real_lab.port), real_lab.host, real_lab.port)
    assert await _get_with_token(connector, real_lab.host, real_lab.port) == 200


async def test_the_launcher_cannot_prove_another_token(real_lab: Lab) -> None:
    other = lab_token("y" * 40, JOB_ID)
    with pytest.raises(LabNotProven, match="does not hold"):
        await open_proven(_identity(real_lab.port, token=other), real_lab.host, real_lab.port)


async def test_a_relay_on_another_loopback_address_gets_no_token(
        real_lab: Lab, listeners: list[Listener]) -> None:
    # Same port number on 127.0.0.2 is possible when the lab binds 127.0.0.1 only; the relay
    # passes the challenge to the real lab, whose answer names 127.0.0.1.
    relay = await Listener(relay_to=(real_lab.host, real_lab.port)).start("127.0.0.2")
    listeners.append(relay)
    connector = ProvenLabConnector(_identity(relay.port), "127.0.0.2", relay.port)
    with pytest.raises(LabNotProven, match="not for the lab's address"):
        await _get_with_token(connector, "127.0.0.2", relay.port)
    assert b"hpcgw/proof" in relay.received  # the challenge went there: the fault landed
    assert TOKEN.encode() not in relay.received
    assert b"Authorization" not in relay.received


async def test_a_relay_on_another_port_of_the_same_address_gets_no_token(
        real_lab: Lab, listeners: list[Listener]) -> None:
    relay = await Listener(relay_to=(real_lab.host, real_lab.port)).start("127.0.0.1")
    listeners.append(relay)
    connector = ProvenLabConnector(_identity(relay.port), "127.0.0.1", relay.port)
    with pytest.raises(LabNotProven):
        await _get_with_token(connector, "127.0.0.1", relay.port)
    assert b"hpcgw/proof" in relay.received
    assert TOKEN.encode() not in relay.received


async def test_an_impostor_with_a_made_up_proof_gets_no_token(listeners: list[Listener]) -> None:
    impostor = Listener()
    listeners.append(await impostor.start("127.0.0.1"))
    address = f"127.0.0.1:{impostor.port}"
    body = json.dumps({"address": address,
                       "proof": lab_proof("guessed-token", "any", address)}).encode()
    impostor.answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    connector = ProvenLabConnector(_identity(impostor.port), "127.0.0.1", impostor.port)
    with pytest.raises(LabNotProven, match="does not hold"):
        await _get_with_token(connector, "127.0.0.1", impostor.port)
    assert b"hpcgw/proof" in impostor.received
    assert TOKEN.encode() not in impostor.received


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n{",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
])
async def test_malformed_answers_to_the_challenge_are_refused(
        answer: bytes, listeners: list[Listener]) -> None:
    impostor = Listener(answer=answer)
    listeners.append(await impostor.start("127.0.0.1"))
    with pytest.raises((LabNotProven, TimeoutError)):
        await open_proven(_identity(impostor.port), "127.0.0.1", impostor.port)
    assert TOKEN.encode() not in impostor.received


async def test_a_connector_reaches_only_its_own_lab(real_lab: Lab) -> None:
    connector = ProvenLabConnector(_identity(real_lab.port), real_lab.host, real_lab.port)
    with pytest.raises(LabNotProven, match="only reaches"):
        await _get_with_token(connector, "127.0.0.1", real_lab.port + 1)
