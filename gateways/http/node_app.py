"""A computation node's server (``dfg node serve``): the same GraphQL schema as the
coordinator, answered from the node's own verified replica.

"CC Nodes" mutations (approving analyses and results, result access) are signed by
the node organisation; the node forwards each to the coordinator's ledger and answers
once its own replica -- which verifies everything it receives -- has the new entry.
Coordinator mutations sent here are refused with ``wrong_role``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateways.graphql.schema import NODE, Context
from gateways.graphql.view import mount
from gateways.http.problems import PROBLEM_TYPE, problem_body
from ledger.entry import Entry
from ledger.errors import Rejected
from ledger.sequencer import Accepted
from ledger.store import LedgerStore
from mpc.bundles import BundleError, bundle_header, commitment
from projections.base import View, ViewDatabase

#: How long a mutation waits for the node's replica to show what the coordinator accepted.
REPLICA_WAIT_S = 15.0


def node_context(
    store: LedgerStore,
    views: ViewDatabase,
    view_list: list[View],
    coordinator: str,
    sealed_results: Callable[[str, int, dict[str, str]], str | None] | None = None,
) -> Context:
    base = coordinator.rstrip("/")

    async def submit(token: str) -> Accepted | Rejected:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{base}/v1/transactions", data=token.encode(), headers={"Content-Type": "application/jose"}
            ) as response,
        ):
            body = await response.json(content_type=None)
        if response.status >= 400:
            return Rejected(str(body.get("code", "refused")), str(body.get("detail", "refused")))
        seq = int(body["seq"])
        deadline = time.monotonic() + REPLICA_WAIT_S
        while min(views.position(v.name) for v in view_list) < seq:
            if time.monotonic() > deadline:
                return Rejected(
                    "replica_behind", f"accepted as entry {seq}; this node has not verified it yet"
                )
            await asyncio.sleep(0.05)
        (stored,) = store.read_entries(seq, 1)
        return Accepted(Entry.decode(stored.canonical), duplicate=bool(body.get("duplicate")))

    return Context(views=views, store=store, submit=submit, role=NODE, sealed_results=sealed_results)


#: Largest share bundle a node accepts in one request.
MAX_BUNDLE_BYTES = 512 * 1024 * 1024


def build_node_app(
    store: LedgerStore,
    views: ViewDatabase,
    view_list: list[View],
    coordinator: str,
    *,
    bundles: Path | None = None,
    name: str | None = None,
    sealed_results: Callable[[str, int, dict[str, str]], str | None] | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BUNDLE_BYTES)
    mount(app, node_context(store, views, view_list, coordinator, sealed_results))

    async def healthz(request: web.Request) -> web.Response:
        """503 once the replica found a violation: it accepts nothing more, so what the
        node serves is frozen at the entry before it (``dfg node status`` has the evidence)."""
        size = store.head()[0]
        found = store.violations()
        if not found:
            return web.json_response({"status": "ok", "role": "node", "size": size})
        first = found[0]
        halted = {"kind": first.kind, "seq": first.seq, "message": first.message}
        body = {"status": "halted", "role": "node", "size": size, "halted": halted}
        return web.json_response(body, status=503)

    app.router.add_get("/healthz", healthz)
    if bundles is not None:
        app.router.add_post("/v1/bundles/{datasource_id}", _bundle_inbox(bundles, name))
    return app


def _bundle_inbox(directory: Path, name: str | None) -> Any:
    """Providers deliver each datasource's sealed bundle for this node here. It is kept
    as delivered; the node opens it only when computing, after checking it against the
    commitment the provider signed on the ledger."""

    async def receive(request: web.Request) -> web.Response:
        datasource_id = request.match_info["datasource_id"]
        try:
            uuid.UUID(datasource_id)
        except ValueError:
            return _problem(400, "invalid_parameter", "the path names a datasource by its UUID")
        sealed = await request.read()
        try:
            header = bundle_header(sealed)
        except BundleError as exc:
            return _problem(400, "invalid_bundle", str(exc))
        if header["datasource"] != datasource_id:
            return _problem(400, "invalid_bundle", "the bundle is for another datasource")
        if name is not None and header["node"] != name:
            return _problem(400, "invalid_bundle", f"the bundle is sealed for {header['node']}, not {name}")
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{datasource_id}.sealed"
        temporary = target.with_suffix(".partial")
        temporary.write_bytes(sealed)
        os.replace(temporary, target)  # a crash leaves the old bundle or the new, never half
        return web.json_response({"sha256": commitment(sealed), "rows": header["rows"]}, status=201)

    return receive


def _problem(status: int, code: str, detail: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(problem_body(status, code, detail)), content_type=PROBLEM_TYPE
    )
