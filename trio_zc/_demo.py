"""``python -m trio_zc demo``: a short end-to-end run of the library.

A server task draws images into leases, seals them and sends them over
loopback TCP to several clients, each of which checks the SHA-256 of every
image it receives. The pool's memory is reused as soon as it comes back,
so a lifetime bug would show up as a corrupt image.
"""

from __future__ import annotations

import hashlib
import struct
import time
from functools import partial

import trio

from ._highlevel import serve_tcp
from ._pool import PoolStatistics, open_pool
from ._stream import ZeroCopyStream

_HEADER = struct.Struct("!I32s")  # length, SHA-256 of the body


def _draw(width: int, height: int, seed: int) -> bytes:
    """A deterministic RGB gradient; stands in for a processed image."""
    row = bytes(((x * 255) // max(width - 1, 1) + seed) & 0xFF for x in range(width * 3))
    return b"".join(row[(y + seed) % 3 :] + row[: (y + seed) % 3] for y in range(height))


async def _client(port: int, images: int, results: list[int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ok = 0
    async with stream:
        buf = bytearray()

        async def need(n: int) -> bytes:
            while len(buf) < n:
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    raise RuntimeError("server closed early")
                buf.extend(chunk)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        for _ in range(images):
            length, digest = _HEADER.unpack(await need(_HEADER.size))
            body = await need(length)
            ok += hashlib.sha256(body).digest() == digest
    results.append(ok)


async def _demo(images: int, clients: int) -> tuple[int, int, int, float, PoolStatistics]:
    sizes = [(320, 240), (640, 480), (1024, 768)]
    frames = [_draw(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    results: list[int] = []
    sent_bytes = 0
    start = time.perf_counter()
    async with open_pool(max_bytes=16 << 20) as pool:

        async def serve(stream: ZeroCopyStream) -> None:
            nonlocal sent_bytes
            async with stream:
                for i in range(images):
                    frame = frames[i % len(frames)]
                    async with pool.lease(len(frame)) as lease:
                        lease.write(frame)
                        sealed = lease.seal()
                        header = _HEADER.pack(sealed.nbytes, hashlib.sha256(sealed.view()).digest())
                        await stream.send_all(header)
                        await stream.send_lease(sealed)
                        sent_bytes += sealed.nbytes
                    # The block released the lease; its memory goes back to
                    # the pool when the kernel says it is done with it.

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, serve, 0, pool=pool, host="127.0.0.1"))
            port = listeners[0].listener.socket.getsockname()[1]
            async with trio.open_nursery() as clients_nursery:
                for _ in range(clients):
                    clients_nursery.start_soon(_client, port, images, results)
            nursery.cancel_scope.cancel()
        stats = pool.statistics()
    elapsed = time.perf_counter() - start
    return sum(results), clients * images, sent_bytes, elapsed, stats


def run_demo(*, images: int, clients: int) -> int:
    print(f"trio_zc demo: {clients} clients x {images} images over loopback TCP")
    ok, total, sent, elapsed, stats = trio.run(_demo, images, clients)
    print(f"  images verified : {ok}/{total} (SHA-256 of every image)")
    print(f"  corrupt images  : {total - ok}")
    print(f"  bytes sent      : {sent / 1e6:.1f} MB in {elapsed:.2f} s ({sent / elapsed / 1e9:.2f} GB/s)")
    print(f"  leases used     : {stats.leases_total} from a pool of {stats.max_bytes >> 20} MiB")
    sent_stats = stats.sent
    print(
        f"  kernel          : {stats.kernel}: {sent_stats.zerocopy_calls} zero-copy calls,"
        f" {sent_stats.completions} completions, {sent_stats.bytes_kernel_copied / 1e6:.1f} MB"
        f" copied by the kernel after all, {sent_stats.bytes_copied / 1e6:.1f} MB copied"
    )
    for reason, count in stats.fallbacks:
        print(f"  fallback        : {count} stream(s): {reason}")
    print(f"  pool at the end : {stats.free_bytes >> 10} KiB free, {stats.sends_in_flight} sends in flight")
    return 0 if ok == total else 1
