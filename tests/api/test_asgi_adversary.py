"""trio_zc.asgi.LeaseResponse under attack: what a hostile server, client or application can do.

Each test is one attack, with the promise it checks: no byte other than the
sealed ones reaches the client, nothing leaks (leases, sends, descriptors),
errors are clear, and an exception of the application's or the server's
comes out as it is.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import trio

import trio_zc
import trio_zc.asgi

from ..streams import KERNELS, kernel, pattern, sealed_with
from .test_asgi import asgi, rewrite_everything_free, serving, slow_get

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
MiB = 1 << 20
ZC = {"http.response.zerocopysend": {}}


def in_use(pool: trio_zc.BufferPool) -> tuple[int, ...]:
    s = pool.statistics()
    return (s.writable_leases, s.sealed_leases, s.draining_leases, s.abandoned_leases, s.sends_in_flight)


async def no_receive() -> Message:
    raise AssertionError("the response never reads the request")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


class Boom(Exception):
    pass


# -- the pool closes while a response is in flight -----------------------------------------


@pytest.mark.parametrize("stuck_in", ["http.response.start", "body"])
@pytest.mark.parametrize("extensions", [{}, ZC])
async def test_pool_closing_under_a_stuck_response_quarantines_and_the_response_ends_cleanly(
    extensions: dict[str, Any], stuck_in: str
) -> None:
    """The pool's block ends while the server still sits in a send() (a stalled client): the
    close waits its drain timeout, quarantines the memory, and the response, when its send
    finally returns, sends the sealed bytes (if it had not yet) and ends without an error of
    the library's."""
    stuck = trio.Event()
    go_on = trio.Event()
    sent: list[str] = []
    got: list[bytes] = []
    data = pattern(100_000, 3)

    async def send(message: Message) -> None:
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            got.append(message["body"])
        elif message["type"] == "http.response.zerocopysend":
            got.append(os.pread(message["file"].fileno(), message["count"], message["offset"]))
        if (message["type"] == "http.response.start") == (stuck_in == "http.response.start"):
            stuck.set()
            await go_on.wait()

    outcome: list[BaseException | None] = []

    async def respond(response: trio_zc.asgi.LeaseResponse) -> None:
        try:
            await response({"type": "http", "method": "GET", "extensions": extensions}, no_receive, send)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)
        else:
            outcome.append(None)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with trio.open_nursery() as nursery:
            async with trio_zc.open_pool(max_bytes=MiB, kernel="copy", drain_timeout=0.2) as pool:
                sealed = await sealed_with(pool, data)
                nursery.start_soon(respond, trio_zc.asgi.LeaseResponse(sealed))
                await stuck.wait()
            # The pool is closed: its close waited, then quarantined the lease.
            stats = pool.statistics()
            assert stats.quarantined_leases == 1
            go_on.set()
    assert outcome == [None], outcome
    assert b"".join(got) == data
    assert any(issubclass(w.category, trio_zc.QuarantineWarning) for w in caught)


# -- misuse of the response object ---------------------------------------------------------


@pytest.mark.parametrize("extensions", [{}, ZC])
async def test_called_twice_refuses_the_second_call_and_releases_once(extensions: dict[str, Any]) -> None:
    got: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            got.append(bytes(message["body"]))
        elif message["type"] == "http.response.zerocopysend":
            got.append(os.pread(message["file"].fileno(), message["count"], message["offset"]))

    data = pattern(50_000, 7)
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, data)
        response = trio_zc.asgi.LeaseResponse(sealed)
        scope = {"type": "http", "method": "GET", "extensions": extensions}
        await response(scope, no_receive, send)
        # The memory went back; someone else takes it meanwhile.
        other = await sealed_with(pool, pattern(50_000, 8))
        with pytest.raises(RuntimeError, match="answers one request"):
            await response(scope, no_receive, send)
        assert got == [data]
        assert other.view().tobytes() == pattern(50_000, 8)
        other.release()
        assert in_use(pool) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("attribute", ["status", "headers", "content_type", "offset", "nbytes", "zerocopy"])
async def test_what_a_response_sends_cannot_be_changed_after_it_was_checked(attribute: str) -> None:
    # A slice moved after construction would be checked only once the
    # headers (with the old Content-Length) were out.
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, pattern(50_000, 7))
        response = trio_zc.asgi.LeaseResponse(sealed, offset=10, content_type="image/jpeg")
        before = getattr(response, attribute)
        with pytest.raises(AttributeError):
            setattr(response, attribute, 7)
        assert getattr(response, attribute) == before
        if attribute == "headers":
            assert isinstance(response.headers, tuple)  # no append behind the response's back
        sealed.release()


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "websocket", "extensions": ZC},
        {"type": "lifespan"},
        {},
    ],
)
async def test_a_scope_that_is_not_http_is_refused_and_the_lease_released(scope: Scope) -> None:
    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent")

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, pattern(10_000, 1))
        before = open_fds()
        with pytest.raises(ValueError, match="answers HTTP requests"):
            await trio_zc.asgi.LeaseResponse(sealed)(scope, no_receive, send)
        assert open_fds() == before
        assert in_use(pool) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "http", "method": "GET"},
        {"type": "http", "method": "GET", "extensions": None},
        {"type": "http", "method": "GET", "extensions": {"http.response.zerocopysend": None}},
        {"type": "http", "method": "GET", "http_version": "2", "extensions": {}},
        {"type": "http", "method": "GET", "http_version": "2", "extensions": ZC},
    ],
)
async def test_every_scope_shape_gets_exactly_the_sealed_bytes(scope: Scope) -> None:
    got: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            assert isinstance(message["body"], bytes)
            got.append(message["body"])
        elif message["type"] == "http.response.zerocopysend":
            got.append(os.pread(message["file"].fileno(), message["count"], message["offset"]))

    data = pattern(3 * trio_zc.asgi.BODY_CHUNK + 17, 2)
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, data)
        await trio_zc.asgi.LeaseResponse(sealed, offset=5, nbytes=len(data) - 9)(scope, no_receive, send)
        assert b"".join(got) == data[5:-4]
        assert in_use(pool) == (0, 0, 0, 0, 0)


async def test_a_release_from_another_thread_mid_send_is_refused_and_changes_nothing() -> None:
    in_send = trio.Event()
    go_on = trio.Event()
    got: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.zerocopysend":
            in_send.set()
            await go_on.wait()
            got.append(os.pread(message["file"].fileno(), message["count"], message["offset"]))

    data = pattern(200_000, 5)
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, data)
        scope = {"type": "http", "method": "GET", "extensions": ZC}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_zc.asgi.LeaseResponse(sealed), scope, no_receive, send)
            await in_send.wait()
            with pytest.raises(RuntimeError, match="Trio thread"):
                await trio.to_thread.run_sync(sealed.release)
            go_on.set()
        assert got == [data]
        assert in_use(pool) == (0, 0, 0, 0, 0)


# -- descriptors ---------------------------------------------------------------------------


async def test_no_descriptor_leaks_over_many_responses_failing_or_not() -> None:
    """200 responses through a zero-copy server: a fifth fail in the body's send, a fifth are
    cancelled there, a fifth are HEAD, a fifth are stale when called: no descriptor is left."""

    async def respond(pool: trio_zc.BufferPool, i: int) -> None:
        sealed = await sealed_with(pool, pattern(9000 + i, i % 251))
        response = trio_zc.asgi.LeaseResponse(sealed, offset=i % 7)
        kind = i % 5

        async def send(message: Message) -> None:
            if message["type"] == "http.response.zerocopysend":
                assert (
                    os.pread(message["file"].fileno(), message["count"], message["offset"])
                    == (pattern(9000 + i, i % 251)[i % 7 :])
                )
                if kind == 1:
                    raise Boom(i)
                if kind == 2:
                    await trio.sleep_forever()

        scope = {"type": "http", "method": "HEAD" if kind == 3 else "GET", "extensions": ZC}
        if kind == 4:
            sealed.release()
            with pytest.raises(trio_zc.StaleLeaseError):
                await response(scope, no_receive, send)
        elif kind == 1:
            with pytest.raises(Boom) as info:
                await response(scope, no_receive, send)
            assert info.value.args == (i,)
        elif kind == 2:
            with trio.move_on_after(0.01):
                await response(scope, no_receive, send)
        else:
            await response(scope, no_receive, send)

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        await respond(pool, 0)  # anything opened once, lazily, is opened now
        gc.collect()
        before = open_fds()
        for i in range(200):
            await respond(pool, i)
        gc.collect()
        assert open_fds() == before
        assert in_use(pool) == (0, 0, 0, 0, 0)
        assert pool.statistics().free_bytes == pool.statistics().max_bytes


# -- real servers: neighbours, odd slices, pipelining, a slow client -----------------------


def split_responses(raw: bytes, count: int) -> list[tuple[bytes, bytes]]:
    """*count* HTTP/1.1 responses framed by Content-Length, as (head, body) pairs."""
    out = []
    for _ in range(count):
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"a response head is missing: {head[:200]!r}"
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert len(raw) >= length, f"{len(raw)} of {length} body bytes"
        out.append((head, raw[:length]))
        raw = raw[length:]
    assert raw == b"", f"{len(raw)} bytes past the last response"
    return out


@pytest.mark.parametrize("name", [*KERNELS, "copy+protect_sealed"])
async def test_odd_slices_of_neighbour_leases_pipelined_to_a_slow_client(name: str) -> None:
    """Two leases side by side in the pool, each answered as a slice at odd offsets, to two
    requests pipelined on one connection whose client reads slowly through a 4 KiB buffer. The
    moment the first response ends, every free byte of the pool is rewritten: the first body,
    still in the socket, must stay the sealed bytes; the neighbour, answered next, must not have
    lost a byte to the first one's pages being replaced."""
    first, second = pattern(3 * MiB + 1, 11), pattern(2 * MiB + 3, 12)
    slices = {b"/a": (4097, len(first) - 4097 - 3), b"/b": (1, len(second) - 2)}
    rewritten = trio.Event()
    early: list[bool] = []
    taken: list[trio_zc.WritableLease] = []
    raw = bytearray()
    name, _, protect = name.partition("+")
    async with trio_zc.open_pool(
        max_bytes=16 * MiB, kernel=kernel(name), protect_sealed=protect == "protect_sealed"
    ) as pool:
        a = await sealed_with(pool, first)
        b = await sealed_with(pool, second)

        async def handler(scope: Scope, receive: Any, send: Any) -> None:
            path = scope["path"].encode()
            offset, nbytes = slices[path]
            await trio_zc.asgi.LeaseResponse(a if path == b"/a" else b, offset=offset, nbytes=nbytes)(
                scope, receive, send
            )
            if path == b"/a":
                while (free := pool.statistics().largest_free_block) > 0:
                    lease = pool.acquire_nowait(free)
                    lease.write(b"\xee" * free)
                    taken.append(lease)
                early.append(len(raw) < nbytes)
                rewritten.set()

        with trio.fail_after(120):
            async with serving("anycorn", asgi(handler)) as port:
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                with sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    await sock.connect(("127.0.0.1", port))
                    await sock.send(
                        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                    )
                    while chunk := await sock.recv(65536):
                        raw += chunk
                        if not rewritten.is_set():
                            await trio.sleep(0.002)
        for lease in taken:
            lease.release()
        assert early == [True], "the client had the first body before the rewrite: the test proved nothing"
        (head_a, body_a), (head_b, body_b) = split_responses(bytes(raw), 2)
        assert b" 200 " in head_a.split(b"\r\n")[0] and b" 200 " in head_b.split(b"\r\n")[0]
        assert body_a == first[4097:-3]
        assert body_b == second[1:-1]
        assert in_use(pool) == (0, 0, 0, 0, 0)


ATTACKS = ["release_and_rewrite_mid_send", "cancel_mid_sendfile", "evict_cached_mid_send"]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_slow_client_gets_only_sealed_bytes_whatever_happens_mid_sendfile(attack: str) -> None:
    """anycorn sendfiles 3 MiB to a client reading slowly through a 4 KiB buffer; mid-send:

    - another task releases the lease (a bug of the application's) and rewrites every free
      byte of the pool;
    - the application's own deadline cancels the response;
    - the response's body is a CachedLease whose entry another task evicts;

    and every free byte is rewritten again the moment the response ends. The client gets
    the sealed bytes (a cancelled response may end early: then a prefix of them)."""
    data = pattern(3 * MiB, 21)
    mid_send = trio.Event()
    rewritten = trio.Event()
    taken: list[trio_zc.WritableLease] = []
    types: list[str] = []
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel="copy") as pool:
        cache: trio_zc.LeaseCache[str] = trio_zc.LeaseCache(pool, max_bytes=8 * MiB)

        async def render() -> trio_zc.SealedLease:
            return await sealed_with(pool, data)

        async def handler(scope: Scope, receive: Any, send: Any) -> None:
            async def spy(message: Message) -> None:
                types.append(message["type"])
                if message["type"] == "http.response.zerocopysend":
                    mid_send.set()
                await send(message)

            body: Any
            if attack == "evict_cached_mid_send":
                body = await cache.get("k", render)
            else:
                body = await sealed_with(pool, data)
            response = trio_zc.asgi.LeaseResponse(body)

            async def meddle() -> None:
                await mid_send.wait()
                if attack == "release_and_rewrite_mid_send":
                    body.release()
                    taken.extend(rewrite_everything_free(pool, 0xEE))
                elif attack == "evict_cached_mid_send":
                    assert cache.discard("k")
                    taken.extend(rewrite_everything_free(pool, 0xEE))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(meddle)
                if attack == "cancel_mid_sendfile":
                    with trio.move_on_after(0.05):
                        await response(scope, receive, spy)
                else:
                    await response(scope, receive, spy)
            taken.extend(rewrite_everything_free(pool, 0xDD))
            rewritten.set()

        with trio.fail_after(120):
            async with serving("anycorn", asgi(handler)) as port:
                head, body = await slow_get(port, rewritten)
        for lease in taken:
            lease.release()
        cache.close()
        assert types == ["http.response.start", "http.response.zerocopysend"]
        assert b" 200 " in head.split(b"\r\n")[0]
        if attack == "cancel_mid_sendfile":
            assert body == data[: len(body)]
        else:
            assert len(body) == len(data)
            assert body == data
        assert in_use(pool) == (0, 0, 0, 0, 0)


# -- a server whose send() returns before it issues the bytes ------------------------------


@pytest.mark.parametrize("extensions", [{}, ZC])
async def test_a_server_that_sends_later_gets_the_sealed_bytes_with_zerocopy_false(
    extensions: dict[str, Any],
) -> None:
    """A server that keeps each body message and writes it after the response ended (after the
    lease went back and all of the pool was rewritten): with zerocopy=False it has bytes of its
    own, the sealed ones."""
    queued: list[Message] = []

    async def send(message: Message) -> None:
        queued.append(message)

    data = pattern(2 * trio_zc.asgi.BODY_CHUNK + 3, 9)
    async with trio_zc.open_pool(max_bytes=4 * MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, data)
        scope = {"type": "http", "method": "GET", "extensions": extensions}
        await trio_zc.asgi.LeaseResponse(sealed, zerocopy=False)(scope, no_receive, send)
        taken = rewrite_everything_free(pool, 0xEE)
        assert [m["type"] for m in queued] == ["http.response.start"] + ["http.response.body"] * 3
        assert b"".join(m["body"] for m in queued[1:]) == data
        for lease in taken:
            lease.release()
        assert in_use(pool) == (0, 0, 0, 0, 0)


async def test_a_server_that_keeps_the_file_to_send_later_finds_it_closed() -> None:
    """With zero-copy (the default) a server that queues the file object and sendfiles after the
    response ended gets a closed file (an error), not whatever the memfd holds by then. (One that
    kept the bare descriptor number could read a reused number: docs/asgi.rst says to use
    zerocopy=False with such a server.)"""
    queued: list[Message] = []

    async def send(message: Message) -> None:
        queued.append(message)

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, pattern(100_000, 4))
        scope = {"type": "http", "method": "GET", "extensions": ZC}
        await trio_zc.asgi.LeaseResponse(sealed)(scope, no_receive, send)
        file = queued[1]["file"]
        assert file.closed
        with pytest.raises(ValueError, match="closed file"):
            file.fileno()
        assert in_use(pool) == (0, 0, 0, 0, 0)


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extensions", [{}, ZC])
async def test_a_forked_child_cannot_send_the_parents_lease(extensions: dict[str, Any]) -> None:
    """In a forked child the response refuses before anything is sent (it drives the response's
    coroutine by hand: the child cannot start a Trio run of its own inside the parent's)."""
    sent: list[str] = []

    async def send(message: Message) -> None:
        sent.append(message["type"])

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, pattern(100_000, 4))
        response = trio_zc.asgi.LeaseResponse(sealed)
        scope = {"type": "http", "method": "GET", "extensions": extensions}
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                coro = response(scope, no_receive, send)
                try:
                    coro.send(None)
                except StopIteration:
                    os.write(write, b"sent " + ",".join(sent).encode())
                except BaseException as exc:  # noqa: BLE001 - reported to the parent
                    os.write(write, f"{type(exc).__name__}: {exc} / sent {sent}".encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = await trio.to_thread.run_sync(pipe.read)
        _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
        assert b"/ sent []" in report, report
        # The parent's lease is untouched: the parent answers.
        got: list[bytes] = []

        async def parent_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                got.append(message["body"])
            elif message["type"] == "http.response.zerocopysend":
                got.append(os.pread(message["file"].fileno(), message["count"], message["offset"]))

        await response(scope, no_receive, parent_send)
        assert b"".join(got) == pattern(100_000, 4)
        assert in_use(pool) == (0, 0, 0, 0, 0)


# -- KeyboardInterrupt ---------------------------------------------------------------------


def test_importing_only_trio_zc_asgi_protects_every_function_of_it() -> None:
    """An application that imports trio_zc.asgi (and nothing else of the package after it) gets
    its bookkeeping protected from Ctrl-C. The package-wide test imports every module in one
    process, where a later module's import protects whatever an earlier one left out; this one
    imports trio_zc.asgi alone, in a fresh interpreter, and compiles asgi.py to find its code."""
    script = textwrap.dedent(
        """
        import types
        import trio_zc.asgi
        from trio._core._ki import _CODE_KI_PROTECTION_STATUS_WMAP as table
        path = trio_zc.asgi.__file__
        def is_protected(code):
            try:
                return table[code]
            except KeyError:
                return False
        protected = {
            (code.co_firstlineno, code.co_name)
            for code in trio_zc._ki.code_objects(trio_zc.asgi)
            if is_protected(code)
        }
        stack = [compile(open(path).read(), path, "exec")]
        missing = []
        while stack:
            code = stack.pop()
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            if code.co_flags & 0x0002 and (code.co_firstlineno, code.co_name) not in protected:
                missing.append(f"{code.co_name} (line {code.co_firstlineno})")
        assert protected, "nothing of trio_zc.asgi is protected"
        assert not missing, missing
        print("ok", len(protected))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


# -- middleware between the response and the server ----------------------------------------


@pytest.mark.parametrize("zerocopy", [True, False])
@pytest.mark.parametrize("accept_encoding", ["gzip", "identity"])
async def test_behind_starlettes_gzip_middleware_on_anycorn(accept_encoding: str, zerocopy: bool) -> None:
    """Starlette's GZipMiddleware (1.10) passes on body and pathsend messages and silently drops
    any other, http.response.zerocopysend among them, whether it compresses or not: anycorn then
    answers 500 with no body and no error reaches the application (docs/asgi.rst says so, and to
    use zerocopy=False behind such a middleware). The lease comes back either way; with
    zerocopy=False the client gets the sealed bytes, compressed or not."""
    starlette_applications = pytest.importorskip("starlette.applications")
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.routing import Route

    data = pattern(300_000, 30)
    async with trio_zc.open_pool(max_bytes=4 * MiB, kernel="copy") as pool:

        async def endpoint(request: Any) -> trio_zc.asgi.LeaseResponse:
            sealed = await sealed_with(pool, data)
            return trio_zc.asgi.LeaseResponse(sealed, content_type="text/plain", zerocopy=zerocopy)

        app = starlette_applications.Starlette(
            routes=[Route("/", endpoint)], middleware=[Middleware(GZipMiddleware, minimum_size=100)]
        )
        with trio.fail_after(30):
            async with serving("anycorn", app) as port:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
                    response = await client.get("/", headers={"Accept-Encoding": accept_encoding})
        if zerocopy:
            assert response.status_code == 500
            assert response.content == b""
        else:
            assert response.status_code == 200
            assert (response.headers.get("content-encoding") == "gzip") == (accept_encoding == "gzip")
            assert response.content == data
        assert in_use(pool) == (0, 0, 0, 0, 0)


# -- what the server can do with the descriptor --------------------------------------------


async def test_the_servers_descriptor_refuses_writes_punches_and_writable_maps() -> None:
    """Through the descriptor the response lends, a server cannot write the pool's memory by
    mistake: write, punch (fallocate) and a shared writable mapping all fail, and the sealed
    bytes stay. (Reopening it read-write through /proc/self/fd works: docs/asgi.rst says the
    descriptor guards against mistakes, not against code in the process.)"""
    import ctypes
    import mmap

    from trio_zc._arena import _FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE, _fallocate

    tried: list[str] = []

    async def send(message: Message) -> None:
        if message["type"] != "http.response.zerocopysend":
            return
        fd = message["file"].fileno()
        with pytest.raises(OSError):
            os.pwrite(fd, b"x" * 10, message["offset"])
        tried.append("write")
        assert _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, os.fstat(fd).st_size) != 0
        assert ctypes.get_errno() == 9  # EBADF: not open for writing
        tried.append("punch")
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        tried.append("map")
        with pytest.raises(OSError):
            os.ftruncate(fd, 0)
        tried.append("truncate")

    data = pattern(100_000, 14)
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, data)
        kept = await sealed_with(pool, data)
        scope = {"type": "http", "method": "GET", "extensions": ZC}
        await trio_zc.asgi.LeaseResponse(sealed)(scope, no_receive, send)
        assert tried == ["write", "punch", "map", "truncate"]
        assert kept.view().tobytes() == data
        kept.release()


# -- HTTP/2 on anycorn; descriptors over many real connections ------------------------------


async def test_http2_on_anycorn_gets_bodies_byte_for_byte() -> None:
    """anycorn over cleartext HTTP/2 (prior knowledge) offers no zero-copy send: ordinary bodies,
    several streams at once on one connection, each its own slice, byte for byte."""
    pytest.importorskip("h2")
    data = pattern(3 * trio_zc.asgi.BODY_CHUNK + 5, 40)
    seen: list[tuple[str, bool]] = []
    async with trio_zc.open_pool(max_bytes=32 * MiB, kernel="copy") as pool:

        async def handler(scope: Scope, receive: Any, send: Any) -> None:
            n = int(scope["path"].strip("/"))
            seen.append(
                (scope["http_version"], "http.response.zerocopysend" in (scope.get("extensions") or {}))
            )
            sealed = await sealed_with(pool, data)
            await trio_zc.asgi.LeaseResponse(sealed, offset=n, nbytes=len(data) - 2 * n)(scope, receive, send)

        with trio.fail_after(60):
            async with serving("anycorn", asgi(handler)) as port:
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", http1=False, http2=True, timeout=30
                ) as client:
                    results: dict[int, httpx.Response] = {}

                    async def fetch(n: int) -> None:
                        results[n] = await client.get(f"/{n}")

                    async with trio.open_nursery() as nursery:
                        for n in (0, 1, 4095, 4097):
                            nursery.start_soon(fetch, n)
        assert seen and all(version == "2" and not zc for version, zc in seen), seen
        for n, response in results.items():
            assert response.http_version == "HTTP/2"
            assert response.content == data[n : len(data) - n]
        assert in_use(pool) == (0, 0, 0, 0, 0)


async def test_no_descriptor_leaks_over_many_real_connections_some_reset() -> None:
    """60 requests to anycorn, zero-copy, on fresh connections; every third client resets the
    connection mid-body. Once the server is gone, the process has the descriptors it had."""
    import struct

    data = pattern(1 * MiB, 41)
    done = 0
    async with trio_zc.open_pool(max_bytes=16 * MiB, kernel="copy") as pool:

        async def handler(scope: Scope, receive: Any, send: Any) -> None:
            nonlocal done
            try:
                sealed = await sealed_with(pool, data)
                await trio_zc.asgi.LeaseResponse(sealed)(scope, receive, send)
            finally:
                done += 1

        gc.collect()
        before = open_fds()
        with trio.fail_after(120):
            async with serving("anycorn", asgi(handler)) as port:
                for i in range(60):
                    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    with sock:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                        await sock.connect(("127.0.0.1", port))
                        await sock.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                        got = b""
                        while chunk := await sock.recv(65536):
                            got += chunk
                            if i % 3 == 0 and len(got) > 100_000:
                                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                                break
                        if i % 3:
                            assert got.partition(b"\r\n\r\n")[2] == data
                while done < 60:
                    await trio.sleep(0.01)
        gc.collect()
        assert open_fds() == before
        assert in_use(pool) == (0, 0, 0, 0, 0)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([(b"x-id", "1")], "the name of a header must be a str, not bytes"),
        ([(7, "1")], "the name of a header must be a str, not int"),
        ([("x-id", b"1")], "the value of header x-id must be a str, not bytes"),
    ],
)
async def test_a_header_of_the_wrong_type_is_a_type_error(headers: Any, message: str) -> None:
    """ASGI's own headers are byte pairs, so bytes are the likely mistake: for the name as for
    the value, a TypeError that says so (a bytes name was a ValueError calling it invalid)."""
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        sealed = await sealed_with(pool, b"abc")
        with pytest.raises(TypeError, match=message):
            trio_zc.asgi.LeaseResponse(sealed, headers=headers)
        sealed.release()
