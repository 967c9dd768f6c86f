"""The composition root: builds the store, the accounts, the job service and the lab proxy, and
puts them with the API's routes into one aiohttp application.

This is the only module that wires the parts together; data flows inward from here
(API and proxy → job service → scheduler, transport, store) and nothing imports this module
but the CLI's ``serve`` and the tests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from .accounts import Accounts
from .api import sessions
from .api.app import add_routes, middlewares
from .api.jobs import upload_limit
from .api.keys import ACCOUNTS, CONFIG, METRICS, OIDC, PROXY, SERVICE, STORAGE
from .api.middleware import lab_caller, security_headers
from .api.requestlog import AccessLog, request_id_header
from .config import ClusterConfig, Config
from .errors import FieldError, GatewayError, ValidationFailed
from .jobs.clusters import ClusterLink, make_cluster_link
from .jobs.service import JobService
from .metrics import GatewayMetrics, ScrapeTimeCollector
from .proxy.front import FrontProtocol
from .proxy.labs import LabProxy
from .scheduler.metered import MeteredBackend
from .sso.client import OIDCClient
from .sso.settings import OIDCConfig
from .staging.credentials import StorageCredentials, scan_host_key
from .store import Store
from .users import User

log = logging.getLogger(__name__)
ClusterFactory = Callable[[ClusterConfig], ClusterLink]
# The store, for tests and admin tooling that run beside a server (handlers never see it).
STORE = web.AppKey("store", Store)


def server_options(config: Config) -> dict[str, Any]:
    """How ``hpcgw serve`` runs the app (``web.AppRunner`` keyword arguments).

    ``keepalive_timeout`` is aiohttp's timer for a connection with no complete request in
    progress: it starts when the connection opens and again after each response, and closes the
    connection if a request's headers have not all arrived by then. Set to
    ``gateway.header_timeout`` it closes slowloris connections (headers sent a byte at a time, or
    never); an idle keep-alive connection is closed after as long (clients reconnect). A request
    whose headers have arrived is not cut by it, however long it runs.
    """
    return {"access_log": logging.getLogger("hpcgw.access"), "access_log_class": AccessLog,
            "keepalive_timeout": config.gateway.header_timeout}


def connect_clusters(config: Config, factory: ClusterFactory) -> dict[str, ClusterLink]:
    """A link to every configured cluster; one that cannot be set up is disabled, with its
    error kept in ``config.cluster_errors`` (``/health`` reports it)."""
    links = {}
    for cluster in config.clusters:
        try:
            links[cluster.name] = factory(cluster)
        except GatewayError as exc:
            config.cluster_errors[cluster.name] = exc.detail
            log.error("cluster %s disabled: %s", cluster.name, exc.detail)
    return links


async def offered_host_key(links: dict[str, ClusterLink], user: User, host: str,
                           port: int) -> str:
    """The host key a storage server offers, asked by ``user`` on the first cluster (each
    cluster reaches the same storage servers: staging connects from there)."""
    first = next(iter(links.values()), None)
    if first is not None:
        return await scan_host_key(first.transport, user.unix_user, host, port)
    raise ValidationFailed([FieldError("host", "no cluster is reachable to ask for the "
                                               "storage server's host key")])


def make_app(config: Config, *,
             cluster_factory: ClusterFactory = make_cluster_link) -> web.Application:
    """The gateway application. ``cluster_factory`` lets tests put a fault-injecting cluster in."""
    app = web.Application(
        middlewares=middlewares(),
        client_max_size=upload_limit(config.gateway.max_notebook_bytes,
                                     config.gateway.max_side_files_bytes),
    )
    app[CONFIG] = config
    app[METRICS] = metrics = GatewayMetrics()
    app.on_response_prepare.append(security_headers)
    app.on_response_prepare.append(request_id_header)
    add_routes(app)

    async def parts(app: web.Application) -> AsyncIterator[None]:
        store = Store(config.gateway.data_dir / "hpcgw.db")
        links = connect_clusters(config, cluster_factory)
        credentials = StorageCredentials(store.storage, config.gateway.cookie_secret,
                                         config.staging, functools.partial(offered_host_key, links))
        for link in links.values():  # every scheduler call counted and timed
            link.backend = MeteredBackend(link.backend, metrics, link.name)
        service = JobService(config, store, links, credentials=credentials, metrics=metrics)
        accounts = Accounts(store)
        proxy = LabProxy(service, lab_caller(accounts, config.gateway.cookie_secret),
                         sessions.GATEWAY_COOKIES, config.gateway.public_origin,
                         metrics=metrics,
                         max_connections=config.limits.max_lab_connections,
                         body_timeout=config.gateway.body_timeout)
        metrics.watch(ScrapeTimeCollector(service.job_counts, service.reachability,
                                          accounts.counts))
        app[STORE], app[ACCOUNTS], app[SERVICE], app[PROXY] = store, accounts, service, proxy
        app[STORAGE] = credentials
        await service.start(lab_probe=proxy)
        yield
        await service.stop()
        await proxy.stop()
        store.close()

    app.cleanup_ctx.append(parts)
    if config.oidc is not None:
        app.cleanup_ctx.append(functools.partial(sso_client, settings=config.oidc))
    return app


async def sso_client(app: web.Application, settings: OIDCConfig) -> AsyncIterator[None]:
    """The single sign-on client and its HTTP session (no cookies kept, no proxy from the
    environment), for the application's life."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     trust_env=False) as session:
        app[OIDC] = OIDCClient(settings, session)
        yield


class FrontSite(web.SockSite):
    """The gateway's listening socket: each connection starts with the lab proxy's fast path
    (:class:`gateway.proxy.front.FrontProtocol`), which hands it to the runner's aiohttp server
    for anything but lab traffic. Stopping the site closes the connections it still holds."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket) -> None:
        super().__init__(runner, sock)
        self._fronts: weakref.WeakSet[FrontProtocol] = weakref.WeakSet()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registered with the runner, not served by aiohttp
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        server, fast = runner.server, runner.app[PROXY].fast
        gateway = runner.app[CONFIG].gateway

        def front() -> FrontProtocol:
            protocol = FrontProtocol(server, fast, gateway.header_timeout, gateway.body_timeout)
            self._fronts.add(protocol)
            return protocol

        self._server = await asyncio.get_running_loop().create_server(
            front, sock=self._sock, backlog=self._backlog)

    async def stop(self) -> None:
        for protocol in list(self._fronts):
            protocol.shut()
        runner = self._runner
        if isinstance(runner, web.AppRunner):  # open WebSockets, on either path
            runner.app[PROXY].going_away()
        await super().stop()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port), as aiohttp's TCPSite binds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock
