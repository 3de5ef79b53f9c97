"""The ``bench`` command line: options, checking them before anything runs, each part, the report.

``benchmarks/acceptance.py`` (outside the package) runs the same parts and
adds the project's targets, its stalled-clients benchmark and its chart.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable

from . import _bench, _lease
from ._bench_cases import ALL_CASES
from ._bench_cycles import CycleResult, run_cycles
from ._mypyc import is_compiled


_DEFAULT_BYTES = 512 << 20
_DEFAULT_REPEAT = 3
_DEFAULT_RUNS = len(ALL_CASES) * len(_bench.DEFAULT_SIZES) * _DEFAULT_REPEAT

# The times and memory below were measured (python -m trio_zc bench, under
# /usr/bin/time) on the development machine while other test suites ran on it
# (load average about 3); the counts are computed.
DESCRIPTION = f"""\
Measure every way trio_zc can send an image, and the ways you would otherwise
write it, against a receiver process on loopback TCP that checks every byte
(docs/benchmarks.rst says what each figure means).

What the defaults cost: every case ({len(ALL_CASES)}) at every size ({len(_bench.DEFAULT_SIZES)}), \
{_DEFAULT_BYTES >> 20} MiB each,
{_DEFAULT_REPEAT} times -- {_DEFAULT_RUNS} runs sending about \
{_DEFAULT_RUNS * _DEFAULT_BYTES / 2**30:.0f} GiB over loopback -- then {_DEFAULT_REPEAT} x 100,000
lease cycles. That took 2 min 25 s on a shared 2-core machine (Linux 6.18;
38 s with --repeat 1), and the sending process peaked at 570 MB of memory
(the 64 MiB images). A quick look, in about 5 s:
  python -m trio_zc bench --sizes 64K,4M --bytes 64M --repeat 1

The project's own targets, stalled clients and chart are
benchmarks/acceptance.py in trio_zc's repository.
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


def sizes(text: str) -> list[int]:
    """``16K,1M`` -> ``[16384, 1048576]``: at least one size, all positive."""
    out = [parse_size(x) for x in text.split(",") if x.strip()]
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("give at least one positive size")
    return out


def _cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown}; the cases are {', '.join(ALL_CASES)}")
    return cases


def add_arguments(bench: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options (``benchmarks/acceptance.py`` adds its own to these)."""
    bench.add_argument(
        "--cases",
        type=_cases,
        default=list(ALL_CASES),
        help=f"comma-separated cases (default: all of {','.join(ALL_CASES)})",
    )
    bench.add_argument(
        "--sizes",
        type=sizes,
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
    bench.add_argument("--json", metavar="FILE", help="also write every run's figures to FILE")
    bench.add_argument("--from-json", metavar="FILE", help="report on runs saved with --json instead of running")


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with *args*, in one line that says what to do; None if nothing.

    Everything is checked before anything runs: a mistake found after the
    benchmark (a figures file in a missing folder) used to throw away many
    minutes of measurement. ``benchmarks/acceptance.py`` checks its own
    options after these.
    """
    for option in ("repeat", "bytes"):
        if getattr(args, option) < 1:
            return f"--{option} must be at least 1, not {getattr(args, option)}"
    if args.cycles < 0:
        return f"--cycles must be 0 (skip) or more, not {args.cycles}"
    if args.reference not in ALL_CASES:
        return f"--reference: unknown case {args.reference!r}; the cases are {', '.join(ALL_CASES)}"
    return check_figure_files(args.json, args.from_json, _bench.from_json, "bench")


def check_figure_files(
    json_path: str | None, from_json: str | None, load: Callable[[str], object], writer: str
) -> str | None:
    """What is wrong with the ``--json`` / ``--from-json`` options, in one line; None if nothing.

    *load* parses a figures file's text (raising ValueError, TypeError or
    KeyError on one that is not), *writer* names what writes such files.
    """
    if json_path and not from_json:
        problem = unwritable(json_path)
        if problem:
            return f"--json: {problem}"
    if from_json:
        try:
            load(pathlib.Path(from_json).read_text())
        except OSError as exc:
            return f"--from-json: cannot read {from_json}: {exc.strerror or exc}"
        except (ValueError, TypeError, KeyError) as exc:
            kind = "not JSON" if isinstance(exc, json.JSONDecodeError) else "not figures saved by --json"
            return f"--from-json: {from_json} is {kind} ({exc}); give a file written by {writer} --json"
    return None


def unwritable(path: str) -> str | None:
    """Why a file cannot be written at *path*, in words that say what to do; None if it can."""
    folder = pathlib.Path(path).parent
    if not folder.is_dir():
        return f"the folder {str(folder)!r} of {path} does not exist; create it or give another path"
    if pathlib.Path(path).is_dir():
        return f"{path} is a folder; give a file name"
    return None


def progress(line: str) -> None:
    """Report a step on standard error (the report itself goes to standard output)."""
    print(line, file=sys.stderr, flush=True)


def report_cases(args: argparse.Namespace) -> list[_bench.Summary]:
    """Run the cases *args* (already :func:`check`-ed) asks for, or load them (``--from-json``); print the table.

    Returns the summaries.
    """
    if args.from_json:
        results = _bench.from_json(pathlib.Path(args.from_json).read_text())
    else:
        results = _bench.run(args.cases, args.sizes, args.bytes, args.repeat, progress) if args.cases else []
    if args.json and not args.from_json:
        pathlib.Path(args.json).write_text(_bench.to_json(results))
    summaries = _bench.summarize(results)
    if summaries:
        # From the figures, not --repeat: --from-json reports runs made with any.
        counts = sorted({s.runs for s in summaries})
        reps = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        print(
            f"Loopback TCP, median of {reps} run(s) per case; ratios (x ref) to {args.reference!r}"
            " at the same size; latency from starting on an image to its last byte arriving."
        )
        print(_bench.table(summaries, args.reference))
    return summaries


def build() -> str:
    """``"compiled"`` or ``"pure"``: which build of trio_zc this process runs (said with every figure)."""
    # The per-lease path is compiled exactly when the build is (setup.py).
    return "compiled" if is_compiled(_lease) else "pure"


def report_cycles(args: argparse.Namespace) -> CycleResult | None:
    """Time ``--cycles`` lease cycles ``--repeat`` times and print the median; None if not asked to."""
    if not args.cycles or args.from_json:
        return None
    runs = []
    for rep in range(args.repeat):
        progress(f"lease cycles: {args.cycles} on the mock kernel ({rep + 1}/{args.repeat})...")
        runs.append(run_cycles(args.cycles))
    runs.sort(key=lambda r: r.per_second)
    cycles = runs[len(runs) // 2]
    print(
        f"\nlease overhead: {cycles.per_second:,.0f} full cycles/s, median of {len(runs)}"
        f" ({runs[0].per_second:,.0f}-{runs[-1].per_second:,.0f};"
        f" {cycles.per_cpu_second:,.0f} per CPU second), {cycles.payload}-byte payloads,"
        f" one stream, mock kernel, {build()} build"
    )
    return cycles


def report_corrupt(summaries: list[_bench.Summary]) -> bool:
    """Print trio_zc's cases that delivered a corrupted image, if any; whether there were any."""
    corrupt = _bench.corrupt_library_cases(summaries)
    if corrupt:
        print("\nCORRUPT: " + ", ".join(f"{s.case} at {_bench.size_name(s.size)}" for s in corrupt))
    return bool(corrupt)


def main(args: argparse.Namespace) -> int:
    """Run what *args* (already :func:`check`-ed) asks for and print the report.

    Exit status: 0, or 1 if an image arrived corrupted.
    """
    summaries = report_cases(args)
    report_cycles(args)
    return 1 if report_corrupt(summaries) else 0
