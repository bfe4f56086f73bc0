"""Which shard owns an image, and what a new shard count moves.

Pure: no I/O. An image belongs to shard
``jump_hash(blake2b_64(canonical_name), shards)``. Both halves are fixed
algorithms over the name's UTF-8 bytes, so every process, replica and Python
version agrees; Python's ``hash()`` is salted per process and must never be
used here. Changing the count moves only the images the added or removed
shards hold (:func:`movement`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from watcher.references import ImageName, canonical_name

MASK64 = (1 << 64) - 1
# Lamping & Veach's 64-bit linear congruential multiplier.
JUMP_MULTIPLIER = 2862933555777941757
# The published code takes an int32 bucket count.
MAX_BUCKETS = (1 << 31) - 1


def blake2b_64(name: str) -> int:
    """The first 8 bytes of BLAKE2b (digest size 8) of ``name`` in UTF-8, as a big-endian int."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach, 2014), exactly as the paper's C++.

    ``int64 b = -1, j = 0; while (j < n) { b = j; key = key * M + 1;
    j = (b + 1) * (double(1LL << 31) / double((key >> 33) + 1)); } return b;``

    Python's float is the same IEEE double as C's, and ``int()`` truncates
    toward zero as the C conversion does, so results match other
    implementations bit for bit; the key wraps at 64 bits as ``uint64_t`` does.
    """
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be between 1 and {MAX_BUCKETS}, not {buckets}")
    if not 0 <= key <= MASK64:
        raise ValueError(f"key must be an unsigned 64-bit integer, not {key}")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * JUMP_MULTIPLIER + 1) & MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(name: str | ImageName, shards: int) -> int:
    """The shard that owns an image.

    A string is canonicalised first, so ``nginx`` and
    ``docker.io/library/nginx`` are one image in one shard.
    """
    canonical = name if isinstance(name, ImageName) else canonical_name(name)
    return jump_hash(blake2b_64(str(canonical)), shards)


def assignment(images: Iterable[ImageName], shards: int) -> dict[ImageName, int]:
    """Image -> shard, in image-name order."""
    return {image: shard_of(image, shards) for image in sorted(set(images))}


@dataclass(frozen=True)
class Move:
    image: ImageName
    old: int
    new: int


@dataclass(frozen=True)
class Movement:
    """What changing the shard count from ``old_shards`` to ``new_shards`` moves."""

    old_shards: int
    new_shards: int
    images: int
    moves: tuple[Move, ...]

    @property
    def share(self) -> float:
        """Share of images that change shard."""
        return len(self.moves) / self.images if self.images else 0.0

    @property
    def minimum_share(self) -> float:
        """The share any scheme must move: the images the added (or removed) shards hold."""
        old, new = self.old_shards, self.new_shards
        return abs(new - old) / max(old, new)


def movement(images: Iterable[ImageName], old_shards: int, new_shards: int) -> Movement:
    names = sorted(set(images))
    moves = []
    for image in names:
        key = blake2b_64(str(image))
        old, new = jump_hash(key, old_shards), jump_hash(key, new_shards)
        if old != new:
            moves.append(Move(image, old, new))
    return Movement(old_shards, new_shards, len(names), tuple(moves))


