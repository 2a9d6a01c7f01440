"""Serving the schema with aiohttp at ``/graphql`` (GraphiQL in a browser)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from strawberry.aiohttp.views import GraphQLView

from gateways.graphql.schema import COORDINATOR, Context, schema
from infra.ledger_service import LedgerService
from projections.base import ViewDatabase


class LedgerGraphQLView(GraphQLView[Context, None]):
    def __init__(self, service: LedgerService, views: ViewDatabase, role: str = COORDINATOR) -> None:
        super().__init__(schema=schema, graphql_ide="graphiql", allow_queries_via_get=True)
        self._context = Context(service=service, views=views, role=role)

    async def get_context(self, request: web.Request, response: Any) -> Context:
        return self._context


def mount(app: web.Application, service: LedgerService, views: ViewDatabase, role: str = COORDINATOR) -> None:
    app.router.add_route("*", "/graphql", LedgerGraphQLView(service, views, role))
