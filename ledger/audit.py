"""Audit: replay the whole log and check everything, naming the first bad entry.

For every entry, in order: its position, that it is canonical, that its transaction
parses, that the key was valid for the signer at that point, chain, validity time,
nonce, every domain rule (by running the same handlers the sequencer ran) and that
the recorded event is exactly what the transaction produces (byte for byte). Every
signature is checked on all cores while the replay continues. The Merkle tree is
rebuilt from the leaves; every checkpoint's signature and root is checked against
it, and every stored tree node (those that serve clients' proofs) is compared with
it, so successive checkpoints are consistent; one consistency proof built from the
stored nodes, from the first checkpoint to the newest, checks the proof path too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

from eventsourcing.domain import Aggregate

from domain.errors import DomainError
from domain.handlers import decide
from domain.rules import genesis_version
from domain.times import parse_time
from ledger.authorize import authorise, signing_key
from ledger.checkpoint import CheckpointError, open_checkpoint
from ledger.entry import Entry, EntryFormatError
from ledger.errors import Rejected
from ledger.known_ids import KnownIds
from ledger.merkle import Frontier, NodeReader, consistency_proof, leaf_hash, verify_consistency
from ledger.note import NoteError, Verifier, parse_signature_line
from ledger.recent import Missing, RecentItems
from ledger.state_view import AggregateLookups
from ledger.store import LedgerStore, StoredCheckpoint, StoredEntry, all_checkpoints, newest_entry_time
from ledger.transaction import parse_transaction
from ledger.verifier import ParallelVerifier
from ledger.witness import WitnessPolicy

#: Loads an aggregate from the entries before a sequence number (None if it has none).
LoadBefore = Callable[[uuid.UUID, int], Aggregate | None]
_SIGNATURE_CHUNK = 2048
#: A log no checkpoint covers is tied to nothing: anyone can write a genesis entry that
#: names a ledger's public checkpoint key, and entries after it, without its private key.
UNSIGNED_LOG = (
    "no checkpoint signed by the ledger's key covers the log: nothing ties these entries"
    " to that key (a ledger has one from its genesis entry)"
)
_NODE_PAGE = 8192


@dataclass(frozen=True)
class Problem:
    seq: int
    message: str
    #: The entry follows rules newer than this software knows: it cannot be judged
    #: here, which is no evidence against the ledger (a newer dfg replays it).
    newer_rules: bool = False

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.message}" if self.seq else self.message


@dataclass
class AuditReport:
    entries: int = 0
    checkpoints: int = 0
    root: bytes = b""
    chain: str | None = None
    origin: str | None = None
    checkpoint_key: str | None = None
    operator_kid: str | None = None
    #: The newest checkpoint checked: the entries after it carry no signature yet.
    signed_size: int = 0
    signed_root: bytes = b""
    #: The tree's root at sizes the caller asked for (``roots_at``): checkpoints an
    #: auditor already holds (``ledger.held_checkpoints``).
    roots: dict[int, bytes] = field(default_factory=dict)
    #: With a witness policy: the newest checkpoint cosigned by a quorum (0: none).
    final_size: int = 0
    final_checkpoints: int = 0
    #: Contiguous ranges the entries were replayed in, side by side (1: one pass).
    segments: int = 1
    #: A live ledger: its size when the audit ended, beyond the head it audited (0: it
    #: did not grow). Entries appended meanwhile are left to the next audit.
    grown_to: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return min(self.problems, key=lambda p: p.seq) if self.problems else None


class AuditFailure(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class NewerRules(AuditFailure):
    """An entry follows, or moves the ledger to, a rules version newer than this software
    knows (``domain.rules``): it cannot be judged here, which is not evidence against it
    (a replica stops without recording a violation; a newer dfg replays it)."""


class NotTheExpectedLedger(AuditFailure):
    """The genesis entry names another chain or checkpoint key than the one expected:
    the log is another ledger's (for a replica: a configuration error, not evidence)."""


def genesis_mismatch(ledger: dict[str, Any], *, chain: str | None, checkpoint_key: str | None) -> str | None:
    """Why a genesis entry's ``ledger`` object is not the ledger expected, or None:
    one wording for the audit and for a node that checks its source before it keeps
    anything."""
    if chain and ledger.get("chain") != chain:
        return f"this is chain {ledger.get('chain')!r}, not the expected {chain!r}"
    if checkpoint_key and ledger.get("checkpoint_key") != checkpoint_key:
        return "the genesis entry names a different checkpoint key than the one you trust"
    return None


class _ReplayState(AggregateLookups):
    """Aggregates as of the entry being replayed; bounded so memory stays flat."""

    def __init__(self, load: LoadBefore, maxsize: int) -> None:
        self._load = load
        self._items: RecentItems[uuid.UUID, Aggregate | None] = RecentItems(maxsize)
        self._known = KnownIds()
        self.size = 0
        #: What the store raised when it could not load an aggregate, or a signer's last
        #: nonce (``Auditor.feed`` lets it through: the database failed, not the entry).
        self.load_error: Exception | None = None

    def _get(self, aggregate_id: uuid.UUID) -> Aggregate | None:
        held = self._items.get(aggregate_id)
        if not isinstance(held, Missing):
            return held
        if not self._known.may_exist(aggregate_id):
            return None  # replay is in order: never created so far means absent
        try:
            loaded = self._load(aggregate_id, self.size + 1)
        except Exception as exc:
            self.load_error = exc
            raise
        self._items.put(aggregate_id, loaded)  # absence is remembered too
        return loaded

    def know(self, prefixes: Iterable[int]) -> None:
        """Aggregates created before the replay starts (``KnownIds.prefix`` of each)."""
        self._known = KnownIds(prefixes)

    def put(self, aggregate: Aggregate) -> None:
        self._known.add(aggregate.id)
        self._items.put(aggregate.id, aggregate)


class Auditor:
    """Replays entries handed to it in order (``feed``), then ``finish`` checks the end."""

    def __init__(
        self,
        *,
        load: LoadBefore,
        checkpoints: Sequence[StoredCheckpoint],
        read_nodes: NodeReader | None = None,
        read_node_range: Callable[[int, int, int], Sequence[bytes]] | None = None,
        verifier: ParallelVerifier | None = None,
        expected_checkpoint_key: str | None = None,
        expected_chain: str | None = None,
        cache_size: int = 10_000,
        signature_chunk: int = _SIGNATURE_CHUNK,
        keep_accepted: bool = False,
        witnesses: WitnessPolicy | None = None,
        roots_at: Collection[int] = (),
    ) -> None:
        self.report = AuditReport()
        self._roots_at = frozenset(roots_at)
        self._witnesses = witnesses
        self._signature_chunk = signature_chunk
        self._keep = keep_accepted
        #: With ``keep_accepted``: what the replayed entries add to a replica's store.
        self.accepted: list[Entry] = []
        self.tx_rows: list[tuple[str, int, int]] = []
        self._last_nonce: Callable[[str], int] = lambda _signer: 0
        self._state = _ReplayState(load, cache_size)
        self._checkpoints = sorted(checkpoints, key=lambda c: c.size)
        self._next_checkpoint = 0
        self._read_nodes = read_nodes
        self._read_node_range = read_node_range
        self._new_nodes: list[tuple[int, int, bytes]] = []
        self._verifier = verifier or ParallelVerifier()
        self._expected_key = expected_checkpoint_key
        self._expected_chain = expected_chain
        self._frontier = Frontier.empty()
        self._ledger: dict[str, str] | None = None
        self._note_verifier: Verifier | None = None
        self._nonces: dict[str, int] = {}
        self._last_ts: datetime | None = None
        #: (size, root) of the first and the newest checkpoint checked (a segment's first
        #: is the newest one before it), for the one consistency proof ``finish`` checks.
        self._first_checkpoint: tuple[int, bytes] | None = None
        self._last_checkpoint: tuple[int, bytes] | None = None
        self._pending: list[tuple[int, Any, dict[str, Any]]] = []
        self._in_flight: list[tuple[list[int], list[Future[list[bool]]]]] = []
        #: In a segment: each signer's first (nonce, seq) here, and the first entry's
        #: time, which the entries before the segment must be checked against.
        self.first_nonces: dict[str, tuple[int, int]] | None = None
        self.first_ts: datetime | None = None
        #: A segment's stored head, when it is the last segment (see ``end_at``).
        self._segment_head: tuple[int, bytes] | None = None
        #: A segment's last entry (None: to the end of the log), which must be there.
        self._segment_end: int | None = None

    @classmethod
    def resume(cls, store: LedgerStore, **options: Any) -> Auditor:
        """An auditor that continues after the entries ``store`` already holds (a
        replica's own, verified copy), as if it had replayed them itself."""
        auditor = cls(load=store.load_aggregate_before, checkpoints=(), **options)
        size, root = store.head()
        auditor._start_after(store, size)
        if auditor._frontier.root() != root:
            raise ValueError("the replica's stored tree does not match its head")
        auditor._last_nonce = store.last_nonce
        auditor.report.entries = size
        auditor._last_ts = newest_entry_time(store, size)
        return auditor

    @classmethod
    def segment(
        cls,
        store: LedgerStore,
        start: int,
        end: int | None,
        *,
        head: tuple[int, bytes] | None = None,
        **options: Any,
    ) -> Auditor:
        """An auditor for entries ``start..end`` (``end`` None: to the last) of ``store``
        alone, run beside others; the last segment checks the stored ``head`` at its end.

        It takes the entries before ``start`` as they are stored (their aggregates,
        the tree nodes they completed, the newest checkpoint before it); the segments
        before this one check exactly those, so when every segment passes, the whole
        log does, and the earliest problem any segment finds is the log's first. What
        crosses a boundary (each signer's first nonce here, the first entry's time) is
        left for whoever joins the segments: see ``first_nonces`` and ``first_ts``."""
        checkpoints = [c for c in all_checkpoints(store) if end is None or c.size <= end]
        auditor = cls(
            load=store.load_aggregate_before,
            checkpoints=[c for c in checkpoints if c.size >= start],
            read_nodes=store.read_nodes,
            read_node_range=store.read_node_range,
            **options,
        )
        auditor.first_nonces = {}
        auditor._segment_head = head
        auditor._segment_end = end
        auditor._start_after(store, start - 1)
        before = [c for c in checkpoints if c.size < start]
        if before:
            auditor._adopt_previous_checkpoint(before[-1])
        return auditor

    def _start_after(self, store: LedgerStore, size: int) -> None:
        """Continue after the first ``size`` entries of ``store`` as they are stored."""
        self._frontier = Frontier.load(size, store.read_nodes)
        self._state.size = size
        if size:  # nothing precedes entry 1 (and asking would scan a whole index)
            self._state.know(store.aggregate_id_prefixes(before=size + 1))
            (genesis,) = store.read_entries(1, 1)
            self._adopt_genesis(Entry.decode(genesis.canonical))

    def _adopt_previous_checkpoint(self, stored: StoredCheckpoint) -> None:
        """The checkpoint before a segment, where its consistency proof starts (the
        segment before checks its root against the entries)."""
        assert self._note_verifier is not None and self._ledger is not None
        try:
            checkpoint = open_checkpoint(stored.note, self._note_verifier, origin=self._ledger["origin"])
        except CheckpointError as exc:
            self._fail(stored.size, f"checkpoint at this size is not validly signed: {exc}")
        self._first_checkpoint = self._last_checkpoint = (checkpoint.size, checkpoint.root_hash)

    def end_at(self, size: int) -> None:
        """This segment now ends at entry ``size`` (not yet replayed): the checkpoints
        after it, and the stored head, are left to the segment that continues there."""
        if size < self._frontier.size:
            raise ValueError(f"entry {size} is already replayed")
        self._checkpoints = [c for c in self._checkpoints if c.size <= size]
        self._segment_head = None
        self._segment_end = size

    @property
    def size(self) -> int:
        return self._frontier.size

    @property
    def last_nonces(self) -> dict[str, int]:
        """Each signer's newest nonce among the entries replayed."""
        return dict(self._nonces)

    @property
    def last_ts(self) -> datetime | None:
        return self._last_ts

    @property
    def ledger(self) -> dict[str, str] | None:
        return self._ledger

    @property
    def checkpoint_verifier(self) -> Verifier | None:
        return self._note_verifier

    def root(self) -> bytes:
        return self._frontier.root()

    def verify_signatures(self) -> None:
        """Wait for every signature check of the entries fed so far (a replica calls
        this before it stores them); raises ``AuditFailure`` for the first bad one."""
        self._launch_signatures()
        self._collect_signatures(wait_all=True)

    def take_accepted(self) -> tuple[list[Entry], list[tuple[int, int, bytes]], list[tuple[str, int, int]]]:
        """Entries, tree nodes and nonce rows replayed since the last call."""
        taken = (self.accepted, self._new_nodes, self.tx_rows)
        self.accepted, self._new_nodes, self.tx_rows = [], [], []
        return taken

    # --- feeding -------------------------------------------------------------------

    def feed(self, stored: StoredEntry) -> None:
        expected_seq = self._frontier.size + 1
        if stored.seq != expected_seq:
            self._fail(expected_seq, f"expected entry {expected_seq} here, found entry {stored.seq}")
        try:
            self._replay(stored)
        except AuditFailure:
            raise
        except Exception as exc:  # anything unexpected still names the entry ...
            failed, self._state.load_error = self._state.load_error, None
            if exc is failed:  # ... but the database failing to answer (a cancelled query,
                raise  # a restart) says nothing of it: a replica recorded that as evidence
            self._fail(stored.seq, f"cannot be replayed: {exc}")
        self._new_nodes.extend(self._frontier.append(stored_leaf(stored)))
        self.report.entries += 1
        if self._roots_at and stored.seq in self._roots_at:
            self.report.roots[stored.seq] = self._frontier.root()
        if len(self._pending) >= self._signature_chunk:
            self._launch_signatures()
        if len(self._new_nodes) >= _NODE_PAGE and not self._keep:
            self._check_stored_nodes()
        self._check_checkpoints_up_to(self._frontier.size)

    def settle(self) -> None:
        """After a failure: finish every signature check still queued or running and
        record its failures too, so the report names the earliest bad entry."""
        self._launch_signatures()
        while self._in_flight:
            seqs, futures = self._in_flight.pop(0)
            verdicts = [ok for future in futures for ok in future.result()]
            self.report.problems.extend(
                Problem(seq, "its signature does not verify")
                for seq, ok in zip(seqs, verdicts, strict=True)
                if not ok
            )

    def finish(
        self,
        head: tuple[int, bytes] | None = None,
        tx_index: tuple[int, dict[str, int]] | None = None,
    ) -> AuditReport:
        head = head or self._segment_head
        self._launch_signatures()
        self._collect_signatures(wait_all=True)
        self._check_stored_nodes()
        self._check_checkpoints_up_to(self._frontier.size)
        self._check_consistency()
        size = self._frontier.size
        if size == 0:  # nothing to trust: no genesis entry names the chain or its keys
            self._fail(1, "is missing: the log is empty, it has no genesis entry")
        if self._segment_end is not None and size < self._segment_end and head is None:
            self._fail(size + 1, f"is missing: the log ends at {size}, before the segment's last entry")
        if self._next_checkpoint < len(self._checkpoints):
            cp = self._checkpoints[self._next_checkpoint]
            self._fail(size + 1, f"is missing: the log ends at {size} but a checkpoint covers {cp.size}")
        if head is not None and head[0] > size:
            self._fail(size + 1, f"is missing: the log ends at {size} but its head says {head[0]}")
        if head is not None and head != (size, self._frontier.root()):
            self._fail(
                0,
                # recorded: in the database's head, or in a bundle's header
                f"the recorded head (size {head[0]}, root {head[1].hex()}) does not match the entries"
                f" (size {size}, root {self._frontier.root().hex()})",
            )
        if tx_index is not None:
            self._check_tx_index(*tx_index)
        if self.first_nonces is None and self.report.checkpoints == 0:  # the whole log, not a segment
            self._fail(0, UNSIGNED_LOG)
        if self._witnesses is not None and self.report.final_size == 0 and size:
            self._fail(
                0,
                f"no checkpoint carries cosignatures of {self._witnesses.quorum} of the trusted witnesses",
            )
        self.report.root = self._frontier.root()
        return self.report

    # --- replay --------------------------------------------------------------------

    def _replay(self, stored: StoredEntry) -> None:
        seq = stored.seq
        try:
            numbered, ts, token = _seq_ts_tx(stored.canonical)
        except (ValueError, KeyError, TypeError) as exc:
            self._fail(seq, f"is not a readable entry ({_unreadable(stored.canonical, exc)})")
        if numbered != seq:
            self._fail(seq, f"position {seq} holds the entry numbered {numbered} (entries out of order)")
        if self._last_ts is not None and ts < self._last_ts:
            self._fail(seq, "its timestamp is earlier than the previous entry's")
        try:
            tx = parse_transaction(token)
        except Rejected as exc:
            self._fail(seq, f"its transaction is invalid: {exc}")
        self._state.size = seq - 1
        first_of_signer = tx.signer not in self._nonces
        try:
            signer = authorise(
                tx,
                state=self._state,
                ledger=self._ledger,
                now=ts,
                last_nonce=self._nonce_of(tx.signer),
                signature_ok=lambda _jwk: True,
            )
            # the key as it was before this entry (which may rotate or revoke it)
            jwk = signing_key(tx, self._state) if signer is None else signer.keys[tx.jws.kid].jwk
            aggregate = decide(tx.type, tx.command, signer, ts, self._state)
        except Rejected as exc:
            self._fail(seq, f"the transaction should have been refused: {exc}")
        except DomainError as exc:
            if exc.code == "unknown_rules":
                self._fail(seq, f"cannot be replayed by this dfg: {exc}", NewerRules)
            self._fail(seq, f"breaks a domain rule: {exc}")
        assert jwk is not None  # authorise() refused unknown keys
        self._pending.append((seq, tx.jws, jwk))
        (event,) = aggregate.collect_events()
        produced = Entry.from_event(cast(Aggregate.Event, event), seq=seq, tx=tx.jws.token)
        if produced.canonical != stored.canonical:
            self._fail(seq, "the recorded event is not what its transaction produces (altered entry)")
        if (stored.aggregate_id, stored.version, stored.event_type) != (
            produced.aggregate_id,
            produced.version,
            produced.event_type,
        ):
            self._fail(seq, "the stored event columns do not match the entry")
        self._state.put(aggregate)
        if self.first_nonces is not None and first_of_signer:
            self.first_nonces[tx.signer] = (tx.payload.nonce, seq)
        if self.first_ts is None:
            self.first_ts = ts
        self._nonces[tx.signer] = tx.payload.nonce
        self._last_ts = ts
        if self._keep:
            self.accepted.append(produced)
            self.tx_rows.append((tx.signer, tx.payload.nonce, seq))
        if self._ledger is None:
            self._adopt_genesis(produced)

    def _nonce_of(self, signer: str) -> int:
        last = self._nonces.get(signer)
        if last is None:
            try:
                last = self._nonces[signer] = self._last_nonce(signer)
            except Exception as exc:  # a replica's store: the database's error, as for aggregates
                self._state.load_error = exc
                raise
        return last

    def _adopt_genesis(self, entry: Entry) -> None:
        ledger = entry.data.get("ledger")
        assert isinstance(ledger, dict)
        self._ledger = ledger
        self._state.genesis_rules = genesis_version(ledger)
        self.report.chain = ledger["chain"]
        self.report.origin = ledger["origin"]
        self.report.checkpoint_key = ledger["checkpoint_key"]
        self.report.operator_kid = parse_transaction(entry.tx).jws.kid
        mismatch = genesis_mismatch(ledger, chain=self._expected_chain, checkpoint_key=self._expected_key)
        if mismatch is not None:
            self._fail(1, mismatch, NotTheExpectedLedger)
        self._note_verifier = Verifier.from_string(ledger["checkpoint_key"])

    # --- signatures ----------------------------------------------------------------

    def _launch_signatures(self) -> None:
        if not self._pending:
            return
        seqs = [seq for seq, _, _ in self._pending]
        work = [(jws, jwk) for _, jws, jwk in self._pending]
        self._pending = []
        self._in_flight.append((seqs, self._verifier.submit(work)))
        self._collect_signatures(wait_all=False)

    def _collect_signatures(self, *, wait_all: bool) -> None:
        """Collect finished signature checks; keep at most a few chunks in flight so the
        replay (one core) and the signature checks (all cores) overlap."""
        while self._in_flight and (
            wait_all or all(f.done() for f in self._in_flight[0][1]) or len(self._in_flight) > 2
        ):
            seqs, futures = self._in_flight.pop(0)
            verdicts = [ok for future in futures for ok in future.result()]
            for seq, ok in zip(seqs, verdicts, strict=True):
                if not ok:
                    self._fail(seq, "its signature does not verify")

    def _check_tx_index(self, rows: int, last_nonces: dict[str, int]) -> None:
        problem = tx_index_problem((rows, last_nonces), self.report.entries, self._nonces)
        if problem is not None:
            self._fail(0, problem)

    # --- stored tree ---------------------------------------------------------------

    def _check_stored_nodes(self) -> None:
        """The tree nodes the ledger serves proofs from must be the recomputed ones."""
        if self._keep:
            return  # a replica writes these nodes; there is nothing stored to compare yet
        nodes, self._new_nodes = self._new_nodes, []
        if self._read_node_range is None or not nodes:
            return
        # A flush covers contiguous entries, so each level's new nodes have
        # consecutive indexes: compared a level at a time, as one list (node by node,
        # in C; joined byte strings would let bytes move between nodes unnoticed).
        by_level: dict[int, list[bytes]] = {}
        first: dict[int, int] = {}
        for level, index, value in nodes:
            values = by_level.get(level)
            if values is None:
                by_level[level], first[level] = [value], index
            else:
                values.append(value)
        for level, values in sorted(by_level.items()):
            low = first[level]
            stored = self._read_node_range(level, low, low + len(values))
            if list(stored) == values:
                continue
            for offset, value in enumerate(values):
                if offset >= len(stored) or stored[offset] != value:
                    index = low + offset
                    self._fail(
                        (index + 1) << level,
                        f"the stored Merkle node (level {level}, index {index}) that this"
                        " entry completed differs from the recomputed tree",
                    )

    # --- checkpoints ---------------------------------------------------------------

    def _check_checkpoints_up_to(self, size: int) -> None:
        while self._next_checkpoint < len(self._checkpoints):
            stored = self._checkpoints[self._next_checkpoint]
            if stored.size != size:
                if stored.size < size:  # pragma: no cover - checked each append
                    self._fail(stored.size, "a checkpoint was skipped")
                return
            self._next_checkpoint += 1
            self._check_checkpoint(stored)

    def _check_checkpoint(self, stored: StoredCheckpoint) -> None:
        # Stored leaves first: a changed entry is then named by its own leaf, not by
        # the next checkpoint whose root it changed.
        self._check_stored_nodes()
        if self._note_verifier is None or self._ledger is None:
            self._fail(stored.size, "a checkpoint exists before the genesis entry")
            return
        try:
            checkpoint = open_checkpoint(stored.note, self._note_verifier, origin=self._ledger["origin"])
        except CheckpointError as exc:
            self._fail(stored.size, f"checkpoint at this size is not validly signed: {exc}")
        root = self._frontier.root()
        if checkpoint.size != stored.size or checkpoint.root_hash != root:
            self._fail(
                stored.size,
                "the signed checkpoint's root differs from the root of the entries: the checkpoint is"
                " validly signed, so either these entries were changed, or the ledger's key signed"
                " another history at this size (a fork)",
            )
        # The stored root column, which readers are served and a replica compares (a
        # bundle carries only the note: its checkpoints have none).
        if stored.root and stored.root != root:
            self._fail(stored.size, "the checkpoint's stored root differs from its signed root")
        self._check_cosignature_lines(stored)
        self._last_checkpoint = (stored.size, root)
        if self._first_checkpoint is None:
            self._first_checkpoint = self._last_checkpoint
        self.report.checkpoints += 1
        self.report.signed_size = stored.size
        self.report.signed_root = root
        if self._witnesses is not None:
            for problem in self._witnesses.forged(stored.note, stored.cosignatures):
                self._fail(stored.size, problem)
        if self._witnesses is not None and self._witnesses.is_final(stored.note, stored.cosignatures):
            self.report.final_size = stored.size
            self.report.final_checkpoints += 1

    def _check_cosignature_lines(self, stored: StoredCheckpoint) -> None:
        """Kept cosignatures are served with the checkpoint (``GET /v1/checkpoint``,
        receipts): each must be a signature line, so that the note with them added is
        still a note every reader can open. Whether a line's witness counts is each
        reader's policy (``--witness``)."""
        for line in stored.cosignatures:
            try:
                parse_signature_line(line)
            except NoteError as exc:
                self._fail(
                    stored.size, f"a cosignature kept with this checkpoint is not a signature line: {exc}"
                )

    def _check_consistency(self) -> None:
        """Successive checkpoints are consistent by construction here: each root was
        compared with the one tree recomputed from the leaves, and every stored node was
        compared with that tree, so a proof built from the stored nodes is that tree's.
        One proof, from the first checkpoint to the newest, checks the proof path itself
        end to end (it used to be one proof per checkpoint: 4 % of the replay)."""
        if self._first_checkpoint is None or self._last_checkpoint is None or self._read_nodes is None:
            return
        (old_size, old_root), (new_size, new_root) = self._first_checkpoint, self._last_checkpoint
        if new_size <= old_size:
            return
        proof = consistency_proof(old_size, new_size, self._read_nodes)
        if not verify_consistency(old_size, new_size, old_root, new_root, proof):
            self._fail(new_size, f"the stored tree does not prove consistency with checkpoint {old_size}")

    def _fail(self, seq: int, message: str, kind: type[AuditFailure] = AuditFailure) -> Any:
        problem = Problem(seq, message, newer_rules=kind is NewerRules)
        self.report.problems.append(problem)
        raise kind(problem)


def tx_index_problem(
    stored: tuple[int, dict[str, int]], entries: int, replayed: dict[str, int]
) -> str | None:
    """The (signer, nonce) index the sequencer decides replays with must match the log:
    one row per entry, and each signer's newest nonce."""
    rows, last_nonces = stored
    if rows == entries and last_nonces == replayed:
        return None
    differing = sorted(s for s in set(last_nonces) | set(replayed) if last_nonces.get(s) != replayed.get(s))
    # A row deleted below a signer's newest nonce changes no signer's newest one: then the
    # count is the news (an empty list of signers read as if none differed).
    named = f"; signers whose newest nonce differs: {differing[:5]}" if differing else ""
    return f"the stored nonce index does not match the log ({rows} rows for {entries} entries{named})"


_TAIL: Final = re.compile(rb'","v":[0-9]+,"version":[0-9]+}')


def _seq_ts_tx(canonical: bytes) -> tuple[int, datetime, bytes]:
    """The sequence number, time and transaction of a stored entry, read from its end
    without parsing the whole document. Sound for any bytes: the replay builds the
    entry from these three values and requires the stored bytes to equal it, so a
    document they were misread from fails that comparison. In a canonical entry these
    are the top-level members: keys are sorted ("data" precedes them), no string can
    contain a quote unescaped, and the time and the JWS contain no escapes."""
    seq_at = canonical.rfind(b',"seq":')
    ts_at = canonical.find(b',"ts":"', seq_at) if seq_at >= 0 else -1
    tx_at = canonical.find(b'","tx":"', ts_at) if ts_at >= 0 else -1
    tx_end = canonical.find(b'"', tx_at + 8) if tx_at >= 0 else -1
    seq = canonical[seq_at + 7 : ts_at]
    if tx_end < 0 or not seq.isdigit() or _TAIL.fullmatch(canonical, tx_end) is None:
        raise ValueError("it does not end with the seq, ts, tx, v and version members")
    return int(seq), parse_time(canonical[ts_at + 7 : tx_at].decode("ascii")), canonical[tx_at + 8 : tx_end]


def _unreadable(canonical: bytes, exc: Exception) -> str:
    """Why an entry could not be read, in the words of the full parser (the fast one
    only sees that its end is not where a canonical entry's is)."""
    try:
        Entry.decode(canonical)
    except EntryFormatError as decoded:
        return str(decoded)
    return str(exc)


def stored_leaf(stored: StoredEntry) -> bytes:
    return leaf_hash(stored.canonical)


def audit(
    entries: Iterable[StoredEntry],
    auditor: Auditor,
    *,
    head: tuple[int, bytes] | None = None,
    tx_index: Callable[[], tuple[int, dict[str, int]]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    """Run ``auditor`` over ``entries``; stops at the first problem (named in the report)."""
    try:
        for count, stored in enumerate(entries, start=1):
            auditor.feed(stored)
            if progress is not None and count % 1000 == 0:
                progress(count)
        auditor.finish(head, tx_index() if tx_index is not None else None)
    except AuditFailure:
        auditor.settle()  # an earlier bad signature may still be queued: name the earliest
    report = auditor.report
    first = report.first_problem
    if first is not None and first.seq:  # what was verified is what came before it
        report.entries = min(report.entries, first.seq - 1)
    return report


def batched(
    read: Callable[[int, int], Sequence[StoredEntry]],
    size: int = 5000,
    *,
    start: int = 1,
    stop: int | None = None,
) -> Iterator[StoredEntry]:
    """Entries from a store, in order, a page at a time (up to ``stop``, or all)."""
    while stop is None or start <= stop:
        page = read(start, size if stop is None else min(size, stop - start + 1))
        if not page:
            return
        yield from page
        start = page[-1].seq + 1


def audit_store(
    store: LedgerStore,
    *,
    verifier: ParallelVerifier | None = None,
    expected_checkpoint_key: str | None = None,
    expected_chain: str | None = None,
    progress: Callable[[int], None] | None = None,
    witnesses: WitnessPolicy | None = None,
) -> AuditReport:
    """Audit a ledger in its database: entries, stored tree, checkpoints, head, nonce
    index; as it stood at its head when the audit began (a live ledger grows meanwhile)."""
    # The checkpoints are read before the head: a checkpoint is saved after the entries
    # it covers, so the head read next covers every one of them.
    checkpoints = list(all_checkpoints(store))
    head = store.head()
    auditor = Auditor(
        load=store.load_aggregate_before,
        checkpoints=checkpoints,
        read_nodes=store.read_nodes,
        read_node_range=store.read_node_range,
        verifier=verifier,
        expected_checkpoint_key=expected_checkpoint_key,
        expected_chain=expected_chain,
        witnesses=witnesses,
    )
    report = audit(
        batched(store.read_entries, stop=head[0]),
        auditor,
        head=head,
        tx_index=lambda: store.tx_index_summary(upto=head[0]),
        progress=progress,
    )
    if report.ok:
        check_beyond_head(store, head[0], report)
    return report


def check_beyond_head(store: LedgerStore, size: int, report: AuditReport) -> None:
    """Entries stored after the head the audit began from: new ones, if the head has
    moved on since (the sequencer commits an entry and the head together; the entry is
    read first, so a head read after it covers it), else entries outside the ledger,
    written behind the sequencer's back."""
    if not store.read_entries(size + 1, 1):
        return
    now = store.head()[0]
    if now > size:
        report.grown_to = now
    else:
        report.problems.append(
            Problem(size + 1, f"is stored beyond the ledger's head (size {size}): no head covers it")
        )
