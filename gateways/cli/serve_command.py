"""``dfg serve``: the consent API over HTTP, in front of the running ledger."""

from __future__ import annotations

import logging

import click
from aiohttp import web

from gateways.cli.options import checkpoint_options, fail, ledger_options, require_ledger, run_server
from infra.bootstrap import open_sequencer, open_views
from infra.keyfiles import KeyFileError
from infra.ledger_service import LedgerService
from infra.settings import Settings
from projections.registry import all_views


def make_server(settings: Settings, *, witness_quorum: int | None = None) -> web.Application:
    """The app with its ledger service started and stopped with it."""
    from gateways.http.app import build_app

    require_ledger(settings)
    try:
        sequencer = open_sequencer(settings)
    except (KeyFileError, RuntimeError) as exc:
        fail(str(exc))
    if sequencer.ledger is None:
        fail("this ledger has no genesis entry")
    views = open_views(settings)
    service = LedgerService(sequencer, views, all_views())
    service.start()
    app = build_app(service, views, witness_quorum=witness_quorum)

    async def stop(_: web.Application) -> None:
        service.stop()
        views.close()
        sequencer.store.close()

    app.on_cleanup.append(stop)
    return app


@click.command("serve")
@ledger_options
@checkpoint_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--witness-quorum",
    type=click.IntRange(1),
    default=None,
    envvar="DFG_WITNESS_QUORUM",
    help="Cosignatures of registered node operators that make a checkpoint final [default: a majority].",
)
def serve(settings: Settings, host: str, port: int, witness_quorum: int | None) -> None:
    """Serve the consent API (REST, OpenAPI at /openapi.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_server(settings, witness_quorum=witness_quorum)
    serving = f"dfg serving {settings.data_dir} ({settings.engine}) on http://{host}:{port}"
    run_server(app, host, port, serving, access_log=None)
