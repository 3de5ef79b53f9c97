"""The benchmark's PNG chart: throughput and sender CPU per GB by buffer size.

:func:`render_chart` draws two panels side by side against buffer size on a
log scale, throughput (GB/s) and the sender's CPU time per GB, with one line
per case and a legend; :func:`chart_series` turns the bench's summaries into
what it draws. ``benchmarks/acceptance.py --chart`` uses it for the figure in
docs/benchmarks.rst. Pillow (``pip install 'trio_zc[images]'``) is imported
only when a chart is drawn. The text and colours are the demo's
(:mod:`trio_zc._demo_drawing`), so that both charts look alike.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from trio_zc._bench_cases import KERNEL_CASES
from trio_zc._demo_drawing import INK, PALETTE, font, put, text_box

if TYPE_CHECKING:
    from PIL import ImageDraw

    from trio_zc._bench import Summary
    from trio_zc._demo_drawing import Font

__all__ = ["OWN_CASES", "PALETTE", "chart_series", "render_chart"]

#: trio_zc's own send kernels: drawn thicker than the baselines they are compared with.
OWN_CASES = frozenset(KERNEL_CASES)

_WIDTH, _HEIGHT = 1400, 600
_PANELS = ("Throughput (GB/s)", "Sender CPU (s per GB)")
_PLOT_LEFTS = (75, 660)
_PLOT_WIDTH = 480
_PLOT_TOP, _PLOT_BOTTOM = 80, 515
_LEGEND_X = 1180
# Keeps the first and last markers clear of the axes.
_INSET = 18
_GRID = (225, 225, 225)


def _size_label(size: int) -> str:
    """``16384`` -> ``"16 KiB"``: the largest binary unit that fits, three digits at most."""
    units = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, "B"))
    unit, name = next(u for u in units if size >= u[0])
    value = size / unit
    text = f"{value:.0f}" if value >= 100 or value.is_integer() else f"{value:.3g}"
    return f"{text} {name}"


def _nice_scale(peak: float) -> tuple[float, int]:
    """A round step (1, 2, 2.5 or 5 times a power of ten) and 3 to 5 steps that cover *peak*."""
    raw = peak / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    # The tolerance stops float noise from adding an empty step above a peak on a gridline.
    return step, max(math.ceil(peak / step * (1 - 1e-9)), 1)


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    fonts: tuple[Font, Font, Font],
    panel: int,
    lines: Mapping[str, Sequence[tuple[int, float]]],
    sizes: Sequence[int],
    colours: Mapping[str, tuple[int, int, int]],
) -> None:
    """One panel: grid, axes, size ticks and a polyline with markers per case."""
    _, label_font, small_font = fonts
    left, right = _PLOT_LEFTS[panel], _PLOT_LEFTS[panel] + _PLOT_WIDTH
    lo, hi = math.log2(sizes[0]), math.log2(sizes[-1])
    step, steps = _nice_scale(max((v for line in lines.values() for _, v in line), default=1.0))

    def x_of(size: int) -> float:
        fraction = 0.5 if hi == lo else (math.log2(size) - lo) / (hi - lo)
        return left + _INSET + fraction * (_PLOT_WIDTH - 2 * _INSET)

    def y_of(value: float) -> float:
        return _PLOT_BOTTOM - value / (step * steps) * (_PLOT_BOTTOM - _PLOT_TOP)

    for i in range(steps + 1):
        y = y_of(i * step)
        draw.line([(left, y), (right, y)], fill=_GRID)
        put(draw, left - 8, y, f"{round(i * step, 9):g}", small_font, "rm")
    # Many sizes crowd the axis: a label that would overlap the previous one is skipped, its tick kept.
    last_right = -math.inf
    for size in sizes:
        x = x_of(size)
        draw.line([(x, _PLOT_BOTTOM), (x, _PLOT_BOTTOM + 5)], fill=INK)
        text = _size_label(size)
        width = text_box(draw, text, small_font)[2]
        if x - width / 2 > last_right + 6:
            put(draw, x, _PLOT_BOTTOM + 9, text, small_font, "mt")
            last_right = x + width / 2
    draw.rectangle([left, _PLOT_TOP, right, _PLOT_BOTTOM], outline=INK)
    put(draw, (left + right) / 2, _PLOT_TOP - 12, _PANELS[panel], label_font, "mb")
    put(draw, (left + right) / 2, _PLOT_BOTTOM + 40, "buffer size", small_font, "mt")

    # Baselines first, so that trio_zc's own lines stay on top where they cross.
    for name in sorted(lines, key=lambda n: n in OWN_CASES):
        own = name in OWN_CASES
        xy = [(x_of(size), y_of(value)) for size, value in lines[name]]
        if len(xy) > 1:
            draw.line(xy, fill=colours[name], width=4 if own else 2, joint="curve")
        r = 4 if own else 3
        for x, y in xy:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colours[name])


def render_chart(
    series: Mapping[str, Mapping[int, tuple[float, float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "trio_zc benchmark: throughput and sender CPU by buffer size",
) -> None:
    """Write a PNG chart of benchmark results to *path*.

    *series* maps each case name to ``{buffer size in bytes: (GB/s, sender CPU
    seconds per GB)}``. Points that are not finite and positive (a failed
    case) are left out; a case may lack some sizes. Raises :exc:`ValueError`
    if there is nothing to plot, :exc:`RuntimeError` if Pillow is missing.
    """
    if not series:
        raise ValueError("render_chart() needs at least one case in series")
    lines: list[dict[str, list[tuple[int, float]]]] = [{}, {}]
    for name, by_size in series.items():
        for panel, panel_lines in enumerate(lines):
            panel_lines[name] = sorted(
                (size, float(pair[panel]))
                for size, pair in by_size.items()
                if size > 0 and math.isfinite(pair[panel]) and pair[panel] > 0
            )
    sizes = sorted({size for panel_lines in lines for line in panel_lines.values() for size, _ in line})
    if not sizes:
        raise ValueError("render_chart(): no case has a finite, positive point to plot")
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise RuntimeError("the chart needs Pillow: pip install 'trio_zc[images]'") from exc

    image = Image.new("RGB", (_WIDTH, _HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    fonts = (font(20), font(15), font(13))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    put(draw, _WIDTH / 2, 24, title, fonts[0])
    for panel, panel_lines in enumerate(lines):
        _draw_panel(draw, fonts, panel, panel_lines, sizes, colours)

    y = _PLOT_TOP
    for name, colour in colours.items():
        own = name in OWN_CASES
        draw.line([(_LEGEND_X, y), (_LEGEND_X + 28, y)], fill=colour, width=4 if own else 2)
        draw.ellipse([_LEGEND_X + 10, y - 4, _LEGEND_X + 18, y + 4], fill=colour)
        put(draw, _LEGEND_X + 38, y, name, fonts[2], "lm")
        y += 22
    image.save(path, format="PNG")


def chart_series(summaries: Sequence[Summary]) -> dict[str, dict[int, tuple[float, float]]]:
    """What :func:`render_chart` draws, from the bench's summaries: case -> size -> (GB/s, CPU s/GB)."""
    series: dict[str, dict[int, tuple[float, float]]] = {}
    for s in summaries:
        series.setdefault(s.case, {})[s.size] = (s.throughput, s.cpu_per_gb)
    return series
