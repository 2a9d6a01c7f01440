"""Strict base64url: exactly one encoding of each byte string is accepted (the
definition: decoding and encoding again gives the same text)."""

from __future__ import annotations

import base64
import binascii

from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import Rejected
from ledger.jws import b64url_decode_strict

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _canonical(segment: bytes) -> bool:
    standard = segment.translate(bytes.maketrans(b"-_", b"+/")) + b"=" * (-len(segment) % 4)
    try:
        return binascii.b2a_base64(binascii.a2b_base64(standard, strict_mode=True), newline=False) == standard
    except binascii.Error:
        return False


@given(st.binary(min_size=1, max_size=64), st.sampled_from(_ALPHABET))
def test_accepted_exactly_when_canonical(data: bytes, last: int) -> None:
    segment = base64.urlsafe_b64encode(data).rstrip(b"=")
    assert b64url_decode_strict(segment, "payload") == data
    changed = segment[:-1] + bytes([last])
    try:
        b64url_decode_strict(changed, "payload")
        accepted = True
    except Rejected:
        accepted = False
    assert accepted == _canonical(changed)
