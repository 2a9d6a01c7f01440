"""What handlers find on the application: typed keys (aiohttp AppKey)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateways.http.metrics import METRICS_KEY
from infra.ledger_service import LedgerService
from projections.base import ViewDatabase

SERVICE = web.AppKey("service", LedgerService)
VIEWS = web.AppKey("views", ViewDatabase)
METRICS = METRICS_KEY
OPENAPI = web.AppKey("openapi", dict[str, Any])
#: How many registered witnesses must cosign a checkpoint for it to be final (0: a majority).
WITNESS_QUORUM = web.AppKey("witness_quorum", int)
