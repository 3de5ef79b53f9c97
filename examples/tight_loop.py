"""Send many images in a tight loop, with one checkpoint per image.

Run it with ``python examples/tight_loop.py [--images N] [--size BYTES]``.
A sender streams *N* images of *BYTES* each to a receiver on 127.0.0.1,
taking each lease with ``pool.lease(..., schedule=False)``: entering the
block is still a cancel point, but it lets other tasks run only when it has
to wait for memory, because ``send_lease`` already does so once per image.
A ticker task runs all the while, to show the loop still shares the
thread; the receiver checks every image.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from functools import partial

import trio

import trio_zc


def image(index: int, size: int) -> bytes:
    """Image *index*: bytes that differ from every other image's."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


async def receive(
    stream: trio.abc.ReceiveStream, count: int, size: int, intact: list[int], finished: trio.Event
) -> None:
    """Read *count* images of *size* bytes and note the ones that arrived intact."""
    expected = [hashlib.sha256(image(i % 4, size)).digest() for i in range(4)]
    for index in range(count):
        buffer = bytearray()
        while len(buffer) < size:
            chunk = await stream.receive_some(size - len(buffer))
            if not chunk:
                raise RuntimeError(f"the stream ended in image {index}")
            buffer += chunk
        if hashlib.sha256(buffer).digest() == expected[index % 4]:
            intact.append(index)
    finished.set()


async def main(count: int, size: int) -> None:
    images = [image(i, size) for i in range(4)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0)
            ticks += 1

    async with trio_zc.open_pool(max_bytes=max(16 << 20, 4 * size)) as pool:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        stream = await trio_zc.open_tcp_stream("127.0.0.1", port, pool=pool)
        peer = await listeners[0].accept()
        intact: list[int] = []
        finished = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            nursery.start_soon(partial(receive, peer, count, size, intact, finished))
            started = time.perf_counter()
            async with stream:
                for index in range(count):
                    # send_lease() is this loop's checkpoint; taking the lease
                    # need not be a second one while the pool has room.
                    async with pool.lease(size, schedule=False) as lease:
                        lease.write(images[index % 4])
                        await stream.send_lease(lease.seal())
            elapsed = time.perf_counter() - started
            with trio.fail_after(60):
                await finished.wait()
            nursery.cancel_scope.cancel()
        await peer.aclose()
        await listeners[0].aclose()
        print(f"sent {count} images of {size} bytes in {elapsed:.3f} s")
        print(f"receiver verified {len(intact)}/{count} images (SHA-256)")
        print(f"the ticker task ran {ticks} times meanwhile")
        print(f"pool whole again: {pool.statistics().free_bytes == pool.max_bytes}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64 * 1024)
    args = parser.parse_args()
    trio.run(main, args.images, args.size)
