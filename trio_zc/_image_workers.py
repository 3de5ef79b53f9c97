"""Image work in worker processes: Pillow off the event loop, on every core.

``async with images.open_workers(pool) as workers:`` starts one process per
core; ``await workers.encode(...)``, ``decode(...)`` and ``resize(...)`` send
a job to an idle one and wait, and the event loop goes on serving meanwhile.
Threads would not do: Pillow's JPEG encoder holds the GIL, so two threads
encode no faster than one and the event loop stalls while they run.

Design
======

Why processes of our own rather than trio-parallel (or multiprocessing):

- The pool's memory is a memfd. Each worker gets it once, over its socket
  (``SCM_RIGHTS``), which works wherever Unix sockets do; the other way,
  opening ``/proc/<parent>/fd/N``, needs ``/proc`` and ptrace-read access to
  the parent, which containers and hardened kernels may deny. trio-parallel
  has no way to pass a descriptor to its workers.
- Replies are JSON, never pickles: a worker decoding an untrusted image may
  have been taken over by it, and unpickling its reply would let it run code
  in the server. trio-parallel and multiprocessing unpickle results.
- A cancelled call must not wait for the image, yet the lease the worker
  writes must stay held until the worker is done or dead. Here the caller
  leaves at once and a background task finishes the conversation (or kills
  the worker, with ``kill_on_cancel``); trio-parallel either shields the
  whole job or kills and waits.
- Errors name the worker and the image; the workers are replaced one by
  one; the workers import Pillow and nothing else (30 ms to start, not the
  server's ``__main__`` as multiprocessing's spawn does).
- Workers are started with ``fork`` + ``exec`` of a fresh interpreter
  (``subprocess``), never forks of the server (see docs/lifecycle.rst, rule 8).

How a job goes (the worker's side is in :mod:`trio_zc._image_worker`):

1. The source is a range of the pool: a :class:`RawImage`'s lease as it is,
   or, for a PIL image, a lease the parent pastes its memory into (a strip
   at a time, in Pillow's own layout, so that the worker maps it back with
   no copy). While the worker reads it, the source counts as a
   send in flight of its lease: releasing the lease meanwhile leaves it
   draining, not free, until the worker answers (or is reaped).
2. The worker reads that range, does the work into its own memory, drops
   its views of the source and says how many bytes the result needs.
3. The parent leases exactly that and holds the lease's writer lock
   (``_LeaseRecord.lock``, see "Threads" in ``_lease.py``) while the worker maps the
   lease read-write and copies the result in. Only when the worker says it
   is done, the parent releases the lock and seals at that length.

Why the result is made in the worker's memory first, and copied into an
exact lease, rather than encoded straight into a lease of a guessed size:
the pool's memory is held only for the copy (0.8 ms for a 5 MB JPEG),
not for the whole encode (1.4 s for a 12 MP WebP), and never more than the
image needs. The copy is the worker's: the server process copies nothing.

Why the lock: it is the lease's existing "another writer is still at it"
mechanism. While it is held, ``seal()`` and ``release()`` refuse, and the
end of a ``pool.lease()`` block, the pool's close, or our own release of a
cancelled call's lease *abandons* the lease: the sweeper frees it only once
the lock is free. A second flag would have to be taught to all of those.
The lock is released only when the worker said it is done, or after its
process was reaped: memory a worker may still write never goes back.

What a worker maps: the whole pool read-only, once, kept for its life
(sources are read there), and a lease read-write only for the copy of a
result into it, that lease's pages alone. Nothing it maps writable outlives
a job, so a stray write in native code (a codec's bug) faults instead of
landing in another image in flight; a read-only mapping cannot write
whatever its size. Mapping each source's range for its job alone would cost
the page-table work again every job: 3.5 to 4 ms for a 36 MB source against
0.1 ms through the kept mapping, a tenth of a 12 MP JPEG encode (measured
by benchmarks/image_workers.py). A worker holds the memfd itself, though,
so all this guards against accidents, not against a worker taken over by a
hostile image.
"""

from __future__ import annotations

import array
import builtins
import collections
import itertools
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from . import _image_worker
from ._background import background_nursery
from ._errors import ForeignLeaseError
from ._lease import SealedLease, WritableLease, _LeaseRecord

if TYPE_CHECKING:
    from PIL import Image

    from ._pool import BufferPool

try:
    import PIL
    from PIL import Image as _Image
except ModuleNotFoundError as exc:  # pragma: no cover - Pillow is in the test env
    raise ModuleNotFoundError("trio_zc.images needs Pillow: pip install 'trio_zc[images]'") from exc

#: Pillow's C module (not in its type stubs).
_core: Any = _Image.core  # type: ignore[attr-defined]

#: How the parent starts a worker: the worker's file alone, as a module of
#: its own (not the package, which would import Trio).
_LOADER: Final = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('trio_zc_image_worker', sys.argv[1])\n"
    "module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module.main(int(sys.argv[2]))\n"
)

#: How long closing waits for an idle worker to exit after its socket closed
#: (it exits at once: it is blocked reading that socket) before killing it.
_EXIT_GRACE: Final = 5.0

#: How much lower the workers' scheduling priority is than the server's, by
#: default (an ``os.nice`` increment).
DEFAULT_NICE: Final = 10

#: How much of a PIL image the parent copies into a lease between two
#: checkpoints (see _paste_into).
_STRIP_BYTES: Final = 2 << 20

#: The largest reply a worker sends (JSON with at most a 1 KiB palette).
_MAX_REPLY: Final = 1 << 16


class BrokenWorkerError(RuntimeError):
    """An image worker process died while it worked on an image.

    Nothing it was writing was sealed; the lease it wrote into went back to
    the pool only after its process was reaped. A new worker takes its
    place, so the next call works as usual (unless the same image kills
    that one too).

    Attributes:
      worker: the worker's number (1, 2, ... in the order they started).
      pid: its process id.
      returncode: how it ended (negative: the signal that killed it), or None.
    """

    def __init__(self, message: str, *, worker: int, pid: int, returncode: int | None) -> None:
        super().__init__(message)
        self.worker = worker
        self.pid = pid
        self.returncode = returncode


def _check_size(size: object, what: str) -> tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"{what} must be a (width, height) tuple, not {size!r}")
    dims = []
    for d in size:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"{what} must be a (width, height) tuple of ints, not {size!r}")
        if d < 1:
            raise ValueError(f"{what} must be positive, not {size!r}")
        dims.append(d)
    return dims[0], dims[1]


@attrs.frozen
class RawImage:
    """An image's raw pixels in a sealed lease, laid out as ``Image.tobytes()`` lays them out.

    What :meth:`ImageWorkers.decode` and :meth:`ImageWorkers.resize`
    return, and what :meth:`ImageWorkers.encode` and
    :meth:`ImageWorkers.resize` take without copying (the worker maps the
    lease read-only). Make one from pixels drawn with NumPy into a lease
    (``lease.ndarray((height, width, 3))`` for RGB), or from
    :func:`trio_zc.images.pixels`::

        RawImage(sealed, "RGB", (width, height))

    *mode* is a Pillow mode whose raw layout trio_zc knows (L, P, RGB, RGBA,
    RGBX, CMYK, LA, I, F, I;16, 1, ...); the lease holds at least the
    image's bytes. P and PA images carry their *palette* (the bytes of
    ``image.getpalette(palette_mode)``). The lease stays the caller's:
    release it when done (``raw.lease.release()``).

    Pillow's RGB images keep 4 bytes a pixel in memory, so a packed RGB
    source is unpacked by the worker (about 20 ms for 12 MP, in the worker);
    an RGBX or RGBA one (``ndarray((height, width, 4))``) is mapped as it is.
    """

    #: The sealed lease that holds the pixels.
    lease: SealedLease
    #: The Pillow mode of the pixels.
    mode: str
    #: (width, height) in pixels.
    size: tuple[int, int]
    #: The palette of a P or PA image, as ``getpalette(palette_mode)`` gives it.
    palette: bytes | None = None
    #: The raw mode of the palette ("RGB" or "RGBA").
    palette_mode: str = "RGB"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.lease, SealedLease):
            raise TypeError(f"a RawImage's lease must be a SealedLease, not {type(self.lease).__name__}")
        if not isinstance(self.mode, str):
            raise TypeError(f"mode must be a str such as 'RGB', not {type(self.mode).__name__}")
        if self.mode not in _image_worker.RAW_BITS:
            raise ValueError(
                f"trio_zc does not know the raw layout of mode {self.mode!r}; it knows"
                f" {', '.join(_image_worker.RAW_BITS)}"
            )
        width, height = _check_size(self.size, "size")
        object.__setattr__(self, "size", (width, height))
        needed = _image_worker.raw_size(self.mode, width, height)
        if self.lease.nbytes < needed:
            raise ValueError(
                f"a {width}x{height} {self.mode} image needs {needed} bytes; the lease holds {self.lease.nbytes}"
            )
        if self.palette is not None:
            if self.mode not in ("P", "PA"):
                raise ValueError(f"only P and PA images have a palette, not {self.mode}")
            if not isinstance(self.palette, bytes):
                raise TypeError(f"palette must be bytes, not {type(self.palette).__name__}")
        if self.palette_mode not in ("RGB", "RGBA"):
            raise ValueError(f"palette_mode must be 'RGB' or 'RGBA', not {self.palette_mode!r}")

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.size[0]

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.size[1]


@attrs.frozen
class WorkerStatistics:
    """A snapshot of the workers, from :meth:`ImageWorkers.statistics`."""

    #: How many worker processes the workers keep running.
    processes: int
    #: Worker processes running now (started and not yet reaped).
    alive: int
    #: Of those, waiting for a job.
    idle: int
    #: At a job for a caller that waits for it.
    busy: int
    #: At a job whose caller was cancelled: finishing it (its result is
    #: thrown away) before they take the next one.
    finishing: int
    #: Being started (at the beginning, or to replace one that died).
    starting: int
    #: Calls waiting for a worker to be free.
    tasks_waiting: int
    #: Jobs whose result was sealed and handed to the caller.
    completed: int
    #: Jobs that raised an error from Pillow (bad options, an unreadable image...).
    failed: int
    #: Workers that died at a job (each raised :class:`BrokenWorkerError`).
    crashed: int
    #: Worker processes started, replacements included.
    started: int
    #: The process ids of the workers running now.
    pids: tuple[int, ...]
    #: Whether the workers' block has ended.
    closed: bool


class _Died(Exception):
    """A worker's socket ended, failed, or said something that makes no sense."""


class _Worker:
    """One worker process and the parent's end of its socket."""

    __slots__ = ("number", "process", "sock", "pid", "session", "finishing", "reaped", "burying")

    def __init__(self, number: int, process: trio.Process, sock: trio.socket.SocketType) -> None:
        self.number = number
        self.process = process
        self.sock = sock
        self.pid = process.pid
        #: The job it is at, or None when idle.
        self.session: _Session | None = None
        #: Whether that job's caller left (a background task finishes it).
        self.finishing = False
        self.reaped = trio.Event()
        self.burying = False

    def name(self) -> str:
        return f"image worker {self.number} (pid {self.pid})"


class _Session:
    """One job's use of one worker: what the worker may still be reading or writing.

    The source lease is *pinned* (a send in flight) while the worker may
    read it, and the output lease *locked* while the worker may write it.
    Both are let go (once, whoever gets there first) only when the worker
    said it stopped, or after its process was reaped.
    """

    __slots__ = ("worker", "what", "phase", "source", "output")

    #: Phases: between requests; job sent (a need/error reply is due);
    #: need received (the worker holds a result, waiting for write/drop);
    #: write sent (a done/error reply is due).
    IDLE, JOB_SENT, HOLDING, WRITE_SENT = range(4)

    def __init__(self, worker: _Worker, what: str) -> None:
        self.worker = worker
        self.what = what
        self.phase = _Session.IDLE
        self.source: _LeaseRecord | None = None
        self.output: _LeaseRecord | None = None

    def pin(self, slot: _LeaseRecord) -> None:
        slot.begin_send()
        self.source = slot

    def unpin(self) -> None:
        slot, self.source = self.source, None
        if slot is not None:
            slot.end_send()

    def lock(self, slot: _LeaseRecord) -> None:
        if not slot.lock.acquire(blocking=False):  # pragma: no cover - a lease we just acquired
            raise RuntimeError(f"{slot.describe()} is being written by another thread")
        self.output = slot

    def unlock(self) -> None:
        slot, self.output = self.output, None
        if slot is not None:
            slot.lock.release()

    def let_go(self) -> None:
        self.unpin()
        self.unlock()


@attrs.define(eq=False)
class _Waiter:
    event: trio.Event = attrs.Factory(trio.Event)
    worker: _Worker | None = None
    error: BaseException | None = None


@attrs.define(eq=False)
class _Source:
    """A job's source: the worker's description of it, and the lease it reads."""

    spec: dict[str, Any]
    lease: SealedLease
    #: A lease made for this job (a PIL image's pixels), released after it.
    owned: SealedLease | None
    #: How error messages name it ("a 4000x3000 RGB image").
    what: str


def _describe(mode: str, size: tuple[int, int]) -> str:
    return f"a {size[0]}x{size[1]} {mode} image"


async def _paste_into(lease: WritableLease, image: Image.Image, mode: str) -> None:
    """Copy *image*'s memory, in Pillow's own layout, into *lease*, a strip at a time.

    In the event loop's thread, with a checkpoint after each strip of about
    2 MiB (0.1 ms): a thread would do the copy no faster, and the scheduler
    often queued the event loop's thread behind it on the same core (a
    6 ms gap, measured, with the workers busy on the others). Each strip
    is a paste of the whole image into a mapping of the strip's rows,
    which Pillow clips to those rows: nothing is copied twice.
    """
    slot = lease._slot
    # The strips write every byte of the lease (whole rows, padding
    # included: the lease is exactly height x row bytes), so there is
    # nothing for the lease to clear first.
    slot.clean_bytes = slot.capacity
    width, height = image.size
    line = slot.capacity // height
    rows = max(1, _STRIP_BYTES // line)
    view = lease.view()
    try:
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            part = view[top * line : bottom * line]
            strip = None
            try:
                strip = _core.map_buffer(part, (width, bottom - top), "raw", 0, (mode, 0, 1))
                strip.paste(image.im, (0, -top, width, height - top))
            finally:
                # Whatever happened: no view of the lease outlives the copy.
                del strip
                part.release()
            await trio.lowlevel.checkpoint()
    finally:
        view.release()


class ImageWorkers:
    """Worker processes that encode, decode and resize images into a pool's leases.

    Get one from :func:`trio_zc.images.open_workers`; there is no public
    constructor. Every method may be called from any number of tasks at
    once: each call waits for an idle worker (first come, first served),
    and the event loop runs on while the worker works.

    Cancelling a call returns at once and leaks nothing. The job's worker
    finishes the job in the background (its result is thrown away) or, with
    ``kill_on_cancel=True``, is killed and replaced; either way the lease it
    writes stays held until it is done or reaped.

    While a worker reads a source lease, the lease counts one send in
    flight (:attr:`PoolStatistics.sends_in_flight
    <trio_zc.PoolStatistics.sends_in_flight>`): released meanwhile, it
    drains, and goes back to the pool when the worker is done with it.
    """

    def __init__(
        self,
        pool: BufferPool,
        nursery: trio.Nursery,
        processes: int,
        kill_on_cancel: bool,
        preload: tuple[str, ...],
        nice: int,
    ) -> None:
        self._pool = pool
        self._nice = nice
        self._nursery = nursery
        self._processes = processes
        self._kill_on_cancel = kill_on_cancel
        self._preload = preload
        self._numbers = itertools.count(1)
        #: Every worker started and not yet reaped.
        self._workers: dict[int, _Worker] = {}
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._starting = 0
        #: Set whenever no worker is starting (the first time: all are ready).
        self._all_started = trio.Event()
        self._start_error: BaseException | None = None
        self._closed = False
        self._completed = self._failed = self._crashed = self._started = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<trio_zc.images.ImageWorkers {state}, {len(self._workers)} of {self._processes} processes>"

    # -- the public calls --------------------------------------------------

    async def encode(self, source: RawImage | Image.Image, format: str, **options: Any) -> SealedLease:
        """Encode *source* as *format* in a worker; the encoded bytes, in a sealed lease.

        The bytes are exactly those ``image.save(io.BytesIO(), format,
        **options)`` gives in this process; *options* go to Pillow's saver
        and must pickle (they travel to the worker). *source* is a
        :class:`RawImage` (read from its lease, no copy) or a PIL image,
        whose pixels the parent copies once into a lease, a strip at a time
        (about 2.5 ms of the event loop's time for 12 MP RGB, in steps of
        0.1 ms): its pixels (the current frame), mode, size, palette and
        ``info`` travel, as when Pillow pickles an image; attributes of an
        opened file that ``info`` does not hold (the JPEG tables that
        ``quality="keep"`` reuses) do not. A lazily opened image is loaded
        first, in the event loop: decode files with :meth:`decode`.

        The lease is exactly the encoded size; it is the caller's to send and
        release. Errors are those of :func:`trio_zc.images.encode`: a format
        Pillow cannot write, or a mode it refuses, raises
        :class:`ValueError`; Pillow's other refusals come as
        :class:`OSError` or :class:`ValueError` with Pillow's message. An
        encoded image larger than the pool raises :class:`ValueError`; a
        worker that dies raises :class:`BrokenWorkerError`.
        """
        self._check_open()
        if not isinstance(format, str):
            raise TypeError(f"format must be a str such as 'JPEG', not {type(format).__name__}")
        name = format.upper()
        src = await self._source(source)
        try:
            what = f"encoding {src.what} as {name}"
            request = {"op": "encode", **src.spec, "format": name, "options": options}
            sealed, _ = await self._run(request, src, what, mode=src.spec["mode"], format=name)
            return sealed
        finally:
            if src.owned is not None:
                src.owned.release()

    async def decode(self, source: SealedLease | bytes | bytearray | memoryview, *,
                     formats: Sequence[str] | None = None) -> RawImage:
        """Decode an encoded image in a worker; its pixels, as a :class:`RawImage`.

        *source* is a sealed lease of this pool holding the encoded bytes
        (read from the pool, no copy) or a bytes-like object, which is copied
        into a lease first. *formats* limits the formats tried, as for
        :func:`PIL.Image.open` (a good idea for untrusted input: each format
        is code that parses it). The pixels, mode, size and palette equal
        ``Image.open(...)``'s after ``load()``; metadata (``info``) is not
        kept. Raises :class:`PIL.UnidentifiedImageError` for bytes Pillow
        cannot read, :class:`ValueError` for an image larger than the pool,
        and :class:`BrokenWorkerError` if the worker dies.
        """
        self._check_open()
        if formats is not None:
            if isinstance(formats, str) or not all(isinstance(f, str) for f in formats):
                raise TypeError("formats must be a sequence of format names such as ('JPEG', 'PNG'), or None")
            formats = [f.upper() for f in formats]
        owned: SealedLease | None = None
        if isinstance(source, SealedLease):
            slot = self._own(source)
            encoded = source
        else:
            try:
                data = memoryview(source)
            except TypeError:
                raise TypeError(
                    f"decode() takes a SealedLease or a bytes-like object, not {type(source).__name__}"
                ) from None
            with data:
                if not data.nbytes:
                    raise ValueError("there are no bytes to decode")
                lease = await self._pool.acquire(data.nbytes)
                try:
                    lease.write(data)
                    owned = encoded = lease.seal()
                except BaseException:
                    lease.release()
                    raise
            slot = owned._slot
        src = _Source({"offset": slot.offset, "nbytes": slot.nbytes}, encoded, owned, f"{slot.nbytes} encoded bytes")
        try:
            request = {"op": "decode", **src.spec, "formats": formats}
            sealed, reply = await self._run(request, src, f"decoding {src.what}")
        finally:
            if owned is not None:
                owned.release()
        return self._raw_image(sealed, reply)

    async def resize(
        self,
        source: RawImage | Image.Image,
        size: tuple[int, int],
        resample: int | None = None,
        *,
        box: tuple[float, float, float, float] | None = None,
        reducing_gap: float | None = None,
    ) -> RawImage:
        """Resize *source* to *size* in a worker; the pixels, as a :class:`RawImage`.

        The same as ``image.resize(size, resample, box, reducing_gap)``
        (Pillow's defaults: bicubic, nearest for P and 1 images), byte for
        byte. *source* is taken as by :meth:`encode`.
        """
        self._check_open()
        width, height = _check_size(size, "size")
        src = await self._source(source)
        try:
            request = {
                "op": "resize", **src.spec, "target": [width, height], "resample": resample,
                "box": None if box is None else tuple(box), "reducing_gap": reducing_gap,
            }
            what = f"resizing {src.what} to {width}x{height}"
            sealed, reply = await self._run(request, src, what)
        finally:
            if src.owned is not None:
                src.owned.release()
        return self._raw_image(sealed, reply)

    def statistics(self) -> WorkerStatistics:
        """A snapshot of the workers and what they have done."""
        busy = finishing = 0
        for worker in self._workers.values():
            if worker.session is not None:
                if worker.finishing:
                    finishing += 1
                else:
                    busy += 1
        return WorkerStatistics(
            processes=self._processes,
            alive=len(self._workers),
            idle=len(self._idle),
            busy=busy,
            finishing=finishing,
            starting=self._starting,
            tasks_waiting=len(self._waiters),
            completed=self._completed,
            failed=self._failed,
            crashed=self._crashed,
            started=self._started,
            pids=tuple(worker.pid for worker in self._workers.values()),
            closed=self._closed,
        )

    # -- sources -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("these image workers' block has ended; open new ones")

    def _own(self, lease: SealedLease) -> _LeaseRecord:
        """The slot of a sealed lease the workers can read: this pool's, live, not adopted."""
        slot = lease._live()
        if slot.home is not self._pool._home:
            raise ForeignLeaseError(f"{lease!r} belongs to another pool than the workers'")
        if slot.adopted is not None:
            raise ValueError(
                f"{lease!r} is adopted memory, which the workers cannot map (only the pool's"
                " memfd is shared with them): copy it into a lease of the pool"
            )
        return slot

    async def _source(self, source: object) -> _Source:
        if isinstance(source, RawImage):
            slot = self._own(source.lease)
            spec = {
                "offset": slot.offset, "nbytes": slot.nbytes, "layout": "raw", "mode": source.mode,
                "size": list(source.size), "info": {},
                "palette": None if source.palette is None else [source.palette_mode, source.palette.hex()],
            }
            return _Source(spec, source.lease, None, _describe(source.mode, source.size))
        if isinstance(source, _Image.Image):
            return await self._image_source(source)
        raise TypeError(f"expected a RawImage or a PIL.Image.Image, not {type(source).__name__}")

    async def _image_source(self, image: Image.Image) -> _Source:
        """A PIL image's pixels in a lease of the pool (one copy, a strip at a time)."""
        image.load()
        mode = image.mode
        if image.width == 0 or image.height == 0:
            raise ValueError("the image is empty")
        palette = None
        if mode in ("P", "PA") and image.palette is not None:
            rawmode = image.palette.mode
            palette = [rawmode, bytes(image.getpalette(rawmode) or b"").hex()]
        spec: dict[str, Any] = {"mode": mode, "size": list(image.size), "info": dict(image.info), "palette": palette}
        per_pixel = _image_worker.CORE_BYTES.get(mode)
        if per_pixel is not None:
            nbytes = image.width * image.height * per_pixel
            if nbytes > self._pool.max_bytes:
                raise ValueError(f"the image's {nbytes} bytes of pixels are more than the pool can ever hold")
            lease = await self._pool.acquire(nbytes)
            try:
                await _paste_into(lease, image, mode)
                owned = lease.seal()
            except BaseException:
                # As a lease's scope gives it up: abandoned, not freed, if a
                # view of it were still alive.
                self._pool._release(lease._slot, "copying an image into it failed")
                raise
            spec["layout"] = "core"
        else:
            from ._images import pixels  # packed: for the modes Pillow cannot map (mode 1)

            owned = await pixels(self._pool, image)
            spec["layout"] = "raw"
        slot = owned._slot
        spec.update(offset=slot.offset, nbytes=slot.nbytes)
        return _Source(spec, owned, owned, _describe(mode, image.size))

    def _raw_image(self, sealed: SealedLease, reply: dict[str, Any]) -> RawImage:
        palette = reply.get("palette")
        try:
            return RawImage(
                sealed, reply["mode"], tuple(reply["size"]),
                None if palette is None else bytes.fromhex(palette[1]),
                "RGB" if palette is None else palette[0],
            )
        except BaseException:
            sealed.release()
            raise

    # -- one job -------------------------------------------------------------

    async def _run(
        self, request: dict[str, Any], src: _Source, what: str, *, mode: str = "", format: str = ""
    ) -> tuple[SealedLease, dict[str, Any]]:
        """Send a job to a worker and lease, fill and seal its result."""
        try:
            payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"the options cannot be sent to a worker (they must pickle): {exc}") from exc
        if len(payload) > _image_worker.MAX_MESSAGE:
            raise ValueError(
                f"the request is {len(payload)} bytes pickled (options and image info), more than the"
                f" {_image_worker.MAX_MESSAGE} a worker takes"
            )
        pool = self._pool
        for attempt in itertools.count(1):
            session = await self._checkout(what)
            worker = session.worker
            try:
                # Checked again here, with no checkpoint before the pin: another
                # task may have released the source while this one waited.
                session.pin(src.lease._live())
                await self._send(worker, payload)
            except _Died as exc:
                # It died while idle: the job never reached it. Another one
                # takes it (a new one if need be), a few times at most.
                with trio.CancelScope(shield=True):
                    await self._bury(worker)
                session.let_go()
                if self._closed or attempt > self._processes:
                    raise self._broken(worker, what, exc) from None
                self._crashed += 1
                continue  # _checkout starts a new one
            except BaseException:
                self._leave(worker)
                raise
            break
        output: _LeaseRecord | None = None
        try:
            session.phase = _Session.JOB_SENT
            reply = await self._receive(worker)
            session.unpin()
            if "error" in reply:
                session.phase = _Session.IDLE
                self._failed += 1
                raise self._error(reply, mode, format)
            need = reply.get("need")
            if not isinstance(need, int) or isinstance(need, bool) or need < 1:
                raise _Died(f"it answered {reply!r}")
            session.phase = _Session.HOLDING
            if need > pool.max_bytes:
                await self._send(worker, pickle.dumps({"op": "drop"}))
                session.phase = _Session.IDLE
                raise ValueError(
                    f"the result of {what} is {need} bytes, more than the pool can ever hold ({pool.max_bytes})"
                )
            lease = await pool.acquire(need)
            output = lease._slot
            session.lock(output)
            message = {"op": "write", "offset": output.offset, "length": need}
            await self._send(worker, pickle.dumps(message))
            session.phase = _Session.WRITE_SENT
            done = await self._receive(worker)
            session.phase = _Session.IDLE
            session.unlock()
            if "error" in done:
                self._failed += 1
                raise self._error(done, mode, format)
            if done.get("done") != need:
                raise _Died(f"it answered {done!r}")
            # The worker wrote every byte of [0, need) through its own mapping.
            output.clean_bytes = need
            sealed = lease.seal(need)
            output = None
            self._completed += 1
        except _Died as exc:
            with trio.CancelScope(shield=True):
                await self._bury(worker)
            session.let_go()
            raise self._broken(worker, what, exc) from None
        except BaseException:
            self._leave(worker)
            raise
        else:
            self._give_back(worker)
        finally:
            if output is not None:
                # Abandoned (not freed) while the worker may still write it:
                # the sweeper frees it once the session lets go of the lock.
                pool._release(output, "the image job it was leased for ended early")
        return sealed, reply

    def _broken(self, worker: _Worker, what: str, exc: _Died) -> Exception:
        """What to raise when *worker* died (it was reaped) during *what*; a new one starts."""
        if self._closed:
            return trio.ClosedResourceError(f"the image workers closed while {what}")
        self._top_up()
        self._crashed += 1
        why = f" ({exc.args[0]})" if exc.args else ""
        return BrokenWorkerError(
            f"{worker.name()} {self._how_it_ended(worker)} while {what}{why}; nothing it"
            " wrote was sealed, and a new worker replaces it",
            worker=worker.number, pid=worker.pid, returncode=worker.process.returncode,
        )

    def _error(self, reply: dict[str, Any], mode: str, format: str) -> Exception:
        """The exception a worker's error reply stands for, rebuilt in this process."""
        names = reply["error"]
        message = str(reply.get("message", ""))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            names = ["Exception"]
        if format and {"OSError", "ValueError", "KeyError"} & set(names):
            from ._images import _pillow_error

            return _pillow_error(OSError(message) if "OSError" in names else ValueError(message), mode, format)
        if "UnidentifiedImageError" in names:
            return PIL.UnidentifiedImageError(message)
        if "DecompressionBombError" in names:
            return _Image.DecompressionBombError(message)
        for name in names:
            cls = getattr(builtins, name, None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    return cls(message)
                except Exception:  # pragma: no cover - builtins that take other arguments
                    continue
        return RuntimeError(f"{names[0]}: {message}")  # pragma: no cover - every exception is an Exception

    # -- talking to a worker -------------------------------------------------

    async def _send(self, worker: _Worker, data: bytes) -> None:
        try:
            await worker.sock.send(data)
        except (OSError, trio.ClosedResourceError) as exc:
            if isinstance(exc, OSError) and exc.errno == 90:  # EMSGSIZE: nothing was sent
                raise ValueError(
                    f"the request is {len(data)} bytes pickled, more than the socket to the workers carries"
                ) from None
            raise _Died() from None

    async def _receive(self, worker: _Worker) -> dict[str, Any]:
        try:
            data = await worker.sock.recv(_MAX_REPLY)
        except (OSError, trio.ClosedResourceError):
            raise _Died() from None
        if not data:
            raise _Died()
        try:
            reply = json.loads(data)
        except ValueError:
            raise _Died("it sent a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise _Died(f"it sent {reply!r}")
        return reply

    # -- handing workers out -------------------------------------------------

    async def _checkout(self, what: str) -> _Session:
        """A session with an idle worker; waits (first come, first served) for one."""
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._top_up()
        if self._idle and not self._waiters:
            worker = self._idle.popleft()
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            if self._start_error is not None and not self._workers and not self._starting:
                raise self._no_workers()
            waiter = _Waiter()
            self._waiters.append(waiter)
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter.worker is not None:
                    self._give_back(waiter.worker)  # handed over as we were cancelled
                else:
                    self._waiters.remove(waiter)
                raise
            if waiter.error is not None:
                raise waiter.error
            assert waiter.worker is not None
            worker = waiter.worker
        session = worker.session = _Session(worker, what)
        return session

    def _give_back(self, worker: _Worker) -> None:
        """*worker* is between jobs: to the first waiter, or idle (or told to exit if closed)."""
        worker.session = None
        worker.finishing = False
        if worker.reaped.is_set() or worker.burying:
            return
        if self._closed:
            worker.burying = True  # _retire's from now on: _bury leaves it alone
            self._nursery.start_soon(self._retire, worker)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.worker = worker
            waiter.event.set()
            return
        self._idle.append(worker)

    def _leave(self, worker: _Worker) -> None:
        """The caller leaves *worker*'s session early (cancelled, or an error)."""
        session = worker.session
        assert session is not None
        if worker.reaped.is_set() or worker.burying:
            session.let_go()
        elif session.phase == _Session.IDLE:
            session.let_go()
            self._give_back(worker)
        else:
            worker.finishing = True
            self._nursery.start_soon(self._finish, worker)

    async def _finish(self, worker: _Worker) -> None:
        """Bring a session whose caller left to its end, then give the worker back."""
        session = worker.session
        assert session is not None
        try:
            if self._kill_on_cancel or self._closed:
                raise _Died()
            if session.phase == _Session.JOB_SENT:
                reply = await self._receive(worker)
                session.unpin()
                session.phase = _Session.HOLDING if "need" in reply else _Session.IDLE
            if session.phase == _Session.WRITE_SENT:
                await self._receive(worker)
                session.unlock()
                session.phase = _Session.IDLE
            if session.phase == _Session.HOLDING:
                await self._send(worker, pickle.dumps({"op": "drop"}))
                session.phase = _Session.IDLE
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._bury(worker)
            session.let_go()
            self._top_up()
            if not isinstance(exc, (_Died, ValueError)):
                raise
            return
        session.let_go()
        self._give_back(worker)

    # -- starting and ending workers -------------------------------------------

    def _top_up(self) -> None:
        """Start workers in place of those that died, up to the number asked for."""
        if self._closed:
            return
        for _ in range(self._processes - len(self._workers) - self._starting):
            self._starting += 1
            self._nursery.start_soon(self._replace)

    async def _replace(self) -> None:
        """Start one worker (``_starting`` already counts it) and hand it out."""
        try:
            worker = await self._spawn()
        except Exception as exc:
            self._starting -= 1
            self._start_error = exc
            if not self._workers and not self._starting:
                # Nobody will hand a worker to the callers waiting: tell them.
                while self._waiters:
                    waiter = self._waiters.popleft()
                    waiter.error = self._no_workers()
                    waiter.event.set()
        except BaseException:
            self._starting -= 1
            raise
        else:
            self._starting -= 1
            self._start_error = None
            self._give_back(worker)
        finally:
            if not self._starting:
                self._all_started.set()

    def _no_workers(self) -> BrokenWorkerError:
        return BrokenWorkerError(
            f"no image worker is running, and starting one failed: {self._start_error}",
            worker=0, pid=0, returncode=None,
        )

    async def _spawn(self) -> _Worker:
        """Start a worker process and wait until it is ready for jobs."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for end in (parent, child):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _image_worker.MAX_MESSAGE)
            process = await trio.lowlevel.open_process(
                [sys.executable, "-I", "-c", _LOADER, _image_worker.__file__, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._started += 1
        worker = _Worker(next(self._numbers), process, trio.socket.from_stdlib_socket(parent))
        self._workers[worker.number] = worker
        try:
            hello = pickle.dumps({"sys_path": list(sys.path), "preload": list(self._preload), "nice": self._nice})
            fds = array.array("i", [self._pool._arena.fd])
            try:
                await worker.sock.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            except OSError:
                raise _Died() from None
            reply = await self._receive(worker)
            if "error" in reply:
                raise RuntimeError(f"{worker.name()} could not start: {reply['error'][0]}: {reply.get('message')}")
            if reply.get("pillow") != PIL.__version__:
                raise RuntimeError(
                    f"{worker.name()} imported Pillow {reply.get('pillow')}, not this process's"
                    f" {PIL.__version__}: its images could differ"
                )
        except _Died:
            with trio.CancelScope(shield=True):
                await self._bury(worker)
            raise RuntimeError(f"{worker.name()} {self._how_it_ended(worker)} while starting") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._bury(worker)
            raise
        return worker

    async def _bury(self, worker: _Worker) -> None:
        """Kill *worker* and wait until its process is reaped; then let go of its leases."""
        if worker.burying:
            await worker.reaped.wait()
            return
        self._kill(worker)
        await self._reap(worker)

    def _kill(self, worker: _Worker) -> None:
        """Send *worker* SIGKILL; from now on, whoever calls :meth:`_reap` next reaps it."""
        worker.burying = True
        try:
            self._idle.remove(worker)
        except ValueError:
            pass
        try:
            worker.process.kill()
        except OSError:  # pragma: no cover - it was gone already
            pass

    async def _reap(self, worker: _Worker) -> None:
        """Wait until killed *worker*'s process is reaped; then let go of its leases.

        Shielded, whoever calls it: every other task that wants this worker
        gone (and the workers' close) waits for ``reaped`` with no way out,
        so a reaper cancelled half-way (killed, not yet reaped) would leave
        them all waiting forever, and a zombie behind. The wait is short:
        the process was sent SIGKILL.
        """
        with trio.CancelScope(shield=True):
            await worker.process.wait()
        worker.sock.close()
        # Reaped: nothing of that process can touch the pool any more.
        if worker.session is not None:
            worker.session.let_go()
        self._workers.pop(worker.number, None)
        worker.reaped.set()

    async def _retire(self, worker: _Worker) -> None:
        """Tell an idle worker to exit (its socket closes), and reap it."""
        worker.burying = True
        worker.sock.close()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_EXIT_GRACE):
                await worker.process.wait()
            if worker.process.returncode is None:  # pragma: no cover - it exits at end of file
                worker.process.kill()
                await worker.process.wait()
        self._workers.pop(worker.number, None)
        worker.reaped.set()

    def _how_it_ended(self, worker: _Worker) -> str:
        code = worker.process.returncode
        if code is None:  # pragma: no cover - asked after it was reaped
            return "stopped answering"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:  # pragma: no cover
                return f"was killed by signal {-code}"
        return f"exited with status {code}"

    async def _start(self) -> None:
        """Start every worker, in parallel, and wait until they are ready; raise if one failed."""
        self._top_up()
        await self._all_started.wait()
        if self._start_error is not None:
            raise self._start_error

    async def _aclose(self) -> None:
        """Stop every worker and wait until each is reaped (shielded by the caller)."""
        self._closed = True
        for waiter in self._waiters:
            waiter.error = trio.ClosedResourceError("the image workers closed while waiting for a worker")
            waiter.event.set()
        self._waiters.clear()
        # Idle workers exit when their socket closes; the others (at a job
        # whose caller left, at a call made from outside the block, or still
        # starting) are killed.
        idle = list(self._idle)
        self._idle.clear()
        for worker in idle:
            worker.burying = True  # _retire's from now on: _bury leaves it alone
            self._nursery.start_soon(self._retire, worker)
        # The others are killed, and looked for again after each reaped one:
        # a worker whose process was being created (in open_process's
        # thread) when we began shows up later, and may never answer its
        # hello; only a kill makes sure it ends. (A worker that is handed
        # back meanwhile is _retire's: _give_back marks it burying.)
        while self._workers:
            for worker in list(self._workers.values()):
                if not worker.burying:
                    self._kill(worker)
                    self._nursery.start_soon(self._reap, worker)
            await next(iter(self._workers.values())).reaped.wait()


def _check_processes(processes: object) -> int:
    if processes is None:
        return len(os.sched_getaffinity(0))
    if isinstance(processes, bool) or not isinstance(processes, int):
        raise TypeError(f"processes must be a positive int or None, not {type(processes).__name__}")
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    return processes


@asynccontextmanager
async def open_workers(
    pool: BufferPool,
    processes: int | None = None,
    *,
    kill_on_cancel: bool = False,
    preload: Sequence[str] = (),
    nice: int = DEFAULT_NICE,
) -> AsyncIterator[ImageWorkers]:
    """Worker processes for image work, for the duration of a block.

    ``async with images.open_workers(pool) as workers:``

    Starts *processes* worker processes (default: one per core this process
    may run on) and waits until they are ready (about 40 ms). Each is a
    fresh Python interpreter (``sys.executable``, with this process's
    ``sys.path``; never a fork of this process) that imports Pillow and the
    modules in *preload* (Pillow plugins that register formats when
    imported), and reads the *pool*'s memory through a read-only mapping;
    it maps a lease writable only to copy a result into it. Use the
    workers' methods from any task in the block; results are leases of
    *pool*.

    *nice* (0 to 19) lowers the workers' scheduling priority below this
    process's (an ``os.nice`` increment): when the event loop wakes up with
    every core encoding, it gets a CPU at once. The price: on a machine
    busy with other processes, the workers get less of it; 0 makes them
    compete as equals. A worker takes about 15 MB of memory at rest, and
    keeps up to 8 of Pillow's freed memory blocks (16 MiB each) for the
    next image, which saves a third of a 12 MP encode's time;
    ``PILLOW_BLOCKS_MAX`` in the environment sets another number.

    With *kill_on_cancel*, a cancelled call kills its worker (a new one is
    started) instead of letting it finish the job in the background.

    A job costs the event loop about 0.1 ms of work and a worker a round
    trip (0.5 ms for a small image, all told, against 0.2 ms to encode a
    320x240 JPEG in the loop): for images that take less than a
    millisecond, :func:`trio_zc.images.encode` in the loop is the better
    deal.

    When the block ends, idle workers exit, workers still finishing a
    cancelled job are killed, and the block waits until every worker process
    has been reaped. An exception raised in the block comes out as itself.
    Open the workers inside the pool's block: the pool must outlive them.
    Raises :class:`RuntimeError` if a worker cannot start (Pillow missing in
    its interpreter, a *preload* module that fails to import, another
    version of Pillow than this process's).
    """
    from ._pool import BufferPool

    if not isinstance(pool, BufferPool):
        raise TypeError(f"pool must be a BufferPool, not {type(pool).__name__}")
    pool._check_open()
    count = _check_processes(processes)
    if not isinstance(kill_on_cancel, bool):
        raise TypeError(f"kill_on_cancel must be a bool, not {type(kill_on_cancel).__name__}")
    if isinstance(preload, str) or not all(isinstance(name, str) for name in preload):
        raise TypeError("preload must be a sequence of module names")
    if isinstance(nice, bool) or not isinstance(nice, int):
        raise TypeError(f"nice must be an int from 0 to 19, not {type(nice).__name__}")
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be from 0 to 19, not {nice}")
    # A background nursery: an exception of the block comes out of
    # open_workers as itself, never wrapped in an ExceptionGroup (its tasks
    # -- replacing workers, finishing abandoned jobs -- never raise).
    async with background_nursery() as nursery:
        workers = ImageWorkers(pool, nursery, count, kill_on_cancel, tuple(preload), nice)
        try:
            await workers._start()
            yield workers
        finally:
            # Every worker process reaped before the block ends, even when
            # it was cancelled; then the nursery's tasks are cancelled.
            with trio.CancelScope(shield=True):
                await workers._aclose()


from ._ki import protect_package as _protect_package

_protect_package(__name__)
