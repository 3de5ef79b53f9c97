"""The project's acceptance run: ``python -m trio_zc bench``, checked against the targets.

It runs what the user's ``bench`` runs (every case at every size, then the
lease cycles on the mock kernel) with the same options, then the
stalled-clients benchmark (:mod:`benchmarks.stalled`), and ends with the
project's performance targets, each a ratio of medians from this one run
(absolute figures on a shared machine are noise), marked ``met`` or
``MISS``. ``--chart`` draws the figure in docs/benchmarks.rst
(:mod:`benchmarks.chart`); ``--check-targets`` makes a missed target the
exit status (3). A corrupted image in one of trio_zc's own cases always
makes it 1. Every option is checked before anything runs (a chart without
Pillow, a figures file in a missing folder, an unknown kernel): a mistake is
one line on standard error and exit status 2, not minutes of measurement
thrown away.

Run (from the repository, with trio_zc installed or on PYTHONPATH):
python benchmarks/acceptance.py [bench options] [--stalled 1000] [--chart PNG] [--check-targets]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

import attrs

from trio_zc import _bench, _bench_cli
from trio_zc.__main__ import _Parser
from trio_zc._kernels._choice import KERNEL_NAMES

if not __package__:
    # Run as a file: its siblings are imported as the package ``benchmarks``.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.goals import CYCLES_TARGET, GOALS, figure
from benchmarks.stalled import CPU_TARGET, run_stalled



@attrs.frozen
class Target:
    """One performance target and how this run did against it."""

    name: str
    ratio: float
    limit: float
    #: True when the ratio must be at least *limit*, False when at most.
    at_least: bool

    @property
    def met(self) -> bool:
        return self.ratio >= self.limit if self.at_least else self.ratio <= self.limit

    def describe(self) -> str:
        sign = ">=" if self.at_least else "<="
        shown = figure(self.ratio, self.limit, self.met, self.at_least)
        return f"{'met ' if self.met else 'MISS'}  {self.name}: {shown} (target {sign} {self.limit})"


def targets(summaries: Sequence[_bench.Summary]) -> list[Target]:
    """The throughput and CPU targets (:data:`benchmarks.goals.GOALS`) that this run has the cases for."""
    by = {(s.case, s.size): s for s in summaries}
    out = []
    for goal in GOALS:
        a, b = by.get((goal.case, goal.size)), by.get((goal.base, goal.size))
        if a is not None and b is not None:
            ratio = getattr(a, goal.measure) / getattr(b, goal.measure)
            out.append(Target(goal.name, ratio, goal.limit, goal.at_least))
    return out


def _parser() -> argparse.ArgumentParser:
    # One-line mistakes, like python -m trio_zc's subcommands.
    parser = _Parser(
        prog="python benchmarks/acceptance.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        one_line_errors=True,
    )
    _bench_cli.add_arguments(parser)
    parser.add_argument("--stalled", type=int, default=1000, help="stalled clients to hold (0: skip)")
    parser.add_argument("--stalled-kernel", default="auto", help="the stalled-clients server's kernel (auto)")
    parser.add_argument(
        "--stalled-settle", type=float, default=3.0, help="seconds for the stalled sends to block (3)"
    )
    parser.add_argument(
        "--stalled-window", type=float, default=5.0, help="seconds the stalled server is measured (5)"
    )
    parser.add_argument("--chart", metavar="PNG", help="also draw throughput and CPU per GB to PNG (needs Pillow)")
    parser.add_argument(
        "--check-targets", action="store_true", help="exit with status 3 if a performance target is missed"
    )
    return parser


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with *args*, in one line that says what to do; None if nothing.

    The ``bench`` options first (:func:`trio_zc._bench_cli.check`), then this
    script's own, all before anything runs.
    """
    problem = _bench_cli.check(args)
    if problem:
        return problem
    if args.stalled < 0:
        return f"--stalled must be 0 (skip) or more, not {args.stalled}"
    if args.stalled_settle < 0:
        return f"--stalled-settle must be 0 or more seconds, not {args.stalled_settle}"
    if args.stalled_window <= 0:
        return f"--stalled-window must be more than 0 seconds, not {args.stalled_window}"
    if args.stalled_kernel not in KERNEL_NAMES:
        return f"--stalled-kernel: unknown kernel {args.stalled_kernel!r}; the kernels are {', '.join(KERNEL_NAMES)}"
    if args.chart:
        if importlib.util.find_spec("PIL") is None:
            return (
                "--chart needs Pillow, which is not installed: pip install Pillow"
                " (or install trio_zc with the [images] extra), or leave out --chart"
            )
        problem = _bench_cli.unwritable(args.chart)
        if problem:
            return f"--chart: {problem}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Check the options, run and report.

    Exit status: 0; 1 if an image arrived corrupted; 2 for a bad option
    (before anything runs); 3 if a target was missed (with ``--check-targets``).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    problem = check(args)
    if problem:
        parser.error(problem)
    summaries = _bench_cli.report_cases(args)
    found = targets(summaries)
    if args.chart and summaries:
        from benchmarks.chart import chart_series, render_chart

        render_chart(chart_series(summaries), args.chart, title="trio_zc bench, loopback TCP (medians)")
        print(f"\nchart: {args.chart}")
    cycles = _bench_cli.report_cycles(args)
    if cycles is not None:
        found.append(
            Target(
                f"lease cycles per second / {CYCLES_TARGET:,}", cycles.per_second / CYCLES_TARGET, 1.0, True
            )
        )
    if args.stalled and not args.from_json:
        _bench_cli.progress(f"stalled clients: {args.stalled}...")
        stalled = run_stalled(
            args.stalled,
            kernel=args.stalled_kernel,
            settle=args.stalled_settle,
            window=args.stalled_window,
            progress=True,
        )
        print()
        print(stalled.format())
        found.append(
            Target(
                f"stalled clients: server CPU share / {CPU_TARGET:.0%}", stalled.cpu_share / CPU_TARGET, 1.0, False
            )
        )
        found.append(
            Target(
                "stalled clients: server peak RSS / (pool + 64 MiB)",
                stalled.rss_peak_bytes / stalled.memory_limit,
                1.0,
                False,
            )
        )
    if found:
        print("\ntargets:")
        for target in found:
            print("  " + target.describe())
    if _bench_cli.report_corrupt(summaries):
        return 1
    if args.check_targets and not all(t.met for t in found):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
