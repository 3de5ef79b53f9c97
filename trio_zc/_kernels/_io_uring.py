"""The io_uring kernel: ``IORING_OP_SEND_ZC`` from registered buffers.

How it fits Trio: one ring per pool. Streams prepare submission entries and
ask for a submit; a submitter task hands everything prepared since its last
turn to the kernel in one ``io_uring_enter`` (so sends that are ready
together are batched). A reaper task waits for the ring fd to become
readable (``trio.lowlevel.wait_readable``) and routes each completion to its
send through :class:`~trio_zc._kernels._uring_tracker.SendZcTracker`.

A send has two completions. The *result* (bytes sent, or ``-errno``)
resumes the stream's task; the *notification* (``F_NOTIF``), which follows
when the result had ``F_MORE``, says the kernel is done with the memory and
releases the lease. With ``IORING_SEND_ZC_REPORT_USAGE`` the notification
also says whether the data was copied after all (always, on loopback), which
feeds the stream's policy exactly as MSG_ZEROCOPY's COPIED code does.

The pool's arena is registered with the ring as fixed buffers, so the
kernel does not pin pages per send; sends from it use
``IORING_RECVSEND_FIXED_BUF``. Registering pins (and so allocates) every
page of a buffer at once, so the arena is not registered whole when the
pool opens: the ring gets a sparse buffer table (Linux 5.13+), and each
16 MiB chunk of the arena is registered into its lease when a send first
uses it, through a mapping of that chunk made for the registration and
unmapped right after it (registering pins for writing, which the read-only
pages of sealed leases in a ``protect_sealed`` pool refuse; the pins
outlive the mapping). An idle pool costs no memory; a busy one keeps the chunks it used
until it closes. A chunk the kernel refuses to register (ENOMEM: the
locked-memory limit) is sent from as ordinary memory, which the kernel pins
per send. Adopted buffers go as ordinary SEND_ZC.

The kernel may refuse to pin memory for a send from unregistered memory
(ENOMEM, past RLIMIT_MEMLOCK without CAP_IPC_LOCK) or refuse with ENOBUFS:
that is no broken connection, and the stream copies the send's rest and
backs off, as for MSG_ZEROCOPY's ENOBUFS (see ``_policy.py``).

Closing, cancellation and draining follow the msg_zerocopy kernel's
protocol (:class:`~trio_zc._kernels._closing.DrainingClose`): a
cancelled send's entry is already the kernel's, so its lease stays held
until its notification; closing waits for notifications, then resets the
connection and quarantines what never comes.

Whether io_uring is usable at all is found by :func:`~trio_zc._kernels._ring.probe`
when the pool opens; see ``_choice.py`` (beside this module) for the fallbacks.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .._address import buffer_address
from .._stats import Counters
from ._base import Channel, CompletionListener, Kernel, SendableLease, Transport, broken
from ._closing import ZEROCOPY_REFUSED, DrainingClose, RefusalRetry, settle_all
from ._socket import SocketTransport, local_peer, not_tcp, socket_of
from ._ring import Probe, Ring, SubmissionQueueFull
from ._uring_tracker import SendReleased, SendResult, SendZcTracker, UnexpectedCqeError

if TYPE_CHECKING:
    from .._arena import Arena

#: The largest registered buffer the kernel accepts; also the most one
#: request sends (an SQE's length has 32 bits).
_MAX_FIXED_BUFFER: Final = 1 << 30
#: The arena is registered in chunks of this size (or of _MAX_FIXED_BUFFER
#: if smaller), each when a send first uses it: what registering a chunk
#: allocates and pins at once, and where a send from registered memory is
#: split into two requests.
_CHUNK: Final = 16 << 20
#: The most fixed buffers a ring may have (chunks get larger for larger arenas).
_MAX_CHUNKS: Final = 1 << 14
#: Ring size: submission entries (completions get twice as many).
_RING_ENTRIES: Final = 256
_MSG_WAITALL: Final = socket.MSG_WAITALL
#: How long the submitter waits before trying again after EAGAIN or EBUSY.
_SUBMIT_RETRY: Final = 0.001


@attrs.define(eq=False)
class _Call:
    """One SEND_ZC request as the kernel object tracks it."""

    channel: IoUringChannel
    lease: SendableLease
    nbytes: int
    #: The result CQE's res, once it came.
    res: int | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    #: Its socket went away first: the notification, if it ever comes, changes nothing.
    quarantined: bool = False


class IoUringChannel(Channel):
    """A TCP socket whose zero-copy sends go through the pool's ring."""

    #: Set while an earlier send is still in Linux's hands after its task
    #: was cancelled: a later send, copied or not, must wait for it, or the
    #: two sends' bytes would interleave.
    send_barrier: trio.Event | None = None

    def __init__(
        self,
        kernel: IoUringKernel,
        socket: SocketTransport,
        counters: Counters,
        on_completions: CompletionListener,
    ) -> None:
        super().__init__(socket, counters, on_completions)
        self.kernel = kernel
        self.socket = socket
        self.calls: set[_Call] = set()
        self.closing = DrainingClose(self)
        self.copy_only_reason = not_tcp(socket.sock) or (
            local_peer(socket.sock) if kernel.copy_local_peers else None
        )

    @property
    def sends_in_flight(self) -> int:
        return len(self.calls)

    def copy_now(self, data: memoryview) -> int:
        if self.send_barrier is not None:
            return 0  # an earlier send's bytes must go first
        return super().copy_now(data)

    async def send_copy(self, data: memoryview) -> None:
        if self.send_barrier is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self.pass_barrier()
        await super().send_copy(data)

    async def pass_barrier(self) -> None:
        """Wait for the send behind :attr:`send_barrier`, if any, to end."""
        barrier = self.send_barrier
        if barrier is not None:
            await barrier.wait()
            self.send_barrier = None

    def _where(self, lease: SendableLease, pos: int) -> tuple[int, int | None, int]:
        """Where the lease's bytes from *pos* are, the fixed buffer holding
        them (None: unregistered memory), and the most one request may send
        from there."""
        if lease.adopted is not None:
            return buffer_address(lease.adopted) + pos, None, _MAX_FIXED_BUFFER
        address, index, room = self.kernel.buffer_for(lease.offset + pos)
        return address, index, min(room, _MAX_FIXED_BUFFER)

    async def send_zerocopy(self, data: memoryview, lease: SendableLease, start: int) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.pass_barrier()
        total = len(data)
        sent = 0
        retry = RefusalRetry()  # a send here costs a system call anyway
        while sent < total:
            # Another task may have closed the stream during the last wait,
            # and the entry names the socket by its number, which may belong
            # to another connection by now.
            self.socket.check_open()
            addr, index, room = self._where(lease, start + sent)
            # A request stays within one registered buffer.
            length = min(total - sent, room)
            call = _Call(self, lease, length)
            self.kernel.submit_send(call, addr, index)
            self.calls.add(call)
            lease.begin_send()
            self.counters.zerocopy_call(length)
            # The entry is the kernel's now: if this wait is cancelled, the
            # send goes on, and its notification still releases the lease.
            try:
                await call.done.wait()
            except BaseException:
                # Cancelled (or a KeyboardInterrupt delivered here): the
                # kernel still sends it, and nothing else may be sent until
                # it is done, or the bytes would interleave.
                self.send_barrier = call.done
                raise
            res = call.res
            assert res is not None
            if res > 0:
                sent += res
                retry.went_through()
                continue
            if res == 0:
                # Never seen; going round again could go on for ever.
                raise trio.BrokenResourceError(f"SEND_ZC sent none of {length} bytes")
            err = -res
            if err == errno.EAGAIN:
                await self.wait_writable()
            elif err in ZEROCOPY_REFUSED:
                # Linux would not pin the memory (ENOMEM: the locked-memory
                # limit, for unregistered memory): the connection is fine.
                # Try once more, then the stream copies the rest and backs off.
                if not retry.refused(self.counters):
                    break
            else:
                broken(OSError(err, errno.errorcode.get(err, str(err))))
        return sent

    def released(self, call: _Call, copied: bool) -> None:
        """The kernel is done with *call*'s memory."""
        self.calls.discard(call)
        call.lease.end_send()
        # The bytes the kernel took (the result came first), not the bytes
        # asked for: a short or failed send (a reset) moved fewer, or none.
        taken = max(call.res or 0, 0)
        self.counters.completed(1, call.nbytes, taken, copied)
        self.on_completions(1, copied)
        self.closing.notify()

    def poll_completions(self) -> None:
        pass  # the kernel's reaper task routes every completion

    def take_outstanding(self) -> list[tuple[SendableLease, int]]:
        calls, self.calls = self.calls, set()
        for call in calls:
            # Its notification, if it ever comes, changes nothing (see _reaper).
            call.quarantined = True
            if call.res is None:
                # Its result never came either: a task still waiting for it
                # (a send, or a copy behind its barrier) would wait for ever.
                call.res = -errno.ECANCELED
                call.done.set()
        return [(call.lease, call.nbytes) for call in calls]

    def close_transport(self) -> None:
        # An entry prepared but not handed to the kernel yet names this
        # socket by number: hand it over while the number is still ours
        # (the kernel then holds the socket itself).
        self.kernel.flush()
        self.transport.close()

    async def aclose(self, drain_timeout: float) -> None:
        await self.closing.aclose(drain_timeout)


class IoUringKernel(Kernel):
    """SEND_ZC on one ring per pool, from the arena registered as fixed buffers."""

    name = "io_uring"

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.ring = Ring(_RING_ENTRIES)
        self.tracker: SendZcTracker[_Call] = SendZcTracker()
        self.report_usage = probe.report_usage
        #: Whether the ring has a buffer table for the arena's chunks.
        self.fixed = False
        self.arena_address = 0
        self.arena_size = 0
        self._arena_fd = -1
        # Per registered chunk, the address it was registered at (see
        # _register_chunk()); 0 for the others.
        self._bases: list[int] = []
        #: The size of the arena's chunks, each registered on first use.
        self.chunk = _MAX_FIXED_BUFFER
        # Per chunk: None until first used, then whether registering it worked.
        self._chunks: list[bool | None] = []
        #: Arena bytes registered (pinned) so far, and chunks the kernel refused.
        self.registered_bytes = 0
        self.refused_chunks = 0
        self._submit_wanted = trio.Event()
        self.malformed_records = 0
        #: io_uring_enter calls made, and entries they handed over (batching).
        self.submit_calls = 0
        self.submitted = 0

    def _add_note(self, sentence: str) -> None:
        self.note = sentence if self.note is None else f"{self.note} {sentence}"

    def attach(self, arena: Arena) -> None:
        self.arena_address = arena.address
        self.arena_size = arena.size
        self._arena_fd = arena.fd
        if not self.probe.fixed_buffers:
            self._add_note("Without registered buffers: each send pins its own pages.")
            return
        chunk = min(_CHUNK, _MAX_FIXED_BUFFER)
        while -(-arena.size // chunk) > _MAX_CHUNKS and chunk < _MAX_FIXED_BUFFER:
            chunk *= 2
        count = min(-(-arena.size // chunk), _MAX_CHUNKS)
        try:
            # Nothing is pinned yet: chunks are registered as sends use them.
            self.ring.register_sparse_buffers(count)
        except OSError as exc:
            self._add_note(
                f"Without registered buffers: registering a buffer table failed ({exc});"
                " each send pins its own pages."
            )
            return
        self._bases = [0] * count
        self.chunk = chunk
        self._chunks = [None] * count
        self.fixed = True

    def buffer_for(self, offset: int) -> tuple[int, int | None, int]:
        """Where a send names arena *offset*, the fixed buffer holding it
        (None: ordinary memory), and the bytes from there to that buffer's end."""
        index = offset // self.chunk
        if not self.fixed or index >= len(self._chunks):
            return self.arena_address + offset, None, self.arena_size - offset
        registered = self._chunks[index]
        if registered is None:
            registered = self._register_chunk(index)
        if not registered:
            return self.arena_address + offset, None, self.arena_size - offset
        start = index * self.chunk
        return self._bases[index] + offset - start, index, start + self.chunk - offset

    def _register_chunk(self, index: int) -> bool:
        """Register chunk *index*, through a mapping of its own; whether that worked.

        Registering pins for writing, which read-only pages refuse (EFAULT),
        and in a ``protect_sealed`` pool the lease about to be sent is
        read-only in the arena's mapping. So the chunk is mapped once more,
        read-write, for the registration only: the kernel keeps the pages
        pinned after the mapping is gone, and a send names its bytes by
        their address as registered (the kernel only computes an offset from
        it). No writable mapping of sealed memory outlives this call.
        """
        start = index * self.chunk
        length = min(self.chunk, self.arena_size - start)
        try:
            region = mmap.mmap(self._arena_fd, length, flags=mmap.MAP_SHARED, offset=start)
            try:
                # As the arena's own mapping: pages fault in as base pages.
                region.madvise(mmap.MADV_NOHUGEPAGE)
                anchor = ctypes.c_char.from_buffer(region)
                base = ctypes.addressof(anchor)
                del anchor
                self.ring.update_buffers(index, [(base, length)])
            finally:
                region.close()
        except (OSError, ValueError) as exc:
            # Not retried: under the locked-memory limit it would fail on
            # every send, at the price of a system call each.
            self._chunks[index] = False
            if not self.refused_chunks:
                self._add_note(
                    f"Registering {length >> 20} MiB of the pool's memory failed ({exc}):"
                    " sends from memory the kernel refused to register pin their own pages,"
                    " and those it refuses to pin are copied."
                )
            self.refused_chunks += 1
            return False
        self._chunks[index] = True
        self._bases[index] = base
        self.registered_bytes += length
        return True

    def open_channel(
        self, transport: Transport, counters: Counters, on_completions: CompletionListener
    ) -> IoUringChannel:
        return IoUringChannel(self, socket_of(transport, self.name), counters, on_completions)

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
            call.channel.socket.fd,
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
                try:
                    self.submitted += self.ring.submit()
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EBUSY):
                        raise
                    # The kernel is short of room for completions or of
                    # memory for requests: once the reaper has made room,
                    # try again. The entries stay prepared meanwhile.
                    self._submit_wanted.set()
                    await trio.sleep(_SUBMIT_RETRY)
                    continue
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

    def flush(self) -> None:
        """Hand every prepared entry to the kernel now (a channel is closing)."""
        if not self.ring.closed and self.ring.sq_pending():
            self.submitted += self.ring.submit()
            self.submit_calls += 1

    async def abort_in_flight(self) -> None:
        await settle_all({call.channel.closing for call in self.tracker.items_outstanding()})
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        # Closing the ring cancels what is still in flight; the pool has
        # drained or quarantined it by now. Registered pages are unpinned.
        self.ring.close()
