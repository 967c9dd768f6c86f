"""Integration fixtures: the real dev cluster (must be up) and a real `hpcgw serve` process.

A missing component fails the run, it never skips: `scripts/dev-cluster up` first (the README's
test command does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nbformat
import pytest

from gateway.tokens import lab_token

REPO = Path(__file__).resolve().parents[2]
DEV_DIR = Path(os.environ.get("HPCGW_DEV_DIR", "/var/lib/hpcgw-dev"))
HPCGW = [sys.executable, "-m", "gateway.cli.main"]
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}

pytestmark = pytest.mark.integration
# Lab connections a user may hold at once: room for a browser's lab (test_lab_browser.py),
# small enough for test_labs.py to reach with WebSockets.
SUITE_LAB_CONNECTIONS = 32
SUITE_LIMITS = f"""
[limits]
max_active_jobs = 1000
max_active_labs = 50
max_submissions_per_minute = 100000
max_lab_connections = {SUITE_LAB_CONNECTIONS}
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def dev_config() -> Path:
    status = subprocess.run([str(REPO / "scripts" / "dev-cluster"), "status"],
                            capture_output=True, text=True)
    if status.returncode != 0:
        pytest.fail("the dev cluster is not running: run `scripts/dev-cluster up` first\n"
                    + status.stdout + status.stderr)
    return DEV_DIR / "gateway.toml"


@dataclass
class Gateway:
    url: str
    config: Path
    tokens: dict[str, str]
    process: subprocess.Popen[str]
    log_path: Path

    def env(self, user: str) -> dict[str, str]:
        return {**os.environ, "HPCGW_URL": self.url, "HPCGW_TOKEN": self.tokens[user],
                "HPCGW_CONFIG": str(self.config)}

    def cli(self, user: str, *args: str, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*HPCGW, *args], env=self.env(user), capture_output=True,
                                text=True, timeout=600, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"hpcgw {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


def dev_source(dev_config: Path, transport: str) -> Path:
    """The dev cluster's gateway config for ``transport`` ("local" or "ssh")."""
    return dev_config if transport == "local" else dev_config.with_name("gateway-ssh.toml")


def write_config(source: Path, target: Path, data_dir: Path, gateway_extra: str = "",
                 **settings: object) -> None:
    """A copy of the dev cluster's gateway config with its own data directory, ``settings``
    (keys the config already has, values as TOML text; the first occurrence of each)
    overridden, and ``gateway_extra`` (TOML lines) added to its ``[gateway]`` table."""
    text = source.read_text()
    text = re.sub(r'(?m)^data_dir = ".*"$',
                  f'data_dir = "{data_dir}"' + (f"\n{gateway_extra}" if gateway_extra else ""),
                  text)
    for key, value in settings.items():  # the first: a cluster's own key, before its sub-tables
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
        assert count == 1, key
    tomllib.loads(text)
    target.write_text(text)


# Every secret the suite made or configured (tokens, cookie secrets, metrics tokens): none may
# appear in any gateway's log (checked once the whole session is over, see below).
SECRETS: set[str] = set()


def add_users(config: Path) -> dict[str, str]:
    """Gateway users alice and bob (mapped to the same unix users); their tokens."""
    tokens = {}
    for user in ("alice", "bob"):
        added = subprocess.run([*HPCGW, "--config", str(config), "user", "add", user,
                                "--unix-user", user], capture_output=True, text=True, check=True)
        tokens[user] = added.stdout.strip().splitlines()[-1]
    SECRETS.update(tokens.values())
    secrets_of(config)
    return tokens


def dev_oidc() -> dict[str, Any]:
    """What dev-cluster published about its OpenID Connect provider: issuer, client_id,
    client_secret, passwords (a test fails if it is missing); its secrets join SECRETS."""
    info: dict[str, Any] = json.loads((DEV_DIR / "oidc.json").read_text())
    SECRETS.update([info["client_secret"], *info["passwords"].values()])
    return info


def oidc_section(provider: dict[str, Any], extra: str = "") -> str:
    """A gateway config's [oidc] section for that provider, plus ``extra`` lines."""
    return (f'[oidc]\nissuer = "{provider["issuer"]}"\nclient_id = "{provider["client_id"]}"\n'
            f'client_secret = "{provider["client_secret"]}"\n{extra}')


def log_events(log_path: Path) -> list[dict[str, Any]]:
    """A gateway's log (JSON, one event per line: `hpcgw serve` writes JSON when its stderr is
    not a terminal), each event as a dict."""
    return [json.loads(line) for line in log_path.read_text().splitlines()
            if line.startswith("{")]


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """After the whole run: no token, cookie secret, lab token or private key in any log a
    gateway of the suite wrote (lab tokens are derived from each gateway's cookie secret and
    the job ids its log names). The secrets are those of the gateways' own configs (add_users
    registers them), not of configs unit tests write."""
    yield
    logs = sorted(GATEWAY_LOGS)
    for log_path in logs:
        text = log_path.read_text(errors="replace")
        lab_tokens = {lab_token(secret, job_id) for secret in COOKIE_SECRETS
                      for job_id in set(re.findall(r"\b[0-9a-f]{16}\b", text))}
        leaked = [secret[:12] + "..." for secret in SECRETS | COOKIE_SECRETS | lab_tokens
                  if secret in text]
        assert not leaked, f"{log_path} holds secrets: {leaked}"
        assert "PRIVATE KEY" not in text, f"{log_path} holds a private key"


COOKIE_SECRETS: set[str] = set()
GATEWAY_LOGS: set[Path] = set()  # every log a gateway of the suite (start_gateway) wrote


def secrets_of(config: Path) -> None:
    """Remember the cookie secret and the metrics token of a config the suite wrote."""
    document = tomllib.loads(config.read_text())
    COOKIE_SECRETS.add(document["gateway"]["cookie_secret"])
    token = document.get("metrics", {}).get("token")
    if token:
        SECRETS.add(token)


def start_gateway(config: Path, log_path: Path, wrapper: Sequence[str] = ()
                  ) -> tuple[subprocess.Popen[str], str]:
    """Start `hpcgw serve --port 0` (through ``wrapper``, a command that execs it: prlimit,
    say); (process, url) once it listens."""
    GATEWAY_LOGS.add(log_path)
    log_file = log_path.open("a")
    process = subprocess.Popen([*wrapper, *HPCGW, "--config", str(config), "serve", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving on (http://\S+)", line)
    if not match:
        process.kill()
        pytest.fail(f"hpcgw serve did not start: {line!r}\n{log_path.read_text()[-3000:]}")
    return process, match[1]


@contextlib.contextmanager
def own_gateway(source: Path, home: Path, extra_toml: str = "", wrapper: Sequence[str] = ()
                ) -> Iterator[Gateway]:
    """A gateway of a test's own: ``source``'s config (a dev cluster one) with its data in
    ``home`` and ``extra_toml`` appended, users alice and bob, started through ``wrapper``
    (:func:`start_gateway`), stopped when the ``with`` ends."""
    config = home / "gateway.toml"
    write_config(source, config, home / "data")
    with config.open("a") as extra:
        extra.write("\n" + extra_toml)
    tokens = add_users(config)
    log_path = home / "gateway.log"
    process, url = start_gateway(config, log_path, wrapper)
    try:
        yield Gateway(url, config, tokens, process, log_path)
    finally:
        stop_gateway(process)


def stop_gateway(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session", params=["local", "ssh"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every test that uses the gateway runs once per transport."""
    return str(request.param)


@pytest.fixture(scope="session")
def gateway(dev_config: Path, transport: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp(f"gateway-{transport}")
    config = home / "gateway.toml"
    write_config(dev_source(dev_config, transport), config, home / "data")
    with config.open("a") as limits:  # the suite submits far more than a person would
        limits.write(SUITE_LIMITS)
    tokens = add_users(config)
    log_path = home / "gateway.log"
    process, url = start_gateway(config, log_path)
    yield Gateway(url, config, tokens, process, log_path)
    stop_gateway(process)
    artifacts = os.environ.get("HPCGW_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / f"gateway-{transport}.log").write_text(log_path.read_text())


def make_notebook(*sources: str, parameters: str = "alpha = 0.1") -> bytes:
    """A notebook whose first cell is the `parameters`-tagged one."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    first = nbformat.v4.new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    notebook.cells = [first, *(nbformat.v4.new_code_cell(s) for s in sources)]
    return nbformat.writes(notebook).encode()


class Api:
    """Async HTTP helper for one gateway user (raw status codes, no raising)."""

    def __init__(self, gateway: Gateway, user: str) -> None:
        self.base = gateway.url
        self.headers = {"Authorization": f"Bearer {gateway.tokens[user]}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                method, self.base + path, headers={**self.headers, **kwargs.pop("headers", {})},
                **kwargs) as reply:
            body = await reply.read()
            if reply.content_type in ("application/json", "application/problem+json"):
                return reply.status, json.loads(body)
            return reply.status, body

    async def submit(self, notebook: bytes, spec: dict[str, Any],
                     headers: dict[str, str] | None = None) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("spec", json.dumps(spec), content_type="application/json")
        form.add_field("notebook", notebook, filename="nb.ipynb",
                       content_type="application/x-ipynb+json")
        return await self.call("POST", "/api/v1/jobs", data=form, headers=headers or {})

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/v1/jobs/{job_id}")
        assert status == 200, body
        return dict(body)

    async def wait_for(self, job_id: str, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 60, what: str = "condition") -> dict[str, Any]:
        """Poll the job until ``predicate(job)``; fail with the last job seen at the deadline."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = await self.job(job_id)
            if predicate(job):
                return job
            await asyncio.sleep(0.25)
        raise AssertionError(f"job {job_id}: no {what} within {timeout}s; last seen {job}")

    async def wait_terminal(self, job_id: str, timeout: float = 90) -> dict[str, Any]:
        return await self.wait_for(job_id, lambda j: j["state"] in TERMINAL, timeout, "end")


@pytest.fixture
def alice(gateway: Gateway) -> Api:
    return Api(gateway, "alice")


@pytest.fixture
def bob(gateway: Gateway) -> Api:
    return Api(gateway, "bob")


def slurm_jobs_tagged(tag: str) -> list[str]:
    """Slurm job ids (any state squeue still shows) whose comment carries this gateway tag."""
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%k"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("|", 1)[0] for line in out.splitlines()
            if line.split("|", 1)[1] == f"hpcgw:{tag}"]


def squeue_state(slurm_job_id: str) -> str:
    """The job's state in Slurm right now ('' if squeue no longer lists it)."""
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-j", slurm_job_id, "-o", "%T"],
                         capture_output=True, text=True).stdout
    return out.strip()


def cancel_quietly(gateway: Gateway, job_ids: list[str]) -> None:
    """Teardown: cancel labs a test left running (a lab holds a node's resources)."""
    async def cancel() -> None:
        api = Api(gateway, "alice")
        for job_id in job_ids:
            await api.call("POST", f"/api/v1/jobs/{job_id}/cancel")
    asyncio.run(cancel())


@pytest.fixture
def labs(gateway: Gateway) -> Iterator[list[str]]:
    """Ids of labs a test starts (it appends them); cancelled when the test ends."""
    started: list[str] = []
    yield started
    cancel_quietly(gateway, started)
