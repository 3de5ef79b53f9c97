from __future__ import annotations

import mmap
import warnings

import numpy as np
import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import open_pool

from ..conftest import slot_of, start_send

PAGE = mmap.PAGESIZE
MiB = 1 << 20


async def test_acquire_write_seal_release_round_trip() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(10_000)
        assert lease.nbytes == 10_000
        end = lease.write(b"hello ")
        lease.write(b"world", end)
        sealed = lease.seal(11)
        assert bytes(sealed.view()) == b"hello world"
        stats = pool.statistics()
        assert stats.free_bytes == MiB - PAGE  # sealed at 11 bytes: the other pages went back
        assert stats.sealed_leases == 1 and stats.writable_leases == 0
        sealed.release()
        assert pool.statistics().free_bytes == MiB


async def test_max_bytes_rounds_down_to_pages() -> None:
    async with open_pool(max_bytes=10 * PAGE + 123) as pool:
        assert pool.max_bytes == 10 * PAGE
        assert pool.statistics().max_bytes == 10 * PAGE


async def test_memory_never_exceeds_max_bytes() -> None:
    async with open_pool(max_bytes=8 * PAGE) as pool:
        held = [pool.acquire_nowait(PAGE) for _ in range(8)]
        with pytest.raises(trio.WouldBlock):
            pool.acquire_nowait(1)
        assert pool.statistics().free_bytes == 0
        for lease in held:
            lease.release()


async def test_acquire_waits_for_memory_first_come_first_served() -> None:
    order: list[str] = []
    async with open_pool(max_bytes=4 * PAGE) as pool:
        big = pool.acquire_nowait(4 * PAGE)

        async def want(name: str, nbytes: int) -> None:
            lease = await pool.acquire(nbytes)
            order.append(name)
            lease.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(want, "large", 3 * PAGE)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(want, "small", 2 * PAGE)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.statistics().tasks_waiting == 2
            # A later small request must not jump the queue either.
            with pytest.raises(trio.WouldBlock):
                pool.acquire_nowait(PAGE)
            big.release()
        assert order == ["large", "small"]
        assert pool.statistics().free_bytes == 4 * PAGE


async def test_fragmented_pool_waits_rather_than_refuses() -> None:
    async with open_pool(max_bytes=4 * PAGE) as pool:
        leases = [pool.acquire_nowait(PAGE) for _ in range(4)]
        leases[0].release()
        leases[2].release()
        assert pool.statistics().free_bytes == 2 * PAGE
        got: list[trio_zc.WritableLease] = []

        async def want() -> None:
            got.append(await pool.acquire(2 * PAGE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(want)
            await trio.testing.wait_all_tasks_blocked()
            assert not got
            leases[1].release()
        assert got[0].nbytes == 2 * PAGE
        got[0].release()
        leases[3].release()
        assert pool.statistics().largest_free_block == 4 * PAGE


async def test_cancelled_acquire_leaks_nothing() -> None:
    async with open_pool(max_bytes=2 * PAGE) as pool:
        held = pool.acquire_nowait(2 * PAGE)
        with trio.move_on_after(0.01) as scope:
            await pool.acquire(PAGE)
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert stats.tasks_waiting == 0 and stats.writable_leases == 1
        held.release()
        assert pool.statistics().free_bytes == 2 * PAGE


async def test_cancelled_head_waiter_lets_the_next_one_in() -> None:
    async with open_pool(max_bytes=2 * PAGE) as pool:
        held = pool.acquire_nowait(PAGE)
        big_scope = trio.CancelScope()
        small_served = trio.Event()

        async def big() -> None:
            with big_scope:
                await pool.acquire(2 * PAGE)

        async def small() -> None:
            (await pool.acquire(PAGE)).release()
            small_served.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(big)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(small)
            await trio.testing.wait_all_tasks_blocked()
            assert not small_served.is_set()  # a page is free, but big came first
            big_scope.cancel()
        assert small_served.is_set()
        held.release()


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_cancel_racing_a_grant_leaks_nothing(cancel_first: bool) -> None:
    async with open_pool(max_bytes=PAGE) as pool:
        held = pool.acquire_nowait(PAGE)
        scope = trio.CancelScope()
        got: list[trio_zc.WritableLease] = []

        async def waiter() -> None:
            with scope:
                got.append(await pool.acquire(PAGE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            # Grant and cancel in the same scheduling step, in either order.
            if cancel_first:
                scope.cancel()
                held.release()
            else:
                held.release()
                scope.cancel()
        # Whichever won, the memory is either back or in the waiter's hands.
        for lease in got:
            lease.release()
        stats = pool.statistics()
        assert stats.free_bytes == PAGE and stats.writable_leases == 0
        assert len(got) == (0 if cancel_first else 1)


async def test_acquire_is_a_checkpoint_even_when_memory_is_free() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await pool.acquire(PAGE)
        assert pool.statistics().writable_leases == 0
        with trio.testing.assert_checkpoints():
            (await pool.acquire(PAGE)).release()


async def test_scoped_lease_is_released_in_whatever_state_it_reached() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        async with pool.lease(PAGE) as lease:
            lease.write(b"x")
        assert pool.statistics().free_bytes == MiB
        with pytest.raises(trio_zc.StaleLeaseError):
            lease.write(b"y")

        async with pool.lease(PAGE) as lease:
            sealed = lease.seal()
            complete = start_send(sealed)
        assert pool.statistics().draining_leases == 1
        with pytest.raises(trio_zc.StaleLeaseError):
            sealed.view()
        complete()
        assert pool.statistics().free_bytes == MiB

        with pytest.raises(RuntimeError, match="boom"):
            async with pool.lease(PAGE) as lease:
                lease.release()
                raise RuntimeError("boom")
        assert pool.statistics().free_bytes == MiB


async def test_scope_exit_with_a_live_view_abandons_until_the_view_dies() -> None:
    async with open_pool(max_bytes=2 * PAGE) as pool:
        keep: list[memoryview] = []
        async with pool.lease(PAGE) as lease:
            keep.append(lease.view())
        stats = pool.statistics()
        assert stats.abandoned_leases == 1 and stats.free_bytes == PAGE
        keep.clear()
        # The sweeper notices without any other pool activity.
        with trio.fail_after(5):
            while pool.statistics().abandoned_leases:
                await trio.sleep(0.01)
        assert pool.statistics().free_bytes == 2 * PAGE


async def test_waiter_is_served_once_abandoned_views_die() -> None:
    async with open_pool(max_bytes=PAGE) as pool:
        lease = pool.acquire_nowait(PAGE)
        view = lease.view()
        pool._release(slot_of(lease), "test")  # what a scope exit does
        served: list[trio_zc.WritableLease] = []

        async def want() -> None:
            served.append(await pool.acquire(PAGE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(want)
            await trio.testing.wait_all_tasks_blocked()
            assert not served
            del view
        assert pool.statistics().writable_leases == 1
        served[0].release()


async def test_released_memory_comes_back_as_zeros() -> None:
    async with open_pool(max_bytes=4 * PAGE) as pool:
        lease = await pool.acquire(4 * PAGE)
        lease.write(b"\xab" * (4 * PAGE))
        lease.seal().release()
        again = await pool.acquire(4 * PAGE)
        view = again.view()
        assert view.tobytes() == bytes(4 * PAGE)
        view.release()
        sealed = again.seal(PAGE // 2)
        assert sealed.view().tobytes() == bytes(PAGE // 2)
        sealed.release()


async def test_adopted_buffer_is_sent_in_place_and_handed_back() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        frame = np.arange(1000, dtype=np.uint16)
        sealed = pool.adopt(frame)
        assert sealed.adopted and sealed.nbytes == 2000
        assert sealed.view().tobytes() == frame.tobytes()
        complete = start_send(sealed)
        done = trio.Event()

        async def reuse() -> None:
            await sealed.wait_reusable()
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reuse)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            assert pool.statistics().adopted_leases == 1
            complete()
        assert done.is_set()
        assert pool.statistics().adopted_leases == 0
        assert pool.statistics().free_bytes == MiB  # adopted memory is not the arena's


async def test_adopted_bytearray_cannot_be_resized_while_leased() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        buf = bytearray(b"abc")
        sealed = pool.adopt(buf)
        with pytest.raises(BufferError):
            buf.extend(b"d")
        await sealed.wait_reusable()
        buf.extend(b"d")
        assert buf == b"abcd"


async def test_adopt_accepts_mmap_and_read_only_buffers() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        m = mmap.mmap(-1, PAGE)
        m[:3] = b"xyz"
        sealed = pool.adopt(m)
        assert sealed.view()[:3].tobytes() == b"xyz"
        await sealed.wait_reusable()
        m.close()
        ro = pool.adopt(b"immutable")
        assert ro.view().tobytes() == b"immutable"
        ro.release()


@pytest.mark.parametrize(
    ("buffer", "error", "match"),
    [
        (np.zeros((4, 4), dtype=np.uint8)[:, ::2], ValueError, "C-contiguous"),
        (bytearray(), ValueError, "non-empty"),
        ("text", TypeError, "needs a buffer"),
        (12, TypeError, "needs a buffer"),
    ],
)
async def test_adopt_refuses_what_cannot_work(buffer: object, error: type[Exception], match: str) -> None:
    async with open_pool(max_bytes=MiB) as pool:
        with pytest.raises(error, match=match):
            pool.adopt(buffer)
        assert pool.statistics().leases_total == 0


@pytest.mark.parametrize(
    ("nbytes", "error"),
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("4096", TypeError), (True, TypeError),
     (None, TypeError), (MiB + 1, ValueError)],
)
async def test_bad_sizes_are_refused_and_change_nothing(nbytes: object, error: type[Exception]) -> None:
    async with open_pool(max_bytes=MiB) as pool:
        before = pool.statistics()
        with pytest.raises(error):
            await pool.acquire(nbytes)  # type: ignore[arg-type]
        with pytest.raises(error):
            pool.acquire_nowait(nbytes)  # type: ignore[arg-type]
        with pytest.raises(error):
            async with pool.lease(nbytes):  # type: ignore[arg-type]
                pass
        assert pool.statistics() == before


async def test_a_lease_larger_than_the_pool_is_refused_with_the_reason() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        with pytest.raises(ValueError, match="can never be served"):
            await pool.acquire(2 * MiB)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"max_bytes": 0}, ValueError), ({"max_bytes": 100}, ValueError), ({"max_bytes": 1.0}, TypeError),
     ({"max_bytes": MiB, "drain_timeout": -1}, ValueError),
     ({"max_bytes": MiB, "drain_timeout": float("nan")}, ValueError),
     ({"max_bytes": MiB, "drain_timeout": "1"}, TypeError)],
)
async def test_bad_pool_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        async with open_pool(**kwargs):  # type: ignore[arg-type]
            pass


async def test_releasing_twice_is_refused() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = pool.acquire_nowait(PAGE)
        sealed = lease.seal()
        sealed.release()
        with pytest.raises(trio_zc.StaleLeaseError, match="released"):
            sealed.release()
        with pytest.raises(trio_zc.StaleLeaseError, match="sealed"):
            lease.release()
        assert pool.statistics().free_bytes == MiB


async def test_foreign_leases_are_refused() -> None:
    async with open_pool(max_bytes=MiB) as a, open_pool(max_bytes=MiB) as b:
        lease = a.acquire_nowait(PAGE)
        with pytest.raises(trio_zc.ForeignLeaseError):
            b.release(lease)
        assert a.statistics().writable_leases == 1
        with pytest.raises(TypeError):
            b.release(b"not a lease")  # type: ignore[arg-type]
        a.release(lease)
        assert a.statistics().free_bytes == MiB


async def test_pool_after_its_block_ended() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        pass
    assert pool.statistics().closed
    with pytest.raises(trio.ClosedResourceError):
        await pool.acquire(PAGE)
    with pytest.raises(trio.ClosedResourceError):
        pool.acquire_nowait(PAGE)
    with pytest.raises(trio.ClosedResourceError):
        pool.adopt(b"x")
    with pytest.raises(trio.ClosedResourceError):
        async with pool.lease(PAGE):
            pass


async def test_waiters_are_woken_with_closed_when_the_pool_closes() -> None:
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        with pytest.warns(trio_zc.LeaseLeakWarning):
            async with open_pool(max_bytes=PAGE) as pool:
                pool.acquire_nowait(PAGE)

                async def want() -> None:
                    with pytest.raises(trio.ClosedResourceError) as info:
                        await pool.acquire(PAGE)
                    errors.append(info.value)

                nursery.start_soon(want)
                await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1
    assert pool.statistics().tasks_waiting == 0


async def test_close_waits_for_sends_in_flight() -> None:
    completions = []
    async with trio.open_nursery() as nursery:
        async with open_pool(max_bytes=MiB) as pool:
            async with pool.lease(PAGE) as lease:
                sealed = lease.seal()
                completions.append(start_send(sealed))

            async def kernel_finishes_later() -> None:
                await trio.sleep(0.05)
                completions[0]()

            nursery.start_soon(kernel_finishes_later)
        # The block ended only after the completion arrived.
        stats = pool.statistics()
        assert stats.sends_in_flight == 0 and stats.quarantined_leases == 0


async def test_close_drains_even_when_cancelled() -> None:
    completions = []
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            async with open_pool(max_bytes=MiB) as pool:
                sealed = (await pool.acquire(PAGE)).seal()
                completions.append(start_send(sealed))
                sealed.release()

                async def finish() -> None:
                    await trio.sleep(0.05)
                    completions[0]()

                nursery.start_soon(finish)
                scope.cancel()
                await trio.sleep_forever()
    assert pool.statistics().sends_in_flight == 0
    assert pool.statistics().quarantined_leases == 0


async def test_completion_that_never_comes_is_quarantined(autojump_clock: trio.testing.MockClock) -> None:
    adopted_buf = bytearray(b"frame")
    waited: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        with pytest.warns(trio_zc.QuarantineWarning, match="quarantined"):
            async with open_pool(max_bytes=MiB, drain_timeout=3) as pool:
                sealed = (await pool.acquire(PAGE)).seal()
                start_send(sealed)
                sealed.release()
                adopted = pool.adopt(adopted_buf)
                start_send(adopted)

                async def wait() -> None:
                    try:
                        await adopted.wait_reusable()
                    except trio_zc.LeaseQuarantinedError as exc:
                        waited.append(exc)

                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                t0 = trio.current_time()
    assert 3 <= trio.current_time() - t0 < 4
    stats = pool.statistics()
    assert stats.quarantined_leases == 2 and stats.quarantined_bytes == PAGE
    assert len(waited) == 1
    # The adopted buffer stays exported: it cannot be resized under the kernel.
    with pytest.raises(BufferError):
        adopted_buf.extend(b"!")


async def test_leases_still_held_at_close_are_reported_and_made_stale() -> None:
    with pytest.warns(trio_zc.LeaseLeakWarning, match=r"still held 2 lease\(s\)") as record:
        async with open_pool(max_bytes=MiB) as pool:
            writable = await pool.acquire(PAGE)
            sealed = (await pool.acquire(PAGE)).seal()
    assert "lease #" in str(record[0].message)
    assert pool.statistics().leaked_at_close == 2
    with pytest.raises(trio_zc.StaleLeaseError, match="pool closed"):
        writable.view()
    with pytest.raises(trio_zc.StaleLeaseError, match="pool closed"):
        sealed.view()


async def test_clean_close_warns_about_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with open_pool(max_bytes=MiB) as pool:
            async with pool.lease(PAGE) as lease:
                lease.seal()
    assert pool.statistics().leaked_at_close == 0


async def test_statistics_is_a_frozen_snapshot() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        stats = pool.statistics()
        with pytest.raises(AttributeError):
            stats.free_bytes = 0  # type: ignore[misc]
        pool.acquire_nowait(PAGE).release()
        assert stats.leases_total == 0 and pool.statistics().leases_total == 1
