"""Connected ZeroCopyStream pairs over loopback TCP, for the stream tests."""

from __future__ import annotations

import socket

import trio
import trio.testing

import trio_zc


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


async def stream_pair(
    pool: trio_zc.BufferPool, *, peer_pool: trio_zc.BufferPool | None = None, family: int = socket.AF_INET
) -> tuple[trio_zc.ZeroCopyStream, trio_zc.ZeroCopyStream]:
    a, b = await socket_pair(family)
    return trio_zc.ZeroCopyStream(a, pool=pool), trio_zc.ZeroCopyStream(b, pool=peer_pool or pool)


async def clog(stream: trio_zc.ZeroCopyStream) -> None:
    """Fill *stream*'s send path (its peer reads nothing) until a send would block."""

    async def sender() -> None:
        while True:
            await stream.send_all(b"x" * 65536)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        nursery.cancel_scope.cancel()
    sock: socket.socket = stream._channel.sock  # type: ignore[attr-defined]
    # Top it up with ever smaller sends, so that even a tiny send blocks.
    size = 65536
    while size:
        try:
            sock.send(b"x" * size)
        except BlockingIOError:
            size //= 2


def stop_reading(stream: trio_zc.ZeroCopyStream, rcvbuf: int = 65536) -> None:
    """Pin *stream*'s receive buffer small, so a peer that it never reads from blocks soon.

    (Left alone, Linux may grow a receive buffer to tcp_rmem's maximum, 32 MiB here.)
    """
    sock: socket.socket = stream._channel.sock  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
