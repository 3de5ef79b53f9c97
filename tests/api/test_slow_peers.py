"""Peers that stop reading: the per-stream in-flight limit and the send timeout.

A peer that stops reading keeps memory: the lease being sent waits, and on
the zero-copy kernels the bytes already handed to the kernel stay pinned.
``max_in_flight`` bounds the second per stream (backpressure), and
``send_timeout`` bounds how long either lasts: the stream resets the
connection, the kernel drops what it holds and reports it done, and the
memory comes back.
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..streams import KERNELS, kernel, receive_exactly, stop_reading, stream_pair

PAGE = 4096
MiB = 1 << 20


async def _send(stream: trio_zc.ZeroCopyStream, pool: trio_zc.BufferPool, data: bytes) -> None:
    async with pool.lease(len(data)) as lease:
        lease.write(data)
        await stream.send_lease(lease.seal())


async def test_max_in_flight_makes_sends_wait_for_completions(
    mock_kernel: trio_zc.testing.MockKernel,
) -> None:
    policy = trio_zc.ZeroCopyPolicy(min_zerocopy_bytes=0)
    async with trio_zc.open_pool(
        max_bytes=MiB, kernel=mock_kernel, policy=policy, stream_max_in_flight=3 * PAGE
    ) as pool:
        stream, peer = mock_kernel.open_stream(pool)
        assert stream.max_in_flight == 3 * PAGE
        peer.hold_completions()
        await _send(stream, pool, b"a" * 2 * PAGE)
        assert stream.statistics().sent.bytes_in_flight == 2 * PAGE
        second_done = trio.Event()

        async def second() -> None:
            await _send(stream, pool, b"b" * 2 * PAGE)
            second_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            # 2 pages in flight + 2 more would pass the limit of 3: it waits.
            assert not second_done.is_set()
            assert stream.statistics().sent.bytes_in_flight == 2 * PAGE
            peer.release_completions()
            await second_done.wait()
        peer.release_completions()
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().sent.bytes_in_flight == 0
        assert pool.statistics().sent.bytes_in_flight == 0
        # With nothing in flight, a lease bigger than the limit still goes.
        await _send(stream, pool, b"c" * 8 * PAGE)
        assert await peer.receive_exactly(12 * PAGE) == b"a" * 2 * PAGE + b"b" * 2 * PAGE + b"c" * 8 * PAGE
        await stream.aclose()


async def test_the_limit_and_timeout_are_settable_per_stream_and_checked(
    mock_kernel: trio_zc.testing.MockKernel,
) -> None:
    async with trio_zc.open_pool(max_bytes=MiB, kernel=mock_kernel, send_timeout=5) as pool:
        stream, _ = mock_kernel.open_stream(pool)
        assert stream.send_timeout == 5.0
        assert stream.max_in_flight == MiB // 4  # the default: a quarter of the pool
        stream.send_timeout = None
        stream.max_in_flight = 10
        assert (stream.send_timeout, stream.max_in_flight) == (None, 10)
        for bad, exc in [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), ("1", TypeError)]:
            with pytest.raises(exc, match="send_timeout"):
                stream.send_timeout = bad  # type: ignore[assignment]
        for bad_limit, exc in [(0, ValueError), (1.5, TypeError), (True, TypeError)]:
            with pytest.raises(exc, match="max_in_flight"):
                stream.max_in_flight = bad_limit  # type: ignore[assignment]
        assert (stream.send_timeout, stream.max_in_flight) == (None, 10)
        await stream.aclose()
    with pytest.raises(ValueError, match="send_timeout"):
        async with trio_zc.open_pool(max_bytes=MiB, send_timeout=0):
            pass
    with pytest.raises(ValueError, match="max_in_flight"):
        async with trio_zc.open_pool(max_bytes=MiB, stream_max_in_flight=0):
            pass


@pytest.mark.parametrize("name", KERNELS)
async def test_send_timeout_resets_a_stalled_connection_and_gives_the_memory_back(name: str) -> None:
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=kernel(name), send_timeout=0.5) as pool:
        stream, peer = await stream_pair(pool)
        stop_reading(peer)
        image = bytes(range(256)) * (MiB // 256)
        with trio.fail_after(30):
            with pytest.raises(trio.BrokenResourceError, match="send_timeout"):
                for _ in range(1000):  # bounded: a stalled peer takes a few MiB at most
                    await _send(stream, pool, image)
        # Every later send fails the same way, at once.
        with pytest.raises(trio.BrokenResourceError, match="send_timeout"):
            await stream.send_all(b"more")
        await stream.aclose()
        await peer.aclose()
        with trio.fail_after(10):
            while pool.statistics().free_bytes < pool.max_bytes:
                await trio.sleep(0.01)
        stats = pool.statistics()
        assert stats.quarantined_bytes == 0
        assert stats.sent.bytes_in_flight == 0


async def _stalled_server(
    pool: trio_zc.BufferPool, images: list[bytes], nursery: trio.Nursery
) -> tuple[int, dict[str, int]]:
    listeners = await trio_zc.open_tcp_listeners(0, pool=pool, host="127.0.0.1")
    port = listeners[0].listener.socket.getsockname()[1]
    outcome = {"broken": 0, "served": 0}

    async def handler(stream: trio_zc.ZeroCopyStream) -> None:
        async with stream:
            try:
                for image in images:
                    await _send(stream, pool, image)
                outcome["served"] += 1
            except trio.BrokenResourceError:
                outcome["broken"] += 1

    async def serve() -> None:
        await trio.serve_listeners(handler, listeners)  # type: ignore[arg-type]

    nursery.start_soon(serve)
    return port, outcome


async def _stall(pool: trio_zc.BufferPool, port: int, count: int, size: int) -> list[trio.socket.SocketType]:
    """Connect *count* clients that never read, and give them time to take the pool."""
    stalled = []
    for _ in range(count):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        stalled.append(sock)
    with trio.move_on_after(0.5):
        while pool.statistics().free_bytes > size:
            await trio.sleep(0.01)
    return stalled


@pytest.mark.parametrize("name", ["auto", "msg_zerocopy"])
async def test_hundreds_of_stalled_clients_do_not_starve_the_others(name: str) -> None:
    stalled_count, good_count, size = 200, 4, 256 << 10
    images = [bytes([i]) * size for i in range(1, 9)]
    # 200 stalled clients each hold at least one 256 KiB lease: 50 MiB,
    # more than the pool. Without the send timeout the good clients wait for
    # ever (checked below); with it, the stalled ones are cut off.
    async with trio_zc.open_pool(max_bytes=32 * MiB, kernel=name, send_timeout=1.0) as pool:
        async with trio.open_nursery() as nursery:
            port, outcome = await _stalled_server(pool, images, nursery)
            stalled = await _stall(pool, port, stalled_count, size)

            received: list[list[bytes]] = []

            async def good_client() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    got = [hashlib.sha256(await receive_exactly(stream, size)).digest() for _ in images]
                    received.append(got)

            with trio.fail_after(60):
                async with trio.open_nursery() as clients:
                    for _ in range(good_count):
                        clients.start_soon(good_client)
                # Everyone who read got every image intact.
                expected = [hashlib.sha256(image).digest() for image in images]
                assert received == [expected] * good_count
                while outcome["broken"] + outcome["served"] < stalled_count + good_count:
                    await trio.sleep(0.05)
            assert outcome == {"broken": stalled_count, "served": good_count}
            for sock in stalled:
                sock.close()
            nursery.cancel_scope.cancel()
        with trio.fail_after(10):
            while pool.statistics().free_bytes < pool.max_bytes:
                await trio.sleep(0.01)
        assert pool.statistics().quarantined_bytes == 0


async def test_without_a_send_timeout_stalled_clients_do_starve_the_others() -> None:
    """The control for the test above: the timeout is what makes the difference."""
    size = 256 << 10
    images = [b"\x01" * size]
    async with trio_zc.open_pool(max_bytes=4 * MiB, kernel="copy", drain_timeout=0.1) as pool:
        async with trio.open_nursery() as nursery:
            port, outcome = await _stalled_server(pool, images * 64, nursery)
            stalled = await _stall(pool, port, 40, size)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.move_on_after(2) as scope:
                await receive_exactly(stream, size)
            assert scope.cancelled_caught  # starved: the pool is held by the stalled clients
            await stream.aclose()
            for sock in stalled:
                sock.close()
            nursery.cancel_scope.cancel()


async def test_closing_the_stream_ends_a_send_waiting_for_room(mock_kernel: trio_zc.testing.MockKernel) -> None:
    policy = trio_zc.ZeroCopyPolicy(min_zerocopy_bytes=0)
    async with trio_zc.open_pool(
        max_bytes=MiB, kernel=mock_kernel, policy=policy, stream_max_in_flight=PAGE, drain_timeout=0.1
    ) as pool:
        stream, peer = mock_kernel.open_stream(pool)
        peer.lose_completions()
        await _send(stream, pool, b"a" * PAGE)
        outcome: list[str] = []

        async def waiting_send() -> None:
            try:
                await _send(stream, pool, b"b" * PAGE)
            except trio.ClosedResourceError:
                outcome.append("closed")

        # Bounded, so that a regression fails here instead of hanging the suite.
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting_send)
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == []  # waiting: a page is in flight and its completion is lost
                with pytest.warns(trio_zc.QuarantineWarning):
                    await stream.aclose()
        assert outcome == ["closed"]
