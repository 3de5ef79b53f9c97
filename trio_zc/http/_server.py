"""The HTTP/1.1 server: h11 parses and keeps the state, ZeroCopyStream sends the bodies.

One task per connection (:func:`trio_zc.serve_tcp` runs them), requests
answered one after another in the order they came (pipelining), for as long
as both sides keep the connection alive. h11 does no I/O: this module reads
into it in bounded chunks, and only when it needs more data, so a
connection holds at most ``max_header_bytes`` plus one chunk of a client's
bytes whatever the client sends.

Responses are written here, not by h11: h11 is shown each response's
framing headers (status, Content-Length, Connection) and its body's length,
which moves its state machine exactly as the whole response would, and
decides whether the connection stays open; the head itself is formatted
from headers :class:`Response` validated, in h11's format (the tests
compare the bytes), and the lines that do not change from one answer to
the next are kept per distinct response. Small responses are mostly this
per-request work, so it is kept to what each request needs.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Union

import attrs
import trio

if TYPE_CHECKING:
    import h11
elif os.environ.get("TRIO_ZC_PURE_H11"):
    import h11
else:
    try:
        # h11 compiled with mypyc (the h11-mypyc distribution, which the
        # http extra installs where it has wheels): the same parser and state
        # machine, about twice as fast, which is a good part of the cost of
        # a small response. h11 itself where it is not installed (or where
        # TRIO_ZC_PURE_H11 is set).
        import h11_mypyc as h11
    except ImportError:
        import h11

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


def _date_line() -> bytes:
    """The Date header's line, made once a second."""
    global _date_line_cache
    now = int(time.time())
    if _date_line_cache[0] != now:
        _date_line_cache = (now, b"Date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode("ascii"))
    return _date_line_cache[1]


_date_line_cache: tuple[int, bytes] = (0, b"")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


_status_lines: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``: h11's status line, with the standard reason phrase."""
    line = _status_lines.get(status)
    if line is None:
        line = _status_lines[status] = b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
    return line


#: The end of a head that closes its connection, and of one that does not.
_CLOSE_END = b"Connection: close\r\n\r\n"
_END = h11.EndOfMessage()

#: Head lines of responses by everything they are made of (see _plan):
#: a server answers the same cached image over and over.
_LINES_CACHE: dict[object, bytes] = {}
_LINES_CACHE_SIZE = 1024

_framing_events: dict[tuple[int, int | None, bool], h11.Response] = {}


def _framing_event(status: int, content_length: int | None, close: bool) -> h11.Response:
    """The h11 event that moves h11's state as a response with these framing headers does."""
    key = (status, content_length, close)
    event = _framing_events.get(key)
    if event is None:
        headers = [] if content_length is None else [(b"Content-Length", b"%d" % content_length)]
        if close:
            headers.append((b"Connection", b"close"))
        event = h11.Response(status_code=status, headers=headers)
        if len(_framing_events) >= _LINES_CACHE_SIZE:
            _framing_events.clear()
        _framing_events[key] = event
    return event


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
            # One cancel scope bounds every wait for a request on this
            # connection, and only the waits: its deadline is set when a read
            # finds no bytes and must wait (a client's idleness starts
            # counting then), and made infinite again once the request is
            # in -- a slow handler or send is not the client's idleness
            # (send_timeout bounds sends). Under load the next request is
            # usually there already and the deadline is never touched; a
            # scope per request would cost its setup and teardown each time.
            timer = trio.CancelScope()
            started = False
            armed = False

            def arm() -> None:
                nonlocal armed
                if not armed:
                    armed = True
                    timer.deadline = trio.current_time() + (self.header_timeout if started else self.idle_timeout)

            with timer:
                while True:
                    pending, closed = conn.trailing_data
                    started = bool(pending)  # a pipelined request is under way already
                    received = False
                    try:
                        # With nothing buffered h11 can only ask for more: skip asking.
                        event = conn.next_event() if pending or closed else h11.NEED_DATA
                        while event is h11.NEED_DATA:
                            if received and not started:
                                # Part of a head came, not all of it: from
                                # now on the head has header_timeout to finish.
                                started = True
                                if armed:
                                    timer.deadline = trio.current_time() + self.header_timeout
                            # The first read of a request comes just after a
                            # schedule point (the previous answer's send, or
                            # the task's start): bytes already there need
                            # not wait for another one.
                            data = await stream._receive(RECEIVE_SIZE, schedule=received, on_wait=arm)
                            received = received or bool(data)
                            conn.receive_data(data)  # b"" (the client closed) ends in ConnectionClosed or an error
                            event = conn.next_event()
                    except h11.RemoteProtocolError as exc:
                        timer.deadline = math.inf
                        armed = False
                        await self._reject(conn, stream, exc)
                        return
                    if armed:
                        timer.deadline = math.inf
                        armed = False
                        if timer.cancel_called:
                            # The deadline passed as the head completed: the
                            # client took as long as the timeout allows.
                            break
                    if not isinstance(event, h11.Request):
                        return  # ConnectionClosed: the client closed between requests
                    if not await self._answer(conn, stream, event, peer):
                        return
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                    else:
                        # The client asked to close (or spoke HTTP/1.0), or sent a body.
                        await self._linger(stream)
                        return
            # Only a timeout ends the loop above without returning.
            if started:
                self._header_timeouts += 1
                LOGGER.debug("closing a connection whose request head took longer than %s s", self.header_timeout)
            else:
                self._idle_timeouts += 1
        finally:
            self._open -= 1

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
            headers=tuple([(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers]),
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
            status, lines, content_length, start, length = plan
            if status == 206:
                self._partial += 1
            elif status == 304:
                self._not_modified += 1
            # h11 follows the response through the same states as if it had
            # written the head itself: an event with the headers its state
            # machine reads (the status, Content-Length, Connection), then
            # the body's length, then the end. What it writes for them is
            # not sent: the head is ours, of headers Response validated
            # (tests compare it with what h11 writes for the whole list).
            conn.send(_framing_event(status, content_length, close))
            if length:
                # h11 counts the body's bytes against Content-Length without
                # seeing them; with length framing it hands the placeholder
                # back alone (no chunk framing around it).
                placeholder = _Placeholder(length)
                parts = conn.send_with_data_passthrough(h11.Data(data=placeholder))  # type: ignore[arg-type]
                if parts is None or len(parts) != 1 or parts[0] is not placeholder:  # type: ignore[comparison-overlap]  # pragma: no cover - we always set Content-Length
                    raise AssertionError(f"h11 framed the body unexpectedly: {parts!r}")
            conn.send(_END)
            # h11 closes after this response if we asked, or if the client
            # did (Connection: close, HTTP/1.0): then the head says so, as
            # h11 would have written it.
            head = lines + _date_line() + (_CLOSE_END if close or conn.our_state is h11.MUST_CLOSE else b"\r\n")
            body = response.body
            if isinstance(body, CachedLease):
                body = body.lease
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
) -> tuple[int, bytes, int | None, int, int]:
    """(status, head lines, Content-Length, start, length) of what to send for *response* to this request.

    The head lines are the status line and every header up to Content-Length
    (Date, Connection and the blank line follow); Content-Length is None
    where there is none (204, 304). *start* and *length* select the bytes of
    the response's own slice to send (length 0: no body bytes).
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
    size = response.length
    length = 0 if method == b"HEAD" or status == 204 else size
    if not (range_values or if_none_match is not None or since_values):
        # The common answer: the response's own status and headers, whose
        # head lines depend on nothing else, so they are formatted once.
        key = (status, response.content_type, response.etag, response.last_modified, response.headers, size)
        lines = _LINES_CACHE.get(key)
        if lines is None:
            lines = _format(status, _headers(response, status == 200, None, size))
            if len(_LINES_CACHE) >= _LINES_CACHE_SIZE:
                _LINES_CACHE.clear()
            _LINES_CACHE[key] = lines
        return status, lines, (None if status == 204 else size), 0, length
    # One value each, or they are ignored (If-Modified-Since), or fail (If-Range: the whole body).
    if_modified_since = since_values[0] if len(since_values) == 1 else None
    if_range = if_range_values[0] if len(if_range_values) == 1 else ("" if if_range_values else None)
    etag = response.etag
    last_modified: _dt.datetime | None = response.last_modified
    headers: list[tuple[str, str]]
    if status == 200 and (if_none_match is not None or if_modified_since is not None):
        if (none_match(if_none_match, etag) if if_none_match is not None
                else not_modified_since(if_modified_since or "", last_modified)):
            # Only what guides a cache: nothing about a body that is not sent.
            headers = []
            if etag is not None:
                headers.append(("ETag", etag))
            if last_modified is not None:
                headers.append(("Last-Modified", http_date(last_modified)))
            headers += [(name, value) for name, value in response.headers if name.lower() in _NOT_MODIFIED_KEEPS]
            return 304, _format(304, headers), None, 0, 0
    start = 0
    content_range = None
    if (
        status == 200
        and method == b"GET"
        and len(range_values) == 1
        and (if_range is None or if_range_holds(if_range, etag, last_modified))
    ):
        answer = single_range(range_values[0], size)
        if answer is RangeAnswer.UNSATISFIABLE:
            headers = [("Content-Range", f"bytes */{size}"), *response.headers, ("Content-Length", "0")]
            return 416, _format(416, headers), 0, 0, 0
        if isinstance(answer, tuple):
            start, stop = answer
            status, length, size = 206, stop - start, stop - start
            content_range = f"bytes {start}-{stop - 1}/{response.length}"
    return status, _format(status, _headers(response, response.status == 200, content_range, size)), (
        None if status == 204 else size
    ), start, length


def _headers(response: Response, ranges: bool, content_range: str | None, content_length: int) -> list[tuple[str, str]]:
    """The headers of a response with a body (or a HEAD answer for one), in the order they are sent."""
    headers: list[tuple[str, str]] = []
    if response.content_type is not None:
        headers.append(("Content-Type", response.content_type))
    if response.etag is not None:
        headers.append(("ETag", response.etag))
    if response.last_modified is not None:
        headers.append(("Last-Modified", http_date(response.last_modified)))
    if ranges:
        headers.append(("Accept-Ranges", "bytes"))
    if content_range is not None:
        headers.append(("Content-Range", content_range))
    headers += response.headers
    if response.status != 204:
        headers.append(("Content-Length", str(content_length)))
    return headers


def _format(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """The status line and header lines, as h11 writes them (names as given, ``name: value``).

    Every name and value here was validated (Response checks what the
    application gives; the rest is the server's own ASCII), so this only
    formats.
    """
    # str.__str__: the characters that were validated, even from a subclass of str.
    text = "".join([f"{str.__str__(name)}: {str.__str__(value)}\r\n" for name, value in headers])
    return _status_line(status) + text.encode("ascii")


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
