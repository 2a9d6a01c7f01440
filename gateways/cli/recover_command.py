"""``dfg recover``: a ledger restored from a backup takes back what it had published."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress, SpinnerColumn, TextColumn

from gateways.cli.kafka_security import kafka_security_options
from gateways.cli.node_commands import (
    _bootstrap,
    _chain_of,
    _refuse_unusable_kafka,
    _topic_name_part,
    prefix_option,
)
from gateways.cli.options import fail, ledger_options
from gateways.kafka.client import KafkaSettings
from gateways.kafka.topics import Topics
from gateways.recovery import Expected, Recovered, RecoveryRefused, recover_from_bundle, recover_from_topics
from infra.bootstrap import RECOVERY_MARKER, ledger_present, open_writer_store, required_checkpoint_key
from infra.keyfiles import KeyFileError
from infra.settings import Settings
from infra.store_role import StoreRole, WrongStoreRole, claim_store_role, describe_store
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
@click.option(
    "--chain",
    callback=_topic_name_part,
    help="The ledger's chain id, which names its topics: needed with --kafka when the database"
    " is lost altogether (the ledger is then rebuilt from nothing but its keys).",
)
@click.option(
    "--abandon",
    is_flag=True,
    help="End a recovery that did not finish, without a source: the ledger goes on from the"
    " entries it holds (replicas that hold later ones will record a fork).",
)
def recover(
    settings: Settings,
    bootstrap: str | None,
    kafka_security: dict[str, Any],
    topic_prefix: str,
    from_bundle: Path | None,
    chain: str | None,
    abandon: bool,
) -> None:
    """After restoring the ledger's database from a backup, and before `dfg serve`:
    verify and append every entry (and checkpoint) it had published since the backup.

    Without this, the ledger would give new transactions the places of entries that
    replicas hold and witnesses cosigned, and its checkpoints would contradict theirs
    (a fork). Nothing is appended unless every entry the ledger holds is the source's
    at that place; exit status 1 says why not. With the database lost altogether
    and no backup, the ledger is rebuilt from nothing but its keys (`keys/`)."""
    if abandon:
        if bootstrap is not None or from_bundle is not None:
            raise click.UsageError("--abandon takes no source: it ends an unfinished recovery as it stands")
        _abandon(settings)
        return
    if (bootstrap is None) == (from_bundle is None):
        raise click.UsageError("give one source: --kafka (the ledger's topics) or --from-bundle")
    expected = None if ledger_present(settings) else _rebuilding(settings, chain, bootstrap)
    if bootstrap is not None:
        _refuse_unusable_kafka(bootstrap, kafka_security)
    try:
        store = open_writer_store(settings, doing="recovering it", role=StoreRole.LEDGER)
    except (LedgerBusy, WrongStoreRole) as exc:
        fail(str(exc))
    if expected is None and store.head()[0] == 0:
        # Tables without a ledger (PostgreSQL keeps those of a failed rebuild): still a
        # rebuild, checked against the keys, or any ledger's source would be taken.
        try:
            expected = _rebuilding(settings, chain, bootstrap)
        except BaseException:
            store.close()
            raise
    refused, interrupted, completed, started = None, False, False, store.head()[0]
    held = started
    store.set_marker(RECOVERY_MARKER, 1)  # until it completes: `dfg serve` refuses a part-way ledger
    columns = (TextColumn("recovering: the ledger holds {task.completed:,.0f} entries"), SpinnerColumn())
    try:
        try:
            with Progress(*columns, disable=not sys.stderr.isatty(), transient=True) as bar:
                task = bar.add_task("recover", total=None, completed=store.head()[0])
                tick = partial(bar.update, task)
                if from_bundle is not None:
                    done = recover_from_bundle(
                        store, from_bundle, lambda size: tick(completed=size), expected or Expected()
                    )
                else:
                    assert bootstrap is not None
                    chain = chain or _chain_of(store)
                    client_id = f"dfg-recover-{chain}"
                    kafka = KafkaSettings(bootstrap, client_id=client_id, security=kafka_security)
                    topics = Topics.for_ledger(chain, topic_prefix)
                    done = recover_from_topics(
                        store, kafka, topics, lambda size: tick(completed=size), expected or Expected()
                    )
            if expected is not None and done.size == 0:
                raise RecoveryRefused("the source holds no entry to rebuild the ledger from")
            completed = True
        except RecoveryRefused as exc:
            refused = str(exc)
        except KeyboardInterrupt:
            interrupted = True
        finally:  # stopped for whatever reason: what was verified is kept, as the ledger's
            held = store.head()[0]
            if expected is not None and held:  # a rebuilt ledger, if only in part: no replica's
                claim_store_role(store, StoreRole.LEDGER, settings)
            if completed or held == started:  # all taken back, or the ledger as it was
                store.set_marker(RECOVERY_MARKER, 0)
    finally:
        store.close()
    if (refused is not None or interrupted) and expected is not None and held == 0:
        _remove_rebuilt(settings)
    if interrupted:
        fail(f"interrupted: the ledger holds {held:,} verified entries; run dfg recover again to go on", 130)
    if refused is not None:
        fail(f"cannot recover: {refused}")
    click.echo(_summary(done))


def _abandon(settings: Settings) -> None:
    """End an unfinished recovery without its source (lost, or bad beyond repair): the
    ledger goes on from the entries it holds, which contradicts any later ones its
    replicas hold -- they will record it as a fork."""
    try:
        store = open_writer_store(settings, doing="recovering it", role=StoreRole.LEDGER)
    except (LedgerBusy, WrongStoreRole) as exc:
        fail(str(exc))
    try:
        if not store.marker(RECOVERY_MARKER):
            click.echo("no unfinished recovery: nothing to abandon")
            return
        store.set_marker(RECOVERY_MARKER, 0)
        held = store.head()[0]
    finally:
        store.close()
    click.echo(
        f"the unfinished recovery is abandoned: the ledger goes on from its {held:,} entries; replicas"
        " that hold later ones will record the next entries as a fork"
    )


def _rebuilding(settings: Settings, chain: str | None, bootstrap: str | None) -> Expected:
    """There is no ledger here: it is rebuilt from the source, which must hold the ledger
    whose checkpoint key is in ``keys/`` (without it, it could not sign again)."""
    try:
        key = required_checkpoint_key(settings)
    except KeyFileError as exc:
        fail(f"no ledger in {describe_store(settings)} to recover, and nothing to rebuild it with: {exc}")
    if bootstrap is not None and chain is None:
        raise click.UsageError("there is no ledger here to read its chain id from: give --chain")
    return Expected(checkpoint_key=key.verifier().to_string(), chain=chain)


def _remove_rebuilt(settings: Settings) -> None:
    """A rebuild that failed before its genesis entry leaves no empty ledger behind
    (``dfg init`` would take it for one). PostgreSQL's empty tables are the next attempt's."""
    if not settings.database_url:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{settings.ledger_file}{suffix}").unlink(missing_ok=True)


def _summary(done: Recovered) -> str:
    if done.short_source is not None:
        n = done.short_source
        return (
            f"nothing to recover: the source holds {n} entries, each this ledger's at its place,"
            f" and the ledger {done.held}; entries {n + 1} to {done.held} are not in the source,"
            " so it cannot show that they are the ones published there (a bundle older than the"
            " backup, or entries the relay had not published yet)"
        )
    if done.size == done.held:
        return (
            f"nothing to recover: every entry of the source is one this ledger holds ({done.held}"
            f" entries; {_checkpoints(done.checkpoints)} taken back)"
        )
    summary = (
        f"recovered entries {done.held + 1} to {done.size}, each verified, and"
        f" {_checkpoints(done.checkpoints)}; the ledger can serve again"
    )
    if done.uncovered:
        summary += (
            f". Warning: the last {done.uncovered} are beyond the newest checkpoint the ledger signed:"
            " their signers' signatures are checked, but nothing the ledger signed shows that it"
            " sequenced them (its relay stopped before their checkpoint, or the source added"
            " them); served again, the ledger adopts them, so this source must be one you trust"
        )
    return summary


def _checkpoints(count: int) -> str:
    return f"{count} checkpoint{'' if count == 1 else 's'}"
