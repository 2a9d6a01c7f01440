"""Signed deliveries: only a datasource's owner may hand a node share bundles for it.

Why: a bundle proves nothing until it matches the commitment its provider signs on the
ledger, and a provider delivers before it commits. A node's inbox that took bundles
from anyone could be filled, or made to drop the bundle the ledger names, by anyone who
knows the node's public key. So each delivery carries a statement signed with the
provider's ledger key: this datasource, this node, these bytes (their SHA-256), now.
The node checks it against the keys its own replica holds for the datasource's owner,
as it checks everything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from domain.identifiers import split_kid
from domain.principal import KeyState
from domain.times import parse_time
from gateways.sdk.builders import TransactionBuilder
from ledger.errors import Rejected, shown
from ledger.jws import parse_compact, verify_signature

#: The HTTP request header that carries the statement.
HEADER = "Dfg-Delivery"
#: How far a statement's time may be from the node's clock (seconds).
MAX_SKEW_S = 600


class DeliveryRefused(Exception):
    """Why a node refuses a delivery: an HTTP status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def delivery_statement(
    provider: TransactionBuilder, datasource_id: str, node: str, digest: str, now: float
) -> str:
    """What the provider sends with the bundle sealed for ``node`` (``digest``: its SHA-256)."""
    return provider.sign_statement(
        {"datasource": datasource_id, "node": node, "sha256": digest, "signed_at": int(now)}
    )


def verified_statement(
    token: str | None,
    *,
    owner: str,
    owner_keys: Sequence[Mapping[str, Any]],
    datasource_id: str,
    now: float,
) -> dict[str, Any]:
    """The statement, once it is shown to be the datasource owner's, made recently with a
    current key of the owner, for this datasource; else ``DeliveryRefused``. Checked
    before the bundle is read, so that nobody else can make a node read one."""
    if not token:
        raise DeliveryRefused(401, "delivery_unsigned", f"a delivery needs the provider's {HEADER} header")
    try:
        jws = parse_compact(token)
        statement = json.loads(jws.payload)
    except (Rejected, ValueError) as exc:
        raise DeliveryRefused(
            400, "invalid_delivery", f"the {HEADER} header is not a signed statement"
        ) from exc
    try:
        signer = split_kid(jws.kid)[0]
    except ValueError as exc:
        raise DeliveryRefused(400, "invalid_delivery", str(exc)) from exc
    if signer != owner:
        raise DeliveryRefused(
            403, "not_the_owner", f"{signer} signed this delivery; datasource {datasource_id} is {owner}'s"
        )
    key = next((k for k in owner_keys if k.get("kid") == jws.kid), None)
    if key is None or key_state(key).usable_at(datetime.fromtimestamp(now, UTC)) is not None:
        raise DeliveryRefused(403, "unknown_key", f"{shown(jws.kid)} is not a current key of {owner}")
    if not verify_signature(jws, key["jwk"]):
        raise DeliveryRefused(403, "bad_signature", "the delivery's signature does not verify")
    if not isinstance(statement, dict) or statement.get("datasource") != datasource_id:
        raise DeliveryRefused(
            403, "delivery_mismatch", f"the signed statement is not for datasource {datasource_id}"
        )
    signed_at = statement.get("signed_at")
    if not isinstance(signed_at, int) or abs(now - signed_at) > MAX_SKEW_S:
        raise DeliveryRefused(
            403, "delivery_expired", f"the statement was not signed within {MAX_SKEW_S} s of the node's clock"
        )
    return statement


def check_matches(statement: Mapping[str, Any], *, node: str, digest: str) -> None:
    """``DeliveryRefused`` unless the verified statement names this bundle: sealed for
    ``node``, with SHA-256 ``digest``."""
    wrong = [name for name, value in (("node", node), ("sha256", digest)) if statement.get(name) != value]
    if wrong:
        raise DeliveryRefused(
            403,
            "delivery_mismatch",
            f"the signed statement names another {' and '.join(wrong)} than delivered",
        )


def key_state(row: Mapping[str, Any]) -> KeyState:
    """A key as the read model lists it (``projections.keys.principal``), in the domain's
    terms, so that whether it may sign now is decided as the ledger decides it."""
    start, end = row.get("not_before"), row.get("not_after")
    return KeyState(
        kid=str(row["kid"]),
        jwk=dict(row["jwk"]),
        not_before=parse_time(start) if start else None,
        not_after=parse_time(end) if end else None,
        revoked=(row.get("revoked_reason") or "revoked") if row.get("revoked_seq") is not None else None,
    )
