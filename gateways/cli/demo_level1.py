"""``dfg demo level1``: a well-being app joins at integration Level 1, through the API
and the SDK only (what a provider's backend would do), step by step."""

from __future__ import annotations

import secrets

import click

from gateways.cli.options import fail, http_url, ledger_options
from gateways.sdk import (
    ConsentClient,
    DfgApiError,
    DfgConnectionError,
    TransactionBuilder,
    consent_terms,
    generate_key,
    new_consent_id,
    notice_sha256,
    pseudonym,
    public_jwk,
)
from infra.keyfiles import KeyFileError, read_jwk
from infra.settings import Settings

NOTICE = "Well-being app privacy notice v3: we use your heart-rate data to give you advice."


def _step(text: str) -> None:
    click.secho(f"\n▸ {text}", bold=True)


@click.command("level1")
@ledger_options
@click.option(
    "--url",
    default="http://127.0.0.1:8080",
    show_default=True,
    callback=http_url,
    help="The dfg server (make run).",
)
def level1(settings: Settings, url: str) -> None:
    """A well-being app records consents, uses one, has one withdrawn, and verifies a receipt."""
    client = ConsentClient(url)
    try:
        health = client.health()
    except DfgConnectionError:
        fail(f"no dfg server at {url}: start one with `make run` or `dfg serve --data {settings.data_dir}`")
    chain = health["chain"]
    genesis = client.entry(1)
    checkpoint_key = genesis["event"]["data"]["ledger"]["checkpoint_key"]
    operator_id = genesis["event"]["data"]["principal"]
    click.echo(f"ledger {chain} at {url}, {health['size']} entries")
    click.echo(f"checkpoint key (pin it out of band in production): {checkpoint_key}")

    _step("The operator admits the app (it signs with the federation's key from --data)")
    try:
        operator_key = read_jwk(settings.keys_dir / "root.jwk")
    except KeyFileError as exc:
        fail(f"{exc}; pass --data of the ledger the server runs")
    operator = TransactionBuilder(operator_id, operator_key, chain)
    app_id = f"sp:wellbeing-{secrets.token_hex(3)}"
    app_key = generate_key()
    admitted = client.submit(
        operator.admit_principal(
            principal=app_id, kind="service_provider", jwk=public_jwk(app_key), display_name="Well-being app"
        )
    )
    click.echo(f"{app_id} admitted in entry {admitted.seq}")

    app = TransactionBuilder(app_id, app_key, chain)
    salt = secrets.token_bytes(32)  # the app's pseudonymisation secret: never leaves the app
    users = {name: pseudonym(salt, f"{name}@example.org") for name in ("anna", "ben", "carla")}
    terms = consent_terms(
        purposes=["dpv:ServiceProvision", "dpv:PersonalisedBenefits"],
        data_categories=["dpv-pd:HeartRate", "dpv-pd:PhysicalActivity"],
        notice_url="https://wellbeing.example/privacy/v3",
        notice_sha256=notice_sha256(NOTICE),
    )

    _step("Users consent in the app; the app records a copy of each consent (level 1)")
    consent_ids = {}
    for name, subject in users.items():
        consent_ids[name] = new_consent_id()
        done = client.submit(
            app.give_consent_copy(consent_id=consent_ids[name], subject=subject, terms=terms, method="app")
        )
        click.echo(f"{name} (pseudonym {subject}): consent {consent_ids[name]} recorded in entry {done.seq}")

    _step("The app uses Anna's consent: it checks first, then records the use")
    answer = client.check(users["anna"], app_id, "dpv:ServiceProvision", ["dpv-pd:HeartRate"])
    click.echo(f"check: granted={answer.granted}, deciding entry {answer.seq}")
    used = client.submit(
        app.utilize_consent(
            consent_id=consent_ids["anna"],
            purpose="dpv:ServiceProvision",
            data_categories=["dpv-pd:HeartRate"],
        )
    )
    click.echo(f"use recorded in entry {used.seq}")

    _step("Ben withdraws his consent in the app; the app records it")
    withdrawn = client.submit(app.withdraw_consent(consent_id=consent_ids["ben"], subject=users["ben"]))
    click.echo(f"withdrawal recorded in entry {withdrawn.seq}")
    answer = client.check(users["ben"], app_id, "dpv:ServiceProvision", ["dpv-pd:HeartRate"])
    click.echo(f"check: granted={answer.granted}, reason={answer.reason}")

    _step("The app tries to use Ben's data anyway: the ledger refuses, and records nothing")
    try:
        client.submit(
            app.utilize_consent(
                consent_id=consent_ids["ben"],
                purpose="dpv:ServiceProvision",
                data_categories=["dpv-pd:HeartRate"],
            )
        )
        fail("the ledger accepted a use after withdrawal")
    except DfgApiError as exc:
        click.echo(f"refused: {exc.status} {exc.code}: {exc.detail}")

    _step("Anna's receipt for the use, verified offline (no trust in the server)")
    receipt = client.receipt(used.seq, checkpoint_key=checkpoint_key, keys=public_jwk(app_key))
    click.echo(
        f"entry {receipt.seq} of a tree of {receipt.tree_size} entries: {receipt.tx_type} by"
        f" {receipt.signer}, key {receipt.kid}"
    )
    click.echo(
        f"checkpoint signature ✓  inclusion proof ✓  leaf hash ✓  transaction signature ✓  ({receipt.ts})"
    )
    history = client.history(users["anna"])
    click.echo(f"Anna's history: {', '.join(e['kind'] for e in history['events'])} (newest first)")
    click.echo(f"\nbadge: {url}/v1/badge/{app_id}  (statement: ?format=json)")
