"""Copying the objects the library hands out never makes a second owner of anything.

At b591049 ``copy.copy(pool)`` made a second pool object over the same arena,
allocator and leases, with a ``closed`` flag of its own: after the pool's
block ended the copy still handed out leases, and the first ``view()`` of
one zeroed memory that was no longer mapped (a segmentation fault, or, once
another pool's arena is mapped there, zeros written into that pool's sealed
images). ``copy.copy(stream)`` shared the connection but not the check that
refuses two sends at once, so two tasks' images interleaved on the wire;
``copy.copy(MockKernel())`` made two pools share one kernel's connections
(the hole of issue 17 that ``Kernel.claim`` closed, reopened). Pools,
streams and kernels now refuse to be copied or pickled, and so does the
mock's peer (whose shallow copy skipped its own send and receive checks).

Lease handles may be copied: a copy is the same lease (the record it points
to decides), which the second half of this file pins. They cannot be deep
copied, pickled or weakly referenced.
"""

from __future__ import annotations

import copy
import pickle
import weakref
from collections.abc import Callable

import pytest
import trio

import trio_zc
from trio_zc.testing import MockKernel

from ..streams import KERNELS, kernel, receive_exactly, stream_pair

COPIERS: dict[str, Callable[[object], object]] = {
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "pickle": pickle.dumps,
}


@pytest.mark.parametrize("how", sorted(COPIERS))
@pytest.mark.parametrize("name", KERNELS)
async def test_pools_and_streams_refuse_to_be_copied(name: str, how: str) -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel(name)) as pool:
        stream, peer = await stream_pair(pool)
        before = pool.statistics()
        with pytest.raises(TypeError, match="BufferPool cannot be copied"):
            COPIERS[how](pool)
        with pytest.raises(TypeError, match="ZeroCopyStream cannot be copied"):
            COPIERS[how](stream)
        with pytest.raises(TypeError, match="cannot be copied"):
            COPIERS[how](pool._kernel)
        assert pool.statistics() == before
        await stream.aclose()
        await peer.aclose()


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_a_mock_kernel_refuses_to_be_copied(how: str) -> None:
    with pytest.raises(TypeError, match="MockKernel cannot be copied"):
        COPIERS[how](MockKernel())


@pytest.mark.parametrize("how", sorted(COPIERS))
async def test_a_mock_peer_refuses_to_be_copied(how: str) -> None:
    # A shallow copy shared the connection without the checks that refuse
    # two sends at once, as a copied stream did.
    kernel = MockKernel()
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel) as pool:
        stream, peer = kernel.open_stream(pool)
        with pytest.raises(TypeError, match="MockPeer cannot be copied"):
            COPIERS[how](peer)
        await stream.aclose()
        await peer.aclose()


async def test_a_copy_of_a_pool_never_outlives_its_block() -> None:
    # What the copy did at b591049, through its own methods only.
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        try:
            twin: trio_zc.BufferPool | None = copy.copy(pool)
        except TypeError:
            twin = None
    if twin is not None:
        # (At b591049 the next line leased memory of a closed pool, and a
        # view of it would have zeroed unmapped memory: a crash.)
        with pytest.raises(trio.ClosedResourceError):
            twin.acquire_nowait(4096)
    assert twin is None, "copy.copy(pool) made a second pool over the same memory"


@pytest.mark.parametrize("name", KERNELS)
async def test_a_shallow_copy_of_a_lease_handle_is_the_same_lease(name: str) -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel(name)) as pool:
        stream, peer = await stream_pair(pool)
        lease = await pool.acquire(8192)
        twin = copy.copy(lease)
        twin.write(b"t" * 8192)
        sealed = lease.seal()
        # Sealing through one handle makes both stale.
        with pytest.raises(trio_zc.StaleLeaseError):
            twin.write(b"x")
        with pytest.raises(trio_zc.StaleLeaseError):
            twin.seal()
        sealed_twin = copy.copy(sealed)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed_twin)
            assert await receive_exactly(peer, 8192) == b"t" * 8192
        sealed.release()
        with pytest.raises(trio_zc.StaleLeaseError):
            sealed_twin.release()
        with pytest.raises(trio_zc.StaleLeaseError):
            await stream.send_lease(sealed_twin)
        for handle in (lease, sealed):
            with pytest.raises(TypeError, match="cannot be deep-copied or pickled: a lease is ownership"):
                copy.deepcopy(handle)
            with pytest.raises(TypeError, match="cannot be deep-copied or pickled: a lease is ownership"):
                pickle.dumps(handle)
            with pytest.raises(TypeError):
                weakref.ref(handle)
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes
        await stream.aclose()
        await peer.aclose()
