"""Pool memory is reachable for writing only through a writable lease.

Two ways around that were found from outside (issue 17):

- ``pool.adopt(sealed.view())`` made a second lease over pool memory. Once
  the first was released and its memory leased again, sending the adopted
  one put the next image's bytes on the wire. ``adopt()`` now refuses any
  buffer that overlaps any pool's memory in the process, whatever the view
  (sealed, writable, a slice, a NumPy array over it, another pool's).
- ``sealed.view().obj`` was the arena's own writable ``mmap``: writing
  through it changed another sealed lease while it was in flight. Sealed
  views now come from a read-only mapping of the pool's memfd, so the
  object behind them cannot write, and native code that writes through a
  pointer into one (``Image.frombuffer(...).im.paste``) faults instead of
  changing an image (checked in a child process).

Each attack runs on every kernel against a peer that is not reading yet, so
that the kernel (or the send still waiting) reads the memory after the
attack; the peer's bytes must be the sealed ones.
"""

from __future__ import annotations

import ctypes
import mmap
import signal
import subprocess
import sys
import textwrap

import numpy
import pytest
import trio

import trio_zc

from ..streams import KERNELS, kernel, pattern, receive_exactly, sealed_with, send_while_stalled, stream_pair

SIZE = 4 << 20


@pytest.mark.parametrize("name", KERNELS)
async def test_adopting_a_sealed_view_cannot_send_the_next_images_bytes(name: str) -> None:
    original, later = pattern(SIZE, 1), pattern(SIZE, 2)
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=kernel(name)) as pool:
        stream, peer = await stream_pair(pool)
        sealed = await sealed_with(pool, original)
        try:
            adopted: trio_zc.SealedLease | None = pool.adopt(sealed.view())
        except ValueError as exc:
            assert "pool memory" in str(exc)
            adopted = None
        # What the attack goes on to do: give the memory back, lease it again
        # with other bytes, and send the lease that kept pointing at it.
        sealed.release()
        again = await sealed_with(pool, later)
        to_send = adopted if adopted is not None else again
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, to_send)
            got = await receive_exactly(peer, SIZE)
        assert adopted is None, "adopt() took pool memory"
        assert got == later
        again.release()
        await stream.aclose()
        await peer.aclose()


async def test_adopt_refuses_every_kind_of_view_of_pool_memory() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool, trio_zc.open_pool(
        max_bytes=1 << 20, kernel="copy"
    ) as other:
        writable = pool.acquire_nowait(8192)
        sealed = await sealed_with(pool, b"s" * 8192)
        foreign = await sealed_with(other, b"f" * 8192)
        before = pool.statistics()
        views = {
            "sealed view": lambda: sealed.view(),
            "slice of a sealed view": lambda: sealed.view()[100:200],
            "the mapping behind a sealed view": lambda: sealed.view().obj,  # type: ignore[attr-defined]
            "array over a sealed view": lambda: numpy.frombuffer(sealed.view(), dtype=numpy.uint8),
            "writable view": lambda: writable.view(),
            "array over a writable lease": lambda: writable.ndarray((8192,)),
            "another pool's lease": lambda: foreign.view(),
        }
        for make in views.values():
            buffer = make()
            with pytest.raises(ValueError, match="pool memory"):
                pool.adopt(buffer)
            del buffer
        # Nothing changed, and the pool still adopts what is the application's.
        assert pool.statistics() == before
        for own in (b"bytes", bytearray(b"bytearray"), numpy.arange(10), mmap.mmap(-1, 4096)):
            pool.adopt(own).release()
        writable.release()
        sealed.release()
        foreign.release()


async def test_a_sealed_views_object_cannot_write() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        sealed = await sealed_with(pool, b"T" * 4096)
        obj = sealed.view().obj  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            obj[0:4] = b"XXXX"
        with pytest.raises(TypeError):
            ctypes.c_char.from_buffer(obj)
        assert memoryview(obj).readonly
        assert bytes(sealed.view()[:4]) == b"TTTT"
        del obj
        # An adopted buffer's sealed view is read-only too (the buffer itself
        # is the application's, documented as not to be written until
        # wait_reusable() returns).
        adopted = pool.adopt(bytearray(b"A" * 100))
        assert adopted.view().readonly
        with pytest.raises(TypeError):
            adopted.view()[0] = 1  # type: ignore[index]
        adopted.release()
        sealed.release()


@pytest.mark.parametrize("name", KERNELS)
async def test_writing_through_a_sealed_views_object_cannot_change_a_send_in_flight(name: str) -> None:
    data = pattern(SIZE, 3)

    async def attack(pool: trio_zc.BufferPool, in_flight: trio_zc.SealedLease) -> None:
        other = await sealed_with(pool, b"o" * 4096)
        arena = other.view().obj  # type: ignore[attr-defined]
        start = arena.find(data[:4096])
        assert start >= 0
        try:
            arena[start : start + SIZE] = b"X" * SIZE
        except TypeError:
            pass  # read-only: the attack fails here
        finally:
            del arena
            other.release()

    got = await send_while_stalled(name, data, attack)
    assert got == data


async def test_a_writable_views_object_counts_as_a_view() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        lease = pool.acquire_nowait(4096)
        exporter = lease.view().obj
        with pytest.raises(trio_zc.LiveViewsError):
            lease.seal()
        del exporter
        lease.seal().release()


def test_native_code_writing_into_a_sealed_view_faults_instead_of_changing_it() -> None:
    # Pillow's core writes straight into a frombuffer() image's memory, even
    # for a read-only buffer: in the read-only mapping that is a fault.
    child = textwrap.dedent(
        """
        import sys, trio, trio_zc
        from PIL import Image

        async def main():
            async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
                lease = pool.acquire_nowait(4096)
                lease.write(b"T" * 4096)
                sealed = lease.seal()
                image = Image.frombuffer("L", (64, 64), sealed.view(), "raw", "L", 0, 1)
                image.im.paste(Image.new("L", (64, 64), 88).im, (0, 0, 64, 64))
                print(bytes(sealed.view()[:4]).decode(), flush=True)
                sealed.release()

        trio.run(main)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert "XXXX" not in proc.stdout, "native code changed a sealed lease"
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr)
