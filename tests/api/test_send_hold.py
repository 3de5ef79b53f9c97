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


@pytest.mark.parametrize("path", sorted(POLICIES))
async def test_a_send_taken_at_once_holds_only_what_the_kernel_holds(path: str) -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=64 * 1024, kernel=mock, policy=POLICIES[path]) as pool:
        stream, peer = mock.open_stream(pool)
        peer.hold_transmission()
        data = os.urandom(SIZE)
        sealed = await sealed_with(pool, data)
        await stream.send_lease(sealed)
        calls = 1 if path == "zerocopy" else 0
        assert sealed.sends_in_flight == calls  # the kernel's calls, never the send
        sealed.release()
        if calls:
            with pytest.raises(trio.WouldBlock):
                pool.acquire_nowait(SIZE)
            peer.transmit()  # the memory is read now; its completion follows
            await trio.testing.wait_all_tasks_blocked()
        # Nothing else holds the memory: it is free now.
        lease = pool.acquire_nowait(SIZE)
        lease.write(b"\xff" * SIZE)  # cannot change what was sent
        peer.transmit()
        assert await peer.receive_exactly(SIZE) == data
        lease.release()
        await stream.aclose()
        await peer.aclose()
