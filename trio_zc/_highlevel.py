"""Helpers in the spirit of Trio's: connect, listen and serve with ZeroCopyStream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ._stream import ZeroCopyStream

if TYPE_CHECKING:
    from ._pool import BufferPool


async def open_tcp_stream(
    host: str | bytes, port: int, *, pool: BufferPool, **kwargs: Any
) -> ZeroCopyStream:
    """Like :func:`trio.open_tcp_stream`, returning a :class:`ZeroCopyStream` on *pool*.

    Extra keyword arguments go to :func:`trio.open_tcp_stream`.
    """
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
