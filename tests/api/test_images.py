"""trio_zc.images: encoded and raw images in and out of leases."""

from __future__ import annotations

import io
import random
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from PIL import Image

import trio_zc
from trio_zc import images, open_pool
from trio_zc._images import _LeaseFile

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


# -- encode never waits holding memory (issue 17) ------------------------------------

KiB = 1 << 10


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image that compresses badly: its PNG is about as large as its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def assert_all_free(pool: trio_zc.BufferPool) -> None:
    stats = pool.statistics()
    assert stats.free_bytes == pool.max_bytes, stats
    assert stats.writable_leases == stats.sealed_leases == stats.tasks_waiting == 0, stats


async def test_an_image_that_outgrows_its_lease_in_an_idle_pool_does_not_hang() -> None:
    # The tester's case: the first lease (half the pixels) plus one of the
    # exact size are more than the pool, so waiting for the second while
    # holding the first waited for ever with the whole pool free.
    image = noise(458, 458)
    expected = reference(image, "PNG")
    async with open_pool(max_bytes=800 * KiB) as pool:
        assert 600 * KiB < len(expected) < 700 * KiB
        with trio.fail_after(30):
            sealed = await images.encode(pool, image, "PNG")
        assert bytes(sealed.view()) == expected
        sealed.release()
        assert_all_free(pool)


async def test_two_encodes_that_both_outgrow_their_leases_both_finish() -> None:
    # Each holding its first lease while waiting for the exact one: neither could go on.
    images_ = [noise(300, 300, seed) for seed in (1, 2)]
    expected = [reference(image, "PNG") for image in images_]
    results: dict[int, bytes] = {}
    async with open_pool(max_bytes=512 * KiB) as pool:

        async def one(i: int) -> None:
            sealed = await images.encode(pool, images_[i], "PNG", guess=200 * KiB)
            results[i] = bytes(sealed.view())
            await trio.sleep(0.01)  # hold it a little, so the other must wait
            sealed.release()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(one, i)
        assert results == dict(enumerate(expected))
        assert_all_free(pool)


async def test_encode_waits_for_the_exact_lease_holding_no_memory_and_cancelling_leaks_nothing() -> None:
    image = noise(200, 200)
    expected = reference(image, "PNG")  # about 117 KiB
    for cancel in (False, True):
        async with open_pool(max_bytes=256 * KiB) as pool:
            # The first lease (64 KiB) fits beside this one; the exact one does not.
            held = await pool.acquire(160 * KiB)
            got: list[trio_zc.SealedLease] = []
            async with trio.open_nursery() as nursery:

                async def run(got: list[trio_zc.SealedLease]) -> None:
                    got.append(await images.encode(pool, image, "PNG", guess=64 * KiB))

                nursery.start_soon(run, got)
                await trio.testing.wait_all_tasks_blocked()
                stats = pool.statistics()
                # Waiting: and the only lease is the test's own.
                assert stats.tasks_waiting == 1 and stats.writable_leases == 1, stats
                assert stats.free_bytes == pool.max_bytes - 160 * KiB
                if cancel:
                    nursery.cancel_scope.cancel()
                else:
                    held.release()
            if cancel:
                assert not got
                held.release()
            else:
                assert bytes(got[0].view()) == expected
                got[0].release()
            assert_all_free(pool)


async def test_encode_waits_only_for_what_the_image_needs_not_for_its_guess() -> None:
    # The guess (512 KiB) is not free; the 2 KiB JPEG is: it must not wait for the guess.
    image = photo(64, 48)
    expected = reference(image, "JPEG", quality=80)
    async with open_pool(max_bytes=MiB) as pool:
        held = await pool.acquire(700 * KiB)
        with trio.fail_after(30):
            sealed = await images.encode(pool, image, "JPEG", guess=512 * KiB, quality=80)
        assert bytes(sealed.view()) == expected
        sealed.release()
        held.release()
        assert_all_free(pool)


async def test_cancelling_encode_while_the_pool_is_full_leaks_nothing() -> None:
    image = noise(100, 100)
    async with open_pool(max_bytes=128 * KiB) as pool:
        held = await pool.acquire(128 * KiB)
        with trio.move_on_after(0.2) as scope:
            await images.encode(pool, image, "PNG")
        assert scope.cancelled_caught
        held.release()
        assert_all_free(pool)
        # Cancelled before it starts.
        with trio.CancelScope() as scope:
            scope.cancel()
            await images.encode(pool, image, "PNG")
        assert_all_free(pool)


# -- encode writes every format Pillow can save to a file object (issue 17) ----------

_TRY_MODES = ("RGB", "RGBA", "L", "LA", "1", "P", "CMYK", "I;16", "I", "F")
#: The size of the image each format is probed with and then tested with: the
#: same, since whether a mode saves can depend on it (Pillow 12 saves a 16x12
#: CMYK ICO, with no frame at all, but not a 97x61 one).
_FORMAT_TEST_SIZE = (97, 61)
#: Options that make a format's output the same from one save to the next
#: (a PDF records the time it was made, to the second).
_STABLE = {"PDF": {"creationDate": time.gmtime(0), "modDate": time.gmtime(0)}}


def _modes_pillow_saves(fmt: str) -> tuple[list[str], str]:
    """The modes of _TRY_MODES that *fmt* saves to a BytesIO, and why not for the last that failed."""
    ok, why = [], ""
    for mode in _TRY_MODES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # IM is deprecated, still writes
                photo(*_FORMAT_TEST_SIZE, mode).save(io.BytesIO(), format=fmt, **_STABLE.get(fmt, {}))
        except Exception as exc:  # noqa: BLE001 - any error: it does not save this mode
            why = f"{type(exc).__name__}: {exc}"
        else:
            ok.append(mode)
    return ok, why


#: Pillow's own deprecations (IM; saving mode I as PNG, in Pillow 12) are not
#: what these tests are about. Matched by their text as well as by module:
#: Pillow may attribute one to its caller's module (its ``stacklevel``).
_PILLOW_DEPRECATIONS = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:PIL",
    "ignore:.* is deprecated and will be removed in Pillow:DeprecationWarning",
)


def _format_cases() -> list[object]:
    Image.init()
    cases: list[object] = []
    for fmt in sorted(Image.SAVE):
        modes, why = _modes_pillow_saves(fmt)
        if not modes:
            stub = " (Pillow ships a stub: an application must register the real handler)"
            cases.append(pytest.param(fmt, None, id=fmt, marks=pytest.mark.skip(
                reason=f"Pillow cannot save {fmt} to a BytesIO in any mode here: {why}"
                + (stub if "save handler not installed" in why else ""))))
        cases += [pytest.param(fmt, mode, id=f"{fmt}-{mode}") for mode in modes]
    return cases


@_PILLOW_DEPRECATIONS
@pytest.mark.parametrize(("fmt", "mode"), _format_cases())
async def test_every_format_pillow_writes_gives_the_same_bytes_as_a_bytesio(fmt: str, mode: str) -> None:
    image = photo(*_FORMAT_TEST_SIZE, mode)
    options = _STABLE.get(fmt, {})
    expected = reference(image, fmt, **options)
    async with open_pool(max_bytes=4 * MiB) as pool:
        # A lease it fits in, and one of 100 bytes: the rest spills, and
        # seeks back (TIFF, ICO, PDF, ...) cross from spill to lease.
        for guess in (None, 100):
            sealed = await images.encode(pool, image, fmt, guess=guess, **options)
            assert bytes(sealed.view()) == expected, f"guess={guess}"
            sealed.release()
        assert_all_free(pool)


_EXTRA_CASES = [
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("TIFF", "RGB", {"compression": "tiff_adobe_deflate"}),
    ("TIFF", "RGB", {"compression": "jpeg", "quality": 80}),
    ("TIFF", "1", {"compression": "group4"}),
    ("TIFF", "L", {"compression": "packbits"}),
    ("JPEG2000", "RGB", {"irreversible": True, "quality_layers": [20]}),
    ("ICO", "RGBA", {"sizes": [(16, 16), (32, 32), (64, 64)]}),
    ("PNG", "RGB", {"optimize": True}),
    ("JPEG", "RGB", {"progressive": True, "optimize": True}),
]


@pytest.mark.parametrize(("fmt", "mode", "options"), _EXTRA_CASES, ids=lambda v: str(v))
async def test_format_options_give_the_same_bytes_as_a_bytesio(fmt: str, mode: str, options: dict[str, object]) -> None:
    image = photo(97, 61, mode)
    expected = reference(image, fmt, **options)
    async with open_pool(max_bytes=4 * MiB) as pool:
        for guess in (None, 100):
            sealed = await images.encode(pool, image, fmt, guess=guess, **options)
            assert bytes(sealed.view()) == expected, f"guess={guess}"
            sealed.release()
        assert_all_free(pool)


def _save_all_cases() -> list[object]:
    Image.init()
    cases: list[object] = []
    for fmt in sorted(Image.SAVE_ALL):
        modes, why = _modes_pillow_saves(fmt)
        if modes:
            cases.append(pytest.param(fmt, modes[0], id=fmt))
        else:
            cases.append(pytest.param(fmt, None, id=fmt, marks=pytest.mark.skip(reason=f"{fmt}: {why}")))
    return cases


@_PILLOW_DEPRECATIONS
@pytest.mark.parametrize(("fmt", "mode"), _save_all_cases())
async def test_multi_frame_images_give_the_same_bytes_as_a_bytesio(fmt: str, mode: str) -> None:
    # TIFF's multi-page writer reads back what it wrote and rewrites it.
    frames = [photo(64, 48, mode).rotate(angle) for angle in (0, 90, 180)]
    options = {"save_all": True, "append_images": frames[1:], **_STABLE.get(fmt, {})}
    async with open_pool(max_bytes=4 * MiB) as pool:
        for guess in (None, 100):
            # An AVIF sequence records the time it was made, to the second
            # (Pillow offers no option to fix it): the bytes must be those of
            # a save just before or just after.
            before = reference(frames[0], fmt, **options)
            sealed = await images.encode(pool, frames[0], fmt, guess=guess, **options)
            after = reference(frames[0], fmt, **options)
            assert bytes(sealed.view()) in (before, after), f"guess={guess}"
            sealed.release()
        assert_all_free(pool)


async def test_the_lease_file_behaves_as_a_bytesio() -> None:
    """Random writes, seeks (every whence), reads, truncates: the same as io.BytesIO."""
    rng = random.Random(17)
    async with open_pool(max_bytes=MiB) as pool:
        for capacity in (None, 1, 37, 300):
            for _ in range(60):
                lease = None if capacity is None else await pool.acquire(capacity)
                ours, theirs = _LeaseFile(lease), io.BytesIO()
                assert ours.seekable() and ours.writable() and ours.readable()
                with pytest.raises(io.UnsupportedOperation):
                    ours.fileno()
                for _ in range(40):
                    op = rng.randrange(6)
                    if op == 0:
                        data = rng.randbytes(rng.randrange(0, 200))
                        assert ours.write(data) == theirs.write(data)
                    elif op == 1:
                        lines = [rng.randbytes(rng.randrange(0, 30)) for _ in range(rng.randrange(4))]
                        ours.writelines(lines)
                        theirs.writelines(lines)
                    elif op == 2:
                        whence = rng.choice([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END])
                        offset = rng.randrange(-100, 400) if whence else rng.randrange(0, 600)
                        assert ours.seek(offset, whence) == theirs.seek(offset, whence)
                    elif op == 3:
                        size = rng.choice([None, -1, rng.randrange(0, 300)])
                        assert ours.read(size) == theirs.read(size)
                    elif op == 4:
                        size = rng.choice([None, rng.randrange(0, 600)])
                        assert ours.truncate(size) == theirs.truncate(size)
                    else:
                        into_ours, into_theirs = bytearray(rng.randrange(50)), bytearray(0)
                        into_theirs = bytearray(len(into_ours))
                        assert ours.readinto(into_ours) == theirs.readinto(into_theirs)
                        assert into_ours == into_theirs
                    assert ours.tell() == theirs.tell()
                assert bytes(ours.contents()) == theirs.getvalue()
                assert ours.size == len(theirs.getvalue())
                ours.close()
                if lease is not None:
                    lease.release()
        assert_all_free(pool)


async def test_the_lease_file_refuses_what_a_bytesio_refuses() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(64)
        ours = _LeaseFile(lease)
        for call in (lambda f: f.seek(-1), lambda f: f.seek(0, 3), lambda f: f.truncate(-1)):
            with pytest.raises(ValueError):
                call(io.BytesIO())
            with pytest.raises(ValueError):
                call(ours)
        with pytest.raises(TypeError):
            ours.seek(1.5)  # type: ignore[arg-type]
        ours.close()
        with pytest.raises(ValueError, match="closed file"):
            ours.write(b"x")
        lease.release()


# -- errors say what Pillow said (issue 17) ----------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode", "options", "raises", "says"),
    [
        # A refusal of the mode, said as Pillow said it.
        ("JPEG", "RGBA", {}, ValueError, "Pillow cannot write this RGBA image as JPEG: cannot write mode RGBA"),
        ("PCX", "RGBA", {}, ValueError, "Pillow cannot write this RGBA image as PCX: Cannot save RGBA images"),
        # Anything else: Pillow's own message, and no claim about the mode.
        ("JPEG", "RGB", {"quality": "x"}, ValueError, "Pillow failed to encode the image as JPEG: Invalid quality"),
        ("QOI", "L", {}, ValueError, "Pillow failed to encode the image as QOI: Unsupported QOI image mode"),
        ("PNG", "RGB", {"compress_level": 99}, OSError, "as PNG: codec configuration error"),
        ("JPEG2000", "1", {}, OSError, "as JPEG2000: broken data stream"),
        ("BUFR", "RGB", {}, OSError, "as BUFR: BUFR save handler not installed"),
    ],
)
async def test_encode_errors_pass_on_what_pillow_said(
    fmt: str, mode: str, options: dict[str, object], raises: type[Exception], says: str
) -> None:
    image = photo(32, 24, mode)
    try:
        image.save(io.BytesIO(), format=fmt, **options)
    except Exception as exc:  # noqa: BLE001
        pillow_said = exc
    else:
        raise AssertionError(f"Pillow saved {mode} as {fmt}")
    async with open_pool(max_bytes=MiB) as pool:
        with pytest.raises(raises, match=re.escape(says)) as caught:
            await images.encode(pool, image, fmt, **options)
        assert type(caught.value.__cause__) is type(pillow_said)
        assert str(caught.value.__cause__) == str(pillow_said)
        if "cannot write this" not in says:
            assert "cannot write this" not in str(caught.value)
        assert_all_free(pool)


@pytest.fixture
def fake_format(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[Any], None]], str]:
    """Register a save handler of the test's own as a format; its name."""
    Image.init()

    def register(handler: Callable[[Any], None]) -> str:
        monkeypatch.setitem(Image.SAVE, "TRIOZCFAKE", lambda im, fp, filename: handler(fp))
        return "TRIOZCFAKE"

    return register


async def test_nothing_stays_leased_whatever_a_saver_raises(fake_format: Callable[[Callable[[Any], None]], str]) -> None:
    class Boom(Exception):
        pass

    def write_then_fail(fp: Any, error: BaseException) -> None:
        fp.write(b"x" * 5000)  # past a 100-byte lease: spilled too
        raise error

    async with open_pool(max_bytes=MiB) as pool:
        for error, raises in [(Boom("boom"), Boom), (TypeError("bad option"), TypeError),
                              (KeyError("x"), ValueError), (OSError("disk"), OSError), (MemoryError(), MemoryError)]:
            name = fake_format(lambda fp, error=error: write_then_fail(fp, error))
            for guess in (None, 100):
                with pytest.raises(raises):
                    await images.encode(pool, photo(), name, guess=guess)
                assert_all_free(pool)
        name = fake_format(lambda fp: None)
        with pytest.raises(ValueError, match="Pillow wrote no bytes"):
            await images.encode(pool, photo(), name)
        assert_all_free(pool)


async def test_a_saver_that_seeks_and_rewrites_gets_the_bytes_it_wrote(
    fake_format: Callable[[Callable[[Any], None]], str],
) -> None:
    def saver(fp: Any) -> None:
        fp.write(b"HEADER??")
        fp.seek(300)  # a gap, then a body across the 100-byte lease's end
        fp.write(b"b" * 200)
        fp.seek(6)
        fp.write(b"OK")
        fp.seek(-10, io.SEEK_END)
        assert fp.read(4) == b"bbbb"
        fp.write(b"END")

    expected = io.BytesIO()
    saver(expected)
    name = fake_format(saver)
    async with open_pool(max_bytes=MiB) as pool:
        for guess in (None, 100, 305):
            sealed = await images.encode(pool, photo(), name, guess=guess)
            assert bytes(sealed.view()) == expected.getvalue()
            sealed.release()
        assert_all_free(pool)


async def test_guess_takes_any_integer_and_refuses_the_rest() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        sealed = await images.encode(pool, photo(), "PNG", guess=np.int64(70000))
        sealed.release()
        with pytest.raises(TypeError, match="guess must be a positive int"):
            await images.encode(pool, photo(), "PNG", guess=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not bool"):
            await images.encode(pool, photo(), "PNG", guess=True)
        with pytest.raises(ValueError, match="guess must be a positive int, not -5"):
            await images.encode(pool, photo(), "PNG", guess=-5)
        assert_all_free(pool)


# -- ndarray shapes: any integer (issue 17) -------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [np.int64(12), (np.int64(3), 4), [np.uint8(3), np.int32(4)], (3, np.intp(4)), np.array(12), (np.array(3), 4)],
    ids=repr,
)
async def test_ndarray_takes_a_shape_of_any_integer_type(shape: object) -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(12)
        array = lease.ndarray(shape)  # type: ignore[arg-type]
        assert array.size == 12 and all(type(n) is int for n in array.shape)
        array[...] = 7
        del array
        sealed = lease.seal()
        assert bytes(sealed.view()) == b"\x07" * 12
        sealed.release()


@pytest.mark.parametrize(
    ("shape", "raises", "says"),
    [
        (True, TypeError, "not bool"),
        ((True, 4), TypeError, "True in (True, 4) is a bool"),
        (np.int64(-1), ValueError, "non-negative"),
        ((3, np.int64(-4)), ValueError, "non-negative"),
        ((3, 4.0), TypeError, "4.0 in (3, 4.0) is a float"),
        (np.array([3, 4]), TypeError, "not ndarray"),
        ("12", TypeError, "not str"),
        (np.float64(12), TypeError, "not float64"),
        ((np.bool_(True), 4), TypeError, "is a bool"),
        (np.bool_(True), TypeError, "not bool"),
    ],
    ids=repr,
)
async def test_ndarray_refuses_shapes_that_are_not_sizes(shape: object, raises: type[Exception], says: str) -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(64)
        with pytest.raises(raises, match=re.escape(says)):
            lease.ndarray(shape)  # type: ignore[arg-type]
        lease.seal().release()  # no view was left behind


async def test_a_saver_that_closes_the_file_still_gets_its_bytes_sealed(
    fake_format: Callable[[Callable[[Any], None]], str],
) -> None:
    def saver(fp: Any) -> None:
        fp.write(b"data" * 100)
        fp.close()

    name = fake_format(saver)
    async with open_pool(max_bytes=MiB) as pool:
        for guess in (None, 100):
            # One page free: with no first lease (its guess is more than a
            # page), or with a first lease taking that page so that the exact
            # one is not free at once, the bytes move out of the (closed) file.
            held = await pool.acquire(MiB - 4 * KiB)
            with trio.fail_after(30):
                got = [await images.encode(pool, photo(), name, guess=guess)]
            held.release()
            assert bytes(got[0].view()) == b"data" * 100
            got[0].release()
        assert_all_free(pool)
