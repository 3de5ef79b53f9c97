"""io_uring's copying requests: the rest of a copy that did not fit goes as one SEND with MSG_WAITALL.

Such a request reads the lease's memory until its only CQE, whatever
happens to the task that made it, so it holds the lease itself: these tests
cancel, reset and close under it, then rewrite every free byte of the pool,
and check that the peer still gets exactly the image's bytes.
"""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool
from trio_zc._kernels._io_uring import IoUringChannel, IoUringKernel
from trio_zc._kernels._ring import probe

from ..streams import receive_exactly, stop_reading, stream_pair

MiB = 1 << 20
HERE = probe()
pytestmark = pytest.mark.skipif(not (HERE.available and HERE.send_zc), reason=HERE.reason)

#: How each kernel setting comes to copy a large image on loopback: "auto"
#: copies to loopback peers; io_uring named with a threshold no image reaches.
SETTINGS = {
    "auto": {},
    "io_uring-copying": {"kernel": "io_uring", "policy": ZeroCopyPolicy(min_zerocopy_bytes=1 << 40)},
}


def ring_kernel(pool: trio_zc.BufferPool) -> IoUringKernel:
    kernel = pool._kernel
    assert isinstance(kernel, IoUringKernel), "these tests need io_uring, which the probe found usable"
    return kernel


def small_send_buffer(stream: trio_zc.ZeroCopyStream) -> None:
    """So that the first ordinary call takes a small part and the rest goes to the ring."""
    sock: socket.socket = stream._channel.transport.sock  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)


async def rewrite_everything_free(pool: trio_zc.BufferPool, byte: int) -> int:
    """Fill every byte the pool can lend now with *byte*; how many bytes that was."""
    written = 0
    leases = []
    try:
        while True:
            room = pool.statistics().largest_free_block
            if not room:
                return written
            try:
                lease = pool.acquire_nowait(room)
            except trio.WouldBlock:
                return written
            leases.append(lease)
            lease.write(bytes([byte]) * room)
            written += room
    finally:
        for lease in leases:
            lease.release()


@pytest.mark.parametrize("setting", sorted(SETTINGS))
async def test_a_large_copy_goes_as_one_request_and_arrives_whole(setting: str) -> None:
    async with open_pool(max_bytes=32 * MiB, **SETTINGS[setting]) as pool:  # type: ignore[arg-type]
        kernel = ring_kernel(pool)
        a, b = await stream_pair(pool)
        assert isinstance(a, trio_zc.ZeroCopyStream) and isinstance(b, trio_zc.ZeroCopyStream)
        small_send_buffer(a)
        images = [os.urandom(5 * MiB), os.urandom(3 * MiB + 17)]
        async with a, b:
            received: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    with trio.fail_after(60):
                        received.append(await receive_exactly(b, sum(map(len, images))))

                nursery.start_soon(receive)
                for image in images:
                    async with pool.lease(len(image)) as lease:
                        lease.write(image)
                        await a.send_lease(lease.seal())
            assert received == [b"".join(images)]
            sent = a.statistics().sent
            assert sent.bytes_copied == sum(map(len, images))
            assert sent.zerocopy_calls == sent.bytes_in_flight == a.statistics().sends_in_flight == 0
        # The first call of each send took what the small buffer held; the rest was a request.
        assert kernel.copy_calls >= len(images)
        assert pool.statistics().free_bytes == pool.statistics().max_bytes


@pytest.mark.parametrize("setting", sorted(SETTINGS))
async def test_a_cancelled_copy_holds_its_lease_until_the_kernel_is_done(setting: str) -> None:
    """The request goes on in the kernel after its wait is cancelled: the lease stays out of reach.

    Every free byte of the pool is then rewritten with 0xEE while the peer
    has not read yet; without the request's own hold on the lease, the
    kernel would copy 0xEE bytes into the rest of the image.
    """
    async with open_pool(max_bytes=16 * MiB, **SETTINGS[setting]) as pool:  # type: ignore[arg-type]
        kernel = ring_kernel(pool)
        a, b = await stream_pair(pool)
        assert isinstance(a, trio_zc.ZeroCopyStream) and isinstance(b, trio_zc.ZeroCopyStream)
        stop_reading(b)
        small_send_buffer(a)
        image = os.urandom(8 * MiB)
        trailer = b"after the image" * 1000
        async with a, b:
            async with pool.lease(len(image)) as lease:
                lease.write(image)
                sealed = lease.seal()
                with trio.CancelScope() as scope:

                    async def cancel_once_in_the_ring() -> None:
                        with trio.fail_after(30):
                            while not kernel.copy_calls:
                                await trio.sleep(0.01)
                        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                        scope.cancel()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(cancel_once_in_the_ring)
                        await a.send_lease(sealed)  # the peer reads nothing: it cannot finish
                assert scope.cancelled_caught
                assert a.statistics().sends_in_flight == 1
            # The scope released its lease; the request still holds the memory.
            free_after_release = pool.statistics().free_bytes
            assert await rewrite_everything_free(pool, 0xEE) > 0
            received = bytearray()
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    with trio.fail_after(60):
                        while chunk := await b.receive_some(1 << 20):
                            received.extend(chunk)

                nursery.start_soon(receive)
                await a.send_all(trailer)  # waits for the request: nothing interleaves
                await a.send_eof()
            assert bytes(received) == image + trailer
            assert free_after_release <= pool.statistics().max_bytes - len(image)
            assert a.statistics().sends_in_flight == 0
        assert pool.statistics().free_bytes == pool.statistics().max_bytes


@pytest.mark.parametrize("setting", sorted(SETTINGS))
async def test_a_peer_that_resets_during_a_copy_breaks_the_send_and_frees_the_lease(setting: str) -> None:
    async with open_pool(max_bytes=16 * MiB, **SETTINGS[setting]) as pool:  # type: ignore[arg-type]
        kernel = ring_kernel(pool)
        a, b = await stream_pair(pool)
        assert isinstance(a, trio_zc.ZeroCopyStream) and isinstance(b, trio_zc.ZeroCopyStream)
        stop_reading(b)
        small_send_buffer(a)
        image = os.urandom(8 * MiB)
        async with a:

            async def reset_once_in_the_ring() -> None:
                with trio.fail_after(30):
                    while not kernel.copy_calls:
                        await trio.sleep(0.01)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                sock: socket.socket = b._channel.transport.sock  # type: ignore[attr-defined]
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                await b.aclose()  # linger 0: a reset

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reset_once_in_the_ring)
                    async with pool.lease(len(image)) as lease:
                        lease.write(image)
                        with pytest.raises(trio.BrokenResourceError, match="the connection broke"):
                            await a.send_lease(lease.seal())
            assert a.statistics().sends_in_flight == 0
        assert pool.statistics().free_bytes == pool.statistics().max_bytes


@pytest.mark.parametrize("setting", sorted(SETTINGS))
async def test_closing_the_stream_during_a_copy_neither_hangs_nor_frees_memory_early(setting: str) -> None:
    """Another task closes the stream while a copy waits in the ring for a peer that reads nothing."""
    # A short drain: the peer never reads, so closing waits that long, then resets.
    async with open_pool(max_bytes=16 * MiB, drain_timeout=0.5, **SETTINGS[setting]) as pool:  # type: ignore[arg-type]
        kernel = ring_kernel(pool)
        a, b = await stream_pair(pool)
        assert isinstance(a, trio_zc.ZeroCopyStream) and isinstance(b, trio_zc.ZeroCopyStream)
        stop_reading(b)
        small_send_buffer(a)
        image = os.urandom(8 * MiB)
        async with b:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:

                    async def close_once_in_the_ring() -> None:
                        while not kernel.copy_calls:
                            await trio.sleep(0.01)
                        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                        await a.aclose()

                    nursery.start_soon(close_once_in_the_ring)
                    async with pool.lease(len(image)) as lease:
                        lease.write(image)
                        with pytest.raises((trio.ClosedResourceError, trio.BrokenResourceError)):
                            await a.send_lease(lease.seal())
            # Closing reset the connection once its drain timed out or the
            # request ended; either way nothing of the image's memory was
            # reused while the kernel could still read it.
            assert isinstance(a._channel, IoUringChannel)
            assert not a._channel.calls
        stats = pool.statistics()
        assert stats.free_bytes + stats.quarantined_bytes == stats.max_bytes
