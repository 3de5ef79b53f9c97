"""The io_uring kernel: ``IORING_OP_SEND_ZC`` from registered buffers.

How it fits Trio: one ring per pool. Streams prepare submission entries and
ask for a submit; a submitter task hands everything prepared since its last
turn to the kernel in one ``io_uring_enter`` (so sends that are ready
together are batched). A reaper task waits for the ring fd to become
readable (``trio.lowlevel.wait_readable``) and routes each completion to its
send through :class:`~trio_zc._uring_tracker.SendZcTracker`.

A send has two completions. The *result* (bytes sent, or ``-errno``)
resumes the stream's task; the *notification* (``F_NOTIF``), which follows
when the result had ``F_MORE``, says the kernel is done with the memory and
releases the lease. With ``IORING_SEND_ZC_REPORT_USAGE`` the notification
also says whether the data was copied after all (always, on loopback), which
feeds the stream's policy exactly as MSG_ZEROCOPY's COPIED code does.

The pool's arena is registered with the ring as fixed buffers (at most
1 GiB each), so the kernel does not pin pages per send; sends from it use
``IORING_RECVSEND_FIXED_BUF``. Adopted buffers go as ordinary SEND_ZC.

Closing, cancellation and draining follow the msg_zerocopy kernel's
protocol (:class:`~trio_zc._completion_channel.DrainingChannel`): a
cancelled send's entry is already the kernel's, so its lease stays held
until its notification; closing waits for notifications, then resets the
connection and quarantines what never comes.

Whether io_uring is usable at all is found by :func:`~trio_zc._uring.probe`
when the pool opens; see ``_choice.py`` for the fallbacks.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ._address import buffer_address
from ._completion_channel import DrainingChannel
from ._kernel import Channel, Kernel, SocketChannel, abort_connection, broken, local_peer
from ._stats import Counters
from ._uring import Probe, Ring, SubmissionQueueFull
from ._uring_tracker import SendReleased, SendResult, SendZcTracker, UnexpectedCqeError

if TYPE_CHECKING:
    from ._arena import Arena
    from ._lease import _Slot

#: The largest registered buffer the kernel accepts.
_MAX_FIXED_BUFFER: Final = 1 << 30
#: Ring size: submission entries (completions get twice as many).
_RING_ENTRIES: Final = 256
_MSG_WAITALL: Final = socket.MSG_WAITALL


@attrs.define(eq=False)
class _Call:
    """One SEND_ZC request as the kernel object tracks it."""

    channel: IoUringChannel
    slot: _Slot
    nbytes: int
    #: The result CQE's res, once it came.
    res: int | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    #: Its socket went away first: the notification, if it ever comes, changes nothing.
    quarantined: bool = False


class IoUringChannel(DrainingChannel, SocketChannel):
    """A TCP socket whose zero-copy sends go through the pool's ring."""

    def __init__(self, kernel: IoUringKernel, sock: socket.socket, counters: Counters) -> None:
        SocketChannel.__init__(self, sock, counters)
        self.kernel = kernel
        self.calls: set[_Call] = set()
        self._drained: trio.Event | None = None
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            self.unavailable = f"not a TCP socket (family {sock.family.name})"
        elif kernel.copy_local_peers:
            self.unavailable = local_peer(sock)

    @property
    def sends_in_flight(self) -> int:
        return len(self.calls)

    def _address(self, slot: _Slot, start: int) -> tuple[int, int | None]:
        """Where the lease's bytes from *start* are, and the fixed buffer holding them."""
        if slot.adopted is not None:
            return buffer_address(slot.adopted) + start, None
        offset = slot.offset + start
        index = offset // _MAX_FIXED_BUFFER if self.kernel.fixed else None
        return self.kernel.arena_address + offset, index

    async def send_zerocopy(self, data: memoryview, slot: _Slot, start: int) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.pass_barrier()
        total = len(data)
        sent = 0
        retried = False
        while sent < total:
            addr, index = self._address(slot, start + sent)
            length = total - sent
            if index is not None:
                # A request must stay within one registered buffer.
                length = min(length, (index + 1) * _MAX_FIXED_BUFFER - (addr - self.kernel.arena_address))
            call = _Call(self, slot, length)
            self.kernel.submit_send(call, addr, index)
            self.calls.add(call)
            slot.begin_send()
            self.counters.zerocopy_call(length)
            # The entry is the kernel's now: if this wait is cancelled, the
            # send goes on, and its notification still releases the lease.
            try:
                await call.done.wait()
            except trio.Cancelled:
                # The kernel still sends it: nothing else may be sent until
                # it is done, or the bytes would interleave.
                self.send_barrier = call.done
                raise
            res = call.res
            assert res is not None
            if res >= 0:
                sent += res
                retried = False
                continue
            err = -res
            if err == errno.EAGAIN:
                await self.wait_writable()
            elif err == errno.ENOBUFS:
                self.counters.count("enobufs")
                if retried:
                    break
                retried = True
            else:
                broken(OSError(err, errno.errorcode.get(err, str(err))))
        return sent

    def released(self, call: _Call, copied: bool) -> None:
        """The kernel is done with *call*'s memory."""
        self.calls.discard(call)
        call.slot.end_send()
        # The bytes the kernel took (the result came first), not the bytes
        # asked for: a short or failed send (a reset) moved fewer, or none.
        taken = max(call.res or 0, 0)
        self.counters.completed(1, call.nbytes, taken, copied)
        self.on_completions(1, copied)
        if self._drained is not None and not self.calls:
            self._drained.set()

    async def wait_drained(self) -> None:
        while self.calls:
            self._drained = trio.Event()
            await self._drained.wait()
        self._drained = None

    def abort(self) -> None:
        abort_connection(self.fd)

    def forget_outstanding(self) -> int:
        calls, self.calls = self.calls, set()
        for call in calls:
            call.quarantined = True
            call.slot.quarantine_send()
            self.counters.count("bytes_in_flight", -call.nbytes)
        return len(calls)

    def close_transport(self) -> None:
        self.close_socket()


class IoUringKernel(Kernel):
    """SEND_ZC on one ring per pool, from the arena registered as fixed buffers."""

    name = "io_uring"

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.ring = Ring(_RING_ENTRIES)
        self.tracker: SendZcTracker[_Call] = SendZcTracker()
        self.report_usage = probe.report_usage
        self.fixed = False
        self.arena_address = 0
        self._submit_wanted = trio.Event()
        self.malformed_records = 0
        #: io_uring_enter calls made, and entries they handed over (batching).
        self.submit_calls = 0
        self.submitted = 0

    def attach(self, arena: Arena) -> None:
        self.arena_address = arena.address
        if not self.probe.fixed_buffers:
            self.note = "io_uring without registered buffers: " + self.probe.reason
            return
        iovecs = [
            (arena.address + start, min(_MAX_FIXED_BUFFER, arena.size - start))
            for start in range(0, arena.size, _MAX_FIXED_BUFFER)
        ]
        try:
            self.ring.register_buffers(iovecs)
        except OSError as exc:
            # Registered memory counts against RLIMIT_MEMLOCK; without it the
            # kernel pins pages per send instead.
            self.note = f"io_uring without registered buffers: registering the arena failed: {exc}"
            return
        self.fixed = True

    def open_channel(self, sock: socket.socket, counters: Counters) -> Channel:
        return IoUringChannel(self, sock, counters)

    def submit_send(self, call: _Call, addr: int, index: int | None) -> None:
        """Prepare a SEND_ZC for *call* and have the submitter hand it over."""
        user_data = self.tracker.start(call, call.nbytes)
        try:
            self._prep(call, addr, index, user_data)
        except SubmissionQueueFull:
            # Hand over what is queued to make room, then queue ours.
            self.submitted += self.ring.submit()
            self.submit_calls += 1
            self._prep(call, addr, index, user_data)
        except BaseException:
            self.tracker.withdraw(user_data)
            raise
        self._submit_wanted.set()

    def _prep(self, call: _Call, addr: int, index: int | None, user_data: int) -> None:
        self.ring.prep_send_zc(
            call.channel.fd,
            addr,
            call.nbytes,
            user_data,
            buf_index=index,
            report_usage=self.report_usage,
            # Let the kernel wait for room itself rather than return a short count.
            msg_flags=_MSG_WAITALL,
        )

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._submitter)
            nursery.start_soon(self._reaper)

    async def _submitter(self) -> None:
        while True:
            await self._submit_wanted.wait()
            self._submit_wanted = trio.Event()
            if self.ring.sq_pending():
                self.submitted += self.ring.submit()
                self.submit_calls += 1

    async def _reaper(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.ring.fd)
            for cqe in self.ring.reap():
                try:
                    events = self.tracker.on_cqe(cqe)
                except UnexpectedCqeError:
                    # Garbage must never release memory.
                    self.malformed_records += 1
                    continue
                for event in events:
                    call = event.item
                    if isinstance(event, SendResult):
                        call.res = event.res
                        call.done.set()
                    elif isinstance(event, SendReleased) and not call.quarantined:
                        call.channel.released(call, event.copied)

    async def abort_in_flight(self) -> None:
        for channel in {call.channel for call in self.tracker.items_outstanding()}:
            await channel.settle_or_quarantine()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        # Closing the ring cancels what is still in flight; the pool has
        # drained or quarantined it by now. Registered pages are unpinned.
        self.ring.close()
