"""Two adopted leases over one application buffer: ``wait_reusable()`` of one is not the buffer's.

``adopt()`` refuses pool memory, but takes the same application buffer (or
overlapping views of it) any number of times, in one pool or several. Each
lease then says, through :meth:`~trio_zc.SealedLease.wait_reusable`, when
*its* sends are done -- and the documentation says that is "how code that
adopted its own buffer learns when it may write into it again". With a
second lease over the same bytes still in flight to a slow peer, it is not:
the application writes, and the slow peer receives the new bytes.

Adopting one immutable ``bytes`` object many times (a static page sent to
many clients) is harmless and common, so refusing every overlap would be
wrong. The decision: ``adopt()`` refuses memory that another live adopted
lease (of any pool) covers, unless both are immutable ``bytes``; an
application adopts a buffer once and sends that lease, or parts of it, as
often as it needs. -- Superseded: the same memory may be adopted more
than once, and ``wait_reusable()`` of any lease over it returns only once no
lease over that memory has a send in flight (``AdoptedMemory`` in
``_lease.py``); the tests below check both halves.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc.testing import MockKernel

from ..streams import ALWAYS_ZC, pattern, receive_exactly, stop_reading, stream_pair

SIZE = 1 << 20


@pytest.mark.parametrize("name", ["msg_zerocopy", "io_uring"])
async def test_wait_reusable_is_not_told_the_buffer_is_free_while_another_lease_sends_it(name: str) -> None:
    first, later = pattern(SIZE, 1), pattern(SIZE, 2)
    buffer = bytearray(first)
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=name, policy=ALWAYS_ZC) as pool:
        fast, fast_peer = await stream_pair(pool)
        slow, slow_peer = await stream_pair(pool)
        try:
            stop_reading(slow_peer)
            one = pool.adopt(buffer)
            try:
                two: trio_zc.SealedLease | None = pool.adopt(memoryview(buffer)[:])
            except ValueError:
                two = None  # refusing the overlap is one fix
            wrote = False
            async with trio.open_nursery() as nursery:
                if two is not None:
                    nursery.start_soon(slow.send_lease, two)
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                nursery.start_soon(fast.send_lease, one)
                assert await receive_exactly(fast_peer, SIZE) == first
                with trio.move_on_after(2):  # waiting for the slow peer too is the other fix
                    await one.wait_reusable()
                    buffer[:] = later  # what the documentation says the application may now do
                    wrote = True
                got = await receive_exactly(slow_peer, SIZE) if two is not None else first
            assert got == first, f"the slow peer got the application's later bytes (wrote={wrote})"
            if two is not None:
                await two.wait_reusable()
        finally:
            for s in (fast, fast_peer, slow, slow_peer):
                await trio.aclose_forcefully(s)


async def test_wait_reusable_waits_for_every_lease_over_the_memory_on_the_mock() -> None:
    mock = MockKernel()
    buffer = bytearray(pattern(SIZE, 3))
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=mock, policy=ALWAYS_ZC) as pool:
        fast, fast_peer = mock.open_stream(pool)
        slow, slow_peer = mock.open_stream(pool)
        slow_peer.hold_transmission()  # the slow NIC reads the memory late
        one = pool.adopt(buffer)
        two = pool.adopt(memoryview(buffer)[100:200])  # overlapping: allowed
        await slow.send_lease(two)
        await fast.send_lease(one)
        await fast_peer.receive_exactly(SIZE)
        with trio.move_on_after(1) as scope:
            await one.wait_reusable()
        assert scope.cancelled_caught, "wait_reusable() returned while another lease's send reads the buffer"
        slow_peer.transmit()
        await slow_peer.receive_exactly(100)
        await two.wait_reusable()
        buffer[:] = pattern(SIZE, 4)  # now allowed: nothing reads it
        for s in (fast, fast_peer, slow, slow_peer):
            await s.aclose()


async def test_immutable_bytes_adopted_many_times_never_wait_for_each_other() -> None:
    mock = MockKernel()
    static = bytes(pattern(4096, 5))
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.hold_transmission()
        first, second = pool.adopt(static), pool.adopt(static)
        await stream.send_lease(first)
        with trio.fail_after(1):
            await second.wait_reusable()  # the other's send in flight does not matter: nobody writes bytes
        peer.transmit()
        await peer.receive_exactly(4096)
        await first.wait_reusable()
        await stream.aclose()
        await peer.aclose()


async def test_a_quarantined_overlapping_lease_makes_wait_reusable_refuse() -> None:
    mock = MockKernel()
    buffer = bytearray(pattern(SIZE, 6))
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=mock, policy=ALWAYS_ZC) as pool:
        lost, lost_peer = mock.open_stream(pool, drain_timeout=0)
        lost_peer.lose_completions()
        lost_peer.hold_transmission()
        one = pool.adopt(buffer)
        two = pool.adopt(buffer)
        await lost.send_lease(two)
        with pytest.warns(trio_zc.QuarantineWarning):
            await lost.aclose()
        with pytest.raises(trio_zc.LeaseQuarantinedError, match="overlaps"):
            await one.wait_reusable()
        with pytest.raises(trio_zc.LeaseQuarantinedError, match="a connection it was sent on closed"):
            await two.wait_reusable()
        await lost_peer.aclose()
