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

A response's head goes with its lease in one ``IORING_OP_SENDMSG_ZC``
request of two iovecs. Where the kernel sends vectored from registered
buffers (Linux 6.15+, found by the probe), both iovecs must lie in the one
registered buffer the request names: so each chunk is registered with a
small *head area* in front of it -- the pages of a memfd of the kernel's
own (:class:`~trio_zc._kernels._heads.HeadArea`), mapped just before the
chunk for the registration (the same pages in front of every chunk) -- and
a head, with the lease's first bytes up to a page (so that the request's
first fragment is a whole page: see ``_heads.py``), is copied into free
pages of that area, which stay taken until the request's notification. Where that cannot be
(a kernel before 6.15, a chunk registered without the area, a head larger
than the free room, an adopted lease), the request is a SENDMSG_ZC from
ordinary memory, the head read from its immutable ``bytes`` object, which
the request keeps until its notification. A kernel without SENDMSG_ZC
(6.0) copies the head with a plain send first: two system calls.
(``IORING_SEND_VECTORIZED`` is not used: with registered buffers it was
ignored, and since a 2026 fix fails with EINVAL.) :attr:`IoUringKernel.head_path`
says which way this kernel went.

Closing, cancellation and draining follow the msg_zerocopy kernel's
protocol (:class:`~trio_zc._kernels._closing.DrainingClose`): a
cancelled send's entry is already the kernel's, so its lease stays held
until its notification; closing waits for notifications, then resets the
connection and quarantines what never comes.

Whether io_uring is usable at all is found by :func:`~trio_zc._kernels._ring.probe`
when the pool opens; see ``_choice.py`` (beside this module) for the fallbacks.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .._address import buffer_address
from .._stats import Counters
from ._base import Channel, CompletionListener, Kernel, SendableLease, Transport, broken
from ._closing import ZEROCOPY_REFUSED, DrainingClose, RefusalRetry, keep_forever, settle_all
from ._heads import HeadArea
from ._socket import SocketTransport, local_peer, not_tcp, socket_of
from ._ring import Message, Probe, Ring, SubmissionQueueFull
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
#: The head area registered in front of each chunk (see the module docs):
#: a head (with the lease's first bytes up to a page) takes as many of its
#: pages as it needs, from when its request is prepared until its notification.
_HEAD_AREA: Final = 256 << 10

#: How heads go with leases (IoUringKernel.head_path).
HEAD_FIXED: Final = "sendmsg_zc_fixed"
HEAD_PLAIN: Final = "sendmsg_zc"
HEAD_COPIED: Final = "copy_then_send_zc"


@attrs.define(eq=False)
class _Call:
    """One SEND_ZC request as the kernel object tracks it."""

    channel: IoUringChannel
    lease: SendableLease
    #: Bytes of the lease the request sends.
    nbytes: int
    #: Where they are, and the fixed buffer holding them (None: ordinary memory).
    addr: int = 0
    index: int | None = None
    #: For a request that sends a head first: its length, the message
    #: (SENDMSG_ZC), and what holds the head's bytes until the
    #: notification: its slot in the head area, or its bytes object.
    head_len: int = 0
    message: Message | None = None
    #: In the head area: where the head (and the lease's first bytes) went, and how many bytes.
    head_slot: int = -1
    head_slot_len: int = 0
    head_owner: object = None
    #: The result CQE's res, once it came.
    res: int | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    #: Its socket went away first: the notification, if it ever comes, changes nothing.
    quarantined: bool = False


class IoUringChannel(Channel):
    """A TCP socket whose zero-copy sends go through the pool's ring.

    A send whose task is cancelled while its request is in the ring goes on
    in Linux; it sets :attr:`~trio_zc._kernels._base.Channel.send_barrier`,
    which every later send waits behind.
    """

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

    def _where(self, lease: SendableLease, pos: int) -> tuple[int, int | None, int]:
        """Where the lease's bytes from *pos* are, the fixed buffer holding
        them (None: unregistered memory), and the most one request may send
        from there."""
        if lease.adopted is not None:
            return buffer_address(lease.adopted) + pos, None, _MAX_FIXED_BUFFER
        address, index, room = self.kernel.buffer_for(lease.offset + pos)
        return address, index, min(room, _MAX_FIXED_BUFFER)

    def _mapped(self, lease: SendableLease, pos: int) -> int:
        """The address of the lease's byte *pos* in this process (for a request from ordinary memory)."""
        if lease.adopted is not None:
            return buffer_address(lease.adopted) + pos
        return self.kernel.arena_address + lease.offset + pos

    def _head_call(self, head: memoryview, data: memoryview, lease: SendableLease, start: int) -> _Call:
        """One SENDMSG_ZC of *head* and as much of *data* (the lease's bytes from *start*) as one request takes."""
        kernel = self.kernel
        head_len = len(head)
        if head_len > _MAX_FIXED_BUFFER // 2:
            # A request's result is a 32-bit count: a head this large goes
            # alone, in pieces, before the lease's bytes.
            head_len = _MAX_FIXED_BUFFER // 2
            call = _Call(self, lease, 0, 0, None, head_len, head_owner=head.obj)
            call.message = Message([(buffer_address(head), head_len)])
            kernel.head_calls_plain += 1
            return call
        addr, index, room = self._where(lease, start)
        if index is not None:
            # A request stays within one registered buffer.
            length = min(len(data), room)
            with data[:length] as within:
                slot = kernel.head_slot(index, head, within)
            if slot is not None:
                offset, copied, head_address = slot
                # The head and the lease's first bytes from the head area,
                # the rest of the lease from its chunk.
                fill = copied - head_len
                regions = [(head_address, copied)]
                if fill < length:
                    regions.append((addr + fill, length - fill))
                call = _Call(self, lease, length, addr, index, head_len, head_slot=offset, head_slot_len=copied)
                call.message = Message(regions)
                kernel.head_calls_fixed += 1
                return call
            # No room for the head (or no head area in front of this chunk):
            # the whole request from ordinary memory.
            addr = self._mapped(lease, start)
        length = min(len(data), _MAX_FIXED_BUFFER - head_len)
        call = _Call(self, lease, length, addr, None, head_len, head_owner=head.obj)
        call.message = Message([(buffer_address(head), head_len), (addr, length)])
        kernel.head_calls_plain += 1
        return call

    async def send_zerocopy(
        self, data: memoryview, lease: SendableLease, start: int, head: memoryview | None = None
    ) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.pass_barrier()
        head_len = 0 if head is None else len(head)
        total = head_len + len(data)
        sent = 0
        retry = RefusalRetry()  # a send here costs a system call anyway
        while sent < total:
            # Another task may have closed the stream during the last wait,
            # and the entry names the socket by its number, which may belong
            # to another connection by now.
            self.socket.check_open()
            if sent < head_len:
                assert head is not None
                if self.kernel.head_path == HEAD_COPIED:
                    # No SENDMSG_ZC (Linux 6.0): the head by copying first.
                    with head[sent:] as rest:
                        await Channel.send_copy(self, rest)
                    self.kernel.head_copies += 1
                    sent = head_len
                    continue
                # The rest of the head and the lease's first bytes: one request.
                with head[sent:] as rest:
                    call = self._head_call(rest, data, lease, start)
            else:
                pos = sent - head_len
                addr, index, room = self._where(lease, start + pos)
                # A request stays within one registered buffer.
                call = _Call(self, lease, min(total - sent, room), addr, index)
            length = call.nbytes + call.head_len
            try:
                self.kernel.submit_send(call)
            except BaseException:
                if call.head_slot >= 0:
                    self.kernel.release_head(call.head_slot, call.head_slot_len)  # it never went
                raise
            self.calls.add(call)
            lease.begin_send()
            self.counters.zerocopy_call(call.nbytes)
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
                if call.head_len:
                    # Head bytes count as copied bytes (they are not the pool's).
                    self.counters.copied(min(res, call.head_len))
                # A short result may end inside the head: the next request
                # sends the rest of it with the lease's bytes again.
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
        if call.head_slot >= 0:
            self.kernel.release_head(call.head_slot, call.head_slot_len)
        call.head_owner = None
        # The lease's bytes the kernel took (the result came first), not the
        # bytes asked for: a short or failed send (a reset) moved fewer, or none.
        taken = min(max((call.res or 0) - call.head_len, 0), call.nbytes)
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
            # Its head stays where it is for good: in the head area its
            # pages are never given back; a bytes object is kept referenced.
            if call.head_owner is not None:
                keep_forever(call.head_owner)
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
        #: How a head goes with a lease here (see the module docs):
        #: HEAD_FIXED once attach() made the head area, else what the probe allows.
        self.head_path = HEAD_PLAIN if probe.sendmsg_zc else HEAD_COPIED
        self._heads: HeadArea | None = None
        # Per registered chunk, the address its head area was registered at
        # (0: registered without one).
        self._head_bases: list[int] = []
        #: Requests that sent a head from the head area, from ordinary
        #: memory, and heads copied first; times the head area had no room.
        self.head_calls_fixed = 0
        self.head_calls_plain = 0
        self.head_copies = 0
        self.head_area_full = 0

    def _add_note(self, sentence: str) -> None:
        self.note = sentence if self.note is None else f"{self.note} {sentence}"

    def pages_replaceable(self) -> bool:
        # A registered chunk's pages stay pinned by the ring: punched out of
        # the memfd, the ring would go on sending them while the next lease
        # is written into new pages (registration is lazy, so any chunk may
        # be registered by then). Without registered buffers each send pins
        # its own pages only until its notification.
        return not self.fixed

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
        self._head_bases = [0] * count
        self.chunk = chunk
        self._chunks = [None] * count
        self.fixed = True
        if not self.probe.vectored_fixed:
            self._add_note(
                "Heads go with leases in SENDMSG_ZC requests from ordinary memory: this kernel"
                " cannot send several iovecs from registered buffers (Linux 6.15+)."
                if self.probe.sendmsg_zc
                else "Heads are copied before their leases (two system calls): this kernel has"
                " no SENDMSG_ZC (Linux 6.1+)."
            )
            return
        try:
            self._heads = HeadArea(_HEAD_AREA)
        except OSError as exc:
            self._add_note(f"Heads go with leases from ordinary memory: making the head area failed ({exc}).")
            return
        self.head_path = HEAD_FIXED

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
        """Register chunk *index*, with the head area in front where it fits; whether that worked.

        Registering pins for writing, which read-only pages refuse (EFAULT),
        and in a ``protect_sealed`` pool the lease about to be sent is
        read-only in the arena's mapping. So the chunk is mapped once more,
        read-write, for the registration only (:meth:`Ring.register_files`):
        the kernel keeps the pages pinned after the mapping is gone, and a
        send names its bytes by their address as registered (the kernel only
        computes an offset from it). No writable mapping of sealed memory
        outlives this call.
        """
        start = index * self.chunk
        length = min(self.chunk, self.arena_size - start)
        chunk = (self._arena_fd, start, length)
        heads = self._heads
        if heads is not None and heads.size + length <= _MAX_FIXED_BUFFER:
            try:
                base = self.ring.register_files(index, [(heads.fd, 0, heads.size), chunk])
            except (OSError, ValueError):
                pass  # try the chunk alone: its sends' heads then go from ordinary memory
            else:
                return self._registered(index, base + heads.size, base, length)
        try:
            base = self.ring.register_files(index, [chunk])
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
        return self._registered(index, base, 0, length)

    def _registered(self, index: int, base: int, head_base: int, length: int) -> bool:
        self._chunks[index] = True
        self._bases[index] = base
        self._head_bases[index] = head_base
        self.registered_bytes += length
        return True

    def open_channel(
        self, transport: Transport, counters: Counters, on_completions: CompletionListener
    ) -> IoUringChannel:
        return IoUringChannel(self, socket_of(transport, self.name), counters, on_completions)

    def submit_send(self, call: _Call) -> None:
        """Prepare *call*'s request (SEND_ZC, or SENDMSG_ZC with a head) and have the submitter hand it over."""
        user_data = self.tracker.start(call, call.nbytes + call.head_len)
        try:
            self._prep(call, user_data)
        except SubmissionQueueFull:
            # Hand over what is queued to make room, then queue ours.
            self.submitted += self.ring.submit()
            self.submit_calls += 1
            self._prep(call, user_data)
        except BaseException:
            self.tracker.withdraw(user_data)
            raise
        self._submit_wanted.set()

    def _prep(self, call: _Call, user_data: int) -> None:
        # Let the kernel wait for room itself rather than return a short count.
        if call.message is not None:
            self.ring.prep_sendmsg_zc(
                call.channel.socket.fd,
                call.message,
                user_data,
                buf_index=call.index,
                report_usage=self.report_usage,
                msg_flags=_MSG_WAITALL,
            )
            return
        self.ring.prep_send_zc(
            call.channel.socket.fd,
            call.addr,
            call.nbytes,
            user_data,
            buf_index=call.index,
            report_usage=self.report_usage,
            msg_flags=_MSG_WAITALL,
        )

    def head_slot(self, index: int, head: memoryview, data: memoryview) -> tuple[int, int, int] | None:
        """Copy *head* and the first bytes of *data* into the head area, for a request from fixed buffer *index*.

        Returns their offset in the area, the bytes copied, and their address
        as that buffer has it; or None when the buffer has no head area in
        front or the area has no room (the request then goes from ordinary memory).
        """
        heads = self._heads
        base = self._head_bases[index]
        if heads is None or not base:
            return None
        taken = heads.take(head, data)
        if taken is None:
            self.head_area_full += 1
            return None
        offset, copied = taken
        return offset, copied, base + offset

    def release_head(self, offset: int, nbytes: int) -> None:
        """A request's notification came: its head's slots are free again."""
        if self._heads is not None and not self._heads.closed:
            self._heads.give_back(offset, nbytes)

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
        # drained or quarantined it by now. Registered pages are unpinned
        # (a request still in flight keeps its own references).
        self.ring.close()
        if self._heads is not None:
            self._heads.close()
