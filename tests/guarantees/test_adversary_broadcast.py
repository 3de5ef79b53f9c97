"""One sealed lease sent to many slow peers while its owner lets go and sends are cancelled.

A pool with room for exactly one image: the owner releases the lease while
six sends of it are still waiting on stalled peers, three of those sends
are cancelled part-way, and another task asks for the memory at once and
writes a different image into it as soon as it gets it. The memory must
not come back until every send that may still read it is done: the three
whole sends deliver exactly the first image, the cancelled ones a prefix of
it, never a byte of the second. Pinned on every kernel (holds at b591049).
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..streams import ALWAYS_ZC, KERNELS, pattern, stop_reading, stream_pair

SIZE = 1 << 20
STREAMS = 6
BUFFER = 65536


async def read_to_end(peer: trio.abc.ReceiveStream, into: bytearray) -> None:
    try:
        while True:
            chunk = await peer.receive_some(65536)
            if not chunk:
                return
            into.extend(chunk)
    except trio.BrokenResourceError:
        return


@pytest.mark.parametrize("name", KERNELS)
async def test_a_lease_released_mid_broadcast_comes_back_only_after_every_send(name: str) -> None:
    first, second = pattern(SIZE, 1), pattern(SIZE, 2)
    # Small socket buffers: no send of the image can be taken whole at once.
    the_kernel = trio_zc.testing.MockKernel(socket_buffer=BUFFER, receive_buffer=BUFFER) if name == "mock" else name
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=the_kernel, policy=ALWAYS_ZC) as pool:
        pairs = [await stream_pair(pool) for _ in range(STREAMS)]
        for stream, peer in pairs:
            if isinstance(peer, trio_zc.testing.MockPeer):
                peer.stop_reading()
            else:
                stop_reading(peer, BUFFER)
                stream._channel.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)  # type: ignore[attr-defined]
        lease = await pool.acquire(SIZE)
        lease.write(first)
        sealed = lease.seal()
        received = [bytearray() for _ in pairs]
        reused: list[trio_zc.SealedLease] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                scopes = []
                for stream, _ in pairs:
                    scope = trio.CancelScope()
                    scopes.append(scope)

                    async def send(stream: trio_zc.ZeroCopyStream = stream, scope: trio.CancelScope = scope) -> None:
                        with scope:
                            await stream.send_lease(sealed)
                        await stream.aclose()

                    nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                sealed.release()  # the owner lets go while every send waits

                async def next_image() -> None:
                    again = await pool.acquire(SIZE)  # only the first image's memory can serve it
                    again.write(second)
                    reused.append(again.seal())

                nursery.start_soon(next_image)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert not reused, "the memory came back while sends of it were waiting"
                for scope in scopes[::2]:
                    scope.cancel()
                for (_, peer), into in zip(pairs, received):
                    if isinstance(peer, trio_zc.testing.MockPeer):
                        peer.resume_reading()
                    nursery.start_soon(read_to_end, peer, into)
        for i, got in enumerate(received):
            assert bytes(got) == first[: len(got)], f"stream {i} got bytes of the next image"
            if i % 2:
                assert len(got) == SIZE, f"stream {i} was not cancelled, yet got {len(got)} bytes"
        assert reused and bytes(reused[0].view()) == second
        reused[0].release()
        for _, peer in pairs:
            await peer.aclose()
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes and stats.quarantined_bytes == 0, stats
