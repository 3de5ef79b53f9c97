"""A send holds its lease exactly as long as the kernel may still read it.

``send_lease`` first hands the kernel what it takes at once, with no hold
of its own: nothing else runs until that returns, a copy is then done with
the memory, and each zero-copy call holds it until its completion. Only a
send that has to wait holds the lease itself. These tests check both halves
on the mock kernel: a lease released by another task while its send waits
keeps its memory until the send ends, and a send taken at once leaves
nothing held behind.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool
from trio_zc.testing import MockKernel

COPY = ZeroCopyPolicy(min_zerocopy_bytes=1 << 30)
ZEROCOPY = ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)
POLICIES = {"copy": COPY, "zerocopy": ZEROCOPY}
SIZE = 50_000


async def sealed_with(pool: trio_zc.BufferPool, data: bytes) -> trio_zc.SealedLease:
    lease = await pool.acquire(len(data))
    lease.write(data)
    return lease.seal()


@pytest.mark.parametrize("path", sorted(POLICIES))
async def test_a_waiting_send_holds_a_lease_its_owner_released(path: str) -> None:
    # A pool with room for one lease only: if the send did not hold the
    # memory, the next lease would get it, and its bytes would go out.
    mock = MockKernel(socket_buffer=4096, receive_buffer=4096)
    async with open_pool(max_bytes=64 * 1024, kernel=mock, policy=POLICIES[path]) as pool:
        stream, peer = mock.open_stream(pool)
        data = os.urandom(SIZE)
        sealed = await sealed_with(pool, data)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            await trio.testing.wait_all_tasks_blocked()
            assert 0 < peer.buffered < SIZE  # part taken at once, the rest waiting
            sealed.release()
            with pytest.raises(trio.WouldBlock):
                pool.acquire_nowait(SIZE)
            got = await peer.receive_exactly(SIZE)
        assert got == data
        await trio.testing.wait_all_tasks_blocked()
        lease = pool.acquire_nowait(SIZE)  # the send ended: the memory is back
        lease.release()
        await stream.aclose()
        await peer.aclose()


async def test_a_copy_taken_at_once_holds_nothing() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=64 * 1024, kernel=mock, policy=COPY) as pool:
        stream, peer = mock.open_stream(pool)
        data = os.urandom(SIZE)
        sealed = await sealed_with(pool, data)
        await stream.send_lease(sealed)
        assert sealed.sends_in_flight == 0
        sealed.release()
        # No hold and no completion to wait for: the memory is free now.
        lease = pool.acquire_nowait(SIZE)
        lease.write(b"\xff" * SIZE)  # cannot change what was sent
        assert await peer.receive_exactly(SIZE) == data
        lease.release()
        assert stream.statistics().sent.bytes_copied == SIZE
        await stream.aclose()
        await peer.aclose()


async def test_a_zerocopy_send_taken_at_once_is_held_by_its_call_alone() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=64 * 1024, kernel=mock, policy=ZEROCOPY) as pool:
        stream, peer = mock.open_stream(pool)
        peer.hold_transmission()
        data = os.urandom(SIZE)
        sealed = await sealed_with(pool, data)
        await stream.send_lease(sealed)
        assert sealed.sends_in_flight == 1  # the call, not the send
        sealed.release()
        with pytest.raises(trio.WouldBlock):
            pool.acquire_nowait(SIZE)
        peer.transmit()
        assert await peer.receive_exactly(SIZE) == data
        await trio.testing.wait_all_tasks_blocked()  # the completion arrives
        lease = pool.acquire_nowait(SIZE)
        lease.release()
        await stream.aclose()
        await peer.aclose()
