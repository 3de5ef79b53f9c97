"""The HTTP/1.1 server: h11 parses and frames, ZeroCopyStream sends the bodies.

One task per connection (:func:`trio_zc.serve_tcp` runs them), requests
answered one after another in the order they came (pipelining), for as long
as both sides keep the connection alive. h11 does no I/O: this module reads
into it in bounded chunks, and only when it needs more data, so a
connection holds at most ``max_header_bytes`` plus one chunk of a client's
bytes whatever the client sends.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from http import HTTPStatus
from typing import Union

import attrs
import h11
import trio

from .. import (
    BufferPool,
    CachedLease,
    LeaseError,
    SealedLease,
    StaleLeaseError,
    ZeroCopyListener,
    ZeroCopyStream,
    serve_tcp,
)
from ._conditional import RangeAnswer, http_date, if_range_holds, none_match, not_modified_since, single_range
from ._messages import Request, Response

#: Where the server logs what goes wrong: handler errors at ERROR, clients
#: that send what h11 rejects or time out at DEBUG (routine under load).
LOGGER = logging.getLogger("trio_zc.http")

#: Seconds a connection may wait for the first byte of a request (after
#: connecting, or after the previous response) before the server closes it.
DEFAULT_IDLE_TIMEOUT = 20.0
#: Seconds a request's head (request line and headers) may take to arrive
#: once its first byte has: what bounds a slowloris client.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds one send may take (``ZeroCopyStream.send_timeout``) when the pool sets none.
DEFAULT_SEND_TIMEOUT = 30.0
#: Seconds the server goes on reading (and discarding) after its last
#: response on a connection it closes, so that the client's unread bytes do
#: not make the kernel reset the connection before the response is read.
DEFAULT_LINGER_TIMEOUT = 2.0
#: The largest request head (request line and headers) accepted; larger gets 431.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
#: Bytes read from a client at a time.
RECEIVE_SIZE = 16 * 1024
#: The most bytes the server reads and drops while lingering: a client that
#: goes on sending after its last answer gets a reset instead.
LINGER_MAX_BYTES = 1 << 20

#: Methods handlers see; anything else gets 405.
_METHODS = (b"GET", b"HEAD")
_ALLOW = "GET, HEAD"
#: Headers a 304 keeps (RFC 9110, 15.4.5): what guides a cache, nothing about a body.
_NOT_MODIFIED_KEEPS = {"cache-control", "content-location", "expires", "vary"}

#: What the server calls for each request: an async function of a
#: :class:`Request` that returns the :class:`Response` to send.
Handler = Callable[[Request], Awaitable[Response]]


@attrs.frozen
class HTTPStatistics:
    """A snapshot of what an :class:`HTTPServer` did, from :meth:`HTTPServer.statistics`."""

    #: Connections served.
    connections: int
    #: Connections being served now.
    open_connections: int
    #: Requests received (whole request heads).
    requests: int
    #: Responses sent in full.
    responses: int
    #: Body bytes of those responses.
    body_bytes: int
    #: 206 answers to range requests.
    partial: int
    #: 304 answers to conditional requests.
    not_modified: int
    #: Requests h11 rejected (answered 400, 431... when still possible, then closed).
    bad_requests: int
    #: Connections closed because no request came within ``idle_timeout``.
    idle_timeouts: int
    #: Connections closed because a request's head took longer than ``header_timeout``.
    header_timeouts: int
    #: Handlers that raised or returned something other than a :class:`Response`
    #: (answered 500 and closed), and bodies that could not be sent (a lease
    #: released by someone else before it was sent).
    handler_errors: int


_Body = Union[bytes, SealedLease]


class _Placeholder:
    """Stands for a lease's bytes in h11's Data event: h11 needs only its length."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """The Date header's value, made once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _text(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A short plain-text answer the server makes itself (errors)."""
    return Response(
        f"{status} {_reason(status).decode()}: {message}\n".encode(),
        status=status,
        content_type="text/plain; charset=utf-8",
        headers=headers,
    )


def _check_seconds(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds


def _release(body: object) -> None:
    """Give up a response's body once the server is done with it (sent or not)."""
    if isinstance(body, SealedLease):
        try:
            body.release()
        except StaleLeaseError:
            pass  # released already (an application bug, reported when its send failed)
    elif isinstance(body, CachedLease):
        body.release()


async def _send_message(stream: ZeroCopyStream, head: bytes, body: _Body, offset: int, nbytes: int) -> None:
    """Put one response on the wire: its head, then *nbytes* of *body* from *offset*.

    The only place responses are written. A lease goes out with
    :meth:`ZeroCopyStream.send_lease` and the head with it (``head=``): one
    system call for both where the kernel allows, and every kernel's promise
    holds: only its sealed bytes go on the wire, and its memory is not
    reused before the kernel is done with it. A lease that cannot be sent
    (released, another pool's) raises before any byte of the head went.
    """
    if not nbytes:
        await stream.send_all(head)
    elif isinstance(body, SealedLease):
        if offset == 0 and nbytes == body.nbytes:
            await stream.send_lease(body, head=head)
        else:
            await stream.send_lease(body, offset, nbytes, head=head)
    else:
        await stream.send_all(head + body[offset : offset + nbytes])


class HTTPServer:
    """Serves HTTP/1.1 on :class:`~trio_zc.ZeroCopyStream` connections, calling *handler* per request.

    ``await handler(request)`` gets a :class:`Request` (GET or HEAD) and
    returns a :class:`Response`. The server does the rest of HTTP/1.1, with
    h11 as the parser: keep-alive and pipelining (answers in order),
    ``HEAD``, single ``Range`` requests (206, or 416 with ``Content-Range:
    bytes */N``; several ranges get the whole body), ``If-None-Match`` and
    ``If-Modified-Since`` (304) from the response's *etag* and
    *last_modified*, ``If-Range``, 405 with ``Allow`` for other methods,
    and 400 (or 431, or what h11 says) for requests h11 rejects.

    Clients are bounded: a connection waits at most *idle_timeout* seconds
    for a request to start and *header_timeout* for its head to finish (a
    client that trickles its headers is closed; it holds at most
    *max_header_bytes* and one read of memory meanwhile); each send may
    take at most *send_timeout* seconds (default: the pool's
    ``send_timeout``, or 30 s if the pool has none), after which the
    connection is reset. A request with a body is answered and its
    connection closed (handlers see no bodies). After the last response on
    a connection the server half-closes it and reads what the client still
    sends for up to *linger_timeout* seconds, so that the response is not
    lost to a reset.

    A client that disconnects at any point ends its own connection only.
    A handler that raises :class:`Exception` is logged (``trio_zc.http``
    logger, ERROR) and its client gets 500 and a closed connection; the
    server goes on.

    Run it with :func:`serve`, or hand :meth:`handle` to
    :func:`trio_zc.serve_tcp` or :func:`trio_zc.serve_listeners`.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        send_timeout: float | None = None,
        linger_timeout: float = DEFAULT_LINGER_TIMEOUT,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be an async function of a Request, not {type(handler).__name__}")
        self._handler = handler
        self.idle_timeout = _check_seconds("idle_timeout", idle_timeout)
        self.header_timeout = _check_seconds("header_timeout", header_timeout)
        self.send_timeout = None if send_timeout is None else _check_seconds("send_timeout", send_timeout)
        self.linger_timeout = _check_seconds("linger_timeout", linger_timeout)
        if type(max_header_bytes) is not int:
            raise TypeError(f"max_header_bytes must be an int, not {type(max_header_bytes).__name__}")
        if max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be at least 1024, not {max_header_bytes}")
        self.max_header_bytes = max_header_bytes
        self._connections = 0
        self._open = 0
        self._requests = 0
        self._responses = 0
        self._body_bytes = 0
        self._partial = 0
        self._not_modified = 0
        self._bad_requests = 0
        self._idle_timeouts = 0
        self._header_timeouts = 0
        self._handler_errors = 0

    def __repr__(self) -> str:
        return f"<trio_zc.http.HTTPServer {getattr(self._handler, '__qualname__', self._handler)!r}>"

    def statistics(self) -> HTTPStatistics:
        """A snapshot of the connections and requests served so far."""
        return HTTPStatistics(
            connections=self._connections,
            open_connections=self._open,
            requests=self._requests,
            responses=self._responses,
            body_bytes=self._body_bytes,
            partial=self._partial,
            not_modified=self._not_modified,
            bad_requests=self._bad_requests,
            idle_timeouts=self._idle_timeouts,
            header_timeouts=self._header_timeouts,
            handler_errors=self._handler_errors,
        )

    async def handle(self, stream: ZeroCopyStream) -> None:
        """Serve one connection until either side ends it. For :func:`trio_zc.serve_tcp`.

        A failure of the connection itself (the client reset or closed it,
        or stopped reading past the send timeout) propagates as the
        stream's :class:`trio.BrokenResourceError` or :class:`OSError`,
        which :func:`trio_zc.serve_tcp` counts and drops; it does not close
        *stream* (serve_tcp does).
        """
        if not isinstance(stream, ZeroCopyStream):
            raise TypeError(f"HTTPServer.handle() serves a ZeroCopyStream, not {type(stream).__name__}")
        self._connections += 1
        self._open += 1
        try:
            if self.send_timeout is not None:
                stream.send_timeout = self.send_timeout
            elif stream.send_timeout is None:
                stream.send_timeout = DEFAULT_SEND_TIMEOUT
            try:
                peer = stream.getpeername()
            except (OSError, trio.ClosedResourceError):
                peer = None
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
            while True:
                try:
                    event = await self._receive_request(conn, stream)
                except h11.RemoteProtocolError as exc:
                    await self._reject(conn, stream, exc)
                    return
                if event is None:
                    return
                if not await self._answer(conn, stream, event, peer):
                    return
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    # The client asked to close (or spoke HTTP/1.0), or sent a body.
                    await self._linger(stream)
                    return
        finally:
            self._open -= 1

    async def _receive_request(self, conn: h11.Connection, stream: ZeroCopyStream) -> h11.Request | None:
        """The next request's head, or None if the client closed or ran out of time."""
        started = bool(conn.trailing_data[0])  # a pipelined request is under way already
        now = trio.current_time()
        with trio.move_on_at(now + (self.header_timeout if started else self.idle_timeout)) as scope:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if data and not started:
                        started = True
                        scope.deadline = trio.current_time() + self.header_timeout
                    conn.receive_data(data)  # b"" (the client closed) ends in ConnectionClosed or an error
                elif isinstance(event, h11.Request):
                    return event
                else:
                    # ConnectionClosed: the client closed between requests.
                    return None
        if started:
            self._header_timeouts += 1
            LOGGER.debug("closing a connection whose request head took longer than %s s", self.header_timeout)
        else:
            self._idle_timeouts += 1
        return None

    async def _reject(self, conn: h11.Connection, stream: ZeroCopyStream, exc: h11.RemoteProtocolError) -> None:
        """Answer what h11 refused to parse (if an answer can still be started), then close."""
        self._bad_requests += 1
        LOGGER.debug("a request h11 rejects: %s", exc)
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = exc.error_status_hint if 400 <= exc.error_status_hint <= 599 else 400
        response = _text(status, "the server could not parse this request")
        await self._send(conn, stream, b"GET", response, (), close=True)
        await self._linger(stream)

    async def _answer(
        self, conn: h11.Connection, stream: ZeroCopyStream, event: h11.Request, peer: object
    ) -> bool:
        """Answer one request; whether the connection may go on."""
        self._requests += 1
        # A request body is not read: the request is answered and the
        # connection closed (the bytes left unread are discarded by _linger).
        try:
            close = type(conn.next_event()) is not h11.EndOfMessage
        except h11.RemoteProtocolError:
            close = True  # a body h11 cannot frame (a bad chunk): answer the request, then close
        names = {name for name, _ in event.headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            # Framed two ways: a proxy in front may have read it the other
            # way (request smuggling). RFC 9112, 6.3: close after answering.
            close = True
        method = event.method
        if event.http_version not in (b"1.0", b"1.1"):
            response = _text(505, "this server speaks HTTP/1.0 and HTTP/1.1")
            close = True
        elif method not in _METHODS:
            response = _text(405, "this server answers GET and HEAD", headers=[("Allow", _ALLOW)])
        else:
            try:
                response = await self._call_handler(event, peer)
            except Exception:
                self._handler_errors += 1
                LOGGER.exception("the HTTP handler %r failed on %s %r", self._handler, method, event.target)
                response = _text(500, "the handler failed")
                close = True
        return await self._send(conn, stream, method, response, event.headers, close)

    async def _call_handler(self, event: h11.Request, peer: object) -> Response:
        target = event.target.decode("ascii")  # h11 let through visible ASCII only
        if target.startswith("/"):
            path, _, query = target.partition("?")
        else:  # absolute-form ("http://host/path?q") or "*"
            after_scheme = target.partition("://")[2]
            slash = after_scheme.find("/")
            rest = after_scheme[slash:] if slash >= 0 else "/"
            path, _, query = rest.partition("?")
            if target == "*":
                path = "*"
        request = Request(
            method=event.method.decode("ascii"),
            target=target,
            path=path,
            query=query,
            headers=tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers),
            http_version=event.http_version.decode("ascii"),
            peer=peer,
        )
        response = await self._handler(request)
        if not isinstance(response, Response):
            _release(response)
            raise TypeError(f"an HTTP handler returns a trio_zc.http.Response, not {type(response).__name__}")
        return response

    async def _send(
        self,
        conn: h11.Connection,
        stream: ZeroCopyStream,
        method: bytes,
        response: Response,
        request_headers: Iterable[tuple[bytes, bytes]],
        close: bool,
    ) -> bool:
        """Send *response* to a *method* request (releasing its body); whether the connection may go on."""
        try:
            try:
                plan = _plan(method, request_headers, response)
            except LeaseError as exc:  # the body was released under the response
                self._handler_errors += 1
                LOGGER.error("an HTTP response's body could not be sent: %r", exc)
                _release(response.body)
                response, close = _text(500, "the response could not be sent"), True
                plan = _plan(method, (), response)
            status, headers, start, length = plan
            if status == 206:
                self._partial += 1
            elif status == 304:
                self._not_modified += 1
            headers.append(("Date", _date()))
            if close:
                headers.append(("Connection", "close"))
            head = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            assert head is not None
            body = response.body
            if isinstance(body, CachedLease):
                body = body.lease
            if length:
                # h11 counts the body's bytes against Content-Length without
                # seeing them; with length framing it hands the placeholder
                # back alone (no chunk framing around it).
                placeholder = _Placeholder(length)
                parts = conn.send_with_data_passthrough(h11.Data(data=placeholder))  # type: ignore[arg-type]
                if parts is None or len(parts) != 1 or parts[0] is not placeholder:  # type: ignore[comparison-overlap]  # pragma: no cover - we always set Content-Length
                    raise AssertionError(f"h11 framed the body unexpectedly: {parts!r}")
            conn.send(h11.EndOfMessage())
            try:
                await _send_message(stream, head, body, response.offset + start, length)
            except LeaseError as exc:
                # Released or foreign: the application's bug. Nothing of the
                # response went out (the lease is checked before its head
                # is sent); the client sees the connection close.
                self._handler_errors += 1
                LOGGER.error("an HTTP response's body could not be sent: %r", exc)
                return False
            self._responses += 1
            self._body_bytes += length
            return True
        finally:
            _release(response.body)

    async def _linger(self, stream: ZeroCopyStream) -> None:
        """Half-close, then read and drop what the client still sends, for a bounded time.

        Closing a socket with unread bytes in it makes the kernel reset the
        connection, and a reset can destroy the end of the response before
        the client read it. What fails here fails after the last response
        was handed to the kernel: not worth reporting.
        """
        try:
            await stream.send_eof()
            dropped = 0
            with trio.move_on_after(self.linger_timeout):
                while dropped < LINGER_MAX_BYTES:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    dropped += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _plan(
    method: bytes, request_headers: Iterable[tuple[bytes, bytes]], response: Response
) -> tuple[int, list[tuple[str, str]], int, int]:
    """(status, headers, start, length) of what to send for *response* to this request.

    *start* and *length* select the bytes of the response's own slice to
    send (length 0: no body bytes).
    """
    range_values: list[str] = []
    if_range_values: list[str] = []
    since_values: list[str] = []
    if_none_match = None
    status = response.status
    if status == 200:
        for name, value in request_headers:
            if name == b"range":
                range_values.append(value.decode("latin-1"))
            elif name == b"if-none-match":
                # A list: several fields make one list (RFC 9110, 5.3).
                text = value.decode("latin-1")
                if_none_match = text if if_none_match is None else f"{if_none_match}, {text}"
            elif name == b"if-modified-since":
                since_values.append(value.decode("latin-1"))
            elif name == b"if-range":
                if_range_values.append(value.decode("latin-1"))
    # One value each, or they are ignored (If-Modified-Since), or fail (If-Range: the whole body).
    if_modified_since = since_values[0] if len(since_values) == 1 else None
    if_range = if_range_values[0] if len(if_range_values) == 1 else ("" if if_range_values else None)
    size = response.length
    etag = response.etag
    last_modified: _dt.datetime | None = response.last_modified
    headers: list[tuple[str, str]] = []
    if status == 200 and (if_none_match is not None or if_modified_since is not None):
        if (none_match(if_none_match, etag) if if_none_match is not None
                else not_modified_since(if_modified_since or "", last_modified)):
            # Only what guides a cache: nothing about a body that is not sent.
            if etag is not None:
                headers.append(("ETag", etag))
            if last_modified is not None:
                headers.append(("Last-Modified", http_date(last_modified)))
            headers += [(name, value) for name, value in response.headers if name.lower() in _NOT_MODIFIED_KEEPS]
            return 304, headers, 0, 0
    start, length = 0, size
    if response.content_type is not None:
        headers.append(("Content-Type", response.content_type))
    if etag is not None:
        headers.append(("ETag", etag))
    if last_modified is not None:
        headers.append(("Last-Modified", http_date(last_modified)))
    if status == 200:
        headers.append(("Accept-Ranges", "bytes"))
        if (
            method == b"GET"
            and len(range_values) == 1
            and (if_range is None or if_range_holds(if_range, etag, last_modified))
        ):
            answer = single_range(range_values[0], size)
            if answer is RangeAnswer.UNSATISFIABLE:
                headers = [("Content-Range", f"bytes */{size}"), *response.headers, ("Content-Length", "0")]
                return 416, headers, 0, 0
            if isinstance(answer, tuple):
                start, stop = answer
                status, length = 206, stop - start
                headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{size}"))
    headers += response.headers
    if status != 204:
        headers.append(("Content-Length", str(length)))
    if method == b"HEAD" or status == 204:
        length = 0
    return status, headers, start, length


async def serve(
    pool: BufferPool,
    handler: Handler | HTTPServer,
    *,
    port: int,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[ZeroCopyListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 on *port* until cancelled, answering each request with ``await handler(request)``.

    *handler* is an async function of a :class:`Request` returning a
    :class:`Response`, or an :class:`HTTPServer` (for its options and
    :meth:`~HTTPServer.statistics`). Connections are accepted and served
    as :func:`trio_zc.serve_tcp` does, with *pool*'s memory and kernel:
    a client that fails ends its own connection only. Use
    ``await nursery.start(partial(trio_zc.http.serve, pool, handler, port=0))``
    to learn the listeners (and so the port) once it listens.
    """
    server = handler if isinstance(handler, HTTPServer) else HTTPServer(handler)
    await serve_tcp(
        server.handle,
        port,
        pool=pool,
        host=host,
        backlog=backlog,
        handler_nursery=handler_nursery,
        task_status=task_status,
    )
