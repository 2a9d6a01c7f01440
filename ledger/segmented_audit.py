"""Audit on every core: the log cut into contiguous segments, the first replayed in a
thread of the calling process (it starts at once, while the others start their
processes and import the code), each other one in a process of its own, the results
joined in order.

Why it is sound: a segment replays its entries from the state the entries before it
left as stored (``Auditor.segment``), and checks that each of its own entries is
exactly what its transaction produces from there. The first segment starts at the
genesis entry and assumes nothing, so by induction, when every segment passes, every
entry is the one and only replay of the log, as in one sequential pass. When one
fails, the earliest problem of all is the first bad entry: a segment's assumptions
can only be wrong after an earlier bad entry, which an earlier segment names.

Segments are balanced while they run, and planned so that they would end together
(``stagger``). Whoever finishes early, the thread or a process, takes over the
second half of what the busiest segment has left: that segment stops at the new
boundary (``Auditor.end_at``) and the rest becomes a segment of its own, so the
segments still tile the log. Cores run unevenly on shared hosts (measured: one of two
segments of 50,000 entries took from a tenth to a quarter longer than the other), and
the audit's time is its slowest segment's.

Two checks cross a boundary and are made here, when joining: each signer's first
nonce in a segment must be above its last nonce before it, and the first entry's
time must not be earlier than the previous entry's. The nonce index, the witnessed
checkpoints and the head are checked against the joined result.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Lock
from typing import Any, TypeAlias

from ledger.audit import (
    UNSIGNED_LOG,
    AuditFailure,
    Auditor,
    AuditReport,
    Problem,
    audit,
    audit_store,
    check_beyond_head,
    tx_index_problem,
)
from ledger.store import LedgerStore, StoredEntry, all_checkpoints
from ledger.verifier import ParallelVerifier, die_with_parent
from ledger.witness import WitnessPolicy

#: Below this many entries per segment, starting a process costs more than it saves.
MIN_SEGMENT = 10_000
#: Entries a segment reads at a time; it can hand over the rest at each page's end.
PAGE = 500
#: A segment process starts replaying later than the thread: it starts Python and
#: imports the code (about 0.3 s: the replay of some 3,000 entries here), and reads one
#: id prefix per entry before its segment (about a 96th of replaying one: measured
#: 0.54 s for the 506,000 entries before the second half of 1,000,000, which 64 took
#: for 0.8 s and gave that process too little, so it finished 0.9 s early).
PROCESS_START = 3000
PREFIX_SHARE = 96
_POLL_S = 0.5
#: What segment processes send back: (kind, first entry of the segment, value).
Messages: TypeAlias = "multiprocessing.Queue[tuple[str, int, Any]]"
Inbox: TypeAlias = "multiprocessing.Queue[_Task | None]"


class SegmentFailed(RuntimeError):
    """A segment could not be replayed to a verdict (not a problem in the log)."""


@dataclass
class SegmentResult:
    start: int
    report: AuditReport
    first_nonces: dict[str, tuple[int, int]] = field(default_factory=dict)
    last_nonces: dict[str, int] = field(default_factory=dict)
    first_ts: datetime | None = None
    last_ts: datetime | None = None


def plan_segments(size: int, segments: int, minimum: int = MIN_SEGMENT) -> list[tuple[int, int | None]]:
    """Contiguous (first, last) sequence numbers; the last segment's last is None: it
    ends at the head, which it checks."""
    count = max(1, min(segments, size // max(1, minimum)))
    return _ranges([1 + size * i // count for i in range(count)], size)


def _ranges(starts: list[int], size: int) -> list[tuple[int, int | None]]:
    """(first, last) of segments starting at ``starts``; the last one open-ended."""
    bounds = [*starts, size + 1]
    return [(bounds[i], None if i == len(starts) - 1 else bounds[i + 1] - 1) for i in range(len(starts))]


def stagger(plan: list[tuple[int, int | None]], size: int, minimum: int) -> list[tuple[int, int | None]]:
    """``plan`` with boundaries moved so that segments would end together: each one
    after the first is shorter by what its process spends before replaying (see
    ``PROCESS_START``). The plan stays as it is when that would leave a segment
    shorter than ``minimum`` entries (a small ledger: the hand-over balances it)."""
    count = len(plan)
    if count == 1:
        return plan
    starts = [start for start, _ in plan]
    lengths: list[float] = []
    for _ in range(3):  # the delays depend on the starts: a few rounds settle them
        delays = [0] + [PROCESS_START + (start - 1) // PREFIX_SHARE for start in starts[1:]]
        target = (size + sum(delays)) / count
        lengths = [target - delay for delay in delays]
        starts = [1 + round(sum(lengths[:i])) for i in range(count)]
    if min(lengths) < max(minimum, PAGE):
        return plan
    return _ranges(starts, size)


def audit_in_segments(
    store: LedgerStore,
    reopen: Callable[[], LedgerStore],
    *,
    segments: int | None = None,
    minimum: int = MIN_SEGMENT,
    page: int = PAGE,
    verifier: ParallelVerifier | None = None,
    expected_checkpoint_key: str | None = None,
    expected_chain: str | None = None,
    progress: Callable[[int], None] | None = None,
    witnesses: WitnessPolicy | None = None,
    setup: Callable[[], None] | None = None,
) -> AuditReport:
    """Audit ``store`` in up to ``segments`` segments (default: one per core): the first
    in a thread reading ``store``, each other in a process opening the ledger with
    ``reopen`` (a picklable callable) after calling ``setup`` (picklable too: e.g. the
    collector settings of a long-running process, which a spawned process does not
    inherit). A ledger too small for two segments of
    ``minimum`` entries gets the one-pass audit, in this process with ``verifier``'s
    signature workers. ``page``: entries read at a time, the grain of hand-overs."""
    head = store.head()
    plan = stagger(plan_segments(head[0], segments or os.cpu_count() or 1, minimum), head[0], minimum)
    if len(plan) == 1:
        return audit_store(
            store,
            verifier=verifier,
            expected_checkpoint_key=expected_checkpoint_key,
            expected_chain=expected_chain,
            progress=progress,
            witnesses=witnesses,
        )
    options = {"expected_checkpoint_key": expected_checkpoint_key, "expected_chain": expected_chain}
    # The last segment ends at the head read here: a live ledger grows meanwhile, and
    # what it appends is left to the next audit (``check_beyond_head``).
    tasks = [
        _Task(start, end or head[0], options, head if end is None else None, page) for start, end in plan
    ]
    results = _Coordinator(tasks, head[0], store, reopen, setup, progress).run()
    return _join(results, store, head[0], witnesses)


@dataclass(frozen=True)
class _Task:
    """One segment's work, as sent to a process."""

    start: int
    end: int | None
    options: dict[str, Any]
    head: tuple[int, bytes] | None  # the last segment checks the stored head
    page: int


#: How long to wait for the segments' shared state before concluding that a process
#: stopped while holding it (the audit then fails instead of waiting forever).
_LOCK_TIMEOUT_S = 60.0


class _Handover:
    """Where each worker (the thread or a process) is, and where it must stop: shared
    memory, one slot per worker, read and written under one lock. A worker publishes its
    position before each page and reads its limit (0: none; -1: stop) in the same step,
    so a limit set from beyond its next page is always honoured exactly."""

    def __init__(self, context: Any, slots: int) -> None:
        self._lock: Lock = context.Lock()
        self._cells = context.RawArray("q", 2 * slots)  # position, limit per slot

    @contextmanager
    def _held(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=_LOCK_TIMEOUT_S):
            raise SegmentFailed("a segment process stopped while holding the segments' shared state")
        try:
            yield
        finally:
            self._lock.release()

    def start(self, slot: int, task: _Task) -> None:
        with self._held():
            self._cells[2 * slot], self._cells[2 * slot + 1] = task.start - 1, 0

    def publish(self, slot: int, position: int) -> int | None:
        with self._held():
            self._cells[2 * slot] = position
            limit: int = self._cells[2 * slot + 1]
        return limit or None

    def cancel(self, slot: int) -> None:
        """Stop the segment in ``slot`` at its next page; its result is not wanted."""
        with self._held():
            self._cells[2 * slot + 1] = -1

    def position(self, slot: int) -> int:
        with self._held():
            value: int = self._cells[2 * slot]
        return value

    def split(self, slot: int, end: int, page: int) -> int | None:
        """Cut the segment in ``slot`` (ending at ``end``) in two and return its new
        last entry, or None when a second worker would not finish it sooner.

        The worker may replay one more page before it sees the cut, so only what lies
        beyond that is shared. The new segment first reads one id prefix per entry
        before it (``PREFIX_SHARE``) and opens its tree and checkpoints (about a page's
        worth), so it gets that much less of the rest."""
        with self._held():
            position: int = self._cells[2 * slot]
            start_cost = (position + page) // PREFIX_SHARE + page
            handed = (end - position - page - start_cost) // 2
            if handed < page:
                return None
            boundary = end - handed
            self._cells[2 * slot + 1] = boundary
        return boundary


class _Coordinator:
    """Replays the first segment in a thread of this process, which is ready at once,
    and each other one in a process of its own; hands work over from the busiest
    segment to whichever finishes first, and gathers the results (keyed by first
    entry). The thread runs with this process's settings (``setup`` is for the
    processes) and reads through ``store``."""

    def __init__(
        self,
        tasks: list[_Task],
        size: int,
        store: LedgerStore,
        reopen: Callable[[], LedgerStore],
        setup: Callable[[], None] | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._size = size
        self._messages: Messages = context.Queue()
        # What the thread sends this process needs no flushing when it exits.
        self._messages.cancel_join_thread()
        self._handover = _Handover(context, len(tasks))
        local: queue.Queue[_Task | None] = queue.Queue()
        self._inboxes: list[Inbox | queue.Queue[_Task | None]] = [local]
        self._workers: list[BaseProcess | threading.Thread] = [
            threading.Thread(
                target=_replay_segments,
                args=(store, 0, local, self._messages, self._handover),
                name="dfg-audit-0",
                daemon=True,
            )
        ]
        for slot in range(1, len(tasks)):
            inbox: Inbox = context.Queue()
            self._inboxes.append(inbox)
            self._workers.append(
                context.Process(
                    target=_segment_worker,
                    args=(reopen, slot, inbox, self._messages, self._handover, setup),
                    name=f"dfg-audit-{slot}",
                )
            )
        self._initial = tasks
        self._running: dict[int, _Task] = {}  # slot -> its segment (end as now cut)
        self._needed = {task.start for task in tasks}
        self._failed = False
        self._done: dict[int, int] = {}
        self._report = progress
        self.results: dict[int, SegmentResult] = {}

    def run(self) -> dict[int, SegmentResult]:
        try:
            for slot in reversed(range(len(self._workers))):  # the processes take longest to start
                self._workers[slot].start()
                self._assign(slot, self._initial[slot])
            while self._needed - self.results.keys():
                try:
                    self._take(*self._messages.get(timeout=_POLL_S))
                except queue.Empty:
                    self._check_stopped()
        finally:
            self._stop()
        return self.results

    def _assign(self, slot: int, task: _Task) -> None:
        self._handover.start(slot, task)
        self._running[slot] = task
        self._inboxes[slot].put(task)

    def _take(self, kind: str, start: int, value: Any) -> None:
        if kind == "progress":
            self._done[start] = value
            if self._report is not None:
                self._report(sum(self._done.values()))
            return
        if kind == "error":
            raise SegmentFailed(f"audit segment from entry {start} could not run: {value}")
        self.results[start] = value
        slot = next(s for s, task in self._running.items() if task.start == start)
        del self._running[slot]
        if value.report.problems:  # later segments cannot change the first problem
            self._failed = True
            self._needed = {s for s in self._needed if s <= start}
        handed = None if self._failed else self._hand_over()
        if handed is None:
            self._inboxes[slot].put(None)
        else:
            self._needed.add(handed.start)
            self._assign(slot, handed)

    def _hand_over(self) -> _Task | None:
        """The second half of the segment with most entries left, if worth a start."""
        ends = {slot: self._size if task.end is None else task.end for slot, task in self._running.items()}
        if not ends:
            return None
        slot = max(ends, key=lambda s: ends[s] - self._handover.position(s))
        task = self._running[slot]
        boundary = self._handover.split(slot, ends[slot], task.page)
        if boundary is None:
            return None
        self._running[slot] = replace(task, end=boundary, head=None)
        return replace(task, start=boundary + 1)

    def _check_stopped(self) -> None:
        """A segment process that exited without its result (killed, out of memory)
        fails the audit; it cannot be taken as passed."""
        stopped = [slot for slot in self._running if _exit_code(self._workers[slot]) is not None]
        if not stopped:
            return
        self._drain()  # its result may still have been in the pipe
        lost = [slot for slot in stopped if slot in self._running]
        if lost:
            task, code = self._running[lost[0]], _exit_code(self._workers[lost[0]])
            raise SegmentFailed(f"audit segment from entry {task.start} stopped (exit code {code})")

    def _drain(self) -> None:
        while True:
            try:
                self._take(*self._messages.get(timeout=_POLL_S))
            except queue.Empty:
                return

    def _stop(self) -> None:
        """Every worker is told to stop. The thread, if still replaying, stops at its next
        page, before any process is terminated (a process terminated while holding the
        shared state's lock would hold it forever); processes still replaying are then
        terminated (their results cannot change the first problem, or the audit failed)."""
        for inbox in self._inboxes:
            inbox.put(None)
        thread = self._workers[0]
        if 0 in self._running:
            # If it cannot be told, it is a daemon thread and ends with this process.
            with suppress(SegmentFailed):
                self._handover.cancel(0)
        if thread.ident is not None:
            thread.join(_LOCK_TIMEOUT_S)
        for slot, worker in enumerate(self._workers):
            if isinstance(worker, threading.Thread):
                continue
            if slot in self._running:
                worker.terminate()
            if worker.pid is not None:
                worker.join()


def _exit_code(worker: BaseProcess | threading.Thread) -> int | None:
    if isinstance(worker, threading.Thread):
        return None if worker.is_alive() else 0
    return worker.exitcode


class _Cancelled(Exception):
    """The segment's result is no longer needed."""


def _segment_worker(
    reopen: Callable[[], LedgerStore],
    slot: int,
    inbox: Inbox,
    messages: Messages,
    handover: _Handover,
    setup: Callable[[], None] | None,
) -> None:
    """A segment process: opens the ledger and replays what it is given."""
    die_with_parent()
    task = inbox.get()
    if task is None:
        return
    try:
        if setup is not None:
            setup()
        store = reopen()
    except Exception as exc:  # e.g. the database went away: the audit cannot conclude
        messages.put(("error", task.start, f"{type(exc).__name__}: {exc}"))
        return
    try:
        _replay_segments(store, slot, inbox, messages, handover, task)
    finally:
        store.close()
    # Done: skip the interpreter's orderly shutdown, which frees every object of a
    # large heap one by one while the audit waits for this process to end (about
    # 70 ms measured), once what it sent is flushed.
    messages.close()
    messages.join_thread()
    os._exit(0)


def _replay_segments(
    store: LedgerStore,
    slot: int,
    inbox: Inbox | queue.Queue[_Task | None],
    messages: Messages,
    handover: _Handover,
    task: _Task | None = None,
) -> None:
    """Replays the segments it is given, one after another, until told to stop."""
    if task is None:
        task = inbox.get()
    while task is not None:
        try:
            result = _replay_segment(store, task, messages, handover, slot)
        except _Cancelled:
            return
        except Exception as exc:
            messages.put(("error", task.start, f"{type(exc).__name__}: {exc}"))
            return
        messages.put(("result", task.start, result))
        task = inbox.get()


def _replay_segment(
    store: LedgerStore, task: _Task, messages: Messages, handover: _Handover, slot: int
) -> SegmentResult:
    start = task.start
    try:
        auditor = Auditor.segment(
            store, start, task.end, head=task.head, verifier=ParallelVerifier(0), **task.options
        )
    except AuditFailure as exc:
        return SegmentResult(start, AuditReport(problems=[exc.problem]))
    except Exception as exc:  # e.g. the stored tree lacks the nodes this segment starts from
        return SegmentResult(start, AuditReport(problems=[Problem(start, f"cannot be verified: {exc}")]))
    report = audit(
        _pages(store, task, auditor, handover, slot),
        auditor,
        progress=lambda count: messages.put(("progress", start, count)),
    )
    messages.put(("progress", start, report.entries))
    assert auditor.first_nonces is not None
    return SegmentResult(
        start,
        report,
        first_nonces=auditor.first_nonces,
        last_nonces=auditor.last_nonces,
        first_ts=auditor.first_ts,
        last_ts=auditor.last_ts,
    )


def _pages(
    store: LedgerStore, task: _Task, auditor: Auditor, handover: _Handover, slot: int
) -> Iterator[StoredEntry]:
    """The segment's entries, a page at a time, ending early where a hand-over cut it."""
    start, stop = task.start, task.end
    while True:
        limit = handover.publish(slot, start - 1)
        if limit is not None and limit < 0:
            raise _Cancelled
        if limit is not None and (stop is None or limit < stop):
            stop = limit
            auditor.end_at(limit)
        if stop is not None and start > stop:
            return
        rows = store.read_entries(start, task.page if stop is None else min(task.page, stop - start + 1))
        if not rows:
            return
        yield from rows
        start = rows[-1].seq + 1


def _join(
    results: dict[int, SegmentResult], store: LedgerStore, size: int, witnesses: WitnessPolicy | None
) -> AuditReport:
    joined = AuditReport()
    ordered = [results[start] for start in sorted(results)]
    first = ordered[0].report
    joined.chain, joined.origin = first.chain, first.origin
    joined.checkpoint_key, joined.operator_kid = first.checkpoint_key, first.operator_kid
    joined.segments = len(ordered)
    last_nonces: dict[str, int] = {}
    last_ts: datetime | None = None
    expected = 1
    for result in ordered:
        if result.start != expected:  # pragma: no cover - each segment checks its own end
            raise SegmentFailed(f"the segments do not tile the log: one starts at {result.start}")
        expected = result.start + result.report.entries
        problems = list(result.report.problems) + _boundary_problems(result, last_nonces, last_ts)
        joined.entries += result.report.entries
        joined.checkpoints += result.report.checkpoints
        if problems:
            joined.problems = problems
            earliest = min(p.seq for p in problems)
            if earliest:
                joined.entries = min(joined.entries, earliest - 1)
            return joined
        last_nonces.update(result.last_nonces)
        last_ts = result.last_ts or last_ts
        joined.root = result.report.root
        if result.report.signed_size:
            joined.signed_size, joined.signed_root = result.report.signed_size, result.report.signed_root
    if joined.checkpoints == 0:
        joined.problems.append(Problem(0, UNSIGNED_LOG))
        return joined
    problem = tx_index_problem(store.tx_index_summary(upto=size), joined.entries, last_nonces)
    if problem is not None:
        joined.problems.append(Problem(0, problem))
    if witnesses is not None:
        _witnessed(joined, store, witnesses)
    if joined.ok:
        check_beyond_head(store, size, joined)
    return joined


def _boundary_problems(
    result: SegmentResult, last_nonces: dict[str, int], last_ts: datetime | None
) -> list[Problem]:
    start = result.start
    problems: list[Problem] = []
    if last_ts is not None and result.first_ts is not None and result.first_ts < last_ts:
        problems.append(Problem(start, "its timestamp is earlier than the previous entry's"))
    for signer, (nonce, seq) in result.first_nonces.items():
        previous = last_nonces.get(signer)
        if previous is not None and nonce <= previous:
            problems.append(
                Problem(
                    seq,
                    "the transaction should have been refused:"
                    f" nonce {nonce} of {signer} is not above the last accepted nonce",
                )
            )
    return problems


def _witnessed(joined: AuditReport, store: LedgerStore, witnesses: WitnessPolicy) -> None:
    """Which verified checkpoints a quorum of witnesses cosigned (each segment checked
    every checkpoint's signature and root already)."""
    for checkpoint in all_checkpoints(store):
        if checkpoint.size > joined.entries:  # saved after the head the audit began from
            break
        forged = witnesses.forged(checkpoint.note, checkpoint.cosignatures)
        joined.problems.extend(Problem(checkpoint.size, problem) for problem in forged)
        if forged:
            return  # as one pass stops at its first problem
        if witnesses.is_final(checkpoint.note, checkpoint.cosignatures):
            joined.final_size = checkpoint.size
            joined.final_checkpoints += 1
    if joined.final_size == 0 and joined.entries:
        joined.problems.append(
            Problem(0, f"no checkpoint carries cosignatures of {witnesses.quorum} of the trusted witnesses")
        )
