"""Signature checks in parallel: the CPU-bound step in front of the single sequencer
and beside the audit's replay.

Worker processes, not threads: ``cryptography`` releases the GIL while it verifies,
but the sequencer and the audit keep the GIL busy with Python work, and threads
then wait for it after every signature (measured: no gain over one core). Items
travel as (signing input, signature, alg, key JSON); a worker imports each key once.
Small batches are checked inline, so a single submission pays no IPC latency.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ledger.jws import CompactJws, key_json, verify_parts

_INLINE_BELOW = 48
Work = tuple[bytes, bytes, str, str]


def default_workers() -> int:
    """One worker per core beside the caller's own: the sequencer and the audit keep a
    core busy themselves, and a third process on two cores only adds contention."""
    return max(1, (os.cpu_count() or 1) - 1)


class ParallelVerifier:
    def __init__(self, workers: int | None = None) -> None:
        """``workers`` processes (0: check everything inline, in the caller)."""
        self.workers = default_workers() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # safe beside threads
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=die_with_parent)
        return self._pool

    def verify(self, items: Sequence[tuple[CompactJws, dict[str, Any] | None]]) -> list[bool]:
        """One bool per (jws, jwk); a missing key counts as not verified."""
        if len(items) < _INLINE_BELOW or self.workers == 0:
            return verify_chunk(_work(items))
        return [ok for future in self.submit(items) for ok in future.result()]

    def submit(self, items: Sequence[tuple[CompactJws, dict[str, Any] | None]]) -> list[Future[list[bool]]]:
        """Start checking ``items`` without waiting; one future per chunk, in order.

        A worker that dies (the OOM killer, a kill) breaks the whole pool: the futures it
        had fail with ``BrokenProcessPool``, and the pool refuses all work after. So a
        broken pool is replaced here, and only the batches under way then fail."""
        work = _work(items)
        if len(work) < _INLINE_BELOW or self.workers == 0:
            done: Future[list[bool]] = Future()
            done.set_result(verify_chunk(work))
            return [done]
        size = max(_INLINE_BELOW, -(-len(work) // (self.workers * 2)))
        pieces = [work[i : i + size] for i in range(0, len(work), size)]
        pool = self._executor()
        try:
            return [pool.submit(verify_chunk, piece) for piece in pieces]
        except BrokenProcessPool:
            pool.shutdown(wait=False)  # its workers are gone: nothing to wait for
            self._pool = None
        pool = self._executor()
        return [pool.submit(verify_chunk, piece) for piece in pieces]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def die_with_parent() -> None:
    """Workers must not outlive a sequencer that was killed (Linux; elsewhere a no-op)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _work(items: Sequence[tuple[CompactJws, dict[str, Any] | None]]) -> list[Work | None]:
    # One key string per key, not per transaction: a chunk holds a few transactions of
    # each signer. Keyed by identity, which is sound because ``items`` (a list, not a
    # lazy sequence) holds every key dict alive for the whole call: no id is reused.
    keys: dict[int, str] = {}
    work: list[Work | None] = []
    for jws, jwk in items:
        if jwk is None:
            work.append(None)
            continue
        text = keys.get(id(jwk))
        if text is None:
            text = keys[id(jwk)] = key_json(jwk)
        work.append((jws.signing_input, jws.signature, jws.alg, text))
    return work


def verify_chunk(work: Sequence[Work | None]) -> list[bool]:
    out = []
    for item in work:
        try:
            out.append(item is not None and verify_parts(*item))
        except Exception:  # a malformed key or signature is simply not a valid signature
            out.append(False)
    return out
