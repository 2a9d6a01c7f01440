"""Witnesses: node operators cosign checkpoints they verified; k of n make one final.

Why: a checkpoint signed only by the sequencer proves nothing against the sequencer
itself, which could show different histories to different people. A node operator
that verified every entry up to a checkpoint cosigns it (C2SP tlog-cosignature,
``cosignature/v1``); a reader who trusts any k of n independent witnesses knows that
at least k parties saw this exact tree, so a fork would have to fool all of them.

A witness is a principal admitted as ``node_operator`` whose Ed25519 key is registered
on the ledger; its cosignature key name is its principal id. Pure functions: keys and
clocks come from the caller.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.note import (
    SIG_COSIGNATURE_V1,
    NoteError,
    Verifier,
    cosignature_line,
    parse_note,
    parse_signature_line,
    verify_cosignature_line,
)

WITNESS_KIND = "node_operator"


class WitnessPolicyError(ValueError):
    """A witness policy that cannot be satisfied as written."""


def witness_verifier(name: str, jwk: Mapping[str, str]) -> Verifier | None:
    """The cosignature key of an Ed25519 JWK registered for principal ``name``
    (None for any other key type: only Ed25519 keys can cosign)."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "x" not in jwk:
        return None
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    try:
        return Verifier(name, raw, SIG_COSIGNATURE_V1)
    except NoteError:
        return None


def checkpoint_body(note: str) -> str:
    """The signed text of a checkpoint note (what cosignatures cover)."""
    text, _ = parse_note(note)
    return text


def cosign(note: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """A witness's cosignature line for the checkpoint ``note`` at ``timestamp``
    (POSIX seconds). The caller must have verified the checkpoint first."""
    return cosignature_line(checkpoint_body(note), name, key, timestamp)


def with_cosignatures(note: str, lines: Iterable[str]) -> str:
    """The checkpoint note with cosignature lines appended (a C2SP signed note with
    several signatures, readable by any signed-note tool)."""
    existing = set(note.splitlines(keepends=True))
    extra = [line if line.endswith("\n") else line + "\n" for line in lines]
    return note + "".join(line for line in dict.fromkeys(extra) if line not in existing)


@dataclass(frozen=True)
class WitnessPolicy:
    """Trust a checkpoint once ``quorum`` of ``witnesses`` (name -> keys) cosigned it."""

    witnesses: Mapping[str, Sequence[Verifier]]
    quorum: int
    _all: tuple[Verifier, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise WitnessPolicyError("a witness quorum is at least 1")
        if self.quorum > len(self.witnesses):
            raise WitnessPolicyError(
                f"a quorum of {self.quorum} cannot be met by {len(self.witnesses)} distinct"
                f" witness{'' if len(self.witnesses) == 1 else 'es'}"
                " (keys of one witness name count as one witness)"
            )
        object.__setattr__(self, "_all", tuple(v for keys in self.witnesses.values() for v in keys))

    @classmethod
    def from_keys(cls, vkeys: Iterable[str], quorum: int) -> WitnessPolicy:
        """From verifier key strings (``name+hash+key``), e.g. given on a command line."""
        witnesses: dict[str, list[Verifier]] = {}
        for vkey in vkeys:
            try:
                verifier = Verifier.from_string(vkey)
            except NoteError as exc:
                raise WitnessPolicyError(f"witness key {vkey!r}: {exc}") from exc
            if verifier.sig_type != SIG_COSIGNATURE_V1:
                raise WitnessPolicyError(f"witness key {vkey!r} is not a cosignature/v1 key")
            witnesses.setdefault(verifier.name, []).append(verifier)
        return cls(witnesses, quorum)

    def cosigners(self, note: str, extra_lines: Iterable[str] = ()) -> set[str]:
        """The witnesses with a valid cosignature on ``note`` (in the note itself or
        among ``extra_lines``); an unknown or wrong key counts for nothing."""
        try:
            body, signatures = parse_note(note)
        except NoteError:
            return set()
        lines = [s.line() for s in signatures] + list(extra_lines)
        valid: set[str] = set()
        for line in lines:
            for verifier in self._all:
                if verifier.name not in valid and verify_cosignature_line(body, line, verifier) is not None:
                    valid.add(verifier.name)
        return valid

    def failing(self, note: str, extra_lines: Iterable[str] = ()) -> set[str]:
        """The witnesses with a line on ``note`` (or among ``extra_lines``) under their
        key (name and key hash) that does not verify: a cosignature damaged or forged,
        which waiting will not mend. A line by a key the policy does not hold is no
        one's business (C2SP signed notes: unknown keys are ignored)."""
        try:
            body, signatures = parse_note(note)
        except NoteError:
            return set()
        for line in extra_lines:
            with suppress(NoteError):  # not a signature line: the callers refuse those
                signatures.append(parse_signature_line(line))
        return {s.name for s in signatures for v in self._all if v.matches(s) and not v.verify(body, s)}

    def forged(self, note: str, extra_lines: Iterable[str] = ()) -> list[str]:
        """What is wrong with the trusted witnesses' lines on a stored checkpoint: each
        witness with a line under its key that does not verify, and no line that does
        (as a receipt's check counts them). The ledger keeps only cosignatures that
        verified when they came, so such a line was damaged or forged since."""
        failing = self.failing(note, extra_lines) - self.cosigners(note, extra_lines)
        return [
            f"the cosignature of trusted witness {name} does not verify (damaged or forged)"
            for name in sorted(failing)
        ]

    def is_final(self, note: str, extra_lines: Iterable[str] = ()) -> bool:
        return len(self.cosigners(note, extra_lines)) >= self.quorum
