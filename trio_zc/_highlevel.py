"""Helpers in the spirit of Trio's: connect, listen and serve with ZeroCopyStream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._pool import BufferPool
from ._stream import ZeroCopyStream


def _check_pool(pool: object) -> None:
    """Refuse what is not an open pool, before any connection or listener is made."""
    if not isinstance(pool, BufferPool):
        raise TypeError(f"pool must be a BufferPool (from trio_zc.open_pool), not {type(pool).__name__}")
    pool._check_open()


async def open_tcp_stream(
    host: str | bytes, port: int, *, pool: BufferPool, **kwargs: Any
) -> ZeroCopyStream:
    """Like :func:`trio.open_tcp_stream`, returning a :class:`ZeroCopyStream` on *pool*.

    Extra keyword arguments go to :func:`trio.open_tcp_stream`.
    """
    _check_pool(pool)
    stream = await trio.open_tcp_stream(host, port, **kwargs)
    try:
        return ZeroCopyStream(stream, pool=pool)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


class ZeroCopyListener(trio.abc.Listener[ZeroCopyStream]):
    """A listener whose :meth:`accept` returns :class:`ZeroCopyStream` objects on *pool*."""

    def __init__(self, listener: trio.SocketListener, *, pool: BufferPool) -> None:
        if not isinstance(listener, trio.SocketListener):
            raise TypeError(f"ZeroCopyListener wraps a trio.SocketListener, not {type(listener).__name__}")
        _check_pool(pool)
        self.listener = listener
        self.pool = pool

    async def accept(self) -> ZeroCopyStream:
        stream = await self.listener.accept()
        try:
            return ZeroCopyStream(stream, pool=self.pool)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def aclose(self) -> None:
        await self.listener.aclose()


async def open_tcp_listeners(
    port: int, *, pool: BufferPool, host: str | bytes | None = None, backlog: int | None = None
) -> list[ZeroCopyListener]:
    """Like :func:`trio.open_tcp_listeners`, for :class:`ZeroCopyStream` connections."""
    _check_pool(pool)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    return [ZeroCopyListener(listener, pool=pool) for listener in listeners]


async def serve_tcp(
    handler: Callable[[ZeroCopyStream], Awaitable[object]],
    port: int,
    *,
    pool: BufferPool,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[ZeroCopyListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like :func:`trio.serve_tcp`: call *handler* with a :class:`ZeroCopyStream` per connection.

    Use ``await nursery.start(partial(trio_zc.serve_tcp, handler, 0, pool=pool))``
    to learn the listeners (and so the port) once it is listening.
    """
    listeners = await open_tcp_listeners(port, pool=pool, host=host, backlog=backlog)
    await trio.serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )
