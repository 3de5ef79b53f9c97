"""examples/render_in_workers.py and benchmarks/image_workers.py run, and say what they should.

(No timing is asserted: the figures are the benchmark's to report.)
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error", *args], capture_output=True, text=True, timeout=300)


def test_the_example_server_renders_every_image_right_in_workers() -> None:
    result = run(str(ROOT / "examples" / "render_in_workers.py"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 clients received 18/18 JPEGs identical to Pillow's own (SHA-256)" in result.stdout
    assert re.search(r"workers: \d+ processes, 18 images encoded, 0 crashed", result.stdout), result.stdout
    assert re.search(r"the event loop's longest wait while serving: [\d.]+ ms", result.stdout)
    assert "pool: 134217728 of 134217728 bytes free" in result.stdout
    assert result.stderr == ""


def test_the_image_workers_benchmark_runs_and_reports_every_figure() -> None:
    result = run(
        str(ROOT / "benchmarks" / "image_workers.py"),
        "--width", "64", "--height", "48", "--images", "2", "--speed-images", "3", "--rounds", "1", "--small", "2", "--processes", "2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "image workers: JPEGs of 64x48 RGB" in out and "2 worker processes" in out
    assert re.search(r"target: workers encode >= 1.6x one thread: (met|MISSED)", out), out
    assert re.search(r"target: the event loop.s largest gap < 5.0 ms while workers encode: (met|MISSED)", out), out
    assert re.search(r"other processes used -?\d+% of the machine's CPUs", out), out
    for case in ("thread", "workers-pil", "workers-raw"):
        assert re.search(rf"  {case} +[\d.]+/s  x[\d.]+", out), (case, out)
    for case in ("workers-pil", "workers-raw"):
        assert re.search(rf"  {case} +[\d.]+ ms", out), (case, out)
    for case in ("idle", "spinners", "loop", "threads", "workers-pil", "workers-raw"):
        assert re.search(rf"  {case} +[\d.]+ / [\d.]+   \d+ of \d+", out), (case, out)
    assert re.search(r"mapped for the job [\d.]+ ms \(with MAP_POPULATE [\d.]+ ms\), through the pool's mapping kept", out)
    assert re.search(r"in the loop [\d.]+ ms, through a worker [\d.]+ ms", out)
    assert result.stderr == ""
