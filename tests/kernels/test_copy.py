"""The copy kernel on the real Linux kernel (loopback TCP): plain sends, with the memory free
again as soon as each call returns.

It is every other kernel's fallback (``auto`` on loopback, small sends, sockets that are not
TCP), so what it promises is checked here on its own: nothing stays in flight, the pool has its
memory back at once, and what the peer receives is what was sealed even when the memory is
leased and rewritten the moment ``send_lease`` returns.
"""

from __future__ import annotations

import os

import trio
import trio.testing

from trio_zc import open_pool

from ..streams import receive_exactly, stream_pair

MiB = 1 << 20


async def test_a_copied_send_holds_no_memory_once_it_returns() -> None:
    async with open_pool(max_bytes=4 * MiB, kernel="copy") as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            data = os.urandom(MiB)
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def receive() -> None:
                    got.append(await receive_exactly(b, MiB))

                nursery.start_soon(receive)
                async with pool.lease(MiB) as lease:
                    lease.write(data)
                    sealed = lease.seal()
                    await a.send_lease(sealed)
                    # Nothing in flight: the kernel already has its own copy.
                    assert sealed.sends_in_flight == 0
                    assert pool.statistics().sends_in_flight == 0
                    sealed.release()
                    assert pool.statistics().free_bytes == 4 * MiB
            assert got == [data]
            sent = a.statistics().sent
            assert sent.zerocopy_calls == 0 and sent.bytes_copied == MiB


async def test_memory_rewritten_right_after_a_send_never_changes_what_was_sent() -> None:
    # The whole pool is one image: each new lease gets the memory the last send used.
    size, rounds = 256 * 1024, 20
    async with open_pool(max_bytes=size, kernel="copy") as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            images = [bytes([i]) * size for i in range(rounds)]
            received: list[bytes] = []

            async def receive() -> None:
                for _ in range(rounds):
                    received.append(await receive_exactly(b, size))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for image in images:
                    async with pool.lease(size) as lease:
                        lease.write(image)
                        sealed = lease.seal()
                        await a.send_lease(sealed)
                    # The block released the lease: the next one gets this memory at once.
            assert received == images


async def test_a_send_barrier_holds_back_every_copy_until_it_is_set() -> None:
    """The base channel's barrier (set by a cancelled io_uring send still in Linux's hands).

    Behind it, a copy of either kind waits: the per-image ``copy_now`` takes
    nothing, so ``send_lease`` goes on to the waiting path, which sends once
    the barrier is set and not a byte before.
    """
    async with open_pool(max_bytes=4 * MiB, kernel="copy") as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            channel = a._channel  # type: ignore[attr-defined]
            barrier = trio.Event()
            channel.send_barrier = barrier
            data = os.urandom(4096)
            assert channel.copy_now(memoryview(data)) == 0  # nothing taken at once
            sent = trio.Event()

            async def send() -> None:
                async with pool.lease(len(data)) as lease:
                    lease.write(data)
                    await a.send_lease(lease.seal())
                sent.set()

            with trio.fail_after(30):  # generous: a copy that ignored the barrier would spin here
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    await trio.testing.wait_all_tasks_blocked()
                    assert not sent.is_set()
                    with trio.move_on_after(0.2):
                        assert await b.receive_some(1) == b"unreachable"  # nothing may arrive yet
                    barrier.set()
                    assert await receive_exactly(b, len(data)) == data
            assert sent.is_set() and channel.send_barrier is None
