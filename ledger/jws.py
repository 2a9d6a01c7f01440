"""Compact JWS (RFC 7515) as the ledger accepts it: parsed strictly, verified with joserfc
(secp256k1) and libsodium (Ed25519).

Strictness is a security property here: the exact JWS is stored and hashed, so a
transaction must have exactly one encoding. Segments must be unpadded base64url
with zero trailing bits; the header must be a JSON object with exactly ``alg``,
``kid`` and ``typ`` (plus nothing else); ``none`` and every HMAC algorithm are
refused before any key is looked up.
"""

from __future__ import annotations

import base64
import binascii
import json
import warnings
from functools import lru_cache
from typing import Any, Final, NamedTuple

from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ledger.canonical import canonical_json
from ledger.errors import Rejected

#: Largest accepted compact JWS, in bytes (documented in docs/transactions.md).
MAX_JWS_BYTES: Final = 16 * 1024
TYP: Final = "dfg-tx"
#: ``EdDSA`` (RFC 8037) is the default; ``Ed25519`` (RFC 9864's fully-specified name)
#: is accepted as the same algorithm; ``ES256K`` (RFC 8812) for secp256k1 wallet keys.
ALLOWED_ALGS: Final = frozenset({"EdDSA", "Ed25519", "ES256K"})
_ALG_FOR_KEY: Final = {"EdDSA": "OKP", "Ed25519": "OKP", "ES256K": "EC"}

#: base64url -> standard alphabet, for binascii's strict decoder; '+', '/' and '='
#: are refused before translating, so the mapping cannot hide a non-canonical input.
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_registry = JWSRegistry(algorithms=sorted(ALLOWED_ALGS))
# RFC 9864 deprecates the polymorphic "EdDSA" in favour of "Ed25519" and joserfc warns
# on every use. The ambiguity it addresses cannot arise here: each alg is pinned to
# one key type and curve (``_ALG_FOR_KEY``, OKP keys are Ed25519 only), and both names
# are accepted. Resolve the algorithms once, so the warning is not printed per call.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SecurityWarning)
    _ALGS: Final = {name: _registry.get_alg(name) for name in ALLOWED_ALGS}


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode_strict(segment: bytes, what: str) -> bytes:
    """Decode unpadded base64url, refusing any alternative encoding of the same bytes:
    any character outside the alphabet (padding, '+' and '/' included), a length no
    encoding has, and a last character with bits set beyond the data."""
    rest = len(segment) % 4
    if rest == 1 or segment.translate(None, _B64URL_ALPHABET):
        raise Rejected("non_canonical_base64", f"the {what} is not unpadded base64url")
    if rest and segment[-1] not in _CLEAN_LAST[rest]:
        raise Rejected("non_canonical_base64", f"the {what} has non-zero trailing bits")
    try:
        return binascii.a2b_base64(segment.translate(_TO_STANDARD) + _PADDING[rest], strict_mode=True)
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise Rejected("non_canonical_base64", f"the {what} is not unpadded base64url") from exc


_B64URL_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: What completes a segment to whole groups of four, by its length mod 4 (1 is refused).
_PADDING: Final = (b"", b"", b"==", b"=")
#: By length mod 4, the characters that may end a segment: its last character carries
#: 2 data bits then 4 unused ones (mod 2), or 4 then 2 unused (mod 3), which must be zero.
_CLEAN_LAST: Final = {
    rest: bytes(c for i, c in enumerate(_B64URL_ALPHABET) if i & unused == 0)
    for rest, unused in ((2, 0b1111), (3, 0b11))
}


class CompactJws(NamedTuple):
    """A parsed, not yet verified, compact JWS. (A named tuple: immutable, and built a
    few times faster than a frozen dataclass, once per transaction on the hot paths.)"""

    token: str
    alg: str
    kid: str
    payload: bytes
    signing_input: bytes
    signature: bytes


class RepeatedMember(ValueError):
    """A JSON object names a member twice (``name``: the first such)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"duplicate member names: {name[:80]!r}")
        self.name = name


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated member name are refused: parsers disagree on which
    one wins, and an auditor in another language must read the same header."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise RepeatedMember(name)
            seen.add(name)
    return result


@lru_cache(maxsize=4096)
def _checked_header(segment: bytes) -> tuple[str, str]:
    """(alg, kid) of an encoded header. Each key signs with one header, so the check
    is cached by its exact bytes (refusals are not cached: they raise)."""
    header_bytes = b64url_decode_strict(segment, "header")
    try:
        header = json.loads(header_bytes, object_pairs_hook=unique_members)
    except (ValueError, RecursionError) as exc:
        raise Rejected(
            "malformed_jws", "the JWS header is not JSON (or repeats a member, or is nested too deeply)"
        ) from exc
    if not isinstance(header, dict):
        raise Rejected("malformed_jws", "the JWS header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
        raise Rejected(
            "alg_not_allowed",
            f"alg {alg!r} is refused; use one of {', '.join(sorted(ALLOWED_ALGS))}",
        )
    if header.get("typ") != TYP:
        raise Rejected("malformed_jws", f'the JWS header must have "typ": "{TYP}"')
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Rejected("malformed_jws", "the JWS header must name the signing key in kid")
    extra = set(header) - {"alg", "kid", "typ"}
    if extra:
        raise Rejected("malformed_jws", f"unexpected JWS header members: {', '.join(sorted(extra))}")
    return alg, kid


def parse_compact(token: str | bytes) -> CompactJws:
    """Envelope checks that need no key: size, shape, encoding and header."""
    raw = token.encode("ascii", "replace") if isinstance(token, str) else token
    if len(raw) > MAX_JWS_BYTES:
        raise Rejected("too_large", f"a transaction is at most {MAX_JWS_BYTES} bytes")
    parts = raw.split(b".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise Rejected("malformed_jws", "a transaction is a compact JWS: header.payload.signature")
    alg, kid = _checked_header(parts[0])
    if not parts[2]:
        raise Rejected("malformed_jws", "the JWS has no signature")
    payload = b64url_decode_strict(parts[1], "payload")
    signature = b64url_decode_strict(parts[2], "signature")
    text = raw.decode("ascii")
    return CompactJws(
        token=text,
        alg=alg,
        kid=kid,
        payload=payload,
        signing_input=raw[: len(parts[0]) + 1 + len(parts[1])],
        signature=signature,
    )


@lru_cache(maxsize=65536)
def public_key(jwk_json: str) -> OKPKey | ECKey:
    """Import a public JWK once (keys are immutable per kid, so caching is safe)."""
    data = json.loads(jwk_json)
    try:
        if data.get("kty") == "OKP":
            key = OKPKey.import_key(data)
            if not crypto_core_ed25519_is_valid_point(_ed25519_raw(data)):
                # OpenSSL would load it, and verify (R = identity, S = 0) on any message
                raise ValueError("not a point of prime order (a weak key anyone could sign for)")
            return key
        return ECKey.import_key(data)
    except Exception as exc:
        raise Rejected("invalid_key", f"the key cannot be imported: {exc}") from exc


def _ed25519_raw(jwk: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64decode(str(jwk["x"]) + "=")


@lru_cache(maxsize=65536)
def _ed25519_key(jwk_json: str) -> VerifyKey:
    """The libsodium form of an Ed25519 JWK already imported by ``public_key``."""
    return VerifyKey(_ed25519_raw(json.loads(jwk_json)))


def _ed25519_verify(key: VerifyKey, signing_input: bytes, signature: bytes) -> bool:
    """Ed25519 with libsodium: about twice OpenSSL's rate here, and stricter (it also
    refuses small-order keys and R points, and non-canonical encodings), so whatever
    the ledger accepts also verifies under OpenSSL and other RFC 8032 verifiers."""
    try:
        key.verify(signing_input, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def key_json(jwk: dict[str, Any]) -> str:
    """A JWK as one string (sorted members): how keys travel to the verifier processes
    and the key of the import cache. Made once per signature checked, so by orjson."""
    return canonical_json(jwk).decode()


def verify_signature(jws: CompactJws, jwk: dict[str, Any]) -> bool:
    """True when ``jws`` is signed by ``jwk``; the alg must suit the key type."""
    return verify_parts(jws.signing_input, jws.signature, jws.alg, key_json(jwk))


def verify_parts(signing_input: bytes, signature: bytes, alg: str, jwk_json: str) -> bool:
    """The picklable core of ``verify_signature`` (worker processes call this)."""
    key = public_key(jwk_json)
    if _ALG_FOR_KEY.get(alg) != key.key_type:
        return False
    if key.key_type == "OKP":
        return _ed25519_verify(_ed25519_key(jwk_json), signing_input, signature)
    if alg == "ES256K" and not _low_s(signature):
        return False  # (r, n - s) verifies too: accept one encoding only, as Bitcoin does
    return bool(_ALGS[alg].verify(signing_input, signature, key))


_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _low_s(signature: bytes) -> bool:
    return len(signature) == 64 and int.from_bytes(signature[32:], "big") <= _SECP256K1_N // 2


def sign_compact(payload: bytes, kid: str, private_key: OKPKey | ECKey) -> str:
    """Sign ``payload`` (already canonical JSON) as a dfg transaction."""
    alg = "EdDSA" if isinstance(private_key, OKPKey) else "ES256K"
    header = json.dumps({"alg": alg, "kid": kid, "typ": TYP}, separators=(",", ":")).encode()
    signing_input = f"{b64url_encode(header)}.{b64url_encode(payload)}".encode("ascii")
    signature = _ALGS[alg].sign(signing_input, private_key)
    if alg == "ES256K" and not _low_s(signature):  # normalise to the one accepted encoding
        s = _SECP256K1_N - int.from_bytes(signature[32:], "big")
        signature = signature[:32] + s.to_bytes(32, "big")
    return f"{signing_input.decode('ascii')}.{b64url_encode(signature)}"
