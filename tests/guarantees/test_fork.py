"""After ``fork()``, the child can neither use the parent's pool nor write its images.

A forked child inherits the pool's memory (a shared memfd mapping) but not
the parent's later bookkeeping. At 70a1a5f a ``WritableLease`` stayed
writable in the child after the parent sealed it, and the child's pool
handed out memory the parent had leased: the receiver got the child's
bytes, on every kernel, ``protect_sealed=True`` included. Now, in the
child, the pool and every lease handle refuse to work with an error that
says why, and the child's mappings of the pool are private copies, so even
a view it kept from before the fork cannot reach the parent's memory.

The child runs no Trio code: it makes its attempts, reports them through a
pipe, and leaves with ``os._exit``.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import trio

import trio_zc

from ..streams import ALWAYS_ZC, KERNELS, kernel, pattern, receive_exactly, stream_pair

SIZE = 1 << 20


def in_child(attempts: dict[str, object]) -> dict[str, str]:
    """Fork; in the child, call each attempt and report what it raised ("ok" if nothing)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock;
        # the child here only runs the attempts below and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's own coverage is not collected
        try:
            os.close(read_end)
            report = {}
            for what, attempt in attempts.items():
                try:
                    attempt()  # type: ignore[operator]
                    report[what] = "ok"
                except BaseException as exc:  # noqa: B036 - reported, whatever it is
                    report[what] = f"{type(exc).__name__}: {exc}"
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, str] = json.loads(text)
    return result


@pytest.mark.parametrize("protect", [False, True], ids=["plain", "protect_sealed"])
@pytest.mark.parametrize("name", KERNELS)
async def test_a_forked_child_cannot_write_or_lease_the_parents_images(name: str, protect: bool) -> None:
    image, other = pattern(SIZE, 1), pattern(SIZE, 2)
    async with trio_zc.open_pool(
        max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC, protect_sealed=protect
    ) as pool:
        stream, peer = await stream_pair(pool)
        writable = await pool.acquire(SIZE)
        writable.write(image)
        kept = await pool.acquire(SIZE)
        kept.write(other)
        kept_view = kept.view()  # a view held across the fork
        free_before = pool.statistics().free_bytes

        def write_lease() -> None:
            writable.write(b"C" * SIZE)

        def lease_more() -> None:
            child_lease = pool.acquire_nowait(SIZE)
            child_lease.write(b"C" * SIZE)

        def write_kept_view() -> None:
            kept_view[:] = b"C" * SIZE

        report = in_child(
            {
                "write": write_lease,
                "acquire": lease_more,
                "view": write_kept_view,
                "seal": lambda: writable.seal(),
            }
        )
        assert report["write"].startswith("StaleLeaseError") and "forked" in report["write"], report
        assert report["seal"].startswith("StaleLeaseError") and "forked" in report["seal"], report
        assert report["acquire"].startswith("ClosedResourceError") and "fork" in report["acquire"], report
        # The child's view wrote into a private copy, never into the parent's pages.
        assert report["view"] == "ok"
        assert bytes(kept_view[:16]) == other[:16]
        kept_view.release()
        assert pool.statistics().free_bytes == free_before
        # The parent goes on: its images are intact on the wire.
        sealed, sealed_kept = writable.seal(), kept.seal()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            assert await receive_exactly(peer, SIZE) == image
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed_kept)
            assert await receive_exactly(peer, SIZE) == other
        sealed.release()
        sealed_kept.release()
        await stream.aclose()
        await peer.aclose()


async def test_a_forked_childs_sealed_leases_and_scopes_refuse_too() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        lease = pool.acquire_nowait(4096)
        lease.write(b"x" * 4096)
        sealed = lease.seal()
        report = in_child(
            {
                "release": lambda: sealed.release(),
                "view": lambda: sealed.view(),
                "adopt": lambda: pool.adopt(b"mine"),
                "statistics": lambda: pool.statistics(),
            }
        )
        assert report["release"].startswith("StaleLeaseError") and "forked" in report["release"]
        assert report["view"].startswith("StaleLeaseError")
        assert report["adopt"].startswith("ClosedResourceError") and "fork" in report["adopt"]
        assert report["statistics"] == "ok"  # reading statistics is harmless
        # In the parent, nothing changed.
        assert bytes(sealed.view()[:4]) == b"xxxx"
        sealed.release()
