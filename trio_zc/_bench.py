"""``python -m trio_zc bench``: what sending large buffers costs, kernel by kernel.

Each case sends images of one size through one kernel to a receiver in a
separate process (``_bench_receiver``) over loopback TCP, which checks the
SHA-256 of every image. The sender's side of each image is what an
application does: take a lease, write the image into it, seal it, send it,
let it go. Measured per case: throughput, and the sender process's CPU time
(user + system) per GB. Each case is repeated and the median reported, and
results are compared as ratios within the run: absolute figures on a shared
machine are noise.

Loopback cannot show what zero-copy saves on a real network card: the
kernel copies every zero-copy send at delivery to a local socket.
"""

from __future__ import annotations

import hashlib
import os
import resource
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

import attrs
import trio

from ._bench_receiver import HEADER
from ._policy import ZeroCopyPolicy
from ._pool import open_pool
from ._stream import ZeroCopyStream

#: How many distinct images each case cycles through.
PATTERNS = 4
DEFAULT_SIZES = (64 << 10, 1 << 20, 4 << 20, 16 << 20)
DEFAULT_KERNELS = ("copy", "msg_zerocopy", "io_uring", "sendfile", "auto")


@attrs.frozen
class CaseResult:
    """One kernel at one size, one repetition."""

    kernel: str
    size: int
    images: int
    intact: int
    seconds: float
    cpu_seconds: float

    @property
    def gbytes(self) -> float:
        return self.size * self.images / 1e9

    @property
    def throughput(self) -> float:
        """GB/s."""
        return self.gbytes / self.seconds

    @property
    def cpu_per_gb(self) -> float:
        """Sender CPU seconds per GB."""
        return self.cpu_seconds / self.gbytes


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _images(size: int) -> list[bytes]:
    block = os.urandom(min(size, 1 << 20))
    return [
        bytes([k]) + (block * (size // len(block) + 1))[k + 1 : size + k] for k in range(PATTERNS)
    ]


async def run_case(port: int, kernel: str, size: int, total_bytes: int) -> CaseResult:
    images = _images(size)
    count = max(total_bytes // size, 2 * PATTERNS)
    header = HEADER.pack(size, count, PATTERNS) + b"".join(hashlib.sha256(i).digest() for i in images)
    # Room for a few images in flight.
    pool_bytes = max(4 * size, 16 << 20)
    # "auto" runs as shipped; the named kernels keep zero-copy on although
    # loopback reports every send COPIED, since measuring them is the point.
    policy = ZeroCopyPolicy() if kernel == "auto" else ZeroCopyPolicy(copied_streak=0)
    async with open_pool(max_bytes=pool_bytes, kernel=kernel, policy=policy) as pool:
        stream = ZeroCopyStream(await trio.open_tcp_stream("127.0.0.1", port), pool=pool)
        async with stream:
            await stream.send_all(header)
            cpu0, t0 = _cpu(), time.perf_counter()
            for i in range(count):
                async with pool.lease(size) as lease:
                    lease.write(images[i % PATTERNS])
                    await stream.send_lease(lease.seal())
            answer = b""
            while len(answer) < 8:
                chunk = await stream.receive_some(8 - len(answer))
                if not chunk:
                    raise RuntimeError("the receiver closed without answering")
                answer += chunk
            seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    (intact,) = struct.unpack("!Q", answer)
    return CaseResult(kernel, size, count, intact, seconds, cpu)


@attrs.frozen
class Summary:
    kernel: str
    size: int
    throughput: float
    cpu_per_gb: float
    intact: bool


def summarize(results: Sequence[CaseResult]) -> list[Summary]:
    keys = sorted({(r.size, r.kernel) for r in results})
    out = []
    for size, kernel in keys:
        mine = [r for r in results if (r.size, r.kernel) == (size, kernel)]
        out.append(
            Summary(
                kernel,
                size,
                statistics.median(r.throughput for r in mine),
                statistics.median(r.cpu_per_gb for r in mine),
                all(r.intact == r.images for r in mine),
            )
        )
    return out


def _size_name(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def table(summaries: Sequence[Summary], baseline: str) -> str:
    lines = [
        f"{'size':>8}  {'kernel':<13} {'GB/s':>6} {'ratio':>6}  {'CPU s/GB':>8} {'ratio':>6}  intact",
    ]
    for s in summaries:
        base = next((b for b in summaries if b.size == s.size and b.kernel == baseline), s)
        lines.append(
            f"{_size_name(s.size):>8}  {s.kernel:<13} {s.throughput:6.2f} {s.throughput / base.throughput:6.2f}"
            f"  {s.cpu_per_gb:8.3f} {s.cpu_per_gb / base.cpu_per_gb:6.2f}  {'yes' if s.intact else 'NO'}"
        )
    return "\n".join(lines)


async def run(
    kernels: Sequence[str], sizes: Sequence[int], total_bytes: int, repeat: int, progress: bool
) -> list[CaseResult]:
    receiver = subprocess.Popen(
        [sys.executable, "-m", "trio_zc._bench_receiver"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        results = []
        cases = [(r, s, k) for r in range(repeat) for s in sizes for k in kernels]
        for n, (rep, size, kernel) in enumerate(cases, 1):
            result = await run_case(port, kernel, size, total_bytes)
            results.append(result)
            if progress:
                print(
                    f"[{n}/{len(cases)}] {kernel:<13} {_size_name(size):>7} rep {rep + 1}:"
                    f" {result.throughput:.2f} GB/s, {result.cpu_per_gb:.3f} CPU s/GB,"
                    f" {result.intact}/{result.images} intact",
                    file=sys.stderr,
                    flush=True,
                )
        return results
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(kernels: Sequence[str], sizes: Sequence[int], total_bytes: int, repeat: int) -> int:
    results = trio.run(run, kernels, sizes, total_bytes, repeat, True)
    summaries = summarize(results)
    print(f"median of {repeat} run(s) per case, {total_bytes >> 20} MiB per run; ratios to {kernels[0]!r}")
    print(table(summaries, kernels[0]))
    return 0 if all(s.intact for s in summaries) else 1
