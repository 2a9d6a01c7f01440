"""Randomness in bulk: one read of the operating system's CSPRNG per vector.

Drawing each share's coefficient with its own ``os.urandom`` call cost a system call
per value, which dominated every protocol. A field element is drawn as 64 bits more
than the modulus and reduced, so it is uniform within a statistical distance of 2^-64.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

#: ``draw(bound, count)``: ``count`` independent values uniform in [0, bound).
RandomMany = Callable[[int, int], list[int]]

_EXTRA_BITS = 64


def uniform_below(bound: int, count: int) -> list[int]:
    """``count`` values uniform in [0, bound) (exactly so for a power of two)."""
    if count <= 0:
        return []
    if bound == 2:
        return random_bits(count)
    exact = bound & (bound - 1) == 0
    width = ((bound.bit_length() - 1 if exact else bound.bit_length() + _EXTRA_BITS) + 7) // 8 or 1
    data = os.urandom(width * count)
    from_bytes = int.from_bytes
    return [from_bytes(data[i : i + width], "little") % bound for i in range(0, width * count, width)]


def random_bits(count: int) -> list[int]:
    """``count`` uniform bits."""
    raw = np.frombuffer(os.urandom((count + 7) // 8), dtype=np.uint8)
    bits: list[int] = np.unpackbits(raw)[:count].tolist()
    return bits
