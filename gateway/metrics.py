"""The gateway's Prometheus metrics (prometheus-client), in a registry of the application's own.

:class:`GatewayMetrics` holds every instrument; the parts that measure something get it (the
job service and its workers, the scheduler calls, the lab proxy) and record as things happen.
What the store already knows (jobs by state, users, tokens) and what the poller last saw (a
cluster's reachability) is read when Prometheus scrapes, through :class:`ScrapeTimeCollector`,
so those figures are never stale and never double-counted.

No instrument has a label a user controls but the cluster, partition, state and reason the
gateway's own allowlists and state table bound, so series stay few.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

T = TypeVar("T")
# Seconds: a job's wait for a node (seconds to days) and a lab's start (seconds to minutes).
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 86400)
READY_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
# Seconds: one scheduler call or poll cycle (milliseconds when local, seconds over SSH).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class JobCount:
    """How many jobs are in one (state, kind, cluster, partition, reason) group."""

    state: str
    kind: str
    cluster: str
    partition: str
    reason: str  # "" while a job has none
    count: int


class ScrapeTimeCollector(Collector):
    """Figures read when Prometheus scrapes: jobs by state, cluster reachability, users and
    active tokens; each source a callable the composition root wires in."""

    def __init__(self, job_counts: Callable[[], Iterable[JobCount]],
                 reachability: Callable[[], dict[str, bool | None]],
                 accounts: Callable[[], tuple[int, int, int]]) -> None:
        self._job_counts = job_counts
        self._reachability = reachability
        self._accounts = accounts

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "hpcgw_jobs", "Jobs the gateway knows, by state, kind, cluster, partition and "
            "terminal reason", labels=["state", "kind", "cluster", "partition", "reason"])
        for group in self._job_counts():
            jobs.add_metric([group.state, group.kind, group.cluster, group.partition,
                             group.reason], group.count)
        yield jobs
        reachable = GaugeMetricFamily(
            "hpcgw_cluster_reachable", "1 if the poller's last look at the cluster's scheduler "
            "succeeded, 0 if it failed (absent before the first look)", labels=["cluster"])
        for cluster, seen in self._reachability().items():
            if seen is not None:
                reachable.add_metric([cluster], 1.0 if seen else 0.0)
        yield reachable
        users, tokens, sessions = self._accounts()
        yield GaugeMetricFamily("hpcgw_users", "Enabled gateway users", value=users)
        yield GaugeMetricFamily("hpcgw_active_tokens", "API tokens that are not revoked (API "
                                "clients, and browsers that log in with a token, use them)",
                                value=tokens)
        yield GaugeMetricFamily("hpcgw_active_sessions", "Browser sessions (token logins and "
                                "single sign-on) not ended by logout nor expired", value=sessions)


class GatewayMetrics:
    """Every instrument the gateway records into, in :attr:`registry` (one per application)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.queue_wait = Histogram(
            "hpcgw_queue_wait_seconds", "From a job's acceptance to its start on a node",
            ["cluster", "partition", "kind"], buckets=WAIT_BUCKETS, registry=registry)
        self.lab_ready = Histogram(
            "hpcgw_lab_ready_seconds", "From a lab's start on a node to its server answering",
            ["cluster", "partition"], buckets=READY_BUCKETS, registry=registry)
        self.submit_failures = Counter(
            "hpcgw_submit_failures", "Jobs that failed before the scheduler took them",
            ["cluster"], registry=registry)
        self.staging_failures = Counter(
            "hpcgw_staging_failures", "Jobs whose inputs could not be copied in",
            ["cluster"], registry=registry)
        self.scheduler_calls = Counter(
            "hpcgw_scheduler_calls", "Calls of the scheduler backend (submit: sbatch, status: "
            "squeue and sacct, cancel: scancel, cluster_info: sinfo, find_by_tag: squeue)",
            ["cluster", "operation", "outcome"], registry=registry)
        self.scheduler_seconds = Histogram(
            "hpcgw_scheduler_call_seconds", "How long a scheduler backend call took",
            ["cluster", "operation"], buckets=CALL_BUCKETS, registry=registry)
        self.poll_seconds = Histogram(
            "hpcgw_poll_cycle_seconds", "How long one poll cycle of a cluster took",
            ["cluster"], buckets=CALL_BUCKETS, registry=registry)
        self.proxy_requests = Counter(
            "hpcgw_proxy_requests", "Requests the lab proxy answered, by kind (http, "
            "websocket) and status class", ["kind", "status"], registry=registry)
        self.proxy_bytes = Counter(
            "hpcgw_proxy_bytes", "Body and message bytes the lab proxy relayed",
            ["direction"], registry=registry)
        self.webhook_attempts = Counter(
            "hpcgw_webhook_attempts", "Attempts to deliver a job's state change to its "
            "webhook, by outcome: delivered (2xx), retrying (failed, tried again later), failed "
            "(the last attempt failed), refused (an address the policy refuses)",
            ["outcome"], registry=registry)
        self.proxy_websockets = Gauge(
            "hpcgw_proxy_open_websockets", "Lab WebSockets open through the proxy now",
            registry=registry)

    def watch(self, collector: ScrapeTimeCollector) -> None:
        """Read ``collector``'s figures at each scrape."""
        self.registry.register(collector)

    async def timed_call(self, cluster: str, operation: str, call: Awaitable[T]) -> T:
        """Await one scheduler call, counting it (outcome ``ok`` or ``error``) and timing it."""
        started = time.monotonic()
        outcome = "error"
        try:
            answer = await call
            outcome = "ok"
            return answer
        finally:
            self.scheduler_calls.labels(cluster, operation, outcome).inc()
            self.scheduler_seconds.labels(cluster, operation).observe(time.monotonic() - started)
