from __future__ import annotations

import os
from collections.abc import Callable

import trio_zc
from trio_zc._lease import _LeaseRecord


def slot_of(lease: trio_zc.WritableLease | trio_zc.SealedLease) -> _LeaseRecord:
    return lease._slot


def start_send(lease: trio_zc.SealedLease) -> Callable[[], None]:
    """Pretend a kernel took *lease*'s memory; returns the completion to call.

    For pool tests that need a send in flight and no stream: no socket, and
    no kernel (not even the mock) deciding when it completes.
    """
    slot = slot_of(lease)
    slot.begin_send()
    return slot.end_send


def writable_mappings_of(pool: trio_zc.BufferPool, offset: int, length: int) -> list[str]:
    """Lines of /proc/self/maps that map [offset, offset+length) of *pool*'s arena writably."""
    inode = os.fstat(pool._arena.fd).st_ino
    hits = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 6 or int(fields[4]) != inode:
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            map_off = int(fields[2], 16)
            overlaps = map_off < offset + length and offset < map_off + (hi - lo)
            if overlaps and "w" in fields[1]:
                hits.append(line.strip())
    return hits
