"""Images in and out of leases: Pillow and NumPy (needs ``pip install 'trio_zc[images]'``).

- NumPy: :meth:`WritableLease.ndarray <trio_zc.WritableLease.ndarray>` views
  a lease as an array of any shape and dtype, with no copy.
- Pillow: :func:`encode` writes an encoded image (JPEG, PNG, WebP, TIFF,
  PDF, ... any format Pillow can save to a file object) straight into a
  lease and returns it sealed at exactly the encoded length; :func:`pixels`
  puts an image's raw pixels into a lease with one copy.

Off the event loop: :func:`open_workers` starts worker processes that
encode, decode and resize into leases of the pool (:class:`ImageWorkers`),
on every core, while the event loop goes on serving; :func:`encode` runs
Pillow in the event loop, which stalls every other task for the length of
the encode (tens of milliseconds for a 12-megapixel JPEG) and is the better
choice only for small images, where handing the job to a worker costs more
than the work (see :func:`open_workers`).

The encoded size is unknown in advance, so :func:`encode` starts with a lease
of a guessed size, if the pool has one free at once; if the image outgrows
it, the rest goes to a spill buffer and, at the end, into a lease of the
exact size (one extra copy, only for the unlucky image). The caller never
notices. :func:`encode` never waits for memory while it holds a lease: when
no lease of the guessed size is free it encodes into process memory, and
when the exact lease cannot be had at once the bytes move out of the first
lease, which goes back to the pool, before it waits -- otherwise a pool that
needs the first lease's memory to serve the exact one would wait for ever.
"""

from __future__ import annotations

try:
    import PIL  # noqa: F401  (the one clear message when Pillow is missing)
except ModuleNotFoundError as exc:  # pragma: no cover - Pillow is in the test env
    raise ModuleNotFoundError("trio_zc.images needs Pillow: pip install 'trio_zc[images]'") from exc

from ._image_workers import DEFAULT_NICE as DEFAULT_NICE
from ._image_workers import BrokenWorkerError as BrokenWorkerError
from ._image_workers import ImageWorkers as ImageWorkers
from ._image_workers import RawImage as RawImage
from ._image_workers import WorkerStatistics as WorkerStatistics
from ._image_workers import open_workers as open_workers
from ._images import encode as encode
from ._images import pixels as pixels

__all__ = [
    "DEFAULT_NICE",
    "BrokenWorkerError",
    "ImageWorkers",
    "RawImage",
    "WorkerStatistics",
    "encode",
    "open_workers",
    "pixels",
]

from ._exports import publish as _publish

_publish(globals())
del _publish
