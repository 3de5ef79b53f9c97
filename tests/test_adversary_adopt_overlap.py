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
wrong; refusing overlaps of writable memory, or making ``wait_reusable``
wait for every lease over the same memory, are the candidate fixes -- a
design decision, so the real-kernel test is ``xfail(strict=True)``. The
mock kernel catches the misuse (:class:`~trio_zc.testing.PrematureReuseError`),
which the last test pins.
"""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc.testing import MockKernel, PrematureReuseError

from .streams import ALWAYS_ZC, pattern, receive_exactly, stop_reading, stream_pair

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

SIZE = 1 << 20


@pytest.mark.xfail(
    strict=True,
    reason="wait_reusable() of one adopted lease returns while another lease over the same"
    " application buffer is still being sent: the application's next write goes on the wire",
)
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


async def test_the_mock_kernel_reports_the_overlapping_reuse() -> None:
    mock = MockKernel()
    buffer = bytearray(pattern(SIZE, 3))
    with pytest.raises(BaseException) as info:  # noqa: B017 - the group is checked below
        async with trio_zc.open_pool(max_bytes=SIZE, kernel=mock, policy=ALWAYS_ZC) as pool:
            fast, fast_peer = mock.open_stream(pool)
            slow, slow_peer = mock.open_stream(pool)
            slow_peer.hold_transmission()
            one = pool.adopt(buffer)
            two = pool.adopt(memoryview(buffer)[:])
            await slow.send_lease(two)
            await fast.send_lease(one)
            await fast_peer.receive_exactly(SIZE)
            await one.wait_reusable()
            buffer[:] = pattern(SIZE, 4)
            slow_peer.transmit()
            await slow_peer.receive_exactly(SIZE)
            await trio.testing.wait_all_tasks_blocked()
            await two.wait_reusable()

    def found(exc: BaseException) -> bool:
        if isinstance(exc, BaseExceptionGroup):
            return any(found(e) for e in exc.exceptions)
        return isinstance(exc, PrematureReuseError) or (exc.__context__ is not None and found(exc.__context__))

    assert found(info.value), repr(info.value)
