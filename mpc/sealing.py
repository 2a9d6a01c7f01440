"""Sealed boxes: bytes encrypted to one X25519 public key, with a clear header bound to
them as associated data.

X25519 with a fresh ephemeral key, HKDF-SHA256 (the format's label and the header in
its info), ChaCha20-Poly1305 with a random nonce -- all from ``cryptography``. Share
bundles (provider -> node) and result shares (node -> analyst) use it with their own
format labels, so one can never be opened as the other.

Layout: header length (4 bytes, big-endian), header (canonical JSON), the ephemeral
public key (32), the nonce (12), the ciphertext with its tag.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_OVERHEAD = 32 + 12 + 16


class SealError(ValueError):
    """Not a sealed box of the expected format, or not openable with this key."""


def x25519_jwk(key: X25519PrivateKey) -> dict[str, str]:
    """The public JWK of ``key``, as the ledger records sealing keys (``{kty, crv, x}``)."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "X25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _key(shared: bytes, label: bytes, header: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label + header).derive(shared)


def seal(plaintext: bytes, header: dict[str, Any], recipient: X25519PublicKey, *, label: bytes) -> bytes:
    """``header`` must carry a ``format`` member naming what is sealed."""
    ephemeral = X25519PrivateKey.generate()
    encoded = canonical(header)
    key = _key(ephemeral.exchange(recipient), label, encoded)
    nonce = os.urandom(12)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext, encoded)
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return len(encoded).to_bytes(4, "big") + encoded + ephemeral_public + nonce + ciphertext


def read_header(sealed: bytes, expected_format: str) -> dict[str, Any]:
    """The clear header, unauthenticated until the box is opened."""
    try:
        size = int.from_bytes(sealed[:4], "big")
        header = json.loads(sealed[4 : 4 + size])
    except ValueError as exc:
        raise SealError(f"not a {expected_format}: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != expected_format:
        raise SealError(f"not a {expected_format}")
    if len(sealed) < 4 + size + _OVERHEAD:
        raise SealError(f"a truncated {expected_format}")
    return header


def open_box(
    sealed: bytes, private: X25519PrivateKey, *, label: bytes, expected_format: str
) -> tuple[dict[str, Any], bytes]:
    """The authenticated header and the plaintext; anything wrong raises SealError."""
    header = read_header(sealed, expected_format)
    size = int.from_bytes(sealed[:4], "big")
    encoded, rest = sealed[4 : 4 + size], sealed[4 + size :]
    ephemeral, nonce, ciphertext = rest[:32], rest[32:44], rest[44:]
    try:
        key = _key(private.exchange(X25519PublicKey.from_public_bytes(ephemeral)), label, encoded)
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, encoded)
    except (InvalidTag, ValueError) as exc:
        raise SealError(f"the {expected_format} cannot be opened with this key") from exc
    return header, plaintext
