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


def _canonical_url(segment: bytes) -> bool:
    """The reference: only base64url characters, and decoding then encoding again
    (unpadded) gives the same text."""
    if any(c not in _ALPHABET for c in segment) or len(segment) % 4 == 1:
        return False
    return _canonical(segment)


@given(st.binary(max_size=24) | st.text(alphabet="AQgw-_+/= \n.\x00é", max_size=24).map(str.encode))
def test_any_bytes_are_accepted_exactly_when_canonical(segment: bytes) -> None:
    """Characters of other alphabets, padding, white space, dots and non-ASCII bytes are
    refused wherever they stand, whatever the decoder underneath would tolerate."""
    try:
        decoded = b64url_decode_strict(segment, "payload")
    except Rejected:
        assert not _canonical_url(segment)
    else:
        assert _canonical_url(segment)
        assert base64.urlsafe_b64encode(decoded).rstrip(b"=") == segment
