from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from ._usage import assert_one_line_usage_error as usage_error

import trio_zc._bench as bench
import trio_zc._lifecycle as lifecycle
from trio_zc._bench_cases import ALL_CASES, KERNEL_CASES
from trio_zc._bench_cli import build


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
    assert f"mock kernel, {build()} build" in result.stdout  # the figure says which build made it
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


ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_in(cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m trio_zc ARGS`` from *cwd*."""
    code = "import sys; from trio_zc.__main__ import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    line = usage_error(result, *fragments, starts="python -m trio_zc")
    assert "error:" in line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((), ("{demo,bench,lifecycle}",)),
        (("warp",), ("invalid choice: 'warp'",)),
        (("bench", "--repeat", "-1"), ("--repeat must be at least 1",)),
        (("bench", "--repeat", "0"), ("--repeat must be at least 1",)),
        (("bench", "--repeat", "many"), ("--repeat", "invalid int value")),
        (("bench", "--bytes", "0"), ("--bytes must be at least 1",)),
        (("bench", "--bytes", "infK"), ("not a size",)),
        (("bench", "--cycles", "-5"), ("--cycles must be 0",)),
        (("bench", "--cases", "copy,warp-drive"), ("warp-drive", "the cases are")),
        (("bench", "--sizes", "12Q"), ("not a size",)),
        (("bench", "--sizes", "0"), ("positive size",)),
        (("bench", "--reference", "warp"), ("--reference", "'warp'", "the cases are")),
        (("bench", "--json", "no/such/folder/runs.json"), ("--json", "does not exist")),
        (("bench", "--from-json", "missing.json"), ("--from-json", "cannot read")),
        (("bench", "--no-such-option"), ("unrecognized arguments: --no-such-option",)),
        # The project's acceptance options moved to benchmarks/acceptance.py.
        (("bench", "--stalled", "10"), ("unrecognized arguments: --stalled 10",)),
        (("bench", "--chart", "chart.png"), ("unrecognized arguments: --chart chart.png",)),
        (("bench", "--check-targets"), ("unrecognized arguments: --check-targets",)),
        (("lifecycle", "--no-such-option"), ("unrecognized arguments: --no-such-option",)),
    ],
)
def test_bad_arguments_are_one_line_with_status_2_before_any_work(
    tmp_path: pathlib.Path, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = run_in(tmp_path, *args)
    assert_one_line_usage_error(result, *fragments)
    assert "(see python -m trio_zc" in result.stderr  # where to read more
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_bench_from_json_refuses_a_file_that_is_not_its_figures(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("not json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert_one_line_usage_error(run_in(tmp_path, "bench", "--from-json", "notes.txt"), "is not JSON")
    assert_one_line_usage_error(run_in(tmp_path, "bench", "--from-json", "other.json"), "not figures saved by --json")


def test_bench_help_says_what_the_defaults_cost() -> None:
    result = run("bench", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    runs = len(ALL_CASES) * len(bench.DEFAULT_SIZES) * 3
    assert f"{runs} runs sending about {runs * 512 / 1024:.0f} GiB" in text
    assert "lease cycles. That took 2 min 25 s on a shared 2-core machine" in text  # no stalled clients now
    assert "benchmarks/acceptance.py" in text  # where the project's targets went
    assert "--repeat 1" in text  # and how to ask for less


def test_lifecycle_write_docs_outside_a_checkout_says_what_to_do(tmp_path: pathlib.Path) -> None:
    result = run_in(tmp_path, "lifecycle", "--write-docs")
    assert_one_line_usage_error(result, "docs/lifecycle.rst does not exist", "checkout")
    (tmp_path / "page.rst").write_text("A page without the generated blocks.\n")
    result = run_in(tmp_path, "lifecycle", "--write-docs", "page.rst")
    assert_one_line_usage_error(result, "no generated diagram block")
    assert (tmp_path / "page.rst").read_text() == "A page without the generated blocks.\n"
    assert not (tmp_path / "_static").exists()


def test_lifecycle_write_docs_regenerates_the_table_and_the_picture(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "docs" / "lifecycle.rst"
    page.parent.mkdir()
    text = (ROOT / "docs" / "lifecycle.rst").read_text()
    # Make both generated parts stale.
    stale = text.replace(lifecycle.render_table(), "stale table")
    page.write_text(stale)
    (page.parent / "_static").mkdir()
    (page.parent / "_static" / "lifecycle.svg").write_text("<svg/>")
    result = run_in(tmp_path, "lifecycle", "--write-docs")
    assert result.returncode == 0, result.stderr
    assert page.read_text() == text
    assert (page.parent / "_static" / "lifecycle.svg").read_text() == lifecycle.render_svg()
