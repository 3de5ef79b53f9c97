"""``python -m trio_zc demo``: an image server on loopback, every byte verified.

The server renders a few source images (generated, deterministic), processes
them with NumPy and Pillow straight into leases -- resized JPEG and WebP
encodings, raw pixels -- and serves them over loopback TCP to many clients
at once, through one pool per kernel so the kernels can be compared side by
side:

- every client first gets the same sealed image (one lease sent to all of
  them concurrently: the broadcast case), then a series of images of its
  own, freshly processed per client;
- each image goes as a header (length and SHA-256, with ``send_all``) and
  the body (``send_lease``); leases are released as soon as they are sent,
  so memory is reused as soon as the kernel allows;
- each client checks the SHA-256 of every image it receives.

Progress is printed while it runs, and a table at the end: per kernel, the
streams, images and bytes sent, throughput, bytes sent zero-copy or copied,
fallbacks and corrupt images (which must be zero).
"""

from __future__ import annotations

import hashlib
import struct
import sys
import time
from functools import partial

import attrs
import numpy as np
import trio
from PIL import Image

from . import images
from ._highlevel import serve_tcp
from ._lease import SealedLease
from ._pool import BufferPool, open_pool
from ._stats import StreamStatistics
from ._stream import ZeroCopyStream

_HEADER = struct.Struct("!I32s")  # body length, SHA-256 of the body
DEMO_KERNELS = ("auto", "io_uring", "msg_zerocopy", "sendfile", "copy")


def source_images() -> list[Image.Image]:
    """A few deterministic 'photos': gradients, rings and noise."""
    out = []
    for seed, (w, h) in enumerate([(1280, 960), (1024, 768), (1600, 900)]):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(x - w / 2, y - h / 2)
        rgb = np.stack(
            [
                127 + 127 * np.sin(r / (9 + 3 * seed)),
                255 * x / w,
                255 * y / h,
            ],
            axis=-1,
        )
        rgb += rng.normal(0, 12, rgb.shape)
        out.append(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"))
    return out


async def process(pool: BufferPool, source: Image.Image, n: int) -> SealedLease:
    """One processed image for request *n*, straight into a lease."""
    scale = 0.35 + 0.1 * (n % 5)
    variant = source.resize((int(source.width * scale), int(source.height * scale)))
    if n % 3 == 2:
        variant = variant.rotate(90 * (n % 4), expand=True)
    kind = n % 3
    if kind == 0:
        return await images.encode(pool, variant, "JPEG", quality=80 + n % 15)
    if kind == 1:
        return await images.encode(pool, variant, "WEBP", quality=70)
    return await images.pixels(pool, variant)


@attrs.define
class ClientResult:
    images: int = 0
    good: int = 0
    bytes: int = 0


async def client(port: int, count: int, result: ClientResult) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        buf = bytearray()

        async def need(n: int) -> bytes:
            while len(buf) < n:
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    raise RuntimeError("the server closed early")
                buf.extend(chunk)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        for _ in range(count):
            length, digest = _HEADER.unpack(await need(_HEADER.size))
            body = await need(length)
            result.images += 1
            result.bytes += length
            result.good += hashlib.sha256(body).digest() == digest


@attrs.define
class KernelRun:
    kernel: str
    note: str | None = None
    streams: list[StreamStatistics] = attrs.Factory(list)
    clients: list[ClientResult] = attrs.Factory(list)
    seconds: float = 0.0


async def send_image(stream: ZeroCopyStream, sealed: SealedLease) -> None:
    await stream.send_all(_HEADER.pack(sealed.nbytes, hashlib.sha256(sealed.view()).digest()))
    await stream.send_lease(sealed)


async def run_kernel(
    kernel: str, sources: list[Image.Image], clients: int, per_client: int, progress: trio.MemorySendChannel[str]
) -> KernelRun:
    run = KernelRun(kernel)
    start = time.perf_counter()
    async with progress, open_pool(max_bytes=64 << 20, kernel=kernel) as pool:
        run.note = pool.statistics().kernel_note
        broadcast = await process(pool, sources[0], 0)  # one image for everyone
        ready = trio.Semaphore(0)
        finished = trio.Semaphore(0)

        async def handle(stream: ZeroCopyStream) -> None:
            async with stream:
                await send_image(stream, broadcast)
                ready.release()
                for n in range(1, per_client):
                    sealed = await process(pool, sources[n % len(sources)], n)
                    try:
                        await send_image(stream, sealed)
                    finally:
                        sealed.release()  # back to the pool once the kernel is done
            run.streams.append(stream.statistics())
            finished.release()
            await progress.send(f"{kernel}: a stream sent its {per_client} images")

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, handle, 0, pool=pool, host="127.0.0.1"))
            port = listeners[0].listener.socket.getsockname()[1]
            async with trio.open_nursery() as client_nursery:
                for _ in range(clients):
                    result = ClientResult()
                    run.clients.append(result)
                    client_nursery.start_soon(client, port, per_client, result)
                for _ in range(clients):
                    await ready.acquire()
                broadcast.release()  # every stream has it; the memory returns once sent
            for _ in range(clients):
                await finished.acquire()
            nursery.cancel_scope.cancel()
    run.seconds = time.perf_counter() - start
    return run


def table(runs: list[KernelRun]) -> str:
    head = (
        f"{'kernel':<13} {'streams':>7} {'images':>7} {'MB sent':>8} {'MB/s':>7}"
        f" {'MB zero-copy':>12} {'MB copied':>10} {'corrupt':>7}  fallbacks"
    )
    lines = [head, "-" * len(head)]
    for run in runs:
        sent = [s.sent for s in run.streams]
        total = sum(c.bytes for c in run.clients)
        zero = sum(s.bytes_zerocopy for s in sent)
        copied = sum(s.bytes_kernel_copied + s.bytes_copied for s in sent)
        corrupt = sum(c.images - c.good for c in run.clients)
        reasons: dict[str, int] = {}
        for s in run.streams:
            for reason, count in s.fallbacks:
                reasons[reason] = reasons.get(reason, 0) + count
        why = "; ".join(f"{n}x {r}" for r, n in reasons.items()) or "-"
        lines.append(
            f"{run.kernel:<13} {len(run.streams):>7} {sum(c.images for c in run.clients):>7}"
            f" {total / 1e6:>8.1f} {total / 1e6 / run.seconds:>7.0f} {zero / 1e6:>12.1f}"
            f" {copied / 1e6:>10.1f} {corrupt:>7}  {why}"
        )
    return "\n".join(lines)


async def demo(kernels: tuple[str, ...], clients: int, per_client: int) -> list[KernelRun]:
    sources = source_images()
    send, receive = trio.open_memory_channel[str](100)
    runs: list[KernelRun] = []

    async def show() -> None:
        async for line in receive:
            print(f"  .. {line}", file=sys.stderr, flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(show)
        async with send:
            for kernel in kernels:
                print(f"- {kernel}: {clients} clients x {per_client} images", flush=True)
                run = await run_kernel(kernel, sources, clients, per_client, send.clone())
                runs.append(run)
                if run.note:
                    print(f"  ({run.note})", flush=True)
    return runs


def run_demo(*, images: int, clients: int, kernels: tuple[str, ...] = DEMO_KERNELS) -> int:
    print(f"trio_zc demo: an image server on loopback, {clients} clients per kernel")
    runs = trio.run(demo, kernels, clients, images)
    print()
    print(table(runs))
    total = sum(c.images for run in runs for c in run.clients)
    good = sum(c.good for run in runs for c in run.clients)
    print()
    print(f"images verified : {good}/{total} (SHA-256 of every image)")
    print(f"corrupt images  : {total - good}")
    print("(on loopback the kernel copies zero-copy sends at delivery; 'auto' copies to loopback peers)")
    return 0 if good == total else 1
