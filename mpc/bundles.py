"""Share bundles: what a data provider sends one computation node for one datasource.

A bundle holds, for every row, the subject's pseudonym (the one consents name on the
ledger, so the node can check consent in its own replica and join datasets; never a
real identifier) and the node's Shamir share of each variable's fixed-point value.
It is encrypted to that node alone -- X25519 with a fresh ephemeral key, HKDF-SHA256,
ChaCha20-Poly1305 -- with the datasource, the node and the row count as associated
data, so a bundle cannot be replayed for another datasource or node. The SHA-256 of
the sealed bytes is the commitment recorded on the ledger: a node refuses a bundle
whose bytes do not match it, so a bundle tampered with in transit is caught before
anything is computed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from mpc import sealing
from mpc.field import MERSENNE_127
from mpc.vectors import Vec, ops_for

FORMAT: Final = "dfg-share-bundle/1"
_INFO: Final = b"dfg share bundle v1"


class BundleError(ValueError):
    """A bundle that cannot be opened, or that is not what the ledger committed to."""


@dataclass(frozen=True)
class ShareBundle:
    datasource_id: str
    node: str
    keys: tuple[str, ...]
    columns: Mapping[str, Vec]  # variable -> this node's share of each row's value
    party: int = 1  # the node's Shamir point: its place among the nodes sorted by principal id
    modulus: int = MERSENNE_127  # the field the values were shared in
    precision: int = 16  # fractional bits of the fixed-point encoding

    def __post_init__(self) -> None:
        ops = ops_for(self.modulus)
        vectors = {k: v if isinstance(v, np.ndarray) else ops.of(list(v)) for k, v in self.columns.items()}
        object.__setattr__(self, "columns", vectors)
        for name, shares in vectors.items():
            if ops.length(shares) != len(self.keys):
                raise BundleError(f"column {name} has {ops.length(shares)} values for {len(self.keys)} rows")
        if len(set(self.keys)) != len(self.keys):
            raise BundleError(
                "duplicate join keys: the merge rules refuse a datasource with repeated subjects"
            )

    @property
    def rows(self) -> int:
        return len(self.keys)

    def header_document(self) -> dict[str, Any]:
        """Associated data: binds the ciphertext to its datasource, node and size."""
        return {
            "format": FORMAT,
            "datasource": self.datasource_id,
            "node": self.node,
            "rows": self.rows,
            "party": self.party,
            "modulus": str(self.modulus),
            "precision": self.precision,
        }

    def ints(self, name: str) -> list[int]:
        """A column's shares as integers."""
        return ops_for(self.modulus).ints(self.columns[name])

    def plaintext(self) -> bytes:
        """JSON: the pseudonyms, and each column as the base64 of its vector's bytes."""
        ops = ops_for(self.modulus)
        body = {
            "keys": list(self.keys),
            "columns": {k: base64.b64encode(ops.dumps(v)).decode() for k, v in self.columns.items()},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def seal(bundle: ShareBundle, node_public: X25519PublicKey) -> bytes:
    """The bytes delivered to the node (see ``mpc.sealing`` for the layout)."""
    return sealing.seal(bundle.plaintext(), bundle.header_document(), node_public, label=_INFO)


def commitment(sealed: bytes) -> str:
    """What the provider records on the ledger for this node's bundle."""
    return hashlib.sha256(sealed).hexdigest()


def bundle_header(sealed: bytes) -> dict[str, Any]:
    """The clear header of a sealed bundle (datasource, node, rows), unauthenticated
    until the bundle is opened with the node's key."""
    try:
        return sealing.read_header(sealed, FORMAT)
    except sealing.SealError as exc:
        raise BundleError(str(exc)) from exc


def open_sealed(sealed: bytes, node_private: X25519PrivateKey, *, expected_commitment: str) -> ShareBundle:
    """Check the commitment, then decrypt; any mismatch raises BundleError."""
    if not hmac.compare_digest(commitment(sealed), expected_commitment):
        raise BundleError(
            "the bundle does not match the commitment on the ledger (tampered with or truncated)"
        )
    try:
        described, plaintext = sealing.open_box(sealed, node_private, label=_INFO, expected_format=FORMAT)
        body = json.loads(plaintext)
        modulus = int(described["modulus"])
        ops = ops_for(modulus)
        bundle = ShareBundle(
            datasource_id=described["datasource"],
            node=described["node"],
            keys=tuple(body["keys"]),
            columns={k: ops.loads(base64.b64decode(v, validate=True)) for k, v in body["columns"].items()},
            party=int(described["party"]),
            modulus=modulus,
            precision=int(described["precision"]),
        )
    except (sealing.SealError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BundleError(f"the bundle cannot be opened by this node: {exc}") from exc
    if bundle.rows != described["rows"]:
        raise BundleError("the bundle's rows differ from its header")
    return bundle
