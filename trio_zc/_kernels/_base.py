"""The kernel interface: what a pool's kernel is, and what it sees.

Rules
=====

1. A pool's *kernel* is how its streams' bytes reach the wire: ``copy``,
   ``msg_zerocopy``, ``io_uring``, ``sendfile``, or the mock for tests. (The
   name is the one ``open_pool(kernel=...)`` takes; where this package means
   the operating system, it says Linux.) A kernel object serves one pool for
   its whole life (:meth:`Kernel.claim`).
2. A kernel sees a lease only through :class:`SendableLease` and imports
   nothing from the lease or pool modules. Each of the protocol's methods
   also keeps the pool's counts, so no kernel can move a lease along its
   life cycle behind the pool's back.
3. For each connection a kernel opens one :class:`Channel` over a
   :class:`Transport`. The transport is the connection -- a socket
   (:class:`~trio_zc._kernels._socket.SocketTransport`) or the mock's
   in-memory wire -- and knows nothing of leases; the channel decides how
   each send goes and keeps a lease held while Linux may read it.
4. A channel never acts on its transport once the transport is closed: a
   closed socket's descriptor number may belong to another connection by
   then.
5. Errors come out as Trio's: :class:`trio.BrokenResourceError` for a
   broken connection, :class:`trio.ClosedResourceError` for a closed one.

Theory of operation
===================

A channel's contract, which every kernel is tested against:

- :meth:`Channel.send_copy` returns once every byte was handed over and the
  memory may be reused at once (a plain send copies). It is built on
  :meth:`Channel.copy_now`, which takes what the connection accepts without
  waiting: a send it finishes has read its memory before any other task
  could run.
- :meth:`Channel.zerocopy_now` and :meth:`Channel.send_zerocopy` hand memory
  to Linux without copying, calling ``lease.begin_send()`` once per call
  that may still read the memory and ``lease.end_send()`` for each when
  Linux says it is done; when Linux refuses to pin the memory (ENOBUFS,
  ENOMEM, after one retry), they return what was taken and the stream
  copies the rest.
- Every send method also takes an optional *head*: ordinary bytes that go
  out before the data in the same system call where the kernel can (one
  ``sendmsg`` with two iovecs, one io_uring request), so a response's head
  and body leave together. The counts a send returns cover the head and the
  data. A head given to a zero-copy method is a view of an immutable
  ``bytes`` object (``head.obj``); a channel that lets Linux read it after
  returning keeps that object referenced until the completion covers the
  call, and for ever if the call is quarantined (:func:`~trio_zc._kernels._closing.keep_forever`).
  Head bytes count as copied bytes in the statistics, as a ``send_all``
  of them did: they are not the pool's memory.
- :meth:`Channel.aclose` keeps the memory of in-flight sends safe: it waits
  for their completions up to a deadline, then forces the connection down,
  and quarantines whatever Linux never reported done
  (:mod:`trio_zc._kernels._closing`).

The classes compose rather than inherit across: :class:`Channel` copies
over any transport and is the one base class; each zero-copy channel
derives from it once and owns its other parts (the close protocol, the
refusal retry, its completion tracker). Background work -- a completion
reaper, io_uring's submitter, the mock's pump -- runs in
:meth:`Kernel.run`, which the pool shields from cancellation until its
close has drained.
"""

from __future__ import annotations

import abc
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final, NoReturn, Protocol

import trio

from .._mypyc import caused, mypyc_attr, own_abc_state
from .._arena import PAGE_SIZE
from .._lifecycle import LeaseState
from .._stats import Counters

if TYPE_CHECKING:
    from .._arena import Arena


class SendableLease(Protocol):
    """What a kernel sees of a lease: the only way a kernel touches one (rule 2)."""

    #: Where the lease's bytes start in the pool's arena (0 for adopted memory).
    offset: int
    #: The application's own memory, for an adopted lease (read-only), else None.
    adopted: memoryview | None
    #: The lease's number, for descriptions.
    id: int
    #: Bytes the lease sends.
    nbytes: int
    #: Where it is in its life cycle (for descriptions taken at send time).
    state: LeaseState

    def begin_send(self) -> None:
        """Linux may read the lease's memory from now on, until :meth:`end_send`."""

    def end_send(self) -> None:
        """Linux finished one send of the lease."""

    def quarantine_send(self) -> None:
        """One send will never be reported finished (its connection is gone)."""

    def hold_pages(self) -> None:
        """Linux may keep the lease's pages after every send returned (sendfile):
        they must be replaced, not reused, when the lease comes back."""

    def describe(self, state: LeaseState | None = None) -> str:
        """How errors name the lease (as it was in *state*, default: now)."""


#: How a channel tells its stream what completions said (calls, and whether
#: Linux copied them after all): the stream's zero-copy policy listens.
CompletionListener = Callable[[int, bool], None]


@mypyc_attr(allow_interpreted_subclasses=True)
class Transport(abc.ABC):
    """One connection, as a channel sends through it: a socket, or the mock's wire.

    Everything here is non-blocking but the two waits. A transport knows
    nothing of leases or pools (rule 3); once closed, it does nothing to
    the connection any more (rule 4).
    """

    #: Set once :meth:`close` ran.
    closed: bool = False

    @abc.abstractmethod
    def send(self, data: memoryview) -> int:
        """Copy as much of *data* as the connection takes now; bytes taken.

        Raises BlockingIOError when it takes nothing now, and the Trio error
        (or an OSError, which the channel turns into one) when it is broken.
        """

    @abc.abstractmethod
    def send_with_head(self, head: memoryview, data: memoryview) -> int:
        """One call copying as much of *head*, then of *data*, as the connection takes now.

        Bytes taken, of both together (one ``sendmsg`` with two iovecs on a
        socket). Raises as :meth:`send` does.
        """

    @abc.abstractmethod
    def recv(self, max_bytes: int) -> bytes:
        """Bytes waiting now (``b""`` at end of stream); BlockingIOError when none."""

    @abc.abstractmethod
    async def wait_writable(self) -> None:
        """Wait until :meth:`send` might take something."""

    @abc.abstractmethod
    async def wait_readable(self) -> None:
        """Wait until :meth:`recv` might return something."""

    @abc.abstractmethod
    def shutdown_write(self) -> None:
        """Send end-of-stream."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Reset the connection but keep the transport open (completions may still come).

        Does nothing once closed: only the transport's own open connection
        is ever reset.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close for good (idempotent); completions after this are lost."""

    def check_open(self) -> None:
        """Raise :class:`trio.ClosedResourceError` if :meth:`close` ran.

        For code that goes on with a send after a wait: another task may
        have closed the stream meanwhile.
        """
        if self.closed:
            raise trio.ClosedResourceError("the stream was closed while a send was in progress")

    def let_more_unsent(self) -> None:
        """Let a stream that only copies queue more unsent bytes (sockets; see there)."""

    def sockname(self) -> object:
        """The local address, as the socket module gives it."""
        raise trio.ClosedResourceError("this stream has no socket")

    def peername(self) -> object:
        """The remote address, as the socket module gives it."""
        raise trio.ClosedResourceError("this stream has no socket")


#: Errors that mean the descriptor is gone, not that the connection broke.
_CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


def broken(exc: OSError) -> NoReturn:
    """Raise the Trio stream error for a connection's OSError."""
    if exc.errno in _CLOSED_ERRNOS:
        raise caused(trio.ClosedResourceError("the socket was closed"), exc)
    raise caused(trio.BrokenResourceError(f"the connection broke: {exc}"), exc)


@mypyc_attr(allow_interpreted_subclasses=True)
class Channel:
    """One connection as a kernel sees it; sends by copying. Made by :meth:`Kernel.open_channel`.

    The one base class of every channel: zero-copy channels derive from it
    and add their own way of sending without copying.
    """

    #: Why zero-copy can never be used on this channel (the copy kernel, a
    #: peer on loopback under "auto", not TCP...), or None.
    copy_only_reason: str | None = None
    #: Set while an earlier send is still in Linux's hands after its task
    #: was cancelled (an io_uring request cannot be taken back): every later
    #: send, copied or not, waits for it, or the two sends' bytes would
    #: interleave. Here rather than in the one channel that sets it, so that
    #: :meth:`copy_now` -- once per image -- needs no override: a subclass's
    #: Python method on the per-image path is an interpreted call in the
    #: compiled build.
    send_barrier: trio.Event | None = None

    def __init__(self, transport: Transport, counters: Counters, on_completions: CompletionListener) -> None:
        self.transport = transport
        self.counters = counters
        self.on_completions = on_completions

    # -- copying ------------------------------------------------------------------

    def copy_now(self, data: memoryview, head: memoryview | None = None) -> int:
        """Copy what the connection takes of *head* (if any) then *data* at once, without waiting.

        Bytes taken, of both together, in one system call. Never blocks and
        never yields: 0 when nothing can be taken now. A caller that gets
        every byte taken is done with the memory before any other task can run.
        0 too while :attr:`send_barrier` is set: an earlier send's bytes must go first.
        """
        if self.send_barrier is not None:
            return 0
        try:
            if head is None:
                n = self.transport.send(data)
            else:
                n = self.transport.send_with_head(head, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            broken(exc)
        self.counters.copied(n)
        return n

    async def send_copy(self, data: memoryview, head: memoryview | None = None) -> None:
        """Send every byte of *head* (if any), then of *data*, by copying them."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.send_barrier is not None:
            await self.pass_barrier()
        total = len(data)
        head_left = 0 if head is None else len(head)
        sent = self.copy_now(data, head)  # most sends: one call, no slice
        if sent == head_left + total:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        if head is not None:
            # A short call may stop inside the head: go on from there, head
            # and data together again.
            while sent < head_left:
                await self.wait_writable()  # a checkpoint
                with head[sent:] as rest:
                    sent += self.copy_now(data, rest)
            sent -= head_left
        while sent < total:
            await self.wait_writable()  # a checkpoint
            with data[sent:] as rest:
                sent += self.copy_now(rest)

    async def pass_barrier(self) -> None:
        """Wait for the send behind :attr:`send_barrier`, if any, to end."""
        barrier = self.send_barrier
        if barrier is not None:
            await barrier.wait()
            self.send_barrier = None

    # -- zero-copy (what zero-copy channels override) -------------------------------

    def zerocopy_now(
        self, data: memoryview, lease: SendableLease, head: memoryview | None = None
    ) -> tuple[int, bool]:
        """Zero-copy calls for *head* (if any) then *data* (bytes of *lease*) without waiting.

        Returns the bytes Linux took (head and data together), each call recorded with
        ``lease.begin_send()`` (so the lease stays held by them), and
        whether Linux refused zero-copy (after a retry): the caller copies
        the rest then. Never blocks and never yields. Channels whose sends
        always wait (io_uring, sendfile) take nothing: ``(0, False)``.
        """
        return 0, False

    async def send_zerocopy(
        self, data: memoryview, lease: SendableLease, start: int, head: memoryview | None = None
    ) -> int:
        """Send *head* (if any) then *data* (bytes of *lease* from *start*) without copying.

        Returns the bytes accepted, head and data together. Fewer than all
        of them means Linux refused zero-copy for the rest; the caller
        copies them (the rest of the head first, if any).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot send zero-copy")

    def accepts(self, lease: SendableLease) -> bool:
        """Whether :meth:`send_zerocopy` can send this lease (sendfile: pool memory only)."""
        return True

    @property
    def sends_in_flight(self) -> int:
        """Zero-copy calls whose completion has not arrived."""
        return 0

    # -- the rest of a stream -----------------------------------------------------

    def before_wait(self) -> None:
        """Called before the channel waits on its connection (zero-copy channels drain here)."""

    async def wait_writable(self) -> None:
        """Wait until a send might not block."""
        self.before_wait()
        await self.transport.wait_writable()

    async def receive_some(
        self, max_bytes: int, schedule: bool = True, on_wait: Callable[[], object] | None = None
    ) -> bytes:
        """Receive up to *max_bytes*; ``b""`` at end of stream.

        Without *schedule*, bytes already there return without letting other
        tasks run first (a caller that has just done so); a wait still does.
        *on_wait* is called before each wait for bytes.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = self.transport.recv(max_bytes)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                self.before_wait()
                await self.transport.wait_readable()
                continue
            except OSError as exc:
                broken(exc)
            if schedule:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def send_eof(self) -> None:
        """Shut the sending direction down."""
        try:
            self.transport.shutdown_write()
        except OSError as exc:
            broken(exc)

    def abort(self) -> None:
        """Reset the connection (the peer sees a reset); nothing once closed (rule 4)."""
        self.transport.abort()

    async def aclose(self, drain_timeout: float) -> None:
        """Close, keeping in-flight memory safe (a copying channel has none in flight)."""
        self.transport.close()
        await trio.lowlevel.checkpoint()


@mypyc_attr(allow_interpreted_subclasses=True)
class Kernel(abc.ABC):
    """A way of sending, chosen per pool (``open_pool(kernel=...)``)."""

    #: The name applications pass to ``open_pool(kernel=...)``.
    name: ClassVar[str]
    #: Copy to peers on this machine (set by "auto"): Linux copies
    #: zero-copy sends delivered to a local socket anyway.
    copy_local_peers: bool = False
    #: Why this kernel runs as it does (a fallback, an alignment), or None.
    note: str | None = None
    #: Completions this kernel refused that belong to no stream (an io_uring
    #: CQE for an unknown request); the pool's statistics add them in.
    malformed_records: int = 0
    #: Whether a pool took this kernel (see :meth:`claim`).
    _claimed: bool = False

    @abc.abstractmethod
    def open_channel(
        self, transport: Transport, counters: Counters, on_completions: CompletionListener
    ) -> Channel:
        """A channel over *transport*, which the channel owns from now on.

        *counters* are the stream's; *on_completions* is told what each
        batch of completions said. Raises TypeError for a transport this
        kernel cannot send on (closing it first).
        """

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # A copy would share the original's connections, epoll or ring while
        # passing claim() on its own: two pools on one kernel, each closing
        # (and resetting) the other's connections. deepcopy and pickle too.
        raise TypeError(
            f"a {type(self).__name__} cannot be copied or pickled: make a new one for each pool"
        )

    def claim(self) -> None:
        """Take this kernel for the pool being opened; refused if any pool ever had it.

        A kernel object serves one pool: its connections, their completions
        and the pool's close (which forces still-busy connections down and
        quarantines their memory) all belong to that pool, so two pools on
        one kernel would reset each other's connections. Nor does it serve
        a second pool after the first closed: its background work, its ring
        or epoll, and connections the application may still hold belong to
        the first.
        """
        if self._claimed:
            name = type(self).__name__
            raise ValueError(
                f"this {name} already serves a pool (open or closed): a kernel object serves"
                f" one pool for its whole life; make a new {name}() for each pool"
            )
        self._claimed = True

    async def run(self) -> None:
        """Background work for the pool's lifetime (a completion reaper).

        The pool runs it shielded from cancellation until the pool's close
        has drained (closing waits for completions this work brings in),
        then cancels it.
        """
        await trio.sleep_forever()

    def attach(self, arena: Arena) -> None:
        """The pool's arena exists (io_uring registers it, sendfile sends from it)."""

    def close(self) -> None:
        """The pool is closing: release what the kernel holds (after draining)."""

    def allocation_granule(self) -> int:
        """The unit, in bytes, in which the pool must hand out memory for this kernel."""
        return PAGE_SIZE

    def pages_replaceable(self) -> bool:
        """Whether the arena's pages may be punched out of its memfd when a lease comes back.

        Another program's ``sendfile`` from the memfd (an ASGI server's, see
        ``trio_zc.asgi``) leaves references to the pages in a socket, so
        those pages must be replaced, never rewritten, before reuse. That is
        safe only if this kernel keeps no reference of its own to the
        arena's pages beyond a send's completion (io_uring's registered
        buffers do: they would go on sending the old pages).
        """
        return True

    async def abort_in_flight(self) -> None:
        """The pool is closing past its deadline: make in-flight sends end.

        Kernels whose sends can be in flight force those connections down so
        that their completions arrive; what still does not arrive is
        quarantined by the pool.
        """
        await trio.lowlevel.checkpoint()


own_abc_state(SendableLease, Transport, Kernel)  # the compiled build: see own_abc_state
