"""A server that keeps serving while many of its clients stop reading.

Run it with ``python examples/slow_clients.py``. It starts an image server
on 127.0.0.1 whose pool holds 16 MiB, connects 100 clients that never read
(each one would hold a 256 KiB lease for ever) and then 3 clients that read
and check every image. The pool's ``send_timeout`` cuts the stalled
connections off after a second, their memory comes back, and the readers
get every image; the pool is whole again at the end.

Options: ``--stalled N`` (default 100), ``--timeout SECONDS`` (default 1.0;
``0`` switches the timeout off, and the readers then wait for ever -- the
program gives up after 10 s and says so).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys

import trio

import trio_zc

IMAGE_BYTES = 256 << 10
IMAGES_PER_CLIENT = 8


def image(index: int) -> bytes:
    return bytes([index % 251 + 1]) * IMAGE_BYTES


async def handle(stream: trio_zc.ZeroCopyStream, results: dict[str, int]) -> None:
    """Send IMAGES_PER_CLIENT images; a client that stops reading is cut off by send_timeout."""
    pool = stream.pool
    async with stream:
        try:
            for index in range(IMAGES_PER_CLIENT):
                async with pool.lease(IMAGE_BYTES) as lease:
                    lease.write(image(index))
                    await stream.send_lease(lease.seal())
            results["served"] += 1
        except trio.BrokenResourceError as exc:
            # The peer stopped reading for longer than send_timeout: the stream
            # reset the connection, and the memory it held is back in the pool.
            # (Or the peer went away: the same outcome, for another reason.)
            results["cut off" if "send_timeout" in str(exc) else "went away"] += 1


async def reader(port: int, verified: list[int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for index in range(IMAGES_PER_CLIENT):
            data = bytearray()
            while len(data) < IMAGE_BYTES:
                chunk = await stream.receive_some(IMAGE_BYTES - len(data))
                if not chunk:
                    raise RuntimeError("the server closed early")
                data += chunk
            if hashlib.sha256(data).digest() == hashlib.sha256(image(index)).digest():
                verified.append(index)


async def main(stalled: int, timeout: float | None) -> int:
    results = {"served": 0, "cut off": 0, "went away": 0}
    async with trio_zc.open_pool(max_bytes=16 << 20, send_timeout=timeout, drain_timeout=1.0) as pool:
        async with trio.open_nursery() as nursery:
            listeners = await trio_zc.open_tcp_listeners(0, pool=pool, host="127.0.0.1")
            port = listeners[0].listener.socket.getsockname()[1]
            # trio_zc.serve_listeners (not trio's): a client that resets or
            # closes early ends its own connection, never the server.
            nursery.start_soon(trio_zc.serve_listeners, lambda s: handle(s, results), listeners)
            sleepers = []
            for _ in range(stalled):
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
                await sock.connect(("127.0.0.1", port))
                sleepers.append(sock)
            await trio.sleep(0.3)
            print(f"{stalled} clients connected and stopped reading; pool: {pool.statistics().free_bytes >> 10} KiB free")
            verified: list[int] = []
            with trio.move_on_after(10) as gave_up:
                async with trio.open_nursery() as readers:
                    for _ in range(3):
                        readers.start_soon(reader, port, verified)
            print(f"readers verified {len(verified)}/{3 * IMAGES_PER_CLIENT} images (SHA-256)")
            if gave_up.cancelled_caught:
                print("the readers were starved: stalled clients held the pool (no send_timeout)")
            for sock in sleepers:
                sock.close()
            with trio.move_on_after(5):
                while sum(results.values()) < stalled + 3 and not gave_up.cancelled_caught:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        print(
            f"connections served: {results['served']}, cut off by send_timeout: {results['cut off']},"
            f" gone before their turn: {results['went away']}"
        )
    stats = pool.statistics()
    print(f"pool at the end: {stats.free_bytes >> 10} of {stats.max_bytes >> 10} KiB free")
    return 0 if len(verified) == 3 * IMAGES_PER_CLIENT and stats.free_bytes == stats.max_bytes else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stalled", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    sys.exit(trio.run(main, args.stalled, args.timeout or None))
