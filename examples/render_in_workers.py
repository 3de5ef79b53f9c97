"""A server that renders images in worker processes, and sends them without copying.

Run it with ``python examples/render_in_workers.py`` (needs NumPy and Pillow:
``pip install 'trio_zc[images]'``). It starts the server on 127.0.0.1, has
a few clients ask it for images at once, checks every image against
Pillow's own encoding of the same picture, and says how long the event loop
ever waited while the server was busy.

Per request (``b"<width> <height> <seed>\\n"``), the server

1. draws the picture with NumPy straight into a lease of the pool, four bytes
   a pixel (RGBX), which a worker maps as it is -- in a thread, since NumPy
   lets go of the GIL while it computes (one at a time: more threads would
   only take CPU time from the event loop);
2. has a worker process encode it as JPEG, into a second lease of exactly
   the encoded size (the server process copies nothing, and its event loop
   serves the other clients meanwhile);
3. sends the JPEG with ``send_lease``, after an 8-byte length.
"""

from __future__ import annotations

import hashlib
import io
import struct
import sys
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import trio
from PIL import Image

import trio_zc
from trio_zc import images

LENGTH = struct.Struct("!Q")
QUALITY = 85
CLIENTS = 6
REQUESTS = [(1600, 1200, seed) for seed in range(3)]


def draw_into(lease: trio_zc.WritableLease, width: int, height: int, seed: int) -> None:
    """Draw picture *seed* into *lease* (in a worker thread: a lease may be written from any thread)."""
    # The array is a view of the lease, which clears it first (so that no
    # earlier image's bytes show): that too is better done off the event loop.
    pixels = lease.ndarray((height, width, 4))
    draw(pixels, seed)
    # The view goes with this function's frame, before the lease is sealed.


def draw(pixels: npt.NDArray[Any], seed: int) -> None:
    """Draw picture *seed* in place into an (height, width, 4) RGBX array."""
    height, width, _ = pixels.shape
    y, x = np.ogrid[:height, :width]
    pixels[..., 0] = x * 255 // (width - 1)
    pixels[..., 1] = y * 255 // (height - 1)
    # A fine pattern, so that JPEG has work to do.
    pixels[..., 2] = ((x ^ y) * 7 + 80 * seed) % 256
    pixels[..., 3] = 255


async def handle(stream: trio_zc.ZeroCopyStream, workers: images.ImageWorkers, drawing: trio.CapacityLimiter) -> None:
    """One connection: answer each request line with a JPEG."""
    pool = stream.pool
    buffer = b""
    async with stream:
        while True:
            while b"\n" not in buffer:
                data = await stream.receive_some(1024)
                if not data:
                    return
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            width, height, seed = (int(field) for field in line.split())
            # The pixels' lease is scoped: released at the end of the block,
            # once the worker has encoded them.
            async with pool.lease(width * height * 4) as lease:
                await trio.to_thread.run_sync(draw_into, lease, width, height, seed, limiter=drawing)
                raw = images.RawImage(lease.seal(), "RGBX", (width, height))
                jpeg = await workers.encode(raw, "JPEG", quality=QUALITY)
            try:
                await stream.send_all(LENGTH.pack(jpeg.nbytes))
                await stream.send_lease(jpeg)
            finally:
                jpeg.release()


async def receive_exactly(stream: trio.abc.ReceiveStream, nbytes: int) -> bytes:
    data = bytearray()
    while len(data) < nbytes:
        chunk = await stream.receive_some(nbytes - len(data))
        if not chunk:
            raise RuntimeError(f"the server stopped after {len(data)} of {nbytes} bytes")
        data += chunk
    return bytes(data)


async def client(port: int, expected: dict[int, str], results: list[bool]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for width, height, seed in REQUESTS:
            await stream.send_all(f"{width} {height} {seed}\n".encode())
            (nbytes,) = LENGTH.unpack(await receive_exactly(stream, LENGTH.size))
            jpeg = await receive_exactly(stream, nbytes)
            results.append(hashlib.sha256(jpeg).hexdigest() == expected[seed])


async def ticker(gaps: list[float]) -> None:
    """Sleeps 1 ms at a time: the time between its wake-ups is how long the event loop was busy."""
    last = trio.current_time()
    while True:
        await trio.sleep(0.001)
        now = trio.current_time()
        gaps.append(now - last)
        last = now


def reference(width: int, height: int, seed: int) -> str:
    """SHA-256 of Pillow's own JPEG of picture *seed*, made in this process."""
    pixels = np.empty((height, width, 4), dtype=np.uint8)
    draw(pixels, seed)
    out = io.BytesIO()
    Image.fromarray(pixels[..., :3].copy(), "RGB").save(out, "JPEG", quality=QUALITY)
    return hashlib.sha256(out.getvalue()).hexdigest()


async def main() -> int:
    # Before the server starts (it takes the event loop a while): what each
    # picture must look like.
    expected = {seed: reference(width, height, seed) for width, height, seed in REQUESTS}
    results: list[bool] = []
    gaps: list[float] = []
    async with trio_zc.open_pool(max_bytes=128 << 20) as pool:
        # One worker process per core; they live as long as this block.
        async with images.open_workers(pool) as workers:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(
                        trio_zc.serve_tcp,
                        partial(handle, workers=workers, drawing=trio.CapacityLimiter(1)),
                        0,
                        pool=pool,
                        host="127.0.0.1",
                    )
                )
                port = listeners[0].listener.socket.getsockname()[1]
                nursery.start_soon(ticker, gaps)
                async with trio.open_nursery() as clients:
                    for _ in range(CLIENTS):
                        clients.start_soon(client, port, expected, results)
                nursery.cancel_scope.cancel()
            stats = workers.statistics()
        pool_stats = pool.statistics()

    total = CLIENTS * len(REQUESTS)
    print(f"{CLIENTS} clients received {sum(results)}/{total} JPEGs identical to Pillow's own (SHA-256)")
    print(f"workers: {stats.processes} processes, {stats.completed} images encoded, {stats.crashed} crashed")
    print(f"the event loop's longest wait while serving: {max(gaps) * 1e3:.1f} ms")
    print(f"pool: {pool_stats.free_bytes} of {pool_stats.max_bytes} bytes free")
    return 0 if sum(results) == total else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
