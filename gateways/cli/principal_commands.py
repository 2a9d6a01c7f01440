"""``dfg principals``: the federation's operator admits principals, grants roles and
manages keys; anyone may look a principal up.

Why a command: every participant's first step (a node operator's, a service
provider's, an analyst organisation's) is a transaction the operator signs, and without
one operators wrote scripts against the SDK for it. Each command signs one transaction
with the operator's key (``--key``, by default the root key ``dfg init`` wrote) and
appends it: through a running server (``--api``), or straight to the ledger in
``--data`` when no server holds it, followed by a checkpoint so that it is covered at
once. The ledger's rules decide, as for any transaction: a refusal is printed with its
code and nothing is recorded.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import TypeAdapter, ValidationError

from domain.commands import Kind, PrincipalId
from domain.jwk import PublicJwk
from gateways.cli.options import RFC3339, fail, ledger_options, optional_http_url
from gateways.cli.signed_submit import Build, append_to_ledger, ledger_identity, submit_through_api
from gateways.sdk.client import ConsentClient
from gateways.sdk.errors import DfgApiError
from infra.bootstrap import ROOT_KEY_FILE, open_store
from infra.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
_KINDS = click.Choice([kind.value for kind in Kind])


_PRINCIPAL_ID: TypeAdapter[str] = TypeAdapter(PrincipalId)


def principal_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _PRINCIPAL_ID.validate_python(value)
    except ValidationError as exc:
        raise click.BadParameter(f"{value!r} is not a principal id (kind:name, e.g. node:alpha)") from exc


@dataclass(frozen=True)
class Signing:
    """Who signs, with which key, and where the transaction goes."""

    settings: Settings
    api: str | None
    key: Path | None
    signer: str | None
    as_json: bool


def signing_options(func: F) -> F:
    """``--data``/``--database-url`` (the ledger), ``--api``, ``--key``, ``--signer``,
    ``--json``; passes ``signing``."""

    @ledger_options
    @click.option(
        "--api",
        callback=optional_http_url,
        help="Submit through this running server (dfg serve), e.g. http://ledger:8080,"
        " instead of appending to the ledger in --data.",
    )
    @click.option(
        "--key",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="The signer's private JWK [default: the root key in --data's keys/].",
    )
    @click.option(
        "--signer",
        callback=principal_id,
        help="Who signs [default: the ledger's first operator, from its genesis entry].",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        settings: Settings,
        api: str | None,
        key: Path | None,
        signer: str | None,
        as_json: bool,
        **kwargs: Any,
    ) -> Any:
        return func(*args, signing=Signing(settings, api, key, signer, as_json), **kwargs)

    return wrapper  # type: ignore[return-value]


def _jwk_option(help_text: str, *, required: bool = True) -> Callable[[F], F]:
    """``--jwk FILE`` (or ``-``), passed as ``jwk_file``; read with ``read_public_jwk``."""
    return click.option(
        "--jwk",
        "jwk_file",
        required=required,
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        help=help_text,
    )


@click.group("principals")
def principals() -> None:
    """Admit principals, grant roles and manage keys (the operator); look one up."""


@principals.command("admit")
@signing_options
@click.argument("principal", callback=principal_id)
@click.option("--kind", required=True, type=_KINDS, help="What the principal is; also its first role.")
@_jwk_option(
    "Its public JWK: a file (or - for stdin) holding the JWK, or what `dfg node keygen`"
    " printed. Citizens held by a custodian may have none.",
    required=False,
)
@click.option("--display-name", help="The name shown for an organisation (never for a citizen).")
@click.option("--custodian", callback=principal_id, help="Who holds a citizen's key for them.")
def admit(
    signing: Signing,
    principal: str,
    kind: str,
    jwk_file: Path | None,
    display_name: str | None,
    custodian: str | None,
) -> None:
    """Admit PRINCIPAL with its public key (principal.admit)."""
    jwk = None if jwk_file is None else read_public_jwk(jwk_file)
    seq = submit_signed(
        signing,
        lambda b: b.admit_principal(
            principal=principal, kind=kind, jwk=jwk, display_name=display_name, custodian=custodian
        ),
    )
    _say(signing, seq, f"admitted {principal} ({kind})", principal=principal)


@principals.command("grant-role")
@signing_options
@click.argument("principal", callback=principal_id)
@click.argument("role", type=_KINDS)
def grant_role(signing: Signing, principal: str, role: str) -> None:
    """Grant PRINCIPAL the ROLE (principal.grant_role)."""
    seq = submit_signed(signing, lambda b: b.grant_role(principal=principal, role=role))
    _say(signing, seq, f"granted {role} to {principal}", principal=principal)


@principals.command("revoke-role")
@signing_options
@click.argument("principal", callback=principal_id)
@click.argument("role", type=_KINDS)
def revoke_role(signing: Signing, principal: str, role: str) -> None:
    """Take the ROLE from PRINCIPAL (principal.revoke_role)."""
    seq = submit_signed(signing, lambda b: b.revoke_role(principal=principal, role=role))
    _say(signing, seq, f"revoked {role} from {principal}", principal=principal)


@principals.command("add-key")
@signing_options
@click.argument("principal", callback=principal_id)
@_jwk_option("The new public JWK (a file, or - for stdin).")
@click.option("--not-before", type=RFC3339, help="Valid from (RFC 3339, e.g. 2026-01-01T00:00:00Z).")
@click.option("--not-after", type=RFC3339, help="Valid until (RFC 3339).")
def add_key(
    signing: Signing,
    principal: str,
    jwk_file: Path,
    not_before: datetime | None,
    not_after: datetime | None,
) -> None:
    """Add a key to PRINCIPAL, usable from the next entry (key.add)."""
    jwk = read_public_jwk(jwk_file)
    seq = submit_signed(
        signing,
        lambda b: b.add_key(principal=principal, jwk=jwk, not_before=not_before, not_after=not_after),
    )
    _say(signing, seq, f"added a key to {principal}", principal=principal)


@principals.command("rotate-key")
@signing_options
@click.argument("principal", callback=principal_id)
@click.option("--old-kid", required=True, help="The key id to replace (principal#thumbprint).")
@_jwk_option("The replacing public JWK (a file, or - for stdin).")
def rotate_key(signing: Signing, principal: str, old_kid: str, jwk_file: Path) -> None:
    """Replace one of PRINCIPAL's keys; the old one is revoked as superseded (key.rotate)."""
    jwk = read_public_jwk(jwk_file)
    seq = submit_signed(signing, lambda b: b.rotate_key(principal=principal, old_kid=old_kid, jwk=jwk))
    _say(signing, seq, f"rotated {old_kid}", principal=principal)


@principals.command("revoke-key")
@signing_options
@click.argument("principal", callback=principal_id)
@click.option("--kid", required=True, help="The key id to revoke (principal#thumbprint).")
@click.option(
    "--reason",
    type=click.Choice(["compromised", "superseded", "retired"]),
    default="retired",
    show_default=True,
)
def revoke_key(signing: Signing, principal: str, kid: str, reason: str) -> None:
    """Revoke one of PRINCIPAL's keys from the next entry on (key.revoke)."""
    seq = submit_signed(signing, lambda b: b.revoke_key(principal=principal, kid=kid, reason=reason))
    _say(signing, seq, f"revoked {kid} ({reason})", principal=principal)


@principals.command("show")
@ledger_options
@click.option("--api", callback=optional_http_url, help="Ask this running server instead of --data.")
@click.argument("principal", callback=principal_id)
def show(settings: Settings, api: str | None, principal: str) -> None:
    """PRINCIPAL's kind, roles and keys (with when each was added or revoked), as JSON."""
    if api is not None:
        try:
            found: dict[str, Any] | None = ConsentClient(api).principal(principal)
        except DfgApiError as exc:
            if exc.code == "unknown_principal":
                fail(f"{principal} is not admitted on this ledger")
            fail(f"{api}: {exc.code}: {exc.detail}")
    else:
        found = _principal_here(settings, principal)
    if found is None:
        fail(f"{principal} is not admitted on this ledger")
    click.echo(json.dumps(found, indent=2, sort_keys=True))


def _principal_here(settings: Settings, principal: str) -> dict[str, Any] | None:
    from gateways.cli.projection_commands import open_caught_up
    from projections.keys import PrincipalsView
    from projections.keys import principal as find_principal

    store, db = open_caught_up(settings, [PrincipalsView()])
    try:
        with db.transaction(commit=False) as cursor:
            return find_principal(cursor, principal)
    finally:
        db.close()
        store.close()


# --- signing and submitting ---------------------------------------------------------------


def read_public_jwk(path: Path) -> dict[str, str]:
    """A public JWK from a file or stdin: the JWK itself, or an object with a ``jwk``
    member (what `dfg node keygen` prints). A private key is refused: only its owner
    should ever hold it."""
    where = "stdin" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"--jwk {where}: not a JSON file ({exc})", 2)
    if isinstance(data, dict) and "kty" not in data and isinstance(data.get("jwk"), dict):
        data = data["jwk"]
    if not isinstance(data, dict):
        fail(f"--jwk {where}: not a JWK (a JSON object with kty)", 2)
    if "d" in data:
        fail(f"--jwk {where} holds a private key: give the public JWK (its owner keeps the private one)", 2)
    try:
        return PublicJwk.model_validate(data).as_dict()
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        fail(f"--jwk {where}: not a public key the ledger accepts ({problems})", 2)


def submit_signed(signing: Signing, build: Build) -> int:
    """Sign with the signer's key and append; the new entry's number."""
    key = signing.key if signing.key is not None else signing.settings.keys_dir / ROOT_KEY_FILE
    if signing.api is not None:
        signer = signing.signer or _operator_here(signing.settings)
        return submit_through_api(signing.api, key, signer, build)
    return append_to_ledger(signing.settings, key, signing.signer, build)


def _operator_here(settings: Settings) -> str:
    """The genesis operator of the ledger in --data, when --signer is not given."""
    if not settings.database_url and not settings.ledger_file.exists():
        fail(f"no ledger in {settings.data_dir} to take the signer from: give --signer", 2)
    store = open_store(settings, read_only=True)
    try:
        return ledger_identity(store)[1]
    finally:
        store.close()


def _say(signing: Signing, seq: int, what: str, *, principal: str) -> None:
    if signing.as_json:
        click.echo(json.dumps({"seq": seq, "principal": principal, "done": what}))
    else:
        click.echo(f"{what} in entry {seq}")
