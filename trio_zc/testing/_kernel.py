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

import itertools
from typing import overload

import trio

from .._mypyc import mypyc_attr, own_abc_state
from .._kernels._base import Channel, CompletionListener, Kernel, Transport
from .._kernels._closing import settle_all
from .._kernels._completion import CompletionChannel
from .._pool import BufferPool
from .._stats import Counters
from .._stream import ZeroCopyStream
from .._validate import RuntimeChecked, check_bool, check_drain_timeout
from ._peer import MockPeer, check_flags
from ._transport import MockTransport
from ._wire import _MASK, _Connection, _Waiters


@mypyc_attr(allow_interpreted_subclasses=True)
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
        counter_start: int | RuntimeChecked = 0,
        socket_buffer: int | RuntimeChecked = 4 * 2**20,
        receive_buffer: int | RuntimeChecked = 4 * 2**20,
        call_sites: bool | RuntimeChecked = True,
    ) -> None:
        self.call_sites: bool = check_bool("call_sites", call_sites)
        if not isinstance(counter_start, int) or isinstance(counter_start, bool) or not 0 <= counter_start <= _MASK:
            raise ValueError("counter_start must be an int in [0, 2**32)")
        sizes: list[int] = []
        for name, value in (("socket_buffer", socket_buffer), ("receive_buffer", receive_buffer)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
            sizes.append(value)
        self.counter_start: int = counter_start
        self.socket_buffer: int = sizes[0]
        self.receive_buffer: int = sizes[1]
        self.connections: list[_Connection] = []
        # Whether run() has work, and run() waiting for it.
        self._work = False
        self._runners = _Waiters()
        self._dirty: dict[_Connection, None] = {}
        self._names = itertools.count(1)
        self.peers: list[MockPeer] = []

    def open_channel(
        self, transport: Transport, counters: Counters, on_completions: CompletionListener
    ) -> Channel:
        if not isinstance(transport, MockTransport) or transport.conn.kernel is not self:
            transport.close()
            raise TypeError(
                "the mock kernel does not use sockets: make streams with mock_kernel.open_stream(pool)"
            )
        channel = CompletionChannel(
            transport, transport, counters, on_completions, counter_start=self.counter_start
        )
        transport.conn.channel = channel
        return channel

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    def open_stream(
        self, pool: BufferPool, *, drain_timeout: float | None = None
    ) -> tuple[ZeroCopyStream, MockPeer]: ...
    def open_stream(
        self, pool: object, *, drain_timeout: object = None
    ) -> tuple[ZeroCopyStream, MockPeer]:
        """A stream on *pool* and the peer at the other end of its connection."""
        if not isinstance(pool, BufferPool):
            raise TypeError(f"open_stream() needs a BufferPool, not {type(pool).__name__}")
        if pool._kernel is not self:
            raise ValueError("open_stream() needs a pool opened with this MockKernel")
        conn = _Connection(
            self, f"mock connection {next(self._names)}", self.socket_buffer, self.receive_buffer
        )

        timeout = None if drain_timeout is None else check_drain_timeout(drain_timeout, or_none=True)
        stream = ZeroCopyStream(MockTransport(conn), pool=pool, drain_timeout=timeout)
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
        await settle_all([conn.channel.closing for conn in self.connections if conn.channel is not None])
        await trio.lowlevel.checkpoint()

    # -- controls for every connection -----------------------------------------

    def hold_completions(self) -> None:
        """Hold completions on every connection (see :meth:`MockPeer.hold_completions`)."""
        for peer in self._live_peers():
            peer.hold_completions()

    def release_completions(
        self,
        *,
        coalesce: bool | RuntimeChecked = False,
        reverse: bool | RuntimeChecked = False,
        copied: bool | RuntimeChecked | None = None,
    ) -> int:
        """Release held completions everywhere (see :meth:`MockPeer.release_completions`)."""
        # RuntimeChecked: the flags arrive as given, for the check (before any
        # connection changes) to refuse what is not True or False in both builds.
        flags = check_flags(coalesce=coalesce, reverse=reverse, copied=copied)
        return sum(
            peer.release_completions(coalesce=flags[0], reverse=flags[1], copied=flags[2])
            for peer in self._live_peers()
        )

    def hold_transmission(self) -> None:
        """Hold transmission on every connection (see :meth:`MockPeer.hold_transmission`)."""
        for peer in self._live_peers():
            peer.hold_transmission()

    def transmit(self) -> int:
        """Transmit every connection's queued sends, lifting their holds (see :meth:`MockPeer.transmit`); bytes moved."""
        return sum(peer.transmit() for peer in self._live_peers())

    def mark_copied(self, copied: bool | RuntimeChecked = True) -> None:
        """Mark every connection's completions COPIED from now on (see :meth:`MockPeer.mark_copied`)."""
        flag = check_bool("copied", copied)
        for peer in self._live_peers():
            peer.mark_copied(flag)

    def _live_peers(self) -> list[MockPeer]:
        return [peer for peer in self.peers if peer._conn in self.connections]


own_abc_state(MockKernel)  # the compiled build: see own_abc_state
