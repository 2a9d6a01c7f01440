"""Protocols from one party's point of view, written as the papers write them, on
whole vectors (``mpc.vectors``).

Every function takes the calling ``Party`` and its shares, and returns its shares of
the result; all parties call the same function with the same public arguments.
Rounds: ``input_values`` 1, ``open_values`` 1, ``multiply``/``inner`` 1 (one
resharing for a whole inner product), ``random_values`` 1, ``random_bits`` t + 1,
``truncate`` t + 3 (random bits, a bounded mask, then one opening), comparisons
t + 3 plus one per bit of the compared values.

Bit vectors of many values are laid out bit-major: block j holds bit j of every value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpc.runtime import Party, ProtocolError
from mpc.shamir import SharingError
from mpc.vectors import Vec

__all__ = [
    "ProtocolError",
    "inner",
    "input_values",
    "less_than",
    "less_than_zero",
    "modulo_power_of_two",
    "multiply",
    "open_values",
    "open_vector",
    "random_below_power",
    "random_bits",
    "random_values",
    "total",
    "truncate",
    "vector",
]


def vector(party: Party, values: Vec | Sequence[int]) -> Vec:
    """A vector of this party's field (lists of field elements are converted)."""
    return values if isinstance(values, np.ndarray) else party.ops.of(list(values))


def input_values(party: Party, owner: int, values: Vec | Sequence[int] | None = None) -> Vec:
    """``owner`` secret-shares its ``values`` (field elements); everyone gets its shares."""
    outgoing: dict[int, Vec] = {}
    if party.index == owner:
        if values is None:
            raise ValueError("the owner must give its values")
        shares = party.scheme.share_vector(vector(party, values))
        outgoing = {j: shares[j - 1] for j in party.parties}
    return party.exchange(outgoing)[owner]


def open_vector(party: Party, shares: Vec | Sequence[int]) -> Vec:
    """Reveal shared values to every party, checking every share (n >= 2t + 1 gives
    redundant shares: a wrong one is detected, never silently used)."""
    received = party.broadcast(vector(party, shares))
    try:
        return party.scheme.open_checked_vector(received)
    except SharingError as exc:
        raise ProtocolError(str(exc)) from exc


def open_values(party: Party, shares: Vec | Sequence[int]) -> list[int]:
    return party.ops.ints(open_vector(party, shares))


#: Elements per resharing round: long vectors are reshared in batches of this size,
#: whose buffers stay small enough to be fast (measured with three processes on two
#: cores: 3.5 M secure products/s in GF(2^61 - 1) as one vector of 4M, 8.3 M/s in
#: vectors of 1M).
BATCH = 1 << 18


def _reshare(party: Party, local: Vec) -> Vec:
    """Degree reduction: share each local degree-2t value, combine with Lagrange weights."""
    ops = party.ops
    n = ops.length(local)
    if n > BATCH:
        return ops.concat([_reshare(party, ops.take(local, i, i + BATCH)) for i in range(0, n, BATCH)])
    shares = party.scheme.share_vector(local)
    received = party.exchange({j: shares[j - 1] for j in party.parties})
    return party.scheme.combine(received)


def multiply(party: Party, a: Vec | Sequence[int], b: Vec | Sequence[int]) -> Vec:
    """Element-wise products, one round."""
    return _reshare(party, party.ops.mul(vector(party, a), vector(party, b)))


def total(party: Party, values: Vec) -> Vec:
    """Shares of the sum of shared values: local (a sum of shares is a share of the sum)."""
    return party.ops.of([party.ops.total(values)])


def inner(party: Party, xs: Sequence[Vec | Sequence[int]], ys: Sequence[Vec | Sequence[int]]) -> Vec:
    """sum_k x[i][k] * y[i][k] for each i: one resharing per output, not per product."""
    ops = party.ops
    local = [ops.total(ops.mul(vector(party, x), vector(party, y))) for x, y in zip(xs, ys, strict=True)]
    return _reshare(party, ops.of(local))


def random_values(party: Party, count: int) -> Vec:
    """Shares of uniformly random elements no coalition of t parties knows: everyone
    shares randomness, and the shares are summed."""
    ops = party.ops
    shares = party.scheme.share_vector(ops.random(count))
    received = party.exchange({j: shares[j - 1] for j in party.parties})
    result = received[1]
    for j in list(party.parties)[1:]:
        result = ops.add(result, received[j])
    return result


def _contributions(party: Party, count: int, bits: int) -> list[Vec]:
    """Parties 1..t+1 each secret-share ``count`` random integers of ``bits`` bits of
    their own drawing, in one round; returns every contributor's shares. Any t parties
    miss at least one contribution, so combining them all gives values no coalition of
    t knows."""
    contributors = range(1, party.scheme.threshold + 2)
    outgoing: dict[int, Vec] = {}
    if party.index in contributors:
        shares = party.scheme.share_vector(party.ops.random_below_power(bits, count))
        outgoing = {j: shares[j - 1] for j in party.parties}
    received = party.exchange(outgoing)
    return [received[c] for c in contributors]


def random_bits(party: Party, count: int) -> Vec:
    """Shares of uniformly random bits: the XOR of one random bit from each of t + 1
    parties (x XOR y = x + y - 2xy), so one input round and t multiplication rounds.
    Semi-honest: a contributor must give a bit (docs/mpc.md)."""
    ops = party.ops
    parts = _contributions(party, count, 1)
    bits = parts[0]
    for other in parts[1:]:
        both = multiply(party, bits, other)
        bits = ops.sub(ops.add(bits, other), ops.scale(both, 2))
    return bits


def random_below_power(party: Party, count: int, bits: int) -> Vec:
    """Shares of random integers below (t + 1) * 2^bits that no t parties know: the sum
    of one ``bits``-bit random integer from each of t + 1 parties (a statistical mask,
    not uniform in the field)."""
    ops = party.ops
    parts = _contributions(party, count, bits)
    result = parts[0]
    for other in parts[1:]:
        result = ops.add(result, other)
    return result


def _mask_margin(party: Party, value_bits: int, security_bits: int) -> None:
    """The masked value x + 2^(k-1) + r must not wrap around p."""
    field = party.scheme.field
    needed = value_bits + security_bits + (party.scheme.threshold + 1).bit_length() + 1
    if needed >= field.bits:
        raise ProtocolError(f"masking {value_bits}-bit values needs a field of more than {needed} bits")


def _blocks(party: Party, bits: Vec, count: int) -> list[Vec]:
    ops = party.ops
    return [ops.take(bits, j * count, (j + 1) * count) for j in range(ops.length(bits) // count)]


def _from_bits(party: Party, blocks: Sequence[Vec], count: int) -> Vec:
    """sum_j 2^j * block_j, by doubling (Horner's rule from the top bit)."""
    ops = party.ops
    if not blocks:
        return ops.zeros(count)
    acc = blocks[-1]
    for block in reversed(blocks[:-1]):
        acc = ops.add(ops.add(acc, acc), block)
    return acc


def _masked_opening(
    party: Party, shares: Vec, value_bits: int, low_bits: int, security_bits: int
) -> tuple[list[int], Vec, list[Vec]]:
    """Open x + 2^(k-1) + r with r = high * 2^m + low (low's m bits shared bit by bit):
    returns (the opened values, shares of low, shares of low's bits)."""
    ops = party.ops
    k, m = value_bits, low_bits
    _mask_margin(party, k, security_bits)
    count = ops.length(shares)
    blocks = _blocks(party, random_bits(party, count * m), count) if m else []
    low = _from_bits(party, blocks, count)
    high = random_below_power(party, count, k + security_bits - m)
    masked = ops.add(ops.add(shares, ops.scale(high, 1 << m)), low)
    return open_values(party, ops.add_const(masked, 1 << (k - 1))), low, blocks


def truncate(
    party: Party, shares: Vec | Sequence[int], fraction_bits: int, value_bits: int, security_bits: int = 40
) -> Vec:
    """Shares of x / 2^f rounded down or up at random (probabilistic truncation,
    Catrina and Saxena): for x of at most ``value_bits`` bits (sign included), mask
    x with random bits, open, and remove the low bits the mask knows.

    The opened value hides x statistically (``security_bits``), which needs
    value_bits + security_bits + 2 < bits(p)."""
    ops, field = party.ops, party.scheme.field
    x = vector(party, shares)
    f = fraction_bits
    opened, low, _ = _masked_opening(party, x, value_bits, f, security_bits)
    public_low = ops.of([c % (1 << f) for c in opened])
    return ops.scale(ops.add(ops.sub(x, public_low), low), field.inverse(1 << f))


def _bit_less_than(party: Party, public: Sequence[int], blocks: Sequence[Vec]) -> Vec:
    """Shares of [a < b] for public integers a and shared bits of b (block j: bit j of
    every b): find the most significant differing bit with a prefix-OR from the top
    (one multiplication round per bit), and read b's bit there."""
    ops = party.ops
    count = len(public)
    ones = ops.const(1, count)
    a = np.array(public, dtype=object)
    prefixes: list[Vec] = []
    above: Vec | None = None  # OR of the differences above bit j
    for j in reversed(range(len(blocks))):
        a_bit = np.array(((a >> j) & 1).astype(bool), dtype=bool)
        difference = ops.where(a_bit, ops.sub(ones, blocks[j]), blocks[j])  # a_j XOR b_j, a_j public
        if above is None:
            above = difference
        else:
            both = multiply(party, above, difference)
            above = ops.sub(ops.add(above, difference), both)
        prefixes.append(above)
    prefixes.reverse()  # prefixes[j] = OR of differences at bits >= j
    local: Vec | None = None
    for j, block in enumerate(blocks):
        higher = prefixes[j + 1] if j + 1 < len(blocks) else ops.zeros(count)
        first = ops.sub(prefixes[j], higher)  # 1 exactly at the top differing bit
        term = ops.mul(first, block)
        local = term if local is None else ops.add(local, term)
    if local is None:
        return ops.zeros(count)
    return _reshare(party, local)


def modulo_power_of_two(
    party: Party, shares: Vec | Sequence[int], value_bits: int, m: int, security_bits: int = 40
) -> Vec:
    """Shares of x mod 2^m (exactly), for x of at most ``value_bits`` bits."""
    ops = party.ops
    x = vector(party, shares)
    opened, low, blocks = _masked_opening(party, x, value_bits, m, security_bits)
    public_low = [c % (1 << m) for c in opened]
    borrow = _bit_less_than(party, public_low, blocks)
    return ops.add(ops.sub(ops.of(public_low), low), ops.scale(borrow, 1 << m))


def less_than_zero(party: Party, shares: Vec | Sequence[int], value_bits: int) -> Vec:
    """Shares of [x < 0] for signed x with |x| < 2^(value_bits - 1): x < 0 exactly when
    floor(x / 2^(k-1)) = -1."""
    ops, field = party.ops, party.scheme.field
    x = vector(party, shares)
    k = value_bits
    low = modulo_power_of_two(party, x, k, k - 1)
    return ops.neg(ops.scale(ops.sub(x, low), field.inverse(1 << (k - 1))))


def less_than(party: Party, a: Vec | Sequence[int], b: Vec | Sequence[int], value_bits: int) -> Vec:
    """Shares of [a < b] for signed values whose difference fits ``value_bits`` bits."""
    return less_than_zero(party, party.ops.sub(vector(party, a), vector(party, b)), value_bits)
