"""Nonces: per signer, strictly increasing, gaps allowed (docs/transactions.md).

The default source is the clock in microseconds, never below ``last + 1``: a process
that restarts without remembering its last nonce still never reuses one (unless the
clock went backwards by more than the time it was down). Callers that persist the
last nonce pass it back in ``last`` and it is honoured too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

MAX_NONCE: Final = 2**53 - 1  # the ledger refuses larger nonces (exact in JSON everywhere)


def microseconds() -> int:
    """Unix time in microseconds: ~1.8e15 today, below 2**53 until the year 2255."""
    return time.time_ns() // 1000


class NonceSource:
    """Hands out strictly increasing nonces; thread-safe within one process.

    Two processes signing with the same key must not each run their own clock-based
    source (their nonces interleave and the ledger refuses the older ones as
    ``nonce_reused``): give each process its own key, or share one counter.
    """

    def __init__(self, last: int = 0, clock: Callable[[], int] = microseconds) -> None:
        if not 0 <= last < MAX_NONCE:
            raise ValueError(f"last nonce must be in 0..{MAX_NONCE - 1}")
        self._last = last
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        """The last nonce handed out: persist it if your clock cannot be trusted."""
        return self._last

    def next(self) -> int:
        with self._lock:
            nonce = max(self._clock(), self._last + 1)
            if nonce > MAX_NONCE:
                raise OverflowError("nonce space exhausted")
            self._last = nonce
            return nonce
