"""The image worker: one process that runs Pillow for :mod:`trio_zc._image_workers`.

This file runs on its own in each worker process: the parent starts
``python -I -c <loader> <this file> <fd>``, which loads this one file, not
the package (importing trio_zc would import Trio, six times slower to start
than the worker itself). So it imports only the standard library when it is
loaded, and Pillow once the parent has said where to find it. The parent
imports it too, for :func:`raw_size` and the protocol's constants.

Protocol
========

One ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair per worker: a message is one
``send`` and arrives whole or not at all, so a cancelled sender never leaves
half a request behind.

- Parent to worker: pickled dicts. The worker trusts its parent.
- Worker to parent: JSON objects. The parent never unpickles what a worker
  says: a worker that decodes an untrusted image may have been taken over by
  it, and must not be able to run code in the server through the reply.

1. ``hello``, carrying the pool's memfd as ``SCM_RIGHTS`` ancillary data,
   with the parent's ``sys.path``, the modules to import (Pillow plugins)
   and the ``nice`` increment; the answer is ``{"ready": pid, "pillow":
   version}``.
2. A job (``encode``, ``decode`` or ``resize``), naming its source as a
   range of the memfd. The worker reads that range, does the work into its
   own memory, drops every view of the source and answers ``{"need": n,
   ...}`` (the result's size and, for pixels, mode, size and palette), or
   ``{"error": ...}``. Once it has answered, it never reads the source again.
3. After ``need``, the parent leases exactly ``n`` bytes and sends
   ``write`` with their range: the worker maps that range read-write, copies
   the result in, unmaps it and answers ``{"done": n}``. Or the parent sends
   ``drop`` (no answer), and the result is thrown away.

Everything the worker writes into the pool goes through step 3: it holds a
writable mapping of pool memory only for the time of one copy, of the
lease's pages and no others.

Sources are read through one read-only mapping of the whole pool, made at
the hello and kept: mapping each source's range for its job alone costs the
page-table work again every job (3.5 to 4 ms for a 36 MB source, a tenth of
a 12 MP JPEG encode; ``benchmarks/image_workers.py`` measures it), and a
read-only mapping cannot write into another image whatever its size: a
stray write faults there as it would in a narrow one.
"""

from __future__ import annotations

import gc
import io
import json
import mmap
import os
import pickle
import signal
import socket
import sys
from typing import IO, Any, cast

#: The largest message either side sends (requests with big save options;
#: replies are far smaller). The socket's buffer is raised to carry it.
MAX_MESSAGE = 1 << 22

PAGE_SIZE = mmap.PAGESIZE

#: How many of Pillow's freed memory blocks (16 MiB each by default) a worker
#: keeps for reuse, unless ``PILLOW_BLOCKS_MAX`` in the environment says.
BLOCKS_MAX = 8

#: Bits per pixel of the packed raw layout of each mode (``Image.tobytes()``).
RAW_BITS: dict[str, int] = {
    "1": 1, "L": 8, "P": 8, "I": 32, "F": 32, "RGB": 24, "RGBA": 32, "RGBX": 32, "CMYK": 32,
    "YCbCr": 24, "LAB": 24, "HSV": 24, "LA": 16, "PA": 16, "La": 16, "RGBa": 32,
    "I;16": 16, "I;16L": 16, "I;16B": 16,
}

#: Bytes per pixel of Pillow's own memory layout for the modes whose images
#: it can map onto a buffer as they are ("core" sources: the parent pastes an
#: image's memory into a lease, and the worker maps it back with no copy).
#: Pillow keeps RGB, LA and the like at 4 bytes a pixel; mode "1" keeps a byte
#: a pixel that its mapper cannot take, so it travels packed.
CORE_BYTES: dict[str, int] = {
    "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2,
    "RGB": 4, "RGBA": 4, "RGBX": 4, "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4,
    "I": 4, "F": 4, "LA": 4, "La": 4, "PA": 4, "RGBa": 4,
}


def raw_size(mode: str, width: int, height: int) -> int:
    """Bytes of a *width* x *height* image of *mode* in the packed raw layout."""
    bits = RAW_BITS.get(mode)
    if bits is None:
        raise ValueError(f"trio_zc does not know the raw layout of mode {mode!r}")
    return (width * bits + 7) // 8 * height


def _round_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


class _Channel:
    """The worker's end of the socket pair."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)

    def receive(self) -> dict[str, Any] | None:
        """The next request, or None at end of file (the parent closed us)."""
        data, _, flags, _ = self.sock.recvmsg(MAX_MESSAGE)
        if not data:
            return None
        if flags & socket.MSG_TRUNC:  # pragma: no cover - the parent never sends that much
            raise ValueError("a request was larger than the worker's buffer")
        request: dict[str, Any] = pickle.loads(data)
        return request

    def reply(self, message: dict[str, Any]) -> None:
        self.sock.send(json.dumps(message).encode())


def _error(exc: BaseException) -> dict[str, Any]:
    """An error reply: the names of the exception's classes (for the parent to pick one) and its message."""
    return {
        "error": [cls.__name__ for cls in type(exc).__mro__ if issubclass(cls, BaseException)],
        "module": type(exc).__module__,
        "message": str(exc)[:4000],
    }


class _Source:
    """A job's source: a read-only view of its range of the pool, for the time of the job."""

    def __init__(self, pool: mmap.mmap, offset: int, nbytes: int) -> None:
        if offset < 0 or nbytes < 1 or offset + nbytes > len(pool):
            raise ValueError(f"the source [{offset}, {offset + nbytes}) is not in the pool ({len(pool)} bytes)")
        self.nbytes = nbytes
        with memoryview(pool) as whole:
            self.view = whole[offset : offset + nbytes]

    def close(self) -> None:
        try:
            self.view.release()
        except BufferError:  # pragma: no cover - every image over it was dropped
            # A reference cycle still holds an image built on the view:
            # collect it, then let go.
            gc.collect()
            self.view.release()


class _MapFile(io.RawIOBase):
    """A read-only file over the first *nbytes* of a mapping, for Image.open."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._view = data[:]
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as target, target.cast("B") as flat:
            start = min(self._position, len(self._view))
            n = min(len(flat), len(self._view) - start)
            flat[:n] = self._view[start : start + n]
        self._position = start + n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = len(self._view) + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            self._view.release()
        super().close()


class Worker:
    """What one worker process does, between its hello and the end of its socket."""

    def __init__(self, channel: _Channel, memfd: int) -> None:
        self.channel = channel
        self.memfd = memfd
        #: The whole pool, read-only: where sources are read from.
        self.pool = mmap.mmap(memfd, os.fstat(memfd).st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        # Base pages, as the pool's own mappings ask (see _arena.py and _thp.py).
        self.pool.madvise(mmap.MADV_NOHUGEPAGE)
        from PIL import Image

        self.Image = Image
        if "PILLOW_BLOCKS_MAX" not in os.environ:
            # Keep freed image memory for the next image: a fresh 48 MB image
            # (12 MP RGB) costs 12,000 page faults, 15 ms of a 35 ms encode.
            Image.core.set_blocks_max(BLOCKS_MAX)  # type: ignore[attr-defined]

    # -- sources -----------------------------------------------------------

    def _image(self, source: _Source, spec: dict[str, Any]) -> Any:
        """The PIL image a job's source describes, over the mapping where Pillow can."""
        Image = self.Image
        mode, size = spec["mode"], tuple(spec["size"])
        if spec["layout"] == "core":
            # Pillow's own layout (the parent pasted an image's memory):
            # mapped as it is, no copy, whatever the mode.
            core = Image.core.map_buffer(source.view, size, "raw", 0, (mode, 0, 1))
            image = Image.new(mode, (0, 0))._new(core)
            image.readonly = 1  # Pillow copies before changing it, as for frombuffer
        else:
            # The packed layout: Pillow maps the modes it can (L, P, RGBA,
            # RGBX, CMYK, I;16) and unpacks the others into its own memory.
            image = Image.frombuffer(mode, size, source.view, "raw", mode, 0, 1)
        palette = spec.get("palette")
        if palette is not None:
            image.putpalette(bytes.fromhex(palette[1]), rawmode=palette[0])
        image.info = dict(spec.get("info") or {})
        return image

    # -- jobs (each reads its source, mapped by serve(), and returns its reply and result) --

    def encode(self, request: dict[str, Any], source: _Source) -> tuple[dict[str, Any], Any]:
        name = request["format"]
        Image = self.Image
        Image.init()
        if name not in Image.SAVE:
            raise ValueError(f"Pillow cannot write {name!r} here; it can write {', '.join(sorted(Image.SAVE))}")
        image = self._image(source, request)
        out = io.BytesIO()
        image.save(out, format=name, **request["options"])
        data = out.getbuffer()
        if not data.nbytes:
            raise ValueError(f"Pillow wrote no bytes for this {request['mode']} image as {name}")
        return {"need": data.nbytes}, data

    def decode(self, request: dict[str, Any], source: _Source) -> tuple[dict[str, Any], Any]:
        with _MapFile(source.view) as file:
            with self.Image.open(cast("IO[bytes]", file), formats=request["formats"]) as opened:
                opened.load()
                # Pillow decoded into its own memory (the file has no
                # descriptor to map); keep that past the file's close.
                image = opened._new(opened.im)
        return self._pixels_reply(image), image

    def resize(self, request: dict[str, Any], source: _Source) -> tuple[dict[str, Any], Any]:
        image = self._image(source, request)
        resized = image.resize(tuple(request["target"]), request["resample"], request["box"], request["reducing_gap"])
        return self._pixels_reply(resized), resized

    def _pixels_reply(self, image: Any) -> dict[str, Any]:
        width, height = image.size
        if not width or not height:
            raise ValueError(f"the image is empty ({width}x{height})")
        palette = None
        if image.mode in ("P", "PA") and image.palette is not None:
            rawmode = image.palette.mode
            palette = [rawmode, bytes(image.getpalette(rawmode)).hex()]
        return {
            "need": raw_size(image.mode, width, height),
            "mode": image.mode,
            "size": [width, height],
            "palette": palette,
        }

    # -- writing the result into the pool --------------------------------------

    def write(self, request: dict[str, Any], result: Any) -> dict[str, Any]:
        """Copy *result* (encoded bytes, or an image's pixels) into the lease the parent gave."""
        length = request["length"]
        # Populated at once: one call instead of a page fault per page (the
        # copy takes half the time).
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        target = mmap.mmap(self.memfd, _round_up(length), flags=flags, offset=request["offset"])
        try:
            target.madvise(mmap.MADV_NOHUGEPAGE)
            if isinstance(result, memoryview):
                if result.nbytes != length:  # pragma: no cover - the parent leased what we asked
                    raise ValueError(f"the lease holds {length} bytes, the image {result.nbytes}")
                target[:length] = result
            else:
                self._pack(result, target, length)
        finally:
            target.close()
        return {"done": length}

    def _pack(self, image: Any, target: mmap.mmap, length: int) -> None:
        """Write *image*'s pixels in the packed raw layout into *target* (one copy)."""
        Image = self.Image
        width, height = image.size
        if image.mode in Image._MAPMODES:
            view = memoryview(target)
            try:
                mapped = Image.frombuffer(image.mode, image.size, view, "raw", image.mode, 0, 1)
                # The core's paste writes into the mapping directly (the Image
                # wrapper would copy first: frombuffer made it read-only).
                mapped.im.paste(image.im, (0, 0, width, height))
                del mapped
            finally:
                view.release()
            return
        encoder = Image._getencoder(image.mode, "raw", image.mode)
        try:
            encoder.setimage(image.im, (0, 0, width, height))
            bufsize = max(1 << 20, width * 4)  # at least one packed row
            offset = 0
            while True:
                _, status, chunk = encoder.encode(bufsize)
                target[offset : offset + len(chunk)] = chunk
                offset += len(chunk)
                if status:
                    break
        finally:
            encoder.cleanup()
        if status < 0 or offset != length:  # pragma: no cover - Pillow's own invariants
            raise RuntimeError(f"Pillow's raw encoder gave {offset} bytes (status {status}), not {length}")

    # -- the loop ------------------------------------------------------------------

    def run(self, request: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Do one job: its reply, and the result to write if the parent asks for it."""
        jobs = {"encode": self.encode, "decode": self.decode, "resize": self.resize}
        source = _Source(self.pool, request["offset"], request["nbytes"])
        try:
            reply, result = jobs[request["op"]](request, source)
        except Exception as exc:
            reply, result = _error(exc), None
        # Outside the except block: the exception and the frames it kept
        # (which may hold an image built on the mapping) are gone by now.
        source.close()
        return reply, result

    def serve(self) -> None:
        channel = self.channel
        while True:
            request = channel.receive()
            if request is None:
                return
            try:
                reply, result = self.run(request)
            except Exception as exc:  # mapping the source failed
                reply, result = _error(exc), None
            # The source is unmapped: from this answer on, it is never read again.
            channel.reply(reply)
            if result is None:
                continue
            follow = channel.receive()
            if follow is None:
                return
            if follow["op"] == "write":
                try:
                    answer = self.write(follow, result)
                except Exception as exc:
                    answer = _error(exc)
                result = None
                channel.reply(answer)
            result = None


def main(fd: int) -> None:
    """The worker process's program: *fd* is its end of the socket pair."""
    # Ctrl-C in a terminal reaches the whole process group: the parent
    # decides when its workers end (it closes or kills them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _Channel(fd)
    data, fds, _, _ = socket.recv_fds(channel.sock, MAX_MESSAGE, 1)
    if not data or len(fds) != 1:
        return
    hello = pickle.loads(data)
    memfd = fds[0]
    try:
        sys.path[:] = hello["sys_path"]
        # Below the server in the scheduler's eyes, so that its event loop
        # gets a CPU at once when it wakes up, even with every core encoding.
        os.nice(hello["nice"])
        import importlib

        import PIL

        for name in hello["preload"]:
            importlib.import_module(name)
        worker = Worker(channel, memfd)
    except Exception as exc:
        channel.reply(_error(exc))
        return
    channel.reply({"ready": os.getpid(), "pillow": PIL.__version__})
    worker.serve()


if __package__:  # imported by the parent, as part of the package
    from ._ki import protect_package as _protect_package

    _protect_package(__name__)
