"""Sizes and offsets that lie: an ``int`` subclass (or an impostor) never moves a bound.

Every size and offset the library takes is checked against the lease or the
pool with ``<`` and ``+``. At b591049 those checks ran the argument's own
operators: a subclass of ``int`` whose comparisons always say "in range"
(or an object that only claims to be an int through ``__class__``) got
``write(data, offset=-4096)`` to write into the sealed lease next door
while it was on the wire, ``send_lease(sealed, offset=-4096)`` to send the
bytes of a lease still being written, and ``acquire(-5)`` to queue a request
that is never served, which every later request then waits behind. Its own
operators could also call back into the lease while ``write()`` held the
lease's lock, which hung the thread for ever (so could a class whose
``__buffer__`` does, on Python 3.12+: the source's buffer is now taken
before the lock; that test is skipped on older Pythons).

Now each such argument is taken at its value (``int.__index__``, which a
subclass cannot override, after a ``type()`` check, which an object cannot
fake), before any check and before any lock.
"""

from __future__ import annotations

import enum
import sys
import warnings
from typing import Any

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..streams import ALWAYS_ZC, KERNELS, kernel, receive_exactly, stream_pair

PAGE = 4096


class _LikeOne:
    """Comparisons as if the value were 1, whatever it is: "within bounds" to every check."""

    def __lt__(self, other: object) -> bool:
        return 1 < other  # type: ignore[operator]

    def __le__(self, other: object) -> bool:
        return 1 <= other  # type: ignore[operator]

    def __gt__(self, other: object) -> bool:
        return 1 > other  # type: ignore[operator]

    def __ge__(self, other: object) -> bool:
        return 1 >= other  # type: ignore[operator]


class Liar(_LikeOne, int):
    """An int whose comparisons lie (its arithmetic is int's, at its real value)."""


class Impostor(_LikeOne):
    """Not an int at all, but says it is one (``isinstance(x, int)`` is True)."""

    __class__ = property(lambda self: int)  # type: ignore[assignment]

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __add__(self, other: int) -> int:
        return self.value + other

    def __radd__(self, other: int) -> int:
        return other + self.value

    def __rsub__(self, other: int) -> int:
        return other - self.value


LIARS = {"subclass": lambda v: Liar(v), "impostor": lambda v: Impostor(v)}


class Flag(enum.IntEnum):
    ONE_PAGE = PAGE


@pytest.mark.parametrize("liar", sorted(LIARS))
@pytest.mark.parametrize("name", KERNELS)
async def test_write_at_a_lying_offset_never_changes_a_sealed_lease_on_the_wire(name: str, liar: str) -> None:
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        first = await pool.acquire(PAGE)
        first.write(b"S" * PAGE)
        sealed = first.seal()
        second = await pool.acquire(PAGE)  # the next page of the arena
        assert second._slot.offset == sealed._slot.offset + PAGE
        with pytest.raises((ValueError, TypeError)):
            second.write(b"Z" * 16, LIARS[liar](-PAGE))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            got = await receive_exactly(peer, PAGE)
        assert got == b"S" * PAGE
        sealed.release()
        second.release()
        await stream.aclose()
        await peer.aclose()


@pytest.mark.parametrize("liar", sorted(LIARS))
@pytest.mark.parametrize("name", KERNELS)
async def test_send_lease_at_a_lying_offset_never_sends_another_leases_bytes(name: str, liar: str) -> None:
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        unsealed = await pool.acquire(PAGE)
        unsealed.write(b"W" * PAGE)  # never sealed: must never go out
        lease = await pool.acquire(PAGE)
        lease.write(b"S" * PAGE)
        sealed = lease.seal()
        assert sealed._slot.offset == unsealed._slot.offset + PAGE
        with pytest.raises((ValueError, TypeError)):
            await stream.send_lease(sealed, LIARS[liar](-PAGE), PAGE)
        with pytest.raises((ValueError, TypeError)):
            await stream.send_lease(sealed, 0, LIARS[liar](2 * PAGE))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            got = await receive_exactly(peer, PAGE)
        assert got == b"S" * PAGE
        sealed.release()
        unsealed.release()
        await stream.aclose()
        await peer.aclose()


@pytest.mark.parametrize("name", KERNELS)
async def test_seal_with_a_lying_length_never_reaches_past_the_lease(name: str) -> None:
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        neighbour = await pool.acquire(PAGE)
        liar = await pool.acquire(PAGE)
        after = await pool.acquire(PAGE)
        after.write(b"A" * PAGE)
        after_sealed = after.seal()  # the page just past *liar*: zeroing past it would clear this
        with pytest.raises((ValueError, TypeError)):
            liar.seal(Liar(3 * PAGE))
        sealed = liar.seal()
        assert sealed.nbytes == PAGE
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, after_sealed)
            assert await receive_exactly(peer, PAGE) == b"A" * PAGE
        sealed.release()
        after_sealed.release()
        neighbour.release()
        await stream.aclose()
        await peer.aclose()


async def test_a_lying_size_is_refused_and_never_blocks_later_requests() -> None:
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel="copy") as pool:
        with trio.fail_after(5):
            for size in (Liar(-5), Liar(0), Liar(1 << 40)):
                with pytest.raises(ValueError):
                    pool.acquire_nowait(size)
                with pytest.raises(ValueError):
                    await pool.acquire(size)
                with pytest.raises(ValueError):
                    async with pool.lease(size):
                        pass  # pragma: no cover - refused on entry
            # Nothing is queued: a plain request is served at once.
            lease = pool.acquire_nowait(PAGE)
            lease.release()
        assert pool.statistics().tasks_waiting == 0


async def test_an_offset_that_calls_back_into_the_lease_cannot_hang_write() -> None:
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel="copy") as pool:
        lease = await pool.acquire(PAGE)
        calls: list[str] = []

        class CallsBack(int):
            # Its arithmetic takes a view of the lease: under write()'s lock,
            # a second lock of the same lease in the same thread.
            def __add__(self, other: Any) -> int:
                calls.append("add")
                view = lease.view()
                view.release()
                return int(self) + other

            __radd__ = __add__

            def __lt__(self, other: object) -> bool:
                calls.append("lt")
                lease.view().release()
                return int(self) < other  # type: ignore[operator]

        def write() -> int:
            return lease.write(b"x" * 16, CallsBack(8))

        with trio.fail_after(5):
            end = await trio.to_thread.run_sync(write, abandon_on_cancel=True)
        assert end == 24
        sealed = lease.seal()
        assert bytes(sealed.view()[:24]) == bytes(8) + b"x" * 16
        sealed.release()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python classes export buffers from 3.12 on (PEP 688)")
async def test_a_buffer_whose_export_calls_back_into_the_lease_cannot_hang_write() -> None:
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel="copy") as pool:
        lease = await pool.acquire(PAGE)

        class CallsBack:
            # Exporting its buffer takes a view of the lease being written.
            def __buffer__(self, flags: int) -> memoryview:
                lease.view().release()
                return memoryview(b"y" * 16)

            def __release_buffer__(self, view: memoryview) -> None:
                lease.view().release()

        with trio.fail_after(5):
            end = await trio.to_thread.run_sync(lambda: lease.write(CallsBack(), 4), abandon_on_cancel=True)
        assert end == 20
        sealed = lease.seal()
        assert bytes(sealed.view()[:20]) == bytes(4) + b"y" * 16
        sealed.release()


async def test_honest_int_subclasses_still_work() -> None:
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=trio_zc.testing.MockKernel()) as pool:
        stream, peer = await stream_pair(pool)
        lease = await pool.acquire(Flag.ONE_PAGE)
        assert lease.write(b"ab", Flag.ONE_PAGE - 2) == PAGE
        sealed = lease.seal(Flag.ONE_PAGE)
        await stream.send_lease(sealed, Flag.ONE_PAGE - 2, 2)
        assert await peer.receive_exactly(2) == b"ab"
        stream.max_in_flight = Flag.ONE_PAGE
        sealed.release()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await stream.aclose()
        await peer.aclose()
        await trio.testing.wait_all_tasks_blocked()
