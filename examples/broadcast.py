"""One sealed image, sent to many clients at once, from one piece of pool memory.

Run it with ``python examples/broadcast.py`` (needs NumPy and Pillow). It
encodes one JPEG into a lease, connects 50 clients over 127.0.0.1, sends the
same ``SealedLease`` to all of them concurrently, and has every client check
the SHA-256 of what it received. Then it shows the lease's memory going back
to the pool once the kernel is done with it.

Options: ``--clients N`` (default 50), ``--kernel`` (default
``msg_zerocopy``, so that loopback, too, shows sends the kernel completes
after ``send_lease`` returned; ``auto`` would simply copy to loopback peers).
"""

from __future__ import annotations

import argparse
import hashlib
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


def describe(stats: trio_zc.PoolStatistics) -> str:
    return (
        f"{stats.free_bytes} of {stats.max_bytes} bytes free, {stats.sealed_leases} sealed,"
        f" {stats.draining_leases} draining, {stats.sends_in_flight} sends in flight"
    )


async def main(clients: int, kernel: str) -> int:
    results: list[bool] = []
    async with trio_zc.open_pool(max_bytes=8 << 20, kernel=kernel) as pool:
        # Everything below is bounded: a hang fails with TooSlowError instead.
        with trio.fail_after(60):
            listener = (await trio_zc.open_tcp_listeners(0, pool=pool, host="127.0.0.1"))[0]
            port = listener.listener.socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
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
                for stream in streams:
                    await stream.send_all(header)  # small: copied

                # The same SealedLease to every stream at once. That is safe
                # because a sealed lease is read-only (its pages are
                # write-protected), so any number of sends may read it at the
                # same time, and nobody can change the bytes under any of them.
                # The lease counts its sends in flight: each send holds the
                # memory until the kernel reports that send complete.
                async with trio.open_nursery() as senders:
                    for stream in streams:
                        senders.start_soon(stream.send_lease, sealed)
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
    print(f"broadcast one {WIDTH}x{HEIGHT} JPEG ({nbytes} bytes) to {clients} clients"
          f" with kernel {after_close.kernel!r}")
    print(f"{intact}/{clients} clients received intact copies (SHA-256)")
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
    ok = intact == clients and len(results) == clients
    ok = ok and after_close.free_bytes == after_close.max_bytes and after_close.sends_in_flight == 0
    print("all memory back in the pool" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Send one sealed image to many loopback clients at once.")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kernel", default="msg_zerocopy",
                        choices=["auto", "msg_zerocopy", "io_uring", "sendfile", "copy"])
    args = parser.parse_args()
    sys.exit(trio.run(main, args.clients, args.kernel))
