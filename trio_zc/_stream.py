"""ZeroCopyStream: a Trio stream that can send sealed leases without copying.

The stream does everything that is the same for every kernel -- checking
leases, choosing between zero-copy and copying (:mod:`trio_zc._policy`),
statistics, detecting concurrent misuse -- and leaves the I/O to the pool's
kernel through a :class:`~trio_zc._kernels._base.Channel`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import NoReturn, overload

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from ._mypyc import mypyc_attr, own_abc_state
from ._conflict import ConflictDetector
from ._errors import ForeignLeaseError
from ._kernels._base import Transport
from ._kernels._socket import SocketTransport, take_socket
from ._lease import SealedLease, WritableLease, _LeaseRecord
from ._lifecycle import LeaseState

# Module globals for the per-image check below (cheaper than LeaseState.X).
_SEALED, _SENDING = LeaseState.SEALED, LeaseState.SENDING
from ._decider import SendDecider
from . import _pool as _pool_module
from ._pool import BufferPool, check_pool
from ._stats import Counters, SendStatistics, StreamStatistics
from ._validate import (
    RuntimeChecked,
    check_drain_timeout,
    check_head,
    check_max_in_flight,
    check_receive_size,
    check_send_timeout,
    exact_int,
)


#: The most ``receive_some()`` asks the OS for in one call: Python allocates
#: the whole size up front, so ``receive_some(2**40)`` would otherwise fail
#: with a bare MemoryError. Returning fewer bytes than asked is always allowed.
MAX_RECEIVE_SIZE = 16 * 2**20


def _index(name: str, value: object) -> int:
    return value if type(value) is int else exact_int(name, value)


def _foreign(lease: SealedLease) -> ForeignLeaseError:
    return ForeignLeaseError(f"{lease!r} belongs to another pool than this stream's")


@mypyc_attr(allow_interpreted_subclasses=True)
class ZeroCopyStream(trio.abc.HalfCloseableStream):
    """A TCP stream whose :meth:`send_lease` sends pool memory without copying.

    Wraps a :class:`trio.SocketStream` or a connected Trio socket, taking
    ownership of it; its memory comes from *pool*, whose kernel does the
    sending. :meth:`send_all` copies, as for any Trio stream, and suits
    small things such as headers; :meth:`send_lease` sends a
    :class:`SealedLease` and keeps it referenced until the kernel reports
    every call that carried its bytes complete.

    Receiving while sends are in flight works as on any stream.
    *drain_timeout* (default: the pool's) bounds how long :meth:`aclose`
    waits for completions before forcing the connection down; memory whose
    completion never comes is quarantined, never reused.
    """

    def __init__(
        self,
        transport: trio.SocketStream | trio.socket.SocketType | Transport,
        *,
        pool: BufferPool | RuntimeChecked,
        drain_timeout: float | RuntimeChecked | None = None,
    ) -> None:
        checked = check_pool(pool)
        self._drain_timeout = (
            checked._stream_defaults.drain_timeout
            if drain_timeout is None
            else check_drain_timeout(drain_timeout, or_none=True)
        )
        # A socket becomes the channel's transport (the channel owns it from
        # here on); a kernel that makes its own (the mock) passes that.
        connection = transport if isinstance(transport, Transport) else SocketTransport(take_socket(transport))
        self._pool = checked
        self._counters = Counters(parent=checked._counters)
        try:
            self._channel = checked._kernel.open_channel(connection, self._counters, self._on_completions)
        except BaseException:
            connection.close()
            raise
        reason = self._channel.copy_only_reason
        self._decider = SendDecider(checked._policy, unavailable_reason=reason, notify=checked._note_fallback)
        # A stream whose channel can never send zero-copy (a local peer
        # under "auto", the copy kernel) skips asking the policy per send.
        self._copy_only = reason is not None
        if reason is not None and isinstance(transport, trio.SocketStream):
            connection.let_more_unsent()
        defaults = checked._stream_defaults
        self._send_timeout: float | None = defaults.send_timeout
        self._max_in_flight: int = defaults.max_in_flight
        # Set when completions arrive, for a send waiting under max_in_flight.
        self._room: trio.Event | None = None
        # Why the stream gave up on its peer (a send timed out), if it did.
        self._broken: str | None = None
        self._send_conflict = ConflictDetector(
            "another task is currently sending on this ZeroCopyStream"
        )
        self._receive_conflict = ConflictDetector(
            "another task is currently receiving on this ZeroCopyStream"
        )
        self._closed = False
        self._eof_sent = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<trio_zc.ZeroCopyStream {state}, kernel {self._pool._kernel.name!r}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # A copy would share the connection but not the check that refuses
        # two sends at once (the bytes of two images would interleave) nor
        # the closed flag. copy.deepcopy() and pickle end here too.
        raise TypeError(
            "a ZeroCopyStream cannot be copied or pickled: it owns its connection; pass the stream itself"
        )

    @property
    def pool(self) -> BufferPool:
        """The pool whose leases this stream sends."""
        return self._pool

    # -- sending ----------------------------------------------------------------

    def _on_completions(self, calls: int, copied: bool) -> None:
        self._decider.on_completions(calls, copied)
        if self._room is not None:
            self._room.set()

    @property
    def send_timeout(self) -> float | None:
        """The longest one :meth:`send_lease` or :meth:`send_all` may take, in seconds (None: no limit).

        A peer that stops reading makes sends wait, and keeps their memory
        (and the lease being sent) from the pool. When a send takes longer
        than this, the stream resets the connection -- the kernel then drops
        what it still holds and reports those sends done, so the memory
        comes back -- and the send raises :class:`trio.BrokenResourceError`,
        as does every later send. Defaults to the pool's ``send_timeout``.
        Waiting under :attr:`max_in_flight` counts as part of the send.
        """
        return self._send_timeout

    @send_timeout.setter
    def send_timeout(self, value: float | None) -> None:
        self._send_timeout = check_send_timeout(value)

    @property
    def max_in_flight(self) -> int:
        """The most bytes of zero-copy sends this stream may have in flight.

        A :meth:`send_lease` that would go past it waits (backpressure)
        until completions bring the stream under it; a send is never
        refused for its size alone: with nothing in flight any lease goes.
        This keeps one slow peer from pinning an unbounded share of the
        pool. Defaults to the pool's ``stream_max_in_flight``.
        """
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int | RuntimeChecked) -> None:
        # RuntimeChecked: compiled, a plain ``int`` would refuse 1.5 with
        # mypyc's message and take True as 1 before the check (_validate.py).
        self._max_in_flight = check_max_in_flight(value)

    def _check_not_forked(self) -> None:
        """Refuse in a process forked from the stream's (rule 8 of the life cycle).

        The child shares the connection with its parent, and with it the
        socket's error queue (the parent's completions), the kernel's epoll
        or ring, and the connection's state: a child that sent, received,
        half-closed or reset through it would take the parent's completions
        or break its images.
        """
        pid = self._pool._pid
        if _pool_module.current_pid != pid:
            raise trio.ClosedResourceError(
                f"this stream belongs to process {pid}, which forked this one; a forked child"
                " cannot use its parent's streams (aclose() only closes the child's descriptor)"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")

    def _check_sendable(self) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)
        self._check_open()
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data* by copying it (for headers and other small things)."""
        if isinstance(data, (SealedLease, WritableLease)):
            raise TypeError("send_all() copies bytes; send a SealedLease with send_lease()")
        self._check_not_forked()
        with self._send_conflict:
            self._check_sendable()
            with memoryview(data) as view, view.cast("B") as flat:
                if not flat:
                    await trio.lowlevel.checkpoint()
                    return
                if self._send_timeout is None:
                    await self._channel.send_copy(flat)
                else:
                    with self._time_limit("send_all()"):
                        await self._channel.send_copy(flat)

    def _lease_slot(self, lease: object, offset: object, nbytes: object) -> tuple[_LeaseRecord, int, int]:
        if isinstance(lease, WritableLease):
            raise TypeError("send_lease() takes a SealedLease: seal() the WritableLease first")
        if not isinstance(lease, SealedLease):
            raise TypeError(f"send_lease() takes a SealedLease, not {type(lease).__name__}")
        slot = lease._live()
        if slot.home is not self._pool._home:
            raise _foreign(lease)
        start = _index("offset", offset)
        if not 0 <= start < slot.nbytes:
            raise ValueError(f"offset {start} is outside the lease's {slot.nbytes} bytes")
        if nbytes is None:
            length = slot.nbytes - start
        else:
            length = _index("nbytes", nbytes)
            if not 0 < length <= slot.nbytes - start:
                raise ValueError(
                    f"nbytes {length} at offset {start} does not fit the lease's {slot.nbytes} bytes"
                )
        return slot, start, length

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    async def send_lease(
        self,
        lease: SealedLease,
        offset: int = 0,
        nbytes: int | None = None,
        *,
        head: bytes | bytearray | memoryview | None = None,
    ) -> None: ...
    async def send_lease(
        self, lease: object, offset: object = 0, nbytes: object = None, *, head: object = None
    ) -> None:
        """Send *head* (if given), then *nbytes* bytes of *lease* from *offset* (default: all of it).

        Returns once the kernel has accepted every byte. The lease stays
        referenced (its memory is not reused, even if it is released) until
        the kernel reports every call that carried its bytes complete. Sends
        below the policy's threshold, and sends on streams where zero-copy
        cannot win, are copied; :meth:`statistics` says which.

        *head* is ordinary bytes that go out just before the lease's -- an
        HTTP response's head, a frame header -- in the same system call
        where the kernel allows (one ``sendmsg`` of two iovecs for ``copy``
        and ``msg_zerocopy``, one ``SENDMSG_ZC`` request for ``io_uring``;
        ``sendfile`` sends it with ``MSG_MORE`` just before, so both leave
        in one train of packets). Any bytes-like object: a ``bytes`` object
        is held as it is until the kernel is done with it (it cannot
        change), anything else is copied first, so writing to it once this
        returns (or while it waits) never changes what is sent. Its bytes
        count as copied bytes in :meth:`statistics`. A send cut short
        (cancelled, timed out, or stopped by the peer) may have sent part
        of the head, as for the lease's bytes.

        If cancelled part-way, some bytes may have been sent, as with a
        cancelled :meth:`send_all`; the lease stays referenced by the calls
        already made, and is never released early.
        """
        if type(lease) is SealedLease and type(offset) is int and offset == 0 and nbytes is None:
            # The common call, checked with less ceremony: it runs once per image.
            slot = lease._slot
            state = slot.state
            if state is not _SEALED and state is not _SENDING:
                lease._live()  # raises
            if slot.home is not self._pool._home:
                raise _foreign(lease)
            start, length = 0, slot.nbytes
        else:
            slot, start, length = self._lease_slot(lease, offset, nbytes)
        # What the channels send: a view of immutable bytes (rule of _kernels._base).
        head_view: memoryview | None = None
        if head is not None:
            held = head if type(head) is bytes else check_head(head)
            if held:
                head_view = memoryview(held)
        # ``with self._send_conflict:`` spelled out (its two method calls cost
        # more than these lines, once per image); the same check and the same
        # reset on every way out.
        conflict = self._send_conflict
        if conflict._held:
            raise trio.BusyResourceError(conflict._message)
        conflict._held = True
        try:
            if self._broken is not None or self._closed or self._eof_sent:
                self._check_sendable()  # raises the right error
            # The policy before the channel: it says no at once to most sends that copy.
            zerocopy = (
                not self._copy_only
                and self._decider.use_zerocopy(length)
                and self._channel.accepts(slot)
            )
            in_flight = self._counters.bytes_in_flight
            if not zerocopy or not in_flight or in_flight + length <= self._max_in_flight:
                # What the kernel takes at once is taken before any other
                # task can run, so before anyone could release the lease:
                # that part needs no hold of its own (a copy is done with
                # the memory, a zero-copy call holds it until it completes).
                # Most sends end here, and small images feel every
                # microsecond of bookkeeping.
                await checkpoint_if_cancelled()
                # slot.readonly_view(start, length), inlined: once per image.
                if slot.adopted is None:
                    begin = slot.offset + start
                    view = slot.home.arena.readonly[begin : begin + length]
                else:
                    view = slot.adopted[start : start + length]
                with view as data:
                    if zerocopy:
                        taken, refused = self._channel.zerocopy_now(data, slot, head_view)
                    else:
                        taken, refused = self._channel.copy_now(data, head_view), False
                if head_view is not None:
                    head_len = len(head_view)
                    if taken < head_len:
                        # Stopped inside the head: the rest of it goes first.
                        head_view = head_view[taken:]
                        taken = 0
                    else:
                        taken -= head_len
                        head_view = None
                if taken == length and head_view is None:
                    if zerocopy:
                        self._decider.on_zerocopy_sent()
                    await cancel_shielded_checkpoint()
                    return
                if refused:
                    self._decider.on_enobufs()
                    zerocopy = False  # copy the rest
                start += taken
                length -= taken
            # The rest of the send holds the memory while it runs: the owner
            # may release the lease from another task at any point, and the
            # kernel may complete every earlier call while this one waits.
            slot.begin_send()
            try:
                if self._send_timeout is not None:
                    with self._time_limit("send_lease()"):
                        await self._send_slot(slot, start, length, zerocopy, head_view)
                else:
                    await self._send_slot(slot, start, length, zerocopy, head_view)
            finally:
                slot.end_send()
        finally:
            conflict._held = False

    async def _send_slot(
        self, slot: _LeaseRecord, start: int, length: int, zerocopy: bool, head: memoryview | None
    ) -> None:
        if zerocopy:
            counters = self._counters
            while counters.bytes_in_flight and counters.bytes_in_flight + length > self._max_in_flight:
                self._room = trio.Event()
                await self._room.wait()
                # Woken by completions, or by aclose() (then this raises).
                self._check_sendable()
            self._room = None
        with slot.readonly_view(start, length) as data:
            if zerocopy:
                sent = await self._channel.send_zerocopy(data, slot, start, head)
                head_len = 0 if head is None else len(head)
                if sent < head_len + length:
                    self._decider.on_enobufs()
                    # Copy the rest: what is left of the head, then of the lease.
                    if head is not None and sent < head_len:
                        with head[sent:] as head_rest:
                            await self._channel.send_copy(data, head_rest)
                    else:
                        with data[sent - head_len :] as rest:
                            await self._channel.send_copy(rest)
                else:
                    self._decider.on_zerocopy_sent()
            else:
                await self._channel.send_copy(data, head)

    @contextlib.contextmanager
    def _time_limit(self, what: str) -> Iterator[None]:
        timeout = self._send_timeout
        assert timeout is not None
        with trio.move_on_after(timeout) as scope:
            yield
        if scope.cancelled_caught:
            if self._closed:
                # Another task closed the stream while this send waited (its
                # close may have freed the socket's descriptor, which a new
                # connection may own by now): nothing of ours to reset. The
                # channel refuses to abort once closed anyway.
                raise trio.ClosedResourceError(
                    f"this stream was closed while {what} waited (its send_timeout of {timeout} s"
                    " also ran out)"
                )
            self._broken = (
                f"{what} took longer than send_timeout ({timeout} s): the peer is not reading;"
                " the connection was reset"
            )
            # The kernel drops what it holds for this connection and reports
            # those sends done: their memory comes back to the pool.
            try:
                self._channel.abort()
            except OSError:  # pragma: no cover - the connection is gone anyway
                pass
            raise trio.BrokenResourceError(self._broken)

    async def wait_send_all_might_not_block(self) -> None:
        self._check_not_forked()
        with self._send_conflict:
            self._check_open()
            await self._channel.wait_writable()

    async def send_eof(self) -> None:
        self._check_not_forked()
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            self._check_open()
            self._channel.send_eof()
            self._eof_sent = True

    # -- receiving --------------------------------------------------------------

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    async def receive_some(self, max_bytes: object = None) -> bytes:
        size = min(check_receive_size(max_bytes), MAX_RECEIVE_SIZE)
        self._check_not_forked()
        with self._receive_conflict:
            self._check_open()
            return await self._channel.receive_some(size)

    async def _receive(
        self, max_bytes: int, *, schedule: bool = True, on_wait: Callable[[], object] | None = None
    ) -> bytes:
        """:meth:`receive_some` with two options for trio_zc.http's loop, which reads a request at a time.

        Without *schedule* (for a caller that has just let other tasks run),
        bytes already there return at once, without a second schedule point
        in a row (it costs about as much as the receive); it is still a
        cancellation point, and a wait still lets other tasks run.
        *on_wait* is called before each wait for bytes: a timeout that
        matters only if the call waits can be armed there, and cost nothing
        when the bytes are already there.
        """
        self._check_not_forked()
        with self._receive_conflict:
            self._check_open()
            return await self._channel.receive_some(max_bytes, schedule, on_wait)

    # -- closing ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the stream, keeping the memory of sends in flight safe.

        Waits up to *drain_timeout* for the kernel to report sends in flight
        complete (the socket stays open meanwhile, since the kernel drops the
        completions of closed sockets), then forces the connection down;
        memory the kernel never reports done is quarantined. Cancelling
        skips the wait, never the safety.

        In a process forked from the stream's, it closes only that process's
        copy of the descriptor: the connection, its sends in flight and
        their completions stay the parent's.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if os.getpid() != self._pool._pid:
            # No drain (the completions are the parent's to read), no reset
            # (the connection is the parent's), no unregistering from the
            # kernel's epoll (shared with the parent): just our descriptor.
            self._channel.transport.close()
            await trio.lowlevel.checkpoint()
            return
        if self._room is not None:
            self._room.set()  # a send waiting for room gives up: the stream is closed
        await self._channel.aclose(self._drain_timeout)

    # -- introspection ----------------------------------------------------------

    def statistics(self) -> StreamStatistics:
        """A snapshot of what this stream sent and how."""
        return StreamStatistics(
            kernel=self._pool._kernel.name,
            zerocopy_enabled=self._decider.zerocopy_enabled,
            min_zerocopy_bytes=self._pool._policy.min_zerocopy_bytes,
            sends_in_flight=self._channel.sends_in_flight,
            fallbacks=tuple(self._decider.fallbacks.items()),
            sent=SendStatistics.of(self._counters),
        )

    def getsockname(self) -> object:
        """The local address of the underlying socket."""
        self._check_open()
        return self._channel.transport.sockname()

    def getpeername(self) -> object:
        """The remote address of the underlying socket."""
        self._check_open()
        return self._channel.transport.peername()


own_abc_state(ZeroCopyStream)  # the compiled build: see own_abc_state
