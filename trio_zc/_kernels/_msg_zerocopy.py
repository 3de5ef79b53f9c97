"""The msg_zerocopy kernel: ``send(MSG_ZEROCOPY)`` with completions from the error queue.

How completions reach us: Linux queues them on each socket's error queue,
and pending errors make the socket report EPOLLERR. One reaper task per
pool waits for all of its sockets at once through a private epoll instance
in which every socket is registered with an *empty* event mask (errors are
always reported) and edge-triggered (so a socket that stays in an error or
hang-up state does not wake the reaper again and again). Trio then waits
for that epoll fd to become readable. This wakes the reaper for
completions only, and leaves the socket's own read and write waits to the
stream, so receiving while sends are in flight works.

Why drain before every wait: EPOLLERR also wakes any task waiting for the
socket to become readable or writable. A task that went back to waiting
with completions still queued would be woken at once, forever (a busy
loop), so the channel drains the error queue itself before each wait
(:meth:`CompletionChannel.before_wait`).

A response's head goes with its body in one ``sendmsg`` of two iovecs
with ``MSG_ZEROCOPY``. Linux reads the head's bytes lazily too: the head and
the lease's first bytes up to a page are copied into a page of the kernel's
:class:`~trio_zc._kernels._heads.HeadArea`, held until the call's
completion (a first fragment of a whole page: see ``_heads.py`` for why), or
when the area is full the call reads the head's immutable ``bytes`` object,
which the channel keeps until then (:mod:`._completion`).

Closing follows :mod:`._closing`: Linux drops the completions of a closed
socket, so the socket stays open until they arrive or a deadline passes,
then the connection is reset with ``connect(AF_UNSPEC)``, which makes Linux
drop the queued data and report those sends while the socket is still
open; whatever even that does not bring back is quarantined.

Linux's own account of MSG_ZEROCOPY (counters, coalesced and wrapping
ranges, the COPIED code, ENOBUFS) is ``Documentation/networking/msg_zerocopy.rst``
in the kernel's source tree.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator
from typing import Final, Protocol

import trio

from .._stats import Counters
from ._base import CompletionListener, Kernel, Transport
from ._closing import settle_all
from ._completion import Ancdata, Call, CompletionChannel
from ._errqueue import MSG_ZEROCOPY, SO_ZEROCOPY
from ._heads import HeadArea
from ._memlock import memlock_problem
from ._socket import SocketTransport, local_peer, not_tcp, socket_of

#: Room for one error-queue record: the 16-byte extended error plus the
#: offender address (28 bytes for IPv6), with cmsg headers and padding.
_ANCBUF: Final = socket.CMSG_SPACE(64)
#: Errors of setsockopt(SO_ZEROCOPY) that mean "not here", not "bug".
_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL})
#: The pool's head area for MSG_ZEROCOPY calls (64 pages): made on first use.
_HEAD_AREA: Final = 256 << 10


class Heads(Protocol):
    """Where an :class:`ErrorQueue` gets the kernel's head area."""

    def head_area(self) -> HeadArea | None:
        """The kernel's head area (made on first use), or None if it cannot have one."""


class ErrorQueue:
    """The MSG_ZEROCOPY side of a socket: zero-copy sends, and completions from its error queue."""

    __slots__ = ("sock", "_heads", "_pending", "_held")

    def __init__(self, sock: socket.socket, heads: Heads) -> None:
        self.sock = sock
        self._heads = heads
        # The head-area pages of the last call, until accepted() ties them
        # to the call; then per call, until its completion.
        self._pending: tuple[int, int] | None = None
        self._held: dict[int, tuple[int, int]] = {}

    def zerocopy_send(self, data: memoryview) -> int:
        return self.sock.send(data, MSG_ZEROCOPY)

    def zerocopy_send_with_head(self, head: memoryview, data: memoryview) -> int:
        # One call, one counter value: the completion that covers it covers
        # the head's bytes too, which stay put until then.
        area = self._heads.head_area()
        taken = None if area is None else area.take(head, data)
        if area is None or taken is None:
            return self.sock.sendmsg((head, data), (), MSG_ZEROCOPY)
        offset, nbytes = taken
        copied = nbytes - len(head)  # of the lease's bytes, now in the area too
        try:
            with area.view(offset, nbytes) as first:
                if copied < len(data):
                    with data[copied:] as rest:
                        sent = self.sock.sendmsg((first, rest), (), MSG_ZEROCOPY)
                else:
                    sent = self.sock.sendmsg((first,), (), MSG_ZEROCOPY)
        except BaseException:
            area.give_back(offset, nbytes)  # no call was made
            raise
        self._pending = taken
        return sent

    def completion_records(self) -> Iterator[tuple[Ancdata, bool]]:
        while True:
            try:
                _, ancdata, flags, _ = self.sock.recvmsg(0, _ANCBUF, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # A socket error (ECONNRESET...) pending on the socket is
                # reported here too; the next send or receive reports it.
                return
            yield ancdata, bool(flags & socket.MSG_CTRUNC)

    def accepted(self, call: Call, counter: int) -> None:
        if self._pending is not None:
            self._held[counter] = self._pending
            self._pending = None

    def releasing(self, calls: list[Call], first: int) -> None:
        if self._held:
            area = self._heads.head_area()
            for k in range(len(calls)):
                taken = self._held.pop((first + k) & 0xFFFFFFFF, None)
                if taken is not None and area is not None:
                    area.give_back(*taken)

    def after_completion(self) -> None:
        pass



def enable_zerocopy(sock: socket.socket) -> str | None:
    """Turn SO_ZEROCOPY on; why zero-copy cannot be used on *sock*, or None."""
    reason = not_tcp(sock)
    if reason is not None:
        return reason
    try:
        if sock.getsockopt(socket.SOL_SOCKET, SO_ZEROCOPY):
            # Someone else turned it on: another stream over a duplicate
            # of this descriptor, or the application's own MSG_ZEROCOPY
            # sends. The completion counter is per socket, not per
            # descriptor: it may not start at 0, and another reader of
            # the error queue may take our completions (or we theirs),
            # which would free memory Linux still reads.
            return (
                "SO_ZEROCOPY was already on for this socket (a duplicate descriptor, or"
                " zero-copy sends of its own): its completion counter is not this stream's"
            )
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return f"Linux refused SO_ZEROCOPY: {exc.strerror}"
        raise
    return None


class MsgZeroCopyChannel(CompletionChannel):
    """One TCP socket with SO_ZEROCOPY, its counter tracker and its error queue."""

    def __init__(
        self,
        kernel: MsgZeroCopyKernel,
        transport: SocketTransport,
        counters: Counters,
        on_completions: CompletionListener,
    ) -> None:
        super().__init__(transport, ErrorQueue(transport.sock, kernel), counters, on_completions)
        self.kernel = kernel
        self.socket = transport

    def close_transport(self) -> None:
        self.kernel.unregister(self)
        self.transport.close()


class MsgZeroCopyKernel(Kernel):
    """``send(MSG_ZEROCOPY)`` on TCP sockets, one completion reaper per pool."""

    name = "msg_zerocopy"

    def __init__(self) -> None:
        #: Why no channel of this kernel can send zero-copy (a locked-memory
        #: limit of zero), or None.
        self.copy_only_reason = memlock_problem()
        self._epoll = select.epoll()
        self._channels: dict[int, MsgZeroCopyChannel] = {}
        self._heads: HeadArea | None = None
        # Whether making the head area failed (then heads go from their bytes).
        self._no_heads = False

    def head_area(self) -> HeadArea | None:
        """The pool's head area for calls with a head (made on first use; None if that failed)."""
        if self._heads is None and not self._no_heads:
            try:
                self._heads = HeadArea(_HEAD_AREA)
            except OSError:
                self._no_heads = True
        return self._heads

    def open_channel(
        self, transport: Transport, counters: Counters, on_completions: CompletionListener
    ) -> MsgZeroCopyChannel:
        sock = socket_of(transport, self.name)
        channel = MsgZeroCopyChannel(self, sock, counters, on_completions)
        channel.copy_only_reason = (
            self.copy_only_reason
            or (local_peer(sock.sock) if self.copy_local_peers else None)
            or enable_zerocopy(sock.sock)
        )
        if channel.copy_only_reason is None:
            # Empty mask: errors only. Edge-triggered: once per new record.
            self._epoll.register(sock.fd, select.EPOLLET)
            self._channels[sock.fd] = channel
        return channel

    def unregister(self, channel: MsgZeroCopyChannel) -> None:
        fd = channel.socket.fd
        if self._channels.get(fd) is channel:
            del self._channels[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):  # the epoll is already closed
                pass

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in self._epoll.poll(0):
                    channel = self._channels.get(fd)
                    if channel is not None:
                        channel.drain()
        finally:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()

    def close(self) -> None:
        self._epoll.close()  # idempotent; run() closes it too when it ends
        if self._heads is not None:
            # Calls still in flight (quarantined) keep their own references to the pages.
            self._heads.close()

    async def abort_in_flight(self) -> None:
        await settle_all([channel.closing for channel in self._channels.values()])
        await trio.lowlevel.checkpoint()
