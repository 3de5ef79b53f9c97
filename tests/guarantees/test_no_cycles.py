"""A lease leaves no reference cycle behind: its objects die by reference counting.

A cycle made per image is garbage that only Python's cyclic collector can
free. Enough of it triggers a collection every few hundred images, and the
oldest generation's passes scan every object the application holds: the cost
grows with the application, not with the library. (The lease record once
pointed back at its handles; the collector then cost the mock-kernel lease
cycle benchmark about 8% of its rate.) These tests run the ways a lease is
used, on every kernel, with the collector off, and check that collecting
afterwards finds nothing of the library's.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy
import pytest
import trio

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool

from ..builds import pure_only
from ..streams import KERNELS, kernel, receive_exactly, stream_pair

IMAGES = 12
SIZE = 20_000
# Zero-copy for every send (where the kernel can): the completion path is the
# one most likely to keep something alive.
POLICY = ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)


def library_garbage(garbage: list[object]) -> list[str]:
    """The names of the library's types among collected garbage."""
    return sorted(
        {type(o).__qualname__ for o in garbage if type(o).__module__.startswith("trio_zc")}
    )


class CollectorOff:
    """With the collector off, what a later collection finds unreachable."""

    def __init__(self) -> None:
        self.garbage: list[object] = []

    def __enter__(self) -> CollectorOff:
        gc.collect()
        gc.disable()
        return self

    def collect(self) -> None:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
        finally:
            gc.set_debug(0)
            self.garbage = gc.garbage[:]
            gc.garbage.clear()

    def __exit__(self, *exc_info: object) -> None:
        gc.enable()


@pytest.fixture
def collector_off() -> Iterator[CollectorOff]:
    with CollectorOff() as off:
        yield off


async def use_leases(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream) -> bytes:
    """Every way of filling and sending a lease, once or more each; the bytes sent."""
    sent = bytearray()
    for i in range(IMAGES):
        image = bytes([i]) * SIZE
        async with pool.lease(SIZE, schedule=i % 2 == 0) as lease:  # the scoped lease
            lease.write(image)
            await stream.send_lease(lease.seal())
        sent += image
    lease = await pool.acquire(SIZE)  # acquire, a view, an explicit release
    with lease.view() as view:
        view[:] = b"v" * SIZE
    sealed = lease.seal()
    await stream.send_lease(sealed)
    sealed.release()
    sent += b"v" * SIZE
    lease = await pool.acquire(SIZE)  # an array over the lease
    array = lease.ndarray(SIZE)
    array[:] = numpy.full(SIZE, 7, dtype=numpy.uint8)
    del array
    sealed = lease.seal()
    await stream.send_lease(sealed)
    sealed.release()
    sent += bytes([7]) * SIZE
    lease = await pool.acquire(SIZE)  # released unsent
    lease.release()
    buffer = bytearray(b"a" * SIZE)  # an adopted buffer, waited for
    adopted = pool.adopt(buffer)
    await stream.send_lease(adopted)
    await adopted.wait_reusable()
    sent += b"a" * SIZE
    return bytes(sent)


@pytest.mark.parametrize("kernel_name", KERNELS)
async def test_leases_leave_no_cycles(kernel_name: str, collector_off: CollectorOff) -> None:
    async with open_pool(max_bytes=4 << 20, kernel=kernel(kernel_name), policy=POLICY) as pool:
        stream, peer = await stream_pair(pool)
        async with stream, peer:
            # Once before counting: the first use makes what a stream keeps.
            warm = pool.adopt(b"warm")
            await stream.send_lease(warm)
            await warm.wait_reusable()
            assert await receive_exactly(peer, 4) == b"warm"
            del warm
            collector_off.collect()
            async with trio.open_nursery() as nursery:
                received: list[bytes] = []

                async def reader() -> None:
                    received.append(await receive_exactly(peer, (IMAGES + 3) * SIZE))

                nursery.start_soon(reader)
                sent = await use_leases(pool, stream)
            assert received == [sent]
        # Closed: every send is complete and every lease back in the pool.
        stats = pool.statistics()
        assert (stats.writable_leases, stats.sealed_leases, stats.draining_leases) == (0, 0, 0)
        assert stats.free_bytes == stats.max_bytes
        collector_off.collect()
    assert library_garbage(collector_off.garbage) == []


#: Where the test puts the handle into its record: where the record once kept
#: it (a flag now), or an attribute the release leaves alone in either build.
CYCLES = [
    pytest.param(
        "was_sealed",
        marks=pure_only(
            "the compiled _LeaseRecord keeps was_sealed as a bool and refuses a handle there"
            " ('bool object expected'); the 'idle' case makes the same cycle"
        ),
    ),
    "idle",
]


@pytest.mark.parametrize("attribute", CYCLES)
async def test_the_check_sees_the_old_cycle(attribute: str, collector_off: CollectorOff) -> None:
    """The check above finds the cycle the lease record used to make (so it can fail).

    In the compiled build too, where the record and the handle are compiled
    classes: the collector must see through them for the check to mean anything.
    """
    async with open_pool(max_bytes=1 << 20, kernel=kernel("mock")) as pool:
        lease = await pool.acquire(4096)
        sealed = lease.seal()
        # What the record once held: its handle, which holds the record.
        setattr(sealed._slot, attribute, sealed)
        sealed.release()
        del lease, sealed
        collector_off.collect()
    assert library_garbage(collector_off.garbage) == ["SealedLease", "_LeaseRecord"]
