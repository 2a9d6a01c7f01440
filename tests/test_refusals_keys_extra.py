"""Keys that could never sign are refused when they are recorded."""

from __future__ import annotations

import base64

from conftest import Ledger

from ledger.errors import Rejected


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
