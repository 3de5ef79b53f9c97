"""What "no stale bytes" costs, measured as ratios within one run.

trio_zc clears the parts of a new lease that its owner has not overwritten
with write(), just before a view or a seal could expose them, so a lease
never shows (or sends) an earlier image's bytes. (It first zeroed memory on
release; see docs/lifecycle.rst.) This measures a full lease cycle --
acquire, write a whole image, seal, release -- three ways:

- plain:     write the image into one reused bytearray (no pool; the floor)
- unscrubbed: the pool cycle with zeroing switched off (unsafe; for comparison)
- pool:      the real pool cycle (with a whole-image write, nothing to clear)

and, for the record, the alternative of punching the pages out of the memfd
(``fallocate(PUNCH_HOLE)``) so the next writer faults in fresh zero pages.

Run: python benchmarks/stale_bytes.py [--seconds-per-case 0.5]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from collections.abc import Callable

import trio

import trio_zc
from trio_zc._arena import Arena

SIZES = [64 << 10, 1 << 20, 4 << 20, 16 << 20]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def per_call(fn: Callable[[], None], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 5:
            return elapsed / n


async def measure(size: int, seconds: float) -> dict[str, float]:
    image = os.urandom(size)
    plain = bytearray(size)
    results = {"plain": per_call(lambda: plain.__setitem__(slice(None), image), seconds)}
    async with trio_zc.open_pool(max_bytes=2 * size) as pool:

        def cycle() -> None:
            lease = pool.acquire_nowait(size)
            lease.write(image)
            lease.seal().release()

        results["pool"] = per_call(cycle, seconds)
        real_zero = pool._arena.zero
        pool._arena.zero = lambda offset, length: None  # type: ignore[method-assign]
        results["unscrubbed"] = per_call(cycle, seconds)
        pool._arena.zero = real_zero  # type: ignore[method-assign]

        arena: Arena = pool._arena

        def punch_cycle() -> None:
            _libc.fallocate(arena.fd, 3, 0, size)  # PUNCH_HOLE | KEEP_SIZE
            arena.rw[:size] = image

        results["punch"] = per_call(punch_cycle, seconds)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-per-case", type=float, default=0.5)
    args = parser.parse_args()
    print("time per cycle (acquire, write image, seal, release); ratios to 'unscrubbed'")
    print(f"{'size':>8} {'plain':>9} {'unscrubbed':>11} {'pool':>9} {'ratio':>6} {'punch':>9} {'ratio':>6}")
    for size in SIZES:
        r = await measure(size, args.seconds_per_case)
        base = r["unscrubbed"]
        print(
            f"{size >> 10:>6}Ki {r['plain'] * 1e6:>7.0f}us {base * 1e6:>9.0f}us"
            f" {r['pool'] * 1e6:>7.0f}us {r['pool'] / base:>6.2f}"
            f" {r['punch'] * 1e6:>7.0f}us {r['punch'] / base:>6.2f}"
        )


if __name__ == "__main__":
    trio.run(main)
