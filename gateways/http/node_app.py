"""A computation node's server (``dfg node serve``): the same GraphQL schema as the
coordinator, answered from the node's own verified replica.

"CC Nodes" mutations (approving analyses and results, result access) are signed by
the node organisation; the node forwards each to the coordinator's ledger and answers
once its own replica -- which verifies everything it receives -- has the new entry.
Coordinator mutations sent here are refused with ``wrong_role``.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from gateways.graphql.schema import NODE, Context
from gateways.graphql.view import mount
from ledger.entry import Entry
from ledger.errors import Rejected
from ledger.sequencer import Accepted
from ledger.store import LedgerStore
from projections.base import View, ViewDatabase

#: How long a mutation waits for the node's replica to show what the coordinator accepted.
REPLICA_WAIT_S = 15.0


def node_context(store: LedgerStore, views: ViewDatabase, view_list: list[View], coordinator: str) -> Context:
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

    return Context(views=views, store=store, submit=submit, role=NODE)


def build_node_app(
    store: LedgerStore, views: ViewDatabase, view_list: list[View], coordinator: str
) -> web.Application:
    app = web.Application()
    mount(app, node_context(store, views, view_list, coordinator))
    return app
