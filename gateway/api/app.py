"""The aiohttp application: wiring only (routes, middlewares, long-lived resources)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
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
from .middleware import auth_middleware, problem_middleware
from .openapi import openapi_document

log = logging.getLogger(__name__)
HEALTH_TIMEOUT = 5.0
RuntimeFactory = Callable[[ClusterConfig], ClusterRuntime]

routes = web.RouteTableDef()


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def _probe(runtime: ClusterRuntime) -> dict[str, Any]:
    try:
        info = await asyncio.wait_for(runtime.backend.cluster_info(), HEALTH_TIMEOUT)
    except (GatewayError, TimeoutError) as exc:
        detail = exc.detail if isinstance(exc, GatewayError) else "timed out"
        return {"reachable": False, "error": detail}
    return {"reachable": True, "partitions": info["partitions"]}


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    probes = await asyncio.gather(*(_probe(r) for r in service.clusters.values()))
    clusters = {
        name: {"reachable": probe["reachable"], **({"error": probe["error"]} if "error" in probe
                                                    else {})}
        for name, probe in zip(service.clusters, probes, strict=True)
    }
    for name, error in request.app[CONFIG].cluster_errors.items():
        clusters[name] = {"reachable": False, "error": f"disabled by config: {error}"}
    return web.json_response({"status": "ok", "clusters": clusters})


@routes.get("/api/v1/clusters")
async def clusters(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    probes = await asyncio.gather(*(_probe(r) for r in service.clusters.values()))
    answer = []
    for runtime, probe in zip(service.clusters.values(), probes, strict=True):
        config = runtime.config
        answer.append({
            "name": config.name,
            "reachable": probe["reachable"],
            "default_partition": config.default_partition,
            "partitions": {
                name: {**limits.model_dump(), "scheduler": probe.get("partitions", {}).get(name)}
                for name, limits in config.partitions.items()
            },
            "accounts": config.accounts, "qos": config.qos, "constraints": config.constraints,
            "reservations": config.reservations, "images": config.images,
            "kernels": config.kernels,
        })
    return web.json_response({"clusters": answer})


def make_app(config: Config, *, runtime_factory: RuntimeFactory = make_runtime) -> web.Application:
    """The gateway application. ``runtime_factory`` lets tests put a fault-injecting cluster in."""
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware],
        client_max_size=config.gateway.max_notebook_bytes + 1024 * 1024,
    )
    app[CONFIG] = config
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
