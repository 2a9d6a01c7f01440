"""Checkpoints an auditor already holds: the audited log must extend each of them.

Why: an operator who rewrites history re-signs every checkpoint of the new history,
which then verifies on its own. Only a checkpoint signed before the rewrite (from an
earlier audit, a receipt, ``GET /v1/checkpoint``, a witness) shows the fork: the same
key signed two roots for one size. ``dfg audit verify --known-checkpoint FILE`` makes
this check; the tree's root at the held size comes from the audited entries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from ledger.audit import Problem
from ledger.checkpoint import CheckpointError, open_checkpoint, parse_checkpoint_body
from ledger.note import NoteError, Verifier, parse_note


class HeldCheckpointError(ValueError):
    """A held checkpoint that cannot be used: unreadable, or not the ledger's."""


@dataclass(frozen=True)
class HeldCheckpoint:
    source: str
    size: int
    root: bytes


def note_in(text: str) -> str:
    """The signed note a file holds: the note itself (``GET /v1/checkpoint``), or a JSON
    object carrying it as ``checkpoint`` (a receipt) or ``note`` (the ``latest`` or ``final``
    of ``GET /v1/checkpoint/witnessed``)."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise HeldCheckpointError("neither a signed note nor a JSON object") from exc
    for member in ("checkpoint", "note"):
        if isinstance(document, dict) and isinstance(document.get(member), str):
            return str(document[member])
    raise HeldCheckpointError("a JSON object without a 'checkpoint' or 'note' member")


def claimed_size(text: str) -> int:
    """The size a held checkpoint states, before its signature can be checked (the
    ledger's key is known once the audit has read the genesis entry): the audit keeps
    its tree's root at that size."""
    try:
        body, _ = parse_note(note_in(text))
        return parse_checkpoint_body(body).size
    except (NoteError, CheckpointError) as exc:
        raise HeldCheckpointError(f"not a signed checkpoint: {exc}") from exc


def open_held(text: str, source: str, verifier: Verifier, origin: str) -> HeldCheckpoint:
    """The checkpoint in ``text``, which must be signed by the audited ledger's key."""
    try:
        checkpoint = open_checkpoint(note_in(text), verifier, origin=origin)
    except CheckpointError as exc:
        raise HeldCheckpointError(f"not a checkpoint of this ledger: {exc}") from exc
    return HeldCheckpoint(source, checkpoint.size, checkpoint.root_hash)


def held_problem(held: HeldCheckpoint, size: int, root_at: Callable[[int], bytes]) -> Problem | None:
    """What is wrong with the audited log of ``size`` entries given ``held``, if anything.
    ``root_at``: the verified tree's root at a size up to ``size``."""
    if held.size > size:
        return Problem(
            size + 1,
            f"is missing: {held.source} holds the ledger's checkpoint of size {held.size}, but the"
            f" log ends at {size} (entries were removed, or this copy is older than that checkpoint)",
        )
    root = root_at(held.size)
    if root != held.root:
        return Problem(
            held.size,
            f"the ledger forked: its tree at this size has root {root.hex()}, but {held.source}"
            f" holds a checkpoint signed by the same key with root {held.root.hex()}",
        )
    return None
