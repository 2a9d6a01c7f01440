"""A node operator's replica: entries and checkpoints are accepted only once verified.

Why: a copy of the log is only worth something if it was checked independently of
the sequencer that produced it. A replica runs the audit's replay on every entry it
receives (the signature against the keys valid at that point in its *own* copy, the
nonce, validity time, every domain rule, and a byte-exact comparison of the recorded
event) and appends only what passed, with the tree nodes it computed itself, to its
own store. A checkpoint is accepted when the ledger's key signed it and its root is
the replica's own tree at that size; two validly signed checkpoints with different
roots for one size prove that the sequencer forked its history (equivocation).

On any violation the replica records the evidence and accepts nothing more, until an
operator has looked at it. Entries before the first bad one in a batch are kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from typing import NoReturn

from ledger.audit import AuditFailure, Auditor, NewerRules, NotTheExpectedLedger
from ledger.checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_checkpoint_body
from ledger.entry import Entry
from ledger.merkle import consistency_proof, root_at, verify_consistency
from ledger.note import NoteError, Verifier, parse_note
from ledger.store import AppendBatch, LedgerStore, RecordedViolation, StoredCheckpoint, StoredEntry
from ledger.verifier import ParallelVerifier

#: Signature checks are started every this many entries, so they overlap the replay.
_SIGNATURE_CHUNK = 256


class ViolationKind(StrEnum):
    BAD_ENTRY = "bad_entry"
    BAD_CHECKPOINT = "bad_checkpoint"
    CHECKPOINT_MISMATCH = "checkpoint_root_mismatch"
    EQUIVOCATION = "equivocation"


class ReplicaHalted(Exception):
    """The replica holds evidence of a violation and accepts nothing more."""

    def __init__(self, violation: RecordedViolation) -> None:
        super().__init__(f"{violation.kind} at entry {violation.seq}: {violation.message}")
        self.violation = violation


class NotThisLedger(Exception):
    """The entries are another ledger's than the one this replica was set up to follow
    (its genesis names another chain or checkpoint key): a configuration error, so
    nothing is recorded against the ledger."""


class NeedsNewerDfg(Exception):
    """The ledger follows a rules version newer than this software knows from an entry
    on: the replica keeps the entries before it and stops, recording nothing (the
    ledger is not at fault); upgrading dfg lets it go on from there."""


class OutOfOrder(Exception):
    """Entries arrived with a gap: a transport problem (re-read from the replica's
    size), not evidence against the ledger."""


@dataclass(frozen=True)
class AcceptedCheckpoint:
    checkpoint: Checkpoint
    note: str
    new: bool  # False when the replica already held this exact checkpoint


class Replica:
    def __init__(
        self,
        store: LedgerStore,
        *,
        verifier: ParallelVerifier | None = None,
        expected_checkpoint_key: str | None = None,
        expected_chain: str | None = None,
        keep_evidence: bool = True,
    ) -> None:
        """``keep_evidence``: record a violation in the store (a node operator's replica,
        which then accepts nothing more); False for a ledger recovering its own published
        entries, whose store is the ledger's and must not be marked by a bad source."""
        self.store = store
        self._keep_evidence = keep_evidence
        self._verifier = verifier or ParallelVerifier()
        self._expected_key = expected_checkpoint_key
        self._expected_chain = expected_chain
        #: Continues after the stored entries; None after a failure left it past them, or
        #: in doubt (``_replay`` replays from the store again).
        self._auditor: Auditor | None = self._resume()
        self._stored_size = self._auditor.size
        self._waiting: dict[int, str] = {}  # checkpoints beyond our size, by size
        self._trusted_key = Verifier.from_string(expected_checkpoint_key) if expected_checkpoint_key else None
        #: The first checkpoint read before the genesis entry that the trusted key did not
        #: sign: checked again once the genesis entry names the ledger's key.
        self._unsigned_before_genesis: str | None = None
        self._verified: list[AcceptedCheckpoint] = []

    @property
    def size(self) -> int:
        """Entries verified *and* stored (other threads may read this while a batch is
        being verified)."""
        return self._stored_size

    @property
    def halted(self) -> RecordedViolation | None:
        found = self.store.violations()
        return found[0] if found else None

    @property
    def origin(self) -> str | None:
        ledger = self._replay().ledger
        return ledger["origin"] if ledger else None

    def waiting_checkpoints(self) -> list[int]:
        return sorted(self._waiting)

    def take_verified_checkpoints(self) -> list[AcceptedCheckpoint]:
        """Checkpoints newly kept since the last call, including those that waited for
        entries (a witness cosigns each of them once)."""
        taken, self._verified = self._verified, []
        return taken

    def report_violation(
        self, kind: ViolationKind, seq: int, message: str, evidence: dict[str, str]
    ) -> NoReturn:
        """Record a violation found outside the replay (e.g. a record that is not an
        entry at all) and stop, as for any other."""
        self._halt(kind, seq, message, evidence)

    # --- entries -------------------------------------------------------------------

    def accept_entries(self, incoming: Sequence[StoredEntry]) -> list[Entry]:
        """Verify a batch of entries in order and append those that pass.

        Entries the replica already holds are skipped (a broker that lost data is
        refilled from the start of its gap). Returns the entries appended."""
        self._require_running()
        auditor = self._replay()  # first: after a failed append, the store says what it holds
        fresh = [e for e in incoming if e.seq > self.size]
        if not fresh:
            return []
        if fresh[0].seq != self.size + 1 or any(b.seq != a.seq + 1 for a, b in pairwise(fresh)):
            raise OutOfOrder(f"expected entry {self.size + 1} next, got entries from {fresh[0].seq}")
        try:
            for stored in fresh:
                auditor.feed(stored)
            auditor.verify_signatures()
        except NotTheExpectedLedger as exc:
            self._auditor = None
            raise NotThisLedger(exc.problem.message) from exc
        except AuditFailure as failure:
            self._auditor = None
            auditor.settle()  # name the earliest bad entry, even if a signature check was pending
            problem = auditor.report.first_problem
            assert problem is not None
            self.accept_entries([e for e in fresh if e.seq < problem.seq])  # keep the good prefix
            if isinstance(failure, NewerRules) and auditor.report.problems == [failure.problem]:
                raise NeedsNewerDfg(f"entry {problem.seq} {problem.message}") from failure
            bad = next((e for e in fresh if e.seq == problem.seq), fresh[0])
            evidence = {"entry": bad.canonical.decode("utf-8", "replace")}
            self._halt(ViolationKind.BAD_ENTRY, problem.seq, problem.message, evidence)
        except BaseException:  # the database, a worker process, a stop: nothing was judged
            self._auditor = None  # it replayed entries the store does not hold
            raise
        entries, nodes, tx_rows = auditor.take_accepted()
        try:
            self.store.append(
                AppendBatch(
                    entries=entries,
                    nodes=nodes,
                    tx_rows=tx_rows,
                    old_size=entries[0].seq - 1,
                    new_size=auditor.size,
                    new_root=auditor.root(),
                )
            )
        except BaseException:
            self._auditor = None  # the store is the truth: replay from it again (when it answers)
            raise
        self._stored_size = auditor.size
        if self._unsigned_before_genesis is not None:  # now checked with the ledger's key
            note, self._unsigned_before_genesis = self._unsigned_before_genesis, None
            self.accept_checkpoint(note)
        for size in [s for s in sorted(self._waiting) if s <= self.size]:
            self.accept_checkpoint(self._waiting.pop(size))
        return entries

    # --- checkpoints ---------------------------------------------------------------

    def accept_checkpoint(self, note: str) -> AcceptedCheckpoint | None:
        """Verify a checkpoint against the replica's own tree and keep it.

        Returns None when the replica has not reached its size yet: its signature is
        checked now (once the genesis entry names the key), its root as soon as the
        replica has the entries, and it is kept, or reported, then."""
        self._require_running()
        size = claimed_size(note)
        verifier = self._replay().checkpoint_verifier
        if size is None:
            self._halt(
                ViolationKind.BAD_CHECKPOINT, 0, "a checkpoint note is malformed", {"checkpoint": note}
            )
        if verifier is None:  # no genesis entry yet
            self._before_genesis(size, note)
            return None
        try:
            checkpoint = open_checkpoint(note, verifier, origin=self.origin)
        except CheckpointError as exc:
            self._halt(ViolationKind.BAD_CHECKPOINT, size, str(exc), {"checkpoint": note})
        if size > self.size:  # signed by the ledger's key: kept until its entries are here
            self._waiting.setdefault(size, note)
            return None
        held = self._held_checkpoint(size)
        if held is not None:
            if held.root == checkpoint.root_hash:
                return AcceptedCheckpoint(checkpoint, held.note, new=False)
            self._halt(
                ViolationKind.EQUIVOCATION,
                size,
                f"two checkpoints signed by the ledger's key disagree about the tree of size {size}",
                {"checkpoint": note, "conflicting_checkpoint": held.note},
            )
        own = self._replay().root() if size == self.size else root_at(size, self.store.read_nodes)
        if checkpoint.root_hash != own:
            self._halt(
                ViolationKind.CHECKPOINT_MISMATCH,
                size,
                f"the signed root of size {size} is not the root of the verified entries",
                {"checkpoint": note, "replica_root": own.hex()},
            )
        previous = self._previous_checkpoint(size)
        if previous is not None and size <= self.store.head()[0]:
            proof = consistency_proof(previous.size, size, self.store.read_nodes)
            if not verify_consistency(previous.size, size, previous.root, own, proof):  # pragma: no cover
                self._halt(
                    ViolationKind.CHECKPOINT_MISMATCH,
                    size,
                    f"not consistent with the checkpoint of size {previous.size}",
                    {"checkpoint": note, "previous_checkpoint": previous.note},
                )
        self.store.save_checkpoint(size, checkpoint.root_hash, note)
        accepted = AcceptedCheckpoint(checkpoint, note, new=True)
        self._verified.append(accepted)
        return accepted

    def _before_genesis(self, size: int, note: str) -> None:
        """A checkpoint read before the genesis entry waits for it. With the key the
        operator trusts, its signature is checked first, and one that key did not sign
        does not wait (hostile notes would pile up in memory). The first such note is
        checked again once the genesis entry is here: if the ledger's key is the one
        trusted, it is a forged checkpoint and reported as one; if not, the genesis
        entry itself was refused as another ledger's."""
        if self._trusted_key is not None:
            try:
                open_checkpoint(note, self._trusted_key)
            except CheckpointError:
                if self._unsigned_before_genesis is None:
                    self._unsigned_before_genesis = note
                return
        self._waiting.setdefault(size, note)

    # --- internals -----------------------------------------------------------------

    def _replay(self) -> Auditor:
        if self._auditor is None:  # after a failure: an append whose commit failed may
            self._auditor = self._resume()  # have been committed all the same
            self._stored_size = self._auditor.size
        return self._auditor

    def _resume(self) -> Auditor:
        return Auditor.resume(
            self.store,
            verifier=self._verifier,
            signature_chunk=_SIGNATURE_CHUNK,
            keep_accepted=True,
            expected_checkpoint_key=self._expected_key,
            expected_chain=self._expected_chain,
        )

    def _held_checkpoint(self, size: int) -> StoredCheckpoint | None:
        found = self.store.checkpoints(size - 1, 1)
        return found[0] if found and found[0].size == size else None

    def _previous_checkpoint(self, size: int) -> StoredCheckpoint | None:
        """The newest kept checkpoint below ``size``, when ``size`` extends the kept ones.
        (A late checkpoint for an older size needs no proof: its root was just found
        to be the replica's own tree at that size, and the tree only grows.)"""
        latest = self.store.latest_checkpoint()
        return latest if latest is not None and latest.size < size else None

    def _require_running(self) -> None:
        violation = self.halted
        if violation is not None:
            raise ReplicaHalted(violation)

    def _halt(self, kind: ViolationKind, seq: int, message: str, evidence: dict[str, str]) -> NoReturn:
        text = json.dumps(evidence, sort_keys=True)
        if not self._keep_evidence:
            now = datetime.now(UTC).isoformat()
            raise ReplicaHalted(RecordedViolation(now, kind.value, seq, message, text))
        self.store.record_violation(kind.value, seq, message, text)
        violation = self.halted
        assert violation is not None
        raise ReplicaHalted(violation)


def claimed_size(note: str) -> int | None:
    """The size a checkpoint note claims, before its signature is checked."""
    try:
        text, _ = parse_note(note)
        return parse_checkpoint_body(text).size
    except (NoteError, CheckpointError):
        return None
