"""benchmarks/chart.py: benchmark results drawn as a PNG with Pillow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from benchmarks.chart import PALETTE, _nice_scale, _size_label, render_chart  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
SIZES = [16 * KiB << (2 * i) for i in range(7)]  # 16 KiB ... 64 MiB


def fake_series() -> dict[str, dict[int, tuple[float, float]]]:
    return {
        "auto": {s: (2.0 + i * 0.8, 0.5 - i * 0.05) for i, s in enumerate(SIZES)},
        "copy": {s: (1.5 + i * 0.3, 0.9) for i, s in enumerate(SIZES)},
        "blocking sendall": {s: (1.0 + i * 0.2, 1.2 - i * 0.1) for i, s in enumerate(SIZES)},
        # Lacks the smallest and largest sizes.
        "trio send_all": {s: (0.8 + i * 0.1, 1.4) for i, s in enumerate(SIZES[1:-1])},
    }


def colour_count(image: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> int:
    colours = image.crop(box).getcolors(maxcolors=1 << 20)
    assert colours is not None
    return sum(n for n, c in colours if c == colour)


def test_chart_is_a_png_with_every_case(tmp_path: Path) -> None:
    series = fake_series()
    path = tmp_path / "bench.png"
    render_chart(series, path, title="test chart")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1400, 600)
        rgb = image.convert("RGB")
    assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 20
    width, height = rgb.size
    # Each case's colour is in both panels, not just the legend on the right.
    for colour in PALETTE[: len(series)]:
        assert colour_count(rgb, (0, 0, width * 2 // 5, height), colour) > 30
        assert colour_count(rgb, (width * 2 // 5, 0, width * 4 // 5, height), colour) > 30
    assert colour_count(rgb, (0, 0, width, height), PALETTE[len(series)]) == 0


def test_failed_points_are_skipped(tmp_path: Path) -> None:
    series = fake_series()
    series["msg_zerocopy"] = {s: (math.nan, math.inf) for s in SIZES}
    series["io_uring"] = {SIZES[0]: (0.0, -1.0), SIZES[1]: (3.0, math.nan), SIZES[2]: (4.0, 0.2)}
    path = tmp_path / "bench.png"
    render_chart(series, str(path))
    with Image.open(path) as image:
        assert image.size == (1400, 600)


def test_single_size_and_single_case(tmp_path: Path) -> None:
    render_chart({"sendfile": {MiB: (5.0, 0.1)}}, tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 0


def test_nothing_to_plot(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one case"):
        render_chart({}, tmp_path / "empty.png")
    with pytest.raises(ValueError, match="no case has"):
        render_chart({"auto": {MiB: (math.nan, 0.0)}, "copy": {}}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize(
    ("size", "label"),
    [(16 * KiB, "16 KiB"), (MiB, "1 MiB"), (64 * MiB, "64 MiB"), (1536 * KiB, "1.5 MiB"), (1000, "1000 B")],
)
def test_size_labels(size: int, label: str) -> None:
    assert _size_label(size) == label


@pytest.mark.parametrize("peak", [0.003, 0.2, 1.0, 1.01, 2.6, 7.3, 10.0, 12.5, 99.0, 1234.0])
def test_nice_scale(peak: float) -> None:
    step, steps = _nice_scale(peak)
    assert 3 <= steps <= 5
    assert step * (steps - 1) < peak <= step * steps * (1 + 1e-9)
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
