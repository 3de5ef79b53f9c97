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

See ``shared/reference/zerocopy-facts.md`` (sections 1 and 5) for the
kernel's rules and the mistakes this avoids.
"""

from __future__ import annotations

import ctypes
import errno
import resource
import select
import socket
import struct
import warnings
from typing import TYPE_CHECKING, Final

import trio

from ._completions import CompletionRangeError, CompletionTracker
from ._errors import QuarantineWarning
from ._errqueue import (
    MSG_ZEROCOPY,
    SO_ZEROCOPY,
    MalformedRecordError,
    QueuedSocketError,
    ZeroCopyCompletion,
    parse_ancdata,
)
from ._kernel import Channel, Kernel, SocketChannel, broken
from ._stats import Counters

if TYPE_CHECKING:
    from ._lease import _Slot

#: Room for one error-queue record: the 16-byte extended error plus the
#: offender address (28 bytes for IPv6), with cmsg headers and padding.
_ANCBUF: Final = socket.CMSG_SPACE(64)
#: After aborting a connection, how long to wait for the completions that
#: the abort makes the kernel send (they normally arrive at once).
_ABORT_GRACE: Final = 1.0
#: Errors of setsockopt(SO_ZEROCOPY) that mean "not here", not "bug".
_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL})
_CAP_IPC_LOCK: Final = 14

_libc = ctypes.CDLL(None, use_errno=True)
_connect = _libc.connect
_connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_connect.restype = ctypes.c_int
_AF_UNSPEC_ADDR: Final = struct.pack("=H14x", socket.AF_UNSPEC)


def _has_cap_ipc_lock() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_IPC_LOCK & 1)
    except OSError:  # pragma: no cover - /proc is always there on Linux
        pass
    return False


def memlock_problem() -> str | None:
    """Why this process cannot pin pages for zero-copy at all, or None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == 0 and not _has_cap_ipc_lock():
        return "RLIMIT_MEMLOCK is 0 and the process lacks CAP_IPC_LOCK"
    return None


class ZeroCopyChannel(SocketChannel):
    """One TCP socket with SO_ZEROCOPY, its counter tracker and its error queue."""

    def __init__(self, kernel: MsgZeroCopyKernel, sock: socket.socket, counters: Counters) -> None:
        super().__init__(sock, counters)
        self.kernel = kernel
        self.tracker: CompletionTracker[tuple[_Slot, int]] = CompletionTracker()
        self._drained: trio.Event | None = None
        #: An ordinary socket error that arrived on the error queue.
        self.queued_error: QueuedSocketError | None = None
        self.unavailable = kernel.unavailable or self._enable(sock)

    @staticmethod
    def _enable(sock: socket.socket) -> str | None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return f"not a TCP socket (family {sock.family.name})"
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                return f"the kernel refused SO_ZEROCOPY: {exc.strerror}"
            raise
        return None

    @property
    def sends_in_flight(self) -> int:
        return self.tracker.outstanding

    # -- completions ----------------------------------------------------------

    def before_wait(self) -> None:
        self.drain()

    def drain(self) -> None:
        """Read every record on the error queue and act on it. Never blocks."""
        if self.closed:
            return
        while True:
            try:
                _, ancdata, flags, _ = self.sock.recvmsg(
                    0, _ANCBUF, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # A socket error (ECONNRESET...) pending on the socket is
                # reported here too; the next send or receive reports it.
                break
            if flags & socket.MSG_CTRUNC:
                self.counters.count("malformed_records")
                continue
            try:
                records = parse_ancdata(ancdata)
            except MalformedRecordError:
                self.counters.count("malformed_records")
                continue
            for record in records:
                if isinstance(record, ZeroCopyCompletion):
                    self._complete(record)
                else:
                    self.queued_error = record
        if self._drained is not None and not self.tracker.outstanding:
            self._drained.set()

    def _complete(self, record: ZeroCopyCompletion) -> None:
        try:
            items = self.tracker.complete(record.lo, record.hi, copied=record.copied)
        except CompletionRangeError:
            # Garbage must never release memory; count it and go on.
            self.counters.count("malformed_records")
            return
        nbytes = 0
        for slot, n in items:
            nbytes += n
            slot.end_send()
        self.counters.count("completions", len(items))
        self.counters.count("bytes_kernel_copied" if record.copied else "bytes_zerocopy", nbytes)
        self.on_completions(len(items), record.copied)

    async def _wait_drained(self) -> None:
        while self.tracker.outstanding:
            self._drained = trio.Event()
            self.drain()
            if self.tracker.outstanding:
                await self._drained.wait()
        self._drained = None

    # -- sending --------------------------------------------------------------

    async def send_zerocopy(self, data: memoryview, slot: _Slot) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        sent = 0
        total = len(data)
        waited = retried = False
        while sent < total:
            try:
                with data[sent:] as rest:
                    n = self.sock.send(rest, MSG_ZEROCOPY)
            except BlockingIOError:
                await self.wait_writable()
                waited = True
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    broken(exc)
                self.counters.count("enobufs")
                # Reading completions frees the option memory that ran out.
                self.drain()
                if retried:
                    break
                retried = True
                continue
            # Each successful call took the next counter value.
            self.tracker.record((slot, n))
            slot.begin_send()
            self.counters.count("zerocopy_calls")
            sent += n
            retried = False
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return sent

    # -- closing --------------------------------------------------------------

    def abort(self) -> None:
        """Reset the connection but keep the socket, so completions still arrive."""
        if _connect(self.fd, _AF_UNSPEC_ADDR, len(_AF_UNSPEC_ADDR)) != 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOTCONN, errno.EBADF):  # pragma: no cover - defensive
                raise OSError(err, f"aborting the connection failed: {errno.errorcode.get(err)}")

    async def settle_or_quarantine(self) -> None:
        """Abort, collect what the abort completes, quarantine the rest. Shielded."""
        if not self.tracker.outstanding or self.closed:
            return
        self.abort()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_ABORT_GRACE):
                await self._wait_drained()
        self.quarantine_outstanding()

    def quarantine_outstanding(self) -> None:
        items = self.tracker.items_outstanding()
        if not items:
            return
        for slot, _ in items:
            slot.quarantine_send()
        self.counters.count("quarantined_sends", len(items))
        self.tracker = CompletionTracker(self.tracker.next_counter)
        warnings.warn(
            QuarantineWarning(
                f"a socket closed with {len(items)} zero-copy send(s) the kernel never"
                " reported done; their memory is quarantined: never reused or unmapped"
            ),
            stacklevel=2,
        )

    async def aclose(self, drain_timeout: float) -> None:
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if self.tracker.outstanding:
                with trio.move_on_after(drain_timeout):
                    await self._wait_drained()
        finally:
            # Also when cancelled: force the rest, then close.
            try:
                await self.settle_or_quarantine()
            finally:
                self.kernel.unregister(self)
                self.close_socket()
        await trio.lowlevel.checkpoint()


class MsgZeroCopyKernel(Kernel):
    """``send(MSG_ZEROCOPY)`` on TCP sockets, one completion reaper per pool."""

    name = "msg_zerocopy"

    def __init__(self) -> None:
        self.unavailable = memlock_problem()
        self._epoll = select.epoll()
        self._channels: dict[int, ZeroCopyChannel] = {}

    def open_channel(self, sock: socket.socket, counters: Counters) -> Channel:
        channel = ZeroCopyChannel(self, sock, counters)
        if channel.unavailable is None:
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

    async def abort_in_flight(self) -> None:
        for channel in list(self._channels.values()):
            await channel.settle_or_quarantine()
        await trio.lowlevel.checkpoint()
