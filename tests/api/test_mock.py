"""The mock kernel's controls, each doing what it says, deterministically."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool
from trio_zc.testing import MockKernel, MockPeer, PrematureReuseError

MiB = 1 << 20

ALWAYS_ZC = ZeroCopyPolicy(copied_streak=0)


async def sealed_with(pool: trio_zc.BufferPool, data: bytes) -> trio_zc.SealedLease:
    lease = await pool.acquire(len(data))
    lease.write(data)
    return lease.seal()


async def test_fixtures_from_the_plugin(mock_kernel: MockKernel, mock_pool: trio_zc.BufferPool) -> None:
    assert mock_pool.statistics().kernel == "mock"
    stream, peer = mock_kernel.open_stream(mock_pool)
    async with stream, peer:
        await stream.send_all(b"hello")
        assert await peer.receive_exactly(5) == b"hello"


async def overwrite_while_in_flight(
    mock: MockKernel, *, discard: bool = False, on_sent: Callable[[MockPeer], None] | None = None
) -> pytest.ExceptionInfo[PrematureReuseError]:
    """Send an adopted frame zero-copy, then write into it before the kernel read it."""
    frame = bytearray(b"A" * 40000)
    # The pool's one failure comes out as itself (docs/guarantees.rst, "Exceptions").
    with pytest.raises(PrematureReuseError) as info:
        async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
            stream, peer = mock.open_stream(pool)
            if discard:
                peer.discard()
            peer.hold_transmission()
            sealed = pool.adopt(frame)
            await stream.send_lease(sealed)  # accepted, not read yet
            if on_sent is not None:
                on_sent(peer)
            sealed.release()
            frame[:5] = b"BBBBB"  # the bug: written before wait_reusable()
            peer.transmit()
            if not discard:
                # Like a real NIC, the mock read the memory late: the client got the new bytes.
                assert (await peer.receive_exactly(40000))[:6] == b"BBBBBA"
            await trio.sleep_forever()  # the kernel's task reports the reuse
    return info


async def test_bytes_are_read_at_transmission_and_reuse_is_caught() -> None:
    info = await overwrite_while_in_flight(MockKernel())
    assert info.match(r"lease #\d+ \(adopted, 40000 bytes.*test_mock\.py:\d+ in overwrite_")


async def test_correct_reuse_after_wait_reusable_passes() -> None:
    mock = MockKernel()
    frame = bytearray(b"A" * 40000)
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        async with stream, peer:
            for round_ in range(3):
                sealed = pool.adopt(frame)
                await stream.send_lease(sealed)
                assert await peer.receive_exactly(40000) == bytes(frame)
                await sealed.wait_reusable()
                frame[:] = bytes([66 + round_]) * 40000
        assert stream.statistics().sent.zerocopy_calls == 3


async def test_held_completions_keep_memory_out_of_the_pool() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.hold_completions()
        sealed = await sealed_with(pool, os.urandom(MiB))
        await stream.send_lease(sealed)
        sealed.release()
        await peer.receive_exactly(MiB)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().draining_leases == 1
        with pytest.raises(trio.WouldBlock):
            pool.acquire_nowait(MiB)
        assert peer.release_completions() == 1
        assert pool.statistics().free_bytes == MiB
        await stream.aclose()


@pytest.mark.parametrize("reverse", [False, True])
async def test_coalesced_and_reordered_completions(reverse: bool) -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=8 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.accept_at_most(20000)  # one call per 20000 bytes
        peer.hold_completions()
        sealed = await sealed_with(pool, os.urandom(100000))
        await stream.send_lease(sealed)
        await peer.receive_exactly(100000)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().sends_in_flight == 5
        # The mock coalesces as the kernel does: one record for 5 calls.
        records = list(peer._conn.records)
        assert [r[:2] for r in records] == [[0, 4]]
        # Split it up to test reordering.
        peer._conn.records.clear()
        peer._conn.records.extend([[0, 1, False], [2, 2, False], [3, 4, False]])
        assert peer.release_completions(reverse=reverse) == 3
        assert stream.statistics().sends_in_flight == 0
        assert stream.statistics().sent.completions == 5
        sealed.release()
        await stream.aclose()


async def test_counter_wraps_at_2_to_the_32() -> None:
    mock = MockKernel(counter_start=2**32 - 2)
    async with open_pool(max_bytes=8 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.accept_at_most(20000)
        peer.hold_completions()
        data = os.urandom(100000)
        sealed = await sealed_with(pool, data)
        await stream.send_lease(sealed)
        assert [s.counter for s in sorted(peer.sends, key=lambda s: s.nbytes)] != []
        assert sorted(s.counter for s in peer.sends) == [0, 1, 2, 2**32 - 2, 2**32 - 1]
        assert await peer.receive_exactly(100000) == data
        await trio.testing.wait_all_tasks_blocked()
        # One wrapped range: lo above hi.
        assert [r[:2] for r in peer._conn.records] == [[2**32 - 2, 2]]
        peer.release_completions()
        assert stream.statistics().sends_in_flight == 0
        sealed.release()
        assert pool.statistics().free_bytes == 8 * MiB
        await stream.aclose()


async def test_copied_completions_switch_the_stream_to_copying() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=8 * MiB, kernel=mock, policy=ZeroCopyPolicy(copied_streak=3)) as pool:
        stream, peer = mock.open_stream(pool)
        peer.mark_copied()
        sealed = await sealed_with(pool, os.urandom(64 * 1024))
        for _ in range(5):
            await stream.send_lease(sealed)
            await peer.receive_exactly(64 * 1024)
            await trio.testing.wait_all_tasks_blocked()
        stats = stream.statistics()
        assert stats.sent.zerocopy_calls == 3 and stats.sent.bytes_kernel_copied == 3 * 64 * 1024
        assert stats.sent.bytes_copied == 2 * 64 * 1024
        assert not stats.zerocopy_enabled
        sealed.release()
        await stream.aclose()


async def test_partial_sends_are_resumed() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.accept_at_most(999)
        data = os.urandom(50000)
        sealed = await sealed_with(pool, data)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            assert await peer.receive_exactly(len(data)) == data
        assert stream.statistics().sent.zerocopy_calls == -(-50000 // 999)
        sealed.release()
        await stream.aclose()


async def test_enobufs_once_is_retried_twice_falls_back() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        data = os.urandom(100000)
        sealed = await sealed_with(pool, data)
        peer.fail_sends(errno.ENOBUFS)
        await stream.send_lease(sealed)
        stats = stream.statistics()
        assert stats.sent.enobufs == 1 and stats.fallbacks == ()
        assert stats.sent.zerocopy_calls == 1
        peer.fail_sends(errno.ENOBUFS, count=2)
        await stream.send_lease(sealed)
        stats = stream.statistics()
        assert stats.sent.enobufs == 3 and stats.sent.bytes_copied == 100000
        assert stats.fallbacks[0][0].startswith("ENOBUFS")
        assert await peer.receive_exactly(200000) == data * 2
        sealed.release()
        await stream.aclose()


async def test_eagain_just_waits() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.fail_sends(errno.EAGAIN, count=3, after=0)
        data = os.urandom(70000)
        sealed = await sealed_with(pool, data)
        await stream.send_lease(sealed)
        assert await peer.receive_exactly(70000) == data
        assert stream.statistics().sent.enobufs == 0
        sealed.release()
        await stream.aclose()


@pytest.mark.parametrize("err", [errno.ECONNRESET, errno.EPIPE])
async def test_reset_and_broken_pipe_break_the_stream_and_lose_no_memory(err: int) -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=4 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.accept_at_most(10000)
        peer.hold_transmission()
        sealed = await sealed_with(pool, os.urandom(100000))
        peer.fail_sends(err, after=4)
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_lease(sealed)
        sealed.release()
        await trio.testing.wait_all_tasks_blocked()
        # The dropped sends were reported done: nothing in flight, nothing lost.
        assert stream.statistics().sends_in_flight == 0
        assert pool.statistics().free_bytes == 4 * MiB
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"more")
        await stream.aclose()


async def test_peer_reset_while_sends_are_in_flight() -> None:
    mock = MockKernel(receive_buffer=10000)
    async with open_pool(max_bytes=4 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        sealed = await sealed_with(pool, os.urandom(200000))
        await stream.send_lease(sealed)  # fits the send buffer; the peer reads nothing
        sealed.release()
        assert stream.statistics().sends_in_flight == 1
        peer.reset()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().free_bytes == 4 * MiB
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
        await stream.aclose()


async def test_a_peer_that_stops_reading_blocks_the_sender() -> None:
    mock = MockKernel(socket_buffer=50000, receive_buffer=50000)
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.stop_reading()
        data = os.urandom(300000)
        sealed = await sealed_with(pool, data)
        with trio.move_on_after(1) as scope:
            await stream.send_lease(sealed)
        assert scope.cancelled_caught
        assert 0 < peer.buffered <= 100000
        peer.resume_reading()
        received = await peer.receive_exactly(peer.buffered)
        assert data.startswith(received)
        sealed.release()
        await stream.aclose()


async def test_lost_completions_are_quarantined_on_close(autojump_clock: trio.testing.MockClock) -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC, drain_timeout=5) as pool:
        stream, peer = mock.open_stream(pool)
        peer.lose_completions()
        sealed = await sealed_with(pool, os.urandom(100000))
        await stream.send_lease(sealed)
        sealed.release()
        await peer.receive_exactly(100000)
        start = trio.current_time()
        with pytest.warns(trio_zc.QuarantineWarning):
            await stream.aclose()
        # Waited the drain deadline and the abort's grace, on the mock clock.
        assert trio.current_time() - start == pytest.approx(6.0)
        stats = pool.statistics()
        assert stats.quarantined_leases == 1 and stats.sent.quarantined_sends == 1
        assert stats.free_bytes == MiB - 25 * 4096


async def test_garbage_completions_release_nothing() -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.hold_completions()
        sealed = await sealed_with(pool, os.urandom(100000))
        await stream.send_lease(sealed)
        peer.complete(5, 9)  # never sent
        peer.complete(2**32 - 1, 0)  # wrapped, never sent
        stats = stream.statistics()
        assert stats.sent.malformed_records == 2 and stats.sends_in_flight == 1
        peer.complete(0, 0)
        assert stream.statistics().sends_in_flight == 0
        sealed.release()
        await stream.aclose()


async def test_deterministic_under_autojump(autojump_clock: trio.testing.MockClock) -> None:
    async def scenario() -> tuple[object, ...]:
        mock = MockKernel(socket_buffer=30000, receive_buffer=30000)
        async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC, drain_timeout=2) as pool:
            stream, peer = mock.open_stream(pool)
            peer.accept_at_most(7000)
            sealed = await sealed_with(pool, bytes(range(256)) * 400)
            start = trio.current_time()

            async def slow_reader() -> None:
                while True:
                    await trio.sleep(0.5)
                    await peer.receive_some(5000)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_reader)
                await stream.send_lease(sealed)
                nursery.cancel_scope.cancel()
            sealed.release()
            await stream.aclose()
            return (trio.current_time() - start, stream.statistics().sent, pool.statistics().sent)

    assert await scenario() == await scenario()


async def test_mock_misuse_is_refused() -> None:
    mock = MockKernel()
    with pytest.raises(ValueError):
        MockKernel(counter_start=2**32)
    with pytest.raises(ValueError):
        MockKernel(socket_buffer=0)
    async with open_pool(max_bytes=MiB, kernel=mock) as pool, open_pool(max_bytes=MiB) as other:
        with pytest.raises(ValueError, match="pool opened with this MockKernel"):
            mock.open_stream(other)
        a, b = trio.socket.socketpair()
        with b, pytest.raises(TypeError, match="open_stream"):
            trio_zc.ZeroCopyStream(a, pool=pool)
        stream, peer = mock.open_stream(pool)
        with pytest.raises(ValueError):
            peer.fail_sends(errno.EINVAL)
        with pytest.raises(ValueError):
            peer.accept_at_most(0)
        assert isinstance(peer, MockPeer) and "mock connection" in repr(peer)
        await stream.aclose()


async def test_a_discarding_peer_takes_everything_and_reads_nothing() -> None:
    mock = MockKernel(receive_buffer=64 * 1024)
    async with open_pool(max_bytes=4 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        await stream.send_all(b"x" * 1000)
        await trio.testing.wait_all_tasks_blocked()
        assert peer.buffered == 1000 and peer.discarded == 0
        peer.discard()
        assert peer.buffered == 0 and peer.discarded == 1000  # what was waiting goes too
        # Far more than the receive buffer holds: nobody reads, nothing blocks.
        for _ in range(8):
            sealed = await sealed_with(pool, os.urandom(256 * 1024))
            await stream.send_lease(sealed)
            sealed.release()
        await stream.send_eof()
        assert await peer.receive_some() == b""  # only EOF comes out
        await stream.aclose()
        assert peer.discarded == 1000 + 8 * 256 * 1024
        stats = stream.statistics().sent
        assert stats.zerocopy_calls == stats.completions == 8
        assert pool.statistics().free_bytes == pool.max_bytes
        await peer.aclose()


async def test_a_discarding_peer_still_catches_premature_reuse() -> None:
    info = await overwrite_while_in_flight(MockKernel(), discard=True)
    assert info.match(r"adopted, 40000 bytes.*test_mock\.py:\d+")


async def test_call_sites_off_keeps_the_check_and_drops_the_place() -> None:
    def check(peer: MockPeer) -> None:
        (send,) = peer.sends
        assert send.where == "<not recorded>"
        assert send.snapshot == b"A" * 40000

    info = await overwrite_while_in_flight(MockKernel(call_sites=False), on_sent=check)
    assert info.match("made at <not recorded>")


async def test_a_kernel_object_serves_one_pool_for_its_whole_life() -> None:
    """A second pool on the same MockKernel is refused: its close would reset the first's connections.

    (On one shared kernel, one pool's drain deadline aborted every connection
    of the kernel, the other pool's included, and quarantined its lease.)
    """
    mock = MockKernel()
    refusal = r"this MockKernel already serves a pool \(open or closed\).*make a new MockKernel\(\) for each pool"
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC, drain_timeout=0.1) as pool:
        stream, peer = mock.open_stream(pool)
        peer.hold_completions()
        data = os.urandom(100_000)
        sealed = await sealed_with(pool, data)
        await stream.send_lease(sealed)
        sealed.release()
        assert pool.statistics().sends_in_flight == 1
        with pytest.raises(ValueError, match=refusal):
            async with open_pool(max_bytes=MiB, kernel=mock, drain_timeout=0.1):
                pass  # pragma: no cover - refused
        # The first pool and its connection are untouched.
        assert await peer.receive_exactly(len(data)) == data
        peer.release_completions()
        await stream.aclose()
        assert await peer.receive_some() == b""
        stats = pool.statistics()
        assert stats.quarantined_leases == 0 and stats.sends_in_flight == 0
        assert stats.free_bytes == stats.max_bytes
    # Not after it closed either: the kernel's connections belong to that pool.
    with pytest.raises(ValueError, match=refusal):
        async with open_pool(max_bytes=MiB, kernel=mock):
            pass  # pragma: no cover - refused


async def test_a_real_kernel_object_serves_one_pool_too() -> None:
    from trio_zc._kernels._msg_zerocopy import MsgZeroCopyKernel

    kernel = MsgZeroCopyKernel()
    async with open_pool(max_bytes=MiB, kernel=kernel):
        with pytest.raises(ValueError, match="this MsgZeroCopyKernel already serves a pool"):
            async with open_pool(max_bytes=MiB, kernel=kernel):
                pass  # pragma: no cover - refused
