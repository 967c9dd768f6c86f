"""The API's own routes (health, clusters, the OpenAPI document) and the list of every route and
middleware the API brings; :mod:`gateway.server` puts them in an application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ..errors import LabUnavailable, NotFound
from ..jobs.clusters import ClusterLink
from ..proxy.relay import expect_later
from . import admin, jobs, metrics, portal, problems, sessions, sso, storage, stream, webhooks
from .keys import CONFIG, OPENAPI, PROXY, SERVICE, VIA_COOKIE, current_user
from .middleware import auth_middleware, caller_now, problem_middleware
from .models import ClusterList, Health, SchedulerPartition, json_answer
from .openapi import openapi_document
from .requestlog import request_context

log = logging.getLogger(__name__)
HEALTH_TIMEOUT = 5.0  # seconds /health waits, after startup, for the poller's first check
FIRST_CHECK_STEP = 0.05

routes = web.RouteTableDef()


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


def _cluster_health(runtime: ClusterLink) -> dict[str, Any]:
    """``{"reachable": true|false|null}`` plus ``error`` while unreachable: the poller's last
    finding (``null``: not checked yet, just after startup)."""
    answer: dict[str, Any] = {"reachable": runtime.reachable}
    if runtime.reachable is False:
        answer["error"] = runtime.last_error or "unreachable"
    return answer


async def _first_checks(runtimes: Iterable[ClusterLink], timeout: float) -> None:
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
    return json_answer(Health.model_validate({"status": "ok", "clusters": clusters}))


@routes.get("/api/v1/clusters")
async def clusters(request: web.Request) -> web.Response:
    """The clusters' policy (config) and, per partition, what the scheduler last said about it
    (the poller's cached view; ``null`` until the first refresh), and the container images a
    job may name (``default_image``: what a job that names none runs in; ``null``: the host's
    environment). Starts no process."""
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
                name: {**limits.model_dump(), "scheduler": _scheduler_view(seen.get(name))}
                for name, limits in config.partitions.items()
            },
            "accounts": config.accounts, "qos": config.qos, "constraints": config.constraints,
            "reservations": config.reservations, "kernels": config.kernels,
            "images": [{"name": name, "runtime": image.runtime, "gpu": image.gpu,
                        "description": image.description}
                       for name, image in config.images.items()],
            "default_image": config.default_image,
            "lab_idle_timeout": request.app[CONFIG].labs.idle_timeout,
        })
    return json_answer(ClusterList.model_validate({"clusters": answer}))


def _scheduler_view(seen: Any) -> SchedulerPartition | None:
    """What the backend said of a partition, if it has the shape the API documents (a backend
    that says less, or something else, shows as null: the policy still shows)."""
    if seen is None:
        return None
    try:
        return SchedulerPartition.model_validate(seen)
    except ValidationError as exc:
        log.warning("the scheduler's view of a partition does not fit the API: %s", exc)
        return None


def add_routes(app: web.Application) -> None:
    """Every route of the API, the browser pages and the lab proxy's path."""
    app[OPENAPI] = openapi_document(app[CONFIG])
    app.add_routes(routes)
    stream.setup(app)
    app.add_routes(jobs.routes)
    app.add_routes(admin.routes)
    app.add_routes(sessions.routes)
    app.add_routes(sso.routes)
    portal.setup(app)
    app.add_routes(storage.routes)
    app.add_routes(problems.routes)
    app.add_routes(metrics.routes)
    app.add_routes(webhooks.routes)
    app.router.add_route("*", "/labs/{job_id:[0-9a-f]{16}}/{tail:.*}", _proxy_lab,
                         expect_handler=expect_later)
    app.router.add_get("/labs/{job_id:[0-9a-f]{16}}", _lab_root)


def middlewares() -> list[Any]:
    """The API's middlewares, outermost first: the request's log context, problem+json for
    every error, then the caller."""
    return [request_context, problem_middleware, auth_middleware]


async def _proxy_lab(request: web.Request) -> web.StreamResponse:
    """Hand the request and its authenticated caller to the lab proxy. A browser's page
    request for a lab that ended or does not exist gets a page saying so (404), for one not
    ready yet a page that reloads itself (503); other clients get the problem."""
    user = current_user(request)
    try:
        return await request.app[PROXY].handle(request, user, request[VIA_COOKIE],
                                               lambda: caller_now(request))
    except (NotFound, LabUnavailable) as exc:
        if request.method != "GET" or "text/html" not in request.headers.get("Accept", ""):
            raise
        if isinstance(exc, LabUnavailable):
            return portal.lab_starting_page(request, user, exc.detail)
        return portal.lab_gone_page(request, user, request.match_info["job_id"])


async def _lab_root(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/labs/{request.match_info['job_id']}/lab")
