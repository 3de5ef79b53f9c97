"""The ``bench`` command line: options, running each part, the report."""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

from . import _bench
from ._bench_cases import ALL_CASES
from ._kernels._choice import KERNEL_NAMES


_DEFAULT_BYTES = 512 << 20
_DEFAULT_REPEAT = 3
_DEFAULT_RUNS = len(ALL_CASES) * len(_bench.DEFAULT_SIZES) * _DEFAULT_REPEAT

# The times and memory below were measured (python -m trio_zc bench, under
# /usr/bin/time) on the development machine; the counts are computed.
DESCRIPTION = f"""\
Measure every way trio_zc can send an image, and the ways you would otherwise
write it, against a receiver process on loopback TCP that checks every byte
(docs/benchmarks.rst says what each figure means).

What the defaults cost: every case ({len(ALL_CASES)}) at every size ({len(_bench.DEFAULT_SIZES)}), \
{_DEFAULT_BYTES >> 20} MiB each,
{_DEFAULT_REPEAT} times -- {_DEFAULT_RUNS} runs sending about \
{_DEFAULT_RUNS * _DEFAULT_BYTES / 2**30:.0f} GiB over loopback -- then {_DEFAULT_REPEAT} x 100,000
lease cycles and 1,000 stalled clients. That took 2 min 25 s on a shared
2-core machine (Linux 6.18; 43 s with --repeat 1), and the sending process
peaked at 570 MB of memory (the 64 MiB images). A quick look, in about 5 s:
  python -m trio_zc bench --sizes 64K,4M --bytes 64M --repeat 1 --stalled 0
"""


def parse_size(text: str) -> int:
    """``64K``, ``4MiB``, ``1g``, ``4096`` -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    clean = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if clean and clean[-1] in units:
            return int(float(clean[:-1]) * units[clean[-1]])
        return int(clean)
    except (ValueError, OverflowError):  # OverflowError: "infk"
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64K, 4M, 1G)") from None


def _sizes(text: str) -> list[int]:
    sizes = [parse_size(x) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("give at least one positive size")
    return sizes


def _cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown}; the cases are {', '.join(ALL_CASES)}")
    return cases


def add_arguments(bench: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    bench.add_argument(
        "--cases",
        type=_cases,
        default=list(ALL_CASES),
        help=f"comma-separated cases (default: all of {','.join(ALL_CASES)})",
    )
    bench.add_argument(
        "--sizes",
        type=_sizes,
        default=list(_bench.DEFAULT_SIZES),
        help="comma-separated image sizes (default 16K,64K,256K,1M,4M,16M,64M)",
    )
    bench.add_argument(
        "--bytes", type=parse_size, default=_DEFAULT_BYTES, help="bytes per case, size and repetition (512M)"
    )
    bench.add_argument("--repeat", type=int, default=_DEFAULT_REPEAT, help="repetitions per case; medians reported (3)")
    bench.add_argument(
        "--reference", default=_bench.REFERENCE, help=f"the case ratios are relative to ({_bench.REFERENCE})"
    )
    bench.add_argument("--cycles", type=int, default=100_000, help="lease cycles on the mock kernel (0: skip)")
    bench.add_argument("--stalled", type=int, default=1000, help="stalled clients to hold (0: skip)")
    bench.add_argument("--stalled-kernel", default="auto", help="the stalled-clients server's kernel (auto)")
    bench.add_argument("--json", metavar="FILE", help="also write every run's figures to FILE")
    bench.add_argument("--from-json", metavar="FILE", help="report on runs saved with --json instead of running")
    bench.add_argument("--chart", metavar="PNG", help="also draw throughput and CPU per GB to PNG (needs Pillow)")
    bench.add_argument(
        "--check-targets", action="store_true", help="exit with status 3 if a performance target is missed"
    )


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with *args*, in one line that says what to do; None if nothing.

    Everything is checked before anything runs: a mistake found after the
    benchmark (a chart without Pillow, a figures file in a missing folder)
    used to throw away many minutes of measurement.
    """
    for option in ("repeat", "bytes"):
        if getattr(args, option) < 1:
            return f"--{option} must be at least 1, not {getattr(args, option)}"
    for option in ("cycles", "stalled"):
        if getattr(args, option) < 0:
            return f"--{option} must be 0 (skip) or more, not {getattr(args, option)}"
    if args.reference not in ALL_CASES:
        return f"--reference: unknown case {args.reference!r}; the cases are {', '.join(ALL_CASES)}"
    if args.stalled_kernel not in KERNEL_NAMES:
        return f"--stalled-kernel: unknown kernel {args.stalled_kernel!r}; the kernels are {', '.join(KERNEL_NAMES)}"
    if args.chart:
        if importlib.util.find_spec("PIL") is None:
            return (
                "--chart needs Pillow, which is not installed: pip install Pillow"
                " (or install trio_zc with the [images] extra), or leave out --chart"
            )
        problem = _unwritable(args.chart)
        if problem:
            return f"--chart: {problem}"
    if args.json and not args.from_json:
        problem = _unwritable(args.json)
        if problem:
            return f"--json: {problem}"
    if args.from_json:
        try:
            _bench.from_json(pathlib.Path(args.from_json).read_text())
        except OSError as exc:
            return f"--from-json: cannot read {args.from_json}: {exc.strerror or exc}"
        except (ValueError, TypeError, KeyError) as exc:
            kind = "not JSON" if isinstance(exc, json.JSONDecodeError) else "not figures saved by --json"
            return f"--from-json: {args.from_json} is {kind} ({exc}); give a file written by bench --json"
    return None


def _unwritable(path: str) -> str | None:
    folder = pathlib.Path(path).parent
    if not folder.is_dir():
        return f"the folder {str(folder)!r} of {path} does not exist; create it or give another path"
    if pathlib.Path(path).is_dir():
        return f"{path} is a folder; give a file name"
    return None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run what *args* (already :func:`check`-ed) asks for and print the report.

    Exit status: 0, 1 corrupt, 3 target missed.
    """
    if args.from_json:
        results = _bench.from_json(pathlib.Path(args.from_json).read_text())
    else:
        results = _bench.run(args.cases, args.sizes, args.bytes, args.repeat, _progress) if args.cases else []
    if args.json and not args.from_json:
        pathlib.Path(args.json).write_text(_bench.to_json(results))
    summaries = _bench.summarize(results)
    found = []
    if summaries:
        # From the figures, not --repeat: --from-json reports runs made with any.
        counts = sorted({s.runs for s in summaries})
        reps = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        print(
            f"Loopback TCP, median of {reps} run(s) per case; ratios (x ref) to {args.reference!r}"
            " at the same size; latency from starting on an image to its last byte arriving."
        )
        print(_bench.table(summaries, args.reference))
        found = _bench.targets(summaries)
    if args.chart and summaries:
        from ._bench_chart import render_chart

        render_chart(_bench.chart_series(summaries), args.chart, title="trio_zc bench, loopback TCP (medians)")
        print(f"\nchart: {args.chart}")
    if args.cycles and not args.from_json:
        from ._bench_cycles import run_cycles

        runs = []
        for rep in range(args.repeat):
            _progress(f"lease cycles: {args.cycles} on the mock kernel ({rep + 1}/{args.repeat})...")
            runs.append(run_cycles(args.cycles))
        runs.sort(key=lambda r: r.per_second)
        cycles = runs[len(runs) // 2]
        print(
            f"\nlease overhead: {cycles.per_second:,.0f} full cycles/s, median of {len(runs)}"
            f" ({runs[0].per_second:,.0f}-{runs[-1].per_second:,.0f};"
            f" {cycles.per_cpu_second:,.0f} per CPU second), {cycles.payload}-byte payloads,"
            " one stream, mock kernel"
        )
        found.append(_bench.Target("lease cycles per second / 50,000", cycles.per_second / 50_000, 1.0, True))
    if args.stalled and not args.from_json:
        from ._bench_stalled import run_stalled

        _progress(f"stalled clients: {args.stalled}...")
        stalled = run_stalled(args.stalled, kernel=args.stalled_kernel, progress=True)
        print()
        print(stalled.format())
        found.append(_bench.Target("stalled clients: server CPU share / 5%", stalled.cpu_share / 0.05, 1.0, False))
        found.append(
            _bench.Target(
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
    corrupt = _bench.corrupt_library_cases(summaries)
    if corrupt:
        print("\nCORRUPT: " + ", ".join(f"{s.case} at {_bench.size_name(s.size)}" for s in corrupt))
        return 1
    if args.check_targets and not all(t.met for t in found):
        return 3
    return 0
