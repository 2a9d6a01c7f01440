"""C2SP signed notes (https://c2sp.org/signed-note) and Ed25519 cosignatures.

Why: checkpoints of the consent ledger are published as signed notes so that
any off-the-shelf transparency-log tooling (Go's ``sumdb/note``,
transparency-dev witnesses) can verify them, and so that independent witnesses
can append cosignatures (https://c2sp.org/tlog-cosignature, ``cosignature/v1``)
without any format of our own.

Two signature types are supported, nothing else:

* ``0x01`` Ed25519 over the note text (what the log itself signs with);
* ``0x04`` timestamped Ed25519 cosignature over
  ``"cosignature/v1\\ntime <unix seconds>\\n" + <checkpoint body>``, whose
  signature payload is ``timestamp (8 bytes, big-endian) || Ed25519 signature``.

Parsing is deliberately strict (canonical base64, exact separators, no control
characters, no duplicate signers) so that one logical note has exactly one
byte representation.  All functions are pure: keys and timestamps come from the
caller.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "EM_DASH",
    "MAX_SIGNATURES",
    "MAX_TIMESTAMP",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "InvalidKeyError",
    "InvalidSignatureError",
    "MalformedNoteError",
    "NoteError",
    "Signature",
    "SignerKey",
    "UnverifiedNoteError",
    "Verifier",
    "add_signature",
    "cosignature_line",
    "cosignature_message",
    "cosignature_timestamp",
    "is_valid_key_name",
    "key_hash",
    "open_note",
    "parse_note",
    "parse_signature_line",
    "sign_note",
    "signature_line",
    "verify_cosignature_line",
]

SIG_ED25519 = 0x01
"""Signature type byte of plain Ed25519 note signatures."""

SIG_COSIGNATURE_V1 = 0x04
"""Signature type byte of tlog-cosignature/v1 (timestamped Ed25519) cosignatures."""

EM_DASH = "\u2014"
"""Every signature line starts with an em dash (U+2014) and a space."""

MAX_SIGNATURES = 100
"""Notes with more signature lines are refused (the spec requires accepting >= 16)."""

MAX_TIMESTAMP = (1 << 63) - 1
"""tlog-cosignature: the timestamp MUST NOT exceed 2**63 - 1."""

_KEY_HASH_SIZE = 4
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_TIMESTAMP_SIZE = 8
_SUPPORTED_TYPES = (SIG_ED25519, SIG_COSIGNATURE_V1)
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_HEX8 = re.compile(r"[0-9a-f]{8}")
_COSIGNATURE_HEADER = "cosignature/v1\n"


class NoteError(ValueError):
    """Base class of every failure to parse, sign or verify a note."""


class MalformedNoteError(NoteError):
    """The note (or a signature line) does not follow the signed-note grammar."""


class InvalidKeyError(NoteError):
    """A key name, verifier key string or signer key string is malformed."""


class InvalidSignatureError(NoteError):
    """A signature by a *known* key does not verify: the note must be rejected."""

    def __init__(self, signature: Signature) -> None:
        super().__init__(f"signature by {signature.name!r} (key {signature.key_hash.hex()}) does not verify")
        self.signature = signature


class UnverifiedNoteError(NoteError):
    """No signature on the note is from a known key; ``unknown`` lists what was there."""

    def __init__(self, unknown: Iterable[Signature]) -> None:
        self.unknown = tuple(unknown)
        names = ", ".join(f"{s.name}+{s.key_hash.hex()}" for s in self.unknown) or "none"
        super().__init__(f"note has no signature from a known key (unknown signers: {names})")


# --------------------------------------------------------------------------- helpers


def _is_encodable(text: str) -> bool:
    """True when ``text`` is valid UTF-8 material (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_control(text: str, *, allow_newline: bool) -> bool:
    return any(ord(c) < 0x20 and not (allow_newline and c == "\n") for c in text)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict standard base64: valid alphabet, padding, and canonical trailing bits."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
        return None
    return raw if _b64encode(raw) == text else None


def _check_text(text: object) -> str:
    """Note text must be a str ending in newline, UTF-8 clean, without control characters."""
    if not isinstance(text, str):
        raise MalformedNoteError(f"note text must be str, not {type(text).__name__}")
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end with a newline")
    if not _is_encodable(text) or _has_control(text, allow_newline=True):
        raise MalformedNoteError("note text contains control characters or invalid UTF-8")
    return text


def _check_name(name: object) -> str:
    if not is_valid_key_name(name):
        raise InvalidKeyError(
            f"invalid key name {name!r}: must be non-empty, without spaces, '+' or control characters"
        )
    return name


def _check_type(sig_type: object) -> int:
    if isinstance(sig_type, bool) or not isinstance(sig_type, int):
        raise InvalidKeyError(f"signature type must be an int, not {type(sig_type).__name__}")
    if sig_type not in _SUPPORTED_TYPES:
        raise InvalidKeyError(f"unsupported signature type {sig_type:#04x}")
    return sig_type


def _check_timestamp(timestamp: object) -> int:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise NoteError(f"timestamp must be an int, not {type(timestamp).__name__}")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"timestamp {timestamp} is outside 0..2**63-1")
    return timestamp


def _public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes_raw()


# --------------------------------------------------------------------------- keys


def is_valid_key_name(name: object) -> TypeGuard[str]:
    """Key names are non-empty and contain no Unicode space, ``+`` or control character.

    (No spaces because the name is a field of the space-separated signature
    line; no ``+`` because it is a field of the ``+``-separated key strings.)
    """
    return (
        isinstance(name, str)
        and name != ""
        and _is_encodable(name)
        and "+" not in name
        and not any(c.isspace() for c in name)
        and not _has_control(name, allow_newline=False)
    )


def key_hash(name: str, public_key: bytes, sig_type: int = SIG_ED25519) -> bytes:
    """The 4-byte key ID: SHA-256(name || 0x0A || type || public key)[:4].

    The type byte is part of the hash so one key pair can never be confused
    across signature types (a log key is not a cosigner key).
    """
    _check_name(name)
    _check_type(sig_type)
    material = name.encode("utf-8") + b"\n" + bytes([sig_type]) + bytes(public_key)
    return hashlib.sha256(material).digest()[:_KEY_HASH_SIZE]


@dataclass(frozen=True)
class Signature:
    """One parsed signature line: key name, 4-byte key hash, and the signature payload."""

    name: str
    key_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.key_hash, bytes) or len(self.key_hash) != _KEY_HASH_SIZE:
            raise MalformedNoteError("a key hash is exactly 4 bytes")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise MalformedNoteError("a signature payload is non-empty bytes")

    def line(self) -> str:
        """The signature line, ``— <name> <base64(key hash || signature)>\\n``."""
        return f"{EM_DASH} {self.name} {_b64encode(self.key_hash + self.signature)}\n"


@dataclass(frozen=True)
class Verifier:
    """A trusted public key: name, 32-byte Ed25519 key and signature type (0x01 or 0x04)."""

    name: str
    public_key: bytes
    sig_type: int = SIG_ED25519

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_type(self.sig_type)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != _ED25519_KEY_SIZE:
            raise InvalidKeyError("an Ed25519 public key is exactly 32 bytes")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError as exc:
            raise InvalidKeyError(f"not an Ed25519 public key: {exc}") from exc

    @property
    def key_hash(self) -> bytes:
        """The 4-byte key ID that signature lines by this key carry."""
        return key_hash(self.name, self.public_key, self.sig_type)

    def to_string(self) -> str:
        """The verifier key string ``<name>+<8 hex key hash>+<base64(type || key)>``."""
        material = _b64encode(bytes([self.sig_type]) + self.public_key)
        return f"{self.name}+{self.key_hash.hex()}+{material}"

    @classmethod
    def from_string(cls, vkey: str) -> Verifier:
        """Parse a verifier key string strictly; the embedded key hash must match."""
        if not isinstance(vkey, str):
            raise InvalidKeyError("a verifier key must be a str")
        # The name cannot contain '+', the base64 part can: split at most twice.
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise InvalidKeyError("a verifier key is <name>+<hash>+<key>")
        name, hash_hex, material = parts
        _check_name(name)
        if not _HEX8.fullmatch(hash_hex):
            raise InvalidKeyError("the key hash must be 8 lowercase hex digits")
        raw = _b64decode(material)
        if raw is None or len(raw) != 1 + _ED25519_KEY_SIZE:
            raise InvalidKeyError("key material must be canonical base64 of type || 32 bytes")
        verifier = cls(name, raw[1:], _check_type(raw[0]))
        if verifier.key_hash.hex() != hash_hex:
            raise InvalidKeyError(f"key hash {hash_hex} does not match the key and name")
        return verifier

    def matches(self, signature: Signature) -> bool:
        """True when ``signature`` claims to be by this key (same name and key hash)."""
        return signature.name == self.name and signature.key_hash == self.key_hash

    def verify(self, text: str, signature: Signature) -> bool:
        """Check ``signature`` over note ``text`` for this key; never raises."""
        try:
            if not self.matches(signature):
                return False
            payload = signature.signature
            message = text.encode("utf-8")
            if self.sig_type == SIG_COSIGNATURE_V1:
                if len(payload) != _TIMESTAMP_SIZE + _ED25519_SIG_SIZE:
                    return False
                timestamp = int.from_bytes(payload[:_TIMESTAMP_SIZE], "big")
                if timestamp > MAX_TIMESTAMP:
                    return False
                message = cosignature_message(text, timestamp)
                payload = payload[_TIMESTAMP_SIZE:]
            elif len(payload) != _ED25519_SIG_SIZE:
                return False
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(payload, message)
        except (InvalidSignature, ValueError, TypeError, AttributeError):
            return False
        return True


@dataclass(frozen=True, eq=False)
class SignerKey:
    """A private key with its name and signature type, as in Go's ``PRIVATE+KEY+...`` strings."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)
    sig_type: int = SIG_ED25519

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_type(self.sig_type)
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise InvalidKeyError("the private key must be an Ed25519PrivateKey")

    def verifier(self) -> Verifier:
        """The matching public verifier."""
        return Verifier(self.name, _public_bytes(self.private_key), self.sig_type)

    def to_string(self) -> str:
        """``PRIVATE+KEY+<name>+<8 hex key hash>+<base64(type || 32-byte seed)>``."""
        seed = self.private_key.private_bytes_raw()
        material = _b64encode(bytes([self.sig_type]) + seed)
        return f"{_PRIVATE_PREFIX}{self.name}+{self.verifier().key_hash.hex()}+{material}"

    @classmethod
    def from_string(cls, skey: str) -> SignerKey:
        """Parse a signer key string strictly; the key hash must match the derived public key."""
        if not isinstance(skey, str) or not skey.startswith(_PRIVATE_PREFIX):
            raise InvalidKeyError("a signer key starts with PRIVATE+KEY+")
        parts = skey[len(_PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise InvalidKeyError("a signer key is PRIVATE+KEY+<name>+<hash>+<key>")
        name, hash_hex, material = parts
        _check_name(name)
        if not _HEX8.fullmatch(hash_hex):
            raise InvalidKeyError("the key hash must be 8 lowercase hex digits")
        raw = _b64decode(material)
        if raw is None or len(raw) != 1 + _ED25519_KEY_SIZE:
            raise InvalidKeyError("key material must be canonical base64 of type || 32 bytes")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]), _check_type(raw[0]))
        if signer.verifier().key_hash.hex() != hash_hex:
            raise InvalidKeyError(f"key hash {hash_hex} does not match the key and name")
        return signer


# --------------------------------------------------------------------------- notes


def parse_signature_line(line: str) -> Signature:
    """Parse ``— <name> <base64>`` (one optional trailing newline) into a :class:`Signature`."""
    if not isinstance(line, str):
        raise MalformedNoteError("a signature line must be a str")
    if line.endswith("\n"):
        line = line[:-1]
    prefix = EM_DASH + " "
    if not line.startswith(prefix):
        raise MalformedNoteError(f"signature line must start with an em dash and a space: {line!r}")
    fields = line[len(prefix) :].split(" ")
    if len(fields) != 2:
        raise MalformedNoteError(f"signature line must be '— <name> <signature>': {line!r}")
    name, encoded = fields
    if not is_valid_key_name(name):
        raise MalformedNoteError(f"invalid key name in signature line: {name!r}")
    raw = _b64decode(encoded)
    if raw is None or len(raw) <= _KEY_HASH_SIZE:
        raise MalformedNoteError(f"signature of {name!r} is not canonical base64 of >= 5 bytes")
    return Signature(name, raw[:_KEY_HASH_SIZE], raw[_KEY_HASH_SIZE:])


def parse_note(note: str) -> tuple[str, list[Signature]]:
    """Split a signed note into its text and signature lines, without verifying anything.

    The text is everything up to and including the newline before the *last*
    blank line; after it come one or more signature lines, each ending in a
    newline.  Two lines by the same (name, key hash) make the note malformed.
    """
    if not isinstance(note, str):
        raise MalformedNoteError(f"a note must be str, not {type(note).__name__}")
    if not _is_encodable(note) or _has_control(note, allow_newline=True):
        raise MalformedNoteError("note contains control characters or invalid UTF-8")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("note has no blank line between text and signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise MalformedNoteError("note has no signature lines")
    if not block.endswith("\n"):
        raise MalformedNoteError("note must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"note has more than {MAX_SIGNATURES} signatures")
    signatures = [parse_signature_line(line) for line in lines]
    seen: set[tuple[str, bytes]] = set()
    for sig in signatures:
        if (sig.name, sig.key_hash) in seen:
            raise MalformedNoteError(f"note has two signatures by {sig.name}+{sig.key_hash.hex()}")
        seen.add((sig.name, sig.key_hash))
    return text, signatures


def signature_line(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """An Ed25519 (type 0x01) signature line over note ``text``."""
    _check_text(text)
    signer = SignerKey(name, private_key)
    signature = private_key.sign(text.encode("utf-8"))
    return Signature(name, signer.verifier().key_hash, signature).line()


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``text`` (which must end in a newline) with Ed25519; return the signed note."""
    line = signature_line(text, name, private_key)
    return text + "\n" + line


def add_signature(note: str, signature: Signature | str) -> str:
    """Append a signature line (e.g. a cosignature) to an already signed note.

    Nothing is verified here -- this is plumbing for collecting cosignatures;
    verification happens in :func:`open_note`.  A previous signature by the same
    (name, key hash) is replaced, so a cosigner re-signing with a newer
    timestamp does not leave two lines behind.
    """
    sig = signature if isinstance(signature, Signature) else parse_signature_line(signature)
    text, existing = parse_note(note)
    kept = [s for s in existing if (s.name, s.key_hash) != (sig.name, sig.key_hash)]
    if len(kept) + 1 > MAX_SIGNATURES:
        raise MalformedNoteError(f"note would have more than {MAX_SIGNATURES} signatures")
    return text + "\n" + "".join(s.line() for s in [*kept, sig])


def open_note(note: str, verifiers: Iterable[Verifier]) -> tuple[str, list[Signature]]:
    """Parse ``note`` strictly and verify it; return its text and the verified signatures.

    Following the spec: signatures by unknown keys (no verifier with that name
    *and* key hash) are ignored; a signature by a known key that fails to
    verify rejects the whole note (:class:`InvalidSignatureError`); and a note
    with no verified signature at all is rejected with
    :class:`UnverifiedNoteError`, which lists the unknown signers.
    Malformed notes raise :class:`MalformedNoteError`.
    """
    known: dict[tuple[str, bytes], Verifier] = {}
    for verifier in verifiers:
        if not isinstance(verifier, Verifier):
            raise TypeError("verifiers must be Verifier instances")
        ident = (verifier.name, verifier.key_hash)
        if ident in known and known[ident] != verifier:
            raise NoteError(f"two different verifiers share {verifier.name}+{ident[1].hex()}")
        known[ident] = verifier
    text, signatures = parse_note(note)
    verified: list[Signature] = []
    unknown: list[Signature] = []
    for sig in signatures:
        match = known.get((sig.name, sig.key_hash))
        if match is None:
            unknown.append(sig)
        elif match.verify(text, sig):
            verified.append(sig)
        else:
            raise InvalidSignatureError(sig)
    if not verified:
        raise UnverifiedNoteError(unknown)
    return text, verified


# --------------------------------------------------------------------------- cosignatures


def cosignature_message(body: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs: header line, time line, then the checkpoint body."""
    _check_text(body)
    _check_timestamp(timestamp)
    return f"{_COSIGNATURE_HEADER}time {timestamp}\n{body}".encode()


def cosignature_line(body: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> str:
    """A cosignature/v1 (type 0x04) signature line over checkpoint ``body`` at ``timestamp``.

    ``timestamp`` is POSIX seconds supplied by the caller (this module has no clock).
    """
    message = cosignature_message(body, timestamp)
    signer = SignerKey(name, private_key, SIG_COSIGNATURE_V1)
    payload = timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + private_key.sign(message)
    return Signature(name, signer.verifier().key_hash, payload).line()


def cosignature_timestamp(signature: Signature) -> int:
    """The timestamp a cosignature/v1 payload carries (not verified; see the verifiers)."""
    payload = signature.signature
    if len(payload) != _TIMESTAMP_SIZE + _ED25519_SIG_SIZE:
        raise MalformedNoteError("a cosignature/v1 payload is 8 + 64 bytes")
    timestamp = int.from_bytes(payload[:_TIMESTAMP_SIZE], "big")
    if timestamp > MAX_TIMESTAMP:
        raise MalformedNoteError("cosignature timestamp exceeds 2**63 - 1")
    return timestamp


def verify_cosignature_line(body: str, line: str, verifier: Verifier) -> int | None:
    """Verify one cosignature line over checkpoint ``body``; return its timestamp.

    Returns ``None`` when the line is malformed, by another key, or does not
    verify.  Raises ``ValueError`` only for a verifier that is not a
    cosignature/v1 (type 0x04) key, which is a programming error.
    """
    if verifier.sig_type != SIG_COSIGNATURE_V1:
        raise ValueError("verify_cosignature_line needs a cosignature/v1 (0x04) verifier")
    try:
        sig = parse_signature_line(line)
        _check_text(body)
    except NoteError:
        return None
    if not verifier.verify(body, sig):
        return None
    return cosignature_timestamp(sig)
