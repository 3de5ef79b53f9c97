"""A send that outlives its pool's block never sends another pool's memory.

Structured concurrency allows a stream's sending task to live in a nursery
outside the pool's block: the block ends (its drain deadline passes while
the peer reads nothing), the pool closes, and the send is still waiting.
At b591049 the sendfile kernel then went on calling ``sendfile()`` with
the number of the pool's memfd, which closing the pool had freed: the next
pool's memfd took that number, and the stalled peer received the new
pool's images in place of the rest of the old one. Now that send stops
with :class:`trio.ClosedResourceError` (the other kernels reset the
connection, or finish from memory the pool keeps mapped).

Every kernel, real ones over loopback: the peer must receive a prefix of
the sealed image and nothing else, and nothing may hang.
"""

from __future__ import annotations

import warnings

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..streams import ALWAYS_ZC, KERNELS, kernel, pattern, stop_reading, stream_pair

SIZE = 4 << 20


@pytest.mark.parametrize("name", KERNELS)
async def test_a_send_outliving_its_pool_never_sends_the_next_pools_memory(name: str) -> None:
    image = pattern(SIZE, 1)
    outcome: list[str] = []
    got = bytearray()
    with trio.fail_after(20), warnings.catch_warnings():
        # The old pool quarantines the stalled send's memory: expected here.
        warnings.simplefilter("ignore", trio_zc.QuarantineWarning)
        async with trio.open_nursery() as outer:
            async with trio_zc.open_pool(
                max_bytes=SIZE, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=0.2
            ) as pool:
                stream, peer = await stream_pair(pool)
                if isinstance(peer, trio_zc.testing.MockPeer):
                    peer.stop_reading()
                else:
                    stop_reading(peer)
                lease = await pool.acquire(SIZE)
                lease.write(image)
                sealed = lease.seal()

                async def send() -> None:
                    try:
                        await stream.send_lease(sealed)
                        outcome.append("sent")
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        outcome.append(type(exc).__name__)

                outer.start_soon(send)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                sealed.release()
            # The pool's block is over, with the send still waiting. The next
            # pool (the one that reuses the freed descriptor number) holds
            # other bytes everywhere.
            async with trio_zc.open_pool(max_bytes=SIZE, kernel="copy") as other:
                secret = await other.acquire(SIZE)
                secret.write(b"S" * SIZE)
                secret_sealed = secret.seal()
                if isinstance(peer, trio_zc.testing.MockPeer):
                    peer.resume_reading()

                async def close_when_the_send_ends() -> None:
                    while not outcome:
                        await trio.sleep(0.01)
                    await stream.aclose()

                outer.start_soon(close_when_the_send_ends)
                try:
                    while True:
                        chunk = await peer.receive_some(1 << 20)
                        if not chunk:
                            break
                        got += chunk
                except trio.BrokenResourceError:
                    pass  # a reset ends it too
                secret_sealed.release()
            await peer.aclose()
    assert outcome and outcome[0] in ("sent", "ClosedResourceError", "BrokenResourceError"), outcome
    assert bytes(got) == image[: len(got)], f"{len(got)} bytes received, {got.count(b'S' * 64)} runs of the other pool's bytes"
    if outcome[0] == "sent":
        assert len(got) == SIZE
