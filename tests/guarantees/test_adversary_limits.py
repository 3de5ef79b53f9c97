"""``max_in_flight`` and ``send_timeout`` together, with another task closing the stream.

Pinned (holds at b591049 too): a send waiting for room under
``max_in_flight``, with a ``send_timeout`` running, while another task
closes the stream: the waiting send ends at once with
:class:`trio.ClosedResourceError`, nothing is quarantined, and once the
timeout would have run out, the connection that took the closed stream's
descriptor number carries exactly its own bytes (no reset, no lease bytes).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..streams import ALWAYS_ZC, kernel, pattern, stop_reading, stream_pair
from .test_fd_reuse import PAYLOAD, Stranger

SIZE = 256 * 1024
TIMEOUT = 0.5


@pytest.mark.parametrize("name", ["msg_zerocopy", "io_uring", "mock"])
async def test_a_send_waiting_for_room_ends_cleanly_when_another_task_closes(name: str) -> None:
    async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=0.2) as pool:
        stream, peer = await stream_pair(pool)
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.hold_transmission()
        else:
            stop_reading(peer)
        stream.max_in_flight = 64 * 1024
        stream.send_timeout = TIMEOUT
        first, second = await pool.acquire(SIZE), await pool.acquire(SIZE)
        first.write(pattern(SIZE, 1))
        second.write(pattern(SIZE, 2))
        a, b = first.seal(), second.seal()
        fd = getattr(stream._channel, "fd", None)
        outcome: list[str] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def send(sealed: trio_zc.SealedLease) -> None:
                    try:
                        await stream.send_lease(sealed)
                        outcome.append("sent")
                    except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                        outcome.append(type(exc).__name__)

                nursery.start_soon(send, a)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                nursery.start_soon(send, b)  # waits for room behind the first
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                await stream.aclose()
            stranger = Stranger(fd) if fd is not None else None
            try:
                await trio.sleep(2 * TIMEOUT)  # past where the send's timeout would have run out
                if stranger is not None:
                    assert stranger.carried() == PAYLOAD
            finally:
                if stranger is not None:
                    stranger.close()
        assert "ClosedResourceError" in outcome, outcome
        a.release()
        b.release()
        await peer.aclose()
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes and stats.quarantined_bytes == 0, stats
