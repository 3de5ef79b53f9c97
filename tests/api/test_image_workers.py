"""trio_zc.images.open_workers: Pillow in worker processes, writing into the pool.

Real processes throughout. Every test ends with no worker process left and
as many file descriptors open as before (the autouse fixture), and with the
pool whole.
"""

from __future__ import annotations

import io
import itertools
import os
import pathlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import PIL
import pytest
import trio
from PIL import Image

import trio_zc
from trio_zc import images
from trio_zc.images import BrokenWorkerError, RawImage

from ..streams import ALWAYS_ZC, KERNELS, kernel, receive_exactly, stream_pair

MiB = 1 << 20
PLUGIN = "tests.image_worker_plugin"
#: The longest any wait here may take before the test fails (generous: the
#: machine is shared and small).
PATIENCE = 30.0


def photo(width: int = 96, height: int = 64, mode: str = "RGB", seed: int = 7) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 256)], axis=-1).astype(np.uint8)
    noisy = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB").convert(mode)


def saved(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def children() -> set[int]:
    """The pids of this process's child processes (zombies included)."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[1] == me:
                found.add(int(entry))
    return found


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Each test leaves no child process and no file descriptor behind."""
    fds, kids = open_fds(), children()
    yield
    assert children() == kids, "a worker process outlived its block"
    assert open_fds() == fds, "a file descriptor outlived its block"


async def eventually(condition: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(PATIENCE):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"still not true after {PATIENCE} s: {what}")


def whole(pool: trio_zc.BufferPool, held: int = 0) -> bool:
    """Whether the pool is back to *held* sealed leases and nothing else."""
    stats = pool.statistics()
    return (
        stats.writable_leases == 0
        and stats.abandoned_leases == 0
        and stats.draining_leases == 0
        and stats.sends_in_flight == 0
        and stats.sealed_leases == held
    )


async def encoded(workers: images.ImageWorkers, source: Any, fmt: str, **options: Any) -> bytes:
    """Encode in a worker; the bytes (the lease is released)."""
    sealed = await workers.encode(source, fmt, **options)
    try:
        return bytes(sealed.view())
    finally:
        sealed.release()


async def raw_of(pool: trio_zc.BufferPool, image: Image.Image) -> RawImage:
    return RawImage(await images.pixels(pool, image), image.mode, image.size,
                    bytes(image.getpalette() or b"") if image.mode == "P" else None)


# -- bytes ------------------------------------------------------------------


CASES = [
    ("JPEG", "RGB", {"quality": 85}), ("JPEG", "L", {"quality": 60, "optimize": True}), ("JPEG", "CMYK", {}),
    ("JPEG", "RGB", {"progressive": True, "subsampling": 0}),
    ("PNG", "RGB", {}), ("PNG", "RGBA", {"compress_level": 9}), ("PNG", "P", {}), ("PNG", "1", {}),
    ("PNG", "I;16", {}), ("PNG", "LA", {}), ("PNG", "L", {"optimize": True}),
    ("WEBP", "RGB", {"quality": 70}), ("WEBP", "RGBA", {"lossless": True}), ("WEBP", "RGB", {"method": 6}),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}), ("TIFF", "F", {}), ("BMP", "RGB", {}), ("GIF", "P", {}),
    ("GIF", "L", {}), ("PPM", "RGB", {}), ("TGA", "RGBA", {}),
]


async def test_encode_gives_the_bytes_pillow_gives_in_process() -> None:
    async with trio_zc.open_pool(max_bytes=16 * MiB) as pool:
        async with images.open_workers(pool, 2) as workers:
            for fmt, mode, options in CASES:
                image = photo(mode=mode)
                expected = saved(image, fmt, **options)
                from_image = await workers.encode(image, fmt, **options)
                raw = await raw_of(pool, image)
                from_raw = await workers.encode(raw, fmt.lower(), **options)
                assert bytes(from_image.view()) == expected, (fmt, mode, options)
                assert bytes(from_raw.view()) == expected, (fmt, mode, options, "raw")
                assert from_image.nbytes == len(expected)
                for lease in (from_image, from_raw, raw.lease):
                    lease.release()
            # Metadata travels with a PIL image, as Pillow pickles it.
            image = photo()
            image.info["dpi"] = (300, 300)
            profile = b"not a real ICC profile, but bytes all the same" * 20
            with_dpi = await workers.encode(image, "PNG")
            assert bytes(with_dpi.view()) == saved(image, "PNG")
            with_dpi.release()
            with_icc = await workers.encode(image, "JPEG", icc_profile=profile, quality=90)
            assert bytes(with_icc.view()) == saved(image, "JPEG", icc_profile=profile, quality=90)
            with_icc.release()
            transparent = photo(mode="P")
            transparent.info["transparency"] = 3
            sealed = await workers.encode(transparent, "PNG")
            assert bytes(sealed.view()) == saved(transparent, "PNG")
            sealed.release()
            stats = workers.statistics()
            assert stats.completed == 2 * len(CASES) + 3 and stats.failed == stats.crashed == 0
        assert whole(pool)


@pytest.mark.parametrize(("mode", "size"), [("RGB", (1000, 1100)), ("L", (1000, 4500)), ("I;16", (999, 2201))])
async def test_a_large_image_is_copied_in_strips_exactly(mode: str, size: tuple[int, int]) -> None:
    """A PIL image larger than one strip (2 MiB) goes to the worker in strips, rows in their place."""
    image = photo(*size, mode=mode)
    async with trio_zc.open_pool(max_bytes=32 * MiB) as pool:
        async with images.open_workers(pool, 1) as workers:
            fmt = "TIFF"  # stores the pixels as they are
            assert await encoded(workers, image, fmt) == saved(image, fmt)
            resized = await workers.resize(image, (size[0] // 3, size[1] // 3))
            assert bytes(resized.lease.view()) == image.resize((size[0] // 3, size[1] // 3)).tobytes()
            resized.lease.release()
        assert whole(pool)


async def test_a_rgbx_raw_image_is_mapped_and_encodes_as_its_rgb_twin() -> None:
    """Pixels drawn four bytes a pixel (no unpacking in the worker) give the RGB image's JPEG."""
    image = photo(120, 80)
    async with trio_zc.open_pool(max_bytes=4 * MiB) as pool:
        async with images.open_workers(pool, 1) as workers:
            async with pool.lease(120 * 80 * 4) as lease:
                pixels = lease.ndarray((80, 120, 4))
                pixels[..., :3] = np.asarray(image)
                pixels[..., 3] = 255
                del pixels
                raw = RawImage(lease.seal(), "RGBX", (120, 80))
                jpeg = await workers.encode(raw, "JPEG", quality=80)
            assert bytes(jpeg.view()) == saved(image, "JPEG", quality=80)
            jpeg.release()
        assert whole(pool)


async def test_decode_and_resize_equal_pillow_in_process() -> None:
    async with trio_zc.open_pool(max_bytes=16 * MiB) as pool:
        async with images.open_workers(pool, 2) as workers:
            for fmt, mode in [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("PNG", "I;16"),
                              ("JPEG", "RGB"), ("JPEG", "L"), ("WEBP", "RGB"), ("GIF", "P"), ("TIFF", "CMYK"),
                              ("BMP", "1")]:
                data = saved(photo(mode=mode), fmt)
                expected = Image.open(io.BytesIO(data))
                expected.load()
                lease = pool.acquire_nowait(len(data))
                lease.write(data)
                sealed = lease.seal()
                for source in (sealed, data, bytearray(data)):
                    raw = await workers.decode(source)
                    assert (raw.mode, raw.size) == (expected.mode, expected.size), (fmt, mode)
                    assert bytes(raw.lease.view()) == expected.tobytes(), (fmt, mode)
                    if expected.mode == "P":
                        assert raw.palette == bytes(expected.getpalette(raw.palette_mode) or b"")
                    raw.lease.release()
                sealed.release()
            with pytest.raises(PIL.UnidentifiedImageError):
                await workers.decode(saved(photo(), "PNG"), formats=["JPEG"])
            with pytest.raises(PIL.UnidentifiedImageError):
                await workers.decode(b"this is not an image")

            for mode in ("RGB", "RGBA", "L", "P", "LA", "I;16", "F", "1", "CMYK"):
                image = photo(mode=mode)
                raw = await raw_of(pool, image)
                for source in (image, raw):
                    for size, options in [((40, 30), {}), ((200, 10), {"resample": Image.Resampling.LANCZOS}),
                                          ((31, 17), {"resample": Image.Resampling.NEAREST, "box": (3, 4, 50, 40)}),
                                          ((24, 16), {"reducing_gap": 2.0})]:
                        try:
                            expected = image.resize(size, **options)
                        except ValueError as exc:  # Pillow cannot (reducing_gap on I;16): neither can a worker
                            with pytest.raises(ValueError, match=str(exc)):
                                await workers.resize(source, size, **options)
                            continue
                        result = await workers.resize(source, size, **options)
                        assert (result.mode, result.size) == (expected.mode, expected.size)
                        assert bytes(result.lease.view()) == expected.tobytes(), (mode, size, options)
                        result.lease.release()
                raw.lease.release()
            # A chain: decode, resize, encode, all in workers.
            data = saved(photo(200, 150), "PNG")
            decoded = await workers.decode(data)
            small = await workers.resize(decoded, (100, 75))
            jpeg = await workers.encode(small, "JPEG", quality=80)
            assert bytes(jpeg.view()) == saved(Image.open(io.BytesIO(data)).resize((100, 75)), "JPEG", quality=80)
            for lease in (decoded.lease, small.lease, jpeg):
                lease.release()
        assert whole(pool)


@pytest.mark.parametrize("kernel_name", [k for k in KERNELS if k != "mock"])
@pytest.mark.parametrize("protect_sealed", [False, True])
async def test_what_workers_encode_goes_out_on_every_kernel_intact(kernel_name: str, protect_sealed: bool) -> None:
    """Encoded in workers, sent over loopback TCP; the receiver compares bytes."""
    pictures = [photo(300 + 40 * n, 200, seed=n) for n in range(4)]
    async with trio_zc.open_pool(
        max_bytes=8 * MiB, kernel=kernel(kernel_name), policy=ALWAYS_ZC, protect_sealed=protect_sealed
    ) as pool:
        async with images.open_workers(pool, 2) as workers:
            stream, peer = await stream_pair(pool)
            async with stream, peer:
                for n, picture in enumerate(pictures):
                    source: Any = picture if n % 2 else await raw_of(pool, picture)
                    sealed = await workers.encode(source, "JPEG", quality=90)
                    if isinstance(source, RawImage):
                        source.lease.release()
                    await stream.send_lease(sealed)
                    sealed.release()
                    expected = saved(picture, "JPEG", quality=90)
                    assert await receive_exactly(peer, len(expected)) == expected
        assert whole(pool)


# -- errors -----------------------------------------------------------------


async def test_bad_calls_raise_clear_errors_and_leave_everything_whole() -> None:
    image = photo()
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        async with trio_zc.open_pool(max_bytes=1 * MiB) as other:
            async with images.open_workers(pool, 1) as workers:
                with pytest.raises(ValueError, match="Pillow cannot write 'NOPE' here"):
                    await workers.encode(image, "NOPE")
                with pytest.raises(ValueError, match="Pillow cannot write this RGBA image as JPEG"):
                    await workers.encode(photo(mode="RGBA"), "JPEG")
                with pytest.raises(TypeError, match="format must be a str"):
                    await workers.encode(image, 85)  # type: ignore[arg-type]
                with pytest.raises(TypeError, match="expected a RawImage or a PIL.Image.Image, not bytes"):
                    await workers.encode(b"pixels", "PNG")  # type: ignore[arg-type]
                with pytest.raises(ValueError, match="Pillow failed to encode the image as JPEG"):
                    await workers.encode(image, "JPEG", quality="best")
                with pytest.raises(TypeError, match="must pickle"):
                    await workers.encode(image, "PNG", pnginfo=lambda: None)
                with pytest.raises(ValueError, match="more than the pool can ever hold"):
                    await workers.encode(photo(1024, 1024), "PNG")
                with pytest.raises(ValueError, match="more than the pool can ever hold"):
                    await workers.resize(image, (2000, 2000))
                with pytest.raises(ValueError, match="size must be positive"):
                    await workers.resize(image, (0, 10))
                with pytest.raises(TypeError, match="formats must be"):
                    await workers.decode(b"x", formats="PNG")
                with pytest.raises(ValueError, match="no bytes to decode"):
                    await workers.decode(b"")
                foreign = await images.pixels(other, image)
                with pytest.raises(trio_zc.ForeignLeaseError):
                    await workers.encode(RawImage(foreign, "RGB", image.size), "PNG")
                foreign.release()
                adopted = pool.adopt(image.tobytes())
                with pytest.raises(ValueError, match="adopted memory, which the workers cannot map"):
                    await workers.encode(RawImage(adopted, "RGB", image.size), "PNG")
                adopted.release()
                stale = await images.pixels(pool, image)
                raw = RawImage(stale, "RGB", image.size)
                stale.release()
                with pytest.raises(trio_zc.StaleLeaseError):
                    await workers.encode(raw, "PNG")
                stats = workers.statistics()
                assert stats.crashed == 0 and stats.alive == 1 and stats.idle == 1
                assert await encoded(workers, image, "PNG") == saved(image, "PNG")
            with pytest.raises(trio.ClosedResourceError):
                await workers.encode(image, "PNG")
            assert workers.statistics().closed and workers.statistics().alive == 0
        sealed = await images.pixels(pool, image)
        with pytest.raises(ValueError, match="a 96x65 RGB image needs 18720 bytes; the lease holds 18432"):
            RawImage(sealed, "RGB", (96, 65))
        with pytest.raises(ValueError, match="raw layout of mode 'BGR;16'"):
            RawImage(sealed, "BGR;16", (96, 64))
        with pytest.raises(TypeError, match="SealedLease"):
            RawImage(b"pixels", "RGB", (1, 1))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="only P and PA images have a palette"):
            RawImage(sealed, "RGB", (96, 64), palette=b"\0" * 768)
        sealed.release()
        with pytest.raises(ValueError, match="processes must be at least 1"):
            async with images.open_workers(pool, 0):
                pass  # pragma: no cover
        with pytest.raises(ValueError, match="nice must be from 0 to 19, not -1"):
            async with images.open_workers(pool, nice=-1):
                pass  # pragma: no cover
        with pytest.raises(TypeError, match="pool must be a BufferPool"):
            async with images.open_workers(object()):  # type: ignore[arg-type]
                pass  # pragma: no cover


async def test_a_worker_that_cannot_start_fails_the_open_and_leaves_no_process() -> None:
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        with pytest.raises(RuntimeError, match=r"image worker \d+ \(pid \d+\) could not start: ModuleNotFoundError"):
            async with images.open_workers(pool, 2, preload=["no_such_module_here"]):
                pass  # pragma: no cover


async def test_a_pillow_that_differs_from_the_parents_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PIL, "__version__", "0.0.1")
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        with pytest.raises(RuntimeError, match="imported Pillow .*, not this process's 0.0.1"):
            async with images.open_workers(pool, 1):
                pass  # pragma: no cover


async def test_an_exception_in_the_block_comes_out_as_itself() -> None:
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        with pytest.raises(KeyError) as info:
            async with images.open_workers(pool, 1):
                raise KeyError("mine")
        assert type(info.value) is KeyError and info.value.args == ("mine",)
        assert info.value.__context__ is None
        # A cancellation of the block goes through as one too.
        with trio.move_on_after(0.5) as scope:
            async with images.open_workers(pool, 1):
                await trio.sleep_forever()
        assert scope.cancelled_caught


# -- cancellation --------------------------------------------------------------


async def cancel_at_step(step: int, call: Callable[[], Awaitable[Any]], *, parked: bool) -> tuple[bool, Any]:
    """Run *call*, cancelled at this task's *step*-th scheduling (-1: before it starts).

    Not *parked*: just before the task resumes (the cancellation lands at
    its next checkpoint). *parked*: just after it yielded (a wait it parked
    in is interrupted). Returns (whether it was cancelled, what it returned).
    """
    task = trio.lowlevel.current_task()
    scope = trio.CancelScope()

    class Counter(trio.abc.Instrument):
        steps = 0

        def before_task_step(self, stepping: trio.lowlevel.Task) -> None:
            if stepping is task and not parked:
                if self.steps == step:
                    scope.cancel()
                self.steps += 1

        def after_task_step(self, stepping: trio.lowlevel.Task) -> None:
            if stepping is task and parked:
                if self.steps == step:
                    scope.cancel()
                self.steps += 1

    if step < 0:
        scope.cancel()
    counter = Counter()
    trio.lowlevel.add_instrument(counter)
    result = None
    try:
        with scope:
            result = await call()
    finally:
        trio.lowlevel.remove_instrument(counter)
    return scope.cancelled_caught, result


@pytest.mark.parametrize("kill_on_cancel", [False, True])
async def test_cancelling_at_every_await_leaks_nothing(kill_on_cancel: bool) -> None:
    image = photo(160, 120)
    large = photo(1000, 1100)  # three strips
    png = saved(image, "PNG")
    async with trio_zc.open_pool(max_bytes=16 * MiB) as pool:
        raw = await raw_of(pool, image)
        async with images.open_workers(pool, 2, kill_on_cancel=kill_on_cancel) as workers:
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "encode image": lambda: workers.encode(image, "PNG"),
                "encode large image": lambda: workers.encode(large, "JPEG"),
                "encode raw": lambda: workers.encode(raw, "PNG"),
                "decode": lambda: workers.decode(png),
                "resize": lambda: workers.resize(raw, (80, 60)),
            }
            for (name, call), parked in itertools.product(calls.items(), (False, True)):
                left_to_finish = 0
                for step in range(-1, 100):
                    cancelled, result = await cancel_at_step(step, call, parked=parked)
                    left_to_finish += workers.statistics().finishing
                    # The caller left at once; the worker finishes (or dies)
                    # in the background, and then everything is back.
                    held = 1 + (not cancelled)
                    await eventually(lambda: whole(pool, held=held), f"{name} at step {step}")  # noqa: B023
                    await eventually(lambda: workers.statistics().idle == 2, f"{name} at step {step}: workers idle")
                    if not cancelled:
                        lease = result if isinstance(result, trio_zc.SealedLease) else result.lease
                        assert bytes(lease.view()) == (
                            saved(large, "JPEG") if name == "encode large image" else
                            png if name.startswith("encode") else
                            image.tobytes() if name == "decode" else image.resize((80, 60)).tobytes()
                        )
                        lease.release()
                        break
                else:  # pragma: no cover
                    raise AssertionError(f"{name} was still cancelled after 100 steps")
                assert step > 3, f"{name} completed after only {step} steps: the test missed its awaits"
                # Some cancellations caught the worker at the job, which went on without its caller.
                assert left_to_finish > 0, name
                print(name, parked, "completed after", step, "steps;", left_to_finish, "left to a worker to finish")
            stats = workers.statistics()
            assert stats.crashed == 0 and stats.alive == 2
            if kill_on_cancel:
                assert stats.started > 2  # cancelled jobs' workers were killed and replaced
            assert await encoded(workers, raw, "PNG") == png
        raw.lease.release()
    # Every lease went back (the pool would have warned of leaks otherwise).
    assert pool.statistics().free_bytes == pool.max_bytes


async def test_a_released_source_stays_out_of_the_pool_until_the_worker_is_done(tmp_path: pathlib.Path) -> None:
    image = photo()
    marker, go = tmp_path / "saving", tmp_path / "go"
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        raw = await raw_of(pool, image)
        async with images.open_workers(pool, 1, preload=[PLUGIN]) as workers:
            async with trio.open_nursery() as nursery:
                results: list[trio_zc.SealedLease] = []

                async def encode() -> None:
                    results.append(await workers.encode(raw, "STALLTEST", marker=str(marker), go=str(go)))

                nursery.start_soon(encode)
                await eventually(marker.exists, "the worker started saving")
                raw.lease.release()
                # The worker is still reading it: the memory is not free.
                await trio.sleep(0.2)
                stats = pool.statistics()
                assert stats.draining_leases == 1 and stats.sends_in_flight == 1
                assert stats.free_bytes <= pool.max_bytes - 96 * 64 * 3
                go.touch()
            assert bytes(results[0].view()) == b"the first half of an image and the rest of it"
            results[0].release()
        assert whole(pool) and pool.statistics().free_bytes == pool.max_bytes


async def test_a_result_waits_for_memory_holding_none_and_its_cancel_leaks_nothing() -> None:
    """The worker keeps the result while the pool is full; the call holds no lease meanwhile."""
    image = photo()
    png = saved(image, "PNG")
    async with trio_zc.open_pool(max_bytes=256 * 1024) as pool:
        raw = await raw_of(pool, image)
        async with images.open_workers(pool, 1) as workers:
            filler = await pool.acquire(pool.statistics().largest_free_block)
            results: list[trio_zc.SealedLease] = []
            async with trio.open_nursery() as nursery:
                async def encode() -> None:
                    results.append(await workers.encode(raw, "PNG"))

                nursery.start_soon(encode)
                await eventually(lambda: pool.statistics().tasks_waiting == 1, "the result waits for memory")
                stats = pool.statistics()
                assert stats.writable_leases == 1 and stats.sealed_leases == 1  # the filler and the source
                assert workers.statistics().busy == 1
                filler.release()
            assert bytes(results[0].view()) == png
            results[0].release()
            # Again, and cancelled while it waits: the worker drops its result.
            filler = await pool.acquire(pool.statistics().largest_free_block)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(encode)
                await eventually(lambda: pool.statistics().tasks_waiting == 1, "the result waits for memory")
                nursery.cancel_scope.cancel()
            await eventually(lambda: workers.statistics().idle == 1, "the worker dropped the result")
            filler.release()
            assert whole(pool, held=1) and pool.statistics().tasks_waiting == 0
            assert await encoded(workers, raw, "PNG") == png
        raw.lease.release()


# -- workers that die ------------------------------------------------------------


def zombie(pid: int) -> bool:
    """Whether *pid* has ended and is waiting to be reaped."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "Z"


def gone(pid: int) -> bool:
    """Whether *pid* no longer exists, not even as a zombie (it was reaped)."""
    return not os.path.exists(f"/proc/{pid}")


async def test_sigkill_mid_write_seals_nothing_and_frees_the_lease_only_once_reaped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_ZC_TEST_STALL_WRITE", str(tmp_path))
    image = photo(200, 150)
    async with trio_zc.open_pool(max_bytes=2 * MiB) as pool:
        async with images.open_workers(pool, 1, preload=[PLUGIN]) as workers:
            (pid,) = workers.statistics().pids
            errors: list[BaseException] = []
            when_raised: list[bool] = []

            async def encode() -> None:
                try:
                    await workers.encode(image, "PNG")
                except BrokenWorkerError as exc:
                    errors.append(exc)
                    when_raised.append(gone(pid))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(encode)
                await eventually((tmp_path / "writing").exists, "the worker is writing the lease")
                # Half the image is in its lease, which is held writable (and
                # locked); the other lease is the image's pixels, the source.
                stats = pool.statistics()
                assert stats.writable_leases == 1 and stats.sealed_leases == 1
                os.kill(pid, signal.SIGKILL)
            (error,) = errors
            assert when_raised == [True], "the error came before the worker was reaped"
            assert isinstance(error, BrokenWorkerError)
            assert error.pid == pid and error.returncode == -signal.SIGKILL and error.worker == 1
            assert f"image worker 1 (pid {pid}) was killed by SIGKILL while encoding a 200x150 RGB image as PNG" in str(
                error
            )
            assert "nothing it wrote was sealed" in str(error)
            assert whole(pool) and pool.statistics().free_bytes == pool.max_bytes
            # A new worker took its place, and works.
            await eventually(lambda: workers.statistics().idle == 1, "a new worker")
            stats = workers.statistics()
            assert stats.crashed == 1 and stats.started == 2 and stats.pids != (pid,)
            (tmp_path / "go").touch()
            assert await encoded(workers, image, "PNG") == saved(image, "PNG")


async def test_a_cancelled_write_holds_the_lease_until_the_worker_is_reaped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_ZC_TEST_STALL_WRITE", str(tmp_path))
    image = photo(200, 150)
    async with trio_zc.open_pool(max_bytes=2 * MiB) as pool:
        async with images.open_workers(pool, 1, preload=[PLUGIN]) as workers:
            (pid,) = workers.statistics().pids
            with trio.move_on_after(PATIENCE) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(workers.encode, image, "PNG")
                    await eventually((tmp_path / "writing").exists, "the worker is writing the lease")
                    nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught
            # The call returned; the worker still writes: the lease is
            # abandoned, not free, for as long as the worker lives.
            for _ in range(5):
                await trio.sleep(0.1)
                stats = pool.statistics()
                assert stats.abandoned_leases == 1 and stats.free_bytes < pool.max_bytes
                assert workers.statistics().finishing == 1
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: pool.statistics().free_bytes == pool.max_bytes, "the lease came back")
            assert gone(pid) and whole(pool)
            await eventually(lambda: workers.statistics().idle == 1, "a new worker")
            (tmp_path / "go").touch()
            assert await encoded(workers, image, "PNG") == saved(image, "PNG")


@pytest.mark.parametrize(("die", "how"), [("exit", "exited with status 3"), ("segv", "was killed by SIGSEGV")])
async def test_a_worker_that_dies_mid_image_raises_a_clear_error_and_is_replaced(
    tmp_path: pathlib.Path, die: str, how: str
) -> None:
    image = photo()
    (tmp_path / "go").touch()
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        raw = await raw_of(pool, image)
        async with images.open_workers(pool, 2, preload=[PLUGIN]) as workers:
            with pytest.raises(BrokenWorkerError, match=rf"image worker \d \(pid \d+\) {how} while encoding a 96x64"
                                                        r" RGB image as STALLTEST"):
                await workers.encode(raw, "STALLTEST", marker=str(tmp_path / "m"), go=str(tmp_path / "go"), die=die)
            assert whole(pool, held=1)  # the source is the caller's again, and sends nothing
            await eventually(lambda: workers.statistics().idle == 2, "a new worker")
            assert await encoded(workers, raw, "PNG") == saved(image, "PNG")
            assert workers.statistics().crashed == 1
        raw.lease.release()


async def test_a_worker_that_died_while_idle_is_replaced_and_the_job_goes_to_another() -> None:
    image = photo()
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        async with images.open_workers(pool, 1) as workers:
            (pid,) = workers.statistics().pids
            os.kill(pid, signal.SIGKILL)
            await trio.sleep(0.1)
            sealed = await workers.encode(image, "PNG")
            assert bytes(sealed.view()) == saved(image, "PNG")
            sealed.release()
            stats = workers.statistics()
            assert stats.pids != (pid,) and gone(pid) and stats.crashed == 1 and stats.completed == 1
        assert whole(pool)


async def test_closing_kills_a_worker_still_finishing_a_cancelled_job(tmp_path: pathlib.Path) -> None:
    image = photo()
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        async with images.open_workers(pool, 1, preload=[PLUGIN]) as workers:
            (pid,) = workers.statistics().pids
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: workers.encode(image, "STALLTEST", marker=str(tmp_path / "m"), go=str(tmp_path / "go"))
                )
                await eventually((tmp_path / "m").exists, "the worker is at the image")
                nursery.cancel_scope.cancel()
            assert workers.statistics().finishing == 1
        # The block waited for the worker to be reaped.
        assert gone(pid) and whole(pool) and pool.statistics().free_bytes == pool.max_bytes


class _SlowHello:
    """A worker's socket whose hello waits (shielded) for *batches* scheduler passes first."""

    def __init__(self, sock: Any, batches: int) -> None:
        self._sock, self._batches = sock, batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    async def sendmsg(self, *args: Any) -> Any:
        with trio.CancelScope(shield=True):
            for _ in range(self._batches):
                await trio.sleep(0)
        return await self._sock.sendmsg(*args)


async def test_a_cancel_as_a_worker_starts_leaves_the_block_with_the_worker_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hang seen once in test_exceptions: the block is cancelled just as
    # a worker's process was created, before the task starting it has seen
    # the cancel. Closing then killed that worker from a task of its own,
    # in the cancelled nursery: its wait for the process was cancelled, the
    # process stayed a zombie, and everyone else waited for it to be reaped
    # forever. The patches make that order certain: the cancel lands as
    # open_process returns, and the hello waits (shielded) until the close
    # has had its way with the worker.
    from trio_zc import _image_workers

    scope = trio.CancelScope()
    started: list[Any] = []
    made: list[Any] = []
    real_open_process = trio.lowlevel.open_process
    real_from_stdlib_socket = trio.socket.from_stdlib_socket
    real_init = _image_workers.ImageWorkers.__init__

    async def open_process(*args: Any, **kwargs: Any) -> Any:
        process = await real_open_process(*args, **kwargs)
        started.append(process)
        scope.cancel()
        return process

    def init(self: Any, *args: Any) -> None:
        real_init(self, *args)
        made.append(self)

    monkeypatch.setattr(trio.lowlevel, "open_process", open_process)
    monkeypatch.setattr(trio.socket, "from_stdlib_socket", lambda sock: _SlowHello(real_from_stdlib_socket(sock), 20))
    monkeypatch.setattr(_image_workers.ImageWorkers, "__init__", init)
    hung = False
    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def block() -> None:
                with scope:
                    async with images.open_workers(pool, 1):
                        await trio.sleep_forever()  # pragma: no cover - cancelled while starting
                done.set()

            nursery.start_soon(block)
            with trio.move_on_after(PATIENCE):
                await done.wait()
            if not done.is_set():
                # Rescue, so that the test fails instead of hanging: reap
                # the worker and tell the close it is gone.
                hung = True
                (workers,) = made
                for worker in list(workers._workers.values()):
                    with trio.CancelScope(shield=True):
                        worker.process.kill()
                        await worker.process.wait()
                    worker.sock.close()
                    workers._workers.pop(worker.number, None)
                    worker.reaped.set()
        assert not hung, "leaving the block hung: a worker was killed and never reaped"
        assert scope.cancelled_caught
        (process,) = started
        assert gone(process.pid) and whole(pool)


async def test_closing_kills_a_replacement_that_shows_up_late_and_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A replacement worker whose process was still being created when the
    # block ended shows up in the middle of the close. The close used to
    # wait for it to be reaped without killing it: one that never answers
    # its hello (here a process that sleeps) held the block forever.
    late: list[Any] = []
    hung = False

    async def rescue() -> None:
        # So that the test fails instead of hanging: kill the late worker
        # after a while (the close then reaps it).
        nonlocal hung
        await trio.sleep(PATIENCE)
        hung = True
        for process in late:
            process.kill()

    async with trio_zc.open_pool(max_bytes=1 * MiB) as pool, trio.open_nursery() as nursery:
        async with images.open_workers(pool, 2) as workers:
            real_open_process = trio.lowlevel.open_process

            async def open_process(command: Any, **kwargs: Any) -> Any:
                process = await real_open_process([sys.executable, "-c", "import time; time.sleep(120)"], **kwargs)
                late.append(process)
                # Handed over only once the close has begun.
                for _ in range(1_000_000):
                    if workers._closed:
                        break
                    await trio.sleep(0)
                return process

            monkeypatch.setattr(trio.lowlevel, "open_process", open_process)
            # The next job goes to a dead worker: it is buried, and a
            # replacement started; the job goes to the other one.
            dead = workers._idle[0].pid
            os.kill(dead, signal.SIGKILL)
            await eventually(lambda: zombie(dead), "the worker died")
            assert await encoded(workers, photo(), "PNG") == saved(photo(), "PNG")
            assert workers.statistics().starting == 1
            nursery.start_soon(rescue)
        nursery.cancel_scope.cancel()
    assert not hung, "the close waited for a worker that never answered"
    assert late and all(gone(process.pid) for process in late) and whole(pool)


async def test_many_tasks_share_the_workers_first_come_first_served() -> None:
    pictures = [photo(64 + n, 48, seed=n) for n in range(12)]
    async with trio_zc.open_pool(max_bytes=4 * MiB) as pool:
        async with images.open_workers(pool, 2) as workers:
            results: dict[int, bytes] = {}

            async def one(n: int) -> None:
                sealed = await workers.encode(pictures[n], "JPEG", quality=80)
                results[n] = bytes(sealed.view())
                sealed.release()

            most_waiting = 0
            async with trio.open_nursery() as nursery:
                for n in range(len(pictures)):
                    nursery.start_soon(one, n)
                while len(results) < len(pictures):
                    most_waiting = max(most_waiting, workers.statistics().tasks_waiting)
                    await trio.sleep(0.001)
            assert most_waiting > 0
            assert results == {n: saved(p, "JPEG", quality=80) for n, p in enumerate(pictures)}
            assert len(set(workers.statistics().pids)) == 2
        assert whole(pool)


def test_workers_are_started_processes_not_forks() -> None:
    """A worker runs a fresh interpreter (exec), never a fork of a process holding a pool."""
    async def main() -> tuple[list[str], str, int]:
        async with trio_zc.open_pool(max_bytes=1 * MiB) as pool:
            async with images.open_workers(pool, 1) as workers:
                (pid,) = workers.statistics().pids
                image = photo()
                assert await encoded(workers, image, "PNG") == saved(image, "PNG")
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [part.decode() for part in f.read().split(b"\0") if part]
                maps = pathlib.Path(f"/proc/{pid}/maps").read_text()
                nice = os.getpriority(os.PRIO_PROCESS, pid)
        return argv, maps, nice

    argv, maps, nice = trio.run(main)
    assert argv[0] == sys.executable and argv[1:3] == ["-I", "-c"]
    # Linux clamps a nice value at 19 (a suite run under `nice -n 19` starts there).
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + images.DEFAULT_NICE)
    # Its mappings of the pool, after a job: the read-only one of the whole
    # pool, and no other (the job's writable mapping of its lease is gone).
    pool_maps = [line for line in maps.splitlines() if "trio_zc-arena" in line]
    assert len(pool_maps) == 1 and pool_maps[0].split()[1].startswith("r--s"), pool_maps
