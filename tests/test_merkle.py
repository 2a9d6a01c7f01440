"""Tests for ledger.merkle against a naive RFC 9162 reference and published vectors."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_for_consistency,
    nodes_for_inclusion,
    nodes_for_root,
    root_at,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------- reference
# Straight from RFC 9162 section 2.1, over D[lo:hi] of one fixed leaf list, using
# hashlib directly so that nothing here depends on the module under test.

N_SMALL = 300
N_LARGE = 4100
LEAVES: list[bytes] = [
    hashlib.sha256(b"leaf %d" % i).digest()[: i % 7] + b"entry-%d" % i for i in range(N_LARGE)
]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi])."""
    n = hi - lo
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + LEAVES[lo])
    k = _k(n)
    return _h(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi))


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi])."""
    n = hi - lo
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, lo, lo + k), ref_mth(lo + k, hi)]
    return [*ref_path(m - k, lo + k, hi), ref_mth(lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b)."""
    n = hi - lo
    if m == n:
        return [] if b else [ref_mth(lo, hi)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, lo, lo + k, b), ref_mth(lo + k, hi)]
    return [*ref_subproof(m - k, lo + k, hi, False), ref_mth(lo, lo + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    """PROOF(m, D[0:n]) for 0 < m < n."""
    return ref_subproof(m, 0, n, True)


def _node(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def ref_verify_inclusion(leaf: bytes, m: int, n: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Rebuild the root by walking the PATH recursion (not the RFC's bit-twiddling)."""
    if not 0 <= m < n:
        return False
    stack = list(proof)  # the outermost sibling is the last element

    def walk(m: int, n: int) -> bytes | None:
        if n == 1:
            return leaf
        if not stack:
            return None
        sibling = stack.pop()
        k = _k(n)
        inner = walk(m, k) if m < k else walk(m - k, n - k)
        if inner is None:
            return None
        return _node(inner, sibling) if m < k else _node(sibling, inner)

    got = walk(m, n)
    return got is not None and not stack and got == root


def ref_verify_consistency(m: int, n: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Rebuild both roots by walking the SUBPROOF recursion."""
    if not 0 < m < n:
        return False
    stack = list(proof)

    def walk(m: int, n: int, b: bool) -> tuple[bytes, bytes] | None:
        if m == n:
            if b:
                return old_root, old_root
            if not stack:
                return None
            h = stack.pop()
            return h, h
        if not stack:
            return None
        sibling = stack.pop()
        k = _k(n)
        if m <= k:
            sub = walk(m, k, b)
            return None if sub is None else (sub[0], _node(sub[1], sibling))
        sub = walk(m - k, n - k, False)
        return None if sub is None else (_node(sibling, sub[0]), _node(sibling, sub[1]))

    got = walk(m, n, True)
    return got is not None and not stack and got == (old_root, new_root)


def _build_store(n: int) -> dict[tuple[int, int], bytes]:
    """Every complete subtree hash of the first n leaves, bottom-up."""
    store: dict[tuple[int, int], bytes] = {}
    level_hashes = [_h(b"\x00" + leaf) for leaf in LEAVES[:n]]
    level = 0
    while level_hashes:
        for i, h in enumerate(level_hashes):
            store[(level, i)] = h
        level_hashes = [
            _node(level_hashes[i], level_hashes[i + 1]) for i in range(0, len(level_hashes) - 1, 2)
        ]
        level += 1
    return store


STORE = _build_store(N_LARGE)


class CountingReader:
    """A NodeReader over STORE that records every call."""

    def __init__(self, limit: int = N_LARGE) -> None:
        self.calls: list[list[tuple[int, int]]] = []
        self.limit = limit

    def __call__(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        coords = list(coords)
        self.calls.append(coords)
        for level, index in coords:
            # Nodes beyond the tree we pretend to have must never be asked for.
            assert (index + 1) << level <= self.limit, (level, index, self.limit)
        return [STORE[c] for c in coords]


def _bound(n: int) -> int:
    return 2 * math.ceil(math.log2(n)) + 2 if n > 1 else 2


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --------------------------------------------------------------------------- known answers

# RFC 6962 test vectors as published by the CT / transparency-dev projects (data only).
KAT_LEAVES = [bytes.fromhex(x) for x in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]  # fmt: skip
KAT_ROOTS = [bytes.fromhex(x) for x in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]  # fmt: skip
# (index, size, proof); indexes are 0-based here.
KAT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
KAT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


def _kat_store() -> dict[tuple[int, int], bytes]:
    frontier = Frontier.empty()
    store: dict[tuple[int, int], bytes] = {}
    for leaf in KAT_LEAVES:
        for level, index, h in frontier.append_data(leaf):
            store[(level, index)] = h
    return store


def test_empty_root_known_answer() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert Frontier.empty().root() == EMPTY_ROOT
    assert Frontier.empty().size == 0
    reader = CountingReader()
    assert root_at(0, reader) == EMPTY_ROOT
    assert reader.calls == []  # nothing to read for the empty tree
    assert nodes_for_root(0) == []


def test_hash_prefixes_known_answer() -> None:
    assert leaf_hash(b"") == KAT_ROOTS[1]
    assert node_hash(leaf_hash(b""), leaf_hash(b"\x00")) == KAT_ROOTS[2]
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


def test_rfc6962_roots_known_answer() -> None:
    store = _kat_store()
    frontier = Frontier.empty()
    assert frontier.root() == KAT_ROOTS[0]
    for size, leaf in enumerate(KAT_LEAVES, start=1):
        frontier.append(leaf_hash(leaf))
        assert frontier.root() == KAT_ROOTS[size]
        assert root_at(size, lambda c: [store[x] for x in c]) == KAT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), KAT_INCLUSION)
def test_rfc6962_inclusion_known_answer(index: int, size: int, proof: list[str]) -> None:
    store = _kat_store()
    got = inclusion_proof(index, size, lambda c: [store[x] for x in c])
    assert [h.hex() for h in got] == proof
    assert verify_inclusion(leaf_hash(KAT_LEAVES[index]), index, size, got, KAT_ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), KAT_CONSISTENCY)
def test_rfc6962_consistency_known_answer(old: int, new: int, proof: list[str]) -> None:
    store = _kat_store()
    got = consistency_proof(old, new, lambda c: [store[x] for x in c])
    assert [h.hex() for h in got] == proof
    assert verify_consistency(old, new, KAT_ROOTS[old], KAT_ROOTS[new], got)


# --------------------------------------------------------------------------- frontier


def test_frontier_roots_and_nodes_match_reference() -> None:
    frontier = Frontier.empty()
    emitted: dict[tuple[int, int], bytes] = {}
    for size in range(1, N_SMALL + 1):
        created = frontier.append(_h(b"\x00" + LEAVES[size - 1]))
        assert created[0] == (0, size - 1, STORE[(0, size - 1)])
        for level, index, h in created:
            assert (level, index) not in emitted  # every node is produced exactly once
            emitted[(level, index)] = h
        assert frontier.size == size
        assert frontier.root() == ref_mth(0, size)
        assert len(frontier.hashes) == size.bit_count()
    assert emitted == _build_store(N_SMALL)


def test_frontier_append_data_equals_append_of_leaf_hash() -> None:
    a, b = Frontier.empty(), Frontier.empty()
    for leaf in LEAVES[:37]:
        assert a.append_data(leaf) == b.append(leaf_hash(leaf))
    assert a == b
    with pytest.raises(ValueError, match="32-byte leaf hash"):
        a.append(b"raw data, not a hash")


def test_frontier_copy_is_independent() -> None:
    frontier = Frontier.empty()
    for leaf in LEAVES[:11]:
        frontier.append_data(leaf)
    snapshot = frontier.copy()
    root_before = frontier.root()
    frontier.append_data(LEAVES[11])
    assert snapshot.size == 11 and snapshot.root() == root_before
    assert frontier.size == 12 and frontier.root() == ref_mth(0, 12)
    assert snapshot != frontier
    snapshot.append_data(LEAVES[11])
    assert snapshot == frontier


@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, N_SMALL), extra=st.integers(0, 40))
def test_frontier_load_continues_correctly(size: int, extra: int) -> None:
    reader = CountingReader(limit=size)
    frontier = Frontier.load(size, reader)
    assert len(reader.calls) == (1 if size else 0)
    assert frontier.size == size
    assert frontier.root() == ref_mth(0, size)
    assert [c for call in reader.calls for c in call] == nodes_for_root(size)
    for i in range(size, size + extra):
        for level, index, h in frontier.append(_h(b"\x00" + LEAVES[i])):
            assert STORE[(level, index)] == h
        assert frontier.root() == ref_mth(0, i + 1)


def test_frontier_rejects_inconsistent_construction() -> None:
    with pytest.raises(ValueError, match="has 2 hashes"):
        Frontier(3, [b"\x00" * 32])
    with pytest.raises(ValueError, match="node reader returned 0"):
        Frontier.load(5, lambda c: [])
    with pytest.raises(ValueError, match="malformed hash"):
        Frontier.load(1, lambda c: [b"x"])


# --------------------------------------------------------------------------- roots


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, N_SMALL))
def test_root_at_matches_reference(size: int) -> None:
    reader = CountingReader(limit=size)
    assert root_at(size, reader) == ref_mth(0, size)
    assert len(reader.calls) == 1
    assert len(reader.calls[0]) == size.bit_count() <= _bound(size)


# --------------------------------------------------------------------------- inclusion


@st.composite
def index_and_size(draw: st.DrawFn, max_size: int = N_SMALL) -> tuple[int, int]:
    size = draw(st.integers(1, max_size))
    return draw(st.integers(0, size - 1)), size


def _check_inclusion(index: int, size: int) -> None:
    reader = CountingReader(limit=size)
    proof = inclusion_proof(index, size, reader)
    assert proof == ref_path(index, 0, size)
    if size > 1:
        assert len(reader.calls) == 1
        assert reader.calls[0] == nodes_for_inclusion(index, size)
        assert len(reader.calls[0]) <= _bound(size)
    else:
        assert reader.calls == []
    leaf = _h(b"\x00" + LEAVES[index])
    root = ref_mth(0, size)
    assert verify_inclusion(leaf, index, size, proof, root)
    assert ref_verify_inclusion(leaf, index, size, proof, root)


@settings(max_examples=200, deadline=None)
@given(index_and_size())
def test_inclusion_proof_matches_reference(args: tuple[int, int]) -> None:
    _check_inclusion(*args)


@pytest.mark.parametrize("size", [1000, 1023, 1024, 1025, 2047, 4097])
def test_inclusion_proof_large_trees(size: int) -> None:
    for index in {0, 1, size // 3, size // 2, size - 2, size - 1}:
        _check_inclusion(index, size)


@settings(max_examples=150, deadline=None)
@given(index_and_size(), st.data())
def test_tampered_inclusion_proofs_are_rejected(args: tuple[int, int], data: st.DataObject) -> None:
    index, size = args
    proof = ref_path(index, 0, size)
    leaf = _h(b"\x00" + LEAVES[index])
    root = ref_mth(0, size)
    other = _h(b"something else")

    always_false: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (leaf, index, size, [*proof, other], root),  # extended
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [other, *proof], root),  # prepended
        (_flip(leaf), index, size, proof, root),  # wrong leaf
        (leaf, index, size, proof, _flip(root)),  # wrong root
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, size, size, proof, root),  # index out of range
    ]
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 7))
        flipped = list(proof)
        flipped[position] = _flip(flipped[position], bit)
        always_false += [
            (leaf, index, size, flipped, root),  # flipped byte
            (leaf, index, size, proof[:-1], root),  # truncated
            (leaf, index, size, proof[1:], root),
        ]
    for wrong_index in {index - 1, index + 1, index ^ 2, index ^ 1}:
        if 0 <= wrong_index < size and wrong_index != index:
            always_false.append((leaf, wrong_index, size, proof, root))
    for case in always_false:
        assert not verify_inclusion(*case), case[1:3]
        assert not ref_verify_inclusion(*case)

    # A different size can legitimately give the same hashing shape (the root,
    # not the proof, binds the size), so compare with the recursive reference.
    for wrong_size in {
        size - 1,
        size + 1,
        size * 2,
        size // 2,
        size + data.draw(st.integers(2, 50)),
    }:
        if wrong_size != size:
            expected = ref_verify_inclusion(leaf, index, wrong_size, proof, root)
            assert verify_inclusion(leaf, index, wrong_size, proof, root) == expected


# --------------------------------------------------------------------------- consistency


@st.composite
def old_and_new(draw: st.DrawFn, max_size: int = N_SMALL) -> tuple[int, int]:
    new = draw(st.integers(1, max_size))
    return draw(st.integers(1, new)), new


def _check_consistency(old: int, new: int) -> None:
    reader = CountingReader(limit=new)
    proof = consistency_proof(old, new, reader)
    if old == new:
        assert proof == []
        assert reader.calls == []
    else:
        assert proof == ref_proof(old, new)
        assert len(reader.calls) == 1
        assert reader.calls[0] == nodes_for_consistency(old, new)
        assert len(reader.calls[0]) <= _bound(new)
        assert ref_verify_consistency(old, new, ref_mth(0, old), ref_mth(0, new), proof)
    assert verify_consistency(old, new, ref_mth(0, old), ref_mth(0, new), proof)


@settings(max_examples=200, deadline=None)
@given(old_and_new())
def test_consistency_proof_matches_reference(args: tuple[int, int]) -> None:
    _check_consistency(*args)


@pytest.mark.parametrize(("old", "new"), [(1, 4097), (511, 1025), (1024, 4096), (1000, 4100),
                                          (4095, 4097), (2049, 4099), (3, 4100)])  # fmt: skip
def test_consistency_proof_large_trees(old: int, new: int) -> None:
    _check_consistency(old, new)


@settings(max_examples=150, deadline=None)
@given(old_and_new(), st.data())
def test_tampered_consistency_proofs_are_rejected(args: tuple[int, int], data: st.DataObject) -> None:
    old, new = args
    if old == new:
        new += 1
    proof = ref_proof(old, new)
    old_root, new_root = ref_mth(0, old), ref_mth(0, new)
    other = _h(b"something else")
    position = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = list(proof)
    flipped[position] = _flip(flipped[position], bit)

    always_false: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (old, new, old_root, new_root, flipped),  # flipped byte
        (old, new, old_root, new_root, proof[:-1]),  # truncated
        (old, new, old_root, new_root, proof[1:]),
        (old, new, old_root, new_root, []),  # empty
        (old, new, old_root, new_root, [*proof, other]),  # extended
        (old, new, old_root, new_root, [*proof, new_root]),
        (old, new, old_root, new_root, [other, *proof]),  # prepended
        (old, new, old_root, new_root, [proof[0], *proof]),
        (old, new, new_root, old_root, proof),  # swapped roots
        (old, new, _flip(old_root), new_root, proof),  # wrong roots
        (old, new, old_root, _flip(new_root), proof),
        (new, old, old_root, new_root, proof),  # sizes reversed
    ]
    for case in always_false:
        assert not verify_consistency(*case), case[:2]
        assert not ref_verify_consistency(*case)

    # Wrong sizes: compare with the recursive reference (see the inclusion test).
    for wrong_old, wrong_new in {
        (old - 1, new), (old + 1, new), (old ^ 2, new), (old, new + 1),
        (old, new - 1), (old, new * 2), (old, new // 2),
    }:  # fmt: skip
        if (wrong_old, wrong_new) != (old, new) and 0 < wrong_old < wrong_new:
            expected = ref_verify_consistency(wrong_old, wrong_new, old_root, new_root, proof)
            got = verify_consistency(wrong_old, wrong_new, old_root, new_root, proof)
            assert got == expected, (wrong_old, wrong_new)


def test_consistency_edge_cases() -> None:
    reader = CountingReader()
    root5 = ref_mth(0, 5)
    # old == new: the empty proof, proven by equal roots.
    assert consistency_proof(5, 5, reader) == []
    assert verify_consistency(5, 5, root5, root5, [])
    assert not verify_consistency(5, 5, root5, ref_mth(0, 4), [])
    assert not verify_consistency(5, 5, root5, root5, [root5])
    # old == 0: the empty tree is a prefix of every tree.
    assert consistency_proof(0, 5, reader) == []
    assert consistency_proof(0, 0, reader) == []
    assert verify_consistency(0, 5, EMPTY_ROOT, root5, [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 5, root5, root5, [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, root5, [EMPTY_ROOT])
    assert nodes_for_consistency(0, 5) == nodes_for_consistency(5, 5) == []
    assert reader.calls == []


def test_every_proof_in_small_trees() -> None:
    """Exhaustive over all sizes up to 40: proofs equal the reference and verify."""
    for size in range(1, 41):
        for m in range(size):
            _check_inclusion(m, size)
            _check_consistency(m + 1, size)


# --------------------------------------------------------------------------- bad input


def test_proof_generation_rejects_impossible_arguments() -> None:
    reader = CountingReader()
    with pytest.raises(ValueError, match="not in a tree of size"):
        inclusion_proof(5, 5, reader)
    with pytest.raises(ValueError, match="empty tree"):
        inclusion_proof(0, 0, reader)
    with pytest.raises(ValueError, match="non-negative"):
        inclusion_proof(-1, 5, reader)
    with pytest.raises(ValueError, match="larger than new_size"):
        consistency_proof(6, 5, reader)
    with pytest.raises(ValueError, match="non-negative"):
        root_at(-1, reader)
    with pytest.raises(ValueError, match="maximum tree size"):
        nodes_for_root(1 << 64)
    with pytest.raises(TypeError):
        nodes_for_inclusion(True, 5)
    with pytest.raises(TypeError):
        root_at(2.0, reader)  # type: ignore[arg-type]
    assert reader.calls == []


def test_misbehaving_reader_is_detected() -> None:
    with pytest.raises(ValueError, match="returned 1 hashes for 4"):
        inclusion_proof(0, 7, lambda c: [b"\x00" * 32])
    with pytest.raises(ValueError, match="malformed hash"):
        consistency_proof(3, 7, lambda c: [b"\x00" * 31] * len(c))


GARBAGE: list[object] = [None, -1, 1.0, "3", True, 1 << 65, b"", b"\x00" * 31, [], [b"x"], object()]


@pytest.mark.parametrize("bad", GARBAGE)
def test_verifiers_never_raise(bad: object) -> None:
    leaf = _h(b"\x00" + LEAVES[2])
    root = ref_mth(0, 5)
    proof = ref_path(2, 0, 5)
    good: list[object] = [leaf, 2, 5, proof, root]
    for position in range(5):
        args = list(good)
        args[position] = bad
        assert verify_inclusion(*args) is False  # type: ignore[arg-type]
    assert verify_inclusion(leaf, 2, 5, [*proof[:-1], bad], root) is False  # type: ignore[list-item]

    c_proof = ref_proof(3, 5)
    c_good: list[object] = [3, 5, ref_mth(0, 3), root, c_proof]
    for position in range(5):
        args = list(c_good)
        args[position] = bad
        assert verify_consistency(*args) is False  # type: ignore[arg-type]
    assert verify_consistency(3, 5, ref_mth(0, 3), root, [bad, *c_proof]) is False  # type: ignore[list-item]


@settings(max_examples=100, deadline=None)
@given(
    index=st.integers(-3, 1 << 66),
    size=st.integers(-3, 1 << 66),
    proof=st.lists(st.binary(min_size=0, max_size=40), max_size=70),
    root=st.binary(max_size=40),
)
def test_verifiers_never_raise_on_random_input(
    index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    leaf = _h(b"\x00" + LEAVES[0])
    assert isinstance(verify_inclusion(leaf, index, size, proof, root), bool)
    assert isinstance(verify_consistency(index, size, root, leaf, proof), bool)
