"""One ``pool.lease()`` scope entered by two tasks at once.

``LeaseScope`` refused a second ``async with`` only once the first had its
lease, and ``__aenter__`` awaits before that (always with the default
``schedule=True``, and while the pool is full). At b591049 two tasks
sharing one scope object both entered it: each got a lease, the scope
remembered only the second, and the first was never released -- held by
nobody until the pool closed (with a ``LeaseLeakWarning``). Now the second
entry raises :class:`RuntimeError` at once; a scope whose entry was
cancelled can still be entered.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc.testing import MockKernel


@pytest.mark.parametrize("full", [False, True], ids=["memory-free", "pool-full"])
@pytest.mark.parametrize("name", ["copy", "mock"])
async def test_a_scope_shared_by_two_tasks_never_leaks_a_lease(name: str, full: bool) -> None:
    async with trio_zc.open_pool(max_bytes=4 * 4096, kernel=MockKernel() if name == "mock" else name) as pool:
        blocker = pool.acquire_nowait(4 * 4096) if full else None
        scope = pool.lease(4096)
        outcomes: list[str] = []

        async def use(i: int) -> None:
            try:
                async with scope as lease:
                    lease.write(bytes([i]) * 16)
                    await trio.sleep(0.01)
                outcomes.append("used")
            except RuntimeError as exc:
                assert "already entered" in str(exc)
                outcomes.append("refused")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(use, 1)
            nursery.start_soon(use, 2)
            await trio.testing.wait_all_tasks_blocked()
            if blocker is not None:
                blocker.release()
        assert sorted(outcomes) == ["refused", "used"]
        stats = pool.statistics()
        assert stats.writable_leases == 0 and stats.free_bytes == stats.max_bytes, stats


async def test_a_scope_whose_entry_was_cancelled_can_be_entered_again() -> None:
    async with trio_zc.open_pool(max_bytes=4096, kernel="copy") as pool:
        blocker = pool.acquire_nowait(4096)
        scope = pool.lease(4096)
        with trio.move_on_after(0.05):
            async with scope:
                pass  # pragma: no cover - the pool is full
        blocker.release()
        async with scope as lease:
            lease.write(b"again")
        assert pool.statistics().free_bytes == 4096
