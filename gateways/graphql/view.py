"""Serving the schema with aiohttp at ``/graphql`` (GraphiQL in a browser)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from strawberry.aiohttp.views import GraphQLView

from gateways.graphql.schema import Context, schema


class LedgerGraphQLView(GraphQLView[Context, None]):
    def __init__(self, context: Context) -> None:
        super().__init__(schema=schema, graphql_ide="graphiql", allow_queries_via_get=True)
        self._context = context

    async def get_context(self, request: web.Request, response: Any) -> Context:
        return self._context


def mount(app: web.Application, context: Context) -> None:
    app.router.add_route("*", "/graphql", LedgerGraphQLView(context))
