"""The sendfile kernel: safe without completion notifications.

sendfile from the pool's memfd puts references to the arena's pages into the
socket, with no copy from user space -- and with no word from the kernel
about when it is done with them. Writing those pages again too early sends
the new bytes (``tests/kernels/test_sendfile.py`` reproduces this for real).

So this kernel never waits for the kernel: once a lease that was sent this
way returns to the pool, its range is punched out of the memfd
(``fallocate(PUNCH_HOLE)``). The socket keeps the old pages for as long as
it needs them; the next writer faults in fresh zero pages. That works on any
Linux since 3.5, loopback included -- but the fresh pages cost a page fault
and a kernel-zeroed page per 4 KiB for the next writer (``benchmarks/stale_bytes.py``
measures punching against zeroing: about ten times the cost of clearing
mapped pages, see docs/lifecycle.rst).

A punch must cover whole folios (``_thp.py``): the pool hands out memory in
units of the largest shared-memory folio the THP settings allow (one page
with the default settings).

Adopted buffers are not in the memfd; they are sent by copying.

A head sent with a lease (a response's head) goes first with ``MSG_MORE``,
which holds it back in the socket as ``TCP_CORK`` would until the sendfile
that follows fills and pushes the packets: two system calls, one packet
train. (sendfile takes no iovec, so one call cannot carry both.)
"""

from __future__ import annotations

import trio

from .._arena import PAGE_SIZE, Arena
from .._stats import Counters
from ._base import Channel, CompletionListener, Kernel, SendableLease, Transport, broken
from ._socket import SocketTransport, socket_of
from ._thp import shmem_folios


class SendfileChannel(Channel):
    """A stream socket that sends pool leases with sendfile from the arena."""

    def __init__(
        self, socket: SocketTransport, counters: Counters, on_completions: CompletionListener, arena: Arena
    ) -> None:
        super().__init__(socket, counters, on_completions)
        self.socket = socket
        self.arena = arena

    def accepts(self, lease: SendableLease) -> bool:
        return lease.adopted is None

    async def send_zerocopy(
        self, data: memoryview, lease: SendableLease, start: int, head: memoryview | None = None
    ) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        head_len = 0
        if head is not None:
            head_len = len(head)
            waited = await self._send_head(head)
        arena = self.arena
        offset = lease.offset + start
        total = len(data)
        sent = 0
        # From the first byte on, the socket may hold the pages: they must be
        # punched, not reused, when the lease comes back. Nothing else to
        # wait for: the send holds the lease only while it runs.
        lease.hold_pages()
        try:
            while sent < total:
                # After a wait, another task may have closed the stream, and
                # the descriptor number may be another connection's by now.
                self.socket.check_open()
                if arena.closed:
                    # Likewise the pool's block may have ended (its drain
                    # deadline passed while this send waited for the peer):
                    # the memfd is closed, and its number may name another
                    # file by now -- another pool's memory, say.
                    raise trio.ClosedResourceError(
                        "the stream's pool closed while this send waited; the rest of the lease"
                        " was not sent"
                    )
                try:
                    n = self.socket.sendfile(arena.fd, offset + sent, total - sent)
                except BlockingIOError:
                    await self.wait_writable()
                    waited = True
                    continue
                except OSError as exc:
                    broken(exc)
                if n == 0:  # pragma: no cover - the arena is never shorter than a lease
                    raise trio.BrokenResourceError("sendfile sent nothing")
                sent += n
        finally:
            self.counters.sent_by_reference(sent)
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return head_len + sent

    async def _send_head(self, head: memoryview) -> bool:
        """Copy *head* into the socket with MSG_MORE (the lease's bytes follow); whether it waited."""
        sock = self.socket
        sent = 0
        waited = False
        while sent < len(head):
            sock.check_open()  # after a wait, as for the lease's bytes below
            try:
                with head[sent:] as rest:
                    n = sock.send_more(rest)
            except BlockingIOError:
                await self.wait_writable()
                waited = True
                continue
            except OSError as exc:
                broken(exc)
            self.counters.copied(n)
            sent += n
        return waited


class SendfileKernel(Kernel):
    """sendfile from the arena, with page replacement instead of completions."""

    name = "sendfile"

    def __init__(self) -> None:
        folios = shmem_folios()
        self._granule = folios.largest
        if folios.largest > PAGE_SIZE:
            self.note = (
                f"{folios.reason}: leases are aligned to {folios.largest >> 10} KiB so that"
                " replacing a sent lease's pages never splits a folio"
            )

    def allocation_granule(self) -> int:
        return self._granule

    def attach(self, arena: Arena) -> None:
        self._arena = arena

    def open_channel(
        self, transport: Transport, counters: Counters, on_completions: CompletionListener
    ) -> Channel:
        return SendfileChannel(socket_of(transport, self.name), counters, on_completions, self._arena)
