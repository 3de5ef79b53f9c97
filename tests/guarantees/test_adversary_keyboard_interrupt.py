"""Ctrl-C in code the library calls back into, and while a worker thread writes.

Pinned defences (they hold at b591049 too), with the real ``SIGINT``
through Trio's own handler, in a Trio run of the test's own (so that the
application under test is Trio's main task):

- ``SIGINT`` inside a Pillow saver that ``images.encode()`` runs: the saver
  runs under the library's protection (its caller is protected), so the
  interrupt arrives at the application's next checkpoint; whether
  ``encode`` returned or not, no lease is left held by nobody. A saver that
  turns the protection off takes the interrupt inside ``encode``, which
  then gives its lease back.
- ``SIGINT`` while the application waits for a worker thread that writes
  into a lease: the interrupt comes once the thread is done, and the
  lease's scope gives the lease back.
"""

from __future__ import annotations

import os
import signal
import warnings
from typing import IO

import pytest
import trio
from PIL import Image

import trio_zc
from trio_zc import images

from ..streams import KERNELS, kernel, receive_exactly, stream_pair


def interrupting_saver(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    fp.write(b"a" * 100_000)
    signal.raise_signal(signal.SIGINT)
    fp.write(b"b" * 100_000)


@trio.lowlevel.disable_ki_protection
def unprotected_saver(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    interrupting_saver(im, fp, filename)


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "unprotected"])
@pytest.mark.parametrize("name", KERNELS)
def test_sigint_inside_a_saver_leaves_no_lease_held_by_nobody(name: str, protected: bool) -> None:
    Image.register_save("INTERRUPTS", interrupting_saver if protected else unprotected_saver)
    outcome: dict[str, object] = {}

    async def app() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a LeaseLeakWarning fails the test
            async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel(name)) as pool:
                stream, peer = await stream_pair(pool)
                sealed = None
                try:
                    sealed = await images.encode(pool, Image.new("L", (8, 8)), "INTERRUPTS", guess=4096)
                    await trio.sleep(0)  # the interrupt arrives here at the latest
                except KeyboardInterrupt:
                    outcome["interrupted"] = True
                if sealed is not None:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stream.send_lease, sealed)
                        outcome["sent"] = await receive_exactly(peer, 200_000) == b"a" * 100_000 + b"b" * 100_000
                    sealed.release()
                await stream.aclose()
                await peer.aclose()
                outcome["stats"] = pool.statistics()

    try:
        trio.run(app)
    finally:
        Image.SAVE.pop("INTERRUPTS", None)
    assert outcome.get("interrupted") is True, outcome
    assert outcome.get("sent", True) is True, outcome
    stats = outcome["stats"]
    assert isinstance(stats, trio_zc.PoolStatistics)
    assert stats.writable_leases == stats.sealed_leases == 0, stats
    assert stats.free_bytes == stats.max_bytes, stats


def test_sigint_while_a_worker_writes_a_lease_returns_it() -> None:
    outcome: dict[str, object] = {}

    async def app() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
                try:
                    async with pool.lease(512 * 1024) as lease:

                        def write() -> None:
                            os.kill(os.getpid(), signal.SIGINT)
                            for i in range(64):
                                lease.write(bytes([i]) * 8192, i * 8192)

                        await trio.to_thread.run_sync(write)
                        await trio.sleep(0)
                        outcome["not interrupted"] = True
                except KeyboardInterrupt:
                    outcome["interrupted"] = True
                outcome["stats"] = pool.statistics()

    trio.run(app)
    assert outcome.get("interrupted") is True, outcome
    stats = outcome["stats"]
    assert isinstance(stats, trio_zc.PoolStatistics)
    assert stats.free_bytes == stats.max_bytes and stats.abandoned_leases == 0, stats
