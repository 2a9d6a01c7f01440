"""``dfg recover``: a ledger restored from a backup takes back what it had published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gateways.cli.kafka_security import kafka_security_options
from gateways.cli.node_commands import _bootstrap, _chain_of, _refuse_unusable_kafka, prefix_option
from gateways.cli.options import fail, ledger_options, require_ledger
from gateways.kafka.client import KafkaSettings
from gateways.kafka.topics import Topics
from gateways.recovery import Recovered, RecoveryRefused, recover_from_bundle, recover_from_topics
from infra.bootstrap import open_writer_store
from infra.settings import Settings
from infra.store_role import StoreRole, WrongStoreRole
from infra.writer_lock import LedgerBusy


def _optional_bootstrap(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _bootstrap(ctx, param, value)


@click.command("recover")
@ledger_options
@click.option(
    "--kafka",
    "bootstrap",
    envvar="DFG_KAFKA",
    show_envvar=True,
    callback=_optional_bootstrap,
    help="Take back the entries from the ledger's topics on these brokers (host:port[,...]).",
)
@kafka_security_options
@prefix_option
@click.option(
    "--from-bundle",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Take them back from an audit bundle (`dfg audit export` of a node operator's replica).",
)
def recover(
    settings: Settings,
    bootstrap: str | None,
    kafka_security: dict[str, Any],
    topic_prefix: str,
    from_bundle: Path | None,
) -> None:
    """After restoring the ledger's database from a backup, and before `dfg serve`:
    verify and append every entry (and checkpoint) it had published since the backup.

    Without this, the ledger would give new transactions the places of entries that
    replicas hold and witnesses cosigned, and its checkpoints would contradict theirs
    (a fork). Nothing is appended unless every entry the ledger holds is the source's
    at that place; exit status 1 says why not."""
    if (bootstrap is None) == (from_bundle is None):
        raise click.UsageError("give one source: --kafka (the ledger's topics) or --from-bundle")
    require_ledger(settings)
    if bootstrap is not None:
        _refuse_unusable_kafka(bootstrap, kafka_security)
    try:
        store = open_writer_store(settings, doing="recovering it", role=StoreRole.LEDGER)
    except (LedgerBusy, WrongStoreRole) as exc:
        fail(str(exc))
    try:
        if from_bundle is not None:
            done = recover_from_bundle(store, from_bundle)
        else:
            assert bootstrap is not None
            chain = _chain_of(store)
            kafka = KafkaSettings(bootstrap, client_id=f"dfg-recover-{chain}", security=kafka_security)
            done = recover_from_topics(store, kafka, Topics.for_ledger(chain, topic_prefix))
    except RecoveryRefused as exc:
        fail(f"cannot recover: {exc}")
    finally:
        store.close()
    click.echo(_summary(done))


def _summary(done: Recovered) -> str:
    if done.size == done.held:
        return (
            f"nothing to recover: every entry of the source is one this ledger holds ({done.held}"
            f" entries; {done.checkpoints} checkpoints taken back)"
        )
    return (
        f"recovered entries {done.held + 1} to {done.size}, each verified, and {done.checkpoints}"
        " checkpoints; the ledger can serve again"
    )
