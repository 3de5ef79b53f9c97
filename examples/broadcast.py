"""One sealed image, sent to many clients at once, from one piece of pool memory.

Run it with ``python examples/broadcast.py`` (needs NumPy and Pillow). It
encodes one JPEG into a lease, connects 50 clients over 127.0.0.1, sends the
same ``SealedLease`` to all of them concurrently, and has every client check
the SHA-256 of what it received. Then it shows the lease's memory going back
to the pool once the kernel is done with it.

Options: ``--clients N`` (default 50), ``--kernel`` (default
``msg_zerocopy``, so that loopback, too, shows sends the kernel completes
after ``send_lease`` returned; ``auto`` would simply copy to loopback peers),
``--leave N`` (default 0): N of the clients leave part-way through the image
-- in turn closing, resetting, or just no longer reading -- and the others
still get it whole: a client that leaves ends its own send only.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import struct
import sys

import numpy as np
import trio
from PIL import Image

import trio_zc
from trio_zc import images

# Each client gets a header (body length and the SHA-256 it must find), then the body.
HEADER = struct.Struct("!Q32s")
WIDTH, HEIGHT = 1280, 720
#: A client that stops reading for this long is cut off (its connection reset,
#: the memory it held back in the pool) rather than holding the broadcast up.
SEND_TIMEOUT = 2.0
#: How the clients given by --leave go away, in turn.
LEAVING = ("close", "reset", "stop reading")


def render() -> Image.Image:
    """A gradient with seeded noise: a JPEG of a few hundred KB, the same every run."""
    y, x = np.ogrid[:HEIGHT, :WIDTH]
    pixels = np.empty((HEIGHT, WIDTH, 3), dtype=np.int32)
    pixels[..., 0] = x * 255 // (WIDTH - 1)
    pixels[..., 1] = y * 255 // (HEIGHT - 1)
    pixels[..., 2] = 128
    noise = np.random.default_rng(7).integers(-40, 41, size=pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


async def receive_exactly(stream: trio.abc.ReceiveStream, nbytes: int) -> bytes:
    data = bytearray()
    while len(data) < nbytes:
        chunk = await stream.receive_some(min(nbytes - len(data), 1 << 20))
        if not chunk:
            raise RuntimeError(f"the sender stopped after {len(data)} of {nbytes} bytes")
        data += chunk
    return bytes(data)


async def client(port: int, results: list[bool]) -> None:
    """A plain Trio client: read one header and one image, check its SHA-256."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        nbytes, digest = HEADER.unpack(await receive_exactly(stream, HEADER.size))
        body = await receive_exactly(stream, nbytes)
        results.append(hashlib.sha256(body).digest() == digest)


async def leaving_client(port: int, how: str, done: trio.Event) -> None:
    """A client that goes away part-way through the image: closes, resets, or stops reading."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        # A small receive buffer, so that it leaves before the image is all sent.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        if how == "stop reading":
            await done.wait()  # connected, never reads; gone when the broadcast is over
            return
        await sock.recv(1000)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def send_to(stream: trio_zc.ZeroCopyStream, header: bytes, sealed: trio_zc.SealedLease) -> bool:
    """Send the header and the image to one client; False if that client went away.

    A client that closes or resets its connection, or stops reading for
    longer than send_timeout, makes only its own send raise
    BrokenResourceError: the other sends go on.
    """
    try:
        await stream.send_all(header)  # small: copied
        await stream.send_lease(sealed)
    except trio.BrokenResourceError:
        return False
    return True


def describe(stats: trio_zc.PoolStatistics) -> str:
    return (
        f"{stats.free_bytes} of {stats.max_bytes} bytes free, {stats.sealed_leases} sealed,"
        f" {stats.draining_leases} draining, {stats.sends_in_flight} sends in flight"
    )


async def main(clients: int, kernel: str, leave: int = 0) -> int:
    results: list[bool] = []
    delivered: list[bool] = []
    broadcast_done = trio.Event()
    async with trio_zc.open_pool(max_bytes=8 << 20, kernel=kernel, send_timeout=SEND_TIMEOUT) as pool:
        # Everything below is bounded: a hang fails with TooSlowError instead.
        with trio.fail_after(60):
            listener = (await trio_zc.open_tcp_listeners(0, pool=pool, host="127.0.0.1"))[0]
            port = listener.listener.socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                for index in range(clients):
                    if index < leave:
                        nursery.start_soon(leaving_client, port, LEAVING[index % len(LEAVING)], broadcast_done)
                    else:
                        nursery.start_soon(client, port, results)
                # The broadcaster's side of every connection is a ZeroCopyStream on the pool.
                streams: list[trio_zc.ZeroCopyStream] = []
                async with listener:
                    while len(streams) < clients:
                        streams.append(await listener.accept())

                # One encode, one lease, however many clients: the JPEG lives
                # once in pool memory.
                sealed = await images.encode(pool, render(), "JPEG", quality=90)
                digest = hashlib.sha256(sealed.view()).digest()
                header = HEADER.pack(sealed.nbytes, digest)

                # The same SealedLease to every stream at once. That is safe
                # because a sealed lease is read-only (its pages are
                # write-protected), so any number of sends may read it at the
                # same time, and nobody can change the bytes under any of them.
                # The lease counts its sends in flight: each send holds the
                # memory until the kernel reports that send complete.
                async def deliver(stream: trio_zc.ZeroCopyStream) -> None:
                    delivered.append(await send_to(stream, header, sealed))

                async with trio.open_nursery() as senders:
                    for stream in streams:
                        senders.start_soon(deliver, stream)
                broadcast_done.set()
                # Every send_lease() returned: the kernel accepted every byte,
                # but with zero-copy it may still be reading the memory.
                in_flight = sealed.sends_in_flight
                nbytes = sealed.nbytes
                before_release = pool.statistics()
                # Released once, after all sends returned. The handle is stale
                # from here on; the memory returns to the pool only when the
                # kernel has reported every send of it complete -- maybe now,
                # maybe a little later, never earlier.
                sealed.release()
                at_release = pool.statistics()
                # Closing a stream waits (boundedly) for its last completions,
                # so after this the kernel is done with the lease's memory.
                async with trio.open_nursery() as closers:
                    for stream in streams:
                        closers.start_soon(stream.aclose)
                sent = [stream.statistics().sent for stream in streams]
        after_close = pool.statistics()

    intact = sum(results)
    stayed = clients - leave
    print(f"broadcast one {WIDTH}x{HEIGHT} JPEG ({nbytes} bytes) to {clients} clients"
          f" with kernel {after_close.kernel!r}")
    print(f"{intact}/{stayed} clients received intact copies (SHA-256)")
    if leave:
        print(f"{leave} clients left part-way ({', '.join(LEAVING)}, in turn):"
              f" {delivered.count(False)} sends ended early, each on its own connection only")
    print(
        f"zero-copy: {sum(s.zerocopy_calls for s in sent)} calls,"
        f" {sum(s.completions for s in sent)} completions,"
        f" {sum(s.bytes_zerocopy + s.bytes_kernel_copied for s in sent)} bytes"
        f" ({sum(s.bytes_kernel_copied for s in sent)} copied by the kernel after all, as on any loopback);"
        f" {sum(s.bytes_copied for s in sent)} bytes copied"
    )
    if after_close.kernel_note:
        print(f"kernel note: {after_close.kernel_note}")
    why = (
        "the kernel could still read the memory after send_lease() returned" if in_flight
        else "this time the kernel had reported them all complete already"
    )
    print(f"when all sends returned: {in_flight} sends of the lease still in flight ({why})")
    print(f"pool while the lease was held: {describe(before_release)}")
    print(f"pool right after release: {describe(at_release)}")
    print(f"pool after the streams closed: {describe(after_close)}")
    ok = intact == stayed and len(results) == stayed
    ok = ok and after_close.free_bytes == after_close.max_bytes and after_close.sends_in_flight == 0
    print("all memory back in the pool" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Send one sealed image to many loopback clients at once.")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kernel", default="msg_zerocopy",
                        choices=["auto", "msg_zerocopy", "io_uring", "sendfile", "copy"])
    parser.add_argument("--leave", type=int, default=0, help="clients that leave part-way")
    args = parser.parse_args()
    if not 0 <= args.leave <= args.clients:
        parser.error("--leave must be between 0 and --clients")
    sys.exit(trio.run(main, args.clients, args.kernel, args.leave))
