"""The sequencer: the single writer of a ledger.

For each batch of signed transactions it checks every signature in parallel, then,
in order, authorises each transaction (key valid now, chain, validity, nonce), lets
the domain decide, and appends exactly one entry per accepted transaction. The whole
batch is one database transaction (group commit): entries, Merkle nodes, nonce index
and head. A submitter gets its receipt only after that transaction committed.
Refused transactions leave no trace; a failed commit rolls the in-memory state back.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from eventsourcing.domain import Aggregate

from domain.commands import Genesis
from domain.errors import DomainError
from domain.handlers import decide
from domain.rules import genesis_version
from ledger.authorize import authorise, signing_key
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.entry import MAX_ENTRY_BYTES, Entry
from ledger.errors import Rejected
from ledger.jws import verify_signature
from ledger.known_ids import KnownIds
from ledger.merkle import Frontier
from ledger.note import SignerKey
from ledger.recent import Missing, RecentItems
from ledger.state_view import AggregateLookups
from ledger.store import AppendBatch, LedgerStore, find_transaction, genesis_parameters, newest_entry_time
from ledger.transaction import Transaction, parse_transaction
from ledger.verifier import ParallelVerifier

Clock = Callable[[], datetime]

log = logging.getLogger("dfg.sequencer")


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Accepted:
    """A durable entry. ``duplicate`` is True when the same JWS was accepted before."""

    entry: Entry
    duplicate: bool = False

    @property
    def seq(self) -> int:
        return self.entry.seq


Outcome = Accepted | Rejected


@dataclass(frozen=True)
class PreparedBatch:
    parsed: list[Transaction | Rejected]
    indexes: list[int]  # positions whose signatures are being checked
    futures: list[Future[list[bool]]]


@dataclass(frozen=True)
class CheckpointPolicy:
    """Sign a checkpoint every ``every`` entries, and no later than ``interval_ms``
    after the oldest entry none covers yet (so also after the newest, under steady
    traffic as after a burst)."""

    every: int = 1000
    interval_ms: int = 1000


class AggregateCache:
    """Aggregates as of the head, most recently used kept in memory.

    Bounded so that a ledger of millions of consents runs in constant memory.
    """

    def __init__(self, store: LedgerStore, maxsize: int) -> None:
        self._store = store
        self._items: RecentItems[uuid.UUID, Aggregate | None] = RecentItems(maxsize)
        self._known = KnownIds(store.aggregate_id_prefixes())

    def get(self, aggregate_id: uuid.UUID) -> Aggregate | None:
        held = self._items.get(aggregate_id)
        if not isinstance(held, Missing):
            return held
        if not self._known.may_exist(aggregate_id):
            return None  # most misses are new consents and pseudonyms: no query
        aggregate = self._store.load_aggregate(aggregate_id)
        self.put(aggregate_id, aggregate)
        return aggregate

    def put(self, aggregate_id: uuid.UUID, aggregate: Aggregate | None) -> None:
        if aggregate is not None:
            self._known.add(aggregate_id)
        self._items.put(aggregate_id, aggregate)

    def forget(self, ids: Sequence[uuid.UUID]) -> None:
        for aggregate_id in ids:
            self._items.forget(aggregate_id)


class _BatchState(AggregateLookups):
    """The domain's view of state while one batch is decided (``domain.handlers.State``)."""

    def __init__(self, cache: AggregateCache, size: int) -> None:
        self._cache = cache
        self.size = size
        self.touched: dict[uuid.UUID, Aggregate] = {}

    def _get(self, aggregate_id: uuid.UUID) -> Aggregate | None:
        return self.touched.get(aggregate_id) or self._cache.get(aggregate_id)


class Sequencer:
    def __init__(
        self,
        store: LedgerStore,
        *,
        checkpoint_key: SignerKey | None,
        clock: Clock = system_clock,
        policy: CheckpointPolicy | None = None,
        verifier: ParallelVerifier | None = None,
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.clock = clock
        self.policy = policy or CheckpointPolicy()
        self.verifier = verifier or ParallelVerifier()
        #: Tells the storage's "cannot be used now" errors (logged in one line when a
        #: checkpoint cannot be signed) from faults (logged with their traceback); the
        #: storage is the caller's to know.
        self.is_outage: Callable[[BaseException], bool] = lambda exc: False
        self._checkpoint_key = checkpoint_key
        self._cache = AggregateCache(store, cache_size)
        self._nonces: dict[str, int] = {}
        self._lock = threading.Lock()
        size, _ = store.head()
        self._frontier = Frontier.load(size, store.read_nodes)
        #: The newest entry's time, also across restarts: a clock set back (by NTP, or
        #: a restart on a host whose clock is behind) must not make the log's time go
        #: backwards, which every audit and replica refuses.
        self._last_ts = newest_entry_time(store, size)
        latest = store.latest_checkpoint()
        self._checkpointed = latest.size if latest else 0
        #: When the oldest entry no checkpoint covers was appended (monotonic), or None
        #: (for entries an earlier process left uncovered: when this one started).
        self._uncovered_since: float | None = None if self._checkpointed >= size else time.monotonic()
        self.ledger: dict[str, str] | None = genesis_parameters(store)
        #: A batch whose commit failed before the store said whether it holds it:
        #: (the head it would make, what adopting it does).
        self._unsettled: tuple[tuple[int, bytes], Callable[[], None]] | None = None
        if self.ledger is not None and checkpoint_key is not None:
            self._check_checkpoint_key(checkpoint_key)

    # --- public API --------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._frontier.size

    @property
    def chain(self) -> str | None:
        return None if self.ledger is None else self.ledger["chain"]

    def submit(self, tokens: Sequence[str]) -> list[Outcome]:
        """Sequence a batch of compact JWS; one outcome per token, in order."""
        return self.commit(self.prepare(tokens))

    def prepare(self, tokens: Sequence[str]) -> PreparedBatch:
        """Parse a batch and start checking its signatures on all cores, without waiting.

        A caller may prepare the next batch while the current one commits; a key that
        the current batch adds is then checked inline when the next batch commits."""
        with self._lock:
            parsed: list[Transaction | Rejected] = []
            for token in tokens:
                try:
                    parsed.append(parse_transaction(token))
                except Rejected as exc:
                    parsed.append(exc)
            state = _BatchState(self._cache, self._frontier.size)
            jobs = [
                (i, item.jws, jwk)
                for i, item in enumerate(parsed)
                if not isinstance(item, Rejected) and (jwk := signing_key(item, state)) is not None
            ]
            futures = self.verifier.submit([(jws, jwk) for _, jws, jwk in jobs])
            return PreparedBatch(parsed, [i for i, _, _ in jobs], futures)

    def commit(self, batch: PreparedBatch) -> list[Outcome]:
        """Sequence a prepared batch and make it durable; one outcome per token, in order."""
        signatures = [False] * len(batch.parsed)
        verdicts = [ok for future in batch.futures for ok in future.result()]
        for i, ok in zip(batch.indexes, verdicts, strict=True):
            signatures[i] = ok
        with self._lock:
            self._settle()
            outcomes = self._sequence(batch.parsed, signatures)
            if self._uncovered() and self._due():
                self._try_to_sign(self._frontier.size, self._frontier.root())
            return outcomes

    def checkpoint_now(self) -> bool:
        """Sign a checkpoint for the current head if it has none yet."""
        with self._lock:
            return self._maybe_checkpoint(force=True)

    def tick(self) -> None:
        """Called periodically: signs the time-based checkpoint when it is due."""
        with self._lock:
            self._maybe_checkpoint(force=False)

    def start_checkpointer(self) -> threading.Event:
        """Run ``tick`` in the background so that a checkpoint follows the newest entry
        within the policy's interval even when no more transactions arrive. Set the
        returned event to stop it."""
        stop = threading.Event()
        period = max(0.01, self.policy.interval_ms / 4000)

        def loop() -> None:
            failures = 0
            while not stop.wait(min(period * 2**failures, 5.0)):
                try:
                    self.tick()
                    failures = 0
                except Exception as exc:  # e.g. the database locked or gone for a while: try again
                    self._log_signing_failure(exc, "trying again")
                    failures = min(failures + 1, 10)

        threading.Thread(target=loop, name="dfg-checkpointer", daemon=True).start()
        return stop

    # --- sequencing --------------------------------------------------------------

    def _sequence(
        self, parsed: Sequence[Transaction | Rejected], signatures: Sequence[bool]
    ) -> list[Outcome]:
        state = _BatchState(self._cache, self._frontier.size)
        state.genesis_rules = genesis_version(self.ledger)
        try:
            return self._decide_and_append(parsed, signatures, state)
        except BaseException:
            # Cached aggregates were changed in place by this batch: drop them, so the
            # next batch reloads what is durable. The batch's submitters get the error.
            self._cache.forget(list(state.touched))
            raise

    def _decide_and_append(
        self, parsed: Sequence[Transaction | Rejected], signatures: Sequence[bool], state: _BatchState
    ) -> list[Outcome]:
        frontier = self._frontier.copy()
        due_at: list[tuple[int, bytes]] = []
        nonces: dict[str, int] = {}
        seen: dict[str, Entry] = {}
        entries: list[Entry] = []
        nodes: list[tuple[int, int, bytes]] = []
        tx_rows: list[tuple[str, int, int]] = []
        outcomes: list[Outcome] = []
        ledger = self.ledger
        for item, signature_ok in zip(parsed, signatures, strict=True):
            if isinstance(item, Rejected):
                outcomes.append(item)
                continue
            if item.token in seen:
                outcomes.append(Accepted(seen[item.token], duplicate=True))
                continue
            now = self.now()
            last = nonces.get(item.signer)
            last = self._last_nonce(item.signer) if last is None else last
            if item.payload.nonce <= last and (earlier := self.find_duplicate(item.token)):
                # Resubmitting an accepted transaction is idempotent, even after it
                # expired or its key was rotated: the answer is the existing entry.
                outcomes.append(Accepted(earlier, duplicate=True))
                continue
            try:
                signer = authorise(
                    item,
                    state=state,
                    ledger=ledger,
                    now=now,
                    last_nonce=last,
                    signature_ok=_checked(item, signature_ok),
                )
                aggregate = decide(item.type, item.command, signer, now, state)
            except Rejected as exc:
                outcomes.append(exc)
                continue
            except DomainError as exc:
                outcomes.append(Rejected(exc.code, exc.message))
                continue
            (event,) = aggregate.collect_events()
            entry = Entry.from_event(cast(Aggregate.Event, event), seq=frontier.size + 1, tx=item.token)
            if len(entry.canonical) > MAX_ENTRY_BYTES:
                self._undo(aggregate.id, state, entries)
                outcomes.append(
                    Rejected(
                        "entry_too_large",
                        f"its entry would be {len(entry.canonical):,} bytes; an entry is at most"
                        f" {MAX_ENTRY_BYTES:,} bytes",
                    )
                )
                continue
            nodes.extend(frontier.append(entry.leaf_hash))
            if frontier.size - (due_at[-1][0] if due_at else self._checkpointed) >= self.policy.every:
                due_at.append((frontier.size, frontier.root()))  # exact, even inside a batch
            state.touched[aggregate.id] = aggregate
            state.size = frontier.size
            nonces[item.signer] = item.payload.nonce
            tx_rows.append((item.signer, item.payload.nonce, entry.seq))
            entries.append(entry)
            seen[item.token] = entry
            self._last_ts = now
            if ledger is None and item.type == "ledger.genesis":
                assert isinstance(item.command, Genesis)
                ledger = item.command.ledger.model_dump(exclude_none=True)
                state.genesis_rules = genesis_version(ledger)
            outcomes.append(Accepted(entry))

        if not entries:
            return outcomes
        batch = AppendBatch(
            entries=entries,
            nodes=nodes,
            tx_rows=tx_rows,
            old_size=self._frontier.size,
            new_size=frontier.size,
            new_root=frontier.root(),
        )

        def adopt() -> None:
            self._frontier = frontier
            self._nonces.update(nonces)
            for aggregate_id, aggregate in state.touched.items():
                self._cache.put(aggregate_id, aggregate)
            for size, root in due_at:
                if not self._try_to_sign(size, root):
                    break
            if self._uncovered_since is None and self._checkpointed < self._frontier.size:
                self._uncovered_since = time.monotonic()
            if self.ledger is None and ledger is not None:
                self.ledger = ledger
                if self._checkpoint_key is not None:
                    self._check_checkpoint_key(self._checkpoint_key)

        try:
            self.store.append(batch)
        except Exception:
            # A commit whose acknowledgement was lost (the connection dropped after
            # COMMIT) has still happened: the head says so. While the database does not
            # answer, the batch is unsettled: the next commit asks again first.
            self._unsettled = ((batch.new_size, batch.new_root), adopt)
            self._settle()
            if self.size != batch.new_size:
                raise
            return outcomes
        adopt()
        return outcomes

    def _undo(self, aggregate_id: uuid.UUID, state: _BatchState, entries: Sequence[Entry]) -> None:
        """Put back the aggregate a refused transaction's handler changed in place: as the
        durable entries and this batch's earlier ones left it (a refusal leaves no trace)."""
        self._cache.forget([aggregate_id])
        if aggregate_id in state.touched:
            aggregate = self.store.load_aggregate(aggregate_id)
            for earlier in entries:
                if earlier.aggregate_id == aggregate_id:
                    aggregate = earlier.to_event().mutate(aggregate)
            assert aggregate is not None
            state.touched[aggregate_id] = aggregate

    def _settle(self) -> None:
        """Adopt a batch whose commit failed if the store holds it after all (its
        acknowledgement was lost); forget it if not. Raises while the store does not
        answer: nothing can be decided on a head that may be stale."""
        if self._unsettled is None:
            return
        target, adopt = self._unsettled
        held = self.store.head()
        self._unsettled = None
        if held == target:
            adopt()

    def find_duplicate(self, token: str) -> Entry | None:
        """The entry of an already accepted JWS (resubmission is idempotent)."""
        return find_transaction(self.store, token)

    def _last_nonce(self, signer: str) -> int:
        last = self._nonces.get(signer)
        if last is None:
            last = self.store.last_nonce(signer)
            self._nonces[signer] = last
        return last

    def now(self) -> datetime:
        """The log's time now: the clock, or the newest entry's time while the clock is
        behind it. A consent check "now" asks about this instant, so that it answers
        what a ``consent.utilize`` submitted now would be told."""
        now = self.clock()
        if self._last_ts is not None and now < self._last_ts:
            return self._last_ts  # the log's time never goes backwards
        return now

    # --- checkpoints ---------------------------------------------------------------

    def _maybe_checkpoint(self, *, force: bool) -> bool:
        if not (self._uncovered() and (force or self._due())):
            return False
        self._sign_checkpoint(self._frontier.size, self._frontier.root())
        return True

    def _uncovered(self) -> bool:
        """Entries no checkpoint covers, and a key to sign one with."""
        return (
            self._checkpoint_key is not None
            and self.ledger is not None
            and self._frontier.size > self._checkpointed
        )

    def _due(self) -> bool:
        """Of entries no checkpoint covers: ``every`` of them, or the oldest one is
        ``interval_ms`` old."""
        return self._frontier.size - self._checkpointed >= self.policy.every or (
            self._uncovered_since is not None
            and (time.monotonic() - self._uncovered_since) * 1000 >= self.policy.interval_ms
        )

    def _try_to_sign(self, size: int, root: bytes) -> bool:
        """Sign a checkpoint the entries just committed made due. The entries are durable
        whatever happens here, so a failure (the database locked beyond its timeout) is
        not their submitters' error: it is logged, and the checkpointer signs later."""
        try:
            self._sign_checkpoint(size, root)
        except Exception as exc:
            self._log_signing_failure(exc, f"size {size}; the checkpointer will sign later")
            return False
        return True

    def _log_signing_failure(self, exc: Exception, then: str) -> None:
        if self.is_outage(exc):
            log.warning("no checkpoint now, the database cannot be used (%s); %s", exc, then)
        else:
            log.exception("signing a checkpoint failed (%s)", then)

    def _sign_checkpoint(self, size: int, root: bytes) -> None:
        if self._checkpoint_key is None or self.ledger is None:
            return
        checkpoint = Checkpoint(origin=self.ledger["origin"], size=size, root_hash=root)
        key = self._checkpoint_key
        self.store.save_checkpoint(size, root, sign_checkpoint(checkpoint, key.name, key.private_key))
        self._checkpointed = size
        self._uncovered_since = None  # entries after it, of the same batch: ``append`` dates them

    def _check_checkpoint_key(self, key: SignerKey) -> None:
        assert self.ledger is not None
        if key.verifier().to_string() != self.ledger["checkpoint_key"]:
            raise RuntimeError(
                "the checkpoint key given to the sequencer is not the one named in the genesis entry"
            )


def _checked(tx: Transaction, verified: bool) -> Callable[[dict[str, Any]], bool]:
    """The parallel verdict, or an inline check when the key was not known before."""
    return lambda jwk: verified or verify_signature(tx.jws, jwk)
