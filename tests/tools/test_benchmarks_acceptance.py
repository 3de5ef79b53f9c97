"""benchmarks/acceptance.py: which targets a run is checked against, the verdicts, its options."""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import pytest

from ._usage import assert_one_line_usage_error as usage_error

from benchmarks.acceptance import Target, targets
from benchmarks.goals import GOALS
from trio_zc._bench import Summary

KiB, MiB = 1 << 10, 1 << 20


def summary(case: str, size: int, throughput: float, cpu_per_gb: float) -> Summary:
    return Summary(case, size, 1, throughput, throughput, throughput, cpu_per_gb, 0.001, 0.002, 0.0, 8, 8)


def test_targets_are_ratios_of_the_cases_in_the_run() -> None:
    run = [
        summary("auto", 64 * KiB, 1.1, 0.9),
        summary("trio-send_all", 64 * KiB, 1.0, 1.0),
        summary("auto", 4 * MiB, 3.0, 0.3),
        summary("trio-send_all", 4 * MiB, 2.0, 0.5),
        summary("blocking", 4 * MiB, 3.5, 0.2),
        # No reference at 16 MiB, and none for auto at 16 KiB: no target there.
        summary("auto", 16 * MiB, 3.0, 0.3),
        summary("trio-send_all", 16 * KiB, 1.0, 1.0),
    ]
    found = {t.name: t for t in targets(run)}
    # The same targets, names and limits as the long-run protocol's (benchmarks/goals.py).
    assert set(found) == {g.name for g in GOALS if g.size != 16 * KiB}
    assert [(t.limit, t.at_least) for t in found.values()] == [
        (g.limit, g.at_least) for g in GOALS if g.size != 16 * KiB
    ]
    over_blocking = found["4 MiB auto / C blocking sendall loop, throughput"]
    assert math.isclose(over_blocking.ratio, 3.0 / 3.5) and not over_blocking.met
    assert found["4 MiB auto / trio send_all, throughput"].met  # 1.5 >= 1.4
    assert not found["64 KiB auto / trio send_all, throughput"].met  # 1.1 < 1.2
    assert found["4 MiB auto / trio send_all, CPU per GB"].met  # 0.6 <= 0.6
    assert targets([summary("copy", 4 * MiB, 1.0, 1.0)]) == []


@pytest.mark.parametrize(
    ("ratio", "at_least", "met"),
    [(1.0, True, True), (0.99, True, False), (1.0, False, True), (1.01, False, False)],
)
def test_a_target_on_its_limit_is_met(ratio: float, at_least: bool, met: bool) -> None:
    target = Target("x", ratio, 1.0, at_least)
    assert target.met is met
    assert target.describe().startswith("met " if met else "MISS")
    assert f"target {'>=' if at_least else '<='} 1.0" in target.describe()


@pytest.mark.parametrize(
    ("ratio", "limit", "at_least", "met", "shown"),
    [
        (99_784 / 100_000, 1.0, True, False, "0.998"),  # was printed as 1.00 next to MISS
        (0.9999999, 1.0, True, False, "0.9999999"),
        (1.0, 1.0, True, True, "1.00"),
        (1.003, 1.0, True, True, "1.00"),
        (1.004, 1.0, False, False, "1.004"),
        (0.8049, 0.8, False, False, "0.805"),
        (0.42, 0.8, False, True, "0.42"),
    ],
)
def test_a_target_is_never_printed_on_the_wrong_side_of_its_limit(
    ratio: float, limit: float, at_least: bool, met: bool, shown: str
) -> None:
    target = Target("x", ratio, limit, at_least)
    assert target.met is met
    line = target.describe()
    assert line.startswith("met " if met else "MISS")
    assert f"x: {shown} (target" in line
    printed = float(line.split("x: ")[1].split()[0])
    assert (printed >= limit if at_least else printed <= limit) is met


SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "acceptance.py"


def run_script(cwd: pathlib.Path, *args: str, block_pillow: bool = False) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/acceptance.py ARGS`` from *cwd*; with *block_pillow*, as if Pillow were not installed."""
    prelude = "import sys; sys.modules['PIL'] = None; " if block_pillow else "import sys; "
    code = prelude + f"import runpy; sys.argv[0] = {str(SCRIPT)!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    usage_error(
        result,
        *fragments,
        starts="python benchmarks/acceptance.py: error: ",
        ends="(see python benchmarks/acceptance.py --help)",
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        # The bench options, checked as python -m trio_zc bench checks them.
        (("--repeat", "0"), ("--repeat must be at least 1",)),
        (("--sizes", "12Q"), ("not a size",)),
        (("--json", "no/such/folder/runs.json"), ("--json", "does not exist")),
        (("--from-json", "missing.json"), ("--from-json", "cannot read")),
        # This script's own.
        (("--stalled", "-1"), ("--stalled must be 0",)),
        (("--stalled-settle", "-1"), ("--stalled-settle must be 0",)),
        (("--stalled-window", "0"), ("--stalled-window must be more than 0",)),
        (("--stalled-kernel", "warp"), ("--stalled-kernel", "'warp'", "the kernels are")),
        (("--chart", "no/such/folder/chart.png"), ("--chart", "does not exist")),
        (("--chart", "."), ("--chart", "is a folder")),
        (("--no-such-option",), ("unrecognized arguments: --no-such-option",)),
    ],
)
def test_bad_arguments_are_one_line_with_status_2_before_any_work(
    tmp_path: pathlib.Path, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = run_script(tmp_path, *args)
    assert_one_line_usage_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_chart_without_pillow_is_refused_before_the_benchmark_runs(tmp_path: pathlib.Path) -> None:
    """It used to run the whole benchmark and then fail on ``import PIL``."""
    result = run_script(
        tmp_path, "--cases", "copy", "--sizes", "64K", "--bytes", "64K", "--repeat", "1",
        "--cycles", "0", "--stalled", "0", "--json", "runs.json", "--chart", "chart.png", block_pillow=True,
    )
    assert_one_line_usage_error(result, "--chart needs Pillow", "pip install Pillow")
    assert list(tmp_path.iterdir()) == []
