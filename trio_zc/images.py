"""Images in and out of leases: Pillow and NumPy (needs ``pip install 'trio_zc[images]'``).

- NumPy: :meth:`WritableLease.ndarray <trio_zc.WritableLease.ndarray>` views
  a lease as an array of any shape and dtype, with no copy.
- Pillow: :func:`encode` writes an encoded image (JPEG, PNG, WebP, ...)
  straight into a lease and returns it sealed at exactly the encoded length;
  :func:`pixels` puts an image's raw pixels into a lease with one copy.

The encoded size is unknown in advance, so :func:`encode` starts with a lease
of a guessed size; if the image outgrows it, the rest goes to a spill buffer
and, at the end, into a lease of the exact size (one extra copy, only for
the unlucky image). The caller never notices.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, cast

from ._lease import SealedLease, WritableLease

if TYPE_CHECKING:
    from PIL import Image

    from ._pool import BufferPool

try:
    from PIL import Image as _Image
except ModuleNotFoundError as exc:  # pragma: no cover - Pillow is in the test env
    raise ModuleNotFoundError("trio_zc.images needs Pillow: pip install 'trio_zc[images]'") from exc

__all__ = ["encode", "pixels"]

#: The smallest first guess for an encoded image.
_MIN_GUESS = 64 * 1024


class _LeaseFile:
    """A write-only file over a writable lease, spilling past its end."""

    def __init__(self, lease: WritableLease) -> None:
        self.lease = lease
        self.capacity = lease.nbytes
        self.position = 0
        self.spill = bytearray()

    def write(self, data: Any) -> int:
        with memoryview(data) as view, view.cast("B") as flat:
            n = len(flat)
            room = max(self.capacity - self.position, 0)
            if room:
                self.lease.write(flat[: min(room, n)], self.position)
            if n > room:
                self.spill += flat[room:]
        self.position += n
        return n

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass


def _check_format(format: str) -> str:
    if not isinstance(format, str):
        raise TypeError(f"format must be a str such as 'JPEG', not {type(format).__name__}")
    _Image.init()
    name = format.upper()
    if name not in _Image.SAVE:
        raise ValueError(
            f"Pillow cannot write {format!r} here; it can write {', '.join(sorted(_Image.SAVE))}"
        )
    return name


def _check_image(image: object) -> Image.Image:
    if not isinstance(image, _Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, not {type(image).__name__}")
    return image


async def encode(
    pool: BufferPool, image: Image.Image, format: str, *, guess: int | None = None, **save_options: Any
) -> SealedLease:
    """Encode *image* as *format* straight into a lease; the lease, sealed at the encoded length.

    *save_options* go to :meth:`PIL.Image.Image.save` (``quality=85``,
    ``optimize=True``, ...). *guess* is the size of the first lease (default:
    half the raw pixel size, at least 64 KiB, at most the pool). Raises
    :class:`ValueError` for a format Pillow cannot write, a mode the format
    cannot hold, or an encoded image larger than the pool can ever hold;
    nothing stays leased when it raises.
    """
    name = _check_format(format)
    image = _check_image(image)
    raw = image.width * image.height * max(len(image.getbands()), 1)
    if guess is None:
        guess = max(_MIN_GUESS, raw // 2)
    elif not isinstance(guess, int) or isinstance(guess, bool) or guess < 1:
        raise ValueError(f"guess must be a positive int, not {guess!r}")
    first: WritableLease | None = await pool.acquire(min(guess, pool.max_bytes))
    assert first is not None
    try:
        out = _LeaseFile(first)
        try:
            image.save(cast("IO[bytes]", out), format=name, **save_options)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"Pillow cannot write this {image.mode} image as {name}: {exc}") from exc
        total = out.position
        if not out.spill:
            sealed = first.seal(total)
            first = None
            return sealed
        if total > pool.max_bytes:
            raise ValueError(
                f"the encoded image is {total} bytes, more than the pool can ever hold ({pool.max_bytes})"
            )
        # Outgrew its lease: move it to one of the exact size.
        exact = await pool.acquire(total)
        try:
            with first.view() as head:
                end = exact.write(head)
            exact.write(out.spill, end)
            return exact.seal(total)
        except BaseException:
            exact.release()
            raise
    finally:
        if first is not None:
            first.release()


async def pixels(pool: BufferPool, image: Image.Image) -> SealedLease:
    """The raw pixels of *image* (as ``image.tobytes()`` lays them out), in a sealed lease.

    One copy: for modes Pillow can map onto memory (L, P, RGBA, RGBX, CMYK,
    I;16) the pixels are pasted straight into the lease; other modes (RGB,
    whose rows Pillow keeps 4 bytes per pixel, 1, F, I...) are packed by
    Pillow's raw encoder chunk by chunk into the lease.
    """
    image = _check_image(image)
    image.load()
    if image.width == 0 or image.height == 0:
        raise ValueError("the image is empty")
    expected = _raw_size(image)
    if expected > pool.max_bytes:
        raise ValueError(f"the image's {expected} pixel bytes are more than the pool can ever hold")
    lease = await pool.acquire(expected)
    try:
        if image.mode in _Image._MAPMODES:
            view = lease.view()
            target = _Image.frombuffer(image.mode, image.size, cast(Any, view), "raw", image.mode, 0, 1)
            # The core's paste writes into the mapped lease memory directly
            # (the Image wrapper would copy first, as it thinks it read-only).
            target.im.paste(image.im, (0, 0, image.width, image.height))
            del target, view
        else:
            encoder = _Image._getencoder(image.mode, "raw", image.mode)
            try:
                encoder.setimage(image.im, (0, 0, image.width, image.height))
                # Chunks of at least one packed row (Pillow's RawEncode needs that).
                bufsize = max(1 << 20, image.width * 4)
                offset = 0
                while True:
                    _, status, chunk = encoder.encode(bufsize)
                    offset = lease.write(chunk, offset)
                    if status:
                        break
            finally:
                encoder.cleanup()
            if status < 0:
                raise RuntimeError(f"Pillow's raw encoder failed with error {status}")
            if offset != expected:  # pragma: no cover - Pillow's own invariant
                raise RuntimeError(f"the raw encoder gave {offset} bytes, not {expected}")
        return lease.seal()
    except BaseException:
        lease.release()
        raise


def _raw_size(image: Image.Image) -> int:
    # Bits per pixel of the packed raw layout (what tobytes() returns).
    bits = {"1": 1, "L": 8, "P": 8, "I": 32, "F": 32, "RGB": 24, "RGBA": 32, "RGBX": 32, "CMYK": 32,
            "YCbCr": 24, "LAB": 24, "HSV": 24, "LA": 16, "PA": 16, "La": 16, "RGBa": 32,
            "I;16": 16, "I;16L": 16, "I;16B": 16}.get(image.mode)
    if bits is None:
        raise ValueError(f"pixels() does not know the layout of mode {image.mode!r}")
    row = (image.width * bits + 7) // 8
    return row * image.height
