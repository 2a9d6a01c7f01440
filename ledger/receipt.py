"""Receipts: an entry, its inclusion proof and the signed checkpoint it is proven against.

Anyone can check a receipt without trusting the server (docs/ledger-format.md, Receipts):
``leaf = SHA-256(0x00 || entry)``; the RFC 9162 inclusion proof from ``leaf`` at
``leaf_index`` in a tree of ``tree_size`` leaves gives a root; the checkpoint note,
signed by the ledger's checkpoint key, must state that size and that root.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ledger.checkpoint import CheckpointError, open_checkpoint
from ledger.entry import Entry, EntryFormatError
from ledger.merkle import NodeReader, inclusion_proof, leaf_hash, verify_inclusion
from ledger.note import InvalidKeyError, MalformedNoteError, Verifier
from ledger.store import StoredCheckpoint
from ledger.witness import WitnessPolicy, with_cosignatures


class ReceiptError(Exception):
    """The receipt does not prove what it claims."""


_Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _ProofJson(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    leaf_index: int = Field(ge=0)
    tree_size: int = Field(ge=1)
    hashes: list[_Hash] = Field(max_length=64)  # a tree of 2**63 leaves needs 63


class ReceiptJson(BaseModel):
    """A receipt as JSON (docs/ledger-format.md, Receipts): exact types, no other
    members. ``leaf_hash``, ``jws`` and ``event`` are conveniences the proof does not
    cover; a receipt is refused unless they say what its proven entry says."""

    model_config = ConfigDict(strict=True, extra="forbid")
    seq: int = Field(ge=1)
    entry: str
    leaf_hash: _Hash | None = None
    proof: _ProofJson
    checkpoint: str
    jws: str | None = None
    event: dict[str, Any] | None = None


@dataclass(frozen=True)
class Receipt:
    seq: int
    entry: bytes
    leaf_index: int
    tree_size: int
    hashes: tuple[bytes, ...]
    checkpoint: str
    #: The unproven members a receipt carried (``leaf_hash``, ``jws``, ``event``).
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "entry": self.entry.decode(),
            "leaf_hash": leaf_hash(self.entry).hex(),
            "proof": {
                "leaf_index": self.leaf_index,
                "tree_size": self.tree_size,
                "hashes": [h.hex() for h in self.hashes],
            },
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_json(cls, data: object) -> Receipt:
        try:
            parsed = ReceiptJson.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the document"
            raise ReceiptError(f"not a receipt: {where}: {first['msg']}") from None
        return cls(
            seq=parsed.seq,
            entry=parsed.entry.encode(),
            leaf_index=parsed.proof.leaf_index,
            tree_size=parsed.proof.tree_size,
            hashes=tuple(bytes.fromhex(h) for h in parsed.proof.hashes),
            checkpoint=parsed.checkpoint,
            claims=parsed.model_dump(include={"leaf_hash", "jws", "event"}, exclude_none=True),
        )


def make_receipt(seq: int, entry: bytes, checkpoint: StoredCheckpoint, read: NodeReader) -> Receipt:
    if not 1 <= seq <= checkpoint.size:
        raise ReceiptError(f"entry {seq} is not covered by the checkpoint of size {checkpoint.size}")
    hashes = inclusion_proof(seq - 1, checkpoint.size, read)
    note = with_cosignatures(checkpoint.note, checkpoint.cosignatures)
    return Receipt(seq, entry, seq - 1, checkpoint.size, tuple(hashes), note)


def verify_receipt(
    receipt: Receipt,
    checkpoint_key: str | Verifier,
    *,
    origin: str | None = None,
    witnesses: WitnessPolicy | None = None,
) -> int:
    """Check a receipt offline; returns its sequence number or raises ReceiptError.

    With ``witnesses``, the checkpoint must also carry cosignatures of at least the
    policy's quorum of them (a receipt fetched again later carries the newer ones)."""
    try:
        verifier = (
            checkpoint_key if isinstance(checkpoint_key, Verifier) else Verifier.from_string(checkpoint_key)
        )
        checkpoint = open_checkpoint(receipt.checkpoint, verifier, origin=origin)
    except (CheckpointError, InvalidKeyError) as exc:
        if isinstance(exc.__cause__, MalformedNoteError):  # the ledger's own line may be sound
            raise ReceiptError(f"the checkpoint is not a well-formed signed note: {exc.__cause__}") from exc
        raise ReceiptError(f"the checkpoint is not signed by the ledger key: {exc}") from exc
    if checkpoint.size != receipt.tree_size:
        raise ReceiptError("the proof is for another tree size than the checkpoint")
    if receipt.leaf_index != receipt.seq - 1:
        raise ReceiptError("the leaf index does not match the sequence number")
    try:
        document = json.loads(receipt.entry)
    except (ValueError, RecursionError) as exc:
        raise ReceiptError("the entry is not JSON") from exc
    if not isinstance(document, dict) or document.get("seq") != receipt.seq:
        raise ReceiptError("the entry is not an entry numbered as the receipt says")
    leaf = leaf_hash(receipt.entry)
    if not verify_inclusion(
        leaf, receipt.leaf_index, receipt.tree_size, list(receipt.hashes), checkpoint.root_hash
    ):
        raise ReceiptError("the inclusion proof does not lead to the checkpoint's root")
    _claims_agree(receipt)
    if witnesses is not None:
        cosigners = witnesses.cosigners(receipt.checkpoint)
        if len(cosigners) < witnesses.quorum:
            failing = sorted(witnesses.failing(receipt.checkpoint) - cosigners)
            why = (
                f"a cosignature that does not verify, by {', '.join(failing)}"
                if failing
                else "not final yet: fetch the receipt again later"
            )
            raise ReceiptError(
                f"the checkpoint has {len(cosigners)} of the {witnesses.quorum} witness cosignatures"
                f" the policy requires ({why})"
            )
    return receipt.seq


def _claims_agree(receipt: Receipt) -> None:
    """What a receipt says beside its proof must be what its proven entry says: a reader
    shown ``event`` should not see a gift where the entry records a withdrawal."""
    claims = receipt.claims
    if not claims:
        return
    if "leaf_hash" in claims and claims["leaf_hash"] != leaf_hash(receipt.entry).hex():
        raise ReceiptError("the receipt's leaf_hash is not the hash of its entry")
    try:
        entry = Entry.decode(receipt.entry)
    except EntryFormatError as exc:
        raise ReceiptError(f"the proven entry is not a canonical entry: {exc}") from exc
    if "jws" in claims and claims["jws"] != entry.tx:
        raise ReceiptError("the receipt's jws is not the transaction inside its entry")
    if "event" in claims:
        proven = {
            "aggregate": str(entry.aggregate_id),
            "version": entry.version,
            "type": entry.event_type,
            "ts": json.loads(receipt.entry)["ts"],
            "data": entry.data,
        }
        if claims["event"] != proven:
            raise ReceiptError("the receipt's event is not the event inside its entry")
