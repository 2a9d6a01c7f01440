"""``dfg node set-encryption-key`` and ``dfg node set-policy``: what a node operator
records on the ledger, signed with its own node key, before its node computes.

Why commands: providers seal each node's shares to the X25519 key the node registered
(``node.set_encryption_key``), and a node organisation approves results only under its
recorded output policy (``node.set_policy``); both were SDK scripts before.
"""

from __future__ import annotations

from pathlib import Path

import click

from gateways.cli.node_engine_wiring import okp_key
from gateways.cli.options import http_url
from gateways.cli.principal_commands import principal_id
from gateways.cli.signed_submit import submit_through_api

_COORDINATOR = click.option(
    "--coordinator",
    required=True,
    callback=http_url,
    help="The ledger's server (dfg serve), e.g. http://ledger:8080.",
)
_NAME = click.option("--name", required=True, callback=principal_id, help="This node's principal id.")


def _signing_key(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """The X25519 file given here (the two are easily swapped) was refused only when
    signed, as "not a valid transaction: crv: ...", naming no option."""
    okp_key(value, "Ed25519", "--key")
    return value


_KEY = click.option(
    "--key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    callback=_signing_key,
    help="The node's Ed25519 key (from dfg node keygen --out): it signs.",
)


@click.command("set-encryption-key")
@_COORDINATOR
@_NAME
@_KEY
@click.option(
    "--encryption-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The node's X25519 key (from dfg node keygen --encryption-out); its public half is recorded.",
)
def set_encryption_key(coordinator: str, name: str, key: Path, encryption_key: Path) -> None:
    """Record the X25519 key that providers seal this node's share bundles to."""
    public = okp_key(encryption_key, "X25519", "--encryption-key").as_dict(private=False)
    jwk = {"kty": "OKP", "crv": "X25519", "x": str(public["x"])}
    seq = submit_through_api(
        coordinator, key, name, lambda b: b.sign("node.set_encryption_key", {"jwk": jwk})
    )
    click.echo(f"{name}'s encryption key recorded in entry {seq}")


@click.command("set-policy")
@_COORDINATOR
@_NAME
@_KEY
@click.option(
    "--min-cell",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Approve results only if every released statistic aggregates at least this many records.",
)
@click.option(
    "--release-extremes/--no-release-extremes",
    default=False,
    show_default=True,
    help="Whether min and max may be released.",
)
@click.option(
    "--approval",
    type=click.Choice(["automatic", "manual"]),
    default="manual",
    show_default=True,
    help="Approve results that meet the policy by itself, or wait for a person.",
)
def set_policy(
    coordinator: str, name: str, key: Path, min_cell: int, release_extremes: bool, approval: str
) -> None:
    """Record this node organisation's output policy."""
    policy = {"min_cell": min_cell, "release_extremes": release_extremes, "approval": approval}
    seq = submit_through_api(coordinator, key, name, lambda b: b.sign("node.set_policy", policy))
    click.echo(f"{name}'s policy recorded in entry {seq}: {policy}")
