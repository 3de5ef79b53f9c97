"""Text and colours for the demo's PNG chart, drawn with Pillow alone.

The demo's ``--chart`` (:func:`trio_zc._demo.render_chart`) draws with
these, and so does the project's benchmark chart (``benchmarks/chart.py``,
outside the package). Part of the demo, a tool: like it, left out of the
library's KeyboardInterrupt protection (see :mod:`trio_zc._ki`). Pillow is optional (``pip install 'trio_zc[images]'``):
it is imported only when a font is loaded, so importing this module does not
need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Line and bar colours, given out in order (reused past the twelfth).
PALETTE: Final[tuple[tuple[int, int, int], ...]] = (
    (31, 119, 180),  # blue
    (255, 127, 14),  # orange
    (44, 160, 44),  # green
    (214, 39, 40),  # red
    (148, 103, 189),  # purple
    (140, 86, 75),  # brown
    (227, 119, 194),  # pink
    (127, 127, 127),  # grey
    (188, 189, 34),  # olive
    (23, 190, 207),  # cyan
    (0, 0, 128),  # navy
    (128, 0, 0),  # maroon
)

#: The colour of text and axes.
INK: Final = (40, 40, 40)


def font(size: int) -> Font:
    """Pillow's default font at *size* pixels (its one fixed size on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def text_box(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[float, float, float, float]:
    """*text*'s left and top offsets, width and height as *draw* would draw it at (0, 0)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return left, top, right - left, bottom - top


def put(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, font: Font, align: str = "mm") -> None:
    """Draw *text* with (x, y) at its left/middle/right (``align[0]``), top/middle/bottom (``align[1]``)."""
    # Placed by hand rather than with Pillow's anchors, which old bitmap fonts do not support.
    left, top, width, height = text_box(draw, text, font)
    dx = {"l": 0.0, "m": width / 2, "r": width}[align[0]]
    dy = {"t": 0.0, "m": height / 2, "b": height}[align[1]]
    draw.text((x - dx - left, y - dy - top), text, fill=INK, font=font)
