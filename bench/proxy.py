"""Lab proxy: hpcgw's relay side by side with direct access, nginx and configurable-http-proxy.

Targets (issue 14, stretch in brackets): 1 KiB GETs, keep-alive, 50 connections: >= 2x CHP's
req/s (4x) and >= 15% of nginx's (30%); gateway CPU per 1 KiB request <= 0.5x CHP's (0.25x);
10 MiB download >= 1.0x nginx and >= 70% of direct (85%); WebSocket 32 B added latency <= 1.5x
nginx's (1.0x); 200 lab WebSockets at 1,000 msg/s in all: no error, p99 reported; RSS flat with
5 slow 10 MiB downloads (< 10 MiB growth); a lab reachable through the gateway <= 0.5 s
(0.25 s) after its server answers directly.

Everything runs on 127.0.0.1; ports are picked by binding port 0 first; every process is started
here and stopped by its pid at the end.

- Upstream of lab A (HTTP): nginx (1 worker, sendfile, no access log) serving static files
  ``/labs/<A>/1k`` (1 KiB), ``/labs/<A>/10m`` (10 MiB) and ``/labs/<A>/api/kernels``.
- Upstream of lab B (WebSocket): an aiohttp echo server (this file, ``--ws-echo PORT``).
- (1) direct: the two upstreams themselves.
- (2) nginx as reverse proxy: 1 worker (the gateway and CHP use one core each), HTTP/1.1 and
  keep-alive to the upstreams, ``proxy_buffering off`` (streaming like the others, and as
  JupyterHub's nginx example sets it; ``--nginx-buffering`` for nginx's default, on), the usual
  Upgrade/Connection map for WebSockets, access log to a file.
- (3) configurable-http-proxy (JupyterHub's proxy), from ``$HPCGW_CHP_DIR`` (default
  /var/tmp/hpcgw-bench/chp: ``npm install configurable-http-proxy`` there); default target lab
  A's upstream, a route for lab B added through its REST API, as JupyterHub does.
- (4) hpcgw: a real ``hpcgw serve`` process (config copy of the dev cluster's, temp data_dir,
  access log on as in production) with one user and two ``ready`` lab rows pointing at the
  upstreams; each row is backed by a real ``sleep`` Slurm job as alice, so the poller keeps it
  (scancelled at the end). Requests carry ``Authorization: Bearer <token>`` to every target.

Measurements (every target sanity-checked first: bodies and an echo compared byte for byte):

- 1 KiB GET: ``wrk -t1 -c50`` (keep-alive) for ``--seconds``, ``--rounds`` rounds with the
  target order rotated; median req/s, latency, and the proxy's own CPU per request (utime +
  stime of its processes from /proc, so a 2-core machine shared with wrk still compares fairly).
- 10 MiB download: ``wrk -t1 -c1`` (one connection, downloads back to back), ``--big-rounds``
  rounds of ``--big-seconds``; median MiB/s, and each proxy's MiB/s over direct's in the same
  round (the row against the targets is the median of those). Two more targets run here
  only, in front of lab A's upstream: bench/tcp_relay.py, a bare asyncio TCP relay (the floor
  for a CPython proxy on this machine), and bench/splice_relay.c, a TCP relay in C moving bytes
  with splice(2), built here with ``cc`` (the floor for any relay: the cost of one more process
  and loopback hop between the lab and the client).
- WebSocket: an aiohttp client in this process sends 32 bytes and waits for the echo,
  ``--ws-rtts`` round trips per target over the rounds; median round trip, and the latency added
  over direct.
- Memory: 5 concurrent 10 MiB downloads by clients reading 64 KiB per tick (small receive
  buffers) for about ``--slow-seconds``; the proxy's RSS idle just before, and its peak.
- Many WebSockets (bench/proxy_load.py): 200 at once per target, 1,000 messages/s in all for
  ``--load-seconds``; round-trip p50/p99 and errors.
- Lab ready (bench/proxy_load.py, hpcgw only): ``--ready-rounds`` lab rows left ``running``
  until a stand-in server is started for each and then its ``lab.json`` written; the time
  from then until the gateway proxies ``api/status`` (the server itself answers at once).

Run: .venv/bin/python bench/proxy.py [--seconds 5] [--rounds 2] [--big-rounds 6]
     [--big-seconds 3] [--ws-rtts 2000] [--slow-seconds 6]
Needs: ``apt-get install nginx-light wrk gcc``, CHP as above, the dev cluster
(scripts/dev-cluster up).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _common import REPO, dev_config_text, table
from aiohttp import web
from proxy_load import LoadResult, lab_ready_after_direct, many_websockets, write_lab_json

MIB = 1 << 20
KIB_BODY = bytes(range(256)) * 4  # 1 KiB
BIG_BODY = os.urandom(10 * MIB)  # incompressible
HPCGW = str(REPO / ".venv" / "bin" / "hpcgw")
BENCH_DIR = Path("/var/tmp/hpcgw-bench")  # noqa: S108 - our own directory, made 0755 below
CHP_DIR = Path(os.environ.get("HPCGW_CHP_DIR", str(BENCH_DIR / "chp")))
CHP = CHP_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
UNIX_USER = "alice"
TARGETS = ("direct", "nginx", "chp", "hpcgw")
PROXIES = TARGETS[1:]
# The 10 MiB series also runs bench/tcp_relay.py, a bare asyncio relay (what CPython can do at
# all), and bench/splice_relay.c, a splice relay in C (what any relay can do on this machine).
BIG_TARGETS = (*TARGETS, "relay", "floor")
SLOW_CLIENTS = 5
LOAD_SOCKETS = 200
LOAD_RATE = 1000  # messages per second, over all the sockets
SLOW_READ = 64 * 1024
RSS_FLAT_MIB = 10.0  # "flat": 5 slow 10 MiB downloads grow the proxy by less than one body


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode} before listening")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout} s")


@dataclass
class Processes:
    """Every process this run started; :meth:`stop_all` stops each by its pid."""

    started: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(list(argv), **kwargs)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.started):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (nginx: master and workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def cpu_seconds(pids: Sequence[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_mib(pids: Sequence[int]) -> float:
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


# -- the upstreams and the proxies ----------------------------------------------------------------


NGINX_COMMON = """worker_processes 1;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  client_body_temp_path {work}/{name}-tmp/body;
  proxy_temp_path {work}/{name}-tmp/proxy;
  fastcgi_temp_path {work}/{name}-tmp/fastcgi;
  uwsgi_temp_path {work}/{name}-tmp/uwsgi;
  scgi_temp_path {work}/{name}-tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
{body}
}}
"""

# Lab A's identity proof (one request per new connection from the gateway) goes to the echo
# process, which holds the labs' tokens, with the address nginx accepted the connection on.
NGINX_STATIC = """  access_log off;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location /labs/{lab}/api/ {{ default_type application/json; }}
    location = /labs/{lab}/hpcgw/proof {{
      proxy_pass http://127.0.0.1:{echo};
      proxy_set_header X-Accepted-On $server_addr:$server_port;
    }}
  }}"""

NGINX_PROXY = """  access_log {work}/nginx-proxy-access.log;
  upstream static {{ server 127.0.0.1:{static}; keepalive 64; keepalive_requests 1000000; }}
  upstream echo {{ server 127.0.0.1:{echo}; keepalive 16; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_buffering {buffering};
    proxy_request_buffering off;
    proxy_read_timeout 3600s;
    proxy_set_header Host $host;
    location /labs/{http_lab}/ {{ proxy_pass http://static; proxy_set_header Connection ""; }}
    location /labs/{ws_lab}/ {{
      proxy_pass http://echo;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }}
  }}"""


def start_nginx(procs: Processes, work: Path, name: str, body: str, port: int
                ) -> subprocess.Popen[Any]:
    (work / f"{name}-tmp").mkdir()
    conf = work / f"{name}.conf"
    conf.write_text(NGINX_COMMON.format(work=work, name=name, body=body))
    process = procs.start(["nginx", "-e", str(work / f"{name}-error.log"), "-p", str(work),
                           "-c", str(conf), "-g", "daemon off;"])
    wait_port(port, process, f"nginx ({name})")
    return process


def write_static_root(root: Path, http_lab: str) -> None:
    lab = root / "labs" / http_lab
    (lab / "api").mkdir(parents=True)
    (lab / "1k").write_bytes(KIB_BODY)
    (lab / "10m").write_bytes(BIG_BODY)
    (lab / "api" / "kernels").write_text("[]")
    (lab / "api" / "status").write_text("{}")


def ws_echo_app() -> web.Application:
    """Lab B's stand-in: a WebSocket echo under any ``/labs/<id>/ws``, ``[]`` for the
    gateway's ``api/...`` probes, and the identity proof a real lab's launcher gives (for lab A
    too, through its nginx: ``X-Accepted-On`` is then the address nginx accepted on)."""
    from gateway.tokens import lab_proof, lab_token

    secret = tomllib.loads(dev_config_text())["gateway"]["cookie_secret"]

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            elif message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    async def api(request: web.Request) -> web.Response:
        return web.json_response([])

    async def proof(request: web.Request) -> web.Response:
        assert request.transport is not None
        host, port = request.transport.get_extra_info("sockname")[:2]
        address = request.headers.get("X-Accepted-On", f"{host}:{port}")
        token = lab_token(secret, request.match_info["lab"])
        return web.json_response(
            {"address": address, "proof": lab_proof(token, request.query["nonce"], address)})

    app = web.Application()
    app.router.add_get("/labs/{lab}/hpcgw/proof", proof)
    app.router.add_get("/labs/{lab}/ws", echo)
    app.router.add_get("/labs/{lab}/api/{tail:.*}", api)
    return app


def start_chp(procs: Processes, work: Path, port: int, static: int, echo: int, ws_lab: str
              ) -> subprocess.Popen[Any]:
    if not CHP.exists():
        raise SystemExit(f"no configurable-http-proxy at {CHP}: `npm install "
                         f"configurable-http-proxy` in {CHP_DIR} (or set HPCGW_CHP_DIR)")
    api_port, api_token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": api_token}
    process = procs.start(
        ["node", str(CHP), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
         "--api-port", str(api_port), "--default-target", f"http://127.0.0.1:{static}",
         "--log-level", "warn"],
        env=env, stdout=(work / "chp.log").open("wb"), stderr=subprocess.STDOUT)
    wait_port(api_port, process, "configurable-http-proxy")
    wait_port(port, process, "configurable-http-proxy")
    done = subprocess.run(
        ["curl", "-sf", "-X", "POST", "-H", f"Authorization: token {api_token}",
         "-d", json.dumps({"target": f"http://127.0.0.1:{echo}"}),
         f"http://127.0.0.1:{api_port}/api/routes/labs/{ws_lab}"], check=False)
    if done.returncode != 0:
        raise SystemExit("could not add the WebSocket route to configurable-http-proxy")
    return process


# -- the gateway ----------------------------------------------------------------------------------


def gateway_config(work: Path) -> Path:
    """The dev cluster's gateway config with a temp data_dir and labs reached on 127.0.0.1."""
    text = re.sub(r'(?m)^data_dir = ".*"$', f'data_dir = "{work / "gateway-data"}"',
                  dev_config_text())
    text = re.sub(r'(?m)^lab_host = ".*"$', 'lab_host = "127.0.0.1"', text)
    if tomllib.loads(text)["clusters"][0].get("lab_host") != "127.0.0.1":
        raise SystemExit("the dev config's first cluster sets no lab_host line to replace")
    path = work / "gateway.toml"
    path.write_text(text)
    return path


def sbatch_sleep(job_id: str) -> str:
    """A real Slurm job (1 CPU, 16 MB, sleeping) as alice to stand behind a lab row."""
    done = subprocess.run(
        ["sudo", "-n", "-u", UNIX_USER, "--", "sbatch", "--parsable", "-o", "/dev/null",
         "-J", "hpcgw-bench-proxy", "-c", "1", "--mem=16M", "-t", "00:30:00",
         f"--comment=hpcgw:{job_id}", "--wrap", "sleep 1800"],
        capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


def add_ready_labs(config_path: Path, labs: dict[str, int], slurm_ids: list[str],
                   starting: Sequence[str] = ()) -> str:
    """A user with a token (returned), one ``ready`` lab row per ``{job id: port}``, and one
    ``running`` lab row (its server not reported yet) per id in ``starting``."""
    from gateway.config import parse_config
    from gateway.states import State
    from gateway.store import Store
    from gateway.timestamps import utcnow

    config = parse_config(tomllib.loads(config_path.read_text()))
    store = Store(config.gateway.data_dir / "hpcgw.db")
    try:
        user = store.users.add_user("bench", UNIX_USER)
        token = store.users.issue_token(user)
        for job_id in [*labs, *starting]:
            slurm_ids.append(sbatch_sleep(job_id))
            store.insert_job({
                "id": job_id, "user_id": user.id, "unix_user": UNIX_USER, "kind": "lab",
                "name": "bench", "cluster": config.clusters[0].name, "spec": "{}",
                "workdir": lab_workdir(job_id)})
            store.transition(job_id, State.STAGING)
            store.transition(job_id, State.PENDING, slurm_job_id=slurm_ids[-1])
            store.transition(job_id, State.RUNNING, node="vm")
            if job_id in labs:
                store.transition(job_id, State.READY, lab_port=labs[job_id],
                                 last_activity=utcnow())
        return token
    finally:
        store.close()


def lab_workdir(job_id: str) -> str:
    return f"/home/{UNIX_USER}/.hpcgw/jobs/{job_id}"


def start_gateway(procs: Processes, work: Path, config: Path) -> tuple[subprocess.Popen[Any], int]:
    process = procs.start([HPCGW, "--config", str(config), "serve", "--port", "0"],
                          stdout=subprocess.PIPE, text=True,
                          stderr=(work / "hpcgw.log").open("wb"))
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
    if match is None:
        raise SystemExit(f"hpcgw serve did not start: {line!r}; see {work / 'hpcgw.log'}")
    return process, int(match[1])


# -- the setup as a whole -------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    http_port: int  # where lab A's paths answer
    ws_port: int  # where lab B's paths answer
    pids: Callable[[], list[int]]  # the proxy's processes (none for direct)


@dataclass
class Setup:
    http_lab: str
    ws_lab: str
    token: str
    targets: dict[str, Target]
    starting_labs: list[str]
    procs: Processes

    def url(self, target: str, tail: str, scheme: str = "http") -> str:
        t = self.targets[target]
        lab, port = (self.ws_lab, t.ws_port) if tail == "ws" else (self.http_lab, t.http_port)
        return f"{scheme}://127.0.0.1:{port}/labs/{lab}/{tail}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_all(procs: Processes, work: Path, slurm_ids: list[str], nginx_buffering: bool = False,
              ready_rounds: int = 3) -> Setup:
    http_lab, ws_lab = secrets.token_hex(8), secrets.token_hex(8)
    starting = [secrets.token_hex(8) for _ in range(ready_rounds)]
    write_static_root(work / "static", http_lab)
    static, echo, nginx, chp = (free_port() for _ in range(4))
    start_nginx(procs, work, "upstream", NGINX_STATIC.format(
        port=static, root=work / "static", lab=http_lab, echo=echo), static)
    echo_process = procs.start([sys.executable, __file__, "--ws-echo", str(echo)])
    wait_port(echo, echo_process, "WebSocket echo")
    nginx_process = start_nginx(procs, work, "proxy", NGINX_PROXY.format(
        work=work, port=nginx, static=static, echo=echo, http_lab=http_lab, ws_lab=ws_lab,
        buffering="on" if nginx_buffering else "off"), nginx)
    chp_process = start_chp(procs, work, chp, static, echo, ws_lab)
    relay = free_port()
    relay_process = procs.start([sys.executable, str(REPO / "bench" / "tcp_relay.py"),
                                 str(relay), str(static)])
    wait_port(relay, relay_process, "the bare asyncio relay")
    floor = free_port()
    floor_binary = work / "splice_relay"
    subprocess.run(["cc", "-O2", "-o", str(floor_binary), str(REPO / "bench" / "splice_relay.c")],
                   check=True)
    floor_process = procs.start([str(floor_binary), str(floor), str(static)])
    wait_port(floor, floor_process, "the C splice relay")
    config = gateway_config(work)
    token = add_ready_labs(config, {http_lab: static, ws_lab: echo}, slurm_ids, starting)
    gateway, gateway_port = start_gateway(procs, work, config)
    targets = {
        "direct": Target("direct", static, echo, list),
        "nginx": Target("nginx", nginx, nginx, lambda: process_tree(nginx_process.pid)),
        "chp": Target("chp", chp, chp, lambda: [chp_process.pid]),
        "hpcgw": Target("hpcgw", gateway_port, gateway_port, lambda: [gateway.pid]),
        "relay": Target("relay", relay, relay, lambda: [relay_process.pid]),  # lab A only
        # (its work is done in a child per connection, gone before its CPU could be read)
        "floor": Target("floor", floor, floor, list),
    }
    return Setup(http_lab, ws_lab, token, targets, starting, procs)


async def sanity_check(setup: Setup, target: str) -> None:
    """Every target relays the right bytes (and echoes) before anything is timed; the bare
    relays only lab A's."""
    async with aiohttp.ClientSession(headers=setup.auth) as session:
        for tail, expected in (("1k", KIB_BODY), ("10m", BIG_BODY)):
            async with session.get(setup.url(target, tail)) as response:
                body = await response.read()
                if response.status != 200 or body != expected:
                    raise SystemExit(f"{target}: GET {tail} gave {response.status}, "
                                     f"{len(body)} bytes, not the file")
        if target in ("relay", "floor"):
            return
        async with session.ws_connect(setup.url(target, "ws")) as ws:
            await ws.send_bytes(b"x" * 32)
            if (await ws.receive(10)).data != b"x" * 32:
                raise SystemExit(f"{target}: the WebSocket did not echo")


# -- measurements ---------------------------------------------------------------------------------


@dataclass
class WrkRun:
    requests: int
    seconds: float
    rps: float
    mib_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float | None


UNITS = {"B": 1 / MIB, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    return float(match[1]) * TIME_UNITS[match[2]] if match else float("nan")


def run_wrk(setup: Setup, target: str, tail: str, connections: int, seconds: int) -> WrkRun:
    """One wrk run (1 thread) against ``target``; the proxy's CPU is read around it."""
    pids = setup.targets[target].pids()
    cpu0 = cpu_seconds(pids)
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Authorization: Bearer {setup.token}", setup.url(target, tail)],
        capture_output=True, text=True, check=True)
    cpu = cpu_seconds(pids) - cpu0
    out = done.stdout
    count = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if count is None or transfer is None or rps is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                        r"timeout (\d+)", out)
    errors = (int(non_2xx[1]) if non_2xx else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0)
    requests = int(count[1])
    return WrkRun(
        requests, seconds, float(rps[1]), float(transfer[1]) * UNITS[transfer[2]],
        _wrk_ms(out, "50"), _wrk_ms(out, "99"), errors,
        cpu * 1e6 / requests if pids and requests else None)


def rotated(rounds: int, targets: Sequence[str] = TARGETS) -> Iterator[tuple[int, str]]:
    """(round, target) with the target order rotated each round, so drift hits all alike."""
    for number in range(rounds):
        for index in range(len(targets)):
            yield number, targets[(index + number) % len(targets)]


def wrk_series(setup: Setup, tail: str, connections: int, seconds: int, rounds: int,
               targets: Sequence[str] = TARGETS) -> dict[str, list[WrkRun]]:
    runs: dict[str, list[WrkRun]] = {target: [] for target in targets}
    for target in targets:  # warm-up: connections, caches, the gateway's first requests
        run_wrk(setup, target, tail, connections, 1)
    for _, target in rotated(rounds, targets):
        run = run_wrk(setup, target, tail, connections, seconds)
        if run.errors:
            raise SystemExit(f"{target}: {run.errors} failed requests on {tail}")
        runs[target].append(run)
    return runs


def median_of(runs: Sequence[WrkRun], attribute: str) -> float:
    values = [getattr(run, attribute) for run in runs if getattr(run, attribute) is not None]
    return statistics.median(values) if values else float("nan")


def round_ratios(runs: dict[str, list[WrkRun]], target: str, reference: str) -> list[float]:
    """``target``'s MiB/s over ``reference``'s, round by round: the two ran minutes apart at
    most, so the machine's drift over a run (direct alone moves by 20%) cancels out."""
    return [run.mib_s / ref.mib_s for run, ref in zip(runs[target], runs[reference], strict=True)]


async def ws_round_trips(setup: Setup, target: str, count: int) -> list[float]:
    """``count`` round trips of 32 bytes on one connection (after 100 unmeasured), in µs."""
    payload, samples = b"r" * 32, []
    async with aiohttp.ClientSession(headers=setup.auth) as session, \
            session.ws_connect(setup.url(target, "ws")) as ws:
        for number in range(count + 100):
            started = time.perf_counter()
            await ws.send_bytes(payload)
            answer = await ws.receive()
            elapsed = time.perf_counter() - started
            if answer.data != payload:
                raise SystemExit(f"{target}: bad echo {answer!r}")
            if number >= 100:
                samples.append(elapsed * 1e6)
    return samples


async def ws_series(setup: Setup, total: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {target: [] for target in TARGETS}
    for _, target in rotated(rounds):
        samples[target] += await ws_round_trips(setup, target, max(1, total // rounds))
    return samples


async def slow_download(port: int, path: str, token: str, seconds: float) -> int:
    """One 10 MiB download read 64 KiB per tick (so it lasts about ``seconds``) through a
    small receive buffer; the bytes received (headers included)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READ)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=SLOW_READ)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 f"Connection: close\r\n\r\n".encode())
    tick = seconds * SLOW_READ / len(BIG_BODY)
    received = 0
    while chunk := await reader.read(SLOW_READ):
        received += len(chunk)
        await asyncio.sleep(tick)
    writer.close()
    return received


async def slow_memory(setup: Setup, target: str, seconds: float) -> dict[str, float]:
    """RSS of ``target``'s processes idle, and at its peak while SLOW_CLIENTS slow clients
    download the 10 MiB file at once."""
    pids = setup.targets[target].pids()
    idle = rss_mib(pids)
    path = f"/labs/{setup.http_lab}/10m"
    downloads = asyncio.gather(*(
        slow_download(setup.targets[target].http_port, path, setup.token, seconds)
        for _ in range(SLOW_CLIENTS)))
    peak = idle
    started = time.perf_counter()
    while not downloads.done():
        peak = max(peak, rss_mib(pids))
        await asyncio.sleep(0.1)
    received = await downloads
    if min(received) < len(BIG_BODY):
        raise SystemExit(f"{target}: a slow download got only {min(received)} bytes")
    return {"idle": idle, "peak": peak, "growth": peak - idle,
            "seconds": time.perf_counter() - started}


async def load_series(setup: Setup, seconds: float) -> dict[str, LoadResult]:
    return {target: await many_websockets(setup.url(target, "ws"), setup.auth, LOAD_SOCKETS,
                                          LOAD_RATE, seconds) for target in TARGETS}


async def ready_series(setup: Setup) -> list[tuple[float, float]]:
    """For each starting lab row: its stand-in server started, then ``lab.json`` written;
    (seconds until it answers directly, until it answers through hpcgw)."""
    gateway_port, found = setup.targets["hpcgw"].http_port, []
    for job_id in setup.starting_labs:
        port = free_port()

        def start(port: int = port) -> None:
            process = setup.procs.start([sys.executable, __file__, "--ws-echo", str(port)])
            wait_port(port, process, "a starting lab's stand-in")

        def publish(job_id: str = job_id, port: int = port) -> None:
            write_lab_json(UNIX_USER, lab_workdir(job_id), port)

        found.append(await lab_ready_after_direct(
            start, publish, f"http://127.0.0.1:{port}/labs/{job_id}/api/status",
            f"http://127.0.0.1:{gateway_port}/labs/{job_id}/api/status", setup.auth))
    return found


# -- report ---------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "yes" if ok else "MISSED"


def report_wrk(title: str, runs: dict[str, list[WrkRun]], throughput: bool) -> None:
    print(f"\n{title}")
    rows = []
    for target, series in runs.items():
        value = (f"{median_of(series, 'mib_s'):,.0f}" if throughput
                 else f"{median_of(series, 'rps'):,.0f}")
        cpu = median_of(series, "cpu_us_per_request")
        rows.append([target, value, f"{median_of(series, 'p50_ms'):.2f}",
                     f"{median_of(series, 'p99_ms'):.2f}",
                     "-" if cpu != cpu else (f"{cpu / 1000:.2f} ms" if throughput
                                            else f"{cpu:.0f} µs"),
                     " ".join(f"{getattr(r, 'mib_s' if throughput else 'rps'):,.0f}"
                              for r in series)])
    print(table(["target", "MiB/s" if throughput else "req/s", "p50 ms", "p99 ms",
                 "proxy CPU/request", "each round"], rows))


def report_big_rounds(big: dict[str, list[WrkRun]]) -> None:
    print("\n10 MiB, round by round (MiB/s over direct's in the same round)")
    rows = [[t, " ".join(f"{r:.0%}" for r in ratios), f"{statistics.median(ratios):.0%}"]
            for t in BIG_TARGETS[1:] if (ratios := round_ratios(big, t, "direct"))]
    print(table(["target", "each round", "median"], rows))


def report_ws(samples: dict[str, list[float]]) -> dict[str, float]:
    medians = {t: statistics.median(s) for t, s in samples.items()}
    print(f"\nWebSocket 32 B round trip (aiohttp client, {len(samples['direct'])} per target)")
    rows = [[t, f"{medians[t]:.0f}",
             f"{sorted(s)[int(len(s) * 0.99) - 1]:.0f}",
             "-" if t == "direct" else f"{medians[t] - medians['direct']:+.0f}"]
            for t, s in samples.items()]
    print(table(["target", "median µs", "p99 µs", "added µs (median)"], rows))
    return medians


def report_memory(memory: dict[str, dict[str, float]]) -> None:
    print(f"\nRSS with {SLOW_CLIENTS} slow concurrent 10 MiB downloads (64 KiB reads)")
    rows = [[t, f"{m['idle']:.1f}", f"{m['peak']:.1f}", f"{m['growth']:+.1f}",
             f"{m['seconds']:.1f}"] for t, m in memory.items()]
    print(table(["proxy", "idle MiB", "peak MiB", "growth MiB", "download s"], rows))


def report_load(load: dict[str, LoadResult], seconds: float) -> None:
    print(f"\n{LOAD_SOCKETS} WebSockets at once, {LOAD_RATE} msg/s in all (32 B), {seconds:g} s")
    rows = [[t, f"{r.sent:,}", f"{r.received:,}", str(r.errors), f"{r.median:.0f}",
             f"{r.percentile(0.99):.0f}",
             "-" if t == "direct" else
             f"{r.percentile(0.99) - load['direct'].percentile(0.99):+.0f}"]
            for t, r in load.items()]
    print(table(["target", "sent", "echoed", "errors", "p50 µs", "p99 µs", "added p99 µs"],
                rows))


def report_ready(ready: list[tuple[float, float]]) -> None:
    print("\nA starting lab: from lab.json written (its server already listening) until ...")
    rows = [[str(n + 1), f"{direct * 1000:.0f} ms", f"{proxied * 1000:.0f} ms"]
            for n, (direct, proxied) in enumerate(ready)]
    print(table(["round", "it answers directly", "hpcgw proxies it"], rows))


def met(ok: bool, stretch: bool) -> str:
    return ("yes (stretch too)" if stretch else "yes") if ok else "MISSED"


def report_ratios(small: dict[str, list[WrkRun]], big: dict[str, list[WrkRun]],
                  ws: dict[str, float], memory: dict[str, dict[str, float]],
                  load: dict[str, LoadResult], ready: list[tuple[float, float]]) -> None:
    rps = {t: median_of(small[t], "rps") for t in TARGETS}
    of_direct = statistics.median(round_ratios(big, "hpcgw", "direct"))
    to_nginx_big = statistics.median(round_ratios(big, "hpcgw", "nginx"))
    of_relay = statistics.median(round_ratios(big, "hpcgw", "relay"))
    floor = statistics.median(round_ratios(big, "floor", "direct"))
    cpu = {t: median_of(small[t], "cpu_us_per_request") for t in PROXIES}
    added = {t: ws[t] - ws["direct"] for t in PROXIES}
    growth = memory.get("hpcgw", {}).get("growth", float("nan"))
    to_chp, to_nginx = rps["hpcgw"] / rps["chp"], rps["hpcgw"] / rps["nginx"]
    cpu_share = cpu["hpcgw"] / cpu["chp"]
    ws_ratio = added["hpcgw"] / added["nginx"]
    ready_s = statistics.median(p for _, p in ready) if ready else float("nan")
    hpcgw_load = load["hpcgw"]
    load_p99 = hpcgw_load.percentile(0.99) - load["direct"].percentile(0.99)
    rows = [
        ["1 KiB req/s, hpcgw / CHP", f"{to_chp:.2f}x", ">= 2x (4x)",
         met(to_chp >= 2, to_chp >= 4)],
        ["1 KiB req/s, hpcgw / nginx", f"{to_nginx:.0%}", ">= 15% (30%)",
         met(to_nginx >= 0.15, to_nginx >= 0.30)],
        ["1 KiB gateway CPU/request, hpcgw / CHP", f"{cpu_share:.2f}x", "<= 0.5x (0.25x)",
         met(cpu_share <= 0.5, cpu_share <= 0.25)],
        ["10 MiB MiB/s, hpcgw / nginx", f"{to_nginx_big:.2f}x", ">= 1.0x",
         met(to_nginx_big >= 1, False)],
        ["10 MiB MiB/s, hpcgw / direct", f"{of_direct:.0%}", ">= 70% (85%)",
         met(of_direct >= 0.70, of_direct >= 0.85)],
        ["10 MiB MiB/s, hpcgw / bare asyncio relay", f"{of_relay:.0%}", "-", "(reference)"],
        ["10 MiB MiB/s, C splice relay / direct", f"{floor:.0%}", "-",
         "(any relay's floor)"],
        ["WS 32 B added latency, hpcgw / nginx", f"{ws_ratio:.2f}x", "<= 1.5x (1.0x)",
         met(ws_ratio <= 1.5, ws_ratio <= 1.0)],
        [f"{LOAD_SOCKETS} WS, {LOAD_RATE} msg/s: errors, added p99",
         f"{hpcgw_load.errors}, {load_p99:+.0f} µs",
         "no error", met(hpcgw_load.errors == 0 and hpcgw_load.received > 0, False)],
        [f"hpcgw RSS growth, {SLOW_CLIENTS} slow 10 MiB downloads", f"{growth:+.1f} MiB",
         f"flat (< {RSS_FLAT_MIB:.0f} MiB)", met(growth < RSS_FLAT_MIB, False)],
        ["lab ready through hpcgw after it answers", f"{ready_s:.2f} s", "<= 0.5 s (0.25 s)",
         met(ready_s <= 0.5, ready_s <= 0.25)],
    ]
    print("\nAgainst issue 14's targets")
    print(table(["metric", "measured", "target (stretch)", "met"], rows))


# -- main -----------------------------------------------------------------------------------------


def check_tools() -> None:
    for tool in ("nginx", "wrk", "node", "curl", "sbatch", "cc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (see this script's docstring)")


async def measure(setup: Setup, args: argparse.Namespace) -> None:
    ready = await ready_series(setup)  # first: the starting labs keep the watcher busy
    report_ready(ready)
    for target in TARGETS:
        await sanity_check(setup, target)
    small = wrk_series(setup, "1k", 50, args.seconds, args.rounds)
    report_wrk(f"1 KiB GET, wrk -t1 -c50 keep-alive, {args.rounds} x {args.seconds} s "
               "(median)", small, throughput=False)
    await sanity_check(setup, "relay")
    await sanity_check(setup, "floor")
    big = wrk_series(setup, "10m", 1, args.big_seconds, args.big_rounds, BIG_TARGETS)
    report_wrk(f"10 MiB download, wrk -t1 -c1, {args.big_rounds} x {args.big_seconds} s "
               "(median)", big, throughput=True)
    report_big_rounds(big)
    ws = report_ws(await ws_series(setup, args.ws_rtts, args.rounds))
    await asyncio.sleep(1)  # let the last connections go before "idle" is read
    memory = {t: await slow_memory(setup, t, args.slow_seconds) for t in PROXIES}
    report_memory(memory)
    load = await load_series(setup, args.load_seconds)
    report_load(load, args.load_seconds)
    report_ratios(small, big, ws, memory, load, ready)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--big-seconds", type=int, default=3)
    parser.add_argument("--big-rounds", type=int, default=6,
                        help="the 10 MiB series: more, shorter rounds than the others, since "
                             "its ratios are read round by round")
    parser.add_argument("--ws-rtts", type=int, default=2000)
    parser.add_argument("--slow-seconds", type=float, default=6.0)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--ready-rounds", type=int, default=3)
    parser.add_argument("--nginx-buffering", action="store_true",
                        help="nginx with proxy_buffering on (its default) instead of off")
    parser.add_argument("--ws-echo", type=int, help=argparse.SUPPRESS)  # internal: lab B
    args = parser.parse_args()
    if args.ws_echo:
        web.run_app(ws_echo_app(), host="127.0.0.1", port=args.ws_echo, print=None,
                    access_log=None)
        return
    check_tools()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
          f"sha256 of the 10 MiB body {hashlib.sha256(BIG_BODY).hexdigest()[:12]}")
    procs, slurm_ids = Processes(), list[str]()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="proxy-", dir=BENCH_DIR))
    work.chmod(0o755)  # nginx workers (nobody) read the static files
    try:
        setup = start_all(procs, work, slurm_ids, args.nginx_buffering, args.ready_rounds)
        asyncio.run(measure(setup, args))
    finally:
        procs.stop_all()
        if slurm_ids:
            subprocess.run(["sudo", "-n", "-u", UNIX_USER, "--", "scancel", *slurm_ids],
                           check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
