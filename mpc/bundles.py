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

import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

FORMAT: Final = "dfg-share-bundle/1"
_INFO: Final = b"dfg share bundle v1"


class BundleError(ValueError):
    """A bundle that cannot be opened, or that is not what the ledger committed to."""


@dataclass(frozen=True)
class ShareBundle:
    datasource_id: str
    node: str
    keys: tuple[str, ...]
    columns: Mapping[str, Sequence[int]]  # variable -> this node's share of each row's value

    def __post_init__(self) -> None:
        for name, shares in self.columns.items():
            if len(shares) != len(self.keys):
                raise BundleError(f"column {name} has {len(shares)} values for {len(self.keys)} rows")
        if len(set(self.keys)) != len(self.keys):
            raise BundleError(
                "duplicate join keys: the merge rules refuse a datasource with repeated subjects"
            )

    @property
    def rows(self) -> int:
        return len(self.keys)

    def header(self) -> bytes:
        """Associated data: binds the ciphertext to its datasource, node and size."""
        return json.dumps(
            {"format": FORMAT, "datasource": self.datasource_id, "node": self.node, "rows": self.rows},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def plaintext(self) -> bytes:
        body = {
            "keys": list(self.keys),
            "columns": {k: [str(v) for v in vs] for k, vs in self.columns.items()},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _key(shared: bytes, header: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + header).derive(shared)


def seal(bundle: ShareBundle, node_public: X25519PublicKey) -> bytes:
    """The bytes delivered to the node: header, ephemeral public key, nonce, ciphertext."""
    ephemeral = X25519PrivateKey.generate()
    header = bundle.header()
    key = _key(ephemeral.exchange(node_public), header)
    nonce = os.urandom(12)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, bundle.plaintext(), header)
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return len(header).to_bytes(4, "big") + header + ephemeral_public + nonce + ciphertext


def commitment(sealed: bytes) -> str:
    """What the provider records on the ledger for this node's bundle."""
    return hashlib.sha256(sealed).hexdigest()


def bundle_header(sealed: bytes) -> dict[str, Any]:
    """The clear header of a sealed bundle (datasource, node, rows), unauthenticated
    until the bundle is opened with the node's key."""
    try:
        size = int.from_bytes(sealed[:4], "big")
        header: dict[str, Any] = json.loads(sealed[4 : 4 + size])
    except ValueError as exc:
        raise BundleError(f"not a sealed share bundle: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT or len(sealed) < 4 + size + 44 + 16:
        raise BundleError(f"not a {FORMAT}")
    return header


def open_sealed(sealed: bytes, node_private: X25519PrivateKey, *, expected_commitment: str) -> ShareBundle:
    """Check the commitment, then decrypt; any mismatch raises BundleError."""
    if not hmac.compare_digest(commitment(sealed), expected_commitment):
        raise BundleError(
            "the bundle does not match the commitment on the ledger (tampered with or truncated)"
        )
    try:
        size = int.from_bytes(sealed[:4], "big")
        header = sealed[4 : 4 + size]
        rest = sealed[4 + size :]
        ephemeral, nonce, ciphertext = rest[:32], rest[32:44], rest[44:]
        described = json.loads(header)
        key = _key(node_private.exchange(X25519PublicKey.from_public_bytes(ephemeral)), header)
        body = json.loads(ChaCha20Poly1305(key).decrypt(nonce, ciphertext, header))
    except (InvalidTag, ValueError, KeyError) as exc:
        raise BundleError(f"the bundle cannot be opened by this node: {exc}") from exc
    if described.get("format") != FORMAT:
        raise BundleError(f"not a {FORMAT}")
    bundle = ShareBundle(
        datasource_id=described["datasource"],
        node=described["node"],
        keys=tuple(body["keys"]),
        columns={k: [int(v) for v in vs] for k, vs in body["columns"].items()},
    )
    if bundle.rows != described["rows"]:
        raise BundleError("the bundle's rows differ from its header")
    return bundle
