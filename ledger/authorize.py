"""The checks between a valid signature and the domain: shared by the sequencer and
the audit, so that what was accepted is exactly what an auditor re-checks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from domain.commands import Genesis
from domain.handlers import State
from domain.jwk import PublicJwk
from domain.principal import Principal
from ledger.errors import Rejected, shown
from ledger.jws import key_json, public_key
from ledger.transaction import Transaction

SignatureCheck = Callable[[dict[str, Any]], bool]


def signing_key(tx: Transaction, state: State) -> dict[str, Any] | None:
    """The JWK that should have signed ``tx`` given ``state`` (None if unknown)."""
    if tx.type == "ledger.genesis" and isinstance(tx.command, Genesis):
        return tx.command.jwk.as_dict()
    principal = state.principal(tx.signer)
    key = principal.keys.get(tx.jws.kid) if principal is not None else None
    return key.jwk if key is not None else None


def authorise(
    tx: Transaction,
    *,
    state: State,
    ledger: dict[str, str] | None,
    last_nonce: int,
    now: datetime,
    signature_ok: SignatureCheck,
) -> Principal | None:
    """Refuse ``tx`` unless its key may sign now, it is for this chain, still valid and
    its nonce is fresh. Returns the signer (None for the genesis entry)."""
    signer: Principal | None = None
    jwk: dict[str, Any] | None
    if ledger is None:
        if tx.type != "ledger.genesis":
            raise Rejected("no_genesis", "this ledger has no genesis entry yet")
        _authorise_genesis(tx)
        jwk = signing_key(tx, state)
    else:
        if tx.type == "ledger.genesis":
            raise Rejected("genesis_exists", "this ledger already has a genesis entry")
        if tx.payload.chain != ledger["chain"]:
            raise Rejected(
                "wrong_chain",
                f"transaction is for chain {tx.payload.chain!r}, this is {ledger['chain']!r}",
            )
        signer = _signer_with_usable_key(tx, state, now)
        jwk = signer.keys[tx.jws.kid].jwk
    if jwk is None or not signature_ok(jwk):
        raise Rejected("bad_signature", "the signature does not verify")
    if now.timestamp() > tx.payload.valid_until:
        raise Rejected("expired", f"valid_until {tx.payload.valid_until} has passed")
    if tx.payload.nonce <= last_nonce:
        raise Rejected(
            "nonce_reused",
            f"nonce {tx.payload.nonce} of {tx.signer} is not above the last accepted nonce",
        )
    _check_new_key(tx)
    return signer


def _check_new_key(tx: Transaction) -> None:
    """A key that cannot be imported (e.g. a point off its curve) could never sign:
    refuse to record it."""
    jwk = vars(tx.command).get("jwk")  # not getattr: a miss costs pydantic an exception
    if isinstance(jwk, PublicJwk):  # a signing key (a node's X25519 encryption key is not one)
        public_key(key_json(jwk.as_dict()))  # raises Rejected("invalid_key", ...)


def _authorise_genesis(tx: Transaction) -> None:
    command = tx.command
    assert isinstance(command, Genesis)
    if tx.payload.chain != command.ledger.chain:
        raise Rejected("wrong_chain", "the genesis payload chain must equal its ledger chain")
    if tx.signer != command.operator or tx.jws.kid != f"{command.operator}#{command.jwk.thumbprint()}":
        raise Rejected("unknown_key", "the genesis entry is signed by the key it introduces")


def _signer_with_usable_key(tx: Transaction, state: State, now: datetime) -> Principal:
    principal = state.principal(tx.signer)
    if principal is None:
        raise Rejected("unknown_signer", f"{tx.signer} is not admitted on this ledger")
    key = principal.keys.get(tx.jws.kid)
    if key is None:
        raise Rejected("unknown_key", f"{shown(tx.jws.kid)} is not a registered key")
    problem = key.usable_at(now)
    if problem is not None:
        raise Rejected(problem, f"{tx.jws.kid} may not sign now ({problem.replace('_', ' ')})")
    return principal
