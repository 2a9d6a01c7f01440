"""``dfg rules``: which version of the ledger's rules decides new entries, and the
operator's move to a newer one (``domain.rules`` says why rules are versioned).

A ledger made by an earlier release follows version 1 until its operator adopts a
newer one; what each version changes is printed by ``dfg rules show``, so that the
federation can agree on it first (a stricter rule refuses transactions its members'
tools may still send).
"""

from __future__ import annotations

import json

import click

from domain import rules
from gateways.cli.options import fail, ledger_options, require_ledger
from gateways.cli.principal_commands import Signing, signing_options, submit_signed
from infra.bootstrap import open_store
from infra.settings import Settings
from ledger.store import genesis_parameters


@click.group("rules")
def rules_group() -> None:
    """The version of the ledger's rules: show it, or adopt a newer one (the operator)."""


@rules_group.command("show")
@ledger_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(settings: Settings, as_json: bool) -> None:
    """The version that decides the next entry, and what each known version changes."""
    require_ledger(settings)
    store = open_store(settings, read_only=True)
    try:
        genesis = rules.genesis_version(genesis_parameters(store))
        adopted = store.load_aggregate(rules.RULES_AGGREGATE_ID)
    finally:
        store.close()
    version = rules.in_effect(adopted, genesis)
    report = {
        "version": version,
        "genesis_version": genesis,
        "newest_known": rules.NEWEST,
        "changes": {str(v): text for v, text in rules.CHANGES.items()},
    }
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        if version > rules.NEWEST:
            raise SystemExit(1)  # as in text: this dfg cannot decide this ledger's entries
        return
    click.echo(f"rules version {version} decides new entries (the genesis entry named {genesis})")
    for number, text in rules.CHANGES.items():
        mark = "*" if number == version else " "
        click.echo(f" {mark} {number}: {text}")
    if version < rules.NEWEST:
        click.echo(f"this dfg knows version {rules.NEWEST}: the operator adopts it with `dfg rules adopt`")
    elif version > rules.NEWEST:
        fail(f"this ledger follows version {version}, newer than this dfg knows: upgrade dfg")


@rules_group.command("adopt")
@signing_options
@click.argument("version", type=click.IntRange(2))
def adopt(signing: Signing, version: int) -> None:
    """Decide entries by rules VERSION from the next entry on (ledger.adopt_rules).

    Entries before it keep the version they were decided by, and every audit and
    replica replays them so."""
    seq = submit_signed(signing, lambda b: b.sign("ledger.adopt_rules", {"version": version}))
    if signing.as_json:
        click.echo(json.dumps({"seq": seq, "version": version}))
    else:
        click.echo(f"rules version {version} decides the entries after entry {seq}")
