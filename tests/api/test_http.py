"""trio_zc.http: HTTP/1.1 over real loopback sockets (and the mock kernel), bytes compared.

Bodies of 1 byte to 4 MiB arrive byte for byte on every kernel, whole, in
ranges, as slices and pipelined; HEAD, Range, ETag and Last-Modified
behave as RFC 9110 says, including what an attacker would send (ranges
like ``bytes=-0``, ``bytes=5-2`` or numbers of a hundred digits,
``If-None-Match: *``, HEAD with Range, requests after ``Connection:
close``); garbage gets 400 (or 431, 501, 505) and a close; idle, slow and
stalled clients are cut off in bounded time; a client that leaves at any
point of an exchange ends its own connection only, and every lease comes
back to the pool.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

import h11
import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.http
from trio_zc.http._conditional import (
    RangeAnswer,
    if_range_holds,
    none_match,
    normalize_etag,
    not_modified_since,
    parse_etag_list,
    single_range,
)

from ..http_client import (
    BODIES,
    LAST_MODIFIED,
    Client,
    parse,
    raw,
    read_replies,
    read_to_eof,
    reset_on_close,
    running,
    sealed_with,
)
from ..streams import KERNELS

REAL_KERNELS = [name for name in KERNELS if name != "mock"]


# -- bodies, byte for byte, on every kernel ------------------------------------------------


@pytest.mark.parametrize("name", KERNELS)
async def test_every_body_arrives_byte_for_byte_on_every_kernel(name: str) -> None:
    with trio.fail_after(120):
        async with running(name) as srv:
            client = await srv.client()
            for path, data in BODIES.items():
                reply = await client.request(path)
                assert reply.status == 200
                assert reply.headers["content-length"] == str(len(data))
                assert reply.headers["accept-ranges"] == "bytes"
                assert reply.body == data, path
                # A range of it, from the same lease type.
                if len(data) > 2:
                    lo, hi = len(data) // 3, len(data) // 3 * 2
                    reply = await client.request(path, [("Range", f"bytes={lo}-{hi}")])
                    assert reply.status == 206
                    assert reply.headers["content-range"] == f"bytes {lo}-{hi}/{len(data)}"
                    assert reply.body == data[lo : hi + 1], path
                    reply = await client.request(path, [("Range", "bytes=-7")])
                    assert (reply.status, reply.body) == (206, data[-7:])
                reply = await client.request(path, method="HEAD")
                assert (reply.status, reply.body) == (200, b"")
                assert reply.headers["content-length"] == str(len(data))
            # A slice of a lease, and a range of that slice.
            reply = await client.request("/slice")
            assert reply.body == BODIES["/medium"][100:1100]
            reply = await client.request("/slice", [("Range", "bytes=10-19")])
            assert reply.headers["content-range"] == "bytes 10-19/1000"
            assert reply.body == BODIES["/medium"][110:120]
            # Pipelined: every request sent at once, every answer in order.
            targets = [*BODIES, "/slice", "/bytes", "/nothing", *BODIES]
            methods = ["GET"] * len(targets)
            methods[2] = "HEAD"
            await client.stream.send_all(b"".join(raw(t, m) for t, m in zip(targets, methods)))
            replies = await read_replies(client.stream, methods)
            expected = {**BODIES, "/slice": BODIES["/medium"][100:1100], "/bytes": b"0123456789",
                        "/nothing": b"not here\n"}
            for target, method, reply in zip(targets, methods, replies):
                assert reply.body == (b"" if method == "HEAD" else expected[target]), target
            await client.aclose()
            await srv.settled()
            stats = srv.server.statistics()
            assert stats.responses == stats.requests
            assert stats.handler_errors == stats.bad_requests == 0
            if name != "copy" and name != "mock":
                # The bodies went out as leases (zero-copy calls, or the pages
                # handed to sendfile), not copies of them.
                sent = srv.pool.statistics().sent
                assert sent.zerocopy_calls > 0 or sent.bytes_zerocopy > 0


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with running() as srv:
        client = await srv.client()
        for _ in range(20):
            reply = await client.request("/small")
            assert reply.body == BODIES["/small"]
            assert "connection" not in reply.headers
        await client.aclose()
        await srv.settled()
        assert srv.server.statistics().connections == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running() as srv:
        stream = await srv.connect()
        targets = [f"/{name}" for name in ("tiny", "bytes", "small", "nope", "tiny", "medium")] * 5
        await stream.send_all(b"".join(raw(t) for t in targets) + raw("/tiny", headers=[("Connection", "close")]))
        with trio.fail_after(30):
            data = await read_to_eof(stream)
        await stream.aclose()
        replies = parse(data, ["GET"] * (len(targets) + 1))
        assert len(replies) == len(targets) + 1
        for target, reply in zip(targets, replies):
            assert reply.body == BODIES.get(target, b"0123456789" if target == "/bytes" else b"not here\n")
        assert [req.path for req in srv.app.requests] == [*targets, "/tiny"]
        await srv.settled()


async def test_requests_after_connection_close_are_not_answered() -> None:
    async with running() as srv:
        stream = await srv.connect()
        await stream.send_all(raw("/tiny", headers=[("Connection", "close")]) + raw("/small") + raw("/medium"))
        with trio.fail_after(30):
            data = await read_to_eof(stream)
        await stream.aclose()
        replies = parse(data, ["GET", "GET"])
        assert len(replies) == 1
        assert replies[0].headers["connection"] == "close"
        assert data.endswith(BODIES["/tiny"])  # nothing after the one answer
        assert [req.path for req in srv.app.requests] == ["/tiny"]
        await srv.settled()


async def test_http_1_0_is_answered_and_closed() -> None:
    async with running() as srv:
        stream = await srv.connect()
        await stream.send_all(b"GET /small HTTP/1.0\r\n\r\nGET /tiny HTTP/1.0\r\n\r\n")
        with trio.fail_after(30):
            data = await read_to_eof(stream)
        await stream.aclose()
        replies = parse(data, ["GET", "GET"])
        assert len(replies) == 1 and replies[0].body == BODIES["/small"]
        await srv.settled()


# -- HEAD, Range, conditional requests ----------------------------------------------------


async def test_head_sends_the_get_headers_and_no_body() -> None:
    async with running() as srv:
        client = await srv.client()
        get = await client.request("/tagged")
        head = await client.request("/tagged", method="HEAD")
        assert head.status == 200 and head.body == b""
        assert {k: v for k, v in head.headers.items() if k != "date"} == {
            k: v for k, v in get.headers.items() if k != "date"
        }
        # Nothing of the body followed the head: the next answer parses.
        assert (await client.request("/tiny")).body == BODIES["/tiny"]
        # HEAD ignores Range (RFC 9110, 14.2: only GET has ranges).
        head = await client.request("/small", [("Range", "bytes=0-9")], method="HEAD")
        assert head.status == 200 and head.headers["content-length"] == str(len(BODIES["/small"]))
        assert "content-range" not in head.headers
        await client.aclose()
        await srv.settled()


N = len(BODIES["/small"])
RANGES = {
    "bytes=0-0": (206, 0, 1),
    "bytes=5-9": (206, 5, 10),
    "bytes=-5": (206, N - 5, N),
    "bytes=5-": (206, 5, N),
    "bytes=0-": (206, 0, N),
    f"bytes=0-{N * 10}": (206, 0, N),
    "bytes=0-" + "9" * 100: (206, 0, N),
    "bytes=-" + "9" * 100: (206, 0, N),
    f"bytes=-{N + 1}": (206, 0, N),
    "BYTES=1-2": (206, 1, 3),
    "bytes=1-2,": (206, 1, 3),
    "bytes= 1-2": (206, 1, 3),
    "bytes=00000000000000000000000000000001-2": (206, 1, 3),
    "bytes=-0": (416, 0, 0),
    f"bytes={N}-": (416, 0, 0),
    f"bytes={N}-{N + 5}": (416, 0, 0),
    "bytes=" + "9" * 100 + "-": (416, 0, 0),
    "bytes=" + "1" * 5000 + "-": (416, 0, 0),
    "bytes=5-2": (200, 0, N),
    "bytes=0-1,3-4": (200, 0, N),
    "bytes=abc": (200, 0, N),
    "bytes=1-x": (200, 0, N),
    "bytes=--1": (200, 0, N),
    "bytes=-": (200, 0, N),
    "bytes=": (200, 0, N),
    "bytes=１-２": (200, 0, N),  # fullwidth digits: str.isdigit() says yes, HTTP says no
    "bytes=1.5-2": (200, 0, N),
    "items=0-1": (200, 0, N),
    "0-1": (200, 0, N),
    "": (200, 0, N),
}


@pytest.mark.parametrize("value", list(RANGES), ids=lambda v: v[:40] or "empty")
async def test_range_requests_as_rfc_9110_says(value: str) -> None:
    status, start, stop = RANGES[value]
    async with running() as srv:
        client = await srv.client()
        reply = await client.request("/small", [("Range", value.encode())])  # UTF-8 on the wire
        assert reply.status == status
        if status == 206:
            assert reply.body == BODIES["/small"][start:stop]
            assert reply.headers["content-range"] == f"bytes {start}-{stop - 1}/{N}"
        elif status == 416:
            assert reply.body == b""
            assert reply.headers["content-range"] == f"bytes */{N}"
        else:
            assert reply.body == BODIES["/small"]
            assert "content-range" not in reply.headers
        # The connection goes on either way.
        assert (await client.request("/tiny")).body == BODIES["/tiny"]
        await client.aclose()
        await srv.settled()


async def test_ranges_only_apply_to_200_and_to_one_range_header() -> None:
    async with running() as srv:
        client = await srv.client()
        reply = await client.request("/nothing", [("Range", "bytes=0-1")])
        assert (reply.status, reply.body) == (404, b"not here\n")
        reply = await client.request("/small", [("Range", "bytes=0-1"), ("Range", "bytes=2-3")])
        assert (reply.status, reply.body) == (200, BODIES["/small"])
        reply = await client.request("/bytes", [("Range", "bytes=2-4")])
        assert (reply.status, reply.body) == (206, b"234")
        await client.aclose()
        await srv.settled()


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ('"v1"', 304),
        ('W/"v1"', 304),
        ('"x", "v1"', 304),
        ('"x",,  W/"v1" ,', 304),
        ("*", 304),
        ('"v2"', 200),
        ('"V1"', 200),
        ("v1", 200),  # not an entity tag: malformed, ignored
        ('*, "v1"', 200),
        ('"v1', 200),
        ("", 200),
    ],
)
async def test_if_none_match(value: str, status: int) -> None:
    async with running() as srv:
        client = await srv.client()
        reply = await client.request("/tagged", [("If-None-Match", value)])
        assert reply.status == status
        if status == 304:
            assert reply.body == b""
            assert reply.headers["etag"] == '"v1"'
            assert reply.headers["cache-control"] == "max-age=60"
            # Nothing about a body that is not sent, and nothing else of the application's.
            for name in ("content-length", "content-type", "x-extra", "accept-ranges"):
                assert name not in reply.headers, name
        else:
            assert reply.body == BODIES["/small"] and reply.headers["etag"] == '"v1"'
        assert (await client.request("/tiny")).body == BODIES["/tiny"]
        await client.aclose()
        await srv.settled()


def http_date(when: dt.datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S GMT")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("If-Modified-Since", http_date(LAST_MODIFIED))], 304),
        ([("If-Modified-Since", http_date(LAST_MODIFIED + dt.timedelta(days=1)))], 304),
        ([("If-Modified-Since", http_date(LAST_MODIFIED - dt.timedelta(seconds=1)))], 200),
        ([("If-Modified-Since", "Friday, 02-Jan-26 03:04:05 GMT")], 304),  # the obsolete RFC 850 form
        ([("If-Modified-Since", "not a date")], 200),
        ([("If-Modified-Since", "9" * 200)], 200),
        # If-None-Match wins over If-Modified-Since (RFC 9110, 13.1.3).
        ([("If-None-Match", '"other"'), ("If-Modified-Since", http_date(LAST_MODIFIED))], 200),
        ([("If-None-Match", '"v1"'), ("If-Modified-Since", "not a date")], 304),
    ],
)
async def test_if_modified_since(headers: list[tuple[str, str]], status: int) -> None:
    async with running() as srv:
        client = await srv.client()
        reply = await client.request("/tagged", headers)
        assert reply.status == status
        assert reply.headers["last-modified"] == "Fri, 02 Jan 2026 03:04:05 GMT"
        # Without a validator there is nothing to compare: 200.
        assert (await client.request("/small", headers)).status == 200
        await client.aclose()
        await srv.settled()


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        ('"v1"', 206),
        ('W/"v1"', 200),  # weak tags never match strongly
        ('"v2"', 200),
        (http_date(LAST_MODIFIED), 206),
        (http_date(LAST_MODIFIED + dt.timedelta(seconds=1)), 200),
        ("garbage", 200),
    ],
)
async def test_if_range(if_range: str, status: int) -> None:
    async with running() as srv:
        client = await srv.client()
        reply = await client.request("/tagged", [("Range", "bytes=0-9"), ("If-Range", if_range)])
        assert reply.status == status
        assert reply.body == (BODIES["/small"][:10] if status == 206 else BODIES["/small"])
        await client.aclose()
        await srv.settled()


# -- the pure functions, against anything --------------------------------------------------


@hypothesis.given(st.text(max_size=60), st.integers(min_value=0, max_value=1 << 40))
def test_single_range_never_raises_and_stays_inside_the_body(value: str, size: int) -> None:
    answer = single_range(value, size)
    if isinstance(answer, tuple):
        start, stop = answer
        assert 0 <= start < stop <= size
    else:
        assert answer in (RangeAnswer.FULL, RangeAnswer.UNSATISFIABLE)


@hypothesis.given(st.from_regex(r"bytes=[0-9]{0,25}-[0-9]{0,25}", fullmatch=True), st.integers(0, 1 << 30))
def test_single_range_of_numbers_agrees_with_a_model(value: str, size: int) -> None:
    first, last = value[6:].split("-")
    answer = single_range(value, size)
    if not first and not last:
        assert answer is RangeAnswer.FULL
    elif not first:
        n = int(last)
        assert answer == (RangeAnswer.UNSATISFIABLE if n == 0 or size == 0 else (max(0, size - n), size))
    elif last and int(last) < int(first):
        assert answer is RangeAnswer.FULL
    elif int(first) >= size:
        assert answer is RangeAnswer.UNSATISFIABLE
    else:
        stop = size if not last else min(int(last) + 1, size)
        assert answer == (int(first), stop)


@hypothesis.given(st.text(max_size=80))
def test_conditional_parsers_never_raise(value: str) -> None:
    parse_etag_list(value)
    none_match(value, '"v1"')
    none_match(value, None)
    not_modified_since(value, LAST_MODIFIED)
    if_range_holds(value, '"v1"', LAST_MODIFIED)


def test_only_ascii_digits_are_positions() -> None:
    # str.isdigit() accepts these; HTTP's DIGIT does not.
    for value in ("bytes=\uff11-\uff12", "bytes=\u0661-\u0662", "bytes=\u00b2-3", "bytes=-\u00b9"):
        assert single_range(value, 100) is RangeAnswer.FULL


def test_normalize_etag() -> None:
    assert normalize_etag("v1") == '"v1"'
    assert normalize_etag('"v1"') == '"v1"'
    assert normalize_etag('W/"v1"') == 'W/"v1"'
    assert normalize_etag("") == '""'
    for bad in ['a"b', "a b", "W/v1", "\x00", "é", '"a"b"', "a\r\nX-Injected: 1"]:
        with pytest.raises(ValueError):
            normalize_etag(bad)


# -- methods, garbage, handler errors ---------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "BREW"])
async def test_other_methods_get_405_with_allow(method: str) -> None:
    async with running() as srv:
        client = await srv.client()
        reply = await client.request("/small", method=method)
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"
        # No body was sent: the connection goes on.
        assert (await client.request("/tiny")).body == BODIES["/tiny"]
        await client.aclose()
        await srv.settled()
        assert srv.app.requests[0].path == "/tiny"  # the handler never saw the other method


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /small HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n",
        # Framed two ways (a smuggling attempt through a proxy): answered, then closed.
        b"GET /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    ],
    ids=["post", "chunked post", "get with a body", "expect 100-continue", "te and cl"],
)
async def test_a_request_with_a_body_is_answered_and_its_connection_closed(request_bytes: bytes) -> None:
    async with running() as srv:
        stream = await srv.connect()
        await stream.send_all(request_bytes + raw("/tiny"))
        with trio.fail_after(30):
            data = await read_to_eof(stream)
        await stream.aclose()
        replies = parse(data, ["GET", "GET"])
        assert len(replies) == 1
        assert replies[0].status in (200, 405)
        assert replies[0].headers["connection"] == "close"
        if replies[0].status == 200:
            assert replies[0].body == BODIES["/small"]
        await srv.settled()


GARBAGE = {
    "binary": (b"\x00\x01\x02\xff\xfe garbage \r\n\r\n", 400),
    "bad request line": (b"GET\r\n\r\n", 400),
    "http/0.9": (b"GET /\r\n\r\n", 400),
    "bad header name": (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "negative length": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    "two lengths": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "two hosts": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "no host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "nul in target": (b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "huge header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 70000 + b"\r\n\r\n", 431),
    "huge request line": (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    "many headers": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n", 431),
    "gzip transfer-encoding": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "http/2.0": (b"GET /small HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "bad protocol": (b"GET / HTTQ/1.1\r\nHost: x\r\n\r\n", 400),
    "tls hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n", 400),
    "garbage after a request": (raw("/small") + b"\x16\x03\x01 not http at all\r\n\r\n", 400),
    "bad chunk": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 405),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_garbage_gets_an_error_and_a_close_and_the_server_goes_on(kind: str) -> None:
    request_bytes, status = GARBAGE[kind]
    async with running() as srv:
        stream = await srv.connect()
        with trio.fail_after(30):
            try:
                await stream.send_all(request_bytes)
            except trio.BrokenResourceError:
                pass  # the server answered and closed before reading all of it
            data = await read_to_eof(stream)
        if kind == "garbage after a request":
            first, rest = parse(data, ["GET"])[0], data
            assert first.body == BODIES["/small"]
            data = rest[rest.index(BODIES["/small"]) + len(BODIES["/small"]) :]
        match = re.match(rb"HTTP/1\.1 (\d\d\d) ", data)
        assert match is not None, data[:200]
        assert int(match[1]) == status
        reply = parse(data, ["GET"])[0]
        assert reply.headers["connection"] == "close"
        await stream.aclose()
        client = await srv.client()
        assert (await client.request("/small")).body == BODIES["/small"]
        await client.aclose()
        await srv.settled()
        if status in (400, 431, 501):
            assert srv.server.statistics().bad_requests == 1


async def test_a_handler_that_fails_gets_500_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async with running() as srv:
        for path in ("/raise", "/none", "/released"):
            client = await srv.client()
            with caplog.at_level(logging.ERROR, logger="trio_zc.http"):
                reply = await client.request(path)
            assert reply.status == 500, path
            assert reply.headers["connection"] == "close"
            with trio.fail_after(30):
                assert await read_to_eof(client.stream) == b""
            await client.aclose()
        assert "the handler's bug" in caplog.text
        assert "returns a trio_zc.http.Response, not NoneType" in caplog.text
        assert "StaleLeaseError" in caplog.text  # /released: a lease freed under its Response is never sent
        client = await srv.client()
        assert (await client.request("/small")).body == BODIES["/small"]
        await client.aclose()
        await srv.settled()
        assert srv.server.statistics().handler_errors == 3


# -- request fields --------------------------------------------------------------------


async def test_the_handler_sees_the_request_as_sent() -> None:
    async with running() as srv:
        client = await srv.client()
        await client.request("/tiny?size=1&x=%20", [("X-Thing", "a"), ("x-thing", "b"), ("Latin", b"caf\xe9")])
        await client.request("http://example.com/tiny?q")  # absolute-form, as to a proxy
        old = await srv.connect()
        await old.send_all(b"HEAD /tiny HTTP/1.0\r\n\r\n")
        with trio.fail_after(30):
            assert (await read_to_eof(old)).startswith(b"HTTP/1.1 200 ")
        await old.aclose()
        first, second, third = srv.app.requests
        assert (first.method, first.target, first.path, first.query) == ("GET", "/tiny?size=1&x=%20", "/tiny",
                                                                          "size=1&x=%20")
        assert first.header("X-THING") == "a, b"
        assert first.header("latin") == "caf\xe9"
        assert first.header("missing") is None
        assert first.http_version == "1.1"
        assert first.peer is not None
        assert (second.target, second.path, second.query) == ("http://example.com/tiny?q", "/tiny", "q")
        assert (third.method, third.http_version) == ("HEAD", "1.0")
        await client.aclose()
        await srv.settled()


# -- responses: what a handler may build ------------------------------------------------------


async def test_responses_refuse_bad_values() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20) as pool:
        sealed = await sealed_with(pool, b"x" * 100)
        Response = trio_zc.http.Response
        bad: list[tuple[type[Exception], dict[str, object]]] = [
            (ValueError, {"headers": [("X-A", "a\r\nSet-Cookie: evil")]}),
            (ValueError, {"headers": [("X-A", "a\nb")]}),
            (ValueError, {"headers": [("X A", "b")]}),
            (ValueError, {"headers": [("X-A", " padded")]}),
            (ValueError, {"headers": [("X-A", "caf\xe9")]}),
            (ValueError, {"headers": [("Content-Length", "5")]}),
            (ValueError, {"headers": [("transfer-encoding", "chunked")]}),
            (ValueError, {"headers": [("Connection", "close")]}),
            (ValueError, {"headers": [("ETag", '"x"')]}),
            (TypeError, {"headers": [("X-A", 5)]}),
            (TypeError, {"headers": "X-A: b"}),
            (ValueError, {"status": 99}),
            (ValueError, {"status": 101}),
            (ValueError, {"status": 600}),
            (TypeError, {"status": "200"}),
            (TypeError, {"status": 200.0}),
            (ValueError, {"status": 304}),  # with a body
            (ValueError, {"offset": 101}),
            (ValueError, {"offset": -1}),
            (ValueError, {"nbytes": 101}),
            (ValueError, {"offset": 50, "nbytes": 51}),
            (TypeError, {"offset": 1.0}),
            (ValueError, {"etag": 'a"b'}),
            (ValueError, {"last_modified": dt.datetime(2026, 1, 1)}),
            (TypeError, {"last_modified": "yesterday"}),
            (ValueError, {"content_type": "text/html\r\nX: y"}),
        ]
        for error, kwargs in bad:
            with pytest.raises(error):
                Response(sealed, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="seal"):
            async with pool.lease(10) as writable:
                Response(writable)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Response("text")  # type: ignore[arg-type]
        ok = Response(sealed, headers={"Cache-Control": "no-store"}, last_modified=1.5e9, etag='W/"a"')
        assert ok.headers == (("Cache-Control", "no-store"),)
        assert ok.last_modified == dt.datetime.fromtimestamp(1_500_000_000, dt.timezone.utc)
        assert Response(b"", status=204).length == 0
        sealed.release()
        with pytest.raises(trio_zc.StaleLeaseError):
            Response(sealed)


def test_http_server_refuses_bad_options() -> None:
    async def handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
        raise AssertionError

    for kwargs in ({"idle_timeout": 0}, {"header_timeout": -1}, {"send_timeout": float("nan")},
                   {"linger_timeout": 0}, {"max_header_bytes": 10}):
        with pytest.raises(ValueError):
            trio_zc.http.HTTPServer(handler, **kwargs)  # type: ignore[arg-type]
    for kwargs in ({"idle_timeout": "1"}, {"max_header_bytes": 1.5}, {"send_timeout": True}):
        with pytest.raises(TypeError):
            trio_zc.http.HTTPServer(handler, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        trio_zc.http.HTTPServer("not a handler")  # type: ignore[arg-type]


# -- idle, slow and stalled clients ------------------------------------------------------------


async def test_an_idle_connection_is_closed_after_idle_timeout() -> None:
    async with running(idle_timeout=1.0) as srv:
        idle = await srv.connect()
        kept = await srv.client()
        assert (await kept.request("/tiny")).status == 200
        with trio.fail_after(30):
            assert await read_to_eof(idle) == b""  # closed without a word
            assert await read_to_eof(kept.stream) == b""  # idle after its answer too
        await srv.settled()
        assert srv.server.statistics().idle_timeouts == 2


async def test_a_slowloris_client_is_closed_at_header_timeout_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On the mock kernel with a virtual clock: a client that sends a header byte
    every second is closed header_timeout after its first byte, not later, however
    long it goes on; meanwhile its connection holds a task and a few bytes only."""
    async with running("mock", idle_timeout=20, header_timeout=10) as srv:
        peer = await srv.connect()
        await trio.sleep(5)  # idle for a while first: that is idle_timeout's business
        started = trio.current_time()
        closed_at = None
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            await peer.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            try:
                while True:
                    await peer.send_all(b"X")
                    sent += 1
                    await trio.sleep(1)
            except trio.BrokenResourceError:
                pass  # the server closed

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            assert await read_to_eof(peer) == b""
            closed_at = trio.current_time()
            nursery.cancel_scope.cancel()
        assert 10 <= closed_at - started <= 11
        assert sent <= 12
        await srv.settled()
        assert srv.server.statistics().header_timeouts == 1


async def test_slowloris_clients_are_cut_off_and_others_are_served() -> None:
    async with running(idle_timeout=5, header_timeout=0.5) as srv:
        stop = trio.Event()
        closed: list[float] = []

        async def slowloris() -> None:
            stream = await srv.tcp()
            started = trio.current_time()
            await stream.send_all(b"GET /large HTTP/1.1\r\n")
            try:
                with trio.move_on_after(30):
                    while not stop.is_set():
                        await stream.send_all(b"X-Slow: ")
                        with trio.move_on_after(0.05):
                            if not await stream.receive_some(100):
                                closed.append(trio.current_time() - started)
                                return
            except trio.BrokenResourceError:
                closed.append(trio.current_time() - started)
            finally:
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(slowloris)
            client = await srv.client()
            for _ in range(5):
                assert (await client.request("/medium")).body == BODIES["/medium"]
            await client.aclose()
        stop.set()
        assert len(closed) == 20  # every one was closed by the server, none outlived the test's bound
        await srv.settled()
        assert srv.server.statistics().header_timeouts == 20


async def test_a_client_flooding_one_header_gets_431_and_holds_no_more_than_the_limit() -> None:
    async with running(max_header_bytes=8192) as srv:
        stream = await srv.connect()
        sent = 0

        async def flood() -> None:
            nonlocal sent
            await stream.send_all(b"GET / HTTP/1.1\r\nX-Flood: ")
            try:
                while sent < 1 << 30:
                    await stream.send_all(b"a" * 65536)
                    sent += 65536
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                data = await read_to_eof(stream)
                nursery.cancel_scope.cancel()
        assert data.startswith(b"HTTP/1.1 431 ")
        # The server stopped reading at the limit and lingered a bounded time:
        # far less than the gigabyte the client meant to send got through.
        assert sent < 1 << 30
        await stream.aclose()
        await srv.settled()


async def test_a_client_that_stops_reading_is_reset_after_send_timeout() -> None:
    async with running("msg_zerocopy", send_timeout=2.0) as srv:
        stalled = await srv.tcp(rcvbuf=4096)
        await stalled.send_all(raw("/large") * 20)
        client = await srv.client()
        assert (await client.request("/large")).body == BODIES["/large"]
        await client.aclose()
        with trio.fail_after(30):
            # The stalled connection was reset: its memory is back, its task gone.
            await srv.settled()
        received = len(await read_to_eof(stalled))
        assert received < 20 * len(BODIES["/large"])
        await stalled.aclose()
        assert srv.listeners[0].statistics().connection_errors >= 1


async def test_the_pool_send_timeout_is_kept_and_30_seconds_is_the_default() -> None:
    seen: list[float | None] = []
    async with trio_zc.open_pool(max_bytes=1 << 20, send_timeout=3.0) as pool:
        for options, expected in (({}, 3.0), ({"send_timeout": 7.0}, 7.0)):
            server = trio_zc.http.HTTPServer(lambda request: None, **options)  # type: ignore[arg-type, return-value]
            stream, peer = await _pair(pool)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.handle, stream)
                await trio.testing.wait_all_tasks_blocked()
                seen.append(stream.send_timeout)
                await peer.aclose()
            await stream.aclose()
            assert seen[-1] == expected
    async with trio_zc.open_pool(max_bytes=1 << 20) as pool:
        server = trio_zc.http.HTTPServer(lambda request: None)  # type: ignore[arg-type, return-value]
        stream, peer = await _pair(pool)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, stream)
            await trio.testing.wait_all_tasks_blocked()
            assert stream.send_timeout == trio_zc.http.DEFAULT_SEND_TIMEOUT
            await peer.aclose()
        await stream.aclose()


async def _pair(pool: trio_zc.BufferPool) -> tuple[trio_zc.ZeroCopyStream, trio.SocketStream]:
    from ..streams import socket_pair

    a, b = await socket_pair()
    return trio_zc.ZeroCopyStream(a, pool=pool), trio.SocketStream(b)


# -- clients that leave at every point -----------------------------------------------------------

LEAVE_POINTS = [
    "on connect",
    "mid request line",
    "mid headers",
    "after the request",
    "after part of the head",
    "after the head",
    "after part of the body",
    "during the handler",
    "mid pipeline",
    "during the linger",
]


async def leave_at(srv: object, point: str, how: str) -> None:
    from ..http_client import Running

    assert isinstance(srv, Running)
    stream = await srv.tcp(rcvbuf=8192)
    if how == "reset":
        reset_on_close(stream)
    with trio.fail_after(30):
        if point == "mid request line":
            await stream.send_all(b"GET /lar")
        elif point == "mid headers":
            await stream.send_all(b"GET /large HTTP/1.1\r\nHost: x\r\nX-")
        elif point == "after the request":
            await stream.send_all(raw("/large"))
        elif point in ("after part of the head", "after the head", "after part of the body"):
            await stream.send_all(raw("/large"))
            want = {"after part of the head": 10, "after the head": 200, "after part of the body": 100_000}[point]
            got = b""
            while len(got) < want:
                got += await stream.receive_some(want - len(got))
            if point == "after the head":
                assert b"\r\n\r\n" in got
        elif point == "during the handler":
            srv.app.entered = trio.Event()
            await stream.send_all(raw("/slow"))
            await srv.app.entered.wait()
        elif point == "mid pipeline":
            await stream.send_all(raw("/medium") * 5 + raw("/large") * 5)
            await stream.receive_some(600_000)
        elif point == "during the linger":
            await stream.send_all(raw("/small", headers=[("Connection", "close")]) + b"trailing junk" * 1000)
            await stream.receive_some(1000)
    await stream.aclose()


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("point", LEAVE_POINTS)
@pytest.mark.parametrize("name", ["copy", "msg_zerocopy"])
async def test_a_client_that_leaves_ends_only_its_connection(name: str, point: str, how: str) -> None:
    async with running(name) as srv:
        srv.app.slow = 0.2
        for _ in range(2):
            await leave_at(srv, point, how)
        client = await srv.client()
        for path in ("/small", "/large"):
            assert (await client.request(path)).body == BODIES[path]
        await client.aclose()
        # Every connection ended, every lease (the half-sent ones too) is back.
        await srv.settled()


@pytest.mark.parametrize("name", REAL_KERNELS)
async def test_clients_leaving_mid_body_on_every_kernel(name: str) -> None:
    async with running(name) as srv:
        for how in ("close", "reset"):
            for point in ("after part of the body", "mid pipeline"):
                await leave_at(srv, point, how)
        client = await srv.client()
        assert (await client.request("/large")).body == BODIES["/large"]
        await client.aclose()
        await srv.settled()


async def test_a_mock_peer_that_resets_mid_body_ends_its_connection() -> None:
    async with running("mock") as srv:
        peer = await srv.connect()
        assert isinstance(peer, trio_zc.testing.MockPeer)
        await peer.send_all(raw("/large"))
        await peer.receive_some(1000)
        peer.reset()
        client = await srv.client()
        assert (await client.request("/large")).body == BODIES["/large"]
        await client.aclose()
        await srv.settled()


# -- serve() ---------------------------------------------------------------------------------


async def test_serve_takes_a_plain_handler_and_reports_its_listeners() -> None:
    async def handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
        return trio_zc.http.Response(b"hello\n", content_type="text/plain")

    async with trio_zc.open_pool(max_bytes=1 << 20) as pool:
        async with trio.open_nursery() as nursery:
            from functools import partial

            listeners = await nursery.start(partial(trio_zc.http.serve, pool, handler, port=0, host="127.0.0.1"))
            assert all(isinstance(listener, trio_zc.ZeroCopyListener) for listener in listeners)
            port = listeners[0].listener.socket.getsockname()[1]
            client = Client(await trio.open_tcp_stream("127.0.0.1", port))
            reply = await client.request("/")
            assert (reply.status, reply.body, reply.headers["content-type"]) == (200, b"hello\n", "text/plain")
            assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", reply.headers["date"])
            await client.aclose()
            nursery.cancel_scope.cancel()


def test_the_public_names() -> None:
    assert set(trio_zc.http.__all__) == {
        name for name in vars(trio_zc.http) if name.isidentifier() and not name.startswith("_")
    }
    for name in ("Request", "Response", "HTTPServer", "HTTPStatistics", "serve"):
        assert getattr(trio_zc.http, name).__module__ == "trio_zc.http"
    assert h11  # the parser, never a hand-written one


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /tiny HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["upgrade", "connect", "options *"],
)
async def test_protocol_switches_are_declined_and_the_connection_goes_on(request_bytes: bytes) -> None:
    async with running() as srv:
        stream = await srv.connect()
        await stream.send_all(request_bytes + raw("/small"))
        with trio.fail_after(30):
            first, second = await read_replies(stream, ["GET", "GET"])
        assert first.status in (200, 405)
        assert first.status == 200 or first.headers["allow"] == "GET, HEAD"
        assert second.body == BODIES["/small"]
        await stream.aclose()
        await srv.settled()


async def test_repeated_single_valued_conditionals_are_not_trusted() -> None:
    async with running() as srv:
        client = await srv.client()
        date = http_date(LAST_MODIFIED)
        # Two If-Modified-Since: ignored (RFC 9110, 13.1.3), so the body is sent.
        reply = await client.request("/tagged", [("If-Modified-Since", date), ("If-Modified-Since", date)])
        assert (reply.status, reply.body) == (200, BODIES["/small"])
        # Two If-Range: the range does not apply.
        reply = await client.request("/tagged", [("Range", "bytes=0-9"), ("If-Range", '"v1"'), ("If-Range", '"v1"')])
        assert (reply.status, reply.body) == (200, BODIES["/small"])
        # Two If-None-Match fields make one list.
        reply = await client.request("/tagged", [("If-None-Match", '"a"'), ("If-None-Match", '"v1"')])
        assert reply.status == 304
        await client.aclose()
        await srv.settled()


async def test_a_lease_of_another_pool_ends_its_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    """send_lease refuses a foreign lease before any byte of the response (its head
    goes with the lease): the client sees the connection close with nothing sent,
    the server logs it and goes on, the lease is released."""
    async with trio_zc.open_pool(max_bytes=1 << 20) as other:
        foreign = await sealed_with(other, b"x" * 5000)

        def handler(app: object) -> trio_zc.http.Handler:
            async def answer(request: trio_zc.http.Request) -> trio_zc.http.Response:
                return trio_zc.http.Response(foreign)

            return answer

        async with running(handler=handler) as srv:
            stream = await srv.connect()
            with caplog.at_level(logging.ERROR, logger="trio_zc.http"):
                await stream.send_all(raw("/"))
                with trio.fail_after(30):
                    data = await read_to_eof(stream)
            assert data == b""
            assert "ForeignLeaseError" in caplog.text
            await stream.aclose()
            await srv.settled()
            assert srv.server.statistics().handler_errors == 1
        assert other.statistics().sealed_leases == 0  # the server released it
