"""Keys that could never sign are refused when they are recorded."""

from __future__ import annotations

import base64
import json

from conftest import Ledger

from ledger.errors import Rejected
from ledger.verifier import verify_chunk


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_off_curve_secp256k1_key_is_refused_at_admission(ledger: Ledger) -> None:
    before = ledger.head()
    off_curve = {"kty": "EC", "crv": "secp256k1", "x": _b64(b"\x01" * 32), "y": _b64(b"\x02" * 32)}
    (outcome,) = ledger.submit(
        ledger.sign(
            ledger.operator,
            "principal.admit",
            {
                "principal": "sp:broken",
                "kind": "service_provider",
                "display_name": "Broken",
                "jwk": off_curve,
            },
        )
    )
    assert isinstance(outcome, Rejected) and outcome.code == "invalid_key"
    assert ledger.head() == before


#: The identity point: with it, (R = identity, S = 0) satisfies [S]B = R + [k]A for
#: every message under a cofactorless verifier such as OpenSSL's.
_IDENTITY = b"\x01" + bytes(31)


def test_small_order_ed25519_key_is_refused_at_admission(ledger: Ledger) -> None:
    before = ledger.head()
    (outcome,) = ledger.submit(
        ledger.sign(
            ledger.operator,
            "principal.admit",
            {
                "principal": "sp:weak",
                "kind": "service_provider",
                "display_name": "Weak",
                "jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64(_IDENTITY)},
            },
        )
    )
    assert isinstance(outcome, Rejected) and outcome.code == "invalid_key"
    assert ledger.head() == before


def test_a_universal_forgery_for_a_small_order_key_does_not_verify() -> None:
    """OpenSSL accepts this signature for any message; the ledger's verifier does not."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    forged = _IDENTITY + bytes(32)
    Ed25519PublicKey.from_public_bytes(_IDENTITY).verify(forged, b"any message at all")  # no error
    jwk = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64(_IDENTITY)}, sort_keys=True, separators=(",", ":")
    )
    assert verify_chunk([(b"any message at all", forged, "EdDSA", jwk)]) == [False]
