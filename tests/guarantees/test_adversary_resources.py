"""Many pools, tiny pools, no descriptors left: nothing kept, errors that say which limit.

- Opening and closing pools kept every closed arena object for the life of
  the process at b591049 (about 1.4 KB a pool, in the registry that
  ``adopt()`` checks): a server that opens a pool per connection grew
  without bound. Closed arenas with nothing mapped are now forgotten.
- A pool opened with no file descriptor left said "cannot map a pool ...:
  the kernel refused"; it now names ``RLIMIT_NOFILE`` (the ``copy`` and
  ``sendfile`` kernels; the others fail earlier, on their own epoll or ring,
  with the system's "Too many open files").
- Pinned: the smallest pools, many at once, on every kernel, send their
  one page intact, and a pool opened once descriptors are back works.
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import subprocess
import sys
import textwrap
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

import trio_zc
from trio_zc._arena import Arena

from ..streams import KERNELS, kernel, receive_exactly, stream_pair

PAGE = mmap.PAGESIZE
REPO = Path(__file__).resolve().parents[2]


def live_arenas() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Arena))


@pytest.mark.parametrize("name", KERNELS)
async def test_opening_and_closing_many_pools_keeps_nothing(name: str) -> None:
    async def one_pool() -> None:
        async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=kernel(name)) as pool:
            lease = await pool.acquire(PAGE)
            lease.write(b"x" * PAGE)
            lease.seal().release()

    await one_pool()  # first-use costs (the io_uring probe) out of the way
    arenas, fds = live_arenas(), sorted(os.listdir("/proc/self/fd"))
    for _ in range(200):
        await one_pool()
    assert live_arenas() - arenas < 5, "closed pools' arenas are kept"
    assert sorted(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("name", KERNELS)
async def test_many_one_page_pools_at_once_each_send_their_page_intact(name: str) -> None:
    async with AsyncExitStack() as stack:
        pairs = []
        for i in range(40):
            try:
                pool = await stack.enter_async_context(trio_zc.open_pool(max_bytes=PAGE, kernel=kernel(name)))
            except ValueError as exc:
                # sendfile with shared-memory huge pages on: a lease takes a whole folio.
                assert "allocation unit" in str(exc)
                pytest.skip(str(exc))
            with pytest.raises(ValueError):
                pool.acquire_nowait(PAGE + 1)
            stream, peer = await stream_pair(pool)
            lease = pool.acquire_nowait(PAGE)
            lease.write(bytes([i]) * 7)
            pairs.append((pool, stream, peer, lease.seal(7)))
        async with trio.open_nursery() as nursery:
            for _, stream, _, sealed in pairs:
                nursery.start_soon(stream.send_lease, sealed)
            for i, (_, _, peer, _) in enumerate(pairs):
                assert await receive_exactly(peer, 7) == bytes([i]) * 7
        for pool, stream, peer, sealed in pairs:
            sealed.release()
            await stream.aclose()
            await peer.aclose()
            # Sealing 7 bytes gave no page back (there is only one), and it is free again.
            assert pool.statistics().free_bytes == PAGE


_CHILD = textwrap.dedent(
    """
    import errno, json, os, resource, sys, trio, trio_zc
    name = sys.argv[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async def main():
        report = {}
        spare = []
        try:
            while True:
                spare.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            async with trio_zc.open_pool(max_bytes=1 << 20, kernel=name):
                report["full"] = "opened"
        except OSError as exc:
            report["full"] = [exc.errno, str(exc)]
        for fd in spare:
            os.close(fd)
        async with trio_zc.open_pool(max_bytes=1 << 20, kernel=name) as pool:
            a, b = trio.socket.socketpair()
            stream = trio_zc.ZeroCopyStream(a, pool=pool)
            lease = await pool.acquire(100_000)
            lease.write(b"z" * 100_000)
            sealed = lease.seal()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_lease, sealed)
                got = b""
                while len(got) < 100_000:
                    got += await b.recv(1 << 20)
            report["after"] = got == b"z" * 100_000
            sealed.release()
            await stream.aclose()
            b.close()
        print(json.dumps(report))

    trio.run(main)
    """
)


@pytest.mark.parametrize("name", [k for k in KERNELS if k != "mock"])
def test_a_pool_opened_with_no_descriptor_left_says_which_limit(name: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, name], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    code, message = report["full"]
    assert code == 24, report  # EMFILE
    assert "RLIMIT_NOFILE" in message or "Too many open files" in message, message
    assert "the kernel refused" not in message, message
    assert report["after"] is True
