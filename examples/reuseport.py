"""One process per core, all serving the same port (SO_REUSEPORT).

Python runs one thread of Python at a time, so a busy image server runs one
process per core. With SO_REUSEPORT each process opens its own listening
socket on the same port, and the kernel spreads new connections over them.
Each process has its own pool: leases never cross processes.

Run: python examples/reuseport.py [--workers 2] [--port 8090]
     python examples/reuseport.py --self-test
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import multiprocessing.synchronize
import os
import socket
import struct
import sys

import trio

import trio_zc

HEADER = struct.Struct("!I32sI")  # length, SHA-256, serving process id
#: A client that stops reading for this long is cut off, its memory back in the pool.
SEND_TIMEOUT = 10.0


def listening_socket(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Every worker binds the same port; the kernel balances connections.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


async def worker_main(port: int, ready: multiprocessing.synchronize.Event) -> None:
    image = os.urandom(512 * 1024)  # stands in for a processed image
    async with trio_zc.open_pool(max_bytes=32 * 2**20, send_timeout=SEND_TIMEOUT) as pool:
        sock = listening_socket(port)
        await sock.bind(("127.0.0.1", port))
        sock.listen(128)
        listener = trio_zc.ZeroCopyListener(trio.SocketListener(sock), pool=pool)

        async def handle(stream: trio_zc.ZeroCopyStream) -> None:
            # No try/except for a client that goes away: trio_zc.serve_listeners
            # ends that connection (and closes the stream) when its stream breaks.
            async with pool.lease(len(image)) as lease:
                lease.write(image)
                sealed = lease.seal()
                await stream.send_all(HEADER.pack(len(image), hashlib.sha256(image).digest(), os.getpid()))
                await stream.send_lease(sealed)

        ready.set()
        await trio_zc.serve_listeners(handle, [listener])


def worker(port: int, ready: multiprocessing.synchronize.Event) -> None:
    trio.run(worker_main, port, ready)


async def fetch(port: int) -> tuple[bool, int]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        data = bytearray()
        while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack(data[: HEADER.size])[0]:
            chunk = await stream.receive_some(1 << 20)
            if not chunk:
                break
            data += chunk
    length, digest, pid = HEADER.unpack(data[: HEADER.size])
    body = bytes(data[HEADER.size : HEADER.size + length])
    return hashlib.sha256(body).digest() == digest, pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--self-test", action="store_true", help="serve, fetch 40 images, check, exit")
    args = parser.parse_args()
    if args.self_test:
        # A free port for the test, found by binding to port 0 once.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]
        args.workers = max(args.workers, 2)
    ctx = multiprocessing.get_context("spawn")
    workers = []
    for _ in range(args.workers):
        ready = ctx.Event()
        process = ctx.Process(target=worker, args=(args.port, ready), daemon=True)
        process.start()
        ready.wait(30)
        workers.append(process)
    print(f"{len(workers)} workers serve 127.0.0.1:{args.port}")
    if not args.self_test:
        try:
            for process in workers:
                process.join()
        except KeyboardInterrupt:
            pass
        return 0
    try:

        async def fetch_many() -> list[tuple[bool, int]]:
            results: list[tuple[bool, int]] = []
            async with trio.open_nursery() as nursery:
                for _ in range(40):

                    async def one() -> None:
                        results.append(await fetch(args.port))

                    nursery.start_soon(one)
            return results

        results = trio.run(fetch_many)
    finally:
        for process in workers:  # only the processes this script started
            process.terminate()
            process.join(10)
    intact = sum(ok for ok, _ in results)
    pids = {pid for _, pid in results}
    print(f"{intact}/{len(results)} images intact, served by {len(pids)} different processes")
    return 0 if intact == len(results) and len(pids) >= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
