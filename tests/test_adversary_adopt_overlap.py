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
often as it needs.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc.testing import MockKernel

from .streams import ALWAYS_ZC, pattern, receive_exactly, stop_reading, stream_pair

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


@pytest.mark.parametrize("kernel_name", ["mock", "copy"])
async def test_overlapping_adopts_are_refused_unless_both_are_immutable_bytes(kernel_name: str) -> None:
    kernel: str | MockKernel = MockKernel() if kernel_name == "mock" else kernel_name
    buffer = bytearray(pattern(SIZE, 3))
    static = bytes(pattern(4096, 5))
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=kernel, policy=ALWAYS_ZC) as pool, trio_zc.open_pool(
        max_bytes=SIZE, kernel="copy"
    ) as other:
        one = pool.adopt(buffer)
        before = pool.statistics()
        for overlapping in (buffer, memoryview(buffer)[:], memoryview(buffer)[100:200], memoryview(buffer).toreadonly()):
            with pytest.raises(ValueError, match="already covers"):
                pool.adopt(overlapping)
            with pytest.raises(ValueError, match="already covers"):
                other.adopt(overlapping)  # another pool's lease counts too
        assert pool.statistics() == before
        # Once the first lease is done, the buffer may be adopted again.
        await one.wait_reusable()
        pool.adopt(memoryview(buffer)[:]).release()
        # Immutable bytes can be adopted any number of times.
        leases = [pool.adopt(static) for _ in range(3)] + [pool.adopt(memoryview(static)[10:20])]
        for lease in leases:
            lease.release()
