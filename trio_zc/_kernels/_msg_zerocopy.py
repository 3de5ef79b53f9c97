"""The msg_zerocopy kernel: ``send(MSG_ZEROCOPY)`` with completions from the error queue.

How completions reach us: the kernel queues them on each socket's error
queue, and pending errors make the socket report EPOLLERR. One reaper task
per pool waits for all of its sockets at once through a private epoll
instance in which every socket is registered with an *empty* event mask
(errors are always reported) and edge-triggered (so a socket that stays in
an error or hang-up state does not wake the reaper again and again). Trio
then waits for that epoll fd to become readable. This wakes the reaper for
completions only, and leaves the socket's own read and write waits to the
stream, so receiving while sends are in flight works.

Why drain before every wait: EPOLLERR also wakes any task waiting for the
socket to become readable or writable. A task that went back to waiting
with completions still queued would be woken at once, forever (a busy
loop), so the channel drains the error queue itself before each wait.

Closing: once a socket is closed the kernel drops its completions, and
nobody would ever say the memory is free. So ``aclose`` keeps the socket
open until the completions arrive or a deadline passes; then it aborts the
connection with ``connect(AF_UNSPEC)``, which makes the kernel drop the
queued data and report those sends complete while the socket is still
open; whatever even that does not bring back is quarantined.

The kernel's rules are in Linux's ``Documentation/networking/msg_zerocopy.rst``;
``_completions.py`` says how the counter ranges are read, and which
mistakes of other projects that avoids.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator
from typing import Final

import trio

from ._completion_channel import Ancdata, CompletionChannel, settle_all
from ._errqueue import MSG_ZEROCOPY, SO_ZEROCOPY
from ._base import Channel, Kernel, SocketChannel, local_peer
from ._memlock import memlock_problem
from .._stats import Counters

#: Room for one error-queue record: the 16-byte extended error plus the
#: offender address (28 bytes for IPv6), with cmsg headers and padding.
_ANCBUF: Final = socket.CMSG_SPACE(64)
#: Errors of setsockopt(SO_ZEROCOPY) that mean "not here", not "bug".
_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL})


class ZeroCopyChannel(CompletionChannel, SocketChannel):
    """One TCP socket with SO_ZEROCOPY, its counter tracker and its error queue."""

    def __init__(self, kernel: MsgZeroCopyKernel, sock: socket.socket, counters: Counters) -> None:
        SocketChannel.__init__(self, sock, counters)
        self.init_tracking()
        self.kernel = kernel
        self.unavailable_reason = (
            kernel.unavailable_reason
            or (local_peer(sock) if kernel.copy_local_peers else None)
            or self._enable(sock)
        )

    @staticmethod
    def _enable(sock: socket.socket) -> str | None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return f"not a TCP socket (family {sock.family.name})"
        try:
            if sock.getsockopt(socket.SOL_SOCKET, SO_ZEROCOPY):
                # Someone else turned it on: another stream over a duplicate
                # of this descriptor, or the application's own MSG_ZEROCOPY
                # sends. The completion counter is per socket, not per
                # descriptor: it may not start at 0, and another reader of
                # the error queue may take our completions (or we theirs),
                # which would free memory the kernel still reads.
                return (
                    "SO_ZEROCOPY was already on for this socket (a duplicate descriptor, or"
                    " zero-copy sends of its own): its completion counter is not this stream's"
                )
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                return f"the kernel refused SO_ZEROCOPY: {exc.strerror}"
            raise
        return None

    # -- completions ------------------------------------------------------------

    def before_wait(self) -> None:
        if self.unavailable_reason is None:
            # Only a channel that sends zero-copy reads the error queue: on a
            # socket shared with another stream the records are that one's.
            self.drain()

    def read_records(self) -> Iterator[tuple[Ancdata, bool]]:
        while True:
            try:
                _, ancdata, flags, _ = self.sock.recvmsg(
                    0, _ANCBUF, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # A socket error (ECONNRESET...) pending on the socket is
                # reported here too; the next send or receive reports it.
                return
            yield ancdata, bool(flags & socket.MSG_CTRUNC)

    # -- sending ----------------------------------------------------------------

    def zerocopy_call(self, data: memoryview) -> int:
        return self.sock.send(data, MSG_ZEROCOPY)

    # -- closing ----------------------------------------------------------------

    def abort(self) -> None:
        SocketChannel.abort(self)  # only while the socket is open (see there)

    def close_transport(self) -> None:
        self.kernel.unregister(self)
        self.close_socket()


class MsgZeroCopyKernel(Kernel):
    """``send(MSG_ZEROCOPY)`` on TCP sockets, one completion reaper per pool."""

    name = "msg_zerocopy"

    def __init__(self) -> None:
        self.unavailable_reason = memlock_problem()
        self._epoll = select.epoll()
        self._channels: dict[int, ZeroCopyChannel] = {}

    def open_channel(self, sock: socket.socket, counters: Counters) -> Channel:
        channel = ZeroCopyChannel(self, sock, counters)
        if channel.unavailable_reason is None:
            # Empty mask: errors only. Edge-triggered: once per new record.
            self._epoll.register(channel.fd, select.EPOLLET)
            self._channels[channel.fd] = channel
        return channel

    def unregister(self, channel: ZeroCopyChannel) -> None:
        if self._channels.get(channel.fd) is channel:
            del self._channels[channel.fd]
            try:
                self._epoll.unregister(channel.fd)
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

    async def abort_in_flight(self) -> None:
        await settle_all(list(self._channels.values()))
        await trio.lowlevel.checkpoint()
