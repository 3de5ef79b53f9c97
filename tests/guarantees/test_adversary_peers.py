"""Hostile peers over loopback: resets at every phase, half-closes, crawling readers, garbage.

Pinned defences (they hold at b591049 too):

- A peer that resets the connection (``SO_LINGER`` 0, then close) at any
  phase -- before the send, while it waits, after it returned with its
  completions pending, while ``send_timeout`` runs, while
  ``wait_reusable()`` waits, while ``aclose()`` drains, while the pool's
  own close drains -- never makes anything hang for the drain deadline nor
  quarantines memory: the kernel reports the dropped sends done, and the
  pool ends whole.
- A peer that half-closes, reads one byte at a time, or sends garbage while
  it is being sent to, gets exactly the bytes sent, and the stream receives
  exactly the garbage.
"""

from __future__ import annotations

import os
import socket
import struct
import warnings
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..streams import ALWAYS_ZC, KERNELS, Peer, kernel, pattern, receive_exactly, stop_reading, stream_pair

SIZE = 1 << 20
#: Long enough that waiting for it would fail the test's own deadline.
LONG_DRAIN = 30.0


def stall(peer: Peer) -> None:
    if isinstance(peer, trio_zc.testing.MockPeer):
        peer.stop_reading()
    else:
        stop_reading(peer)


async def reset(peer: Peer) -> None:
    """Close *peer* with a TCP reset (SO_LINGER 0), as a crashed client would."""
    if isinstance(peer, trio_zc.testing.MockPeer):
        peer.reset()
        await trio.lowlevel.checkpoint()
        return
    sock: socket.socket = peer._channel.transport.sock  # type: ignore[union-attr]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await peer.aclose()


def assert_whole(pool: trio_zc.BufferPool) -> None:
    stats = pool.statistics()
    assert stats.free_bytes == stats.max_bytes, stats
    assert stats.sends_in_flight == 0 and stats.quarantined_bytes == 0, stats
    assert stats.sent.quarantined_sends == 0, stats.sent


Phase = Callable[[trio_zc.BufferPool, trio_zc.ZeroCopyStream, Peer, trio_zc.SealedLease], Awaitable[None]]


async def _send(stream: trio_zc.ZeroCopyStream, sealed: trio_zc.SealedLease) -> None:
    try:
        await stream.send_lease(sealed)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def reset_before_the_send(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, peer: Peer, sealed: trio_zc.SealedLease) -> None:
    await reset(peer)
    await trio.sleep(0.05)
    await _send(stream, sealed)
    await _send(stream, sealed)


async def reset_while_the_send_waits(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, peer: Peer, sealed: trio_zc.SealedLease) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send, stream, sealed)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        await reset(peer)


async def reset_with_completions_pending(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, peer: Peer, sealed: trio_zc.SealedLease) -> None:
    small = await pool.acquire(64 * 1024)
    small.write(b"s" * 64 * 1024)
    small_sealed = small.seal()
    await stream.send_lease(small_sealed)  # taken at once; its completion waits for the peer
    small_sealed.release()
    await reset(peer)


async def reset_during_send_timeout(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, peer: Peer, sealed: trio_zc.SealedLease) -> None:
    stream.send_timeout = LONG_DRAIN
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send, stream, sealed)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        await reset(peer)


async def reset_during_wait_reusable(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, peer: Peer, sealed: trio_zc.SealedLease) -> None:
    adopted = pool.adopt(pattern(SIZE, 6))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send, stream, adopted)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)

        async def wait() -> None:
            try:
                await adopted.wait_reusable()
            except trio_zc.LeaseQuarantinedError:  # pragma: no cover - would fail assert_whole
                pass

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        await reset(peer)


async def reset_during_aclose(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, peer: Peer, sealed: trio_zc.SealedLease) -> None:
    small = await pool.acquire(64 * 1024)
    small.write(b"s" * 64 * 1024)
    small_sealed = small.seal()
    await stream.send_lease(small_sealed)
    small_sealed.release()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.aclose)  # waits for the completion (LONG_DRAIN at most)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        await reset(peer)


PHASES: dict[str, Phase] = {
    "before-send": reset_before_the_send,
    "send-waits": reset_while_the_send_waits,
    "completions-pending": reset_with_completions_pending,
    "send_timeout": reset_during_send_timeout,
    "wait_reusable": reset_during_wait_reusable,
    "aclose": reset_during_aclose,
}


@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("name", KERNELS)
async def test_a_reset_at_any_phase_never_hangs_nor_loses_memory(name: str, phase: str) -> None:
    async with trio_zc.open_pool(
        max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=LONG_DRAIN
    ) as pool:
        stream, peer = await stream_pair(pool)
        stall(peer)
        lease = await pool.acquire(SIZE)
        lease.write(pattern(SIZE, 1))
        sealed = lease.seal()
        with trio.fail_after(10):  # far less than LONG_DRAIN
            await PHASES[phase](pool, stream, peer, sealed)
            sealed.release()
            await stream.aclose()
            await peer.aclose()
            while pool.statistics().sends_in_flight:
                await trio.sleep(0.01)
        assert_whole(pool)


@pytest.mark.parametrize("name", KERNELS)
async def test_a_reset_while_the_pool_itself_drains_ends_the_block_at_once(name: str) -> None:
    with trio.fail_after(10), warnings.catch_warnings():
        warnings.simplefilter("error")  # a QuarantineWarning fails the test
        async with trio.open_nursery() as outer:
            async with trio_zc.open_pool(
                max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=LONG_DRAIN
            ) as pool:
                stream, peer = await stream_pair(pool)
                stall(peer)
                lease = await pool.acquire(SIZE)
                lease.write(pattern(SIZE, 2))
                sealed = lease.seal()
                outer.start_soon(_send, stream, sealed)  # outlives the block
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                sealed.release()

                async def reset_soon() -> None:
                    await trio.sleep(0.2)  # the pool's close is waiting by then
                    await reset(peer)

                outer.start_soon(reset_soon)
            # The block ended well before LONG_DRAIN, with nothing quarantined.
            assert pool.statistics().quarantined_bytes == 0
            await stream.aclose()


@pytest.mark.parametrize("name", KERNELS)
async def test_a_peer_that_half_closes_and_sends_garbage_gets_its_bytes_and_gives_its_garbage(name: str) -> None:
    garbage = os.urandom(SIZE)
    image = pattern(SIZE, 3)
    async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        lease = await pool.acquire(SIZE)
        lease.write(image)
        sealed = lease.seal()
        received_by_stream = bytearray()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:

                async def peer_sends_garbage_then_eof() -> None:
                    await peer.send_all(garbage)
                    await peer.send_eof()

                async def stream_receives() -> None:
                    while True:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        received_by_stream.extend(chunk)

                nursery.start_soon(peer_sends_garbage_then_eof)
                nursery.start_soon(stream_receives)
                nursery.start_soon(stream.send_lease, sealed)
                got = await receive_exactly(peer, SIZE)
        assert got == image
        assert bytes(received_by_stream) == garbage
        sealed.release()
        await stream.aclose()
        await peer.aclose()
        with trio.fail_after(10):
            while pool.statistics().sends_in_flight:
                await trio.sleep(0.01)
        assert_whole(pool)


@pytest.mark.parametrize("name", KERNELS)
async def test_a_peer_reading_one_byte_at_a_time_gets_every_byte(name: str) -> None:
    image = pattern(48 * 1024, 4)
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        stall(peer)
        lease = await pool.acquire(len(image))
        lease.write(image)
        sealed = lease.seal()
        got = bytearray()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_lease, sealed)
                await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                sealed.release()  # the send, or the kernel, holds it
                if isinstance(peer, trio_zc.testing.MockPeer):
                    peer.resume_reading()
                while len(got) < len(image):
                    got += await peer.receive_some(1)
        assert bytes(got) == image
        await stream.aclose()
        await peer.aclose()
        with trio.fail_after(10):
            while pool.statistics().sends_in_flight:
                await trio.sleep(0.01)
        assert_whole(pool)
