"""``dfg init`` and ``dfg demo populate``: create a ledger and fill it with activity."""

from __future__ import annotations

import random
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from itertools import islice

import click
from rich.progress import Progress

from domain import rules as rules_versions
from gateways.cli.options import checkpoint_options, fail, ledger_options, require_ledger
from gateways.cli.signed_submit import ledger_identity
from infra.bootstrap import create_ledger, open_sequencer, root_signer
from infra.demo import DemoFederation
from infra.keyfiles import KeyFileError
from infra.settings import Settings
from infra.store_role import WrongStoreRole
from infra.writer_lock import LedgerBusy
from ledger.errors import Rejected
from ledger.sequencer import Accepted, Sequencer

DEFAULT_OPERATOR = "op:federation"


@click.command("init")
@ledger_options
@click.option(
    "--chain",
    default=None,
    help="Ledger id, named in every signed transaction, so that none is valid on another"
    " ledger [default: dfg-<8 random hex digits>, unique to this ledger].",
)
@click.option("--origin", default=None, help="Checkpoint origin line [default: dfg.local/<chain>].")
@click.option(
    "--operator",
    default=DEFAULT_OPERATOR,
    show_default=True,
    help="Principal id of the first operator.",
)
@click.option("--name", "display_name", default="DfG federation", show_default=True)
@click.option(
    "--rules",
    type=click.IntRange(1, rules_versions.NEWEST),
    default=rules_versions.NEWEST,
    show_default=True,
    help="The rules version the ledger follows from its first entry (`dfg rules show` says what"
    " each changes); an earlier one while members' tools still send what newer rules refuse.",
)
def init(
    settings: Settings, chain: str | None, origin: str | None, operator: str, display_name: str, rules: int
) -> None:
    """Create a ledger: root key, checkpoint key and the genesis entry."""
    # A fixed default would give every ledger made with defaults one id (a staging
    # ledger and the production one, say), and a transaction signed for one would be
    # valid on the other for a principal whose key is admitted to both.
    chain = f"dfg-{secrets.token_hex(4)}" if chain is None else chain
    try:
        entry = create_ledger(
            settings, chain=chain, origin=origin, operator=operator, display_name=display_name, rules=rules
        )
    except (Rejected, KeyFileError, ValueError, LedgerBusy, WrongStoreRole) as exc:
        fail(str(exc))
    click.echo(f"ledger {chain!r} created in {settings.data_dir} ({settings.engine})")
    click.echo(f"genesis entry 1, leaf hash {entry.leaf_hash.hex()}")
    click.echo(f"checkpoint key (give it to nodes and auditors): {entry.data['ledger']['checkpoint_key']}")
    click.echo(f"keys in {settings.keys_dir} (mode 0600); keep root.jwk offline in production")


@click.group("demo")
def demo() -> None:
    """Demonstration data and walk-throughs."""


@demo.command("populate")
@ledger_options
@checkpoint_options
@click.option(
    "--entries",
    type=click.IntRange(1, 50_000_000),
    default=2000,
    show_default=True,
    help="How many entries to add.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed for the activity's choices.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
def populate(settings: Settings, entries: int, seed: int, batch: int) -> None:
    """Fill a ledger with realistic signed activity."""
    sequencer = _open(settings)
    try:
        _populate(settings, sequencer, entries, seed, batch)
    finally:  # the ledger's writer lock goes with the store
        sequencer.verifier.close()
        sequencer.store.close()


def _populate(settings: Settings, sequencer: Sequencer, entries: int, seed: int, batch: int) -> None:
    chain, operator = ledger_identity(sequencer.store)
    try:
        op = root_signer(settings, chain, operator)
    except KeyFileError as exc:
        fail(f"the demo signs as the ledger's operator: {exc}")
    op.nonce = sequencer.store.last_nonce(operator)
    federation = DemoFederation(chain=chain, operator=op, rng=random.Random(seed))
    if sequencer.store.last_nonce("ids:wallet") > 0:
        fail("this ledger was populated already; demo populate works on a fresh ledger (dfg init)")
    stream = _chain_streams(federation)
    accepted = refused = 0
    started = time.perf_counter()
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("appending signed transactions", total=entries)
        try:
            while accepted < entries:
                chunk = list(islice(stream, min(batch, entries - accepted)))
                outcomes = sequencer.submit(chunk)
                ok = sum(isinstance(o, Accepted) for o in outcomes)
                accepted += ok
                refused += len(outcomes) - ok
                progress.update(task, advance=ok)
        except KeyboardInterrupt:
            sequencer.checkpoint_now()
            fail(
                f"interrupted: the ledger keeps the {accepted:,} entries appended so far (size"
                f" {sequencer.size:,}, verifiable); demo populate works on a fresh ledger only",
                130,
            )
    sequencer.checkpoint_now()
    elapsed = time.perf_counter() - started
    click.echo(
        f"appended {accepted} entries ({refused} refused by the rules) in {elapsed:.1f}s;"
        f" ledger size {sequencer.size}"
    )
    example = federation.example_question()
    if example is not None:
        subject, controller, purpose = example
        # where the ledger is, as given: pasted as printed, the question must find it
        where = f" --data {shlex.quote(str(settings.data_dir))}"
        if settings.database_url:
            where += f" --database-url {shlex.quote(settings.database_url)}"
        click.echo(
            f"a consent to ask about: dfg consents check{where} --subject {subject}"
            f" --controller {controller} --purpose {purpose}"
        )


def _chain_streams(federation: DemoFederation) -> Iterator[str]:
    yield from federation.setup()
    yield from federation.activity()


def _open(settings: Settings) -> Sequencer:
    require_ledger(settings)
    try:
        return open_sequencer(settings)
    except (KeyFileError, RuntimeError) as exc:
        fail(str(exc))
