"""open_pool with a max_bytes the machine cannot map: a clear error, nothing left open (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import trio_zc

from ..streams import KERNELS, kernel


def open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


async def refused(max_bytes: int, kernel_name: str) -> BaseException:
    before = open_fds()
    with pytest.raises((ValueError, OSError)) as caught:
        async with trio_zc.open_pool(max_bytes=max_bytes, kernel=kernel(kernel_name)):
            raise AssertionError("unreachable: the pool must be refused")
    assert open_fds() == before, "a file descriptor was left open"
    return caught.value


@pytest.mark.parametrize("kernel_name", [*KERNELS, "auto"])
@pytest.mark.parametrize("max_bytes", [2**63, 2**64, 10**30])
async def test_a_size_past_what_any_process_can_map_is_a_value_error(kernel_name: str, max_bytes: int) -> None:
    error = await refused(max_bytes, kernel_name)
    assert type(error) is ValueError
    assert f"max_bytes must be at most {sys.maxsize} (sys.maxsize" in str(error)
    assert str(max_bytes) in str(error)


# Sizes no 64-bit Linux maps (user address space is at most 2**56 bytes with
# 5-level page tables): the mapping fails before any kernel sees the arena.
@pytest.mark.parametrize("kernel_name", [*KERNELS, "auto"])
@pytest.mark.parametrize("max_bytes", [2**62, sys.maxsize])
async def test_a_size_larger_than_the_address_space_says_which_limit(kernel_name: str, max_bytes: int) -> None:
    error = await refused(max_bytes, kernel_name)
    assert type(error) is OSError
    size = max_bytes - max_bytes % 4096
    assert str(error).startswith(f"[Errno 12] cannot map a pool of {size} bytes (Cannot allocate memory):")
    assert "more address space than this process has free" in str(error)


_CHILD = textwrap.dedent(
    """
    import os, resource, sys, trio, trio_zc
    limit = getattr(resource, sys.argv[1])
    resource.setrlimit(limit, (2**30, resource.getrlimit(limit)[1]))
    async def main():
        before = sorted(os.listdir("/proc/self/fd"))
        try:
            async with trio_zc.open_pool(max_bytes=2**32, kernel="copy"):
                print("opened")
        except OSError as exc:
            print(exc)
        assert sorted(os.listdir("/proc/self/fd")) == before, "a file descriptor was left open"
    trio.run(main)
    """
)


@pytest.mark.parametrize(
    ("limit", "says"),
    [
        ("RLIMIT_AS", "more address space than this process has free (its RLIMIT_AS is 1073741824 bytes)"),
        ("RLIMIT_FSIZE", "(File too large): larger than the files this process may make (RLIMIT_FSIZE: 1073741824)"),
    ],
)
def test_a_resource_limit_is_named(limit: str, says: str) -> None:
    # In a child: the limits would bind the whole test process.
    root = os.path.dirname(os.path.dirname(os.path.abspath(trio_zc.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, limit], capture_output=True, text=True, timeout=120, env=env, cwd=root
    )
    assert done.returncode == 0, done.stderr
    assert says in done.stdout, done.stdout


def shmem_resident_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    raise AssertionError("no RssShmem in /proc/self/status")


async def test_an_io_uring_pool_does_not_take_all_its_memory_when_it_opens() -> None:
    size = 256 << 20
    before = shmem_resident_kib()
    async with trio_zc.open_pool(max_bytes=size, kernel="io_uring") as pool:
        if not getattr(pool._kernel, "fixed", False):
            pytest.skip(f"the arena is not registered as fixed buffers here: {pool.statistics().kernel_note}")
        grown = shmem_resident_kib() - before
    # A pool's memory is used as leases are written, like the other kernels' pools.
    assert grown < (size >> 10) // 4, f"{grown} KiB of the {size >> 10} KiB arena resident at open"
