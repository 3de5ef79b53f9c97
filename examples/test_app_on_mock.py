"""Testing a Trio application that uses trio_zc, on the mock kernel.

Run it with ``pytest examples/test_app_on_mock.py``. The ``mock_kernel`` and
``mock_pool`` fixtures come from trio_zc's pytest plugin, which pytest loads
by itself once trio_zc is installed; pytest-trio runs the async tests.

The application under test is the small frame server below: it renders
frames into a buffer it owns (a bytearray it reuses for every frame, to
avoid allocating), adopts it into the pool and sends it zero-copy. The
classic bug is to render the next frame before the kernel is done with the
previous one; the mock kernel catches exactly that.
"""

from __future__ import annotations

import errno
import hashlib
import struct

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc.testing import MockKernel, PrematureReuseError

pytestmark = pytest.mark.trio

FRAME_BYTES = 64 * 1024
HEADER = struct.Struct("!I32s")  # length, SHA-256


def render(frame: bytearray, number: int) -> None:
    """Stand-in for real rendering: fill the frame with something per frame."""
    frame[:] = bytes([number % 251 + 1]) * len(frame)


async def serve_frames(stream: trio_zc.ZeroCopyStream, pool: trio_zc.BufferPool, count: int) -> None:
    """The application code: send *count* frames rendered into one reused buffer."""
    frame = bytearray(FRAME_BYTES)
    for number in range(count):
        render(frame, number)
        await stream.send_all(HEADER.pack(len(frame), hashlib.sha256(frame).digest()))
        sealed = pool.adopt(frame)
        await stream.send_lease(sealed)
        # The kernel may still be reading `frame`: wait before rendering into it again.
        await sealed.wait_reusable()


async def serve_frames_buggy(stream: trio_zc.ZeroCopyStream, pool: trio_zc.BufferPool, count: int) -> None:
    """The same, with the bug: the next frame is rendered while the last one is in flight."""
    frame = bytearray(FRAME_BYTES)
    for number in range(count):
        render(frame, number)
        await stream.send_all(HEADER.pack(len(frame), hashlib.sha256(frame).digest()))
        sealed = pool.adopt(frame)
        await stream.send_lease(sealed)
        sealed.release()  # "done with it" -- but the kernel is not


async def read_frames(peer: trio.abc.ReceiveStream, count: int) -> list[bool]:
    """What a client would do: read each frame and check its digest."""
    buf = bytearray()

    async def need(n: int) -> bytes:
        while len(buf) < n:
            chunk = await peer.receive_some(1 << 20)
            assert chunk, "the server closed early"
            buf.extend(chunk)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    results = []
    for _ in range(count):
        length, digest = HEADER.unpack(await need(HEADER.size))
        results.append(hashlib.sha256(await need(length)).digest() == digest)
    return results


async def test_frames_arrive_intact(mock_kernel: MockKernel, mock_pool: trio_zc.BufferPool) -> None:
    stream, peer = mock_kernel.open_stream(mock_pool)
    async with stream, peer, trio.open_nursery() as nursery:
        nursery.start_soon(serve_frames, stream, mock_pool, 20)
        assert await read_frames(peer, 20) == [True] * 20
    assert stream.statistics().sent.zerocopy_calls >= 20


async def test_frames_arrive_intact_when_completions_come_late(
    mock_kernel: MockKernel, mock_pool: trio_zc.BufferPool
) -> None:
    stream, peer = mock_kernel.open_stream(mock_pool)
    peer.hold_completions()  # the NIC is slow to report
    async with stream, peer, trio.open_nursery() as nursery:
        nursery.start_soon(serve_frames, stream, mock_pool, 5)
        assert await read_frames(peer, 1) == [True]
        await trio.testing.wait_all_tasks_blocked()
        # The server is (correctly) waiting for the kernel before frame 2.
        assert len(peer.sends) >= 1
        peer.release_completions()
        assert await read_frames(peer, 4) == [True] * 4


async def test_the_reuse_bug_is_caught(mock_kernel: MockKernel) -> None:
    with pytest.raises(PrematureReuseError, match="serve_frames_buggy"):
        async with trio_zc.open_pool(max_bytes=1 << 20, kernel=mock_kernel) as pool:
            stream, peer = mock_kernel.open_stream(pool)
            peer.hold_transmission()  # the NIC reads the memory late, as real ones do
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_frames_buggy, stream, pool, 3)
                await trio.testing.wait_all_tasks_blocked()
                peer.transmit()
                await trio.sleep_forever()


async def test_survives_enobufs(mock_kernel: MockKernel, mock_pool: trio_zc.BufferPool) -> None:
    stream, peer = mock_kernel.open_stream(mock_pool)
    peer.fail_sends(errno.ENOBUFS, count=2)  # locked memory ran out, twice
    async with stream, peer, trio.open_nursery() as nursery:
        nursery.start_soon(serve_frames, stream, mock_pool, 3)
        assert await read_frames(peer, 3) == [True] * 3
    assert stream.statistics().sent.enobufs == 2


async def test_a_stalled_client_holds_the_server_back(
    mock_kernel: MockKernel, mock_pool: trio_zc.BufferPool, autojump_clock: trio.testing.MockClock
) -> None:
    # autojump_clock (from pytest-trio) makes the one-second wait below instant.
    stream, peer = mock_kernel.open_stream(mock_pool)
    peer.stop_reading()
    async with stream, peer:
        with trio.move_on_after(1) as scope:
            await serve_frames(stream, mock_pool, 1000)
        assert scope.cancelled_caught  # backpressure, not unbounded buffering
        assert peer.buffered <= 2 * mock_kernel.socket_buffer
