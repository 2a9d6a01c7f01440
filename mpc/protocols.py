"""Protocols from one party's point of view, written as the papers write them.

Every function takes the calling ``Party`` and its shares, and returns its shares of
the result; all parties call the same function with the same public arguments.
Rounds: ``input_values`` 1, ``open_values`` 1, ``multiply``/``inner`` 1 (one
resharing for a whole inner product), ``random_values`` 1, ``random_bits`` t + 1,
``truncate`` t + 3 (random bits, a bounded mask, then one opening).
"""

from __future__ import annotations

from collections.abc import Sequence

from mpc.runtime import Party
from mpc.shamir import SharingError, lagrange_at_zero


class ProtocolError(RuntimeError):
    """A protocol could not complete correctly (e.g. an opening was inconsistent)."""


def input_values(party: Party, owner: int, values: Sequence[int] | None = None) -> list[int]:
    """``owner`` secret-shares its ``values`` (field elements); everyone gets its shares."""
    outgoing: dict[int, list[int]] = {}
    if party.index == owner:
        if values is None:
            raise ValueError("the owner must give its values")
        per_party = party.scheme.share_many(list(values), party.random)
        outgoing = {j: per_party[j - 1] for j in party.parties}
    return party.exchange(outgoing)[owner]


def open_values(party: Party, shares: Sequence[int]) -> list[int]:
    """Reveal shared values to every party, checking every share (n >= 2t + 1 gives
    redundant shares: a wrong one is detected, never silently used)."""
    received = party.broadcast(list(shares))
    opened = []
    for k in range(len(shares)):
        try:
            opened.append(party.scheme.open_checked({j: received[j][k] for j in party.parties}))
        except SharingError as exc:
            raise ProtocolError(f"opening value {k}: {exc}") from exc
    return opened


def _reshare(party: Party, local: Sequence[int]) -> list[int]:
    """Degree reduction: share each local degree-2t value, combine with Lagrange weights."""
    p = party.scheme.field.modulus
    per_party = party.scheme.share_many(list(local), party.random)
    received = party.exchange({j: per_party[j - 1] for j in party.parties})
    weights = lagrange_at_zero(tuple(party.parties), p)
    return [sum(weights[i] * received[i][k] for i in party.parties) % p for k in range(len(local))]


def multiply(party: Party, a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Element-wise products, one round."""
    p = party.scheme.field.modulus
    return _reshare(party, [x * y % p for x, y in zip(a, b, strict=True)])


def inner(party: Party, xs: Sequence[Sequence[int]], ys: Sequence[Sequence[int]]) -> list[int]:
    """sum_k x[i][k] * y[i][k] for each i: one resharing per output, not per product."""
    field = party.scheme.field
    return _reshare(party, [field.inner(x, y) for x, y in zip(xs, ys, strict=True)])


def random_values(party: Party, count: int) -> list[int]:
    """Shares of uniformly random elements no coalition of t parties knows: everyone
    shares randomness, and the shares are summed."""
    p = party.scheme.field.modulus
    per_party = party.scheme.share_many(party.random(p, count), party.random)
    received = party.exchange({j: per_party[j - 1] for j in party.parties})
    return [sum(received[j][k] for j in party.parties) % p for k in range(count)]


def _contributions(party: Party, count: int, bound: int) -> list[list[int]]:
    """Parties 1..t+1 each secret-share ``count`` values of their own drawing, in one
    round (uniform below ``bound``); returns every contributor's shares. Any t parties miss at least one
    contribution, so combining all of them gives values no coalition of t knows."""
    contributors = range(1, party.scheme.threshold + 2)
    outgoing: dict[int, list[int]] = {}
    if party.index in contributors:
        per_party = party.scheme.share_many(party.random(bound, count), party.random)
        outgoing = {j: per_party[j - 1] for j in party.parties}
    received = party.exchange(outgoing)
    return [received[c] for c in contributors]


def random_bits(party: Party, count: int) -> list[int]:
    """Shares of uniformly random bits: the XOR of one random bit from each of t + 1
    parties (x XOR y = x + y - 2xy), so one input round and t multiplication rounds.
    Semi-honest: a contributor must give a bit (an actively cheating one could not be
    detected here; see docs/mpc.md)."""
    p = party.scheme.field.modulus
    parts = _contributions(party, count, 2)
    bits = parts[0]
    for other in parts[1:]:
        both = multiply(party, bits, other)
        bits = [(x + y - 2 * z) % p for x, y, z in zip(bits, other, both, strict=True)]
    return bits


def random_below_power(party: Party, count: int, bits: int) -> list[int]:
    """Shares of random integers below (t + 1) * 2^bits that no t parties know: the sum
    of one ``bits``-bit random integer from each of t + 1 parties (a statistical mask,
    not uniform in the field)."""
    p = party.scheme.field.modulus
    parts = _contributions(party, count, 1 << bits)
    return [sum(column) % p for column in zip(*parts, strict=True)]


def _mask_margin(party: Party, value_bits: int, security_bits: int) -> None:
    """The masked value x + 2^(k-1) + r must not wrap around p."""
    field = party.scheme.field
    needed = value_bits + security_bits + (party.scheme.threshold + 1).bit_length() + 1
    if needed >= field.bits:
        raise ProtocolError(f"masking {value_bits}-bit values needs a field of more than {needed} bits")


def truncate(
    party: Party, shares: Sequence[int], fraction_bits: int, value_bits: int, security_bits: int = 40
) -> list[int]:
    """Shares of x / 2^f rounded down or up at random (probabilistic truncation,
    Catrina and Saxena): for x of at most ``value_bits`` bits (sign included), mask
    x with random bits, open, and remove the low bits the mask knows.

    The opened value hides x statistically (``security_bits``), which needs
    value_bits + security_bits + 1 < bits(p)."""
    field = party.scheme.field
    p = field.modulus
    k, f, kappa = value_bits, fraction_bits, security_bits
    _mask_margin(party, k, kappa)
    count = len(shares)
    low_bits = random_bits(party, count * f)
    highs = random_below_power(party, count, k + kappa - f)
    result = []
    masked = []
    lows = []
    for i, x in enumerate(shares):
        low = sum(b << j for j, b in enumerate(low_bits[i * f : (i + 1) * f])) % p
        lows.append(low)
        masked.append((x + (1 << (k - 1)) + (highs[i] << f) + low) % p)
    opened = open_values(party, masked)
    inverse = field.inverse(1 << f)
    for x, low, c in zip(shares, lows, opened, strict=True):
        c_low = c % (1 << f)
        result.append((x - c_low + low) * inverse % p)
    return result


def _bit_less_than(party: Party, public: Sequence[int], bits: Sequence[Sequence[int]]) -> list[int]:
    """Shares of [a < b] for public integers a and shared bits of b (least significant
    first): find the most significant differing bit with a prefix-OR from the top (one
    multiplication round per bit), and read b's bit there."""
    p = party.scheme.field.modulus
    width = len(bits[0]) if bits else 0
    count = len(public)
    a_bits = [[(a >> i) & 1 for i in range(width)] for a in public]
    # d_i = a_i XOR b_i, linear because a_i is public
    diff = [
        [(b_i + a_i - 2 * a_i * b_i) % p for a_i, b_i in zip(a_bits[v], bits[v], strict=True)]
        for v in range(count)
    ]
    prefix = [[0] * (width + 1) for _ in range(count)]  # prefix[v][i] = OR of diff[v][i:]
    for i in reversed(range(width)):
        above = [prefix[v][i + 1] for v in range(count)]
        here = [diff[v][i] for v in range(count)]
        both = multiply(party, above, here)
        for v in range(count):
            prefix[v][i] = (above[v] + here[v] - both[v]) % p
    firsts = [[(prefix[v][i] - prefix[v][i + 1]) % p for i in range(width)] for v in range(count)]
    return inner(party, firsts, [list(b) for b in bits])


def modulo_power_of_two(
    party: Party, shares: Sequence[int], value_bits: int, m: int, security_bits: int = 40
) -> list[int]:
    """Shares of x mod 2^m (exactly), for x of at most ``value_bits`` bits."""
    p = party.scheme.field.modulus
    k, kappa = value_bits, security_bits
    _mask_margin(party, k, kappa)
    count = len(shares)
    low_bits = random_bits(party, count * m)
    highs = random_below_power(party, count, k + kappa - m)
    lows = [low_bits[i * m : (i + 1) * m] for i in range(count)]
    low_values = [sum(b << j for j, b in enumerate(bits)) % p for bits in lows]
    masked = [(x + (1 << (k - 1)) + (highs[i] << m) + low_values[i]) % p for i, x in enumerate(shares)]
    opened = open_values(party, masked)
    public_low = [c % (1 << m) for c in opened]
    borrow = _bit_less_than(party, public_low, lows)
    return [(c - r + (u << m)) % p for c, r, u in zip(public_low, low_values, borrow, strict=True)]


def less_than_zero(party: Party, shares: Sequence[int], value_bits: int) -> list[int]:
    """Shares of [x < 0] for signed x with |x| < 2^(value_bits - 1): x < 0 exactly when
    floor(x / 2^(k-1)) = -1."""
    field = party.scheme.field
    p = field.modulus
    k = value_bits
    low = modulo_power_of_two(party, shares, k, k - 1)
    inverse = field.inverse(1 << (k - 1))
    return [(-(x - r) * inverse) % p for x, r in zip(shares, low, strict=True)]


def less_than(party: Party, a: Sequence[int], b: Sequence[int], value_bits: int) -> list[int]:
    """Shares of [a < b] for signed values whose difference fits ``value_bits`` bits."""
    p = party.scheme.field.modulus
    return less_than_zero(party, [(x - y) % p for x, y in zip(a, b, strict=True)], value_bits)
