"""Hostile images and savers against ``trio_zc.images``.

- ``pixels()`` of an image whose size lies (an ``Image`` subclass, or one
  another thread resizes meanwhile): Pillow's paste raises while the view
  of the lease and the image over it are alive. At b591049 the clean-up's
  ``lease.release()`` then raised :class:`~trio_zc.LiveViewsError` over
  Pillow's error, and the lease stayed held by nobody until the pool
  closed (with a :class:`~trio_zc.LeaseLeakWarning`). Now Pillow's error
  comes out, and the lease returns once the views are gone.
- Pinned: a saver that keeps the file object ``encode()`` gave it, and
  writes to it after ``encode()`` returned, cannot change the sealed image.
"""

from __future__ import annotations

import gc
import io
from typing import IO, Any

import pytest
import trio
from PIL import Image

import trio_zc
from trio_zc import images

from ..streams import KERNELS, kernel, receive_exactly, stream_pair


class WiderThanItIs(Image.Image):
    @property  # type: ignore[override]
    def size(self) -> tuple[int, int]:
        width, height = self._size
        return width + 1, height


async def test_pixels_of_an_image_whose_size_lies_raises_pillows_error_and_leaks_nothing() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        image = Image.new("L", (33, 7), 9)
        image.__class__ = WiderThanItIs
        with pytest.raises(ValueError, match="images do not match"):
            await images.pixels(pool, image)
        gc.collect()  # the exception (and the frames holding the view) are gone
        with trio.fail_after(5):
            while pool.statistics().free_bytes != pool.max_bytes:
                await trio.sleep(0.01)
        stats = pool.statistics()
        assert stats.writable_leases == 0 and stats.abandoned_leases == 0


@pytest.mark.parametrize("name", KERNELS)
async def test_a_saver_that_keeps_the_file_cannot_change_the_sealed_image(name: str) -> None:
    kept: list[IO[bytes]] = []

    def save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
        kept.append(fp)
        fp.write(b"the image, " * 1000)

    Image.register_save("KEEPSFILE", save)
    try:
        async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel(name)) as pool:
            stream, peer = await stream_pair(pool)
            sealed = await images.encode(pool, Image.new("L", (8, 8)), "KEEPSFILE")
            promised = bytes(sealed.view())
            assert promised == b"the image, " * 1000
            fp: Any = kept[0]
            with pytest.raises(ValueError):
                fp.write(b"X" * 100)
            with pytest.raises(ValueError):
                fp.seek(0)
            with pytest.raises((ValueError, io.UnsupportedOperation)):
                fp.truncate(0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_lease, sealed)
                assert await receive_exactly(peer, len(promised)) == promised
            sealed.release()
            await stream.aclose()
            await peer.aclose()
    finally:
        Image.SAVE.pop("KEEPSFILE", None)
