"""Receipts: an entry, its inclusion proof and the signed checkpoint it is proven against.

Anyone can check a receipt without trusting the server (docs/ledger-format.md, Receipts):
``leaf = SHA-256(0x00 || entry)``; the RFC 9162 inclusion proof from ``leaf`` at
``leaf_index`` in a tree of ``tree_size`` leaves gives a root; the checkpoint note,
signed by the ledger's checkpoint key, must state that size and that root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ledger.checkpoint import CheckpointError, open_checkpoint
from ledger.merkle import NodeReader, inclusion_proof, leaf_hash, verify_inclusion
from ledger.note import InvalidKeyError, Verifier
from ledger.store import StoredCheckpoint
from ledger.witness import WitnessPolicy, with_cosignatures


class ReceiptError(Exception):
    """The receipt does not prove what it claims."""


@dataclass(frozen=True)
class Receipt:
    seq: int
    entry: bytes
    leaf_index: int
    tree_size: int
    hashes: tuple[bytes, ...]
    checkpoint: str

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
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        try:
            proof = data["proof"]
            return cls(
                seq=int(data["seq"]),
                entry=str(data["entry"]).encode(),
                leaf_index=int(proof["leaf_index"]),
                tree_size=int(proof["tree_size"]),
                hashes=tuple(bytes.fromhex(h) for h in proof["hashes"]),
                checkpoint=str(data["checkpoint"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: int(Infinity)
            raise ReceiptError(f"not a receipt: {exc}") from exc


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
    if witnesses is not None:
        cosigners = witnesses.cosigners(receipt.checkpoint)
        if len(cosigners) < witnesses.quorum:
            raise ReceiptError(
                f"the checkpoint has {len(cosigners)} of the {witnesses.quorum} witness cosignatures"
                " the policy requires (not final yet: fetch the receipt again later)"
            )
    return receipt.seq
