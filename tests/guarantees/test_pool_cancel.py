"""Cancelling a pool's block while sends are in flight: the drain still works, promptly.

When a deadline or Ctrl-C cancels the code around ``open_pool``, the pool's
close still waits (shielded) for the kernel to report every send in flight.
Those reports are read by the kernel's background work -- io_uring's reaper
and submitter, msg_zerocopy's reaper, the mock's pump -- so that work must go
on until the close has drained, and stop only then. Otherwise the block
hangs until ``drain_timeout`` and quarantines memory the kernel had already
finished with (seen with io_uring: 11.5 s and 32 MiB quarantined).

Each test stalls the receiver so that sends are in flight, cancels the
scope around the pool from outside, and then lets the receiver read: the
block must end long before ``drain_timeout``, with nothing quarantined and
no QuarantineWarning, and the receiver must have got a prefix of the images.
"""

from __future__ import annotations

import os
import warnings

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing
from trio_zc import ZeroCopyPolicy, open_pool

from ..streams import socket_pair

MiB = 1 << 20
ALWAYS_ZC = ZeroCopyPolicy(copied_streak=0)
#: Long enough that a close waiting for it is unmistakable.
DRAIN = 20.0


@pytest.mark.parametrize("close_stream", [False, True], ids=["stream-left-open", "stream-closed-in-block"])
@pytest.mark.parametrize("name", ["io_uring", "msg_zerocopy", "mock", "sendfile", "copy"])
async def test_cancelling_the_pools_block_drains_promptly_and_quarantines_nothing(
    name: str, close_stream: bool
) -> None:
    images = [os.urandom(4 * MiB) for _ in range(6)]
    expected = b"".join(images)
    received = bytearray()
    go = trio.Event()
    cancelled_at: float | None = None
    stats: trio_zc.PoolStatistics | None = None
    kernel_used = ""
    mock = trio_zc.testing.MockKernel() if name == "mock" else None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with trio.open_nursery() as outer:
            with trio.CancelScope() as scope:
                async with open_pool(
                    max_bytes=32 * MiB, kernel=mock or name, policy=ALWAYS_ZC, drain_timeout=DRAIN
                ) as pool:
                    kernel_used = pool.statistics().kernel
                    peer: trio.abc.Stream
                    if mock is not None:
                        stream, peer = mock.open_stream(pool)
                    else:
                        client, server = await socket_pair()
                        stream = trio_zc.ZeroCopyStream(client, pool=pool)
                        peer = trio.SocketStream(server)

                    async def receive() -> None:
                        # Outside the cancelled scope: reads on after the cancel.
                        async with peer:
                            await go.wait()
                            try:
                                while chunk := await peer.receive_some(MiB):
                                    received.extend(chunk)
                            except trio.BrokenResourceError:
                                pass  # the stream was reset (closed while cancelled)

                    async def cancel_when_stuck() -> None:
                        nonlocal cancelled_at
                        # The sender is stuck on the stalled receiver, sends in flight.
                        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                        cancelled_at = trio.current_time()
                        scope.cancel()
                        go.set()

                    outer.start_soon(receive)
                    outer.start_soon(cancel_when_stuck)
                    if close_stream:
                        async with stream:
                            for image in images:
                                async with pool.lease(len(image)) as lease:
                                    lease.write(image)
                                    await stream.send_lease(lease.seal())
                    else:
                        for image in images:
                            async with pool.lease(len(image)) as lease:
                                lease.write(image)
                                await stream.send_lease(lease.seal())
            assert scope.cancelled_caught
            assert cancelled_at is not None
            elapsed = trio.current_time() - cancelled_at
            stats = pool.statistics()
            # Let the receiver finish: the end of the stream ends it (or, at
            # worst, this deadline: the receiver's bytes are checked below).
            with trio.fail_after(10):
                await stream.aclose()
            outer.cancel_scope.deadline = trio.current_time() + 10
    if name == "io_uring" and kernel_used != "io_uring":
        pytest.skip(f"io_uring is not usable here (the pool used {kernel_used})")
    quarantine = [str(w.message) for w in caught if issubclass(w.category, trio_zc.QuarantineWarning)]
    assert quarantine == []
    assert stats is not None
    assert stats.quarantined_leases == 0 and stats.quarantined_bytes == 0, stats
    assert stats.sends_in_flight == 0
    # Well under the drain deadline: the close did not wait for it.
    assert elapsed < DRAIN / 2, f"the block took {elapsed:.1f} s to end after the cancel"
    # Whatever arrived is the start of the images, byte for byte.
    assert bytes(received) == expected[: len(received)]


async def test_closing_past_the_deadline_settles_stuck_connections_side_by_side(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Connections whose completions never come each get the same short grace, not one after another.

    After the drain deadline the pool resets every connection still busy and
    waits a grace (1 s) for the completions the resets bring. Waiting for them
    one connection at a time made a server with N stuck clients take N more
    seconds to close. (Virtual time, with the mock kernel losing completions.)
    """
    mock = trio_zc.testing.MockKernel()
    streams = 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with open_pool(max_bytes=32 * MiB, kernel=mock, policy=ALWAYS_ZC, drain_timeout=0.5) as pool:
            pairs = [mock.open_stream(pool) for _ in range(streams)]
            for stream, peer in pairs:
                peer.lose_completions()
                async with pool.lease(64 * 1024) as lease:
                    lease.write(b"z" * 64 * 1024)
                    await stream.send_lease(lease.seal())
            assert pool.statistics().sends_in_flight == streams
            closing_at = trio.current_time()
        closed_after = trio.current_time() - closing_at
    # Every connection's lost send is quarantined, as before.
    assert pool.statistics().quarantined_leases == streams
    assert any(issubclass(w.category, trio_zc.QuarantineWarning) for w in caught)
    # The deadline, then one grace for all of them.
    assert closed_after < 0.5 + 2 * 1.0, f"closing took {closed_after:.1f} s of virtual time"
    for stream, peer in pairs:
        await stream.aclose()
        await peer.aclose()
