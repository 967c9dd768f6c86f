"""The aiohttp application: wiring only (routes, middlewares, long-lived resources)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import web

from ..config import ClusterConfig, Config
from ..errors import GatewayError
from ..jobs.runtime import ClusterRuntime, make_runtime
from ..jobs.service import JobService
from ..proxy.labs import LabProxy
from ..proxy.watcher import watch_labs
from ..store import Store
from . import jobs, portal, sessions
from .keys import CONFIG, PROXY, SERVICE, STORE
from .middleware import auth_middleware, problem_middleware, security_headers
from .openapi import openapi_document

log = logging.getLogger(__name__)
HEALTH_TIMEOUT = 5.0  # seconds /health waits, after startup, for the poller's first check
FIRST_CHECK_STEP = 0.05
RuntimeFactory = Callable[[ClusterConfig], ClusterRuntime]

routes = web.RouteTableDef()


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def _cluster_health(runtime: ClusterRuntime) -> dict[str, Any]:
    """``{"reachable": true|false|null}`` plus ``error`` while unreachable: the poller's last
    finding (``null``: not checked yet, just after startup)."""
    answer: dict[str, Any] = {"reachable": runtime.reachable}
    if runtime.reachable is False:
        answer["error"] = runtime.last_error or "unreachable"
    return answer


async def _first_checks(runtimes: Iterable[ClusterRuntime], timeout: float) -> None:
    """Wait (at most ``timeout`` s) until the poller has checked every cluster once. Starts
    nothing: the poller's first refresh runs as soon as the gateway starts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(r.reachable is None for r in runtimes) and loop.time() < deadline:
        await asyncio.sleep(FIRST_CHECK_STEP)


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    """200 with each cluster's reachability as the poller last saw it: no request starts a
    process or reaches the cluster (``poll.old_interval`` bounds how old the view is).

    Just after startup a request waits up to :data:`HEALTH_TIMEOUT` s for the poller's first
    check; a cluster still unchecked then answers ``"reachable": null``. A cluster the config
    disabled answers ``false`` with the config error.
    """
    service = request.app[SERVICE]
    await _first_checks(service.clusters.values(), HEALTH_TIMEOUT)
    clusters = {name: _cluster_health(r) for name, r in service.clusters.items()}
    for name, error in request.app[CONFIG].cluster_errors.items():
        clusters[name] = {"reachable": False, "error": f"disabled by config: {error}"}
    return web.json_response({"status": "ok", "clusters": clusters})


@routes.get("/api/v1/clusters")
async def clusters(request: web.Request) -> web.Response:
    """The clusters' policy (config) and, per partition, what the scheduler last said about it
    (the poller's cached view; ``null`` until the first refresh). Starts no process."""
    service = request.app[SERVICE]
    answer = []
    for runtime in service.clusters.values():
        config = runtime.config
        seen = (runtime.view or {}).get("partitions", {})
        answer.append({
            "name": config.name,
            "reachable": runtime.reachable,
            "default_partition": config.default_partition,
            "partitions": {
                name: {**limits.model_dump(), "scheduler": seen.get(name)}
                for name, limits in config.partitions.items()
            },
            "accounts": config.accounts, "qos": config.qos, "constraints": config.constraints,
            "reservations": config.reservations, "images": [],  # no container runtime yet
            "kernels": config.kernels,
        })
    return web.json_response({"clusters": answer})


def server_options(config: Config) -> dict[str, Any]:
    """How ``hpcgw serve`` runs the app (``web.AppRunner`` keyword arguments).

    ``keepalive_timeout`` is aiohttp's timer for a connection with no complete request in
    progress: it starts when the connection opens and again after each response, and closes the
    connection if a request's headers have not all arrived by then. Set to
    ``gateway.header_timeout`` it closes slowloris connections (headers sent a byte at a time, or
    never); an idle keep-alive connection is closed after as long (clients reconnect). A request
    whose headers have arrived is not cut by it, however long it runs.
    """
    return {"access_log": logging.getLogger("hpcgw.access"),
            "keepalive_timeout": config.gateway.header_timeout}


def make_app(config: Config, *, runtime_factory: RuntimeFactory = make_runtime) -> web.Application:
    """The gateway application. ``runtime_factory`` lets tests put a fault-injecting cluster in."""
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware],
        client_max_size=config.gateway.max_notebook_bytes + 1024 * 1024,
    )
    app[CONFIG] = config
    app.on_response_prepare.append(security_headers)
    app.add_routes(routes)
    app.add_routes(jobs.routes)
    app.add_routes(sessions.routes)
    app.add_routes(portal.routes)
    app.router.add_route("*", "/labs/{job_id:[0-9a-f]{16}}/{tail:.*}", _proxy_lab)
    app.router.add_get("/labs/{job_id:[0-9a-f]{16}}", _lab_root)

    async def job_service(app: web.Application) -> AsyncIterator[None]:
        store = Store(config.gateway.data_dir / "hpcgw.db")
        runtimes = {}
        for cluster in config.clusters:
            try:
                runtimes[cluster.name] = runtime_factory(cluster)
            except GatewayError as exc:
                config.cluster_errors[cluster.name] = exc.detail
                log.error("cluster %s disabled: %s", cluster.name, exc.detail)
        service = JobService(config, store, runtimes)
        app[STORE], app[SERVICE] = store, service
        await service.start()
        yield
        await service.stop()
        store.close()

    async def lab_proxy(app: web.Application) -> AsyncIterator[None]:
        service = app[SERVICE]
        proxy = LabProxy(service, sessions.GATEWAY_COOKIES, config.gateway.public_origin)
        await proxy.start()
        app[PROXY] = proxy
        service.spawn(watch_labs(proxy), "lab-watcher")
        yield
        await proxy.stop()

    app.cleanup_ctx.append(job_service)
    app.cleanup_ctx.append(lab_proxy)
    return app


async def _proxy_lab(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def _lab_root(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/labs/{request.match_info['job_id']}/lab")
