"""Prometheus metrics of one server: entries appended, ledger and checkpoint size,
projection lag, and request latencies per route."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.entries = Counter(
            "dfg_entries_appended", "Entries appended by this server", registry=self.registry
        )
        self.size = Gauge("dfg_ledger_size", "Entries in the ledger", registry=self.registry)
        self.checkpoint = Gauge(
            "dfg_checkpoint_size", "Size of the latest signed checkpoint", registry=self.registry
        )
        self.lag = Gauge(
            "dfg_projection_lag_entries", "Entries the slowest read model is behind", registry=self.registry
        )
        self.latency = Histogram(
            "dfg_http_request_duration_seconds",
            "Request latency",
            ["method", "route", "status"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )

    def appended(self, count: int) -> None:
        if count:
            self.entries.inc(count)

    def render(self, service: Any) -> tuple[bytes, str]:
        self.size.set(service.sequencer.size)
        checkpoint = service.sequencer.store.latest_checkpoint()
        self.checkpoint.set(checkpoint.size if checkpoint else 0)
        self.lag.set(service.views_lag)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


METRICS_KEY = web.AppKey("metrics", Metrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = (
            request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        )
        request.app[METRICS_KEY].latency.labels(request.method, route, str(status)).observe(
            time.perf_counter() - started
        )
