"""RFC 6962 / RFC 9162 Merkle tree hashing over ledger entries: roots, inclusion proofs and consistency
proofs, and their verification. Pure functions of bytes; the ledger decides what the leaves are.

leaf = SHA-256(0x00 ‖ entry bytes), node = SHA-256(0x01 ‖ left ‖ right); a tree of n leaves splits at the
largest power of two smaller than n. The 0x00/0x01 prefixes stop a leaf from posing as an inner node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "MerkleLevels",
    "consistency_path",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency_path",
    "verify_inclusion_path",
]


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH over already leaf-hashed entries; the empty tree's root is SHA-256 of nothing."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root_hash(leaves[:k]), root_hash(leaves[k:]))


class MerkleLevels:
    """An append-only tree kept level by level (level h holds the roots of its complete runs of 2**h leaves),
    so the root of any prefix costs O(log n) hashes instead of n: a ledger signs a head every few hundred
    entries, and recomputing the whole tree for each grows quadratically over a year of entries."""

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    def __len__(self) -> int:
        return len(self.levels[0])

    def leaves(self, size: int) -> list[bytes]:
        return self.levels[0][:size]

    def extend(self, leaves: Iterable[bytes]) -> None:
        levels = self.levels
        for leaf in leaves:
            levels[0].append(leaf)
            h = 0
            while len(levels[h]) % 2 == 0:  # a run of 2**(h+1) leaves just completed
                if h + 1 == len(levels):
                    levels.append([])
                levels[h + 1].append(node_hash(levels[h][-2], levels[h][-1]))
                h += 1

    def truncate(self, size: int) -> None:
        """Forget every leaf after the first ``size`` (a rolled-back append)."""
        for h, level in enumerate(self.levels):
            del level[size >> h:]

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves: the complete runs of size's binary digits, folded from the right."""
        if not 0 <= size <= len(self):
            raise ValueError(f"size={size} is outside 0..{len(self)}")
        if size == 0:
            return hashlib.sha256(b"").digest()
        runs, start = [], 0
        for h in reversed(range(size.bit_length())):
            if size >> h & 1:
                runs.append(self.levels[h][start >> h])
                start += 1 << h
        root = runs[-1]
        for run in reversed(runs[:-1]):
            root = node_hash(run, root)
        return root


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]): the sibling hashes from leaf ``index`` up to the root."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} is outside a tree of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_path(index, leaves[:k]) + [root_hash(leaves[k:])]
    return inclusion_path(index - k, leaves[k:]) + [root_hash(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [root_hash(leaves)]
    k = _split(n)
    if m <= k:
        return _subproof(m, leaves[:k], whole) + [root_hash(leaves[k:])]
    return _subproof(m - k, leaves[k:], False) + [root_hash(leaves[:k])]


def consistency_path(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 PROOF(m, D[n]): shows the first ``old_size`` leaves are a prefix of ``leaves``."""
    if not 0 <= old_size <= len(leaves):
        raise ValueError(f"old_size={old_size} is outside 0..{len(leaves)}")
    if old_size in (0, len(leaves)):
        return []
    return _subproof(old_size, leaves, True)


def verify_inclusion_path(*, leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` lead from ``leaf`` (a leaf hash) at ``leaf_index`` to ``root``?"""
    if not 0 <= leaf_index < tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency_path(*, old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                            path: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of ``old_size`` with ``old_root`` a prefix of the one with ``new_root``?"""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path
    if not path:
        return False
    proof = list(path)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is itself a node of the new tree
        proof.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
