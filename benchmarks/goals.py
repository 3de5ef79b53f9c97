"""The project's performance targets (issue 21), in one place for every benchmark script.

:mod:`benchmarks.acceptance` checks them on one run of ``python -m trio_zc
bench``; :mod:`benchmarks.long_run` checks them on every run of its long
protocol and judges each on the worst run. Each throughput or CPU target is
a ratio of two cases measured in the same run, never an absolute figure,
because this kind of machine is shared and its speed drifts; the lease-cycle
target is the one absolute rate (the mock kernel needs no receiver).
"""

from __future__ import annotations

from typing import Final

import attrs

KiB, MiB = 1 << 10, 1 << 20

#: Full lease cycles per second the mock kernel must reach (one stream, 1 KiB payloads).
CYCLES_TARGET: Final = 100_000


@attrs.frozen
class Goal:
    """One target: *case* / *base* at *size*, in *measure*, against *limit*."""

    name: str
    size: int
    case: str
    base: str
    #: ``"throughput"`` or ``"cpu_per_gb"`` (an attribute of :class:`trio_zc._bench.CaseResult`).
    measure: str
    limit: float
    #: True when the ratio must be at least *limit*, False when at most.
    at_least: bool

    def holds(self, ratio: float) -> bool:
        return ratio >= self.limit if self.at_least else ratio <= self.limit


GOALS: Final = (
    Goal("4 MiB auto / C blocking sendall loop, throughput", 4 * MiB, "auto", "blocking", "throughput", 1.0, True),
    Goal("4 MiB auto / trio send_all, throughput", 4 * MiB, "auto", "trio-send_all", "throughput", 1.4, True),
    Goal("4 MiB auto / trio send_all, CPU per GB", 4 * MiB, "auto", "trio-send_all", "cpu_per_gb", 0.6, False),
    Goal("64 KiB auto / trio send_all, throughput", 64 * KiB, "auto", "trio-send_all", "throughput", 1.2, True),
    Goal("16 KiB auto / trio send_all, throughput", 16 * KiB, "auto", "trio-send_all", "throughput", 1.0, True),
)


def figure(ratio: float, limit: float, met: bool, at_least: bool) -> str:
    """*ratio* with two decimals, or as many more as it takes to tell the truth.

    Rounded to two decimals, 99,784 cycles/s against a target of 100,000
    would print as 1.00, as if met. A figure is printed with the fewest
    digits (two or more) whose value is on the same side of *limit* as *ratio*.
    """
    for digits in range(2, 16):
        text = f"{ratio:.{digits}f}"
        shown = float(text)
        if (shown >= limit if at_least else shown <= limit) == met:
            return text
    return repr(ratio)
