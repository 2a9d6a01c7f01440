"""Builds the aiohttp application around a running ledger service."""

from __future__ import annotations

from importlib.metadata import version

from aiohttp import web

from gateways.graphql.schema import coordinator_context
from gateways.graphql.view import mount as mount_graphql
from gateways.http.api import ROUTES, unknown_parameters_middleware
from gateways.http.context import METRICS, OPENAPI, SERVICE, VIEWS, WITNESS_QUORUM
from gateways.http.metrics import Metrics, metrics_middleware
from gateways.http.models import MAX_BATCH_TRANSACTIONS
from gateways.http.openapi import build_openapi
from gateways.http.problems import content_coding_middleware, problems_middleware, quiet_malformed_requests
from infra.ledger_service import LedgerService
from ledger.jws import MAX_JWS_BYTES
from projections.base import ViewDatabase

#: A full batch of the largest transactions, plus JSON overhead.
MAX_BODY = MAX_BATCH_TRANSACTIONS * (MAX_JWS_BYTES + 8) + 1024


def build_app(
    service: LedgerService, views: ViewDatabase, *, witness_quorum: int | None = None
) -> web.Application:
    quiet_malformed_requests()
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            metrics_middleware,
            problems_middleware,
            content_coding_middleware,
            unknown_parameters_middleware,
        ],
    )
    app[SERVICE] = service
    app[VIEWS] = views
    app[METRICS] = Metrics()
    app[OPENAPI] = build_openapi(version("dfg"))
    app[WITNESS_QUORUM] = witness_quorum or 0
    for route in ROUTES:
        if route.method == "GET":  # and HEAD, as HTTP asks of every GET resource
            app.router.add_get(route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path, route.handler)
    mount_graphql(app, coordinator_context(service, views))
    return app
