"""The mock kernel's simulated wire: one connection's buffers, transmission and completion records.

Rules
=====

1. Each direction has a send buffer (bytes accepted but not yet
   transmitted) and a receive buffer (bytes transmitted but not yet read).
   Transmission stops while the receive buffer is full, and sends block
   while the send buffer is full, as with TCP.
2. A zero-copy send's bytes are read from the lease's memory only when they
   are transmitted, as a NIC reads them; a copying send takes its bytes at
   once.
3. A zero-copy send completes once all of it was transmitted (or dropped
   by a reset): its record joins the queue as Linux queues one, extending
   the tail record's range when it can (coalescing).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final, Protocol

import trio
from trio.lowlevel import current_task, reschedule, wait_task_rescheduled

if TYPE_CHECKING:
    from .._kernels._completion import CompletionChannel
    from ._sends import MockSend

_MASK: Final = 0xFFFFFFFF


class Pump(Protocol):
    """What a connection needs of the mock kernel that carries it (:class:`~trio_zc.testing.MockKernel`).

    The wire knows the kernel only through this, so that the kernel may
    import the wire and not the other way round.
    """

    #: Whether zero-copy sends record where the application made them.
    call_sites: bool

    def wake(self, conn: _Connection | None = None) -> None:
        """Something changed on *conn*: pump it if it has work."""

    def wake_busy(self, conn: _Connection) -> None:
        """*conn* has work: pump it."""


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
                reschedule(task)

    async def wait(self) -> None:
        """Wait for the next :meth:`wake` (a checkpoint: it always blocks)."""
        task = current_task()
        tasks = self._tasks
        tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await wait_task_rescheduled(abort)


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

    def __init__(self, kernel: Pump, name: str, socket_buffer: int, receive_buffer: int) -> None:
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
        self.sends: dict[int, MockSend] = {}  # by counter value
        self.channel: CompletionChannel | None = None
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
            elif seg.data is None and send is not None and send.head_view is not None:
                buffer += send.read(done, n)  # a head, then the lease's bytes
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
