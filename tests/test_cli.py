from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

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
    image_module = pytest.importorskip("PIL.Image")
    figures, chart = tmp_path / "runs.json", tmp_path / "chart.png"
    result = run(
        "bench", "--cases", ",".join(ALL_CASES), "--sizes", "64K,1M", "--bytes", "1M", "--repeat", "1",
        "--cycles", "2000", "--stalled", "0", "--json", str(figures), "--chart", str(chart),
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
    assert "lease overhead:" in result.stdout and "targets:" in result.stdout
    saved = bench.from_json(figures.read_text())
    assert len(saved) == 2 * len(ALL_CASES)
    assert all(r.received == r.images for r in saved)
    assert all(0 < r.p50_latency <= r.p99_latency for r in saved)
    with image_module.open(chart) as image:
        assert image.format == "PNG"
    # The saved figures give the same table without running anything.
    again = run("bench", "--from-json", str(figures), "--repeat", "3", "--cycles", "0", "--stalled", "0")
    assert again.returncode == 0, again.stderr
    assert bench.table(bench.summarize(saved)) in again.stdout
    assert "median of 1 run(s)" in again.stdout  # what the figures hold, not --repeat


def test_bench_refuses_unknown_cases_and_bad_sizes() -> None:
    result = run("bench", "--cases", "copy,warp-drive")
    assert result.returncode == 2 and "warp-drive" in result.stderr
    result = run("bench", "--sizes", "12Q")
    assert result.returncode == 2 and "not a size" in result.stderr


ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_in(cwd: pathlib.Path, *args: str, block_pillow: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m trio_zc ARGS`` from *cwd*; with *block_pillow*, as if Pillow were not installed."""
    prelude = "import sys; sys.modules['PIL'] = None; " if block_pillow else "import sys; "
    code = prelude + "from trio_zc.__main__ import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m trio_zc") and "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


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
        (("bench", "--stalled", "-1"), ("--stalled must be 0",)),
        (("bench", "--cases", "copy,warp-drive"), ("warp-drive", "the cases are")),
        (("bench", "--sizes", "12Q"), ("not a size",)),
        (("bench", "--sizes", "0"), ("positive size",)),
        (("bench", "--reference", "warp"), ("--reference", "'warp'", "the cases are")),
        (("bench", "--stalled-kernel", "warp"), ("--stalled-kernel", "the kernels are")),
        (("bench", "--json", "no/such/folder/runs.json"), ("--json", "does not exist")),
        (("bench", "--chart", "no/such/folder/chart.png"), ("--chart", "does not exist")),
        (("bench", "--from-json", "missing.json"), ("--from-json", "cannot read")),
        (("bench", "--no-such-option"), ("unrecognized arguments: --no-such-option",)),
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


def test_bench_chart_without_pillow_is_refused_before_the_benchmark_runs(tmp_path: pathlib.Path) -> None:
    """It used to run the whole benchmark and then fail on ``import PIL``."""
    result = run_in(
        tmp_path, "bench", "--cases", "copy", "--sizes", "64K", "--bytes", "64K", "--repeat", "1",
        "--cycles", "0", "--stalled", "0", "--chart", "chart.png", block_pillow=True,
    )
    assert_one_line_usage_error(result, "--chart needs Pillow", "pip install Pillow")
    assert not (tmp_path / "chart.png").exists()


def test_bench_help_says_what_the_defaults_cost() -> None:
    result = run("bench", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    runs = len(ALL_CASES) * len(bench.DEFAULT_SIZES) * 3
    assert f"{runs} runs sending about {runs * 512 / 1024:.0f} GiB" in text
    assert "2 min 25 s on a shared 2-core machine" in text
    assert "--repeat 1" in text  # and how to ask for less


@pytest.mark.parametrize(
    ("ratio", "limit", "at_least", "met", "shown"),
    [
        (49_784 / 50_000, 1.0, True, False, "0.996"),  # was printed as 1.00 next to MISS
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
    target = bench.Target("x", ratio, limit, at_least)
    assert target.met is met
    line = target.describe()
    assert line.startswith("met " if met else "MISS")
    assert f"x: {shown} (target" in line
    printed = float(line.split("x: ")[1].split()[0])
    assert (printed >= limit if at_least else printed <= limit) is met


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
