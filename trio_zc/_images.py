"""The implementation of :mod:`trio_zc.images` (in the event loop); the workers are in ``_image_workers.py``."""


from __future__ import annotations

import io
import operator
import re
from typing import IO, TYPE_CHECKING, Any, cast

import trio

from ._image_worker import RAW_BITS, raw_size
from ._lease import SealedLease, WritableLease
from ._validate import check_positive_index

if TYPE_CHECKING:
    from PIL import Image

    from ._pool import BufferPool

try:
    from PIL import Image as _Image
except ModuleNotFoundError as exc:  # pragma: no cover - Pillow is in the test env
    raise ModuleNotFoundError("trio_zc.images needs Pillow: pip install 'trio_zc[images]'") from exc


#: The smallest first guess for an encoded image.
_MIN_GUESS = 64 * 1024


class _LeaseFile(io.BufferedIOBase):
    """A seekable binary file over a writable lease, spilling past its end.

    It behaves as :class:`io.BytesIO` does, which is what Pillow's savers are
    written against: writes land at the position, which any ``seek`` may
    move (also past the end: the gap reads as zeros), bytes written can be
    read back (TIFF's multi-page writer does), and ``truncate`` cuts.
    The first ``lease.nbytes`` bytes live in the lease, the rest in
    :attr:`spill` (all of them, when there is no lease). There is no file descriptor: ``fileno()`` raises
    :class:`io.UnsupportedOperation`, which tells Pillow to hand over encoded
    chunks rather than write to a descriptor.

    Lease bytes past what was written are never read here before they are
    cleared: the lease clears the gap before a write past its clean part, and
    before a view (read, or moving the bytes out) or sealing; ``truncate``
    zeroes what it cuts.
    """

    def __init__(self, lease: WritableLease | None) -> None:
        super().__init__()
        self._lease = lease
        #: Bytes that go to the lease (none without one: all spill).
        self.capacity = 0 if lease is None else lease.nbytes
        #: The file's length (the end of the furthest write).
        self.size = 0
        self.position = 0
        #: The bytes from ``capacity`` to ``size`` (empty while the file fits the lease).
        self.spill = bytearray()

    @property
    def lease(self) -> WritableLease:
        assert self._lease is not None, "no lease: capacity is 0, so nothing goes to it"
        return self._lease

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def readable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return True

    def seekable(self) -> bool:
        self._check_open()
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno: the file is a lease in memory, with no file descriptor")

    def write(self, data: Any) -> int:
        self._check_open()
        with memoryview(data) as view, view.cast("B") as flat:
            n = len(flat)
            if not n:
                return 0
            start, end = self.position, self.position + n
            in_lease = max(min(end, self.capacity) - start, 0)
            if in_lease:
                self.lease.write(flat[:in_lease], start)
            if in_lease < n:
                at = max(start, self.capacity) - self.capacity
                if at > len(self.spill):
                    self.spill.extend(bytes(at - len(self.spill)))  # a gap reads as zeros
                self.spill[at : at + n - in_lease] = flat[in_lease:]
        self.position = end
        self.size = max(self.size, end)
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        offset = operator.index(offset)
        if whence == io.SEEK_SET:
            if offset < 0:
                raise ValueError(f"negative seek value {offset}")
            self.position = offset
        elif whence == io.SEEK_CUR:
            self.position = max(self.position + offset, 0)
        elif whence == io.SEEK_END:
            self.position = max(self.size + offset, 0)
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        return self.position

    def tell(self) -> int:
        self._check_open()
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        start = self.position
        end = self.size if size is None or size < 0 else min(self.size, start + size)
        if end <= start:
            return b""
        out = bytearray()
        if start < self.capacity:
            with self.lease.view() as view, view[start : min(end, self.capacity)] as part:
                out += part
        if end > self.capacity:
            out += self.spill[max(start, self.capacity) - self.capacity : end - self.capacity]
        self.position = end
        return bytes(out)

    def read1(self, size: int | None = -1) -> bytes:
        return self.read(size)

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as view, view.cast("B") as flat:
            data = self.read(len(flat))
            flat[: len(data)] = data
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        self._check_open()
        size = self.position if size is None else operator.index(size)
        if size < 0:
            raise ValueError(f"negative size value {size}")
        if size < self.size:
            cut_in_lease = min(self.size, self.capacity) - size
            if cut_in_lease > 0:
                # Bytes cut from the lease must read as zeros if the file grows again.
                self.lease.write(bytes(cut_in_lease), size)
            del self.spill[max(size - self.capacity, 0) :]
            self.size = size
        return size

    def contents(self) -> bytearray:
        """Everything written: the lease's part and the spill, copied out.

        (Not named ``getvalue``: Pillow's PDF writer would call that to read
        an existing document, clearing the whole lease for nothing. It
        works on a closed file too: a saver may have closed it.)
        """
        if not self.capacity:
            return bytearray(self.spill)
        with self.lease.view() as view, view[: min(self.size, self.capacity)] as part:
            out = bytearray(part)
        out += self.spill
        return out


#: How Pillow's savers say that a format cannot hold an image's mode
#: ("cannot write mode RGBA as JPEG", "Cannot save LA images as PCX",
#: "cannot save mode I;16"); the group is the mode they name.
_MODE_REFUSAL = re.compile(r"cannot (?:write|save) mode (\S+)|cannot save (\S+) images", re.IGNORECASE)


def _pillow_error(exc: Exception, mode: str, name: str) -> Exception:
    """The error to raise for *exc*, raised by Pillow saving a *mode* image as *name*.

    Only a refusal that names this image's mode is reported as one; any
    other error is passed on with Pillow's own message, as ValueError or
    OSError like Pillow's.
    """
    match = _MODE_REFUSAL.search(str(exc))
    if match and mode in match.groups():
        return ValueError(f"Pillow cannot write this {mode} image as {name}: {exc}")
    message = f"Pillow failed to encode the image as {name}: {exc}"
    return OSError(message) if isinstance(exc, OSError) else ValueError(message)


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
    ``optimize=True``, ``save_all=True`` with ``append_images``, ...); the
    bytes are exactly those ``image.save(io.BytesIO(), ...)`` gives. *guess*
    is the size of the lease Pillow writes into first (default: half the raw
    pixel size, at least 64 KiB, at most the pool), taken only if the pool
    has it free at once; an image that outgrows it, or finds no such lease
    free, moves to a lease of exactly its size, for which encode waits if it
    must -- holding no memory of the pool while it waits.

    Raises :class:`ValueError` for a format Pillow cannot write, a mode the
    format cannot hold (``Pillow cannot write this RGBA image as JPEG``), or
    an encoded image larger than the pool can ever hold. Pillow's other
    refusals (its :class:`OSError`, :class:`ValueError` or :class:`KeyError`)
    come as :class:`OSError` (for an OSError) or :class:`ValueError` with
    Pillow's message, the original chained as its cause; anything else
    Pillow raises (a :class:`TypeError` for an option of the wrong type, say)
    passes through as it is. Nothing stays leased when it raises or is
    cancelled.
    """
    name = _check_format(format)
    image = _check_image(image)
    if guess is None:
        raw = image.width * image.height * max(len(image.getbands()), 1)
        guess = max(_MIN_GUESS, raw // 2)
    else:
        guess = check_positive_index("guess", guess)
    await trio.lowlevel.checkpoint()
    # The first lease only if it is free now: waiting for a guessed size
    # could wait for far more than the image needs (for ever, if that much
    # never comes free). Without it the image is encoded in process memory,
    # and we wait below for a lease of exactly its size.
    first: WritableLease | None
    try:
        first = pool.acquire_nowait(min(guess, pool.max_bytes))
    except trio.WouldBlock:
        first = None
    out = _LeaseFile(first)
    try:
        try:
            image.save(cast("IO[bytes]", out), format=name, **save_options)
        except (OSError, ValueError, KeyError) as exc:
            raise _pillow_error(exc, image.mode, name) from exc
        total = out.size
        if total == 0:
            raise ValueError(f"Pillow wrote no bytes for this {image.mode} image as {name}")
        if first is not None and total <= out.capacity:
            sealed = first.seal(total)
            first = None
            return sealed
        if total > pool.max_bytes:
            raise ValueError(
                f"the encoded image is {total} bytes, more than the pool can ever hold ({pool.max_bytes})"
            )
        # It needs a lease of its exact size.
        if first is not None:
            try:
                exact = pool.acquire_nowait(total)
            except trio.WouldBlock:
                pass
            else:
                try:
                    with first.view() as view:
                        end = exact.write(view)
                    exact.write(out.spill, end)
                    return exact.seal(total)
                except BaseException:
                    exact.release()
                    raise
        # Not at once. Waiting while holding the first lease could wait for
        # ever (the pool may need its memory to serve this one): the bytes
        # leave it, it goes back, and we wait holding no memory of the pool.
        moved = out.contents()
        out.close()
        if first is not None:
            first.release()
            first = None
        exact = await pool.acquire(total)
        try:
            exact.write(moved)
            return exact.seal(total)
        except BaseException:
            exact.release()
            raise
    finally:
        out.close()
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
        # The view and the image over it may still be alive (the frames of
        # the exception's traceback hold them): lease.release() would raise
        # LiveViewsError over the real error and leave the lease held by
        # nobody. Give it up as a lease's scope does: it is abandoned, and
        # goes back to the pool once those views are gone.
        lease._slot.home.release(lease._slot, "pixels() failed")
        raise


def _raw_size(image: Image.Image) -> int:
    if image.mode not in RAW_BITS:
        raise ValueError(f"pixels() does not know the layout of mode {image.mode!r}")
    return raw_size(image.mode, image.width, image.height)


from ._ki import protect_package as _protect_package

_protect_package(__name__)
