"""The stalled-clients benchmark's mechanics (benchmarks/stalled.py), at a small size.

These tests check that the benchmark measures what it says (every client
connected, every handler parked, the figures read from /proc and reported),
not the performance target itself: CPU shares on a shared machine are noise,
so the 5% figure is for ``run_stalled(1000)`` by hand, not for CI.
"""

from __future__ import annotations

import os

import attrs
import pytest

from benchmarks.stalled import (
    MEMORY_ALLOWANCE,
    StalledBenchError,
    StalledResult,
    _memory,
    _mib,
    run_stalled,
)

CLIENTS = 20
IMAGE = 64 << 10
POOL = 4 << 20


@pytest.mark.parametrize("kernel", ["auto", "msg_zerocopy", "copy"])
def test_smoke(kernel: str) -> None:
    result = run_stalled(CLIENTS, image_size=IMAGE, pool_bytes=POOL, kernel=kernel, settle=0.5, window=0.5)

    assert result.clients == result.connected == CLIENTS
    assert result.kernel == kernel
    assert result.kernel_used in ("copy", "msg_zerocopy", "io_uring")
    # Nobody reads, so every handler is parked: in a send that cannot finish
    # (holding its lease) or, if the pool is short, waiting for memory.
    assert result.images_started > 0
    assert result.images_in_window == 0
    assert result.leases_held + result.tasks_waiting == CLIENTS
    assert result.images_sent < result.images_started

    assert result.window_seconds >= 0.5
    assert 0 <= result.cpu_seconds <= 2 * result.window_seconds
    assert result.cpu_share == pytest.approx(result.cpu_seconds / result.window_seconds)

    # An interpreter with Trio is tens of MiB; nothing here should come near 1 GiB.
    assert 5 << 20 < result.rss_idle_bytes <= result.rss_peak_bytes
    assert 5 << 20 < result.rss_bytes <= result.rss_peak_bytes < 1 << 30
    assert result.rss_shmem_bytes <= POOL + (1 << 20)
    assert result.rss_anon_bytes < result.rss_bytes
    assert result.pool_bytes == POOL
    assert result.memory_limit == POOL + MEMORY_ALLOWANCE

    report = result.format()
    assert f"{CLIENTS} of {CLIENTS} clients connected" in report
    assert f"sends begun {result.images_started}" in report
    assert f"{100 * result.cpu_share:.2f}%" in report
    assert _mib(result.rss_peak_bytes) in report
    assert _mib(result.memory_limit) in report


def _result(**changes: object) -> StalledResult:
    base = StalledResult(
        kernel="copy",
        kernel_used="copy",
        kernel_note=None,
        clients=1000,
        connected=1000,
        image_size=1 << 20,
        images_started=256,
        images_in_window=0,
        images_sent=0,
        tasks_waiting=744,
        leases_held=256,
        fallbacks=(("the pool's kernel is 'copy'", 1000),),
        cpu_seconds=0.1,
        window_seconds=5.0,
        rss_idle_bytes=30 << 20,
        rss_bytes=290 << 20,
        rss_shmem_bytes=256 << 20,
        rss_anon_bytes=24 << 20,
        rss_peak_bytes=290 << 20,
        pool_bytes=256 << 20,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def test_targets() -> None:
    good = _result()
    assert good.cpu_share == pytest.approx(0.02)
    assert good.cpu_ok and good.memory_ok
    assert "MISSED" not in good.format()
    assert "2.00%" in good.format()

    busy = _result(cpu_seconds=0.25)  # exactly 5%: the target is "under"
    assert not busy.cpu_ok and busy.memory_ok
    assert "MISSED" in busy.format()

    fat = _result(rss_peak_bytes=(256 << 20) + MEMORY_ALLOWANCE)
    assert fat.cpu_ok and not fat.memory_ok
    assert "MISSED" in fat.format()


def test_proc_memory_of_self() -> None:
    memory = _memory(os.getpid())
    assert 0 < memory["VmRSS"] <= memory["VmHWM"]


def test_server_failure_is_reported() -> None:
    # The server cannot open its pool: the parent must say why (the
    # server's stderr) and leave no child or pipe behind.
    with pytest.raises(StalledBenchError, match="unknown kernel"):
        run_stalled(2, image_size=IMAGE, pool_bytes=POOL, kernel="no-such-kernel", settle=0, window=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [{"clients": 0}, {"image_size": 2 * POOL}, {"image_size": 0}, {"window": 0.0}, {"settle": -1.0}],
)
def test_arguments_checked(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"clients": 2, "image_size": IMAGE, "pool_bytes": POOL, **kwargs}
    with pytest.raises(ValueError):
        run_stalled(**args)  # type: ignore[arg-type]
