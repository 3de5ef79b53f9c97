"""benchmarks/acceptance.py: which targets a run is checked against, and the verdicts."""

from __future__ import annotations

import math

import pytest

from benchmarks.acceptance import Target, targets
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
        # No reference at 16 MiB: no target there.
        summary("auto", 16 * MiB, 3.0, 0.3),
    ]
    found = {t.name: t for t in targets(run)}
    assert set(found) == {
        "4 MiB auto throughput / blocking",
        "4 MiB auto throughput / trio-send_all",
        "64 KiB auto throughput / trio-send_all",
        "4 MiB auto CPU per GB / trio-send_all",
    }
    assert math.isclose(found["4 MiB auto throughput / blocking"].ratio, 3.0 / 3.5)
    assert not found["4 MiB auto throughput / blocking"].met
    assert found["4 MiB auto throughput / trio-send_all"].met  # 1.5 >= 1.4
    assert found["64 KiB auto throughput / trio-send_all"].met
    assert found["4 MiB auto CPU per GB / trio-send_all"].met  # 0.6 <= 0.8
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
