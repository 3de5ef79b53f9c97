"""trio_zc.http's response heads and per-connection timer: the fast paths keep every promise.

The server writes response heads itself (h11 follows the same states with
the framing headers alone) and caches the head lines of a response it
answers again and again; one cancel scope per connection bounds every wait
for a request. Here: the head is byte for byte what h11 writes for the
whole header list, in every kind of answer; a cached head follows every
change of the response and of the clock; pipelined requests are answered
from one read; the idle and header timeouts hold on the second request of
a connection as on the first, and never cut off a slow handler.
"""

from __future__ import annotations

import os
import subprocess
import sys
from http import HTTPStatus
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.http
from trio_zc.http import _server

from ..http_client import BODIES, LAST_MODIFIED, App, parse, raw, read_to_eof, running

_TAGGED = [
    ("Content-Type", "image/x-test"),
    ("ETag", '"v1"'),
    ("Last-Modified", "Fri, 02 Jan 2026 03:04:05 GMT"),
]
_SMALL = str(len(BODIES["/small"]))


def _head_and_rest(data: bytes) -> tuple[bytes, bytes]:
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _date_of(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        if line.startswith(b"Date: "):
            return line[6:].decode()
    raise AssertionError(f"no Date in {head!r}")


def _h11_head(request: bytes, status: int, headers: list[tuple[str, str]]) -> bytes:
    """What (pure Python) h11 writes for this response to this request, given every header."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    reason = HTTPStatus(status).phrase.encode()
    return conn.send(h11.Response(status_code=status, headers=headers, reason=reason))


# (request bytes, status, every header in the order h11 is given them; Date last unless placed)
CASES = {
    "200": (raw("/tagged"), 200, [*_TAGGED, ("Accept-Ranges", "bytes"), ("Cache-Control", "max-age=60"),
                                  ("X-Extra", "yes"), ("Content-Length", _SMALL)]),
    "HEAD": (raw("/tagged", "HEAD"), 200, [*_TAGGED, ("Accept-Ranges", "bytes"), ("Cache-Control", "max-age=60"),
                                           ("X-Extra", "yes"), ("Content-Length", _SMALL)]),
    "206": (raw("/tagged", headers=[("Range", "bytes=10-19")]), 206,
            [*_TAGGED, ("Accept-Ranges", "bytes"), ("Content-Range", f"bytes 10-19/{_SMALL}"),
             ("Cache-Control", "max-age=60"), ("X-Extra", "yes"), ("Content-Length", "10")]),
    "416": (raw("/tagged", headers=[("Range", "bytes=99999-")]), 416,
            [("Content-Range", f"bytes */{_SMALL}"), ("Cache-Control", "max-age=60"), ("X-Extra", "yes"),
             ("Content-Length", "0")]),
    "304": (raw("/tagged", headers=[("If-None-Match", '"v1"')]), 304,
            [("ETag", '"v1"'), ("Last-Modified", "Fri, 02 Jan 2026 03:04:05 GMT"), ("Cache-Control", "max-age=60")]),
    "client closes": (raw("/tagged", headers=[("Connection", "close")]), 200,
                      [*_TAGGED, ("Accept-Ranges", "bytes"), ("Cache-Control", "max-age=60"), ("X-Extra", "yes"),
                       ("Content-Length", _SMALL)]),
    "HTTP/1.0": (b"GET /tagged HTTP/1.0\r\n\r\n", 200,
                 [*_TAGGED, ("Accept-Ranges", "bytes"), ("Cache-Control", "max-age=60"), ("X-Extra", "yes"),
                  ("Content-Length", _SMALL)]),
    "404": (raw("/nothing"), 404, [("Content-Type", "text/plain"), ("Content-Length", "9")]),
    "bytes body": (raw("/bytes"), 200, [("Content-Type", "text/plain"), ("Accept-Ranges", "bytes"),
                                        ("Content-Length", "10")]),
    "405": (raw("/tagged", "DELETE"), 405, [("Content-Type", "text/plain; charset=utf-8"), ("Allow", "GET, HEAD"),
                                            ("Content-Length", "57")]),
    "500": (raw("/raise"), 500, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "46"),
                                 ("Date", ""), ("Connection", "close")]),
}


@pytest.mark.parametrize("case", CASES)
async def test_heads_are_the_bytes_h11_writes_for_the_whole_header_list(case: str) -> None:
    request, status, headers = CASES[case]
    with trio.fail_after(30):
        async with running("mock") as srv:
            stream = await srv.connect()
            # A second request on the same connection: its head comes from the cache.
            await stream.send_all(request + (b"" if b"close" in request or b"1.0" in request else request))
            await stream.send_eof()
            data = await read_to_eof(stream)
            await stream.aclose()
            await srv.settled()
    for _ in range(2):
        head, data = _head_and_rest(data)
        date = ("Date", _date_of(head))
        given = [date if name == "Date" else (name, value) for name, value in headers]
        assert head == _h11_head(request, status, given if date in given else [*given, date]), case
        method = request.split(b" ", 1)[0].decode()
        (reply,) = parse(head + data, [method], eof=False)
        data = data[int(reply.headers.get("content-length", "0")) if method != "HEAD" else 0 :]
        if not data:
            break
    assert not data


async def test_a_cached_head_follows_every_change_of_the_response_and_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same path answered with a new ETag, size, Last-Modified, header, status
    and content type in turn, and the clock moving: each head says what is sent now."""
    now = [1_800_000_000.0]

    class Clock:
        @staticmethod
        def time() -> float:
            return now[0]

    monkeypatch.setattr(_server, "time", Clock)
    versions = [
        trio_zc.http.Response(b"a" * 10, etag="v1", content_type="text/plain"),
        trio_zc.http.Response(b"a" * 10, etag="v2", content_type="text/plain"),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/plain"),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/html"),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/html", last_modified=LAST_MODIFIED),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/html", last_modified=LAST_MODIFIED.timestamp() + 1),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/html", headers={"X-A": "1"}),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/html", headers={"X-A": "2"}),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/html", headers={"X-A": "2"}, status=203),
        trio_zc.http.Response(b"b" * 11, etag="v2", content_type="text/html", headers={"X-A": "2"}, status=203),
    ]
    answered = iter(versions)

    def handler(app: App) -> trio_zc.http.Handler:
        async def handle(request: trio_zc.http.Request) -> trio_zc.http.Response:
            return next(answered)

        return handle

    with trio.fail_after(30):
        async with running("mock", handler=handler) as srv:
            client = await srv.client()
            dates = []
            seconds: set[int] = set()
            for i, response in enumerate(versions):
                now[0] += 0.6  # a new second every other request
                reply = await client.request("/same")
                assert reply.status == response.status
                assert reply.headers["etag"] == response.etag
                assert reply.headers["content-length"] == str(response.length)
                assert reply.headers["content-type"] == response.content_type
                assert reply.body == response.body
                if response.last_modified is None:
                    assert "last-modified" not in reply.headers
                else:
                    assert reply.headers["last-modified"] == _server.http_date(response.last_modified)
                assert [(k, v) for k, v in reply.raw_headers if k == "x-a"] == [(k.lower(), v) for k, v in response.headers], i
                assert reply.headers["date"] == _server.email.utils.formatdate(int(now[0]), usegmt=True)
                dates.append(reply.headers["date"])
                seconds.add(int(now[0]))
            await client.aclose()
            await srv.settled()
    assert len(set(dates)) == len(seconds) >= 5


async def test_pipelined_requests_are_answered_in_order_from_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = 0
    receive_some = trio_zc.ZeroCopyStream.receive_some
    receive = trio_zc.ZeroCopyStream._receive

    async def counting(self: trio_zc.ZeroCopyStream, max_bytes: int | None = None) -> bytes:
        nonlocal reads
        reads += 1
        return await receive_some(self, max_bytes)

    async def counting_private(self: trio_zc.ZeroCopyStream, max_bytes: int, **options: Any) -> bytes:
        nonlocal reads
        reads += 1
        return await receive(self, max_bytes, **options)

    monkeypatch.setattr(trio_zc.ZeroCopyStream, "receive_some", counting)
    monkeypatch.setattr(trio_zc.ZeroCopyStream, "_receive", counting_private)
    targets = ["/tiny", "/bytes", "/small", "/nope", "/tagged"] * 6
    methods = ["GET", "HEAD"] * 15
    with trio.fail_after(30):
        async with running("mock") as srv:
            stream = await srv.connect()
            await stream.send_all(b"".join(raw(t, m) for t, m in zip(targets, methods)))
            await stream.send_eof()
            data = await read_to_eof(stream)
            await stream.aclose()
            await srv.settled()
    replies = parse(data, methods)
    assert len(replies) == len(targets)
    for target, method, reply in zip(targets, methods, replies):
        expected = BODIES.get(target, {"/bytes": b"0123456789", "/nope": b"not here\n"}.get(target, BODIES["/small"]))
        assert reply.body == (b"" if method == "HEAD" else expected), target
    # Every request came in the first read (about 1.5 KB); the second read is the client's EOF.
    assert reads == 2, reads
    assert [request.path for request in srv.app.requests] == targets


async def test_the_second_request_of_a_connection_has_header_timeout_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connection's one timer: after a request answered, a client that trickles
    its next head is closed header_timeout after its first byte."""
    async with running("mock", idle_timeout=20, header_timeout=10) as srv:
        peer = await srv.connect()
        await peer.send_all(raw("/tiny"))
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(BODIES["/tiny"]):
            data += await peer.receive_some(1 << 16)
        await trio.sleep(15)  # idle for a while: idle_timeout's business, under its 20 s
        started = trio.current_time()
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            await peer.send_all(b"GET / HTTP/1.1\r\n")
            try:
                for _ in range(1000):
                    await peer.send_all(b"X")
                    sent += 1
                    await trio.sleep(1)
            except trio.BrokenResourceError:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            assert await read_to_eof(peer) == b""
            closed_at = trio.current_time()
            nursery.cancel_scope.cancel()
        assert 10 <= closed_at - started <= 11
        await srv.settled()
        stats = srv.server.statistics()
        assert (stats.responses, stats.header_timeouts, stats.idle_timeouts) == (1, 1, 0)


async def test_an_idle_keep_alive_connection_is_closed_after_each_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running("mock", idle_timeout=20, header_timeout=10) as srv:
        client = await srv.client()
        for _ in range(3):
            await trio.sleep(19)  # under idle_timeout each time: the timer starts anew after each answer
            assert (await client.request("/tiny")).body == BODIES["/tiny"]
        started = trio.current_time()
        assert await read_to_eof(client.stream) == b""
        assert 20 <= trio.current_time() - started <= 21
        await srv.settled()
        assert srv.server.statistics().idle_timeouts == 1


async def test_a_slow_handler_is_not_cut_off_by_the_connections_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connection's timer is off while a request is answered: a handler slower
    than idle_timeout and header_timeout together still answers, twice."""
    async with running("mock", idle_timeout=2, header_timeout=1) as srv:
        srv.app.slow = 5.0
        client = await srv.client()
        for _ in range(2):
            assert (await client.request("/slow")).body == BODIES["/medium"]
        await client.aclose()
        await srv.settled()
        stats = srv.server.statistics()
        assert (stats.responses, stats.idle_timeouts, stats.header_timeouts) == (2, 0, 0)


def test_the_server_uses_the_compiled_h11_where_installed_and_h11_otherwise() -> None:
    try:
        import h11_mypyc  # noqa: F401
    except ImportError:
        assert _server.h11 is h11
        pytest.skip("h11-mypyc is not installed: the server uses h11, as checked")
    expected = "h11" if os.environ.get("TRIO_ZC_PURE_H11") else "h11_mypyc"
    assert _server.h11.__name__ == expected


@pytest.mark.skipif(bool(os.environ.get("TRIO_ZC_PURE_H11")), reason="this run is the pure h11 run")
def test_the_http_tests_pass_with_pure_h11_too() -> None:
    """Where the compiled h11 is installed, these tests and the main HTTP ones once more on h11 itself."""
    try:
        import h11_mypyc  # noqa: F401
    except ImportError:
        pytest.skip("h11-mypyc is not installed: every run is on h11")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRIO_ZC_PURE_H11": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/api/test_http_heads.py", "tests/api/test_http.py", "tests/api/test_http_cache.py"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("name", ["copy", "mock"])
async def test_the_servers_receive_keeps_the_promises_of_a_receive(name: str) -> None:
    """What the server's loop reads with (ZeroCopyStream._receive) skips only a second
    schedule point in a row and arms its timer only when it waits: it is still a
    cancellation point, a wait lets other tasks run, two readers at once are refused,
    and a closed stream refuses."""
    from ..streams import kernel, stream_pair

    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel(name)) as pool:
        stream, peer = await stream_pair(pool)
        waits = []
        await peer.send_all(b"ready")
        await trio.sleep(0.1)  # in the socket by now
        with trio.fail_after(10):
            data = b""
            while len(data) < 5:
                data += await stream._receive(100, schedule=False, on_wait=lambda: waits.append(1))
            assert data == b"ready"
            assert not waits  # no wait, so no call: the server's idle timer is never armed

            async def later() -> None:
                await trio.sleep(0.1)
                await peer.send_all(b"!")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(later)
                assert await stream._receive(100, on_wait=lambda: waits.append(1)) == b"!"
            assert waits  # it waited: called before waiting
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await stream._receive(100, schedule=False)
        ran = []

        async def other() -> None:
            ran.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            with trio.move_on_after(0.2):
                await stream._receive(100, schedule=False)  # nothing there: waits
            assert ran == [True]

            nursery.start_soon(partial(stream._receive, 100, schedule=False))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await stream.receive_some(100)
            await peer.send_all(b"x")
        await stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await stream._receive(100, schedule=False)
        await peer.aclose()
