"""Signature checks in parallel: the CPU-bound step in front of the single sequencer.

``cryptography`` releases the GIL while it verifies, so a thread pool scales with
cores without moving transactions between processes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ledger.jws import CompactJws, verify_signature

_CHUNK = 64


class ParallelVerifier:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dfg-verify")

    def verify(self, items: Sequence[tuple[CompactJws, dict[str, Any] | None]]) -> list[bool]:
        """One bool per (jws, jwk); a missing key counts as not verified."""
        if len(items) <= _CHUNK or self.workers == 1:
            return _verify_chunk(items)
        chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
        results: list[bool] = []
        for part in self._pool.map(_verify_chunk, chunks):
            results.extend(part)
        return results

    def submit(self, items: Sequence[tuple[CompactJws, dict[str, Any] | None]]) -> list[Future[list[bool]]]:
        """Start checking ``items`` without waiting; results come back chunk by chunk."""
        size = max(_CHUNK, -(-len(items) // (self.workers * 4)))
        return [self._pool.submit(_verify_chunk, items[i : i + size]) for i in range(0, len(items), size)]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _verify_chunk(items: Sequence[tuple[CompactJws, dict[str, Any] | None]]) -> list[bool]:
    out = []
    for jws, jwk in items:
        try:
            out.append(jwk is not None and verify_signature(jws, jwk))
        except Exception:  # a malformed key or signature is simply not a valid signature
            out.append(False)
    return out
