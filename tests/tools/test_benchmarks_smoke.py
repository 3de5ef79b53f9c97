"""Every script in benchmarks/ runs with its smallest arguments and prints its report.

benchmarks/ lives outside the package, where nothing else would notice a
script that no longer runs (``kernel_cost.py`` once called functions that had
been removed). Each script runs here as a user runs it, ``python
benchmarks/<name>.py`` in a fresh interpreter and from another directory, with
sizes and times cut to the minimum: this checks that it runs to the end and
reports, not its figures.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from trio_zc._bench_cases import KERNEL_CASES

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"

#: Files of benchmarks/ that are imported, not run.
MODULES = {"__init__.py", "chart.py", "goals.py"}

#: Scripts smoke-tested by another test file (beside the example they measure).
ELSEWHERE = {"image_workers.py": "test_example_render_in_workers.py", "http_load.py": "test_benchmarks_http_load.py"}

#: Each script's smallest arguments, and what its report must say.
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "acceptance.py": (
        [
            "--cases", "auto,trio-send_all,blocking", "--sizes", "64K,4M", "--bytes", "64K", "--repeat", "1",
            "--cycles", "300",
            "--stalled", "4", "--stalled-kernel", "copy", "--stalled-settle", "0.2", "--stalled-window", "0.2",
        ],
        [
            "ratios (x ref) to 'trio-send_all'",
            "lease overhead:",
            "stalled clients, kernel 'copy'",
            "4 of 4 clients connected",
            "targets:",
            "64 KiB auto / trio send_all, throughput",
            "4 MiB auto / C blocking sendall loop, throughput",
            "4 MiB auto / trio send_all, CPU per GB",
            "lease cycles per second / 100,000",
            "stalled clients: server CPU share / 5%",
            "stalled clients: server peak RSS",
        ],
    ),
    # One real protocol, cut to the least bytes (8 images a step) and two runs of two rounds.
    "long_run.py": (
        ["--bytes", "64K", "--repeat", "2", "--runs", "2", "--seed", "1", "--cycles", "300"],
        [
            "protocol: 10 units x 64 KiB x 2 repetitions per run, 2 run(s), seed 1",
            "medians per run",
            "targets (each must hold in every run; judged on the worst):",
            "4 MiB auto / C blocking sendall loop, throughput: worst",
            "4 MiB auto / trio send_all, CPU per GB: worst",
            "16 KiB auto / trio send_all, throughput: worst",
            "over 2 run(s)",
            "lease cycles per second (mock kernel, one stream, 1 KiB payloads), per run (the median of its rounds): ",
            "lease cycles per second / 100,000: worst",
            "the same targets for trio-floor, the least any sender on Trio does per image (not trio_zc's):",
            "64 KiB trio-floor / trio send_all, throughput: worst",
        ],
    ),
    "stalled.py": (
        ["run", "--clients", "4", "--image-size", "65536", "--pool-bytes", "1048576", "--settle", "0.2",
         "--window", "0.2"],
        ["4 of 4 clients connected", "server CPU", "server memory"],
    ),
    "kernel_cost.py": (
        ["--sizes", "64K", "--bytes", "64K", "--repeat", "1"],
        ["ratios (x ref) to 'copy'", *(f" 64 KiB  {case} " for case in KERNEL_CASES)],
    ),
    "stale_bytes.py": (
        ["--seconds-per-case", "0.001"],
        ["time per cycle", "64Ki", "16384Ki"],
    ),
    # Counted through the transports: strace is a developer's tool, not the suite's.
    "syscalls_per_response.py": (
        ["--count", "transport", "--requests", "4", "--connections", "1", "--kernels", "copy,sendfile"],
        ["calls per response (counted by the transports)", "copy           default", "sendfile       zerocopy"],
    ),
}  # fmt: skip


def run_script(name: str, args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], cwd=cwd, capture_output=True, text=True, timeout=180
    )


def test_every_file_is_a_smoke_tested_script_or_a_module() -> None:
    assert {path.name for path in BENCHMARKS.glob("*.py")} == set(SCRIPTS) | MODULES | set(ELSEWHERE)
    for name in MODULES:
        assert '__name__ == "__main__"' not in (BENCHMARKS / name).read_text(), name
    for name in [*SCRIPTS, *ELSEWHERE]:
        assert '__name__ == "__main__"' in (BENCHMARKS / name).read_text(), name
    for name, test in ELSEWHERE.items():
        assert f'"benchmarks" / "{name}"' in (pathlib.Path(__file__).parent / test).read_text(), (name, test)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_runs_and_reports(name: str, tmp_path: pathlib.Path) -> None:
    args, expected = SCRIPTS[name]
    result = run_script(name, args, tmp_path)
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, (text, result.stdout)


def test_acceptance_saves_its_figures_and_charts_them(tmp_path: pathlib.Path) -> None:
    figures = tmp_path / "runs.json"
    args = ["--cases", "auto,copy", "--sizes", "64K", "--bytes", "64K", "--repeat", "1", "--cycles", "0"]
    result = run_script("acceptance.py", [*args, "--stalled", "0", "--json", str(figures)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(figures.read_text())) == 2
    # Saved figures: the same table again, and the chart, without running anything.
    again = [*args, "--from-json", str(figures), "--stalled", "10"]
    if importlib.util.find_spec("PIL") is not None:
        again += ["--chart", str(tmp_path / "chart.png")]
    replay = run_script("acceptance.py", again, tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.splitlines()[:5] == result.stdout.splitlines()[:5]
    assert "stalled clients" not in replay.stdout  # nothing is run from saved figures
    if "--chart" in again:
        assert f"chart: {tmp_path / 'chart.png'}" in replay.stdout
        assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_long_run_saves_every_repetition_and_reports_them_again(tmp_path: pathlib.Path) -> None:
    figures = tmp_path / "runs.json"
    args = ["--bytes", "64K", "--repeat", "1", "--runs", "2", "--seed", "5"]
    result = run_script("long_run.py", [*args, "--json", str(figures)], tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads(figures.read_text())
    assert len(saved["steps"]) == 2 * 10 and len(saved["runs"]) == 2
    assert all(step["intact"] == step["images"] for step in saved["steps"])  # the receiver checked every byte
    assert saved["protocol"] == {"seed": 5, "bytes": 64 << 10, "repeat": 1, "runs": 2, "sizes": [4 << 20, 64 << 10, 16 << 10]}
    replay = run_script("long_run.py", ["--from-json", str(figures)], tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert replay.stderr == ""  # nothing ran
    # The same report from the saved figures (after the plan, which a replay does not print).
    report = result.stdout.split("\n\nmedians per run", 1)[1]
    assert replay.stdout.split("\n\nmedians per run", 1)[1] == report
