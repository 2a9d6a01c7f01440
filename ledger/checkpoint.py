"""C2SP transparency-log checkpoints (https://c2sp.org/tlog-checkpoint).

Why: a checkpoint is the ledger's signed tree head in the one format that
witnesses and generic tlog clients already understand -- a signed note whose
text is exactly::

    <origin>
    <tree size, decimal, no leading zeros>
    <base64 RFC 9162 root hash>
    [extension lines...]

Parsing is strict so that a checkpoint has a single byte representation; any
failure surfaces as :class:`CheckpointError` with a message saying what was
wrong.  Pure functions only: keys come from the caller.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.note import NoteError, Verifier, open_note, sign_note

__all__ = [
    "MAX_SIZE",
    "Checkpoint",
    "CheckpointError",
    "open_checkpoint",
    "parse_checkpoint_body",
    "sign_checkpoint",
]

MAX_SIZE = (1 << 64) - 1
"""Tree sizes are uint64 (RFC 9162)."""

_ROOT_SIZE = 32
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class CheckpointError(ValueError):
    """A checkpoint is malformed, or its signature is missing or wrong."""


def _is_clean_line(line: str) -> bool:
    """Non-empty, UTF-8 encodable, and free of newlines and other control characters."""
    if not line or any(ord(c) < 0x20 for c in line):
        return False
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Checkpoint:
    """The three essential parts of a tree head, plus optional opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not _is_clean_line(self.origin):
            raise CheckpointError(
                f"checkpoint origin must be a non-empty line without control characters, got {self.origin!r}"
            )
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError(f"checkpoint size must be an int, got {self.size!r}")
        if not 0 <= self.size <= MAX_SIZE:
            raise CheckpointError(f"checkpoint size {self.size} is outside 0..2**64-1")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != _ROOT_SIZE:
            raise CheckpointError("checkpoint root hash must be exactly 32 bytes")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("checkpoint extensions must be a tuple of str")
        for ext in self.extensions:
            if not isinstance(ext, str) or not _is_clean_line(ext):
                raise CheckpointError(
                    f"extension lines must be non-empty lines without control characters, got {ext!r}"
                )

    def body(self) -> str:
        """The note text: origin, size, base64 root, extension lines, each newline-terminated."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse a checkpoint note text strictly; ``parse_checkpoint_body(cp.body()) == cp``.

    Refused: missing final newline, fewer than three lines, empty lines
    anywhere (so no trailing garbage), a size with a sign, spaces or leading
    zeros, or a root that is not canonical base64 of exactly 32 bytes.
    """
    if not isinstance(text, str):
        raise CheckpointError(f"checkpoint body must be str, not {type(text).__name__}")
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint body must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint body needs at least 3 lines, got {len(lines)}")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin line is empty")
    if not _DECIMAL.fullmatch(size_text):
        raise CheckpointError(f"checkpoint size {size_text!r} is not a decimal without leading zeros")
    size = int(size_text)
    if size > MAX_SIZE:
        raise CheckpointError(f"checkpoint size {size_text} exceeds 2**64-1")
    try:
        root = base64.b64decode(root_text.encode("ascii"), validate=True)
    except ValueError:
        raise CheckpointError(f"checkpoint root hash {root_text!r} is not base64") from None
    if base64.b64encode(root).decode("ascii") != root_text:
        raise CheckpointError(f"checkpoint root hash {root_text!r} is not canonical base64")
    if len(root) != _ROOT_SIZE:
        raise CheckpointError(f"checkpoint root hash is {len(root)} bytes, not 32")
    if any(not ext for ext in extensions):
        raise CheckpointError("checkpoint has an empty line after the root hash")
    return Checkpoint(origin, size, root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, name: str, key: Ed25519PrivateKey) -> str:
    """Sign ``checkpoint`` with Ed25519 as key ``name`` (which SHOULD equal the origin)."""
    try:
        return sign_note(checkpoint.body(), name, key)
    except NoteError as exc:
        raise CheckpointError(f"cannot sign checkpoint: {exc}") from exc


def open_checkpoint(note: str, verifier: Verifier, *, origin: str | None = None) -> Checkpoint:
    """Verify the log's signature on a checkpoint note and parse it.

    Cosignatures and other signatures by keys other than ``verifier`` are
    ignored (verify those with :func:`ledger.note.open_note`).  The
    checkpoint's origin must equal ``origin``, which defaults to the
    verifier's key name: a log key must not vouch for another log's tree.
    """
    try:
        text, _ = open_note(note, [verifier])
    except NoteError as exc:
        raise CheckpointError(f"checkpoint signature check failed: {exc}") from exc
    checkpoint = parse_checkpoint_body(text)
    expected = verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise CheckpointError(
            f"checkpoint origin {checkpoint.origin!r} is not the expected origin {expected!r}"
        )
    return checkpoint
