"""Test helpers that run inside image worker processes (``open_workers(preload=[__name__])``).

- A Pillow format, ``STALLTEST``, whose saver writes part of an image,
  creates the file named by the ``marker`` save option and waits for the
  file named by ``go`` before it writes the rest -- or dies there, with
  ``die="exit"`` or ``die="segv"``. Tests use it to catch a worker in the
  middle of an image.
- With ``TRIO_ZC_TEST_STALL_WRITE=<directory>`` in the environment, the
  worker writes half of each result into its lease, creates
  ``<directory>/writing`` and waits for ``<directory>/go`` before it writes
  the rest: a worker caught in the middle of writing pool memory.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import IO, Any

from PIL import Image

#: The longest a stalled worker waits (tests end it sooner, or kill it).
STALL_LIMIT = 60.0


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + STALL_LIMIT
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def _stall_save(image: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    info = image.encoderinfo
    fp.write(b"the first half of an image ")
    with open(info["marker"], "w"):
        pass
    _wait_for(info["go"])
    if info.get("die") == "exit":
        os._exit(3)
    if info.get("die") == "segv":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    fp.write(b"and the rest of it")


Image.register_save("STALLTEST", _stall_save)

_worker = sys.modules.get("trio_zc_image_worker")
_directory = os.environ.get("TRIO_ZC_TEST_STALL_WRITE")
if _worker is not None and _directory:
    _write = _worker.Worker.write

    def _stalling_write(self: Any, request: dict[str, Any], result: Any) -> dict[str, Any]:
        if isinstance(result, memoryview):
            half = request["length"] // 2
            _write(self, {**request, "length": half}, result[:half])
            with open(os.path.join(_directory, "writing"), "w"):
                pass
            _wait_for(os.path.join(_directory, "go"))
        reply: dict[str, Any] = _write(self, request, result)
        return reply

    _worker.Worker.write = _stalling_write
