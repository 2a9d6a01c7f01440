"""RFC 9162 Merkle tree hashing, proofs and verification (SHA-256).

Why this shape: the ledger persists the hash of every *complete* subtree as a
node ``(level, index)`` covering leaves ``[index << level, (index + 1) << level)``
(level 0 holds leaf hashes).  Every root and proof the log will ever need can be
assembled from O(log n) such nodes, so the functions here are pure: they say
*which* nodes they need, ask a caller-supplied batched reader for them in one
call, and do the hashing.  No state beyond the :class:`Frontier` (the right edge
of the tree, needed to append) is kept anywhere, which keeps the code easy to
check against the RFC and trivially safe to roll back.

Layout follows RFC 9162 section 2.1: ``MTH`` splits a tree of ``n > 1`` leaves at
``k``, the largest power of two smaller than ``n``.  A consequence used
throughout: every subtree the RFC recursion visits starts at a multiple of a
power of two at least as large as its own width, so it is either one complete
node or a run of complete nodes of strictly decreasing size (the binary digits
of its width), whose hashes fold right-to-left into the subtree hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Frontier",
    "NodeReader",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "nodes_for_consistency",
    "nodes_for_inclusion",
    "nodes_for_root",
    "root_at",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

MAX_TREE_SIZE = (1 << 64) - 1
"""RFC 9162 tree sizes are uint64; anything larger is refused, never wrapped."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() -- the root of the empty tree (RFC 9162 section 2.1.1)."""

NodeReader = Callable[[Sequence[tuple[int, int]]], Sequence[bytes]]
"""Batched node lookup: given ``(level, index)`` coordinates, return their hashes in order."""

Node = tuple[int, int]
_Range = tuple[int, int]

# RFC 9162 proofs have at most ~2 * 64 entries for a uint64 tree; longer "proofs"
# are garbage and are refused before any hashing is done.
_MAX_PROOF_LEN = 2 * 64 + 2


def leaf_hash(data: bytes) -> bytes:
    """Hash a leaf: SHA-256(0x00 || data); the prefix keeps leaves and nodes apart."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + bytes(left) + bytes(right)).digest()


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: object) -> int:
    """Refuse non-integers (bool included) so a size can never be silently coerced."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    if value > MAX_TREE_SIZE:
        raise ValueError(f"{name} {value} exceeds the maximum tree size 2**64 - 1")
    return value


def _is_size(value: object) -> bool:
    """Non-raising twin of :func:`_check_int` for the verifiers."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _split(width: int) -> int:
    """Largest power of two strictly smaller than ``width`` (RFC 9162 ``k``), width > 1."""
    return 1 << ((width - 1).bit_length() - 1)


def _decompose(start: int, end: int) -> list[Node]:
    """Complete nodes covering ``[start, end)``, largest (leftmost) first.

    Only valid for the aligned ranges the RFC recursion produces (``start`` a
    multiple of a power of two >= ``end - start``), which is all we ever pass.
    """
    nodes: list[Node] = []
    width = end - start
    offset = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            nodes.append((level, offset >> level))
            offset += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Hash a decomposed range right-to-left, as MTH does for an incomplete right edge."""
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = node_hash(h, result)
    return result


def _inclusion_ranges(index: int, size: int) -> list[_Range]:
    """Subtree ranges whose MTH form PATH(index, D[0:size]), leaf level first (2.1.3.1)."""
    ranges: list[_Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))  # PATH(m, D[0:k]) : MTH(D[k:n])
            hi = lo + k
        else:
            ranges.append((lo, lo + k))  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            lo += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old: int, new: int) -> list[_Range]:
    """Subtree ranges whose MTH form PROOF(old, D[0:new]) for 0 < old < new (2.1.4.1)."""
    ranges: list[_Range] = []
    lo, hi = 0, new
    complete_old_root = True  # the RFC's boolean b
    while old != hi:
        k = _split(hi - lo)
        if old - lo <= k:
            ranges.append((lo + k, hi))  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            hi = lo + k
        else:
            ranges.append((lo, lo + k))  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            lo += k
            complete_old_root = False
    if not complete_old_root:
        ranges.append((lo, hi))  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
    ranges.reverse()
    return ranges


def _flatten(ranges: Sequence[_Range]) -> list[Node]:
    nodes: list[Node] = []
    for start, end in ranges:
        nodes.extend(_decompose(start, end))
    return nodes


def _read(read: NodeReader, nodes: Sequence[Node]) -> list[bytes]:
    """Issue the single reader call and check the answer before trusting it."""
    if not nodes:
        return []
    hashes = list(read(list(nodes)))
    if len(hashes) != len(nodes):
        raise ValueError(f"node reader returned {len(hashes)} hashes for {len(nodes)} coordinates")
    for node, h in zip(nodes, hashes, strict=True):
        if not _is_hash(h):
            raise ValueError(f"node reader returned a malformed hash for node {node}")
    return [bytes(h) for h in hashes]


def _hash_ranges(ranges: Sequence[_Range], read: NodeReader) -> list[bytes]:
    """MTH of each range, fetching every needed node in one reader call."""
    hashes = _read(read, _flatten(ranges))
    out: list[bytes] = []
    pos = 0
    for start, end in ranges:
        count = bin(end - start).count("1")
        out.append(_fold(hashes[pos : pos + count]))
        pos += count
    return out


# --------------------------------------------------------------------------- coordinates


def nodes_for_root(size: int) -> list[Node]:
    """Nodes whose right fold is MTH(D[0:size]): one per set bit of ``size``, left first."""
    _check_int("size", size)
    return _decompose(0, size)


def nodes_for_inclusion(index: int, size: int) -> list[Node]:
    """Nodes needed to build the inclusion proof of leaf ``index`` in a tree of ``size``."""
    _check_inclusion_args(index, size)
    return _flatten(_inclusion_ranges(index, size))


def nodes_for_consistency(old_size: int, new_size: int) -> list[Node]:
    """Nodes needed to build the consistency proof from ``old_size`` to ``new_size``."""
    _check_consistency_args(old_size, new_size)
    if old_size in (0, new_size):
        return []
    return _flatten(_consistency_ranges(old_size, new_size))


def _check_inclusion_args(index: int, size: int) -> None:
    _check_int("index", index)
    _check_int("size", size)
    if size == 0:
        raise ValueError("no inclusion proof exists in an empty tree (size 0)")
    if index >= size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")


def _check_consistency_args(old_size: int, new_size: int) -> None:
    _check_int("old_size", old_size)
    _check_int("new_size", new_size)
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} is larger than new_size {new_size}")


# --------------------------------------------------------------------------- proofs


def root_at(size: int, read: NodeReader) -> bytes:
    """MTH(D[0:size]) from stored nodes; EMPTY_ROOT (and no reader call) for size 0."""
    nodes = nodes_for_root(size)
    if not nodes:
        return EMPTY_ROOT
    return _fold(_read(read, nodes))


def inclusion_proof(index: int, size: int, read: NodeReader) -> list[bytes]:
    """RFC 9162 PATH(index, D[0:size]), leaf-level sibling first (section 2.1.3.1).

    Raises ``ValueError`` when ``index >= size`` (which includes every index of
    the empty tree).  A one-leaf tree has the empty proof and reads nothing.
    """
    _check_inclusion_args(index, size)
    return _hash_ranges(_inclusion_ranges(index, size), read)


def consistency_proof(old_size: int, new_size: int, read: NodeReader) -> list[bytes]:
    """RFC 9162 PROOF(old_size, D[0:new_size]) (section 2.1.4.1).

    The RFC only defines the proof for ``0 < old_size < new_size``.  Outside that
    range we return ``[]`` rather than raising, matching what the verifier below
    accepts: ``old_size == new_size`` is proven by the roots being equal, and the
    empty tree (``old_size == 0``) is a prefix of every tree.  ``old_size >
    new_size`` raises ``ValueError``.
    """
    _check_consistency_args(old_size, new_size)
    if old_size in (0, new_size):
        return []
    return _hash_ranges(_consistency_ranges(old_size, new_size), read)


# --------------------------------------------------------------------------- verifiers


def _is_proof(proof: object) -> bool:
    return (
        isinstance(proof, (list, tuple)) and len(proof) <= _MAX_PROOF_LEN and all(_is_hash(p) for p in proof)
    )


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Check that leaf *hash* ``leaf`` is at ``index`` in the tree of ``size`` with ``root``.

    RFC 9162 section 2.1.3.2, step for step.  Never raises: anything malformed
    (wrong types, wrong hash lengths, index out of range, overlong proof) is
    simply ``False``.
    """
    if not (_is_size(index) and _is_size(size) and _is_hash(leaf) and _is_hash(root)):
        return False
    if not _is_proof(proof):
        return False
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn != 0 and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == bytes(root)


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``.  The RFC leaves the
    edge cases open; we accept exactly the empty proof for them:
    ``old_size == new_size`` needs ``old_root == new_root``, and ``old_size == 0``
    needs ``old_root == EMPTY_ROOT`` (any ``new_root`` extends the empty tree).
    Never raises; malformed input is ``False``.
    """
    if not (_is_size(old_size) and _is_size(new_size)):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root) and _is_proof(proof)):
        return False
    if old_size > new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and bytes(old_root) == bytes(new_root)
    if old_size == 0:
        return len(proof) == 0 and bytes(old_root) == EMPTY_ROOT
    if len(proof) == 0:
        return False
    path = [bytes(p) for p in proof]
    if old_size & (old_size - 1) == 0:  # an exact power of two
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn != 0 and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == bytes(old_root) and sr == bytes(new_root)


# --------------------------------------------------------------------------- frontier


class Frontier:
    """The right edge of the tree: the roots of the complete subtrees of ``size``.

    Why: appending needs only these O(log n) hashes (one per set bit of the
    size), not the tree.  ``append`` returns every node it completes so the
    caller can persist them; ``copy`` is O(log n), so a failed batch is rolled
    back by simply dropping the working copy.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Build from the subtree roots of ``size``'s binary decomposition, largest first."""
        _check_int("size", size)
        hashes = list(hashes)
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes, got {len(hashes)}")
        if not all(_is_hash(h) for h in hashes):
            raise ValueError("frontier hashes must be 32-byte values")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @classmethod
    def empty(cls) -> Frontier:
        """The frontier of the empty tree."""
        return cls()

    @classmethod
    def load(cls, size: int, read: NodeReader) -> Frontier:
        """Rebuild the frontier of a stored tree with one reader call (none for size 0)."""
        return cls(size, _read(read, nodes_for_root(size)))

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Subtree roots, largest first; their coordinates are ``nodes_for_root(size)``."""
        return tuple(self._hashes)

    def copy(self) -> Frontier:
        """An independent snapshot; mutating either copy never affects the other."""
        return Frontier(self._size, self._hashes)

    __copy__ = copy

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append a leaf *hash* (32 bytes); return the new nodes as ``(level, index, hash)``.

        The first entry is the leaf itself at level 0; each further entry is a
        subtree that this leaf completed, bottom-up.  The caller hashes entries
        with :func:`leaf_hash` (or uses :meth:`append_data`); taking the hash
        here keeps the node store and the proofs speaking about the same value.
        """
        if not _is_hash(leaf):
            raise ValueError("Frontier.append takes a 32-byte leaf hash (see append_data)")
        if self._size >= MAX_TREE_SIZE:
            raise ValueError("the tree is full (2**64 - 1 leaves)")
        position = self._size
        h = bytes(leaf)
        created = [(0, position, h)]
        level = 0
        # Each trailing one-bit of the old size is a subtree of equal height
        # waiting for a right sibling: merge until the carry stops.
        while position >> level & 1:
            h = node_hash(self._hashes.pop(), h)
            level += 1
            created.append((level, position >> level, h))
        self._hashes.append(h)
        self._size = position + 1
        return created

    def append_data(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Append raw leaf data: ``append(leaf_hash(data))``."""
        return self.append(leaf_hash(data))

    def root(self) -> bytes:
        """MTH of the whole tree; EMPTY_ROOT when nothing has been appended."""
        if not self._hashes:
            return EMPTY_ROOT
        return _fold(self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"
