"""A scheduler backend that counts and times every call of another one (hpcgw_scheduler_*).

It wraps whatever backend the cluster's ``scheduler`` key loads, so every backend is measured
the same way, by contract operation, and none of them knows about metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..metrics import GatewayMetrics
from .base import SchedulerBackend, SchedulerStatus
from .options import SubmitOptions


class MeteredBackend:
    """``backend``, with each call recorded under ``cluster`` in ``metrics``."""

    def __init__(self, backend: SchedulerBackend, metrics: GatewayMetrics, cluster: str) -> None:
        self.inner = backend
        self._metrics = metrics
        self._cluster = cluster

    async def submit(self, script: str, options: SubmitOptions) -> str:
        return await self._metrics.timed_call(self._cluster, "submit",
                                              self.inner.submit(script, options))

    async def status_many(self, job_ids: Iterable[str]) -> dict[str, SchedulerStatus]:
        return await self._metrics.timed_call(self._cluster, "status",
                                              self.inner.status_many(job_ids))

    async def find_by_tag(self, tag: str, *, user: str) -> SchedulerStatus | None:
        return await self._metrics.timed_call(self._cluster, "find_by_tag",
                                              self.inner.find_by_tag(tag, user=user))

    async def cancel(self, job_id: str, *, user: str) -> None:
        await self._metrics.timed_call(self._cluster, "cancel",
                                       self.inner.cancel(job_id, user=user))

    async def cluster_info(self) -> dict[str, Any]:
        return await self._metrics.timed_call(self._cluster, "cluster_info",
                                              self.inner.cluster_info())
