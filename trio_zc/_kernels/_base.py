"""The kernel interface: how a stream's bytes reach the wire.

A *kernel* (copy, msg_zerocopy, io_uring, sendfile, or the mock of
:mod:`trio_zc.testing`) is chosen per pool. For each connection it opens a
:class:`Channel`, which owns the socket (or, for the mock, an in-memory
pipe) and does the I/O;
everything else -- lease checks, the zero-copy policy, statistics, conflict
detection -- lives once in :class:`~trio_zc.ZeroCopyStream`.

A channel's contract, which every kernel is tested against:

- ``send_copy`` returns once every byte was handed over and the memory may
  be reused at once (a plain send copies). It is built on ``copy_now``,
  which takes what the kernel accepts without waiting: a send it finishes
  has read its memory before any other task could run.
- ``send_zerocopy`` returns once the kernel accepted every byte (or as many
  as it would take zero-copy; the stream copies the rest) and calls
  ``lease.begin_send()`` once per kernel call that may still read the
  memory, and ``lease.end_send()`` for each when the kernel says it is done.
- ``aclose`` keeps the memory of in-flight sends safe: it waits for their
  completions up to a deadline, then forces the connection down, and
  quarantines whatever the kernel never reported done.
- Errors come out as Trio's: :class:`trio.BrokenResourceError` for a broken
  connection, :class:`trio.ClosedResourceError` for a closed one.

Background work (a completion reaper) runs in the pool's nursery via
:meth:`Kernel.run`, shielded from cancellation until the pool's close has
drained. A kernel object serves one pool (:meth:`Kernel.claim`). A channel
never acts on its socket's descriptor number once the socket is closed:
the number may belong to another connection by then.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar, NoReturn, Protocol

import trio

from .._arena import PAGE_SIZE
from .._lifecycle import LeaseState
from .._stats import Counters

if TYPE_CHECKING:
    from .._arena import Arena


class SendableLease(Protocol):
    """What a kernel sees of a lease: the only way a kernel touches one.

    Kernels import nothing from the lease or pool modules; the lease record
    satisfies this protocol, and each of its methods also keeps the pool's
    counts (a kernel cannot move a lease's state behind the pool's back).
    """

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
        """The kernel may read the lease's memory from now on, until :meth:`end_send`."""

    def end_send(self) -> None:
        """The kernel finished one send of the lease."""

    def quarantine_send(self) -> None:
        """One send will never be reported finished (its connection is gone)."""

    def hold_pages(self) -> None:
        """The kernel may keep the lease's pages after every send returned (sendfile):
        they must be replaced, not reused, when the lease comes back."""

    def describe(self, state: LeaseState | None = None) -> str:
        """How errors name the lease (as it was in *state*, default: now)."""

_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})

_libc = ctypes.CDLL(None, use_errno=True)
_connect = _libc.connect
_connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_connect.restype = ctypes.c_int
_AF_UNSPEC_ADDR = struct.pack("=H14x", socket.AF_UNSPEC)


def local_peer(sock: socket.socket) -> str | None:
    """Why zero-copy cannot win to this socket's peer, if the peer is loopback."""
    try:
        host = sock.getpeername()[0]
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except (OSError, ValueError, IndexError, TypeError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "the peer is on loopback, where the kernel copies every zero-copy send anyway"
    return None


#: Errors with which the kernel refuses to pin memory for a zero-copy send:
#: ENOBUFS (MSG_ZEROCOPY: option memory or RLIMIT_MEMLOCK used up) and
#: ENOMEM (io_uring's SEND_ZC from unregistered memory: RLIMIT_MEMLOCK used
#: up). The connection is fine: the send's rest is copied and the stream
#: backs off (see _policy.py).
ZEROCOPY_REFUSED = frozenset({errno.ENOBUFS, errno.ENOMEM})


def abort_connection(sock: socket.socket) -> None:
    """Reset *sock*'s TCP connection but keep the socket open.

    ``connect(AF_UNSPEC)`` makes Linux drop the queued data and send a reset,
    and the kernel reports the zero-copy sends it dropped as complete --
    which it could not do for a closed socket.

    It takes the socket object, never a bare descriptor number, and does
    nothing once the socket is closed: by then the number may belong to
    another connection, which a reset through it would break.
    """
    fd = sock.fileno()
    if fd < 0:
        return
    if _connect(fd, _AF_UNSPEC_ADDR, len(_AF_UNSPEC_ADDR)) != 0:
        err = ctypes.get_errno()
        if err not in (errno.ENOTCONN, errno.EBADF):  # pragma: no cover - defensive
            raise OSError(err, f"aborting the connection failed: {errno.errorcode.get(err)}")


def broken(exc: OSError) -> NoReturn:
    """Raise the Trio stream error for a socket error."""
    if exc.errno in _CLOSED_ERRNOS:
        raise trio.ClosedResourceError("the socket was closed") from exc
    raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc


@contextmanager
def stream_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        broken(exc)


class Channel(abc.ABC):
    """One connection as a kernel sees it. Made by :meth:`Kernel.open_channel`."""

    #: Why zero-copy can never be used on this channel, or None.
    unavailable_reason: str | None = None

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    #: Set while an earlier send is still in the kernel's hands after its
    #: task was cancelled (io_uring): a copy must wait for it, or the two
    #: sends' bytes would interleave.
    send_barrier: trio.Event | None = None

    async def pass_barrier(self) -> None:
        """Wait for the send behind :attr:`send_barrier`, if any, to end."""
        barrier = self.send_barrier
        if barrier is not None:
            await barrier.wait()
            self.send_barrier = None

    @abc.abstractmethod
    def copy_now(self, data: memoryview) -> int:
        """Copy what the kernel takes of *data* at once, without waiting; bytes taken.

        Never blocks and never yields: 0 when nothing can be taken now (or
        while :attr:`send_barrier` is up). A caller that gets every byte
        taken is done with the memory before any other task can run.
        """

    async def send_copy(self, data: memoryview) -> None:
        """Send every byte of *data* by copying it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.send_barrier is not None:
            await self.pass_barrier()
        total = len(data)
        sent = self.copy_now(data)  # most sends: one call, no slice
        if sent == total:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        while sent < total:
            await self.wait_writable()  # a checkpoint
            with data[sent:] as rest:
                sent += self.copy_now(rest)

    def zerocopy_now(self, data: memoryview, lease: SendableLease) -> tuple[int, bool]:
        """Zero-copy calls for *data* (bytes of *lease*) without waiting.

        Returns the bytes the kernel took, each call recorded with
        ``lease.begin_send()`` (so the lease stays held by them), and whether
        the kernel refused zero-copy (ENOBUFS after a retry): the caller
        copies the rest then. Never blocks and never yields. Channels whose
        sends always wait (io_uring, sendfile) take nothing: ``(0, False)``.
        """
        return 0, False

    async def send_zerocopy(self, data: memoryview, lease: SendableLease, start: int) -> int:
        """Send *data* (bytes of *lease* from *start*) without copying; bytes accepted.

        Fewer bytes than ``len(data)`` means the kernel refused zero-copy
        for the rest (ENOBUFS after a retry); the caller copies them.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot send zero-copy")

    def accepts(self, lease: SendableLease) -> bool:
        """Whether :meth:`send_zerocopy` can send this lease (sendfile: pool memory only)."""
        return True

    @abc.abstractmethod
    async def receive_some(self, max_bytes: int) -> bytes:
        """Receive up to *max_bytes*; ``b""`` at end of stream."""

    @abc.abstractmethod
    async def wait_writable(self) -> None:
        """Wait until a send might not block."""

    @abc.abstractmethod
    def send_eof(self) -> None:
        """Shut the sending direction down (idempotent)."""

    @abc.abstractmethod
    async def aclose(self, drain_timeout: float) -> None:
        """Close, keeping in-flight memory safe (see the module docstring)."""

    @property
    def sends_in_flight(self) -> int:
        """Zero-copy calls whose completion has not arrived."""
        return 0

    def on_completions(self, calls: int, copied: bool) -> None:
        """Hook for the stream's policy; replaced by the stream."""

    def abort(self) -> None:
        """Reset the connection (the peer sees a reset); completions may still arrive.

        Does nothing once the channel is closed: only its own open
        connection is ever reset.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot reset its connection")


class Kernel(abc.ABC):
    """A way of sending, chosen per pool (``open_pool(kernel=...)``)."""

    #: The name applications pass to ``open_pool(kernel=...)``.
    name: ClassVar[str]
    #: Copy to peers on this machine (set by "auto"): the kernel copies
    #: zero-copy sends delivered to a local socket anyway.
    copy_local_peers: bool = False

    @abc.abstractmethod
    def open_channel(self, sock: socket.socket, counters: Counters) -> Channel:
        """Take ownership of a connected stream socket."""

    #: Whether a pool took this kernel (see :meth:`claim`).
    _claimed: bool = False

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
        """The pool's arena exists (io_uring registers it here)."""

    def close(self) -> None:
        """The pool is closing: release what the kernel holds (after draining)."""

    def allocation_granule(self) -> int:
        """The unit, in bytes, in which the pool must hand out memory for this kernel."""
        return PAGE_SIZE

    #: Why this kernel runs as it does (a fallback, an alignment), or None.
    note: str | None = None
    #: Completions this kernel refused that belong to no stream (an io_uring
    #: CQE for an unknown request); the pool's statistics add them in.
    malformed_records: int = 0

    async def abort_in_flight(self) -> None:
        """The pool is closing past its deadline: make in-flight sends end.

        Kernels whose sends can be in flight force those connections down so
        that their completions arrive; what still does not arrive is
        quarantined by the pool.
        """
        await trio.lowlevel.checkpoint()


class SocketChannel(Channel):
    """A channel over a non-blocking stream socket; sends by copying."""

    def __init__(self, sock: socket.socket, counters: Counters) -> None:
        super().__init__(counters)
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.eof_sent = False
        self.closed = False

    def abort(self) -> None:
        if not self.closed:
            abort_connection(self.sock)

    def check_open(self) -> None:
        """Raise :class:`trio.ClosedResourceError` if the socket was closed.

        For code that goes on with a send after a wait: another task may
        have closed the stream meanwhile, and the descriptor number
        (``self.fd``) may now belong to another connection.
        """
        if self.closed:
            raise trio.ClosedResourceError("the stream was closed while a send was in progress")

    def before_wait(self) -> None:
        """Called before the channel waits on its socket (kernels drain here)."""

    async def wait_writable(self) -> None:
        self.before_wait()
        await trio.lowlevel.wait_writable(self.sock)

    def copy_now(self, data: memoryview) -> int:
        if self.send_barrier is not None:
            return 0  # an earlier send's bytes must go first
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            broken(exc)
        self.counters.copied(n)
        return n

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                self.before_wait()
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                broken(exc)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def send_eof(self) -> None:
        if self.eof_sent:
            return
        with stream_errors():
            self.sock.shutdown(socket.SHUT_WR)
        self.eof_sent = True

    def close_socket(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self, drain_timeout: float) -> None:
        self.close_socket()
        await trio.lowlevel.checkpoint()


class CopyKernel(Kernel):
    """Plain copying sends: the memory is free again as soon as send returns."""

    name = "copy"

    def open_channel(self, sock: socket.socket, counters: Counters) -> Channel:
        channel = SocketChannel(sock, counters)
        channel.unavailable_reason = "the pool's kernel is 'copy'"
        return channel
