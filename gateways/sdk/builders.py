"""Signed transactions, one method per type, checked locally before they are signed.

Each body is validated with the ledger's own models (domain/commands.py), so a
malformed body fails here, with pydantic's message, instead of costing a round trip
and a ``invalid_body`` refusal; and it is signed by the ledger's reference signer
(ledger/signing.py), so the envelope is byte-for-byte what the ledger expects.
Nothing here talks to the network: submit the returned JWS with a client.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from domain.commands import ConsentTerms
from domain.handlers import COMMANDS
from gateways.sdk.keys import PrivateKey, load_key, public_jwk
from gateways.sdk.nonces import NonceSource
from gateways.sdk.results import code_list
from ledger.canonical import canonical_json
from ledger.jws import parse_compact, sign_compact
from ledger.signing import DEFAULT_VALIDITY_S, TransactionSigner

JwkLike = PrivateKey | Mapping[str, str]
TermsLike = ConsentTerms | Mapping[str, Any]


def new_consent_id() -> uuid.UUID:
    """A fresh consent id (the controller chooses it; it is scoped by controller)."""
    return uuid.uuid4()


def notice_sha256(text: str | bytes) -> str:
    """Hex SHA-256 of the exact notice text the person saw (``terms.notice.sha256``)."""
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def consent_terms(
    *,
    purposes: Iterable[str],
    data_categories: Iterable[str],
    notice_url: str,
    notice_sha256: str,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
) -> dict[str, Any]:
    """The ``terms`` object (ISO/IEC TS 27560 fields), validated, as JSON-ready data."""
    terms = ConsentTerms(
        purposes=code_list("purposes", purposes),
        data_categories=code_list("data_categories", data_categories),
        notice={"url": notice_url, "sha256": notice_sha256},  # type: ignore[arg-type]
        valid_from=valid_from,
        valid_until=valid_until,
    )
    return terms.model_dump(mode="json", exclude_none=True)


def decode_payload(token: str) -> dict[str, Any]:
    """The payload of a compact JWS (not verified: for logging and bookkeeping only)."""
    payload: dict[str, Any] = json.loads(parse_compact(token).payload)
    return payload


class TransactionBuilder:
    """One principal's signing identity: builds, validates and signs its transactions.

    ``last_nonce`` restores the last nonce you persisted (``builder.last_nonce``);
    without it nonces come from the clock in microseconds, so a restart never reuses
    one. ``on_nonce`` is called with every nonce before the JWS is returned, the
    place to persist it. ``valid_for`` bounds how long a JWS may be (re)submitted for
    the first time (seconds; the ledger refuses it as ``expired`` afterwards).
    """

    def __init__(
        self,
        principal: str,
        key: PrivateKey,
        chain: str,
        *,
        last_nonce: int = 0,
        nonces: NonceSource | None = None,
        valid_for: int = DEFAULT_VALIDITY_S,
        clock: Callable[[], float] = time.time,
        on_nonce: Callable[[int], None] | None = None,
    ) -> None:
        self._signer = TransactionSigner(principal=principal, key=key, chain=chain)
        self._nonces = nonces if nonces is not None else NonceSource(last_nonce)
        self.valid_for = valid_for
        self._clock = clock
        self._on_nonce = on_nonce

    @classmethod
    def from_key_file(
        cls, path: str | os.PathLike[str], principal: str, chain: str, **options: Any
    ) -> TransactionBuilder:
        """A builder whose key is read from a private JWK file (mode 0600)."""
        return cls(principal, load_key(path), chain, **options)

    @property
    def principal(self) -> str:
        return self._signer.principal

    @property
    def chain(self) -> str:
        return self._signer.chain

    @property
    def kid(self) -> str:
        return self._signer.kid

    @property
    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self._signer.key)

    @property
    def last_nonce(self) -> int:
        """Persist this (or rely on the clock) so the next process continues above it."""
        return self._nonces.last

    # --- the generic path --------------------------------------------------------------

    def sign(self, tx_type: str, body: Mapping[str, Any]) -> str:
        """Validate ``body`` with the type's model, take the next nonce, sign."""
        model = COMMANDS.get(tx_type)
        if model is None:
            raise ValueError(f"unknown transaction type {tx_type!r}")
        clean = model.model_validate({k: v for k, v in body.items() if v is not None})
        nonce = self._nonces.next()
        if self._on_nonce is not None:
            self._on_nonce(nonce)
        return self._signer.sign(
            tx_type,
            clean.model_dump(mode="json", exclude_none=True),
            now=self._clock(),
            valid_for=self.valid_for,
            nonce=nonce,
        )

    def sign_statement(self, payload: Mapping[str, Any]) -> str:
        """A compact JWS over ``payload`` (canonical JSON) with this builder's key and
        kid, for a statement made to someone other than the ledger (a share bundle's
        delivery to a node, ``gateways.deliveries``). It is not a transaction: no chain,
        nonce or type, so the ledger would refuse it."""
        return sign_compact(canonical_json(dict(payload)), self.kid, self._signer.key)

    # --- consents ----------------------------------------------------------------------

    def give_consent_copy(
        self, *, consent_id: uuid.UUID | str, subject: str, terms: TermsLike, method: str = "web_form"
    ) -> str:
        """Level 1: record a copy of a consent this controller collected itself."""
        return self.sign(
            "consent.give",
            {
                "consent_id": consent_id,
                "controller": self.principal,
                "subject": subject,
                "level": 1,
                "method": method,
                "terms": _terms(terms),
            },
        )

    def give_consent(
        self,
        *,
        consent_id: uuid.UUID | str,
        controller: str,
        subject: str,
        method: str = "wallet",
        terms: TermsLike | None = None,
    ) -> str:
        """Level 2: the subject (or their custodial wallet) gives or accepts a consent."""
        return self.sign(
            "consent.give",
            {
                "consent_id": consent_id,
                "controller": controller,
                "subject": subject,
                "level": 2,
                "method": method,
                "terms": None if terms is None else _terms(terms),
            },
        )

    def request_consent(self, *, consent_id: uuid.UUID | str, subject: str, terms: TermsLike) -> str:
        """Ask a subject for consent; this signer is the controller."""
        return self.sign(
            "consent.request", {"consent_id": consent_id, "subject": subject, "terms": _terms(terms)}
        )

    def decline_consent(self, *, consent_id: uuid.UUID | str, controller: str, subject: str) -> str:
        return self.sign(
            "consent.decline", {"consent_id": consent_id, "controller": controller, "subject": subject}
        )

    def withdraw_consent(
        self, *, consent_id: uuid.UUID | str, subject: str, controller: str | None = None
    ) -> str:
        """Withdraw (a controller may withdraw its own level 1 copies; default controller: me)."""
        return self.sign(
            "consent.withdraw",
            {"consent_id": consent_id, "controller": controller or self.principal, "subject": subject},
        )

    def utilize_consent(
        self, *, consent_id: uuid.UUID | str, purpose: str, data_categories: Iterable[str]
    ) -> str:
        """Record a use; the ledger refuses it unless the consent covers it at that moment."""
        return self.sign(
            "consent.utilize",
            {
                "consent_id": consent_id,
                "purpose": purpose,
                "data_categories": code_list("data_categories", data_categories),
            },
        )

    # --- principals and keys -------------------------------------------------------------

    def admit_principal(
        self,
        *,
        principal: str,
        kind: str,
        jwk: JwkLike | None = None,
        display_name: str | None = None,
        custodian: str | None = None,
    ) -> str:
        """Operator (or identity service, for citizens): admit a principal with its public key."""
        return self.sign(
            "principal.admit",
            {
                "principal": principal,
                "kind": kind,
                "jwk": None if jwk is None else public_jwk(jwk),
                "display_name": display_name,
                "custodian": custodian,
            },
        )

    def grant_role(self, *, principal: str, role: str) -> str:
        return self.sign("principal.grant_role", {"principal": principal, "role": role})

    def revoke_role(self, *, principal: str, role: str) -> str:
        return self.sign("principal.revoke_role", {"principal": principal, "role": role})

    def add_key(
        self,
        *,
        jwk: JwkLike,
        principal: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> str:
        """Add a key (usable from the next entry); default principal: me."""
        return self.sign(
            "key.add",
            {
                "principal": principal or self.principal,
                "jwk": public_jwk(jwk),
                "not_before": not_before,
                "not_after": not_after,
            },
        )

    def rotate_key(self, *, old_kid: str, jwk: JwkLike, principal: str | None = None) -> str:
        """Replace ``old_kid`` by ``jwk`` (the old key is revoked as superseded).

        Sign further transactions with a builder holding the new key."""
        return self.sign(
            "key.rotate",
            {"principal": principal or self.principal, "old_kid": old_kid, "jwk": public_jwk(jwk)},
        )

    def revoke_key(self, *, kid: str, reason: str = "retired", principal: str | None = None) -> str:
        return self.sign(
            "key.revoke", {"principal": principal or self.principal, "kid": kid, "reason": reason}
        )


def _terms(terms: TermsLike) -> Any:
    if isinstance(terms, ConsentTerms):
        return terms.model_dump(mode="json", exclude_none=True)
    return dict(terms)
