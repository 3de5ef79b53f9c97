"""Helpers in the spirit of Trio's: connect, listen and serve with ZeroCopyStream.

Serving differs from Trio's in one way (docs/recipes.rst, "Write a handler
that survives its clients"): a handler that fails because *its own*
connection failed -- the client reset it, closed it early, stopped reading
past ``send_timeout`` -- ends that connection only, instead of crashing the
server. What counts as its own connection's failure is decided by where the
exception came from, not only by its type: a ``BrokenResourceError`` from a
worker's pipe or a memory channel is a failure of the server, and
surfaces as Trio's would.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any

import attrs
import trio

from ._background import reraise
from ._pool import BufferPool, check_pool
from ._stream import ZeroCopyStream

if sys.version_info < (3, 11):  # pragma: no cover - the backport Trio depends on there
    from exceptiongroup import BaseExceptionGroup

#: Where serve_tcp() and serve_listeners() log the connections they end
#: because of a connection error (level DEBUG: under load these are routine).
LOGGER = logging.getLogger("trio_zc.serve")

#: How far the checks below follow ``__cause__`` links and ``transport_stream`` attributes.
_MAX_LINKS = 16


async def open_tcp_stream(
    host: str | bytes, port: int, *, pool: BufferPool, **kwargs: Any
) -> ZeroCopyStream:
    """Like :func:`trio.open_tcp_stream`, returning a :class:`ZeroCopyStream` on *pool*.

    Extra keyword arguments go to :func:`trio.open_tcp_stream`.
    """
    check_pool(pool)
    stream = await trio.open_tcp_stream(host, port, **kwargs)
    try:
        return ZeroCopyStream(stream, pool=pool)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@attrs.frozen
class ListenerStatistics:
    """What a :class:`ZeroCopyListener` accepted, and how its connections ended.

    ``handling`` and ``connection_errors`` are kept by :func:`serve_tcp` and
    :func:`serve_listeners`, which run the handlers.
    """

    #: Connections accepted.
    accepted: int
    #: Connections whose handler is running now.
    handling: int
    #: Connections ended because of their own connection's failure (the
    #: client reset or closed it, or stopped reading past ``send_timeout``):
    #: the handler's exception was logged and dropped, the server went on.
    connection_errors: int


class ZeroCopyListener(trio.abc.Listener[ZeroCopyStream]):
    """A listener whose :meth:`accept` returns :class:`ZeroCopyStream` objects on *pool*."""

    def __init__(self, listener: trio.SocketListener, *, pool: BufferPool) -> None:
        if not isinstance(listener, trio.SocketListener):
            raise TypeError(f"ZeroCopyListener wraps a trio.SocketListener, not {type(listener).__name__}")
        check_pool(pool)
        self.listener = listener
        self.pool = pool
        self._accepted = 0
        self._handling = 0
        self._connection_errors = 0

    async def accept(self) -> ZeroCopyStream:
        stream = await self.listener.accept()
        try:
            zc_stream = ZeroCopyStream(stream, pool=self.pool)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self._accepted += 1
        return zc_stream

    def statistics(self) -> ListenerStatistics:
        """A snapshot of the connections this listener accepted."""
        return ListenerStatistics(
            accepted=self._accepted, handling=self._handling, connection_errors=self._connection_errors
        )

    async def aclose(self) -> None:
        await self.listener.aclose()


async def open_tcp_listeners(
    port: int, *, pool: BufferPool, host: str | bytes | None = None, backlog: int | None = None
) -> list[ZeroCopyListener]:
    """Like :func:`trio.open_tcp_listeners`, for :class:`ZeroCopyStream` connections."""
    check_pool(pool)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    return [ZeroCopyListener(listener, pool=pool) for listener in listeners]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            yield from _leaves(member)
    else:
        yield exc


def _reaches(obj: object, stream: ZeroCopyStream) -> bool:
    """Whether *obj* is *stream*, or a stream wrapped around it (``transport_stream``, as trio.SSLStream)."""
    for _ in range(_MAX_LINKS):
        if obj is stream:
            return True
        obj = getattr(obj, "transport_stream", None)
        if obj is None:
            return False
    return False


def _raised_through(tb: TracebackType | None, stream: ZeroCopyStream) -> bool:
    """Whether a frame of traceback *tb* ran a method of *stream* (or of a stream wrapped around it)
    or of *stream*'s own transport.

    The transport counts because in the compiled build the frames of the
    stream's own (compiled) methods show no locals: there an error of the
    socket is known as this connection's by the transport's frames, which
    stay interpreted (_kernels/_socket.py). The transport is this stream's
    alone, so the answer is the same in the pure build.
    """
    transport = stream._channel.transport
    while tb is not None:
        self = tb.tb_frame.f_locals.get("self")
        if self is not None and (self is transport or _reaches(self, stream)):
            return True
        tb = tb.tb_next
    return False


def is_connection_error(exc: BaseException, stream: ZeroCopyStream) -> bool:
    """Whether *exc* is a failure of *stream*'s own connection, which ends that connection only.

    That is a :class:`trio.BrokenResourceError` or
    :class:`trio.ClosedResourceError`, or an :class:`OSError`, raised by a
    method of *stream* or of a stream over it (following
    ``transport_stream``, as of :class:`trio.SSLStream`), or raised from such
    an exception (``raise ... from``). The same types raised by anything else
    -- a pipe to a worker process, a memory channel, a connection to another
    server -- are failures of the server, not of this client.
    """
    if not isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, OSError)):
        return False
    link: BaseException | None = exc
    for _ in range(_MAX_LINKS):
        if link is None:
            return False
        if _raised_through(link.__traceback__, stream):
            return True
        link = link.__cause__
    return False


def _split(failure: BaseException, stream: ZeroCopyStream) -> tuple[BaseException | None, BaseException | None]:
    """(the connection errors of *failure*, the rest of it); either may be None."""
    if isinstance(failure, BaseExceptionGroup):
        return failure.split(lambda exc: is_connection_error(exc, stream))
    if is_connection_error(failure, stream):
        return failure, None
    return None, failure


async def _serve_connection(
    handler: Callable[[ZeroCopyStream], Awaitable[object]], listener: ZeroCopyListener, stream: ZeroCopyStream
) -> None:
    """Run *handler* on *stream*; end this connection only if its own connection fails; close it."""
    listener._handling += 1
    failure: BaseException | None = None
    try:
        try:
            # The handler runs as a task of its own: the application's code,
            # not the library's, so Ctrl-C is not deferred in it (rule 3 of
            # trio_zc/_ki.py: a task's protection comes from its root frame).
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                nursery.start_soon(handler, stream)
        except BaseExceptionGroup as group:
            failure = group.exceptions[0] if len(group.exceptions) == 1 else group
            del group
        if failure is not None:
            ours, rest = _split(failure, stream)
            if ours is not None:
                listener._connection_errors += 1
                LOGGER.debug("%r ended by a connection error: %r", stream, ours)
            if rest is not None:
                # A bug in the handler, a failure elsewhere, a cancellation:
                # not this client's doing; it surfaces as with trio.serve_tcp.
                failure = None
                if isinstance(rest, BaseExceptionGroup) and len(rest.exceptions) == 1:
                    rest = rest.exceptions[0]
                reraise(rest)
    finally:
        listener._handling -= 1
        del failure
        # Closed here whatever the handler did (closing twice is harmless):
        # gracefully, so the end of the last response is not reset away;
        # the stream's drain_timeout bounds the wait.
        await stream.aclose()


async def serve_listeners(
    handler: Callable[[ZeroCopyStream], Awaitable[object]],
    listeners: list[ZeroCopyListener],
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[ZeroCopyListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like :func:`trio.serve_listeners`, for :class:`ZeroCopyListener` objects; a client cannot crash it.

    Calls ``handler(stream)`` in a task of its own for each connection, and
    closes the stream when the handler returns (gracefully: sends in flight
    finish first, up to the stream's ``drain_timeout``). A handler that
    fails because its own connection failed -- a
    :class:`trio.BrokenResourceError`, :class:`trio.ClosedResourceError`
    or :class:`OSError` raised by that stream, because the client reset or
    closed the connection, or stopped reading past ``send_timeout`` -- ends
    that connection only: the exception is counted
    (:meth:`ZeroCopyListener.statistics`), logged at DEBUG level on the
    ``trio_zc.serve`` logger, and the server goes on. Any other exception
    (a bug in the handler, a failure of something else it used) surfaces
    as with :func:`trio.serve_listeners`: it cancels the server and
    propagates. So a handler need not catch its client's disconnects, but
    must still answer or drop what a client *sends* that it cannot parse.
    """
    listeners = list(listeners)
    for listener in listeners:
        if not isinstance(listener, ZeroCopyListener):
            raise TypeError(f"serve_listeners() takes ZeroCopyListener objects, not {type(listener).__name__}")
    async with trio.open_nursery() as nursery:
        handlers = nursery if handler_nursery is None else handler_nursery
        for listener in listeners:
            # Trio's accept loop (it rides out EMFILE and the like), one per
            # listener so that each connection's handler knows its listener.
            nursery.start_soon(
                partial(
                    trio.serve_listeners,
                    partial(_serve_connection, handler, listener),
                    [listener],
                    handler_nursery=handlers,
                )
            )
        # As trio.serve_listeners: started once the accept loops are running.
        await trio.sleep(0)
        task_status.started(listeners)


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
    to learn the listeners (and so the port) once it is listening. Each
    connection is served as :func:`serve_listeners` says: the stream is
    closed when the handler returns, and a handler that fails because its
    own connection failed (the client reset or closed it, or stopped
    reading past ``send_timeout``) ends that connection only, while any
    other exception surfaces.
    """
    listeners = await open_tcp_listeners(port, pool=pool, host=host, backlog=backlog)
    await serve_listeners(handler, listeners, handler_nursery=handler_nursery, task_status=task_status)
