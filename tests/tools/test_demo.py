"""``python -m trio_zc demo`` (``make demo``): what it prints, its chart, and how it refuses bad input.

The demo runs for real here, on loopback, with small options: the naive
senders must corrupt images, trio_zc's kernels must not, and the report
must be the few lines the README promises.
"""

from __future__ import annotations

import io
import pathlib
import re
import subprocess
import sys

import pytest

from ._usage import assert_one_line_usage_error as usage_error

from trio_zc._demo import DEMO_KERNELS, Progress

FAST = ("--images", "8", "--clients", "2", "--repeat", "1", "--send-mb", "20")


def run(*args: str, python: tuple[str, ...] = ("-m", "trio_zc")) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *python, *args], capture_output=True, text=True, timeout=300)


def corrupted(stdout: str, label: str) -> tuple[int, int]:
    """(corrupted, sent) from the report line that starts with *label*."""
    match = re.search(rf"^  {re.escape(label)}.*?(\d+) of (\d+) images corrupted$", stdout, re.MULTILINE)
    assert match, f"no line for {label!r} in:\n{stdout}"
    return int(match.group(1)), int(match.group(2))


def test_the_demo_shows_the_naive_way_failing_and_trio_zc_not_in_a_few_lines(tmp_path: pathlib.Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    chart = tmp_path / "demo.png"
    result = run("demo", *FAST, "--chart", str(chart))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("trio_zc demo: 8 images of "), out
    assert "MB), 2 loopback connections, each image's SHA-256 checked" in out.splitlines()[0]

    # 1. The naive way loses images (on loopback the receiver lags, so the
    # kernel still holds the pages when they are rewritten).
    bad, sent = corrupted(out, "naive sendfile")
    assert sent == 8 and bad > 0, out
    bad, sent = corrupted(out, "naive MSG_ZEROCOPY")
    assert sent == 8 and bad > 0, out
    # 2. trio_zc, every kernel, in the same amount of memory: none.
    assert corrupted(out, "trio_zc, every kernel") == (0, 8 * len(DEMO_KERNELS))

    # 3. The table: every kernel and the baseline, zero-copy shares that
    # tell the kernels apart, ratios to the baseline.
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("kernel "))
    assert lines[head].split()[1:] == "zero-copy at send completions said GB/s vs trio send_all".split()
    rows = {line[:14].strip(): line for line in lines[head + 1 : head + 2 + len(DEMO_KERNELS)]}
    assert list(rows) == [*DEMO_KERNELS, "trio send_all"], out
    assert re.search(r"^copy\s+0%\s+-\s+[\d.]+\s+[\d.]+x$", rows["copy"]), rows["copy"]
    assert re.search(r"^sendfile\s+100%\s+no completions\s+[\d.]+\s+[\d.]+x$", rows["sendfile"]), rows["sendfile"]
    for kernel in ("msg_zerocopy", "io_uring"):
        # Sent zero-copy, and the completions said loopback copied them.
        assert re.search(rf"^{kernel}\s+100%\s+100% copied\s+[\d.]+\s+[\d.]+x$", rows[kernel]), rows[kernel]
    # auto copies to a peer on loopback, and says why (once).
    assert re.search(r"^auto\s+0%\s+-\s+[\d.]+\s+[\d.]+x$", rows["auto"]), rows["auto"]
    assert out.count("auto: the peer is on loopback") == 1
    assert re.search(r"^trio send_all\s+0%\s+-\s+[\d.]+\s+1\.00x$", rows["trio send_all"]), out
    timed = re.search(r"the timed runs too: (\d+) of (\d+) images intact", out)
    assert timed and timed.group(1) == timed.group(2) and int(timed.group(1)) > 0, out
    assert "sealed in leases first" in out
    assert "On loopback the kernel then copies" in out.replace("\n", " ")
    assert f"chart: {chart}" in out

    # Few lines: no line per stream, the io_uring probe's sentence at most once.
    assert len(out.splitlines()) <= 35, out
    assert out.count("SEND_ZC on loopback") <= 1
    assert "a stream sent" not in out + result.stderr
    # Not a terminal: progress is a few plain lines on stderr.
    progress = result.stderr.splitlines()
    assert 1 <= len(progress) <= 6 and all(line.endswith("...") for line in progress), result.stderr

    with image_module.open(chart) as image:
        assert image.format == "PNG" and image.width >= 600


def test_some_kernels_and_one_image_per_connection() -> None:
    """Nothing is rewritten with one image per connection, and the demo says so rather than look broken."""
    result = run("demo", "--images", "2", "--clients", "4", "--kernels", "copy,sendfile", "--repeat", "1",
                 "--send-mb", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "2 images" in out and "2 loopback connections" in out  # not more connections than images
    assert corrupted(out, "naive sendfile") == (0, 2)
    assert "(none this time: an image arrives wrong only when its memory is rewritten" in out
    assert corrupted(out, "trio_zc, copy, sendfile") == (0, 4)
    assert [line.split()[0] for line in out.splitlines() if line.startswith(("copy ", "sendfile ", "trio "))] == [
        "copy", "sendfile", "trio"
    ]


def test_progress_is_one_updating_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    progress = Progress(screen)
    progress.phase("making 3 images")
    for n in range(3):
        progress.step(f"image {n + 1}")
    progress.phase("timing")
    progress.done()
    written = screen.getvalue()
    assert "\n" not in written
    assert written.count("\r\x1b[K") == 6  # every update rewrites the one line; done() clears it
    assert "making 3 images: image 3" in written

    pipe = io.StringIO()
    progress = Progress(pipe)
    progress.phase("making 3 images")
    progress.step("image 1")  # not shown: a log gets one line per phase
    progress.phase("timing")
    progress.done()
    assert pipe.getvalue() == "making 3 images...\ntiming...\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--kernels", "bogus"), "unknown kernel 'bogus'; give some of auto,io_uring,msg_zerocopy"),
        (("--kernels", "copy,copy"), "'copy' is named twice"),
        (("--kernels", ","), "no kernel named"),
        (("--images", "0"), "--images must be between 1 and"),
        (("--images", "-3"), "--images must be between 1 and"),
        (("--clients", "-1"), "--clients must be between 1 and"),
        (("--repeat", "0"), "--repeat must be between 1 and"),
        (("--send-mb", "-5"), "--send-mb must be between 1 and"),
        (("--images", "many"), "argument --images: invalid int value: 'many'"),
        (("--images",), "argument --images: expected one argument"),
        (("--warp-drive",), "unrecognized arguments: --warp-drive"),
        (("--chart", "/nonexistent-dir/chart.png"), "the directory '/nonexistent-dir' does not exist"),
        (("--chart", "."), "'.' is a directory"),
    ],
)
def test_bad_options_get_one_line_and_exit_status_2_before_any_work(args: tuple[str, ...], says: str) -> None:
    result = run("demo", *args)
    usage_error(result, says, starts="python -m trio_zc demo: error: ")


# Runs the demo's command line in a Python whose import of *module* fails, as
# in an install without the [images] extra.
WITHOUT = (
    "import sys; sys.modules[sys.argv[1]] = None;"
    " from trio_zc.__main__ import main; sys.exit(main(sys.argv[2:]))"
)


@pytest.mark.parametrize(
    ("module", "args", "names"),
    [
        ("numpy", (), "NumPy cannot be imported"),
        ("PIL", (), "Pillow cannot be imported"),
        ("PIL", ("--chart", "chart.png"), "for the chart and the images, and Pillow cannot be imported"),
    ],
)
def test_without_numpy_or_pillow_the_demo_says_what_to_install(
    tmp_path: pathlib.Path, module: str, args: tuple[str, ...], names: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT, module, "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    usage_error(result, names, "pip install 'trio_zc[images]'")
    assert not (tmp_path / "chart.png").exists()
