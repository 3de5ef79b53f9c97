"""What a tight send loop relies on: ``schedule=False`` and the unsent-bytes cap.

``acquire(..., schedule=False)`` and ``pool.lease(..., schedule=False)`` skip
the schedule point when memory is there at once, and only then: they stay
cancel points, and they still wait (yielding) when the pool is full. Streams
that always copy raise trio.SocketStream's TCP_NOTSENT_LOWAT of 16 KiB;
streams that may send zero-copy keep it, since unsent zero-copy bytes are
pool memory.
"""

from __future__ import annotations

import socket

import pytest
import trio

import trio_zc
from trio_zc._kernels._socket import NOTSENT_LOWAT

PAGE = 4096


def _points() -> tuple[int, int]:
    """The current task's (cancel points, schedule points) so far.

    Private Trio counters, the ones trio.testing.assert_checkpoints reads;
    that helper demands both kinds, and here they must be told apart.
    """
    task = trio.lowlevel.current_task()
    return task._cancel_points, task._schedule_points


async def test_acquire_is_a_checkpoint_by_default_and_only_a_cancel_point_without_schedule() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        with trio.testing.assert_checkpoints():
            lease = await pool.acquire(PAGE)
        lease.release()
        cancel, schedule = _points()
        lease = await pool.acquire(PAGE, schedule=False)
        assert _points() == (cancel + 1, schedule)
        lease.release()
        assert pool.statistics().free_bytes == pool.max_bytes


async def test_lease_scope_with_schedule_false_does_not_yield_and_still_releases() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        with trio.testing.assert_checkpoints():
            async with pool.lease(PAGE) as lease:
                pass
        cancel, schedule = _points()
        async with pool.lease(PAGE, schedule=False) as lease:
            lease.write(b"x" * PAGE)
            sealed = lease.seal()
            assert sealed.nbytes == PAGE
        assert _points() == (cancel + 1, schedule)
        assert pool.statistics().free_bytes == pool.max_bytes


async def test_schedule_false_is_still_a_cancel_point() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await pool.acquire(PAGE, schedule=False)
            with pytest.raises(trio.Cancelled):
                async with pool.lease(PAGE, schedule=False):
                    pass  # pragma: no cover - never entered
        stats = pool.statistics()
        assert stats.free_bytes == pool.max_bytes


async def test_schedule_false_waits_when_the_pool_is_full() -> None:
    async with trio_zc.open_pool(max_bytes=2 * PAGE, kernel="copy") as pool:
        first = await pool.acquire(2 * PAGE)
        got: list[trio_zc.WritableLease] = []

        async def waiter() -> None:
            got.append(await pool.acquire(PAGE, schedule=False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not got  # waiting, not failing
            first.release()
        assert len(got) == 1
        got[0].release()


def _lowat(stream: trio_zc.ZeroCopyStream) -> int:
    sock = stream._channel.transport.sock  # type: ignore[attr-defined]
    value: int = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
    return value


@pytest.mark.parametrize(("kernel", "expected"), [("copy", NOTSENT_LOWAT), ("msg_zerocopy", 16384)])
async def test_streams_that_always_copy_raise_the_unsent_bytes_cap(kernel: str, expected: int) -> None:
    async with trio_zc.open_pool(max_bytes=8 << 20, kernel=kernel) as pool:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listeners[0]:
            port = listeners[0].socket.getsockname()[1]
            stream = await trio_zc.open_tcp_stream("127.0.0.1", port, pool=pool)
            peer = await listeners[0].accept()
            async with stream, peer:
                assert _lowat(stream) == expected
                # And it still sends: a 2 MiB image arrives whole.
                image = bytes(range(256)) * (2 * 1024 * 1024 // 256)
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        async with pool.lease(len(image), schedule=False) as lease:
                            lease.write(image)
                            await stream.send_lease(lease.seal())

                    nursery.start_soon(send)
                    received = bytearray()
                    while len(received) < len(image):
                        received += await peer.receive_some(1 << 20)
                assert bytes(received) == image
