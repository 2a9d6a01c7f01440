"""A computation node's server (``dfg node serve``): the same GraphQL schema as the
coordinator, answered from the node's own verified replica.

"CC Nodes" mutations (approving analyses and results, result access) are signed by
the node organisation; the node forwards each to the coordinator's ledger and answers
once its own replica -- which verifies everything it receives -- has the new entry.
Coordinator mutations sent here are refused with ``wrong_role``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateways.deliveries import HEADER as DELIVERY_HEADER
from gateways.deliveries import DeliveryRefused, check_matches, verified_statement
from gateways.graphql.schema import NODE, Context
from gateways.graphql.view import mount
from gateways.http.api import read_body
from gateways.http.app import MAX_BODY
from gateways.http.problems import (
    content_coding_middleware,
    problem_response,
    problems_middleware,
    quiet_malformed_requests,
)
from infra.share_bundles import keep_bundle, prune_bundles
from ledger.entry import Entry
from ledger.errors import Rejected
from ledger.sequencer import Accepted
from ledger.store import LedgerStore
from mpc.bundles import BundleError, bundle_header, commitment
from projections import analyses, keys
from projections.base import View, ViewDatabase

log = logging.getLogger(__name__)

#: How long a mutation waits for the node's replica to show what the coordinator accepted.
REPLICA_WAIT_S = 15.0
#: How long a mutation waits for the coordinator to answer it (aiohttp's own is 5 minutes).
COORDINATOR_TIMEOUT_S = 30.0


def node_context(
    store: LedgerStore,
    views: ViewDatabase,
    view_list: list[View],
    coordinator: str,
    sealed_results: Callable[[str, int, dict[str, str]], str | None] | None = None,
    name: str | None = None,
) -> Context:
    base = coordinator.rstrip("/")

    async def submit(token: str) -> Accepted | Rejected:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=COORDINATOR_TIMEOUT_S)) as session,
                session.post(
                    f"{base}/v1/transactions",
                    data=token.encode(),
                    headers={"Content-Type": "application/jose"},
                ) as response,
            ):
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # down, silent, or not a dfg server
            why = str(exc) or type(exc).__name__
            return Rejected(
                "coordinator_unavailable",
                f"the coordinator at {base} did not answer ({why}); send the same signed transaction"
                " again (one the ledger has recorded is answered as a duplicate)",
            )
        if response.status >= 400:
            return Rejected(str(body.get("code", "refused")), str(body.get("detail", "refused")))
        seq = int(body["seq"])
        if not await views_hold(views, view_list, seq):
            return Rejected("replica_behind", f"accepted as entry {seq}; this node has not verified it yet")
        (stored,) = store.read_entries(seq, 1)
        return Accepted(Entry.decode(stored.canonical), duplicate=bool(body.get("duplicate")))

    return Context(
        views=views, store=store, submit=submit, role=NODE, sealed_results=sealed_results, name=name
    )


#: Largest share bundle a node accepts in one request: the limit of a signed delivery's
#: body only; every other request (GraphQL, to anyone) has the coordinator's, ``MAX_BODY``.
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
    quiet_malformed_requests()
    # errors leave as the coordinator's do: problem documents with a code, aiohttp's own
    # (404, 405, 413) included, and a body in a coding it does not decode is refused
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[problems_middleware, content_coding_middleware]
    )
    mount(app, node_context(store, views, view_list, coordinator, sealed_results, name))

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
        inbox = _bundle_inbox(bundles, name, views, lambda: views_hold(views, view_list, store.head()[0]))
        app.router.add_post("/v1/bundles/{datasource_id}", inbox)
    return app


async def views_hold(views: ViewDatabase, view_list: list[View], seq: int) -> bool:
    """Waits up to ``REPLICA_WAIT_S`` until every view has applied entry ``seq``; says
    whether they have. The views follow the replica a moment behind."""
    deadline = time.monotonic() + REPLICA_WAIT_S
    while min(views.position(v.name) for v in view_list) < seq:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _bundle_inbox(
    directory: Path, name: str | None, views: ViewDatabase, views_current: Callable[[], Awaitable[bool]]
) -> Any:
    """Providers deliver each datasource's sealed bundle for this node here, with a
    statement signed by the datasource's owner (``gateways.deliveries``): nobody else
    can fill the node's disk or displace a bundle. It is kept as delivered, under its
    SHA-256 (``infra.share_bundles``); the node opens it only when computing, and only
    the one whose hash its provider committed on the ledger. The datasource must be in
    this node's replica (which may be a moment behind the provider: it waits)."""

    async def receive(request: web.Request) -> web.Response:
        datasource_id = request.match_info["datasource_id"]
        try:
            uuid.UUID(datasource_id)
        except ValueError:
            return problem_response(400, "invalid_parameter", "the path names a datasource by its UUID")
        source = await _datasource_once_known(views, datasource_id)
        if source is None:
            return problem_response(
                404, "unknown_datasource", f"this node's replica has no datasource {datasource_id}"
            )
        owner = str(source.get("owner"))
        with views.transaction(commit=False) as cursor:
            found = keys.principal(cursor, owner) or {}
        try:
            statement = verified_statement(
                request.headers.get(DELIVERY_HEADER),
                owner=owner,
                owner_keys=found.get("keys", []),
                datasource_id=datasource_id,
                now=time.time(),
            )
        except DeliveryRefused as refused:  # before the body is read
            return problem_response(refused.status, refused.code, refused.message)
        # 408 body_timeout, as every body of the API; a bundle may be larger than other bodies
        sealed = await read_body(request.clone(client_max_size=MAX_BUNDLE_BYTES))
        try:
            header = bundle_header(sealed)
        except BundleError as exc:
            return problem_response(400, "invalid_bundle", str(exc))
        if header["datasource"] != datasource_id:
            return problem_response(400, "invalid_bundle", "the bundle is for another datasource")
        if name is not None and header["node"] != name:
            return problem_response(
                400, "invalid_bundle", f"the bundle is sealed for {header['node']}, not {name}"
            )
        digest = commitment(sealed)
        try:
            check_matches(statement, node=str(header["node"]), digest=digest)
        except DeliveryRefused as refused:
            return problem_response(refused.status, refused.code, refused.message)
        keep_bundle(directory, datasource_id, sealed)
        # Pruning keeps the committed bundle: the one the views name once they hold all
        # the replica does (the datasource read above may predate its commitment, and
        # the committed bundle was deleted as if it were an old delivery).
        if await views_current():  # all the replica holds
            with views.transaction(commit=False) as cursor:
                source = analyses.document(cursor, "Datasource", datasource_id) or source
            committed = (source.get("commitments") or {}).get(str(header["node"]))
            prune_bundles(directory, datasource_id, committed)
        else:  # housekeeping: the next delivery prunes
            log.warning(
                "not pruning the bundles of %s: this node's views are behind its replica", datasource_id
            )
        return web.json_response({"sha256": digest, "rows": header["rows"]}, status=201)

    return receive


async def _datasource_once_known(views: ViewDatabase, datasource_id: str) -> dict[str, Any] | None:
    deadline = time.monotonic() + REPLICA_WAIT_S
    while True:
        with views.transaction(commit=False) as cursor:
            found = analyses.document(cursor, "Datasource", datasource_id)
        if found is not None or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)
