"""A send lost on one connection taints the lease; it does not take it from its owner.

When a connection closes with a zero-copy send of a lease in flight and the
kernel never reports that send done, the lease's memory can never be reused
(quarantine). At 70a1a5f that also made the application's own
``SealedLease`` stale: ``release()`` and sending it to a healthy client
raised ``StaleLeaseError``, although nothing about the lease had changed for
its owner. Now the lease is TAINTED: its owner may go on sending it (its
bytes can never change, since its memory is never reused) and releases it
as usual, which ends it in quarantine.
"""

from __future__ import annotations

import pytest
import trio

import trio_zc
from trio_zc._kernels._socket import SocketTransport
from trio_zc.testing import MockKernel

from ..streams import ALWAYS_ZC, pattern, receive_exactly, sealed_with, stop_reading, stream_pair

SIZE = 4 << 20


@pytest.fixture(autouse=True)
def short_abort_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trio_zc._kernels._closing.ABORT_GRACE", 0.05)


NEVER_COMPLETES = ("msg_zerocopy", "io_uring")


async def lose_a_send(
    pool: trio_zc.BufferPool, sealed: trio_zc.SealedLease, name: str
) -> None:
    """Send *sealed* on a new connection whose completions never come, and close it."""
    stream, peer = await stream_pair(pool)
    stream._drain_timeout = 0.05
    if isinstance(peer, trio_zc.testing.MockPeer):
        peer.lose_completions()
        peer.hold_transmission()
    else:
        stop_reading(peer)
    with trio.move_on_after(0.5):
        await stream.send_lease(sealed)  # the peer reads nothing: part-way at most
    assert sealed.sends_in_flight >= 1
    with pytest.warns(trio_zc.QuarantineWarning):
        await stream.aclose()
    await peer.aclose()


@pytest.mark.parametrize("name", ["mock", *NEVER_COMPLETES])
async def test_the_owner_of_a_lease_whose_send_was_lost_can_still_send_and_release_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name in NEVER_COMPLETES:
        # As if the forced close could not bring the completions back.
        monkeypatch.setattr(SocketTransport, "abort", lambda self: None)
    kernel: str | MockKernel = MockKernel() if name == "mock" else name
    image = pattern(SIZE, 7)
    async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=kernel, policy=ALWAYS_ZC) as pool:
        if pool.statistics().kernel != (name if name != "mock" else "mock"):
            pytest.skip(f"{name} is not usable here: {pool.statistics().kernel_note}")
        sealed = await sealed_with(pool, image)
        await lose_a_send(pool, sealed, name)
        stats = pool.statistics()
        assert stats.tainted_leases == 1 and stats.quarantined_leases == 0
        assert "tainted" in repr(sealed)
        # Still its owner's: it sends, intact, to a healthy client ...
        healthy, peer = await stream_pair(pool)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(healthy.send_lease, sealed)
            assert await receive_exactly(peer, SIZE) == image
        await healthy.aclose()
        await peer.aclose()
        # ... and releases; its memory is withheld for good.
        sealed.release()
        stats = pool.statistics()
        assert stats.tainted_leases == 0 and stats.quarantined_leases == 1
        assert stats.quarantined_bytes >= SIZE
        with pytest.raises(trio_zc.StaleLeaseError):
            sealed.release()


async def test_wait_reusable_on_a_tainted_adopted_buffer_says_which_connection_lost_it() -> None:
    mock = MockKernel()
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=mock, policy=ALWAYS_ZC) as pool:
        buffer = bytearray(pattern(100_000, 8))
        adopted = pool.adopt(buffer)
        await lose_a_send(pool, adopted, "mock")
        with pytest.raises(trio_zc.LeaseQuarantinedError, match="a connection it was sent on closed"):
            await adopted.wait_reusable()
        with pytest.raises(BufferError):
            buffer.append(1)  # still exported: the kernel may read it for ever


async def test_a_tainted_lease_the_pool_releases_at_close_ends_quarantined() -> None:
    mock = MockKernel()
    with pytest.warns(trio_zc.LeaseLeakWarning):
        async with trio_zc.open_pool(max_bytes=1 << 20, kernel=mock, policy=ALWAYS_ZC) as pool:
            sealed = await sealed_with(pool, pattern(100_000, 9))
            await lose_a_send(pool, sealed, "mock")
    stats = pool.statistics()
    assert stats.quarantined_leases == 1 and stats.tainted_leases == 0
