"""The mock kernel: zero-copy's hard cases, on demand and deterministic.

A :class:`MockKernel` plugs into a pool like a real kernel
(``open_pool(kernel=mock)``); :meth:`MockKernel.open_stream` gives a
:class:`~trio_zc.ZeroCopyStream` and a :class:`MockPeer`, the far end of an
in-memory connection, which a test reads from like a client would.

How it behaves like a real NIC and kernel:

- A zero-copy send is *accepted* (it takes a counter value and the lease
  is in flight) but its bytes are *read* from the lease's memory only when
  they are transmitted, which is when the peer has room and the test has
  not held transmission. A copying send takes its bytes at once.
- After transmission, the send's completion is queued as the kernel queues
  it: a record ``[lo, hi]`` of counter values, extending the range at the
  tail of the queue when it can (coalescing). Records travel through the
  same parser and tracker as the real kernel's error-queue records.
- At send time it keeps a copy of the memory sent, and at completion it
  compares the memory with it: a change means the application wrote into
  memory the kernel was still reading, and raises
  :class:`PrematureReuseError` naming the lease and where it was sent.
- Each direction has a send buffer (*socket_buffer* bytes accepted but
  not yet transmitted) and a receive buffer (*receive_buffer* bytes
  transmitted but not yet read). Transmission stops while the receive
  buffer is full (a peer that does not read), and sends block while the
  send buffer is full, as with TCP. Completions come only for sends fully
  transmitted, so a stalled peer leaves sends in flight.

Controls (on the kernel for every connection, or on a :class:`MockPeer` for
one): hold and release transmission and completions; deliver completions
coalesced, reversed or marked COPIED; deliver any raw range; lose
completions; accept only part of a send; fail sends with ENOBUFS, EAGAIN,
ECONNRESET or EPIPE; make the peer stop reading, or drop everything it
gets; reset the connection.
Nothing waits on real time, so tests run the same under
:class:`trio.testing.MockClock` with autojump.
"""

from __future__ import annotations

import collections
import errno as errno_module
import itertools
import os
import socket
import sys
from collections.abc import Iterator
from typing import Final

import trio

from .._kernels._completion_channel import Ancdata, CompletionChannel, settle_all
from .._kernels._errqueue import ZeroCopyCompletion, pack_zerocopy_record
from .._kernels._base import Channel, Kernel, SendableLease
from .._stats import Counters
from .._conflict import ConflictDetector
from .._pool import BufferPool
from .._stream import ZeroCopyStream

_MASK: Final = 0xFFFFFFFF
_PACKAGE_DIRS: Final = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    os.path.dirname(os.path.abspath(trio.__file__)),
)
#: The send errors a test may inject.
INJECTABLE_ERRNOS: Final = frozenset(
    {errno_module.ENOBUFS, errno_module.EAGAIN, errno_module.ECONNRESET, errno_module.EPIPE}
)


class PrematureReuseError(AssertionError):
    """Memory changed while the kernel was still reading it.

    The mock kernel hashes every zero-copy send's bytes when the send is
    made and again when it completes; this is raised when they differ. In a
    real program the client would have received the new bytes instead of
    the old ones. It usually means an adopted buffer was written before
    :meth:`~trio_zc.SealedLease.wait_reusable` returned.
    """


class MockSend:
    """One zero-copy send call as the mock kernel saw it."""

    # A plain slotted class rather than attrs, and the two strings made only
    # when read: one of these is built on every zero-copy send, and the
    # strings are wanted only by a failure message or a test.
    __slots__ = {
        "counter": "The counter value the call took.",
        "nbytes": "Bytes in the call.",
        "connection": "The connection's name.",
        "transmitted": "Whether the bytes were read from memory and put on the wire yet.",
        "view": "The memory the call reads, as a read-only view, until its completion arrives; then None.",
        "snapshot": "The call's bytes as they were when it was made.",
        "record": "The lease record the call read (what the kernel sees of it).",
        "_as_sent": None,
        "_site": None,
        "_lease": None,
        "_where": None,
    }
    __match_args__ = (
        "counter",
        "lease",
        "nbytes",
        "where",
        "connection",
        "transmitted",
        "view",
        "snapshot",
        "record",
    )

    counter: int
    nbytes: int
    connection: str
    transmitted: bool
    view: memoryview | None
    snapshot: bytes
    record: SendableLease | None

    def __init__(
        self,
        counter: int,
        nbytes: int,
        connection: str,
        view: memoryview | None,
        snapshot: bytes,
        record: SendableLease,
        site: tuple[str, int, str] | None,
    ) -> None:
        self.counter = counter
        self.nbytes = nbytes
        self.connection = connection
        self.transmitted = False
        self.view = view
        self.snapshot = snapshot
        self.record = record
        # What the description is made of, taken now: it names the lease as
        # it was when sent (its state then), not as it is when read.
        self._as_sent = record.state
        self._site = site
        self._lease: str | None = None
        self._where: str | None = None

    @property
    def lease(self) -> str:
        """The lease, as ``"lease #N (...)"``, in the state it was sent in."""
        if self._lease is None:
            record = self.record
            assert record is not None
            self._lease = record.describe(self._as_sent)  # as it was when sent
        return self._lease

    @property
    def where(self) -> str:
        """The application's call site that made the send (``file:line in function``)."""
        if self._where is None:
            site = self._site
            if site is _NOT_RECORDED:
                self._where = "<not recorded>"
            elif site is None:
                self._where = "<unknown>"
            else:
                self._where = f"{site[0]}:{site[1]} in {site[2]}"
        return self._where

    def __repr__(self) -> str:
        return (
            f"MockSend(counter={self.counter!r}, lease={self.lease!r}, nbytes={self.nbytes!r},"
            f" where={self.where!r}, connection={self.connection!r}, transmitted={self.transmitted!r})"
        )


#: The call site of a send made while ``MockKernel(call_sites=False)``.
_NOT_RECORDED: Final = ("<not recorded>", 0, "")

#: Whether a source file is this package's or Trio's, by file name.
_INSIDE: dict[str, bool] = {}


def _call_site() -> tuple[str, int, str] | None:
    """Where the application made the current send: file, line and function."""
    # This runs on every zero-copy send. Walking frames by hand, rather than
    # traceback.extract_stack(), avoids reading source lines for every frame;
    # remembering each file's answer avoids a prefix test per frame (a send
    # starts several frames deep in the package); and the text is made only
    # when someone reads it.
    frame = sys._getframe(2)
    inside = _INSIDE
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        known = inside.get(filename)
        if known is None:
            known = inside[filename] = filename.startswith(_PACKAGE_DIRS)
        if not known:
            return filename, frame.f_lineno, code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return None


class _Segment:
    """Bytes queued for transmission: a zero-copy send (read lazily) or copied bytes."""

    __slots__ = ("data", "send", "nbytes", "done")

    def __init__(self, data: bytes | None, send: MockSend | None, nbytes: int) -> None:
        self.data = data
        self.send = send
        self.nbytes = nbytes
        #: Bytes of it already transmitted.
        self.done = 0


class _Waiters:
    """Tasks parked until the next :meth:`wake`.

    What a fresh :class:`trio.Event` per change gives, without making one
    and setting it on every change, most of which nobody waits for.
    """

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] = []

    def wake(self) -> None:
        """Wake every task parked in :meth:`wait`."""
        if self._tasks:
            tasks, self._tasks = self._tasks, []
            for task in tasks:
                trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Wait for the next :meth:`wake` (a checkpoint: it always blocks)."""
        task = trio.lowlevel.current_task()
        tasks = self._tasks
        tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _Pipe(_Waiters):
    """Bytes from one end to the other: a buffer, EOF and breakage.

    :meth:`wake` it when something changed; :meth:`wait` for that.
    """

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()
        self.eof = False
        self.broken = False


class _Connection:
    """The shared state of one mock connection (both directions)."""

    def __init__(self, kernel: MockKernel, name: str, socket_buffer: int, receive_buffer: int) -> None:
        self.kernel = kernel
        self.name = name
        self.socket_buffer = socket_buffer
        self.receive_buffer = receive_buffer
        # Stream -> peer: queued segments, then the peer's receive buffer.
        self.queued: collections.deque[_Segment] = collections.deque()
        # What is left to transmit of them, kept as they change: summing the
        # queue on every send made a deep queue cost O(segments) per call.
        self.queued_bytes = 0
        self.to_peer = _Pipe()
        # Peer -> stream.
        self.to_stream = _Pipe()
        # Completion records waiting for the channel: [lo, hi, copied].
        self.records: collections.deque[list[object]] = collections.deque()
        self.sends: dict[int, MockSend] = {}
        self.channel: MockChannel | None = None
        # Controls.
        self.hold_transmission = False
        self.hold_completions = False
        self.lose_completions = False
        self.copied = False
        self.accept_limit: int | None = None
        self.failures: collections.deque[int] = collections.deque()
        self.fail_after = 0
        self.peer_reading = True
        self.reset = False
        # A peer that drops what arrives (MockPeer.discard), and how much it dropped.
        self.discarding = False
        self.discarded = 0

    # -- accounting -------------------------------------------------------------

    @property
    def room(self) -> int:
        """Bytes the stream may still send before its sends block."""
        return max(self.socket_buffer - self.queued_bytes, 0)

    @property
    def peer_room(self) -> int:
        """Bytes the peer may still send before its sends block."""
        return max(self.receive_buffer - len(self.to_stream.buffer), 0)

    @property
    def busy(self) -> bool:
        """Whether :meth:`pump` would do anything now."""
        return bool(
            (self.queued and not self.hold_transmission)
            or (self.records and not self.hold_completions and self.channel is not None)
        )

    # -- the wire ---------------------------------------------------------------

    def transmit(self, nbytes: int | None = None) -> int:
        """Move queued bytes into the peer's receive buffer, reading memory now.

        Moves at most *nbytes* (default: as much as fits); a zero-copy send
        completes once all of it was moved.
        """
        queued = self.queued
        buffer = self.to_peer.buffer
        moved = 0
        if nbytes is not None:
            limit = nbytes
        elif self.discarding:
            limit = self.queued_bytes  # nothing fills up: everything goes
        else:
            limit = self.receive_buffer
        while queued and moved < limit:
            n = min(limit - moved, self.receive_buffer - len(buffer))
            if n <= 0:
                break
            seg = queued[0]
            send = seg.send
            done = seg.done
            n = min(n, seg.nbytes - done)
            source: bytes | memoryview | None = seg.data
            if source is None and send is not None:
                source = send.view  # read from the lease's memory now
            assert source is not None
            if self.discarding:
                self.discarded += n  # read by nobody: no need to read the memory
            elif done == 0 and n == len(source):
                buffer += source
            else:
                buffer += source[done : done + n]
            seg.done = done = done + n
            self.queued_bytes -= n
            moved += n
            if done == seg.nbytes:
                queued.popleft()
                if send is not None:
                    send.transmitted = True
                    self.queue_completion(send.counter)
        if moved:
            self.to_peer.wake()
        return moved

    def queue_completion(self, counter: int) -> None:
        if self.lose_completions:
            return
        if self.records:
            tail = self.records[-1]
            hi = tail[1]
            assert isinstance(hi, int)
            if (hi + 1) & _MASK == counter and tail[2] == self.copied:
                tail[1] = counter  # the kernel extends the tail record
                return
        self.records.append([counter, counter, self.copied])

    def drop_queued(self) -> None:
        """What a reset does to data not yet on the wire: freed, and reported."""
        for seg in self.queued:
            if seg.send is not None:
                self.queue_completion(seg.send.counter)
        self.queued.clear()
        self.queued_bytes = 0

    def pump(self) -> None:
        """Automatic progress: transmit what fits, deliver completions."""
        if self.queued and not self.hold_transmission:
            self.transmit()
        if self.records and not self.hold_completions and self.channel is not None:
            self.channel.drain()

    def break_connection(self) -> None:
        self.reset = True
        self.drop_queued()
        self.to_peer.broken = True
        self.to_stream.broken = True
        self.to_peer.wake()
        self.to_stream.wake()
        self.kernel.wake(self)


class MockChannel(CompletionChannel):
    """The stream's end of a mock connection."""

    def __init__(self, conn: _Connection, counters: Counters, start: int) -> None:
        super().__init__(counters)
        self.conn = conn
        self.init_tracking(start)
        self.eof_sent = False
        self._accepted: memoryview | None = None
        self._stale: list[MockSend] = []

    # -- completions ------------------------------------------------------------

    def read_records(self) -> Iterator[tuple[Ancdata, bool]]:
        # A generator, not a list: each record leaves the queue only when the
        # parser takes it, so a PrematureReuseError raised by one record
        # leaves the rest queued, and a hold set meanwhile is respected.
        conn = self.conn
        records = conn.records
        while records and not conn.hold_completions:
            lo, hi, copied = records.popleft()
            assert isinstance(lo, int) and isinstance(hi, int)
            yield [pack_zerocopy_record(lo, hi, bool(copied))], False

    def record_call(self, lease: SendableLease, nbytes: int) -> tuple[tuple[SendableLease, int], int]:
        item, counter = super().record_call(lease, nbytes)
        view, self._accepted = self._accepted, None
        assert view is not None and len(view) == nbytes
        conn = self.conn
        send = MockSend(
            counter,
            nbytes,
            conn.name,
            view,
            # A copy, not a hash: copying and comparing cost a few percent
            # of hashing (SHA-256 ran at under 2 GB/s here), and the copy is
            # exact. It holds at most what is in flight, which the pool bounds.
            view.tobytes(),
            lease,
            _call_site() if conn.kernel.call_sites else _NOT_RECORDED,
        )
        conn.sends[id(item)] = send
        conn.queued.append(_Segment(None, send, nbytes))
        conn.queued_bytes += nbytes
        if conn.hold_transmission:
            conn.kernel.wake(conn)
        else:
            conn.kernel.wake_busy(conn)  # what wake() decides, known here: it has work
        return item, counter

    def before_release(self, items: list[tuple[SendableLease, int]]) -> None:
        sends = self.conn.sends
        stale = []
        for item in items:
            send = sends.pop(id(item), None)
            if send is None:  # pragma: no cover - every call is registered
                continue
            view = send.view
            assert view is not None
            if view.tobytes() != send.snapshot:
                stale.append(send)
            if not send.transmitted:
                # Completed before it went out (a test delivered the record
                # early): keep what it held, since the memory is about to go.
                for seg in self.conn.queued:
                    if seg.send is send:
                        seg.data = bytes(view)
            view.release()
            send.view = None
        if stale:
            # Reported after the release: the test fails, but the pool stays sound.
            self._stale.extend(stale)

    def complete(self, record: ZeroCopyCompletion) -> None:
        super().complete(record)
        if self._stale:
            stale, self._stale = self._stale, []
            raise self._premature(stale)

    @staticmethod
    def _premature(stale: list[MockSend]) -> PrematureReuseError:
        first = stale[0]
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        return PrematureReuseError(
            f"{first.lease} changed while the kernel was still reading it: zero-copy send"
            f" #{first.counter} of {first.nbytes} bytes on {first.connection}, made at"
            f" {first.where}{more}. Do not write an adopted buffer before"
            " wait_reusable() returns."
        )

    # -- sending ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self.conn.reset:
            raise trio.BrokenResourceError("connection reset by peer (mock)") from OSError(
                errno_module.ECONNRESET, "Connection reset by peer"
            )
        if self.conn.to_peer.broken:
            raise trio.BrokenResourceError("the peer closed the connection (mock)") from OSError(
                errno_module.EPIPE, "Broken pipe"
            )

    def zerocopy_call(self, data: memoryview) -> int:
        conn = self.conn
        self._check_open()
        if conn.failures and conn.fail_after == 0:
            err = conn.failures.popleft()
            if err == errno_module.EAGAIN:
                raise BlockingIOError(err, os.strerror(err))
            if err in (errno_module.ECONNRESET, errno_module.EPIPE):
                conn.break_connection()
            raise OSError(err, os.strerror(err))
        if conn.fail_after:
            conn.fail_after -= 1
        n = min(len(data), conn.room)
        if conn.accept_limit is not None:
            n = min(n, conn.accept_limit)
        if n <= 0:
            raise BlockingIOError(errno_module.EAGAIN, "mock socket buffer full")
        # Keep a view of what was accepted; the bytes are read at transmission.
        self._accepted = data[:n]
        return n

    def copy_now(self, data: memoryview) -> int:
        conn = self.conn
        self._check_open()
        n = min(len(data), conn.room)
        if n:
            conn.queued.append(_Segment(bytes(data[:n]), None, n))
            conn.queued_bytes += n
            conn.kernel.wake(conn)
            self.counters.copied(n)
        return n

    async def wait_writable(self) -> None:
        self.drain()
        conn = self.conn
        while True:
            self._check_open()
            if conn.room > 0:
                await trio.lowlevel.checkpoint()
                return
            await conn.to_peer.wait()

    def send_eof(self) -> None:
        if self.eof_sent:
            return
        self._check_open()
        self.eof_sent = True
        self.conn.to_peer.eof = True
        self.conn.to_peer.wake()

    # -- receiving --------------------------------------------------------------

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        pipe = self.conn.to_stream
        while True:
            if self.closed:
                raise trio.ClosedResourceError("the stream was closed")
            if pipe.buffer:
                data = bytes(pipe.buffer[:max_bytes])
                del pipe.buffer[:max_bytes]
                pipe.wake()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            if self.conn.reset:
                raise trio.BrokenResourceError("connection reset by peer (mock)")
            if pipe.eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            self.drain()
            await pipe.wait()

    # -- closing ----------------------------------------------------------------

    def abort(self) -> None:
        if self.closed:
            # Closed: what is queued still goes out, then EOF (as for a real
            # socket, whose descriptor may serve another connection by now).
            return
        self.conn.break_connection()
        self.drain()

    def close_transport(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        # Whatever is still queued goes out as the peer makes room (the
        # kernel's task keeps pumping); then the peer sees EOF.
        conn.to_peer.eof = True
        conn.to_peer.wake()
        conn.to_stream.wake()
        conn.kernel.wake(conn)


class MockPeer(trio.abc.HalfCloseableStream):
    """The far end of a mock connection, and the test's controls for it.

    Read what the stream "transmitted" with :meth:`receive_some`; send to
    the stream with :meth:`send_all`. The control methods act on this
    connection only; the same controls on :class:`MockKernel` act on all.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._closed = False
        self._eof_sent = False
        self._receive_conflict = ConflictDetector("another task is receiving on this MockPeer")
        self._send_conflict = ConflictDetector("another task is sending on this MockPeer")

    def __repr__(self) -> str:
        return f"<trio_zc.testing.MockPeer {self._conn.name}>"

    # -- the stream interface ---------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = 65536
        elif max_bytes.__class__ is not int:
            if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
                raise TypeError("max_bytes must be an int")
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            conn = self._conn
            pipe = conn.to_peer
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this MockPeer was closed")
                if conn.peer_reading:
                    buffer = pipe.buffer
                    if buffer:
                        if len(buffer) <= max_bytes:
                            data = bytes(buffer)
                            buffer.clear()
                        else:
                            data = bytes(buffer[:max_bytes])
                            del buffer[:max_bytes]
                        pipe.wake()
                        conn.kernel.wake(conn)
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return data
                    if pipe.broken:
                        raise trio.BrokenResourceError("connection reset (mock)")
                    if pipe.eof and not conn.queued:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return b""
                await pipe.wait()

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this MockPeer was closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        channel = self._conn.channel
        if self._conn.reset or (channel is not None and channel.closed):
            raise trio.BrokenResourceError("the stream's end of the connection is closed (mock)")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            conn = self._conn
            with memoryview(data) as view, view.cast("B") as flat:
                sent = 0
                while True:
                    self._check_sendable()
                    n = min(len(flat) - sent, conn.peer_room)
                    if n:
                        conn.to_stream.buffer += flat[sent : sent + n]
                        conn.to_stream.wake()
                        sent += n
                    if sent == len(flat):
                        return
                    await conn.to_stream.wait()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            conn = self._conn
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this MockPeer was closed")
                if conn.peer_room or conn.reset or (conn.channel is not None and conn.channel.closed):
                    return
                await conn.to_stream.wait()

    async def send_eof(self) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this MockPeer was closed")
            if not self._eof_sent:
                self._eof_sent = True
                self._conn.to_stream.eof = True
                self._conn.to_stream.wake()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            conn = self._conn
            conn.to_peer.broken = True
            conn.to_stream.eof = True
            # Unread data is dropped, and its zero-copy sends reported done
            # (the kernel frees them when the peer goes away).
            conn.drop_queued()
            conn.to_peer.buffer.clear()
            conn.to_peer.wake()
            conn.to_stream.wake()
            conn.kernel.wake(conn)
        await trio.lowlevel.checkpoint()

    async def receive_exactly(self, nbytes: int) -> bytes:
        """Receive exactly *nbytes*; :class:`EOFError` if the stream ends first."""
        buf = bytearray()
        while len(buf) < nbytes:
            chunk = await self.receive_some(nbytes - len(buf))
            if not chunk:
                raise EOFError(f"EOF after {len(buf)} of {nbytes} bytes")
            buf += chunk
        return bytes(buf)

    # -- controls ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The connection's name (as in :attr:`MockSend.connection`)."""
        return self._conn.name

    @property
    def sends(self) -> list[MockSend]:
        """Zero-copy sends of this connection not yet completed, oldest first."""
        return sorted(self._conn.sends.values(), key=lambda s: s.counter)

    @property
    def buffered(self) -> int:
        """Bytes queued for transmission plus bytes transmitted but not yet read."""
        return self._conn.queued_bytes + len(self._conn.to_peer.buffer)

    @property
    def discarded(self) -> int:
        """Bytes dropped on arrival since :meth:`discard`."""
        return self._conn.discarded

    def discard(self) -> None:
        """Make this peer a sink: every byte is dropped as it arrives.

        As a client that reads as fast as the kernel delivers, without a
        task doing the reading: for tests (and benchmarks) that only need
        the other end to keep up. Bytes already waiting are dropped too;
        :meth:`receive_some` returns only ``b""``, at EOF. Sends still
        complete only once transmitted, and a lease written while in
        flight is still reported.
        """
        conn = self._conn
        conn.discarding = True
        conn.discarded += len(conn.to_peer.buffer)
        conn.to_peer.buffer.clear()
        conn.to_peer.wake()
        conn.kernel.wake(conn)

    def stop_reading(self) -> None:
        """Make :meth:`receive_some` wait; the connection's buffer fills and senders block."""
        self._conn.peer_reading = False

    def resume_reading(self) -> None:
        """Undo :meth:`stop_reading`: :meth:`receive_some` takes what arrives again."""
        self._conn.peer_reading = True
        self._conn.to_peer.wake()

    def hold_transmission(self) -> None:
        """Leave zero-copy sends accepted but unread until :meth:`transmit`."""
        self._conn.hold_transmission = True

    def transmit(self, nbytes: int | None = None) -> int:
        """Transmit queued sends (at least *nbytes*, default all); bytes moved.

        Reads each zero-copy send's memory now, as a NIC would. Also lifts
        :meth:`hold_transmission`'s hold if *nbytes* is None.
        """
        if nbytes is None:
            self._conn.hold_transmission = False
        else:
            _check_count("transmit's nbytes", nbytes, 0)
        moved = self._conn.transmit(nbytes)
        self._conn.kernel.wake(self._conn)
        return moved

    def hold_completions(self) -> None:
        """Queue completions instead of delivering them."""
        self._conn.hold_completions = True

    def release_completions(
        self, *, coalesce: bool = False, reverse: bool = False, copied: bool | None = None
    ) -> int:
        """Deliver the queued completions now (and stop holding); records delivered.

        *coalesce* merges them into ranges as long as possible, *reverse*
        delivers them newest first, *copied* overrides the COPIED flag.
        """
        conn = self._conn
        records = list(conn.records)
        conn.records.clear()
        if copied is not None:
            for record in records:
                record[2] = copied
        if coalesce:
            records = _coalesce(records)
        if reverse:
            records.reverse()
        conn.records.extend(records)
        conn.hold_completions = False
        n = len(records)
        if conn.channel is not None:
            conn.channel.drain()
        return n

    def complete(self, lo: int, hi: int, *, copied: bool = False) -> None:
        """Deliver one completion record ``[lo, hi]`` now, whatever it says.

        Ranges that are not outstanding are refused by the library (and
        counted as malformed), exactly as garbage from a real kernel would be.
        """
        _check_count("lo", lo, None)
        _check_count("hi", hi, None)
        conn = self._conn
        # Held records keep what this one does not report (each call is
        # reported once), even where they wrap or overlap it only in part.
        held = [part for r in conn.records for part in _outside(r, lo, hi)]
        conn.records.clear()
        conn.records.append([lo & _MASK, hi & _MASK, copied])
        hold, conn.hold_completions = conn.hold_completions, False
        if conn.channel is not None:
            conn.channel.drain()
        conn.hold_completions = hold
        conn.records.extend(held)

    def lose_completions(self) -> None:
        """Drop every completion from now on, as after a closed socket."""
        self._conn.lose_completions = True
        self._conn.records.clear()

    def mark_copied(self, copied: bool = True) -> None:
        """Mark completions produced from now on COPIED (as loopback does)."""
        self._conn.copied = copied

    def accept_at_most(self, nbytes: int | None) -> None:
        """Make each send call accept at most *nbytes* (None: no limit)."""
        if nbytes is not None:
            _check_count("accept_at_most's nbytes", nbytes, None)
        if nbytes is not None and nbytes < 1:
            raise ValueError("accept_at_most needs a positive size or None")
        self._conn.accept_limit = nbytes

    def fail_sends(self, err: int, *, count: int = 1, after: int = 0) -> None:
        """Fail *count* zero-copy send calls with *err*, after *after* more succeed.

        *err* is one of ENOBUFS, EAGAIN, ECONNRESET or EPIPE. ECONNRESET and
        EPIPE also break the connection, as they do for real.
        """
        if err not in INJECTABLE_ERRNOS:
            raise ValueError(f"fail_sends takes ENOBUFS, EAGAIN, ECONNRESET or EPIPE, not {err!r}")
        _check_count("count", count, 1)
        _check_count("after", after, 0)
        self._conn.failures.extend([err] * count)
        self._conn.fail_after = after

    def reset(self) -> None:
        """Reset the connection, as a peer that crashed would."""
        self._conn.break_connection()


def _check_count(name: str, value: object, minimum: int | None) -> None:
    """Refuse a control's argument that is not an int (of at least *minimum*)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


def _outside(record: list[object], lo: int, hi: int) -> list[list[object]]:
    """The parts of a record ``[rlo, rhi, copied]`` outside ``[lo, hi]``, modulo 2**32."""
    rlo, rhi, copied = record
    assert isinstance(rlo, int) and isinstance(rhi, int)
    # Offsets from rlo: the record is [0, n); the range may wrap past 2**32.
    n = ((rhi - rlo) & _MASK) + 1
    start = (lo - rlo) & _MASK
    end = start + ((hi - lo) & _MASK) + 1
    keep = [(0, n)]
    for a, b in ((start, min(end, _MASK + 1)), (0, max(end - _MASK - 1, 0))):
        keep = [(k0, k1) for k0, k1 in ((k, min(e, a)) for k, e in keep) if k0 < k1] + [
            (k0, k1) for k0, k1 in ((max(k, b), e) for k, e in keep) if k0 < k1
        ]
    return [[(rlo + k0) & _MASK, (rlo + k1 - 1) & _MASK, copied] for k0, k1 in sorted(keep)]


def _coalesce(records: list[list[object]]) -> list[list[object]]:
    out: list[list[object]] = []
    for record in records:
        if out:
            tail = out[-1]
            hi, lo = tail[1], record[0]
            assert isinstance(hi, int) and isinstance(lo, int)
            if (hi + 1) & _MASK == lo and tail[2] == record[2]:
                tail[1] = record[1]
                continue
        out.append(list(record))
    return out


class MockKernel(Kernel):
    """A kernel for tests: in-memory connections with every hard case on demand.

    *counter_start* is the first zero-copy counter value of each connection
    (start near 2**32 to test wrap-around); *socket_buffer* and
    *receive_buffer* are each connection's send and receive buffers in bytes
    (both directions). Every stream made by :meth:`open_stream`
    uses zero-copy for large sends unless the pool's policy says otherwise.

    *call_sites* (default on) records where the application made each
    zero-copy send, for :class:`PrematureReuseError`'s message and
    :attr:`MockSend.where`. It walks the stack on every send, the mock's
    dearest habit (about 1.5 µs a send on a small machine); turning it off
    makes ``where`` read ``<not recorded>`` and changes nothing else: the
    check for premature reuse stays.

    One MockKernel serves one pool, for its whole life: :func:`~trio_zc.open_pool`
    refuses (:exc:`ValueError`) a MockKernel that already serves a pool, open
    or closed. Its connections, their completions and its background task
    belong to that pool, whose close forces down every connection of its
    kernel still busy -- on a shared kernel, the other pool's too. Make one
    MockKernel per pool (the ``mock_kernel`` fixture is a fresh one per test).
    """

    name = "mock"

    def __init__(
        self,
        *,
        counter_start: int = 0,
        socket_buffer: int = 4 * 2**20,
        receive_buffer: int = 4 * 2**20,
        call_sites: bool = True,
    ) -> None:
        if call_sites.__class__ is not bool:
            raise TypeError(f"call_sites must be True or False, not {type(call_sites).__name__}")
        if not isinstance(counter_start, int) or isinstance(counter_start, bool) or not 0 <= counter_start <= _MASK:
            raise ValueError("counter_start must be an int in [0, 2**32)")
        for name, value in (("socket_buffer", socket_buffer), ("receive_buffer", receive_buffer)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        self.counter_start = counter_start
        self.socket_buffer = socket_buffer
        self.receive_buffer = receive_buffer
        self.call_sites = call_sites
        self.connections: list[_Connection] = []
        # Whether run() has work, and run() waiting for it.
        self._work = False
        self._runners = _Waiters()
        self._dirty: dict[_Connection, None] = {}
        self._names = itertools.count(1)
        self.peers: list[MockPeer] = []

    def open_channel(self, sock: socket.socket, counters: Counters) -> Channel:
        sock.close()
        raise TypeError(
            "the mock kernel does not use sockets: make streams with mock_kernel.open_stream(pool)"
        )

    def open_stream(
        self, pool: BufferPool, *, drain_timeout: float | None = None
    ) -> tuple[ZeroCopyStream, MockPeer]:
        """A stream on *pool* and the peer at the other end of its connection."""
        if not isinstance(pool, BufferPool):
            raise TypeError(f"open_stream() needs a BufferPool, not {type(pool).__name__}")
        if pool._kernel is not self:
            raise ValueError("open_stream() needs a pool opened with this MockKernel")
        conn = _Connection(
            self, f"mock connection {next(self._names)}", self.socket_buffer, self.receive_buffer
        )

        def open_channel(counters: Counters) -> Channel:
            channel = MockChannel(conn, counters, self.counter_start)
            conn.channel = channel
            return channel

        stream = ZeroCopyStream._over(pool, open_channel, drain_timeout)
        self.connections.append(conn)
        peer = MockPeer(conn)
        self.peers.append(peer)
        return stream, peer

    def wake(self, conn: _Connection | None = None) -> None:
        """Something changed on *conn* (default: on every connection)."""
        if conn is None:
            self._dirty.update(dict.fromkeys(self.connections))
            self._start()
        elif conn.busy:
            self.wake_busy(conn)
        # Otherwise nothing for the task to do: waking it anyway cost a task
        # switch on most sends. Whatever later gives it work wakes it.

    def wake_busy(self, conn: _Connection) -> None:
        """:meth:`wake` for a connection known to be busy (every send's case)."""
        self._dirty[conn] = None
        if not self._work:
            self._start()

    def _start(self) -> None:
        self._work = True
        self._runners.wake()

    async def run(self) -> None:
        while True:
            # As trio.Event.wait() did: a checkpoint when work is waiting.
            if self._work:
                await trio.lowlevel.checkpoint()
            else:
                await self._runners.wait()
            self._work = False
            # Only the connections something happened on, in the order it
            # happened: pumping every connection on every wake made a mock
            # with many connections cost O(connections) per send.
            dirty, self._dirty = self._dirty, {}
            for conn in dirty:
                conn.pump()

    async def abort_in_flight(self) -> None:
        await settle_all([conn.channel for conn in self.connections if conn.channel is not None])
        await trio.lowlevel.checkpoint()

    # -- controls for every connection -----------------------------------------

    def hold_completions(self) -> None:
        """Hold completions on every connection (see :meth:`MockPeer.hold_completions`)."""
        for peer in self._live_peers():
            peer.hold_completions()

    def release_completions(
        self, *, coalesce: bool = False, reverse: bool = False, copied: bool | None = None
    ) -> int:
        """Release held completions everywhere (see :meth:`MockPeer.release_completions`)."""
        return sum(
            peer.release_completions(coalesce=coalesce, reverse=reverse, copied=copied)
            for peer in self._live_peers()
        )

    def hold_transmission(self) -> None:
        """Hold transmission on every connection (see :meth:`MockPeer.hold_transmission`)."""
        for peer in self._live_peers():
            peer.hold_transmission()

    def transmit(self) -> int:
        """Transmit every connection's queued sends, lifting their holds (see :meth:`MockPeer.transmit`); bytes moved."""
        return sum(peer.transmit() for peer in self._live_peers())

    def mark_copied(self, copied: bool = True) -> None:
        """Mark every connection's completions COPIED from now on (see :meth:`MockPeer.mark_copied`)."""
        for peer in self._live_peers():
            peer.mark_copied(copied)

    def _live_peers(self) -> list[MockPeer]:
        return [peer for peer in self.peers if peer._conn in self.connections]
