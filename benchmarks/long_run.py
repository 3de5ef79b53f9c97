"""The long-run protocol (issue 21): are the throughput targets met in every run, and how much do runs differ?

A short run's medians can land on either side of a target: in seven runs
of 1 GiB x 3 repetitions, issue 21 saw 4 MiB ``auto`` at 0.88x to 1.71x
``trio-send_all``. This protocol measures only the cases the targets
compare, with enough bytes and repetitions that a run's medians settle, and
repeats the whole protocol so that the spread between runs can be seen:

- the units: ``auto``, ``trio-send_all`` and ``blocking`` at 4 MiB;
  ``auto`` and ``trio-send_all`` at 64 KiB and at 16 KiB (the cases of
  :mod:`trio_zc._bench_cases`; ``blocking`` is "the C loop": a blocking
  socket's ``sendall``, whose loop over partial sends runs in C); and
  ``trio-floor`` at each size, the least any sender on Trio does per image,
  judged against the same targets in a section of its own (:data:`FLOOR_GOALS`):
  where the floor misses a target, no library that keeps Trio's checkpoints
  can meet it on this machine;
- a **run** sends ``--bytes`` (3 GiB) per unit and repetition, ``--repeat``
  (7) times: in rounds, each round every unit once in its own shuffled
  order (seeded; the seed is printed, ``--seed`` repeats the order), so
  that drift in the machine's speed hits every unit alike and no unit
  always follows the same neighbour; one receiver process per run;
- within a run, each target's ratio is a ratio of medians over the
  repetitions; over ``--runs`` (7) runs, the report gives every run's ratio,
  their range (min..max), the spread (max - min) and the margin of the
  worst run over the target. A target is ``met`` only if it holds in the
  worst run (``MISSED`` if one run misses it, however good the others).

Each round ends with ``--cycles`` (100,000) lease cycles on the mock
kernel, and a run's figure is the median of its rounds', so that the one
absolute target, lease cycles per second, is also judged on its worst run
(``--cycles 0`` skips them).

``--sizes 4M`` runs only the units and targets at that image size (while
tuning one path). ``--json FILE`` keeps every repetition's raw figures
(with its place in the plan, the seed and the load average around each
run); ``--from-json FILE`` reports on saved figures without running; ``--dry-run`` prints the plan and the
estimated duration and runs nothing. Every option is checked before
anything runs: a mistake is one line on standard error and exit status 2.
Exit status: 0; 1 if an image of ``auto`` arrived corrupted; 3 with
``--check-targets`` if a target was missed.

Run (from the repository, with trio_zc installed or on PYTHONPATH):
python benchmarks/long_run.py [--bytes 3G] [--repeat 7] [--runs 7] [--sizes 4M,64K,16K] [--cycles N]
    [--seed N] [--json FILE] [--dry-run] [--check-targets]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs

from trio_zc import _bench, _bench_cli
from trio_zc.__main__ import _Parser
from trio_zc._bench_cases import Job, run_case
from trio_zc._bench_cycles import run_cycles
from trio_zc._bench_protocol import patterns
from trio_zc._bench_cli import build

if not __package__:
    # Run as a file: its siblings are imported as the package ``benchmarks``.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.goals import CYCLES_TARGET
from benchmarks.goals import GOALS as GOALS
from benchmarks.goals import Goal as Goal
from benchmarks.goals import figure

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: What the targets compare: (case, image size), in the report's order.
UNITS: Final = (
    ("auto", 4 * MiB),
    ("blocking", 4 * MiB),
    ("trio-send_all", 4 * MiB),
    ("auto", 64 * KiB),
    ("trio-send_all", 64 * KiB),
    ("auto", 16 * KiB),
    ("trio-send_all", 16 * KiB),
    ("trio-floor", 4 * MiB),
    ("trio-floor", 64 * KiB),
    ("trio-floor", 16 * KiB),
)

#: The targets again with ``trio-floor`` in place of ``auto``: not trio_zc's
#: targets, but whether any sender that keeps Trio's rules could meet them.
FLOOR_GOALS: Final = tuple(
    attrs.evolve(goal, name=goal.name.replace("auto", "trio-floor", 1), case="trio-floor")
    for goal in GOALS
    if goal.case == "auto"
)

#: The image sizes of :data:`UNITS`, largest first.
SIZES: Final = tuple(sorted({size for _, size in UNITS}, reverse=True))

DEFAULT_BYTES: Final = 3 * GiB
DEFAULT_REPEAT: Final = 7
DEFAULT_RUNS: Final = 7
DEFAULT_CYCLES: Final = 100_000

#: Throughput (GB/s) assumed for the estimate before anything is measured:
#: about the lowest run medians of docs/_static/long-run-report.txt (the
#: full protocol on this 2-core machine, quiet, about 8 min 20 s), rounded down.
#: Once a unit has run, its own times replace these in the remaining-time estimate.
ESTIMATED_GBPS: Final = {
    ("auto", 4 * MiB): 3.8,
    ("blocking", 4 * MiB): 3.8,
    ("trio-send_all", 4 * MiB): 2.4,
    ("auto", 64 * KiB): 2.8,
    ("trio-send_all", 64 * KiB): 2.9,
    ("auto", 16 * KiB): 1.2,
    ("trio-send_all", 16 * KiB): 1.1,
    ("trio-floor", 4 * MiB): 3.0,
    ("trio-floor", 64 * KiB): 2.8,
    ("trio-floor", 16 * KiB): 1.2,
}
#: Per unit and repetition besides the images: a connection, an event loop, a pool.
OVERHEAD_SECONDS: Final = 0.3


@attrs.frozen
class Step:
    """One unit's repetition: where it falls in the protocol."""

    run: int
    round: int
    #: Its place in its run, from 0.
    position: int
    case: str
    size: int


def plan(runs: int, repeat: int, seed: int, units: Sequence[tuple[str, int]] = UNITS) -> list[Step]:
    """Every step of *runs* runs, in order: each run *repeat* rounds of every unit, shuffled.

    Each round is a permutation of *units*, drawn from a generator seeded
    with *seed* and the run's number, so the plan is the same for the same
    seed and different between runs. A unit never runs twice in a row
    across a round's boundary (it would then have no neighbour but itself).
    """
    steps = []
    for run in range(runs):
        rng = random.Random(f"trio_zc long run {seed}/{run}")
        previous: tuple[str, int] | None = None
        position = 0
        for rnd in range(repeat):
            order = list(units)
            rng.shuffle(order)
            if len(order) > 1 and order[0] == previous:
                other = rng.randrange(1, len(order))
                order[0], order[other] = order[other], order[0]
            for case, size in order:
                steps.append(Step(run, rnd, position, case, size))
                position += 1
            previous = order[-1]
    return steps


def images_per_step(size: int, total_bytes: int) -> int:
    """Images of *size* bytes one step sends for *total_bytes* (at least :data:`trio_zc._bench.MIN_IMAGES`)."""
    return max(total_bytes // size, _bench.MIN_IMAGES)


def estimate_seconds(steps: Sequence[Step], total_bytes: int) -> float:
    """How long *steps* should take, from :data:`ESTIMATED_GBPS` and :data:`OVERHEAD_SECONDS`."""
    return sum(
        s.size * images_per_step(s.size, total_bytes) / 1e9 / ESTIMATED_GBPS[(s.case, s.size)] + OVERHEAD_SECONDS
        for s in steps
    )


def duration(seconds: float) -> str:
    """``45 s``, ``12 min 5 s``, ``2 h 3 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# -- measuring --------------------------------------------------------------------


@attrs.frozen
class Measured:
    """One step and what it measured."""

    step: Step
    result: _bench.CaseResult


def _floats(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(values)  # a list when read back from JSON


@attrs.frozen
class RunInfo:
    """The machine around one run: load averages (1 min) before and after, wall time;
    and the lease cycles per second: the median of the run's rounds (None: not
    measured), then each round's own figure (older saved runs have none)."""

    run: int
    load_before: float
    load_after: float
    seconds: float
    cycles_per_second: float | None = None
    cycles_per_round: tuple[float, ...] = attrs.field(default=(), converter=_floats)


def run_protocol(
    steps: Sequence[Step],
    total_bytes: int,
    seed: int,
    progress: Callable[[str], None] | None = None,
    after_run: Callable[[Sequence[Measured], Sequence[RunInfo]], None] | None = None,
    cycles: int = 0,
) -> tuple[list[Measured], list[RunInfo]]:
    """Run *steps* (from :func:`plan`), one receiver process per run; every step's figures and each run's info.

    With *cycles*, each round ends with that many lease cycles on the mock
    kernel, and the run's figure for the lease-cycle target is their median,
    as each unit's is the median of its repetitions: one measurement a run
    (about a second in the compiled build) caught whatever else the machine
    did in that second.
    *after_run* is called with everything measured so far after each run
    (``main`` saves the figures then, so that an interrupted protocol keeps
    its finished runs).
    """
    measured: list[Measured] = []
    infos: list[RunInfo] = []
    # The images' seed goes into the wire header as an unsigned 32-bit field.
    image_seed = seed % (1 << 32)
    images = {size: patterns(size, _bench.PATTERNS, image_seed) for size in sorted({s.size for s in steps})}
    taken: dict[tuple[str, int], list[float]] = {}
    started = time.monotonic()
    for run in sorted({s.run for s in steps}):
        mine = [s for s in steps if s.run == run]
        load_before, t0 = os.getloadavg()[0], time.monotonic()
        if progress is not None:
            # A busy machine widens the spread between runs: say so as it happens.
            busy = " (busy: expect a wide spread)" if load_before > 0.5 * (os.cpu_count() or 1) else ""
            progress(f"run {run + 1}: load average {load_before:.2f} on {os.cpu_count()} CPUs{busy}")
        receiver, port = _bench._receiver()
        per_round: list[float] = []
        try:
            for index, step in enumerate(mine):
                job = Job(port, step.size, images_per_step(step.size, total_bytes), image_seed, images[step.size])
                t_step = time.monotonic()
                result = _bench.CaseResult.of(step.case, job, run_case(step.case, job))
                taken.setdefault((step.case, step.size), []).append(time.monotonic() - t_step)
                measured.append(Measured(step, result))
                if progress is not None:
                    done = len(measured)
                    left = _remaining(steps[done:], total_bytes, taken)
                    progress(
                        f"[{done}/{len(steps)}] run {step.run + 1} round {step.round + 1}"
                        f" {_bench.size_name(step.size):>7} {step.case:<14}"
                        f" {result.throughput:5.2f} GB/s, {result.cpu_per_gb:.3f} CPU s/GB,"
                        f" {result.intact}/{result.images} intact"
                        f" (elapsed {duration(time.monotonic() - started)}, about {duration(left)} left)"
                    )
                round_ends = index + 1 == len(mine) or mine[index + 1].round != step.round
                if cycles and round_ends:
                    per_round.append(run_cycles(cycles).per_second)
                    if progress is not None:
                        progress(
                            f"run {step.run + 1} round {step.round + 1}: {per_round[-1]:,.0f} lease cycles"
                            f" per second ({cycles:,} on the mock kernel)"
                        )
        finally:
            _bench._stop(receiver)
        per_second = statistics.median(per_round) if per_round else None
        infos.append(
            RunInfo(run, load_before, os.getloadavg()[0], time.monotonic() - t0, per_second, tuple(per_round))
        )
        if after_run is not None:
            after_run(measured, infos)
    return measured, infos


def _remaining(steps: Sequence[Step], total_bytes: int, taken: dict[tuple[str, int], list[float]]) -> float:
    """What *steps* should still take: each unit's mean time so far, or the prior estimate."""
    total = 0.0
    for s in steps:
        times = taken.get((s.case, s.size))
        total += statistics.fmean(times) if times else estimate_seconds([s], total_bytes)
    return total


# -- judging ----------------------------------------------------------------------


def run_medians(measured: Sequence[Measured]) -> dict[int, dict[tuple[str, int], tuple[float, float]]]:
    """Per run, per unit: the median throughput (GB/s) and CPU per GB over its repetitions."""
    grouped: dict[int, dict[tuple[str, int], list[_bench.CaseResult]]] = {}
    for m in measured:
        grouped.setdefault(m.step.run, {}).setdefault((m.step.case, m.step.size), []).append(m.result)
    return {
        run: {
            unit: (
                statistics.median(r.throughput for r in results),
                statistics.median(r.cpu_per_gb for r in results),
            )
            for unit, results in units.items()
        }
        for run, units in sorted(grouped.items())
    }


@attrs.frozen
class Verdict:
    """One goal over every run: each run's ratio (ratio of that run's medians)."""

    goal: Goal
    #: (run, ratio), in run order; runs missing either unit are left out.
    per_run: tuple[tuple[int, float], ...]

    @property
    def ratios(self) -> list[float]:
        return [r for _, r in self.per_run]

    @property
    def worst(self) -> float:
        return min(self.ratios) if self.goal.at_least else max(self.ratios)

    @property
    def met(self) -> bool:
        """Whether the goal holds in every run (judged on the worst)."""
        return bool(self.per_run) and self.goal.holds(self.worst)

    @property
    def spread(self) -> float:
        return max(self.ratios) - min(self.ratios)

    @property
    def margin(self) -> float:
        """How far the worst run is on the right side of the limit (negative: the wrong side)."""
        return self.worst - self.goal.limit if self.goal.at_least else self.goal.limit - self.worst

    def describe(self) -> str:
        g = self.goal
        sign = ">=" if g.at_least else "<="
        if not self.per_run:
            return f"MISSED  {g.name}: no run measured both {g.case} and {g.base} (target {sign} {g.limit})"
        worst = figure(self.worst, g.limit, self.met, g.at_least)
        lo, hi = min(self.ratios), max(self.ratios)
        runs = ", ".join(f"{r:.2f}" for r in self.ratios)
        # Whether the runs can tell: a spread wider than the margin means
        # another run could land on the other side of the limit.
        if len(self.ratios) < 2:
            tells = "one run: no spread to compare"
        elif self.spread < abs(self.margin):
            tells = "spread < margin"
        else:
            tells = "spread >= margin: cannot tell"
        return (
            f"{'met   ' if self.met else 'MISSED'}  {g.name}: worst {worst} (target {sign} {g.limit});"
            f" range {lo:.2f}..{hi:.2f} over {len(self.ratios)} run(s), spread {self.spread:.2f},"
            f" margin {self.margin:+.2f} ({tells}); runs: {runs}"
        )


#: The lease-cycle target as a ratio, as benchmarks/acceptance.py prints it.
CYCLES_GOAL: Final = Goal(
    f"lease cycles per second / {CYCLES_TARGET:,}", 0, "lease cycles", "target", "cycles", 1.0, True
)


def cycles_verdict(infos: Sequence[RunInfo]) -> Verdict | None:
    """The lease-cycle target over the runs that measured it; None if none did."""
    per_run = tuple(
        (i.run, i.cycles_per_second / CYCLES_TARGET) for i in infos if i.cycles_per_second is not None
    )
    return Verdict(CYCLES_GOAL, per_run) if per_run else None


def verdicts(
    measured: Sequence[Measured], goals: Sequence[Goal] | None = None, infos: Sequence[RunInfo] = ()
) -> list[Verdict]:
    """Each goal judged over every run in *measured*, then the lease cycles of *infos* if measured.

    By default every goal at the image sizes *measured* has (``--sizes``
    runs some of them); a goal whose size was measured but one of whose
    units was not is missed, not skipped.
    """
    medians = run_medians(measured)
    if goals is None:
        sizes = {m.step.size for m in measured}
        goals = [g for g in GOALS if g.size in sizes]
    out = []
    for goal in goals:
        index = 0 if goal.measure == "throughput" else 1
        per_run = []
        for run, units in medians.items():
            a, b = units.get((goal.case, goal.size)), units.get((goal.base, goal.size))
            if a is not None and b is not None:
                per_run.append((run, a[index] / b[index]))
        out.append(Verdict(goal, tuple(per_run)))
    cycles = cycles_verdict(infos)
    if cycles is not None:
        out.append(cycles)
    return out


# -- reporting and saving ---------------------------------------------------------


def describe_plan(steps: Sequence[Step], total_bytes: int, repeat: int, runs: int, seed: int) -> str:
    """The plan in words: sizes, the order of every round, the estimated duration."""
    images = sum(s.size * images_per_step(s.size, total_bytes) for s in steps)
    lines = [
        f"protocol: {len({(s.case, s.size) for s in steps})} units x {_total_size(total_bytes)} x {repeat} repetitions"
        f" per run, {runs} run(s), seed {seed} (--seed {seed} repeats this order), trio_zc's {build()} build",
        f"sends {images / GiB:,.1f} GiB over loopback;"
        f" estimated {duration(estimate_seconds(steps, total_bytes))}"
        " (from throughputs measured on a shared 2-core machine; the progress lines refine it)",
    ]
    for run in sorted({s.run for s in steps}):
        for rnd in sorted({s.round for s in steps if s.run == run}):
            order = [s for s in steps if s.run == run and s.round == rnd]
            units = ", ".join(f"{_bench.size_name(s.size)} {s.case}" for s in order)
            lines.append(f"  run {run + 1} round {rnd + 1}: {units}")
    return "\n".join(lines)


def _total_size(n: int) -> str:
    if n % GiB == 0:
        return f"{n // GiB} GiB"
    return _bench.size_name(n)


def report(measured: Sequence[Measured], infos: Sequence[RunInfo]) -> str:
    """Per run the medians of every unit, then each goal over the runs."""
    medians = run_medians(measured)
    lines = ["medians per run (throughput GB/s / sender CPU s per GB):"]
    header = f"  {'unit':<22}" + "".join(f" {'run ' + str(run + 1):>13}" for run in medians)
    lines.append(header)
    for unit in [u for u in UNITS if any(u in units for units in medians.values())]:
        cells = []
        for units in medians.values():
            figures = units.get(unit)
            cells.append(f" {figures[0]:6.2f}/{figures[1]:.3f}" if figures else f" {'-':>13}")
        lines.append(f"  {_bench.size_name(unit[1]) + ' ' + unit[0]:<22}" + "".join(cells))
    if infos:
        lines.append(
            "  load average (1 min) before..after each run: "
            + ", ".join(f"{i.load_before:.1f}..{i.load_after:.1f}" for i in infos)
            + "; wall time: "
            + ", ".join(duration(i.seconds) for i in infos)
        )
    counted = [i.cycles_per_second for i in infos if i.cycles_per_second is not None]
    if counted:
        lines.append(
            "  lease cycles per second (mock kernel, one stream, 1 KiB payloads), per run"
            + (" (the median of its rounds)" if any(i.cycles_per_round for i in infos) else "")
            + ": "
            + ", ".join(f"{c:,.0f}" for c in counted)
        )
    lines.append("")
    lines.append("targets (each must hold in every run; judged on the worst):")
    lines.extend("  " + v.describe() for v in verdicts(measured, infos=infos))
    floors = [v for v in verdicts(measured, floor_goals(measured)) if v.per_run]
    if floors:
        lines.append("")
        lines.append("the same targets for trio-floor, the least any sender on Trio does per image (not trio_zc's):")
        lines.extend("  " + v.describe() for v in floors)
    return "\n".join(lines)


def floor_goals(measured: Sequence[Measured]) -> list[Goal]:
    """:data:`FLOOR_GOALS` at the image sizes *measured* has."""
    sizes = {m.step.size for m in measured}
    return [g for g in FLOOR_GOALS if g.size in sizes]


def to_json(
    measured: Sequence[Measured],
    infos: Sequence[RunInfo],
    *,
    seed: int,
    total_bytes: int,
    repeat: int,
    runs: int,
    sizes: Sequence[int] = SIZES,
) -> str:
    """Every step's raw figures, with the protocol and the machine, for keeping and re-reporting."""
    return json.dumps(
        {
            "protocol": {"seed": seed, "bytes": total_bytes, "repeat": repeat, "runs": runs, "sizes": list(sizes)},
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "build": build(),
            },
            "runs": [attrs.asdict(i) for i in infos],
            "steps": [{**attrs.asdict(m.step), **attrs.asdict(m.result)} for m in measured],
        },
        indent=1,
    )


def from_json(text: str) -> tuple[dict[str, Any], list[Measured], list[RunInfo]]:
    """What :func:`to_json` wrote: the protocol, the steps, the runs' info."""
    data = json.loads(text)
    step_fields = [f.name for f in attrs.fields(Step)]
    measured = []
    for row in data["steps"]:
        step = Step(**{k: row[k] for k in step_fields})
        result = _bench.CaseResult(**{f.name: row[f.name] for f in attrs.fields(_bench.CaseResult)})
        measured.append(Measured(step, result))
    infos = [RunInfo(**row) for row in data["runs"]]
    return dict(data["protocol"]), measured, infos


# -- the command line -------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python benchmarks/long_run.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=(
            f"The defaults send {len(UNITS)} units x {_total_size(DEFAULT_BYTES)} x {DEFAULT_REPEAT} repetitions"
            f" x {DEFAULT_RUNS} runs over loopback: about"
            f" {duration(estimate_seconds(plan(DEFAULT_RUNS, DEFAULT_REPEAT, 0), DEFAULT_BYTES))}"
            " on a shared 2-core machine, more if it is busy (--dry-run prints the plan and the estimate)."
        ),
        one_line_errors=True,
    )
    parser.add_argument(
        "--bytes", type=_bench_cli.parse_size, default=DEFAULT_BYTES, help="bytes per unit and repetition (3G)"
    )
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="repetitions per unit and run (7)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="times the whole protocol runs (7)")
    parser.add_argument(
        "--sizes",
        type=_bench_cli.sizes,
        default=list(SIZES),
        help="only the units and targets at these image sizes, e.g. 4M while tuning large images (4M,64K,16K)",
    )
    parser.add_argument(
        "--cycles",
        type=int,
        default=DEFAULT_CYCLES,
        help=f"lease cycles on the mock kernel at the end of each round; a run's median counts (0: skip; {DEFAULT_CYCLES:,})",
    )
    parser.add_argument("--seed", type=int, help="seed of the order and the images (default: drawn and printed)")
    parser.add_argument("--json", metavar="FILE", help="also write every repetition's raw figures to FILE")
    parser.add_argument("--from-json", metavar="FILE", help="report on figures saved with --json instead of running")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the estimated duration; run nothing")
    parser.add_argument(
        "--check-targets", action="store_true", help="exit with status 3 if a target is missed in any run"
    )
    return parser


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with *args*, in one line that says what to do; None if nothing."""
    for option in ("bytes", "repeat", "runs"):
        if getattr(args, option) < 1:
            return f"--{option} must be at least 1, not {getattr(args, option)}"
    if args.cycles < 0:
        return f"--cycles must be 0 (skip) or more, not {args.cycles}"
    odd = [size for size in args.sizes if size not in SIZES]
    if odd:
        return (
            f"--sizes: the protocol has no units at {', '.join(_bench.size_name(s) for s in odd)};"
            f" its sizes are {', '.join(_bench.size_name(s) for s in SIZES)}"
        )
    if args.seed is not None and args.seed < 0:
        return f"--seed must be 0 or more, not {args.seed}"
    if args.from_json and args.dry_run:
        return "--dry-run plans a run and --from-json reports on one already made: give one of them"
    return _bench_cli.check_figure_files(args.json, args.from_json, from_json, "long_run.py")


def main(argv: Sequence[str] | None = None) -> int:
    """Check the options, then plan, run (or load) and report.

    Exit status: 0; 1 if an image of ``auto`` arrived corrupted; 2 for a bad
    option (before anything runs); 3 if a target was missed in some run
    (with ``--check-targets``).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    problem = check(args)
    if problem:
        parser.error(problem)
    if args.from_json:
        protocol, measured, infos = from_json(pathlib.Path(args.from_json).read_text())
        print(
            f"from {args.from_json}: {_total_size(protocol['bytes'])} x {protocol['repeat']} repetitions,"
            f" {protocol['runs']} run(s), seed {protocol['seed']}"
        )
    else:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
        steps = plan(args.runs, args.repeat, seed, [u for u in UNITS if u[1] in args.sizes])
        print(describe_plan(steps, args.bytes, args.repeat, args.runs, seed), flush=True)
        if args.dry_run:
            return 0

        def save(measured: Sequence[Measured], infos: Sequence[RunInfo]) -> None:
            # After every run, not only at the end: a protocol of a quarter
            # of an hour that is interrupted keeps the runs it finished.
            if args.json:
                pathlib.Path(args.json).write_text(
                    to_json(
                        measured,
                        infos,
                        seed=seed,
                        total_bytes=args.bytes,
                        repeat=args.repeat,
                        runs=args.runs,
                        sizes=sorted(set(args.sizes), reverse=True),
                    )
                )

        measured, infos = run_protocol(steps, args.bytes, seed, _bench_cli.progress, save, args.cycles)
    print()
    print(report(measured, infos))
    corrupt = sorted(
        {(m.step.case, m.step.size) for m in measured if m.step.case == "auto" and m.result.intact < m.result.images}
    )
    if corrupt:
        print("\nCORRUPT: " + ", ".join(f"{case} at {_bench.size_name(size)}" for case, size in corrupt))
        return 1
    if args.check_targets and not all(v.met for v in verdicts(measured, infos=infos)):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
