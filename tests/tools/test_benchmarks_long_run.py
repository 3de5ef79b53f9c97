"""benchmarks/long_run.py: the plan (seeded, interleaved), the verdicts over runs, its options, the dry run.

Nothing here measures anything: the verdicts are checked on fabricated
figures, and the one real (tiny) run is the smoke test in
test_benchmarks_smoke.py.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import subprocess
import sys

import pytest

from ._usage import assert_one_line_usage_error as usage_error

from benchmarks.long_run import (
    FLOOR_GOALS,
    GOALS,
    UNITS,
    Goal,
    Measured,
    RunInfo,
    Step,
    estimate_seconds,
    from_json,
    plan,
    report,
    run_protocol,
    to_json,
    verdicts,
)
from trio_zc._bench import CaseResult
from trio_zc._bench_cli import build

KiB, MiB = 1 << 10, 1 << 20

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "long_run.py"


# -- the plan ---------------------------------------------------------------------


def test_the_plan_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    assert plan(3, 7, 42) == plan(3, 7, 42)
    assert plan(3, 7, 42) != plan(3, 7, 43)


@pytest.mark.parametrize("seed", range(20))
def test_each_round_runs_every_unit_once_so_repetitions_interleave(seed: int) -> None:
    runs, repeat = 3, 7
    steps = plan(runs, repeat, seed)
    assert len(steps) == runs * repeat * len(UNITS)
    for run in range(runs):
        mine = [s for s in steps if s.run == run]
        assert [s.position for s in mine] == list(range(repeat * len(UNITS)))
        # Interleaved: after k rounds every unit has run exactly k times, so
        # no unit's repetitions bunch up at one end of the run.
        for k in range(1, repeat + 1):
            counts = collections.Counter((s.case, s.size) for s in mine[: k * len(UNITS)])
            assert counts == {unit: k for unit in UNITS}
            assert {s.round for s in mine[(k - 1) * len(UNITS) : k * len(UNITS)]} == {k - 1}
        # Never the same unit twice in a row, across a round's boundary included.
        units = [(s.case, s.size) for s in mine]
        assert all(a != b for a, b in zip(units, units[1:]))


def test_the_order_is_shuffled_within_and_between_runs() -> None:
    steps = plan(2, 7, 2026)
    orders = {
        (run, rnd): tuple((s.case, s.size) for s in steps if s.run == run and s.round == rnd)
        for run in range(2)
        for rnd in range(7)
    }
    # Not one fixed order: 14 rounds of a 7-unit permutation (5,040 of them).
    assert len(set(orders.values())) > 7
    assert [orders[(0, r)] for r in range(7)] != [orders[(1, r)] for r in range(7)]
    # No unit always runs first.
    assert len({order[0] for order in orders.values()}) > 1


def test_the_estimate_grows_with_the_bytes_and_counts_every_step() -> None:
    one = estimate_seconds(plan(1, 1, 0), 1 << 30)
    assert estimate_seconds(plan(1, 1, 0), 3 << 30) > 2.5 * one - 10  # the images dominate
    assert math.isclose(estimate_seconds(plan(5, 7, 0), 1 << 30), 35 * one)


# -- verdicts on fabricated figures -----------------------------------------------


def result(case: str, size: int, throughput: float, cpu_per_gb: float = 0.5) -> CaseResult:
    """A repetition sending 1 GB at *throughput* GB/s with *cpu_per_gb* CPU seconds per GB."""
    images = 10**9 // size
    gbytes = size * images / 1e9
    return CaseResult(case, size, images, images, images, gbytes / throughput, cpu_per_gb * gbytes, 0.001, 0.002, 0.0)


def fabricate(figures: dict[int, dict[tuple[str, int], list[tuple[float, float]]]]) -> list[Measured]:
    """Measured steps from {run: {unit: [(throughput, cpu per GB) per repetition]}}."""
    out = []
    for run, units in figures.items():
        position = 0
        for (case, size), reps in units.items():
            for rnd, (tput, cpu) in enumerate(reps):
                out.append(Measured(Step(run, rnd, position, case, size), result(case, size, tput, cpu)))
                position += 1
    return out


FOUR_MIB_AUTO_OVER_BLOCKING = GOALS[0]
FOUR_MIB_CPU = GOALS[2]


def test_a_target_met_in_six_runs_and_missed_in_one_is_missed() -> None:
    figures = {run: {("auto", 4 * MiB): [(3.3, 0.25)], ("blocking", 4 * MiB): [(3.0, 0.3)]} for run in range(7)}
    figures[4][("auto", 4 * MiB)] = [(2.85, 0.25)]  # 0.95x the C loop in run 5 only
    (verdict,) = verdicts(fabricate(figures), [FOUR_MIB_AUTO_OVER_BLOCKING])
    assert [run for run, _ in verdict.per_run] == list(range(7))
    assert sum(FOUR_MIB_AUTO_OVER_BLOCKING.holds(r) for r in verdict.ratios) == 6
    assert not verdict.met
    assert math.isclose(verdict.worst, 0.95)
    assert math.isclose(verdict.spread, 1.1 - 0.95)
    assert math.isclose(verdict.margin, 0.95 - 1.0)
    line = verdict.describe()
    assert line.startswith("MISSED")
    assert "worst 0.95 (target >= 1.0)" in line
    assert "range 0.95..1.10 over 7 run(s)" in line
    # The spread (0.15) is wider than the margin (0.05): the runs cannot tell.
    assert "spread 0.15, margin -0.05 (spread >= margin: cannot tell)" in line
    # The same runs without the bad one: met, on the worst of the six.
    del figures[4]
    (verdict,) = verdicts(fabricate(figures), [FOUR_MIB_AUTO_OVER_BLOCKING])
    assert verdict.met and verdict.describe().startswith("met")


def test_each_runs_ratio_is_a_ratio_of_that_runs_medians() -> None:
    figures = {
        0: {("auto", 4 * MiB): [(3.0, 0.2), (9.0, 0.9), (3.3, 0.3)], ("blocking", 4 * MiB): [(3.0, 0.1)] * 3},
        1: {("auto", 4 * MiB): [(2.0, 0.2)] * 3, ("blocking", 4 * MiB): [(1.0, 0.1), (2.5, 0.1), (2.0, 0.1)]},
    }
    (verdict,) = verdicts(fabricate(figures), [FOUR_MIB_AUTO_OVER_BLOCKING])
    # Run 1: median 3.3 / 3.0 (the 9.0 outlier does not count); run 2: 2.0 / 2.0.
    assert [round(r, 6) for r in verdict.ratios] == [1.1, 1.0]
    assert verdict.met


def test_an_at_most_target_is_judged_on_its_highest_run() -> None:
    figures = {
        run: {("auto", 4 * MiB): [(3.0, cpu)], ("trio-send_all", 4 * MiB): [(2.0, 0.5)]}
        for run, cpu in enumerate([0.25, 0.28, 0.31])  # 0.5x, 0.56x, 0.62x trio's CPU per GB
    }
    (verdict,) = verdicts(fabricate(figures), [FOUR_MIB_CPU])
    assert math.isclose(verdict.worst, 0.62)
    assert not verdict.met
    assert math.isclose(verdict.margin, 0.6 - 0.62)
    assert "MISSED" in verdict.describe() and "worst 0.62 (target <= 0.6)" in verdict.describe()


def test_the_report_says_when_the_spread_is_wider_than_the_margin() -> None:
    goal = Goal("x", 16 * KiB, "auto", "trio-send_all", "throughput", 1.0, True)
    tight = {run: {("auto", 16 * KiB): [(r, 1.0)], ("trio-send_all", 16 * KiB): [(1.0, 1.0)]} for run, r in enumerate([1.30, 1.32])}
    loose = {run: {("auto", 16 * KiB): [(r, 1.0)], ("trio-send_all", 16 * KiB): [(1.0, 1.0)]} for run, r in enumerate([1.05, 1.40])}
    (t,) = verdicts(fabricate(tight), [goal])
    (lo,) = verdicts(fabricate(loose), [goal])
    assert t.met and "(spread < margin)" in t.describe()
    assert lo.met and "spread >= margin: cannot tell" in lo.describe()
    (one,) = verdicts(fabricate({0: tight[0]}), [goal])
    assert one.met and "over 1 run(s), spread 0.00, margin +0.30 (one run: no spread to compare)" in one.describe()


def test_a_target_without_its_units_is_missed_not_met() -> None:
    only_auto = {0: {("auto", 64 * KiB): [(2.0, 0.5)]}}
    (verdict,) = verdicts(fabricate(only_auto), [GOALS[3]])
    assert verdict.per_run == () and not verdict.met
    assert verdict.describe().startswith("MISSED") and "no run measured both" in verdict.describe()
    # By default, the goals at the sizes measured: the 64 KiB one, missed; none at 4 MiB or 16 KiB.
    assert [(v.goal, v.met) for v in verdicts(fabricate(only_auto))] == [(GOALS[3], False)]


def test_only_some_sizes_run_only_their_units_and_targets() -> None:
    four = {run: {unit: [(2.0, 0.3)] for unit in UNITS if unit[1] == 4 * MiB} for run in range(2)}
    assert [v.goal for v in verdicts(fabricate(four))] == list(GOALS[:3])


def test_the_floor_is_judged_against_the_same_targets_apart_from_them() -> None:
    # Every target of auto, again with trio-floor (the least a sender on Trio does) in its place.
    assert [(g.size, g.base, g.measure, g.limit, g.at_least) for g in FLOOR_GOALS] == [
        (g.size, g.base, g.measure, g.limit, g.at_least) for g in GOALS
    ]
    assert all(g.case == "trio-floor" and "trio-floor" in g.name and "auto" not in g.name for g in FLOOR_GOALS)
    assert {(g.case, g.size) for g in FLOOR_GOALS} <= set(UNITS)
    # At 64 KiB: auto at 1.05x trio-send_all, the floor at 1.1x: both miss 1.2.
    figures = {
        run: {
            ("auto", 64 * KiB): [(2.1, 0.3)],
            ("trio-send_all", 64 * KiB): [(2.0, 0.3)],
            ("trio-floor", 64 * KiB): [(2.2 + run / 10, 0.25)],
        }
        for run in range(2)
    }
    text = report(fabricate(figures), [])
    targets, _, floors = text.partition("the same targets for trio-floor")
    assert "MISSED  64 KiB auto / trio send_all, throughput: worst 1.05" in targets
    assert "trio-floor" not in targets.split("targets (")[1]  # the floor is not one of trio_zc's targets
    assert "MISSED  64 KiB trio-floor / trio send_all, throughput: worst 1.10 (target >= 1.2)" in floors
    assert "runs: 1.10, 1.15" in floors
    # Only the floor's goals at the sizes measured; none when the floor did not run.
    assert floors.count("trio-floor /") == 1
    del figures[0][("trio-floor", 64 * KiB)], figures[1][("trio-floor", 64 * KiB)]
    assert "the same targets for trio-floor" not in report(fabricate(figures), [])


def test_the_raw_figures_survive_the_json_file() -> None:
    figures = {run: {unit: [(1.0 + run + i / 10, 0.3 + i / 100) for i in range(3)] for unit in UNITS} for run in range(2)}
    measured = fabricate(figures)
    infos = [RunInfo(0, 1.5, 2.0, 100.0), RunInfo(1, 2.0, 1.0, 99.0)]
    text = to_json(measured, infos, seed=7, total_bytes=3 << 30, repeat=3, runs=2)
    protocol, back, back_infos = from_json(text)
    assert protocol == {"seed": 7, "bytes": 3 << 30, "repeat": 3, "runs": 2, "sizes": [4 * MiB, 64 * KiB, 16 * KiB]}
    assert back == measured and back_infos == infos
    assert [v.describe() for v in verdicts(back)] == [v.describe() for v in verdicts(measured)]
    assert json.loads(text)["machine"]["cpus"]
    assert json.loads(text)["machine"]["build"] == build()  # which build of trio_zc measured


def test_lease_cycles_are_judged_on_the_worst_run_like_the_ratios() -> None:
    figures = {run: {unit: [(1.0, 0.3)] for unit in UNITS} for run in range(3)}
    infos = [RunInfo(0, 0.1, 0.1, 60.0, 104_000.0), RunInfo(1, 0.1, 0.1, 60.0, 99_960.0), RunInfo(2, 0.1, 0.1, 60.0, 101_000.0)]
    cycles = verdicts(fabricate(figures), infos=infos)[-1]
    assert cycles.goal.name == "lease cycles per second / 100,000"
    assert not cycles.met  # one run of three below the target
    assert math.isclose(cycles.worst, 0.9996)
    assert "worst 0.9996 (target >= 1.0)" in cycles.describe()  # never printed as 1.00
    assert verdicts(fabricate(figures), infos=[RunInfo(0, 0.1, 0.1, 60.0, 100_000.0)])[-1].met
    # Runs that did not count cycles (--cycles 0, or figures saved before) add no target.
    assert len(verdicts(fabricate(figures), infos=[RunInfo(0, 0.1, 0.1, 60.0)])) == len(GOALS)


def test_figures_saved_without_lease_cycles_still_load() -> None:
    measured = fabricate({0: {unit: [(1.0, 0.3)] for unit in UNITS}})
    data = json.loads(to_json(measured, [RunInfo(0, 0.1, 0.2, 60.0)], seed=1, total_bytes=1 << 30, repeat=1, runs=1))
    for row in data["runs"]:
        del row["cycles_per_second"], row["cycles_per_round"]  # as written before the fields existed
    _, _, infos = from_json(json.dumps(data))
    assert infos == [RunInfo(0, 0.1, 0.2, 60.0, None)]


def test_the_figures_so_far_are_handed_over_after_every_run() -> None:
    """So that ``--json`` keeps the finished runs of an interrupted protocol (a real, tiny run)."""
    seen: list[tuple[int, int]] = []
    steps = plan(2, 1, 0, [("auto", 16 * KiB), ("trio-send_all", 16 * KiB)])
    measured, infos = run_protocol(
        steps, 16 * KiB, 0, after_run=lambda m, i: seen.append((len(m), len(i))), cycles=200
    )
    assert seen == [(2, 1), (4, 2)]
    assert all(i.cycles_per_second is not None and i.cycles_per_second > 0 for i in infos)
    # One cycle figure per round (one round per run here), the run's being their median.
    assert all(len(i.cycles_per_round) == 1 and i.cycles_per_round[0] == i.cycles_per_second for i in infos)
    assert [m.step for m in measured] == steps
    assert all(m.result.intact == m.result.images == 8 for m in measured)


def test_a_runs_lease_cycles_are_the_median_of_its_rounds() -> None:
    """A second of noise in one round moves the run's figure no more than another round's."""
    steps = plan(1, 3, 0, [("auto", 16 * KiB)])
    _, infos = run_protocol(steps, 16 * KiB, 0, cycles=200)
    (info,) = infos
    assert len(info.cycles_per_round) == 3
    assert info.cycles_per_second == sorted(info.cycles_per_round)[1]
    # Saved and read back whole.
    data = to_json([], infos, seed=0, total_bytes=16 * KiB, repeat=3, runs=1)
    assert from_json(data)[2] == infos


# -- the command line -------------------------------------------------------------


def run_script(cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--bytes", "0"), ("--bytes must be at least 1, not 0",)),
        (("--bytes", "12Q"), ("not a size",)),
        (("--repeat", "0"), ("--repeat must be at least 1, not 0",)),
        (("--runs", "0"), ("--runs must be at least 1, not 0",)),
        (("--runs", "two"), ("--runs", "invalid int value")),
        (("--cycles", "-1"), ("--cycles must be 0 (skip) or more, not -1",)),
        (("--seed", "-1"), ("--seed must be 0 or more",)),
        (("--sizes", "4M,1M,32K"), ("--sizes: the protocol has no units at 1 MiB, 32 KiB", "16 KiB")),
        (("--sizes", "0"), ("give at least one positive size",)),
        (("--dry-run", "--from-json", "runs.json"), ("--dry-run", "--from-json", "give one of them")),
        (("--json", "no/such/folder/runs.json"), ("--json", "does not exist")),
        (("--json", "."), ("--json", "is a folder")),
        (("--from-json", "missing.json"), ("--from-json", "cannot read")),
        (("--no-such-option",), ("unrecognized arguments: --no-such-option",)),
    ],
)
def test_bad_arguments_are_one_line_with_status_2_before_any_work(
    tmp_path: pathlib.Path, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = run_script(tmp_path, *args)
    usage_error(
        result,
        *fragments,
        starts="python benchmarks/long_run.py: error: ",
        ends="(see python benchmarks/long_run.py --help)",
    )
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "is not JSON"), ('{"steps": []}', "is not figures saved by --json"), ("[1, 2]", "is not figures")],
)
def test_a_figures_file_that_is_not_one_is_refused(tmp_path: pathlib.Path, content: str, fragment: str) -> None:
    (tmp_path / "runs.json").write_text(content)
    result = run_script(tmp_path, "--from-json", "runs.json")
    usage_error(result, "--from-json: runs.json", fragment, starts="python benchmarks/long_run.py: error: ")


def test_the_dry_run_prints_the_plan_and_runs_nothing(tmp_path: pathlib.Path) -> None:
    result = run_script(tmp_path, "--dry-run", "--seed", "11", "--runs", "2", "--json", "runs.json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress line: nothing was measured
    assert list(tmp_path.iterdir()) == []  # and no figures written
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "protocol: 10 units x 3 GiB x 7 repetitions per run, 2 run(s), seed 11 (--seed 11 repeats this order),"
        f" trio_zc's {build()} build"
    )
    assert lines[1].startswith("sends 420.0 GiB over loopback; estimated ")
    rounds = lines[2:]
    assert len(rounds) == 2 * 7
    expected = [s for s in plan(2, 7, 11)]
    for line, rnd in zip(rounds, [(run, r) for run in range(2) for r in range(7)]):
        order = [s for s in expected if (s.run, s.round) == rnd]
        assert line == f"  run {rnd[0] + 1} round {rnd[1] + 1}: " + ", ".join(
            f"{s.size >> 20} MiB {s.case}" if s.size >= MiB else f"{s.size >> 10} KiB {s.case}" for s in order
        )


def test_without_a_seed_one_is_drawn_and_printed(tmp_path: pathlib.Path) -> None:
    seeds = set()
    for _ in range(3):
        result = run_script(tmp_path, "--dry-run", "--runs", "1", "--repeat", "1")
        assert result.returncode == 0, result.stderr
        seed = int(result.stdout.split("seed ")[1].split()[0])
        assert f"(--seed {seed} repeats this order)" in result.stdout
        again = run_script(tmp_path, "--dry-run", "--runs", "1", "--repeat", "1", "--seed", str(seed))
        assert again.stdout == result.stdout
        seeds.add(seed)
    assert len(seeds) > 1  # drawn: three draws from a million are not all equal


def test_the_dry_run_of_one_size_plans_only_its_units(tmp_path: pathlib.Path) -> None:
    result = run_script(tmp_path, "--dry-run", "--seed", "3", "--runs", "1", "--sizes", "4M")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("protocol: 4 units x 3 GiB x 7 repetitions per run, 1 run(s), seed 3")
    rounds = result.stdout.splitlines()[2:]
    assert len(rounds) == 7
    for line in rounds:
        units = line.split(": ", 1)[1].split(", ")
        assert sorted(units) == ["4 MiB auto", "4 MiB blocking", "4 MiB trio-floor", "4 MiB trio-send_all"]
