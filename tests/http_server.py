"""A real dfg server on a free loopback port, in a background thread (for tests)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from aiohttp import web

from gateways.cli.serve_command import make_server
from infra.settings import Settings


def send_raw(url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as it is (e.g. a body shorter than its Content-Length) and read
    until the server closes the connection: the answer's (head, body)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    answer = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as client:
        client.sendall(request)
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """Yields the base URL; the server and its ledger service stop on exit."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: dict[str, web.AppRunner] = {}

    async def start() -> None:
        runner = web.AppRunner(make_server(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box["runner"] = runner
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the test server did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner_box["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextmanager
def running_node_server(
    settings: Settings, coordinator: str, chain: str, ledger_key: str, name: str | None = None
) -> Iterator[str]:
    """A computation node's server (what ``dfg node serve`` runs): its own replica kept
    up to date from the coordinator's API in a thread, GraphQL on a free port."""
    from gateways.http.node_app import build_node_app
    from gateways.node_engine import result_sealer
    from gateways.seed import follow_api
    from infra.node import open_node

    node = open_node(settings, ledger_key=ledger_key, chain=chain)
    stop = threading.Event()
    follower = threading.Thread(
        target=follow_api, args=(node.replica, node.apply_views, coordinator, stop), daemon=True
    )
    follower.start()
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(
        build_node_app(
            node.store,
            node.views,
            node.view_list,
            coordinator,
            bundles=settings.data_dir / "bundles",
            name=name,
            sealed_results=result_sealer(settings.data_dir / "work"),  # as dfg node serve
        ),
        access_log=None,
    )

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the node server did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        stop.set()
        follower.join(10)
        node.close()
