"""Checking a receipt offline, trusting nothing the server says.

A receipt (GET /v1/entries/{seq}) proves that an entry is in the ledger whose signed
checkpoint you hold; ``ledger.receipt.verify_receipt`` checks that part (checkpoint
signature, leaf hash, RFC 9162 inclusion proof, numbering). It does not show that
the transaction inside the entry was really signed by the principal it names: the
operator holds the checkpoint key and could sequence a forged entry. So this module
also verifies the JWS inside the entry against a public key *you* supply or pinned
earlier; the inclusion check already refuses a receipt whose unauthenticated extras
(``jws``, ``event``, ``leaf_hash``) disagree with the proven entry bytes.

What it does not check is whether the ledger applied its rules correctly (that key
was usable at that instant, the nonce, the consent rules): that is the audit's job
(``dfg audit verify``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from domain.identifiers import split_kid
from domain.jwk import PublicJwk
from ledger.entry import Entry, EntryFormatError
from ledger.errors import Rejected
from ledger.jws import parse_compact, verify_signature
from ledger.note import Verifier
from ledger.receipt import Receipt, ReceiptError
from ledger.receipt import verify_receipt as verify_inclusion_receipt
from ledger.transaction import parse_transaction
from ledger.witness import WitnessPolicy

__all__ = [
    "KeyRing",
    "ReceiptError",
    "VerifiedReceipt",
    "kid_in_receipt",
    "principal_to_fetch",
    "required_checkpoint_key",
    "verify_receipt",
]


class KeyRing:
    """Public keys by kid, each checked against the thumbprint inside its kid.

    A kid is ``<principal>#<RFC 7638 thumbprint>``, so a key fetched from any source
    (even the server) can only be pinned under the kid it really hashes to: the
    server cannot substitute another key for a kid you already know. What fetching
    does trust is that the principal owns that kid; pin your own keys and your
    partners' keys from your own records when that matters.
    """

    def __init__(self, keys: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._keys: dict[str, dict[str, str]] = {}
        if keys is not None and not isinstance(keys, Mapping):
            raise TypeError(
                f"a KeyRing is made from a mapping kid -> public JWK, not a {type(keys).__name__}"
            )
        for kid, jwk in (keys or {}).items():
            self.pin(kid, jwk)

    def pin(self, kid: str, jwk: Mapping[str, str]) -> None:
        """Remember ``jwk`` as the key of ``kid``; refused unless its thumbprint matches."""
        public = _public_jwk(jwk)
        try:
            _, thumbprint = split_kid(kid)
        except ValueError as exc:
            raise ReceiptError(str(exc)) from exc
        if public.thumbprint() != thumbprint:
            raise ReceiptError(f"the key offered for {kid} has another thumbprint")
        self._keys[kid] = public.as_dict()

    def add(self, principal: str, jwk: Mapping[str, str]) -> str:
        """Pin ``jwk`` as a key of ``principal``; returns its kid."""
        public = _public_jwk(jwk)
        kid = f"{principal}#{public.thumbprint()}"
        self.pin(kid, public.as_dict())
        return kid

    def pin_principal(self, view: Mapping[str, Any]) -> list[str]:
        """Pin every key of a principal document (GET /v1/principals/{id}); returns the kids."""
        owner = str(view["principal"])
        kids = []
        for key in view.get("keys", []):
            kid = str(key["kid"])
            if split_kid(kid)[0] != owner:
                raise ReceiptError(f"key {kid} is listed under {owner}")
            self.pin(kid, key["jwk"])
            kids.append(kid)
        return kids

    def get(self, kid: str) -> dict[str, str] | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def as_dict(self) -> dict[str, dict[str, str]]:
        """kid -> public JWK: store it, and pass it back to ``KeyRing(...)`` to restore the pins."""
        return {kid: dict(jwk) for kid, jwk in self._keys.items()}


def _public_jwk(jwk: Mapping[str, str]) -> PublicJwk:
    """The public part of ``jwk``; anything that is not a supported public JWK is a
    ``ReceiptError`` like any other reason a receipt cannot be checked."""
    try:
        return PublicJwk.model_validate({k: v for k, v in jwk.items() if k in {"kty", "crv", "x", "y"}})
    except (ValidationError, AttributeError, TypeError) as exc:
        raise ReceiptError(f"not a public JWK the ledger accepts: {exc}") from None


@dataclass(frozen=True)
class VerifiedReceipt:
    """What a receipt proved: entry ``seq`` of a tree of ``tree_size`` entries, made from
    a transaction of ``tx_type`` signed by ``signer`` with key ``kid``."""

    seq: int
    tree_size: int
    ts: str
    kid: str
    signer: str
    tx_type: str
    event: str
    payload: dict[str, Any] = field(repr=False)
    data: dict[str, Any] = field(repr=False)


Keys = KeyRing | Mapping[str, Mapping[str, str]] | Mapping[str, str]


def kid_in_receipt(receipt_json: Mapping[str, Any]) -> str:
    """The kid named inside the receipt's entry (unverified: to know which key to pin)."""
    try:
        tx = json.loads(str(receipt_json["entry"]))["tx"]
        return parse_compact(tx).kid
    except (KeyError, TypeError, ValueError, Rejected) as exc:
        raise ReceiptError(f"the receipt's entry names no signing key: {exc}") from exc


def verify_receipt(
    receipt_json: Mapping[str, Any],
    checkpoint_key: str | Verifier,
    keys: Keys,
    *,
    origin: str | None = None,
    chain: str | None = None,
    witnesses: WitnessPolicy | None = None,
) -> VerifiedReceipt:
    """Verify a receipt with no trust in the server; raises ``ReceiptError``.

    ``checkpoint_key`` is the ledger's note verifier key, obtained out of band.
    ``keys`` is the signer's public JWK, or a ``KeyRing`` / mapping kid -> JWK.
    ``chain``, when given, must be the chain named in the signed transaction.
    ``witnesses`` (``WitnessPolicy.from_keys(vkeys, quorum)``), when given, requires
    that many of those node operators to have cosigned the checkpoint.
    """
    # A JSON file may hold anything: what is not an object is "not a receipt" (a
    # ReceiptError, as documented), not the TypeError or ValueError of ``dict()``.
    receipt = Receipt.from_json(dict(receipt_json) if isinstance(receipt_json, Mapping) else receipt_json)
    try:
        is_object = isinstance(json.loads(receipt.entry), dict)
    except ValueError:
        is_object = False
    if not is_object:  # ledger.receipt would raise AttributeError on e.g. "[1]"
        raise ReceiptError("the entry is not a JSON object")
    seq = verify_inclusion_receipt(receipt, checkpoint_key, origin=origin, witnesses=witnesses)
    try:
        entry = Entry.decode(receipt.entry)
    except EntryFormatError as exc:
        raise ReceiptError(f"the proven entry is not a canonical entry: {exc}") from exc
    try:
        tx = parse_transaction(entry.tx)
    except Rejected as exc:
        raise ReceiptError(f"the entry's transaction does not parse: {exc}") from exc
    jwk = _key_for(tx.jws.kid, tx.signer, keys)
    if not verify_signature(tx.jws, jwk):
        raise ReceiptError(f"the transaction's JWS signature does not verify with key {tx.jws.kid}")
    if chain is not None and tx.payload.chain != chain:
        raise ReceiptError(f"the transaction is for chain {tx.payload.chain!r}, not {chain!r}")
    ts = json.loads(receipt.entry)["ts"]
    return VerifiedReceipt(
        seq=seq,
        tree_size=receipt.tree_size,
        ts=ts,
        kid=tx.jws.kid,
        signer=tx.signer,
        tx_type=tx.type,
        event=entry.event_type,
        payload=json.loads(tx.jws.payload),
        data=entry.data,
    )


def _key_for(kid: str, signer: str, keys: Keys) -> dict[str, str]:
    if not isinstance(keys, KeyRing | Mapping):  # the caller's mistake: not "the receipt does not verify"
        raise TypeError(
            f"keys: a public JWK, a KeyRing or a mapping kid -> public JWK, not a {type(keys).__name__}"
        )
    if isinstance(keys, KeyRing):
        found = keys.get(kid)
    elif "kty" in keys:  # one public JWK
        ring = KeyRing()
        expected = ring.add(signer, keys)  # type: ignore[arg-type]
        if expected != kid:
            raise ReceiptError(f"the transaction was signed with {kid}, not with the key given ({expected})")
        found = ring.get(kid)
    else:
        ring = KeyRing(keys)  # type: ignore[arg-type]
        found = ring.get(kid)
    if found is None:
        raise ReceiptError(f"no pinned public key for {kid}")
    return found


def principal_to_fetch(receipt_json: Mapping[str, Any], ring: KeyRing) -> str | None:
    """The principal whose keys must be fetched (once) before ``receipt_json`` can be
    checked against ``ring``; None when its key is pinned already."""
    kid = kid_in_receipt(receipt_json)
    return None if kid in ring else split_kid(kid)[0]


def required_checkpoint_key(checkpoint_key: str | None) -> str:
    """Receipts are checked against a key the caller obtained out of band, never one
    fetched from the server being checked."""
    if not checkpoint_key:
        raise ValueError("pass checkpoint_key (the ledger's verifier key, obtained out of band)")
    return checkpoint_key
