"""Connected ZeroCopyStream pairs over loopback TCP, for the stream tests."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio
import trio.testing

import trio_zc
import trio_zc.testing
import trio_zc.testing._transport


async def socket_pair(family: int = socket.AF_INET) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    listener = trio.socket.socket(family, socket.SOCK_STREAM)
    with listener:
        await listener.bind((host, 0))
        listener.listen(1)
        client = trio.socket.socket(family, socket.SOCK_STREAM)
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return client, server


#: Every kernel the stream tests run on: the real ones and the mock.
KERNELS = ["copy", "msg_zerocopy", "io_uring", "sendfile", "mock"]


def kernel(name: str) -> str | trio_zc.testing.MockKernel:
    """What to pass to open_pool(kernel=...) for a kernel named in KERNELS."""
    return trio_zc.testing.MockKernel() if name == "mock" else name


Peer = trio_zc.ZeroCopyStream | trio_zc.testing.MockPeer


async def stream_pair(
    pool: trio_zc.BufferPool, *, peer_pool: trio_zc.BufferPool | None = None, family: int = socket.AF_INET
) -> tuple[trio_zc.ZeroCopyStream, Peer]:
    """A stream on *pool* and its peer: over loopback TCP, or the mock kernel's pair."""
    if isinstance(pool._kernel, trio_zc.testing.MockKernel):
        await trio.lowlevel.checkpoint()
        return pool._kernel.open_stream(pool)
    a, b = await socket_pair(family)
    return trio_zc.ZeroCopyStream(a, pool=pool), trio_zc.ZeroCopyStream(b, pool=peer_pool or pool)


async def clog(stream: Peer) -> None:
    """Fill *stream*'s send path (its peer reads nothing) until a send would block."""
    if not isinstance(stream, trio_zc.ZeroCopyStream) or isinstance(
        stream._channel.transport, trio_zc.testing._transport.MockTransport
    ):
        await _clog_mock(stream)
        return

    async def sender() -> None:
        while True:
            await stream.send_all(b"x" * 65536)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        nursery.cancel_scope.cancel()
    sock: socket.socket = stream._channel.transport.sock  # type: ignore[attr-defined]
    # Top it up with ever smaller sends, so that even a tiny send blocks.
    size = 65536
    while size:
        try:
            sock.send(b"x" * size)
        except BlockingIOError:
            size //= 2


def stop_reading(stream: Peer, rcvbuf: int = 65536) -> None:
    """Pin *stream*'s receive buffer small, so a peer that it never reads from blocks soon.

    (Left alone, Linux may grow a receive buffer to tcp_rmem's maximum, 32 MiB here.)
    """
    if isinstance(stream, trio_zc.testing.MockPeer):
        stream._conn.receive_buffer = rcvbuf
        return
    sock: socket.socket = stream._channel.transport.sock  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)


async def _clog_mock(stream: Peer) -> None:
    # A mock connection blocks exactly when its buffers are full.
    if isinstance(stream, trio_zc.testing.MockPeer):
        await stream.send_all(b"x" * stream._conn.peer_room)
        return
    conn = stream._channel.transport.conn  # type: ignore[attr-defined]
    while conn.room:
        await stream.send_all(b"x" * conn.room)
        # The kernel's task moves bytes to the receive buffer; let it.
        await trio.testing.wait_all_tasks_blocked()


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    """Receive exactly *n* bytes; fail on EOF first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


#: Zero-copy for every send the kernel can send so (no size threshold, no
#: switching to copies on loopback): the paths where memory stays in flight.
ALWAYS_ZC = trio_zc.ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)


def pattern(nbytes: int, seed: int) -> bytes:
    """*nbytes* of a pattern that differs per seed and per position."""
    block = bytes((seed * 131 + i * 7) & 0xFF for i in range(251))
    return (block * (nbytes // len(block) + 1))[:nbytes]


async def sealed_with(pool: trio_zc.BufferPool, data: bytes) -> trio_zc.SealedLease:
    """A lease of *pool* holding *data*, sealed."""
    lease = await pool.acquire(len(data))
    lease.write(data)
    return lease.seal()


async def send_while_stalled(
    name: str, data: bytes, attack: Callable[[trio_zc.BufferPool, trio_zc.SealedLease], Awaitable[None]]
) -> bytes:
    """Send *data* on kernel *name* to a peer that reads nothing yet, run *attack*
    while the send is part-way (its memory still read by the kernel or not yet
    taken), then let the peer read: the bytes it received."""
    async with trio_zc.open_pool(max_bytes=4 * len(data) + (1 << 20), kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.hold_transmission()
        else:
            stop_reading(peer)
        sealed = await sealed_with(pool, data)
        got = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            try:
                await attack(pool, sealed)
            finally:
                if isinstance(peer, trio_zc.testing.MockPeer):
                    peer.transmit()
                got = await receive_exactly(peer, len(data))
        sealed.release()
        await stream.aclose()
        await peer.aclose()
    return got
