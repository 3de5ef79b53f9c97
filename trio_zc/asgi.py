"""Answering ASGI requests with sealed leases (Starlette and other ASGI frameworks, on Trio).

A :class:`LeaseResponse` is an ASGI application for one request: a handler
returns it where the framework takes a response (Starlette calls
``await response(scope, receive, send)``), and it sends the lease's bytes
with a Content-Length, then releases the lease::

    async def image(request: starlette.requests.Request) -> trio_zc.asgi.LeaseResponse:
        sealed = await render(pool, request.path_params["name"])
        return trio_zc.asgi.LeaseResponse(sealed, content_type="image/png")

How the bytes go:

- Where the server offers the ``http.response.zerocopysend`` extension
  (anycorn does, on plaintext HTTP/1.1), the server ``sendfile``\\ s them
  from the pool's memfd, through a read-only descriptor of it that the
  response opens and closes: no copy, and the server cannot write the pool's
  memory through it by mistake (code in the process could reopen it
  read-write through ``/proc/self/fd``). A socket may keep the pages after
  every ``sendfile`` call has returned, so the lease's pages are then *replaced* when it goes back to
  the pool (punched out of the memfd, as the sendfile kernel does), never
  rewritten in place; this whatever the pool's kernel. A pool whose kernel
  keeps its own references to the arena's pages (io_uring with registered
  buffers) or whose leases may split a huge-page folio cannot do that, and
  sends an ordinary body instead.
- Elsewhere (hypercorn; adopted leases, which have no memfd), as ordinary
  ``http.response.body`` messages of :class:`bytes` copied from the lease,
  at most :data:`BODY_CHUNK` bytes each: ASGI says a body is a byte string,
  and a server may keep it after ``send()`` returns (hypercorn copies a
  memoryview into bytes anyway).

The lease is held -- counted as a send in flight, so its memory cannot go
back to the pool even if someone releases it -- until the server has
issued every byte, and released when the response ends, whatever happens
(the client leaves, the task is cancelled, the server raises: that
exception propagates as it is).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Union

from ._cache import CachedLease
from ._errors import StaleLeaseError
from ._headers import Headers, check_header_value, check_headers
from ._lease import Lending, SealedLease, WritableLease, lend
from ._validate import check_bool

#: The most bytes one ``http.response.body`` message copies out of the lease
#: (where the server has no zero-copy send): bounds the copy held at once.
BODY_CHUNK = 1 << 20

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_Body = Union[SealedLease, CachedLease[Any]]

_ZEROCOPY = "http.response.zerocopysend"

#: Headers the response writes itself.
_OWN_HEADERS = {
    "content-length": "the response sets it from the body",
    "transfer-encoding": "the response is framed by its Content-Length",
    "content-type": "use LeaseResponse(content_type=...)",
}


def _header_value(what: str, value: object) -> bytes:
    return check_header_value(what, value).encode("ascii")


def _headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    checked = check_headers(headers, owner="LeaseResponse", reserved=_OWN_HEADERS)
    return [(name.lower().encode("ascii"), value.encode("ascii")) for name, value in checked]


def _lease_of(body: object) -> SealedLease:
    if isinstance(body, SealedLease):
        return body
    if isinstance(body, CachedLease):
        return body.lease
    hint = " (seal() it first)" if isinstance(body, WritableLease) else ""
    raise TypeError(
        f"a LeaseResponse body is a SealedLease or a CachedLease, not {type(body).__name__}{hint}"
    )


def _release(body: _Body) -> None:
    if isinstance(body, CachedLease):
        body.release()
        return
    try:
        body.release()
    except StaleLeaseError:
        pass  # the application released it itself; the response held its memory meanwhile


class LeaseResponse:
    """An ASGI response whose body is a sealed lease (or a slice of one); it owns the lease.

    ``LeaseResponse(sealed, content_type="image/jpeg")`` answers one request
    with *status*, *headers* (a mapping or ``(name, value)`` string pairs;
    not Content-Length, Transfer-Encoding or Content-Type, which the response
    sets) and a Content-Length; *offset* and *nbytes* select a slice of the
    lease. A :class:`~trio_zc.CachedLease` (a hold on a cache entry) is
    sent the same way, and its hold released at the end.

    From construction on, the response owns the body: calling it (once:
    ``await response(scope, receive, send)``) sends it and then releases
    the lease (or the hold), whether the response completes, the client
    leaves, the task is cancelled or the server raises (which propagates
    unchanged). A response that is never called leaves the lease to its
    owner. A HEAD request gets the headers and no body. With
    ``zerocopy=False`` the body always goes as ordinary body messages.

    Bad values raise :class:`TypeError` or :class:`ValueError` here; a
    stale lease (released, or its pool closed) raises
    :class:`~trio_zc.StaleLeaseError`, here or when the response is called,
    before anything is sent.
    """

    __slots__ = ("_body", "_used", "_status", "_headers", "_content_type", "_offset", "_nbytes", "_zerocopy")

    def __init__(
        self,
        body: SealedLease | CachedLease[Any],
        *,
        status: int = 200,
        headers: Headers = (),
        content_type: str | None = None,
        offset: int = 0,
        nbytes: int | None = None,
        zerocopy: bool = True,
    ) -> None:
        size = _lease_of(body).nbytes
        if type(status) is not int:
            raise TypeError(f"status must be an int, not {type(status).__name__}")
        if not 200 <= status <= 599:
            raise ValueError(f"status must be between 200 and 599, not {status}")
        if type(offset) is not int or (nbytes is not None and type(nbytes) is not int):
            raise TypeError("offset and nbytes must be ints")
        if not 0 <= offset <= size:
            raise ValueError(f"offset {offset} is outside the lease's {size} bytes")
        if nbytes is None:
            nbytes = size - offset
        elif not 0 <= nbytes <= size - offset:
            raise ValueError(f"nbytes {nbytes} at offset {offset} does not fit the lease's {size} bytes")
        if status in (204, 304) and nbytes:
            raise ValueError(f"a {status} response has no body")
        check_bool("zerocopy", zerocopy)
        self._body: _Body = body
        self._used = False
        # Read-only from here on: what the response sends was checked above,
        # and a change made after the headers went out could not be honoured.
        self._status = status
        pairs = _headers(headers)
        if content_type is not None:
            pairs.append((b"content-type", _header_value("content_type", content_type)))
        self._headers = tuple(pairs)
        self._content_type = content_type
        self._offset = offset
        self._nbytes = nbytes
        self._zerocopy = zerocopy

    @property
    def status(self) -> int:
        """The status code."""
        return self._status

    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers the response sends besides Content-Length (Content-Type among them), as ASGI byte pairs."""
        return self._headers

    @property
    def content_type(self) -> str | None:
        """The Content-Type, if any."""
        return self._content_type

    @property
    def offset(self) -> int:
        """Where the body starts in the lease."""
        return self._offset

    @property
    def nbytes(self) -> int:
        """How many bytes of the lease the body sends."""
        return self._nbytes

    @property
    def zerocopy(self) -> bool:
        """Whether to use the server's ``http.response.zerocopysend`` where it offers it."""
        return self._zerocopy

    def __repr__(self) -> str:
        return f"<trio_zc.asgi.LeaseResponse {self.status}, {self.nbytes} bytes>"

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Send the response to one ASGI HTTP request, then release the lease."""
        if self._used:
            raise RuntimeError("a LeaseResponse answers one request, and this one was already sent")
        self._used = True
        try:
            if scope.get("type") != "http":
                raise ValueError(f"a LeaseResponse answers HTTP requests, not {scope.get('type')!r} ones")
            # Before anything goes out: a lease released since the response
            # was made raises here, and the framework can still answer 500.
            lending = lend(_lease_of(self._body))
            try:
                await self._send(scope, send, lending)
            finally:
                lending.end()
        finally:
            _release(self._body)

    async def _send(self, scope: _Scope, send: _Send, lending: Lending) -> None:
        headers = list(self._headers)
        if self.status not in (204, 304):
            # A 204 has no Content-Length (RFC 9110, 8.6), and a 304's would
            # describe the 200 response, not this empty one.
            headers = [(b"content-length", b"%d" % self.nbytes), *headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        if not self.nbytes or scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        extensions = scope.get("extensions") or {}
        if self.zerocopy and _ZEROCOPY in extensions:
            lent = lending.sendfile_range(self.offset, self.nbytes)
            if lent is not None:
                file, offset = lent
                # anycorn 0.20 returns from this send only once its
                # os.sendfile loop has issued all `count` bytes, or the
                # connection broke (HTTPStream.app_send -> H11Protocol's
                # SendFile event -> TCPServer.protocol_send -> its sendfile()
                # loop, which retries EAGAIN until done): the loop runs inside
                # the send, under the connection's send lock and a shielded
                # cancel scope; more_body is only read afterwards, to end the
                # response. So the lease is held (`lending`) until
                # every byte was issued; the pages a socket still holds after
                # that are replaced when the lease goes back (sendfile_range
                # marked them held). more_body=False ends the response.
                await send(
                    {
                        "type": _ZEROCOPY,
                        "file": file,
                        "offset": offset,
                        "count": self.nbytes,
                        "more_body": False,
                    }
                )
                return
        view = lending.view(self.offset, self.nbytes)
        with view:
            start = 0
            while start < self.nbytes:
                end = min(start + BODY_CHUNK, self.nbytes)
                # A copy: ASGI bodies are byte strings, and a server may keep
                # one after send() returns.
                chunk = view[start:end].tobytes()
                start = end
                await send({"type": "http.response.body", "body": chunk, "more_body": start < self.nbytes})


__all__ = ["BODY_CHUNK", "LeaseResponse"]

# Reprs, tracebacks and the reference show trio_zc.asgi.X.
from ._exports import publish as _publish  # noqa: E402

_publish(globals())
del _publish

from ._ki import protect_package as _protect_package  # noqa: E402

_protect_package(__name__)
del _protect_package
