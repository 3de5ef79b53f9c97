from __future__ import annotations

import pathlib
import subprocess
import sys

import trio_zc._bench as bench
import trio_zc._lifecycle as lifecycle
from trio_zc._bench_cases import ALL_CASES, KERNEL_CASES


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_zc", *args], capture_output=True, text=True, timeout=120
    )


def test_lifecycle_command_prints_the_generated_diagram() -> None:
    result = run("lifecycle")
    assert result.returncode == 0
    assert lifecycle.render_mermaid() in result.stdout
    assert lifecycle.render_table() in result.stdout


def test_bench_smoke_runs_every_case_verifies_every_image_and_saves_its_figures(tmp_path: pathlib.Path) -> None:
    figures = tmp_path / "runs.json"
    result = run(
        "bench", "--cases", ",".join(ALL_CASES), "--sizes", "64K,1M", "--bytes", "1M", "--repeat", "1",
        "--cycles", "2000", "--json", str(figures),
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[2:3] and line.split()[2] in ALL_CASES]
    assert {(r[0], r[2]) for r in rows} == {(size, case) for size in ("64", "1") for case in ALL_CASES}
    # The runs came in a shuffled order; the table lists the cases in the usual one.
    assert [r[2] for r in rows] == list(ALL_CASES) * 2
    for r in rows:
        if r[2] in KERNEL_CASES:
            assert r[-1] == "all", r  # every image of trio_zc's own cases arrived intact
    # Progress on stderr, one line per run.
    assert result.stderr.count(" rep 1:") == 2 * len(ALL_CASES)
    assert "lease overhead:" in result.stdout
    # The project's targets and stalled clients are benchmarks/acceptance.py's, not the user's tool's.
    assert "targets:" not in result.stdout and "stalled" not in result.stderr + result.stdout
    saved = bench.from_json(figures.read_text())
    assert len(saved) == 2 * len(ALL_CASES)
    assert all(r.received == r.images for r in saved)
    assert all(0 < r.p50_latency <= r.p99_latency for r in saved)
    # The saved figures give the same table without running anything.
    again = run("bench", "--from-json", str(figures), "--repeat", "3", "--cycles", "0")
    assert again.returncode == 0, again.stderr
    assert bench.table(bench.summarize(saved)) in again.stdout
    assert "median of 1 run(s)" in again.stdout  # what the figures hold, not --repeat


def test_bench_refuses_unknown_cases_and_bad_sizes() -> None:
    result = run("bench", "--cases", "copy,warp-drive")
    assert result.returncode == 2 and "warp-drive" in result.stderr
    result = run("bench", "--sizes", "12Q")
    assert result.returncode == 2 and "not a size" in result.stderr
