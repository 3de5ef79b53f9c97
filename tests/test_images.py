"""trio_zc.images: encoded and raw images in and out of leases."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import trio_zc
from trio_zc import images, open_pool

MiB = 1 << 20


def photo(width: int = 320, height: int = 240, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 256)], axis=-1).astype(np.uint8)
    noisy = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB").convert(mode)


def reference(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {"quality": 80}), ("PNG", {}), ("WEBP", {"quality": 70}),
                                              ("PNG", {"optimize": True})])
async def test_encode_gives_exactly_the_encoded_bytes(fmt: str, options: dict[str, object]) -> None:
    image = photo()
    async with open_pool(max_bytes=8 * MiB) as pool:
        sealed = await images.encode(pool, image, fmt, **options)
        assert bytes(sealed.view()) == reference(image, fmt, **options)
        assert Image.open(io.BytesIO(bytes(sealed.view()))).size == image.size
        sealed.release()
        assert pool.statistics().free_bytes == 8 * MiB


async def test_an_image_that_outgrows_its_first_lease_is_moved_without_the_caller_noticing() -> None:
    image = photo(640, 480)
    expected = reference(image, "PNG")
    async with open_pool(max_bytes=8 * MiB) as pool:
        sealed = await images.encode(pool, image, "PNG", guess=1000)
        assert len(expected) > 1000 and bytes(sealed.view()) == expected
        assert sealed.nbytes == len(expected)
        stats = pool.statistics()
        assert stats.sealed_leases == 1 and stats.writable_leases == 0
        sealed.release()
        assert pool.statistics().free_bytes == 8 * MiB


async def test_encode_refuses_what_cannot_work_and_leaks_nothing() -> None:
    async with open_pool(max_bytes=64 * 1024) as pool:
        with pytest.raises(ValueError, match="cannot write 'NOPE'"):
            await images.encode(pool, photo(), "NOPE")
        with pytest.raises(ValueError, match="cannot write this RGBA image as JPEG"):
            await images.encode(pool, photo(mode="RGBA"), "JPEG")
        with pytest.raises(ValueError, match="more than the pool can ever hold"):
            await images.encode(pool, photo(1024, 1024), "PNG")
        with pytest.raises(TypeError):
            await images.encode(pool, b"not an image", "PNG")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="guess"):
            await images.encode(pool, photo(), "PNG", guess=0)
        stats = pool.statistics()
        assert stats.free_bytes == 64 * 1024 and stats.writable_leases == stats.sealed_leases == 0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "1", "F", "I;16", "LA"])
async def test_pixels_match_tobytes(mode: str) -> None:
    image = photo(97, 61, mode)
    async with open_pool(max_bytes=MiB) as pool:
        sealed = await images.pixels(pool, image)
        assert bytes(sealed.view()) == image.tobytes()
        sealed.release()


async def test_pixels_refuses_images_the_pool_cannot_hold() -> None:
    async with open_pool(max_bytes=64 * 1024) as pool:
        with pytest.raises(ValueError, match="more than the pool can ever hold"):
            await images.pixels(pool, photo(512, 512))
        with pytest.raises(ValueError, match="empty"):
            await images.pixels(pool, Image.new("RGB", (0, 5)))
        assert pool.statistics().free_bytes == 64 * 1024


async def test_numpy_view_of_a_lease_is_written_without_a_copy() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(480 * 640 * 3)
        frame = lease.ndarray((480, 640, 3))
        frame[:, :, 0] = 255  # writes land in the lease itself
        del frame
        sealed = lease.seal()
        assert np.frombuffer(sealed.view(), np.uint8).reshape(480, 640, 3)[5, 7].tolist() == [255, 0, 0]
        sealed.release()
    assert isinstance(sealed, trio_zc.SealedLease)
