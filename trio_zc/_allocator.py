"""Which pages of the arena are free: a first-fit allocator with no I/O.

The arena is cut into page-aligned blocks. Free blocks are kept sorted by
offset and merged with their neighbours the moment they are freed, so the
free list never holds two adjacent blocks: once every lease is back, the
whole arena is one block again, and a request that fits the arena is always
served eventually. (Freeing in any order restores the arena; the tests check
this with random orders.)

First fit, not best fit: it keeps long-lived leases near the start and the
large free run at the end, and it is cheap; pools hold tens to thousands of
leases, not millions.
"""

from __future__ import annotations

import bisect


class Allocator:
    """Hands out page-aligned ``(offset, length)`` blocks of a region."""

    __slots__ = ("size", "page_size", "_mask", "_starts", "_lengths", "_free_bytes")

    def __init__(self, size: int, page_size: int) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a positive power of two, not {page_size}")
        if size <= 0 or size % page_size:
            raise ValueError(f"size must be a positive multiple of {page_size}, not {size}")
        self.size = size
        self.page_size = page_size
        self._mask = page_size - 1
        # Parallel sorted lists (by start) of the free blocks.
        self._starts: list[int] = [0]
        self._lengths: list[int] = [size]
        self._free_bytes = size

    def round_up(self, nbytes: int) -> int:
        """The block length that a request of *nbytes* occupies."""
        return (nbytes + self._mask) & ~self._mask

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def largest_free_block(self) -> int:
        return max(self._lengths, default=0)

    @property
    def free_blocks(self) -> int:
        return len(self._starts)

    def allocate(self, nbytes: int) -> int | None:
        """Reserve a block for *nbytes*; its offset, or None if no block fits."""
        length = (nbytes + self._mask) & ~self._mask  # round_up(), inlined: once per image
        if length <= 0 or length > self._free_bytes:
            return None
        for i, free_len in enumerate(self._lengths):
            if free_len >= length:
                start = self._starts[i]
                if free_len == length:
                    del self._starts[i]
                    del self._lengths[i]
                else:
                    self._starts[i] = start + length
                    self._lengths[i] = free_len - length
                self._free_bytes -= length
                return start
        return None

    def free(self, offset: int, nbytes: int) -> None:
        """Return the block that :meth:`allocate` gave for *nbytes* at *offset*."""
        length = (nbytes + self._mask) & ~self._mask  # round_up(), inlined: once per image
        end = offset + length
        if offset < 0 or offset % self.page_size or length <= 0 or end > self.size:
            raise ValueError(f"block [{offset}, {end}) is not a block of this allocator")
        starts, lengths = self._starts, self._lengths
        i = bisect.bisect_left(starts, offset)
        # Refuse double frees and overlaps: they would hand the same memory
        # to two leases.
        prev_end = starts[i - 1] + lengths[i - 1] if i else -1
        if prev_end > offset:
            raise ValueError(f"block [{offset}, {end}) is already free")
        has_next = i < len(starts)
        if has_next and starts[i] < end:
            raise ValueError(f"block [{offset}, {end}) is already free")
        merge_prev = prev_end == offset
        merge_next = has_next and starts[i] == end
        if merge_prev and merge_next:
            lengths[i - 1] += length + lengths[i]
            del starts[i]
            del lengths[i]
        elif merge_prev:
            lengths[i - 1] += length
        elif merge_next:
            starts[i] = offset
            lengths[i] += length
        else:
            starts.insert(i, offset)
            lengths.insert(i, length)
        self._free_bytes += length

    def free_list(self) -> list[tuple[int, int]]:
        """The free blocks as ``(offset, length)``, sorted; for tests and statistics."""
        return list(zip(self._starts, self._lengths))
