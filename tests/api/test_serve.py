"""trio_zc.serve_tcp / serve_listeners: a client ends its own connection, never the server.

Real loopback TCP on every real kernel. A client that resets, closes early or
stops reading (past send_timeout) makes its handler fail with its own
stream's BrokenResourceError: that connection ends, is counted, and the
other clients are served every byte. A bug in a handler, or a broken
resource that is not the client's connection, still surfaces.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing

import trio_zc

from ..streams import ALWAYS_ZC, pattern

MiB = 1 << 20
REAL_KERNELS = ["copy", "msg_zerocopy", "io_uring", "sendfile"]
IMAGE = pattern(4 * MiB, 7)
HEADER = struct.Struct("!Q32s")

Handler = Callable[[trio_zc.ZeroCopyStream], Awaitable[object]]


async def send_image(stream: trio_zc.ZeroCopyStream, outcomes: list[str] | None = None) -> None:
    """The handler under test: a header, then a 4 MiB lease. No try/except: serve_tcp copes."""
    pool = stream.pool
    try:
        async with pool.lease(len(IMAGE)) as lease:
            lease.write(IMAGE)
            await stream.send_all(HEADER.pack(len(IMAGE), hashlib.sha256(IMAGE).digest()))
            await stream.send_lease(lease.seal())
    except BaseException as exc:
        if outcomes is not None:
            outcomes.append(type(exc).__name__)
        raise
    if outcomes is not None:
        outcomes.append("served")


async def connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.connect(("127.0.0.1", port))
    return sock


def reset(sock: trio.socket.SocketType) -> None:
    """Close with SO_LINGER 0: the kernel sends a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def receive(sock: trio.socket.SocketType, nbytes: int) -> bytes:
    data = bytearray()
    while len(data) < nbytes:
        chunk = await sock.recv(min(nbytes - len(data), MiB))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def good_client(port: int) -> None:
    """Reads the whole image and checks it, then sees a clean end of stream."""
    sock = await connect(port)
    with sock:
        nbytes, digest = HEADER.unpack(await receive(sock, HEADER.size))
        body = await receive(sock, nbytes)
        assert len(body) == nbytes and hashlib.sha256(body).digest() == digest
        assert await sock.recv(1) == b""  # closed by serve_tcp, gracefully: no reset


async def part_then(port: int, how: str, nbytes: int = 100_000) -> None:
    """Reads *nbytes* of the response, then leaves: with a reset or a plain close."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive buffer: the 4 MiB cannot all be sent before it leaves.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    await sock.connect(("127.0.0.1", port))
    await receive(sock, nbytes)
    if how == "reset":
        reset(sock)
    else:
        sock.close()


async def start_server(
    nursery: trio.Nursery, handler: Handler, pool: trio_zc.BufferPool
) -> tuple[int, trio_zc.ZeroCopyListener]:
    listeners = await nursery.start(partial(trio_zc.serve_tcp, handler, 0, pool=pool, host="127.0.0.1"))
    return listeners[0].listener.socket.getsockname()[1], listeners[0]


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(30):  # generous: a loaded machine; the state is asserted, not the time
        while not condition():
            await trio.sleep(0.01)


@pytest.mark.parametrize("name", REAL_KERNELS)
@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_client_that_leaves_mid_body_ends_only_its_own_connection(name: str, how: str) -> None:
    outcomes: list[str] = []
    async with trio_zc.open_pool(max_bytes=64 * MiB, kernel=name, policy=ALWAYS_ZC) as pool:
        async with trio.open_nursery() as nursery:
            port, listener = await start_server(nursery, partial(send_image, outcomes=outcomes), pool)
            async with trio.open_nursery() as clients:
                for _ in range(3):
                    clients.start_soon(part_then, port, how)
                clients.start_soon(good_client, port)
            await wait_for(lambda: len(outcomes) == 4, "every handler ended")
            # The server still serves, every byte right.
            await good_client(port)
            await wait_for(lambda: listener.statistics().handling == 0, "handlers done")
            stats = listener.statistics()
            nursery.cancel_scope.cancel()
    assert outcomes.count("served") == 2 and outcomes.count("BrokenResourceError") == 3, outcomes
    assert set(outcomes) <= {"served", "BrokenResourceError"}, outcomes
    assert stats.accepted == 5
    assert stats.connection_errors == outcomes.count("BrokenResourceError")
    assert pool.statistics().free_bytes == pool.max_bytes


@pytest.mark.parametrize("name", ["copy", "msg_zerocopy"])
async def test_a_client_that_resets_at_once_is_counted_and_forgotten(name: str) -> None:
    """A reset before the handler even sent (SO_LINGER 0 right after connecting)."""
    outcomes: list[str] = []
    async with trio_zc.open_pool(max_bytes=64 * MiB, kernel=name) as pool:
        async with trio.open_nursery() as nursery:
            port, listener = await start_server(nursery, partial(send_image, outcomes=outcomes), pool)
            for _ in range(5):
                reset(await connect(port))
            await wait_for(lambda: len(outcomes) == 5, "every handler ended")
            await good_client(port)
            nursery.cancel_scope.cancel()
    assert outcomes[-1] == "served"


@pytest.mark.parametrize("name", REAL_KERNELS)
async def test_send_timeout_cuts_off_clients_that_stop_reading_and_the_rest_are_served(name: str) -> None:
    outcomes: list[str] = []
    async with trio_zc.open_pool(max_bytes=64 * MiB, kernel=name, send_timeout=0.5) as pool:
        async with trio.open_nursery() as nursery:
            port, listener = await start_server(nursery, partial(send_image, outcomes=outcomes), pool)
            stalled = []
            for _ in range(4):
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never reads
                await sock.connect(("127.0.0.1", port))
                stalled.append(sock)
            await wait_for(lambda: len(outcomes) == 4, "the stalled clients were cut off")
            await good_client(port)
            for sock in stalled:
                sock.close()
            stats = listener.statistics()
            nursery.cancel_scope.cancel()
    assert outcomes == ["BrokenResourceError"] * 4 + ["served"]
    assert stats.connection_errors == 4
    assert pool.statistics().free_bytes == pool.max_bytes


async def test_a_client_that_resets_while_the_handler_reads_ends_its_connection() -> None:
    """receive_some() on a reset connection, then getpeername() on it (an OSError from its socket)."""
    errors: list[str] = []

    async def echo(stream: trio_zc.ZeroCopyStream) -> None:
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.BrokenResourceError:
            errors.append("receive")
            stream.getpeername()  # ENOTCONN now: also the connection's own failure

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        async with trio.open_nursery() as nursery:
            port, listener = await start_server(nursery, echo, pool)
            sock = await connect(port)
            await sock.send(b"hello")
            assert await receive(sock, 5) == b"hello"
            await sock.send(b"unread by the client")
            await trio.sleep(0.05)
            reset(sock)  # with unread data in its buffer: a reset for sure
            await wait_for(lambda: listener.statistics().connection_errors == 1, "counted")
            sock = await connect(port)
            with sock:
                await sock.send(b"again")
                assert await receive(sock, 5) == b"again"
            nursery.cancel_scope.cancel()
    assert errors == ["receive"]


async def test_a_bug_in_the_handler_still_surfaces() -> None:
    async def buggy(stream: trio_zc.ZeroCopyStream) -> None:
        await stream.receive_some()
        {}["no such key"]

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="no such key"), flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                port, _ = await start_server(nursery, buggy, pool)
                with await connect(port) as sock:
                    await sock.send(b"x")
                    with trio.fail_after(30):
                        await trio.sleep_forever()  # the server's crash cancels this


async def test_a_broken_resource_that_is_not_the_clients_connection_surfaces() -> None:
    """A BrokenResourceError from a memory channel (a dead worker, say) is the server's failure."""
    send, receive_channel = trio.open_memory_channel[bytes](0)
    receive_channel.close()  # the "worker" is gone

    async def handler(stream: trio_zc.ZeroCopyStream) -> None:
        await send.send(await stream.receive_some())

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        with pytest.RaisesGroup(pytest.RaisesExc(trio.BrokenResourceError), flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                port, _ = await start_server(nursery, handler, pool)
                with await connect(port) as sock:
                    await sock.send(b"x")
                    with trio.fail_after(30):
                        await trio.sleep_forever()


class WrapperStream(trio.abc.Stream):
    """A protocol layer over the connection, as trio.SSLStream is (``transport_stream``)."""

    def __init__(self, transport_stream: trio_zc.ZeroCopyStream) -> None:
        self.transport_stream = transport_stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.transport_stream.receive_some(max_bytes)
        if data.startswith(b"garbage"):
            # What SSLStream does with bytes that are not TLS.
            raise trio.BrokenResourceError("the peer sent garbage")
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


async def test_a_failure_of_a_stream_layered_over_the_connection_ends_that_connection() -> None:
    async def handler(stream: trio_zc.ZeroCopyStream) -> None:
        layer = WrapperStream(stream)
        await layer.send_all(await layer.receive_some())

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        async with trio.open_nursery() as nursery:
            port, listener = await start_server(nursery, handler, pool)
            sock = await connect(port)
            with sock:
                await sock.send(b"garbage!")
                assert await sock.recv(10) == b""  # the server ended this connection
            sock = await connect(port)
            with sock:
                await sock.send(b"fine")
                assert await receive(sock, 4) == b"fine"
            await wait_for(lambda: listener.statistics().handling == 0, "handlers done")
            assert listener.statistics().connection_errors == 1
            nursery.cancel_scope.cancel()


async def test_handlers_run_without_keyboard_interrupt_protection() -> None:
    """The handler is application code: Ctrl-C must reach it (trio_zc/_ki.py, rule 3)."""
    protected: list[bool] = []

    async def handler(stream: trio_zc.ZeroCopyStream) -> None:
        protected.append(trio.lowlevel.currently_ki_protected())

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        async with trio.open_nursery() as nursery:
            port, listener = await start_server(nursery, handler, pool)
            (await connect(port)).close()
            await wait_for(lambda: bool(protected), "the handler ran")
            nursery.cancel_scope.cancel()
    assert protected == [False]


async def test_cancelling_the_server_cancels_the_handlers_and_ends_quietly() -> None:
    started = trio.Event()
    cancelled: list[bool] = []

    async def handler(stream: trio_zc.ZeroCopyStream) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        with trio.move_on_after(30) as scope:
            async with trio.open_nursery() as nursery:
                port, listener = await start_server(nursery, handler, pool)
                sock = await connect(port)
                await started.wait()
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        sock.close()
    assert cancelled == [True]
    assert listener.statistics().connection_errors == 0


async def test_serve_listeners_takes_zero_copy_listeners_only() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        with pytest.raises(TypeError, match="ZeroCopyListener"):
            await trio_zc.serve_listeners(send_image, listeners)  # type: ignore[arg-type]
    finally:
        for listener in listeners:
            await listener.aclose()
