"""Worker threads that are still writing when the pool's block ends.

Pinned defences (they hold at b591049 too):

- A ``write()`` stopped just before its copy while the pool's block ends:
  the lease is abandoned, the old arena stays mapped (never reused), the
  late copy lands there, and a new pool's images -- on every kernel, the
  receiver comparing bytes -- never see it.
- Threads hammering ``write()``, ``view()`` and ``ndarray()`` of leases of a
  pool whose block ends meanwhile get :class:`~trio_zc.StaleLeaseError` and
  nothing else: no crash on unmapped memory, and the next pool is intact.
"""

from __future__ import annotations

import sys
import threading
import warnings

import pytest
import trio

import trio_zc

from ..streams import ALWAYS_ZC, KERNELS, kernel, pattern, receive_exactly, stream_pair
from .test_threads import PAUSES, PausedWrite, wait_for

SIZE = 1 << 20


@pytest.mark.parametrize("how", PAUSES)
@pytest.mark.parametrize("name", KERNELS)
async def test_a_write_still_running_when_the_pool_closes_never_reaches_the_next_pool(
    name: str, how: str
) -> None:
    image = pattern(SIZE, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", trio_zc.LeaseLeakWarning)  # the writer's lease, expected
        async with trio.open_nursery() as outer:
            async with trio_zc.open_pool(max_bytes=SIZE, kernel="copy") as old:
                lease = await old.acquire(SIZE)
                paused = PausedWrite(lease, b"T" * SIZE, how)
                outer.start_soon(trio.to_thread.run_sync, paused.run)
                await wait_for(paused.at_copy)
            assert old.statistics().abandoned_leases == 1
            async with trio_zc.open_pool(max_bytes=SIZE, kernel=kernel(name), policy=ALWAYS_ZC) as new:
                stream, peer = await stream_pair(new)
                fresh = await new.acquire(SIZE)
                fresh.write(image)
                sealed = fresh.seal()
                paused.go_on.set()  # the old write copies now
                with trio.fail_after(10):
                    while paused.outcome == "not run":
                        await trio.sleep(0.01)
                assert paused.outcome == "wrote"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.send_lease, sealed)
                    assert await receive_exactly(peer, SIZE) == image
                assert bytes(sealed.view()) == image
                sealed.release()
                await stream.aclose()
                await peer.aclose()
        # A later write through the old handle refuses.
        with pytest.raises(trio_zc.StaleLeaseError):
            lease.write(b"late")


def hammer(lease: trio_zc.WritableLease, seed: int, errors: list[str], stop: threading.Event) -> None:
    """Write into *lease* every way there is until it goes stale."""
    for i in range(100_000):
        if stop.is_set():
            return
        try:
            if i % 3 == 0:
                lease.write(bytes([seed]) * 4096, (i * 4096) % (60 * 1024))
            elif i % 3 == 1:
                view = lease.view()
                view[:16] = bytes([seed]) * 16
                view.release()
            else:
                array = lease.ndarray((64, 1024))
                array[0, :16] = seed
                del array
        except trio_zc.StaleLeaseError:
            return
        except BaseException as exc:  # noqa: B036 - reported
            errors.append(repr(exc))
            return


async def test_threads_writing_while_the_pool_closes_get_stale_handles_and_nothing_else() -> None:
    errors: list[str] = []
    stop = threading.Event()
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for _ in range(10):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", trio_zc.LeaseLeakWarning)  # the threads' leases
                async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
                    leases = [await pool.acquire(64 * 1024) for _ in range(4)]
                    threads = [
                        threading.Thread(target=hammer, args=(lease, i + 1, errors, stop))
                        for i, lease in enumerate(leases)
                    ]
                    for t in threads:
                        t.start()
                    await trio.sleep(0.005)
                    # The block ends here, with the threads still going.
            for t in threads:
                t.join(10)
            assert not any(t.is_alive() for t in threads)
            assert not errors, errors
    finally:
        stop.set()
        sys.setswitchinterval(old_interval)
