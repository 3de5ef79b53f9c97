"""``python -m trio_zc bench``: the fastest way to write large buffers to a socket, measured.

Every case (:mod:`trio_zc._bench_cases`: trio_zc's kernels and the
baselines a user would otherwise write) sends images of one size to a
receiver in a separate process (:mod:`trio_zc._bench_receiver`) over
loopback TCP, which compares every byte with the image expected. Measured
per case and size: throughput, the sender's CPU time (user + system, every
thread) per GB, per-image latency (from the sender starting on the image to
its last byte arriving; p50 and p99), and the share of bytes the kernel
sent without copying. Each case runs several times, interleaved with the
others so that drift in the machine's speed hits every case alike; the
table gives medians (and the throughput's min and max) and their ratios to
a reference case from the same run: absolute figures on a shared machine
are noise.

The project's own performance targets, its stalled-clients benchmark and
its chart are not part of the package: ``benchmarks/acceptance.py`` runs
this harness and checks them.

Loopback cannot show what zero-copy saves on a real network card: the
kernel copies every zero-copy send when it delivers it to a local socket.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from ._bench_cases import ALL_CASES, KERNEL_CASES, Job, Sent, is_unsafe, run_case
from ._bench_protocol import patterns

#: How many distinct images each case cycles through.
PATTERNS: Final = 4
DEFAULT_SIZES: Final = (16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)
#: At least this many images per case, however large.
MIN_IMAGES: Final = 8
#: The case the table's ratios are to, unless told otherwise.
REFERENCE: Final = "trio-send_all"


@attrs.frozen
class CaseResult:
    """One case at one size, one repetition."""

    case: str
    size: int
    images: int
    intact: int
    received: int
    seconds: float
    cpu_seconds: float
    p50_latency: float
    p99_latency: float
    zerocopy_share: float

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

    @classmethod
    def of(cls, case: str, job: Job, sent: Sent) -> CaseResult:
        latencies = sorted(a - s for a, s in zip(sent.arrivals, sent.starts))
        return cls(
            case,
            job.size,
            job.count,
            sent.intact,
            sent.received,
            sent.seconds,
            sent.cpu_seconds,
            _quantile(latencies, 0.50) / 1e9,
            _quantile(latencies, 0.99) / 1e9,
            sent.zerocopy_share,
        )


def _quantile(values: Sequence[int], q: float) -> float:
    if not values:
        return math.nan
    return float(values[min(len(values) - 1, int(q * len(values)))])


@attrs.frozen
class Summary:
    """The repetitions of one case at one size, summarized."""

    case: str
    size: int
    runs: int
    throughput: float
    throughput_min: float
    throughput_max: float
    cpu_per_gb: float
    p50_latency: float
    p99_latency: float
    zerocopy_share: float
    images: int
    intact: int

    @property
    def all_intact(self) -> bool:
        return self.intact == self.images


def summarize(results: Sequence[CaseResult]) -> list[Summary]:
    """Medians per (case, size), by size, then in the order of ALL_CASES.

    Not in the order the runs came: each repetition runs the cases in its
    own order (see _order), and a table should not change with it.
    """
    rank = {case: i for i, case in enumerate(ALL_CASES)}
    keys = list(dict.fromkeys((r.size, r.case) for r in results))
    keys.sort(key=lambda k: (k[0], rank.get(k[1], len(rank))))
    out = []
    for size, case in keys:
        mine = [r for r in results if (r.size, r.case) == (size, case)]
        throughputs = [r.throughput for r in mine]
        out.append(
            Summary(
                case,
                size,
                len(mine),
                statistics.median(throughputs),
                min(throughputs),
                max(throughputs),
                statistics.median(r.cpu_per_gb for r in mine),
                statistics.median(r.p50_latency for r in mine),
                statistics.median(r.p99_latency for r in mine),
                statistics.median(r.zerocopy_share for r in mine),
                sum(r.images for r in mine),
                sum(r.intact for r in mine),
            )
        )
    return out


def size_name(size: int) -> str:
    """``16 KiB``, ``4 MiB``..."""
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size >= 1 << 10 and size % (1 << 10) == 0:
        return f"{size >> 10} KiB"
    return f"{size} B"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def table(summaries: Sequence[Summary], reference: str = REFERENCE) -> str:
    """The results as a plain-text table, ratios to *reference* at the same size."""
    head = (
        f"{'size':>7}  {'case':<16} {'GB/s':>5} {'(min-max)':>11} {'x ref':>5}"
        f"  {'CPU s/GB':>8} {'x ref':>5}  {'p50 ms':>7} {'p99 ms':>7}  {'zc':>4}  intact"
    )
    lines = [head, "-" * len(head)]
    previous = None
    for s in summaries:
        if previous is not None and s.size != previous:
            lines.append("")
        previous = s.size
        ref = next((b for b in summaries if b.size == s.size and b.case == reference), None)
        tput_ratio = f"{s.throughput / ref.throughput:5.2f}" if ref else "    -"
        cpu_ratio = f"{s.cpu_per_gb / ref.cpu_per_gb:5.2f}" if ref else "    -"
        intact = "all" if s.all_intact else f"{s.intact}/{s.images}" + (" (race)" if is_unsafe(s.case) else "")
        lines.append(
            f"{size_name(s.size):>7}  {s.case:<16} {s.throughput:5.2f} "
            f"{f'{s.throughput_min:.2f}-{s.throughput_max:.2f}':>11} {tput_ratio}"
            f"  {s.cpu_per_gb:8.3f} {cpu_ratio}  {_ms(s.p50_latency):>7} {_ms(s.p99_latency):>7}"
            f"  {s.zerocopy_share * 100:3.0f}%  {intact}"
        )
    return "\n".join(lines)


def _receiver() -> tuple[subprocess.Popen[str], int]:
    receiver = subprocess.Popen(
        [sys.executable, "-m", "trio_zc._bench_receiver"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    return receiver, int(receiver.stdout.readline())


def _stop(receiver: subprocess.Popen[str]) -> None:
    assert receiver.stdin is not None and receiver.stdout is not None
    receiver.stdin.close()  # the receiver exits when its stdin closes
    try:
        receiver.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a wedged receiver
        receiver.kill()
        receiver.wait()
    receiver.stdout.close()


def _order(cases: Sequence[str], key: str) -> list[str]:
    """The cases in the order of one repetition at one size: shuffled, reproducibly.

    In a fixed order, a case ran after the same neighbour every time, and
    one neighbour slows whatever follows it: at 64 KiB the case after
    ``sendfile`` (whose pages the kernel is still giving back) lost 10 to
    15% in every repetition. A different order per repetition spreads that
    over the cases instead of charging it to one.
    """
    order = list(cases)
    random.Random(key).shuffle(order)
    return order


def run(
    cases: Sequence[str],
    sizes: Sequence[int],
    total_bytes: int,
    repeat: int,
    progress: Callable[[str], None] | None = None,
    seed: int = 2026,
) -> list[CaseResult]:
    """Run every case at every size *repeat* times, interleaved; return each run."""
    for case in cases:
        if case not in ALL_CASES:
            raise ValueError(f"unknown case {case!r}; the cases are {', '.join(ALL_CASES)}")
    receiver, port = _receiver()
    try:
        results = []
        plan = [
            (rep, size, case)
            for rep in range(repeat)
            for size in sizes
            for case in _order(cases, f"{seed}/{rep}/{size}")
        ]
        images: dict[int, list[bytes]] = {}
        for n, (rep, size, case) in enumerate(plan, 1):
            if size not in images:
                images.clear()  # one size at a time in memory: 64 MiB images add up
                images[size] = patterns(size, PATTERNS, seed)
            job = Job(port, size, max(total_bytes // size, MIN_IMAGES), seed, images[size])
            result = CaseResult.of(case, job, run_case(case, job))
            results.append(result)
            if progress is not None:
                progress(
                    f"[{n}/{len(plan)}] {size_name(size):>7} {case:<16} rep {rep + 1}:"
                    f" {result.throughput:5.2f} GB/s, {result.cpu_per_gb:.3f} CPU s/GB,"
                    f" p99 {_ms(result.p99_latency)} ms, {result.intact}/{result.images} intact"
                )
        return results
    finally:
        _stop(receiver)


def to_json(results: Sequence[CaseResult]) -> str:
    """Every run's figures, for keeping and charting later."""
    return json.dumps([attrs.asdict(r) for r in results], indent=1)


def from_json(text: str) -> list[CaseResult]:
    return [CaseResult(**row) for row in json.loads(text)]


def corrupt_library_cases(summaries: Sequence[Summary]) -> list[Summary]:
    """trio_zc cases in which any image arrived wrong: a bug, always."""
    return [s for s in summaries if s.case in KERNEL_CASES and not s.all_intact]
