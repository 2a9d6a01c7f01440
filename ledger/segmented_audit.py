"""Audit on every core: the log cut into contiguous segments, each replayed in its own
process, the results joined in order.

Why it is sound: a segment replays its entries from the state the entries before it
left as stored (``Auditor.segment``), and checks that each of its own entries is
exactly what its transaction produces from there. The first segment starts at the
genesis entry and assumes nothing, so by induction, when every segment passes, every
entry is the one and only replay of the log, as in one sequential pass. When one
fails, the earliest problem of all is the first bad entry: a segment's assumptions
can only be wrong after an earlier bad entry, which an earlier segment names.

Two checks cross a boundary and are made here, when joining: each signer's first
nonce in a segment must be above its last nonce before it, and the first entry's
time must not be earlier than the previous entry's. The nonce index, the witnessed
checkpoints and the head are checked against the joined result.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.process import BaseProcess
from typing import Any, TypeAlias

from ledger.audit import (
    AuditFailure,
    Auditor,
    AuditReport,
    Problem,
    audit,
    audit_store,
    batched,
    tx_index_problem,
)
from ledger.store import LedgerStore, all_checkpoints
from ledger.verifier import ParallelVerifier, die_with_parent
from ledger.witness import WitnessPolicy

#: Below this many entries per segment, starting a process costs more than it saves.
MIN_SEGMENT = 10_000
_POLL_S = 0.5
#: What segment processes send back: (kind, segment index, value).
Messages: TypeAlias = "multiprocessing.Queue[tuple[str, int, Any]]"


class SegmentFailed(RuntimeError):
    """A segment could not be replayed to a verdict (not a problem in the log)."""


@dataclass
class SegmentResult:
    index: int
    report: AuditReport
    first_nonces: dict[str, tuple[int, int]] = field(default_factory=dict)
    last_nonces: dict[str, int] = field(default_factory=dict)
    first_ts: datetime | None = None
    last_ts: datetime | None = None


def plan_segments(size: int, segments: int, minimum: int = MIN_SEGMENT) -> list[tuple[int, int | None]]:
    """Contiguous (first, last) sequence numbers; the last segment is open-ended, so it
    reads whatever the store holds beyond its head, exactly as one pass would."""
    count = max(1, min(segments, size // max(1, minimum)))
    bounds = [1 + size * i // count for i in range(count)] + [size + 1]
    return [(bounds[i], None if i == count - 1 else bounds[i + 1] - 1) for i in range(count)]


def audit_in_segments(
    store: LedgerStore,
    reopen: Callable[[], LedgerStore],
    *,
    segments: int | None = None,
    minimum: int = MIN_SEGMENT,
    verifier: ParallelVerifier | None = None,
    expected_checkpoint_key: str | None = None,
    expected_chain: str | None = None,
    progress: Callable[[int], None] | None = None,
    witnesses: WitnessPolicy | None = None,
    setup: Callable[[], None] | None = None,
) -> AuditReport:
    """Audit ``store`` in up to ``segments`` processes (default: one per core), each
    opening the ledger with ``reopen`` (a picklable callable) after calling ``setup``
    (picklable too: e.g. the collector settings of a long-running process, which a
    spawned process does not inherit). A ledger too small for two segments of
    ``minimum`` entries gets the one-pass audit, in this process with ``verifier``'s
    signature workers."""
    head = store.head()
    plan = plan_segments(head[0], segments or os.cpu_count() or 1, minimum)
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
    results = _run(plan, reopen, options, head, progress, setup)
    return _join(results, plan, store, witnesses)


def _run(
    plan: list[tuple[int, int | None]],
    reopen: Callable[[], LedgerStore],
    options: dict[str, Any],
    head: tuple[int, bytes],
    progress: Callable[[int], None] | None,
    setup: Callable[[], None] | None,
) -> dict[int, SegmentResult]:
    context = multiprocessing.get_context("spawn")
    messages: Messages = context.Queue()
    workers: list[BaseProcess] = []
    for index, (start, end) in enumerate(plan):
        task = _Task(index, start, end, options, head if end is None else None)
        args = (reopen, task, messages, setup)
        workers.append(context.Process(target=_segment_worker, args=args, name=f"dfg-audit-{index}"))
    run = _Progress(len(plan), progress)
    try:
        for worker in workers:
            worker.start()
        while missing := run.needed - run.results.keys():
            try:
                run.take(*messages.get(timeout=_POLL_S))
            except queue.Empty:
                _check_stopped(workers, missing, messages, run)
    finally:
        for index, worker in enumerate(workers):
            if index not in run.needed or index not in run.results:
                worker.terminate()  # its result cannot change the first problem, or we failed
            if worker.pid is not None:
                worker.join()
    return run.results


class _Progress:
    """Segment results as they arrive, and entries done so far across segments."""

    def __init__(self, count: int, report: Callable[[int], None] | None) -> None:
        self.results: dict[int, SegmentResult] = {}
        self.needed = set(range(count))
        self._done = [0] * count
        self._report = report

    def take(self, kind: str, index: int, value: Any) -> None:
        if kind == "progress":
            self._done[index] = value
            if self._report is not None:
                self._report(sum(self._done))
            return
        if kind == "error":
            raise SegmentFailed(f"audit segment {index + 1} could not run: {value}")
        self.results[index] = value
        if value.report.problems:  # later segments cannot change the first problem
            self.needed -= set(range(index + 1, len(self._done)))


def _check_stopped(workers: list[BaseProcess], missing: set[int], messages: Messages, run: _Progress) -> None:
    """A segment process that exited without its result (killed, out of memory) fails
    the audit; it cannot be taken as passed."""
    stopped = [i for i in sorted(missing) if workers[i].exitcode is not None]
    if not stopped:
        return
    _drain(messages, run)  # its result may still have been in the pipe
    lost = [i for i in stopped if i not in run.results]
    if lost:
        code = workers[lost[0]].exitcode
        raise SegmentFailed(f"audit segment {lost[0] + 1} stopped (exit code {code})")


def _drain(messages: Messages, run: _Progress) -> None:
    while True:
        try:
            run.take(*messages.get(timeout=_POLL_S))
        except queue.Empty:
            return


@dataclass(frozen=True)
class _Task:
    """One segment's work, as sent to its process."""

    index: int
    start: int
    end: int | None
    options: dict[str, Any]
    head: tuple[int, bytes] | None  # the last segment checks the stored head


def _segment_worker(
    reopen: Callable[[], LedgerStore], task: _Task, messages: Messages, setup: Callable[[], None] | None
) -> None:
    die_with_parent()
    try:
        if setup is not None:
            setup()
        store = reopen()
        try:
            result = _replay_segment(store, task, messages)
        finally:
            store.close()
    except Exception as exc:  # e.g. the database went away: the audit cannot conclude
        messages.put(("error", task.index, f"{type(exc).__name__}: {exc}"))
        return
    messages.put(("result", task.index, result))


def _replay_segment(store: LedgerStore, task: _Task, messages: Messages) -> SegmentResult:
    index, start, end = task.index, task.start, task.end
    try:
        auditor = Auditor.segment(store, start, end, verifier=ParallelVerifier(0), **task.options)
    except AuditFailure as exc:
        return SegmentResult(index, AuditReport(problems=[exc.problem]))
    except Exception as exc:  # e.g. the stored tree lacks the nodes this segment starts from
        return SegmentResult(index, AuditReport(problems=[Problem(start, f"cannot be verified: {exc}")]))
    report = audit(
        batched(store.read_entries, start=start, stop=end),
        auditor,
        head=task.head,
        progress=lambda count: messages.put(("progress", index, count)),
    )
    assert auditor.first_nonces is not None
    return SegmentResult(
        index,
        report,
        first_nonces=auditor.first_nonces,
        last_nonces=auditor.last_nonces,
        first_ts=auditor.first_ts,
        last_ts=auditor.last_ts,
    )


def _join(
    results: dict[int, SegmentResult],
    plan: list[tuple[int, int | None]],
    store: LedgerStore,
    witnesses: WitnessPolicy | None,
) -> AuditReport:
    joined = AuditReport()
    first = results[0].report
    joined.chain, joined.origin = first.chain, first.origin
    joined.checkpoint_key, joined.operator_kid = first.checkpoint_key, first.operator_kid
    last_nonces: dict[str, int] = {}
    last_ts: datetime | None = None
    for index, (start, _) in enumerate(plan):
        result = results[index]
        problems = list(result.report.problems) + _boundary_problems(result, start, last_nonces, last_ts)
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
    problem = tx_index_problem(store.tx_index_summary(), joined.entries, last_nonces)
    if problem is not None:
        joined.problems.append(Problem(0, problem))
    if witnesses is not None:
        _witnessed(joined, store, witnesses)
    return joined


def _boundary_problems(
    result: SegmentResult, start: int, last_nonces: dict[str, int], last_ts: datetime | None
) -> list[Problem]:
    problems = []
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
        if witnesses.is_final(checkpoint.note, checkpoint.cosignatures):
            joined.final_size = checkpoint.size
            joined.final_checkpoints += 1
    if joined.final_size == 0 and joined.entries:
        joined.problems.append(
            Problem(0, f"no checkpoint carries cosignatures of {witnesses.quorum} of the trusted witnesses")
        )
