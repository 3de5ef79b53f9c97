from __future__ import annotations

import errno
import hashlib
import mmap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio
from PIL import Image

import trio_zc
from trio_zc import open_pool

from ..conftest import slot_of, start_send, writable_mappings_of

PAGE = mmap.PAGESIZE
MiB = 1 << 20


async def test_protect_sealed_leaves_no_writable_mapping_in_the_process() -> None:
    async with open_pool(max_bytes=MiB, protect_sealed=True) as pool:
        lease = await pool.acquire(3 * PAGE)
        offset = slot_of(lease).offset
        view = lease.view()
        view[:] = b"\x01" * len(view)
        arr = lease.ndarray((3 * PAGE,))
        arr[-1] = 2
        lease.write(b"\x03")
        assert writable_mappings_of(pool, offset, 3 * PAGE)  # the check can fail
        del view, arr
        sealed = lease.seal()
        assert writable_mappings_of(pool, offset, 3 * PAGE) == []
        data = sealed.view().tobytes()
        assert data[0] == 3 and data[1] == 1 and data[-1] == 2
        sealed.release()
        # Released memory is writable (and zero) again for the next lease.
        assert writable_mappings_of(pool, offset, 3 * PAGE)
        again = await pool.acquire(3 * PAGE)
        again.write(b"\x07" * (3 * PAGE))
        resealed = again.seal()
        assert bytes(resealed.view()) == b"\x07" * (3 * PAGE)
        resealed.release()


async def test_without_protect_sealed_the_mapping_stays_writable_but_views_are_read_only() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(PAGE)
        offset = slot_of(lease).offset
        sealed = lease.seal()
        assert writable_mappings_of(pool, offset, PAGE)
        with sealed.view() as view:
            assert view.readonly
        sealed.release()


async def test_protect_sealed_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="protect_sealed must be True or False"):
        async with open_pool(max_bytes=MiB, protect_sealed=1):  # type: ignore[arg-type]
            pass


async def test_sealed_view_is_read_only_at_run_time() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        sealed = (await pool.acquire(PAGE)).seal()
        view = sealed.view()
        assert view.readonly
        with pytest.raises(TypeError):
            view[0] = 1  # type: ignore[index]
        assert hashlib.sha256(view).hexdigest() == hashlib.sha256(bytes(PAGE)).hexdigest()
        view.release()
        sealed.release()


def _memoryview(lease: trio_zc.WritableLease) -> list[Any]:
    return [lease.view()]


def _slice(lease: trio_zc.WritableLease) -> list[Any]:
    return [lease.view()[10:20]]


def _ndarray(lease: trio_zc.WritableLease) -> list[Any]:
    return [lease.ndarray((16, 16), np.uint8)]


def _ndarray_derived(lease: trio_zc.WritableLease) -> list[Any]:
    return [lease.ndarray((16, 16))[2:4, ::2].T]


def _pil_image(lease: trio_zc.WritableLease) -> list[Any]:
    # Pillow maps the buffer (no copy) for these arguments; the image is a view.
    return [Image.frombuffer("L", (16, 16), lease.view(), "raw", "L", 0, 1)]


def _three(lease: trio_zc.WritableLease) -> list[Any]:
    return [lease.view(), lease.ndarray(8), lease.view()[:1]]


@pytest.mark.parametrize(
    ("make", "count"),
    [(_memoryview, 1), (_slice, 1), (_ndarray, 1), (_ndarray_derived, 1), (_pil_image, 1), (_three, 3)],
)
async def test_seal_refuses_while_views_are_alive(
    make: Callable[[trio_zc.WritableLease], list[Any]], count: int
) -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(PAGE)
        views = make(lease)
        with pytest.raises(trio_zc.LiveViewsError, match=f"{count} writable view") as info:
            lease.seal()
        assert info.value.count == count
        with pytest.raises(trio_zc.LiveViewsError):
            lease.release()
        # Nothing changed: the lease is still writable.
        assert pool.statistics().writable_leases == 1
        lease.write(b"still writable")
        views.clear()
        sealed = lease.seal()
        assert sealed.view()[:5].tobytes() == b"still"
        sealed.release()
        assert pool.statistics().free_bytes == MiB


async def test_views_released_explicitly_allow_sealing() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(PAGE)
        view = lease.view()
        part = view[1:3]
        part[:] = b"ok"
        part.release()
        view.release()
        sealed = lease.seal()
        assert sealed.view()[1:3].tobytes() == b"ok"
        sealed.release()


async def test_pil_image_on_a_lease_sees_its_bytes() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(16 * 16)
        lease.ndarray((16, 16))[:] = 200
        img = Image.frombuffer("L", (16, 16), lease.view(), "raw", "L", 0, 1)
        assert img.getpixel((3, 4)) == 200
        del img
        lease.seal().release()


def _writable_uses(lease: trio_zc.WritableLease) -> list[Callable[[], object]]:
    return [
        lambda: lease.nbytes,
        lease.view,
        lambda: lease.ndarray(4),
        lambda: lease.write(b"x"),
        lease.seal,
        lease.release,
    ]


def _sealed_uses(lease: trio_zc.SealedLease) -> list[Callable[[], object]]:
    return [
        lambda: lease.nbytes,
        lambda: lease.adopted,
        lambda: lease.sends_in_flight,
        lease.view,
        lease.release,
    ]


async def test_stale_handles_raise_on_every_use() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(PAGE)
        sealed = lease.seal()
        for use in _writable_uses(lease):
            with pytest.raises(trio_zc.StaleLeaseError, match="sealed"):
                use()
        complete = start_send(sealed)
        sealed.release()
        for use in _sealed_uses(sealed):
            with pytest.raises(trio_zc.StaleLeaseError, match="released"):
                use()
        with pytest.raises(trio_zc.StaleLeaseError):
            await sealed.wait_reusable()
        complete()
        # Still stale after the memory went back and was handed out again.
        again = await pool.acquire(PAGE)
        for use in _sealed_uses(sealed):
            with pytest.raises(trio_zc.StaleLeaseError):
                use()
        again.release()
        unsent = await pool.acquire(PAGE)
        unsent.release()
        for use in _writable_uses(unsent):
            with pytest.raises(trio_zc.StaleLeaseError, match="released"):
                use()


async def test_sealed_lease_may_be_sent_many_times_concurrently() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        sealed = (await pool.acquire(PAGE)).seal()
        completions = [start_send(sealed) for _ in range(5)]
        assert sealed.sends_in_flight == 5
        completions[3]()
        completions[0]()
        assert sealed.sends_in_flight == 3
        sealed.release()
        for complete in completions[1:3]:
            complete()
        assert pool.statistics().draining_leases == 1
        completions[4]()
        assert pool.statistics().draining_leases == 0
        assert pool.statistics().free_bytes == MiB


async def test_memory_is_not_handed_out_while_the_kernel_may_read_it() -> None:
    async with open_pool(max_bytes=PAGE) as pool:
        lease = await pool.acquire(PAGE)
        lease.write(b"image one")
        sealed = lease.seal()
        complete = start_send(sealed)
        sealed.release()
        with pytest.raises(trio.WouldBlock):
            pool.acquire_nowait(PAGE)
        assert pool._arena.readonly[:9].tobytes() == b"image one"
        complete()
        pool.acquire_nowait(PAGE).release()


@pytest.mark.parametrize(("nbytes", "error"), [(0, ValueError), (PAGE + 1, ValueError), (-3, ValueError),
                                                (2.0, TypeError), (True, TypeError)])
async def test_bad_seal_lengths_change_nothing(nbytes: object, error: type[Exception]) -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(PAGE)
        with pytest.raises(error):
            lease.seal(nbytes)  # type: ignore[arg-type]
        sealed = lease.seal(1)
        assert sealed.nbytes == 1
        sealed.release()


async def test_bad_writes_change_nothing() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(8)
        with pytest.raises(ValueError, match="overruns"):
            lease.write(b"123456789")
        with pytest.raises(ValueError, match="overruns"):
            lease.write(b"12", 7)
        with pytest.raises(ValueError):
            lease.write(b"1", -1)
        with pytest.raises(TypeError):
            lease.write(b"1", 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            lease.write("text")
        with pytest.raises(ValueError, match="contiguous"):
            lease.write(np.zeros((2, 4), np.uint8)[:, ::2])
        assert lease.write(np.array([1, 2], dtype=np.uint16), 4) == 8
        sealed = lease.seal()
        assert sealed.view().tobytes() == b"\0\0\0\0\x01\0\x02\0"
        sealed.release()


async def test_ndarray_checks_its_size() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        lease = await pool.acquire(100)
        with pytest.raises(ValueError, match="needs 800 bytes"):
            lease.ndarray((10, 10), np.float64)
        with pytest.raises(ValueError, match="shape"):
            lease.ndarray((-1, 2))
        arr = lease.ndarray((5, 5), np.float32)
        arr[:] = 1.5
        del arr
        sealed = lease.seal()
        assert np.frombuffer(sealed.view(), np.float32)[:25].tolist() == [1.5] * 25
        sealed.release()


async def test_sealing_short_gives_the_unused_pages_back_zeroed() -> None:
    async with open_pool(max_bytes=16 * PAGE) as pool:
        lease = await pool.acquire(10 * PAGE)
        lease.write(b"\xee" * (10 * PAGE))
        sealed = lease.seal(PAGE + 10)
        assert sealed.nbytes == PAGE + 10
        assert pool.statistics().free_bytes == 14 * PAGE  # two pages kept, eight back
        tail = await pool.acquire(8 * PAGE)
        view = tail.view()
        assert view.tobytes() == bytes(8 * PAGE)  # nothing of the first image
        view.release()
        tail.release()
        assert bytes(sealed.view()) == b"\xee" * (PAGE + 10)
        sealed.release()
        again = await pool.acquire(16 * PAGE)
        view = again.view()
        assert view.tobytes() == bytes(16 * PAGE)
        view.release()
        again.release()


async def test_a_seal_whose_page_protection_fails_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # mprotect fails for real when the process runs out of mappings
    # (vm.max_map_count): each protected range splits the arena's mapping.
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy", protect_sealed=True) as pool:
        lease = pool.acquire_nowait(5 * 4096)
        lease.write(b"x" * 5 * 4096)
        before = pool.statistics()

        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOMEM, "mprotect failed: Cannot allocate memory")

        monkeypatch.setattr(pool._arena, "protect", fail)
        with pytest.raises(OSError, match="mprotect"):
            lease.seal(4096)
        assert lease.nbytes == 5 * 4096
        assert pool.statistics() == before  # no page given back, nothing sealed
        monkeypatch.undo()
        sealed = lease.seal(4096)
        assert sealed.nbytes == 4096
        assert pool.statistics().free_bytes == before.free_bytes + 4 * 4096
        sealed.release()
