"""What the objects behind views can do, and views the application never got.

- The ``obj`` of every sealed view is the pool's read-only ``mmap`` of its
  memfd. At b591049 that mapping came from the memfd's read-write
  descriptor, so the kernel let it become writable again: its own
  ``madvise(mmap.MADV_REMOVE)`` punched the pool's pages out of the memfd
  (every sealed lease, the ones being sent included, read as zeros: the
  peer of a send still waiting received zeros), and ``mprotect`` on its
  address (ctypes) made it writable. It is now mapped from a descriptor
  opened read-only: the kernel refuses both.
- A ``WritableLease.ndarray()`` that NumPy refuses (an object or zero-size
  dtype) made a view first, and the exception's traceback kept it alive:
  the next ``seal()`` raised :class:`~trio_zc.LiveViewsError` about a view
  the application never had. The refused view is now released.
- Pinned: with ``protect_sealed=True``, a NumPy ``as_strided`` view that
  reaches past a writable lease into a sealed neighbour faults instead of
  changing it (checked in a child process); arrays and views made by many
  threads at once never change a lease once it is sealed.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import signal
import subprocess
import sys
import textwrap
import threading

import numpy
import pytest
import trio

import trio_zc
from trio_zc._address import buffer_address

from ..streams import KERNELS, pattern, sealed_with, send_while_stalled

SIZE = 4 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@pytest.mark.parametrize("name", KERNELS)
async def test_madvise_remove_through_a_sealed_views_object_cannot_change_a_send_in_flight(name: str) -> None:
    data = pattern(SIZE, 7)
    seen: list[bool] = []

    async def attack(pool: trio_zc.BufferPool, in_flight: trio_zc.SealedLease) -> None:
        other = await sealed_with(pool, b"o" * 4096)
        arena = other.view().obj  # type: ignore[attr-defined]
        try:
            arena.madvise(mmap.MADV_REMOVE)  # the whole arena
        except OSError as exc:
            assert exc.errno == errno.EACCES
        finally:
            del arena
        seen.append(bytes(other.view()) == b"o" * 4096 and bytes(in_flight.view()) == data)
        other.release()

    got = await send_while_stalled(name, data, attack)
    assert got == data, f"the peer got {got.count(bytes(4096))} pages of zeros"
    assert seen == [True]


async def test_a_sealed_views_mapping_cannot_be_made_writable() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        sealed = await sealed_with(pool, b"s" * 4096)
        address = buffer_address(sealed.view())
        result = _libc.mprotect(address, 4096, mmap.PROT_READ | mmap.PROT_WRITE)
        if result == 0:
            ctypes.memmove(address, b"XXXX", 4)  # what the old mapping allowed
        assert result != 0 and ctypes.get_errno() == errno.EACCES
        assert bytes(sealed.view()[:4]) == b"ssss"
        sealed.release()


@pytest.mark.parametrize("dtype", [object, [("a", object)], (numpy.uint8, (0,)), "V0"], ids=str)
async def test_an_ndarray_numpy_refuses_leaves_no_view_behind(dtype: object) -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        lease = await pool.acquire(4096)
        with pytest.raises(ValueError) as refused:
            lease.ndarray((4,), dtype=dtype)  # type: ignore[arg-type]
        # The exception (and its traceback) is still alive here.
        assert refused.value is not None
        lease.seal().release()


def test_as_strided_past_a_lease_into_a_sealed_neighbour_faults_with_protect_sealed() -> None:
    child = textwrap.dedent(
        """
        import numpy, trio, trio_zc
        from numpy.lib.stride_tricks import as_strided

        async def main():
            async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy", protect_sealed=True) as pool:
                writable = pool.acquire_nowait(4096)
                neighbour = pool.acquire_nowait(4096)
                neighbour.write(b"N" * 4096)
                sealed = neighbour.seal()
                array = writable.ndarray((4096,))
                reach = as_strided(array, shape=(8192,), strides=(1,))  # numpy does not check bounds
                reach[4096:4100] = ord("X")
                print(bytes(sealed.view()[:4]).decode(), flush=True)

        trio.run(main)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert "XXXX" not in proc.stdout, "a write past the lease changed its sealed neighbour"
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr)


async def test_arrays_and_views_from_many_threads_never_change_a_sealed_lease() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            for round_ in range(40):
                lease = await pool.acquire(8192)
                started = threading.Event()
                errors: list[str] = []

                def writer(
                    seed: int, lease: trio_zc.WritableLease, started: threading.Event, errors: list[str]
                ) -> None:
                    for i in range(200):
                        try:
                            if i % 2:
                                array = lease.ndarray((2, 4096))
                                array[:] = seed
                                del array
                            else:
                                view = lease.view()
                                view[:] = bytes([seed]) * 8192
                                view.release()
                            started.set()
                        except trio_zc.StaleLeaseError:
                            return
                        except BaseException as exc:  # noqa: B036 - reported
                            errors.append(repr(exc))
                            return

                threads = [
                    threading.Thread(target=writer, args=(i + 1, lease, started, errors)) for i in range(3)
                ]
                for t in threads:
                    t.start()
                with trio.fail_after(10):
                    while not started.is_set():
                        await trio.sleep(0.001)
                    sealed = None
                    while sealed is None:
                        try:
                            sealed = lease.seal()
                        except (trio_zc.LiveViewsError, trio.BusyResourceError):
                            await trio.sleep(0)
                promised = sealed.view().tobytes()
                for t in threads:
                    t.join()
                assert not errors, errors
                assert sealed.view().tobytes() == promised, f"round {round_}: a thread wrote after the seal"
                sealed.release()
        finally:
            sys.setswitchinterval(old)
