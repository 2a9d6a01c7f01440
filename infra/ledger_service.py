"""The running ledger: one sequencer thread that turns concurrent submissions into
group commits, and a views thread that keeps the read models caught up before anyone
is answered.

Submitters (HTTP handlers, the CLI) call ``submit`` from any thread and get a future.
The sequencer thread takes whatever has queued up (up to ``max_batch`` transactions),
verifies the next batch while the current one commits, and hands each committed batch
to the views thread, which applies it to the projections and only then resolves the
futures: when a submitter hears "accepted", its entry is durable *and* visible to
consent checks (read-your-writes). The two threads form a pipeline: batch k's views
are written while batch k+1 is decided and committed (SQLite and PostgreSQL do their
part without holding the GIL).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from infra.storage.errors import storage_unavailable
from infra.storage.postgres import check_pools
from ledger.sequencer import Accepted, Outcome, PreparedBatch, Sequencer
from ledger.store import HeadMoved
from projections.base import View, ViewDatabase, apply_new, catch_up, prepare

log = logging.getLogger(__name__)


@dataclass
class _Request:
    tokens: Sequence[str]
    future: Future[list[Outcome]]


_NOTHING = _Request((), Future())
#: Committed batches waiting for the views thread (then the sequencer waits: the read
#: models never fall more than this many batches behind the log).
_VIEWS_BACKLOG = 2


@dataclass
class _Committed:
    requests: list[_Request]
    outcomes: list[Outcome]


class LedgerService:
    def __init__(
        self,
        sequencer: Sequencer,
        views: ViewDatabase,
        view_list: Sequence[View],
        *,
        max_batch: int = 1000,
    ) -> None:
        self.sequencer = sequencer
        self.views = views
        self.view_list = list(view_list)
        self.max_batch = max_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dfg-sequencer", daemon=True)
        self._committed: queue.Queue[_Committed | None] = queue.Queue(maxsize=_VIEWS_BACKLOG)
        self._views_thread = threading.Thread(target=self._apply_views, name="dfg-views", daemon=True)
        self._stop_checkpointer: threading.Event | None = None
        self.positions: dict[str, int] = {}
        self._views_lock = threading.Lock()
        #: Why the sequencer thread stopped appending for good (another process
        #: appended to the ledger under it), else None.
        self.stopped: HeadMoved | None = None

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        for view in self.view_list:
            prepare(self.views, view, self.sequencer.store.read_entries)
        self.catch_up_views()
        self.sequencer.is_outage = storage_unavailable
        self._stop_checkpointer = self.sequencer.start_checkpointer()
        self._views_thread.start()
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._views_thread.join(timeout=30)
        if self._stop_checkpointer is not None:
            self._stop_checkpointer.set()
        try:
            if self.stopped is None:  # else its head is stale: the other writer signs the ledger's
                self._final_checkpoint()
        finally:
            self.sequencer.verifier.close()

    def _final_checkpoint(self) -> None:
        """Sign what the log holds before stopping, unless the database cannot be used
        now: the entries are durable, and the next writer's checkpointer signs them
        within its interval, so a server stopped during an outage (or just after the
        database ended its sessions) stops cleanly instead of failing its exit."""
        for attempt in (1, 2):
            try:
                self.sequencer.checkpoint_now()
                return
            except Exception as exc:
                if not storage_unavailable(exc):
                    raise
                if attempt == 2:
                    log.warning("no checkpoint signed at shutdown: the database cannot be used (%s)", exc)
                else:  # pooled connections the database ended fail once each: replace them
                    check_pools(wait=True)

    # --- API -------------------------------------------------------------------------

    def submit(self, tokens: Sequence[str]) -> Future[list[Outcome]]:
        future: Future[list[Outcome]] = Future()
        self._queue.put(_Request(list(tokens), future))
        if self.stopped is not None:  # nobody takes it from the queue any more
            self._fail_queued(self.stopped)
        return future

    def catch_up_views(self) -> None:
        with self._views_lock:
            for view in self.view_list:
                self.positions[view.name] = catch_up(self.views, view, self.sequencer.store.read_entries)

    @property
    def running(self) -> bool:
        """Both threads are alive: submissions are sequenced and answered."""
        return self._thread.is_alive() and self._views_thread.is_alive()

    @property
    def views_lag(self) -> int:
        size = self.sequencer.size
        return max((size - p for p in self.positions.values()), default=size)

    # --- the sequencer thread ------------------------------------------------------

    def _take(self, first: _Request) -> list[_Request]:
        """The first request plus whatever else is waiting, up to ``max_batch`` tokens."""
        taken, count = [first], len(first.tokens)
        while count < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            taken.append(item)
            count += len(item.tokens)
        return taken

    def _run(self) -> None:
        pending: tuple[list[_Request], PreparedBatch] | None = None
        while True:
            try:
                item = self._queue.get() if pending is None else self._queue.get_nowait()
            except queue.Empty:
                item = _NOTHING
            if item is None:  # stop: finish what is pending first
                if pending is not None:
                    try:
                        self._commit(*pending)
                    except HeadMoved as exc:  # its submitters are told; stop() signs nothing
                        self._stop_appending(exc, pending[0])
                        return
                self._committed.put(None)
                return
            nxt = None
            if item is not _NOTHING:
                # A future its submitter cancelled (asyncio.wrap_future's, when the task that
                # awaits it is cancelled) is left out: answering it raised InvalidStateError,
                # which ended the thread. Once taken, a future can no longer be cancelled.
                requests = [r for r in self._take(item) if r.future.set_running_or_notify_cancel()]
                try:
                    nxt = (requests, self._prepare(requests)) if requests else None
                except Exception as exc:  # this batch's submitters hear of it; the thread lives on
                    _failed(requests, exc)
            if pending is not None:
                try:
                    self._commit(*pending)
                except HeadMoved as exc:
                    self._stop_appending(exc, [*pending[0], *(nxt[0] if nxt else [])])
                    return
            pending = nxt

    def _prepare(self, requests: list[_Request]) -> PreparedBatch:
        return self.sequencer.prepare([t for r in requests for t in r.tokens])

    def _commit(self, requests: list[_Request], batch: PreparedBatch) -> None:
        """Raises ``HeadMoved`` (its submitters not yet told): every later append would
        fail the same way."""
        try:
            outcomes = self.sequencer.commit(batch)
        except HeadMoved:
            raise
        except Exception as exc:
            _failed(requests, exc)
            return
        self._committed.put(_Committed(requests, outcomes))

    def _stop_appending(self, exc: HeadMoved, requests: list[_Request]) -> None:
        """Another process appended to the ledger under this one (on PostgreSQL, while the
        writer lock's session was gone): this process's tree, aggregates and nonces are
        stale, so it stops appending instead of answering every submitter "resubmit" for
        good, and /healthz says so (the sequencer thread has stopped)."""
        stale = HeadMoved(
            "another process appended to the ledger while this server held no writer lock;"
            " this server has stopped appending: restart it"
        )
        log.error("%s (%s)", stale, exc)
        self.stopped = stale
        if self._stop_checkpointer is not None:
            self._stop_checkpointer.set()
        for request in requests:
            request.future.set_exception(stale)
        self._fail_queued(stale)
        self._committed.put(None)

    def _fail_queued(self, exc: Exception) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None and not request.future.done():
                request.future.set_exception(exc)

    # --- the views thread ------------------------------------------------------------

    def _apply_views(self) -> None:
        while (batch := self._committed.get()) is not None:
            accepted = [o for o in batch.outcomes if isinstance(o, Accepted)]
            fresh = sorted(
                {o.entry.seq: o.entry for o in accepted if not o.duplicate}.values(), key=lambda e: e.seq
            )
            answered = max((o.entry.seq for o in accepted), default=0)
            try:
                with self._views_lock:
                    read = self.sequencer.store.read_entries
                    top = apply_new(self.views, self.view_list, fresh, read)
                    if top < answered:
                        # Only duplicates, of entries the views missed (their write failed
                        # and the submitter was told to resubmit): a submitter told
                        # "accepted" must find its entry in every answer from then on.
                        top = min(catch_up(self.views, view, read) for view in self.view_list)
                    for view in self.view_list:
                        self.positions[view.name] = max(self.positions.get(view.name, 0), top)
            except Exception as exc:  # durable, but not visible yet: a resubmission is idempotent
                _failed(batch.requests, exc)
                continue
            start = 0
            for request in batch.requests:
                request.future.set_result(batch.outcomes[start : start + len(request.tokens)])
                start += len(request.tokens)


def _failed(requests: list[_Request], exc: Exception) -> None:
    if storage_unavailable(exc):  # an outage, not a fault: one line, not a traceback per batch
        log.warning("a batch failed, the database cannot be used (%s); its submitters may resubmit", exc)
    else:
        log.exception("a batch failed; its submitters get the error and may resubmit", exc_info=exc)
    for request in requests:
        request.future.set_exception(exc)
