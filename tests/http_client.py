"""Clients and a test application for the trio_zc.http tests.

The clients speak through any Trio stream (a loopback TCP stream, or the
mock kernel's peer): an h11 client for well-formed exchanges, and raw bytes
(read back and parsed with a second h11 client) for pipelining, garbage and
clients that leave. Every wait is bounded by the callers' fail_after.
"""

from __future__ import annotations

import datetime as dt
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import trio

import trio_zc
import trio_zc.http
import trio_zc.testing

from .streams import ALWAYS_ZC, kernel, pattern


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


def _reply(event: h11.Response, body: bytes) -> Reply:
    raw = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers]
    headers: dict[str, str] = {}
    for name, value in raw:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Reply(event.status_code, headers, body, raw)


class Client:
    """An h11 client over a Trio stream: one request at a time, keep-alive."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, target: str = "/", headers: Sequence[tuple[str, str | bytes]] = (), method: str = "GET"
    ) -> Reply:
        request = h11.Request(method=method, target=target, headers=[("Host", "test"), *headers])
        await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        return await self.reply()

    async def reply(self) -> Reply:
        response = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(1 << 20))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        assert response is not None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return _reply(response, bytes(body))

    def closed_by_server(self) -> bool:
        return self.conn.their_state is h11.MUST_CLOSE or self.conn.their_state is h11.CLOSED

    async def aclose(self) -> None:
        await self.stream.aclose()


def raw(target: str = "/", method: str = "GET", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_to_eof(stream: trio.abc.ReceiveStream, limit: int = 1 << 30) -> bytes:
    """Everything until the server closes (a reset after some bytes counts as a close)."""
    data = bytearray()
    try:
        while len(data) < limit:
            chunk = await stream.receive_some(1 << 20)
            if not chunk:
                break
            data += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(data)


def parse(data: bytes, methods: Sequence[str], *, eof: bool = True) -> list[Reply]:
    """The responses in *data*, to requests of *methods* in that order (h11 checks the framing).

    With *eof* the data is all there is (a response cut short fails); without,
    the complete responses so far.
    """
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    replies = []
    for method in methods:
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        conn.send(h11.EndOfMessage())
        response = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA and not eof:
                return replies
            else:
                raise AssertionError(f"response {len(replies)} incomplete: {event!r}")
        assert response is not None
        replies.append(_reply(response, bytes(body)))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            break
    return replies


async def read_replies(stream: trio.abc.ReceiveStream, methods: Sequence[str]) -> list[Reply]:
    """Read until the responses to requests of *methods* (pipelined) have all come."""
    data = b""
    while True:
        chunk = await stream.receive_some(4 << 20)
        assert chunk, "the server closed before answering every request"
        data += chunk
        replies = parse(data, methods, eof=False)
        if len(replies) == len(methods):
            return replies


# -- the application under test ----------------------------------------------------------

#: The bodies the test application serves: sizes from a byte to 4 MiB.
SIZES = {"tiny": 1, "small": 13_000, "medium": 517_000, "large": 4 << 20}
BODIES = {f"/{name}": pattern(size, seed) for seed, (name, size) in enumerate(SIZES.items())}
LAST_MODIFIED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


async def sealed_with(pool: trio_zc.BufferPool, data: bytes) -> trio_zc.SealedLease:
    lease = await pool.acquire(len(data))
    lease.write(data)
    return lease.seal()


class App:
    """Routes: ``/<size name>`` (a fresh lease per request), ``/slice`` (bytes 100-1099 of
    /medium), ``/bytes``, ``/tagged`` (ETag and Last-Modified), ``/slow`` (sleeps first),
    ``/raise``, ``/none``, ``/released``, anything else 404."""

    def __init__(self, pool: trio_zc.BufferPool) -> None:
        self.pool = pool
        self.requests: list[trio_zc.http.Request] = []
        self.slow = 1.0
        self.entered = trio.Event()

    async def __call__(self, request: trio_zc.http.Request) -> trio_zc.http.Response:
        self.requests.append(request)
        path = request.path
        if path in BODIES:
            return trio_zc.http.Response(await sealed_with(self.pool, BODIES[path]), content_type="image/x-test")
        if path == "/slice":
            return trio_zc.http.Response(await sealed_with(self.pool, BODIES["/medium"]), offset=100, nbytes=1000)
        if path == "/bytes":
            return trio_zc.http.Response(b"0123456789", content_type="text/plain")
        if path == "/tagged":
            return trio_zc.http.Response(
                await sealed_with(self.pool, BODIES["/small"]),
                etag="v1",
                last_modified=LAST_MODIFIED,
                headers=[("Cache-Control", "max-age=60"), ("X-Extra", "yes")],
                content_type="image/x-test",
            )
        if path == "/slow":
            self.entered.set()
            await trio.sleep(self.slow)
            return trio_zc.http.Response(await sealed_with(self.pool, BODIES["/medium"]))
        if path == "/raise":
            raise RuntimeError("the handler's bug")
        if path == "/none":
            return None  # type: ignore[return-value]
        if path == "/released":
            sealed = await sealed_with(self.pool, b"x" * 100)
            response = trio_zc.http.Response(sealed)
            sealed.release()  # the application's bug: the server must not send freed memory
            return response
        return trio_zc.http.Response(b"not here\n", status=404, content_type="text/plain")


@dataclass
class Running:
    pool: trio_zc.BufferPool
    server: trio_zc.http.HTTPServer
    app: App
    connect: Callable[[], Awaitable[trio.abc.Stream]]
    port: int | None
    listeners: list[trio_zc.ZeroCopyListener]
    opened: list[trio.abc.Stream]

    async def tcp(self, rcvbuf: int | None = None) -> trio.SocketStream:
        """A raw loopback connection to the server, with a small receive buffer if asked."""
        assert self.port is not None
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        stream = trio.SocketStream(sock)
        self.opened.append(stream)
        await sock.connect(("127.0.0.1", self.port))
        return stream

    async def client(self) -> Client:
        return Client(await self.connect())

    async def settled(self) -> None:
        """Wait (boundedly) until every connection ended and every lease is back."""
        with trio.fail_after(30):
            while True:
                stats = self.pool.statistics()
                if (
                    self.server.statistics().open_connections == 0
                    and stats.sealed_leases == 0
                    and stats.writable_leases == 0
                    and stats.sends_in_flight == 0
                ):
                    return
                await trio.sleep(0.01)


@asynccontextmanager
async def running(
    name: str = "copy",
    *,
    handler: Callable[[App], trio_zc.http.Handler] | None = None,
    pool_bytes: int = 64 << 20,
    zerocopy_always: bool = True,
    **options: float,
) -> AsyncIterator[Running]:
    """The test application served on kernel *name*: over loopback TCP, or the mock kernel's pairs."""
    the_kernel = kernel(name)
    policy = ALWAYS_ZC if zerocopy_always else None
    async with trio_zc.open_pool(max_bytes=pool_bytes, kernel=the_kernel, policy=policy) as pool:
        app = App(pool)
        opened: list[trio.abc.Stream] = []
        server = trio_zc.http.HTTPServer(app if handler is None else handler(app), **options)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            if isinstance(the_kernel, trio_zc.testing.MockKernel):
                mock = the_kernel

                async def serve_one(stream: trio_zc.ZeroCopyStream) -> None:
                    try:
                        await server.handle(stream)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    finally:
                        await stream.aclose()

                async def connect() -> trio.abc.Stream:
                    stream, peer = mock.open_stream(pool)
                    nursery.start_soon(serve_one, stream)
                    opened.append(peer)
                    await trio.lowlevel.checkpoint()
                    return peer

                running = Running(pool, server, app, connect, None, [], opened)
            else:
                listeners = await nursery.start(
                    partial(trio_zc.http.serve, pool, server, port=0, host="127.0.0.1")
                )
                port = listeners[0].listener.socket.getsockname()[1]

                async def connect() -> trio.abc.Stream:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    opened.append(stream)
                    return stream

                running = Running(pool, server, app, connect, port, listeners, opened)
            try:
                yield running
            finally:
                for stream in opened:
                    await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


def reset_on_close(stream: trio.SocketStream) -> None:
    """Make closing *stream* send a reset (SO_LINGER 0) instead of a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
