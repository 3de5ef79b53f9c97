"""Where zero-copy calls put a head: a private area of pages, and the first-page rule.

Rules
=====

1. A zero-copy call that carries a head (MSG_ZEROCOPY's ``sendmsg``,
   io_uring's SENDMSG_ZC) starts with a whole page when it has that many
   bytes: the head, then the lease's first bytes up to a page
   (:func:`prefix_length`), are copied into pages of a :class:`HeadArea`,
   and the call sends those, then the rest of the lease from its own memory.
   The bytes on the wire are the same; only where Linux reads them from
   changes.
2. Pages of the area belong to the call from :meth:`HeadArea.take` until the
   completion that covers it (:meth:`HeadArea.give_back`); a call never
   reported done keeps them for good. The area is the kernel's own memory,
   which no lease and no application can write.
3. No room in the area (or a head larger than it): :meth:`HeadArea.take`
   says None, and the caller sends the head from its immutable ``bytes``
   object instead.

Theory of operation
===================

Why rule 1: on loopback, where Linux hands the sender's packets to the
receiving socket as they are, a zero-copy call whose first fragment is
small -- a 300-byte head in front of a lease's pages, or a lease sent from
just below a page's end -- was dropped again and again by a receiver
whose receive buffer is small (4 KiB set before connecting) and
retransmitted with exponential backoff (``TcpExtRcvPruned``,
``TCPTimeouts``): a 1 MiB send had not arrived after 8 seconds, and a 4 MiB
HTTP response ran into the server's send timeout, where the same bytes with
the head copied by a separate ``send`` took 0.3 s. A first fragment of 2 KiB
or more did not stall; with a whole page first, no head size from 1 byte to
64 KiB and no lease size stalled (Linux 6.18). Copying up to a page of the
lease costs a ``memcpy`` of 4 KiB per response.

The area is a memfd, so that io_uring can register its pages in front of
each registered chunk of the pool (see ``_io_uring.py``); MSG_ZEROCOPY
simply sends from this process's mapping of it.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

#: The unit of the area, and the size of a zero-copy call's first fragment.
PAGE: Final = mmap.PAGESIZE


def prefix_length(head_len: int, data_len: int) -> int:
    """Bytes a call copies into the area: the head, then the lease's bytes up to a page in all."""
    return head_len + min(data_len, max(0, PAGE - head_len))


class HeadArea:
    """Private pages for the heads of zero-copy calls in flight (rules 2 and 3)."""

    def __init__(self, size: int) -> None:
        if size < PAGE or size % PAGE:
            raise ValueError(f"a head area is a positive number of pages, not {size} bytes")
        self.size = size
        self.fd = os.memfd_create("trio_zc-heads", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(self.fd)
            raise
        # One byte per page, 1 while a call's head is in it.
        self._taken = bytearray(size // PAGE)
        self.closed = False

    def take(self, head: memoryview, data: memoryview) -> tuple[int, int] | None:
        """Copy *head* and the first bytes of *data* into free pages (rule 1).

        Returns where they start in the area and how many bytes were copied
        (:func:`prefix_length`), or None when there is no room (rule 3).
        """
        if self.closed:
            return None
        nbytes = prefix_length(len(head), len(data))
        count = -(-nbytes // PAGE)
        first = self._taken.find(bytes(count))
        if first < 0:
            return None
        self._taken[first : first + count] = b"\x01" * count
        offset = first * PAGE
        head_end = offset + len(head)
        self.map[offset:head_end] = head
        if nbytes > len(head):
            with data[: nbytes - len(head)] as fill:
                self.map[head_end : offset + nbytes] = fill
        return offset, nbytes

    def view(self, offset: int, nbytes: int) -> memoryview:
        """The area's bytes ``[offset, offset + nbytes)``, to send from (release it after the call)."""
        with memoryview(self.map) as whole:
            return whole[offset : offset + nbytes]

    def give_back(self, offset: int, nbytes: int) -> None:
        """The call that sent ``[offset, offset + nbytes)`` is done with it."""
        first = offset // PAGE
        count = -(-nbytes // PAGE)
        self._taken[first : first + count] = bytes(count)

    @property
    def pages_taken(self) -> int:
        """Pages holding the heads of calls in flight."""
        return self._taken.count(1)

    def close(self) -> None:
        """Unmap and close. Calls still in flight keep their own references to the pages."""
        if not self.closed:
            self.closed = True
            self.map.close()
            os.close(self.fd)
