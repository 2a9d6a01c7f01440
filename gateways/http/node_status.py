"""A follower's status endpoint: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus).

The follower's loop blocks on Kafka, so the endpoint runs its own event loop in a
daemon thread and only reads the follower's status object.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from gateways.kafka.follower import Follower


def status_app(follower: Follower) -> web.Application:
    registry = CollectorRegistry()
    size = Gauge("dfg_replica_size", "Entries verified and stored by this node", registry=registry)
    lag = Gauge("dfg_replica_lag_entries", "Entries on the topic not yet verified here", registry=registry)
    lag_s = Gauge(
        "dfg_replica_lag_seconds",
        "Age of the newest verified entry while behind; while disconnected, time since the topic's"
        " end was last seen",
        registry=registry,
    )
    connected = Gauge(
        "dfg_replica_connected", "1 while the broker answers and the topics exist", registry=registry
    )
    checkpoint = Gauge("dfg_replica_checkpoint_size", "Last verified checkpoint", registry=registry)
    violations = Gauge("dfg_replica_violations", "1 when this node stopped on a violation", registry=registry)

    async def get_status(_: web.Request) -> web.Response:
        status = follower.status.as_json()
        return web.json_response(status, status=200 if status["halted"] is None else 409)

    async def get_metrics(_: web.Request) -> web.Response:
        status = follower.status
        size.set(status.size)
        lag.set(status.lag_entries)
        lag_s.set(status.lag_seconds)
        connected.set(1 if status.connected else 0)
        checkpoint.set(status.last_checkpoint or 0)
        violations.set(0 if status.halted is None else 1)
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_lags(_: web.Request) -> web.Response:
        """Append-to-verified seconds of the entries verified since the last call."""
        lags = follower.take_lags()
        ordered = sorted(lags)

        def pct(q: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

        return web.json_response(
            {"count": len(ordered), "p50_s": pct(0.50), "p99_s": pct(0.99), "max_s": pct(1.0)}
        )

    app = web.Application()
    app.router.add_get("/status", get_status)
    app.router.add_get("/lags", get_lags)
    app.router.add_get("/metrics", get_metrics)
    return app


def serve_status(follower: Follower, host: str, port: int) -> int:
    """Start the endpoint in a daemon thread; it lives as long as the process. Returns
    the port it listens on (port 0: one the system chose) once it listens; raises
    ``OSError`` when it cannot (e.g. the port is taken), so that a node does not run on
    without the status its operator relies on."""
    ready = threading.Event()
    failed: list[BaseException] = []
    bound: list[int] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(status_app(follower), access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, host, port).start())
            bound.append(int(runner.addresses[0][1]))
        except BaseException as exc:  # reported to the caller, not lost in this thread
            failed.append(exc)
            ready.set()
            loop.run_until_complete(runner.cleanup())
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="dfg-node-status", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise OSError(f"the status endpoint did not start on {host}:{port} within 10 s")
    if failed:
        raise OSError(f"the status endpoint cannot listen on {host}:{port}: {failed[0]}") from failed[0]
    return bound[0]
