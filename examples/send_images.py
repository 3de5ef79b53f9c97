"""Send a few NumPy images over loopback TCP with trio_zc, and check them on arrival.

Run it with ``python examples/send_images.py`` (needs NumPy:
``pip install 'trio_zc[images]'``). It opens a pool, starts a receiving
server on 127.0.0.1, connects to it, draws each image straight into pool
memory, sends it without copying and prints what the stream did.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

import trio_zc

# Each image goes as a small header, then its pixels. The header says how
# many bytes follow, the shape, and the SHA-256 the receiver must find.
HEADER = struct.Struct("!QII32s")  # nbytes, height, width, SHA-256
SIZES = [(480, 640), (720, 1280), (1080, 1920)]
IMAGES = 6


def draw(pixels: npt.NDArray[Any], index: int) -> None:
    """Draw frame *index* in place: colour gradients and a disc that moves."""
    height, width, _ = pixels.shape
    y, x = np.ogrid[:height, :width]
    pixels[..., 0] = x * 255 // (width - 1)
    pixels[..., 1] = y * 255 // (height - 1)
    pixels[..., 2] = index * 40 % 256
    cx, cy, r = (index + 1) * width // (IMAGES + 1), height // 2, height // 6
    pixels[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = 255


#: The largest image the receiver accepts: a header is the sender's word, and
#: a server must not let a client make it allocate whatever the client says.
MAX_IMAGE_BYTES = 1080 * 1920 * 3


class SenderLeft(Exception):
    """The sender went away in the middle of a message."""


async def receive_exactly(stream: trio.abc.ReceiveStream, nbytes: int) -> bytearray | None:
    """Read *nbytes* bytes; None if the stream ends cleanly first (no byte of them came).

    Raises :class:`SenderLeft` if it ends part-way: that is not the clean end
    of a sender that is done.
    """
    data = bytearray()
    while len(data) < nbytes:
        # Ask for no more than is missing, so nothing of the next message is
        # read ahead; up to 1 MiB at a time keeps the number of calls low.
        chunk = await stream.receive_some(min(nbytes - len(data), 1 << 20))
        if not chunk:
            if data:
                raise SenderLeft(f"the sender stopped after {len(data)} of {nbytes} bytes")
            return None
        data += chunk
    return data


async def receiver(stream: trio_zc.ZeroCopyStream, verified: list[bool], done: trio.Event) -> None:
    """The server's side: read images until the sender closes, checking each one.

    A sender that goes away part-way, or resets the connection, ends this
    connection only (serve_tcp sees to the reset); one whose header makes no
    sense is disconnected before anything is allocated for it.
    """
    try:
        while (header := await receive_exactly(stream, HEADER.size)) is not None:
            nbytes, height, width, digest = HEADER.unpack(header)
            if not 0 < nbytes <= MAX_IMAGE_BYTES or nbytes != height * width * 3:
                print(f"  a header that makes no sense ({nbytes} bytes, {width}x{height}): disconnecting")
                return
            body = await receive_exactly(stream, nbytes)
            if body is None:
                print("  the sender stopped between a header and its image")
                return
            ok = hashlib.sha256(body).digest() == digest
            image = np.frombuffer(body, dtype=np.uint8).reshape(height, width, 3)
            colour = image.mean(axis=(0, 1)).round(1)
            print(f"  received {width}x{height} image, mean colour {colour}, ok={ok}")
            verified.append(ok)
    except SenderLeft as exc:
        print(f"  {exc}")
        return
    # A clean end of stream after the last image: the sender is done.
    done.set()


async def main() -> int:
    # The pool is the memory that images are drawn into: 32 MiB holds a few
    # 1080p frames. Its block owns every lease; leaving it waits until the
    # kernel is done with all the memory it was given.
    async with trio_zc.open_pool(max_bytes=32 << 20) as pool:
        verified: list[bool] = []
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            # A small server on 127.0.0.1; nursery.start() returns once it
            # listens, with its listeners, so we learn the port it got.
            # serve_tcp closes each connection's stream when its handler returns.
            handler = partial(receiver, verified=verified, done=done)
            listeners = await nursery.start(
                partial(trio_zc.serve_tcp, handler, 0, pool=pool, host="127.0.0.1")
            )
            port = listeners[0].listener.socket.getsockname()[1]

            stream = await trio_zc.open_tcp_stream("127.0.0.1", port, pool=pool)
            sent_bytes = 0
            async with stream:
                for index in range(IMAGES):
                    height, width = SIZES[index % len(SIZES)]
                    # A scoped lease: whatever happens in the block (even an
                    # exception or a cancellation), the lease is released at
                    # its end. Released memory is not reused while the kernel
                    # may still read it: it returns to the pool only when the
                    # kernel reports the send complete.
                    async with pool.lease(height * width * 3) as lease:
                        # Draw straight into pool memory: no copy of the image.
                        pixels = lease.ndarray((height, width, 3))
                        draw(pixels, index)
                        # seal() makes the memory read-only, so no view that
                        # could still write may survive it (seal() refuses
                        # with LiveViewsError otherwise).
                        del pixels
                        sealed = lease.seal()
                        digest = hashlib.sha256(sealed.view()).digest()
                        # Small things go with send_all(), which copies.
                        await stream.send_all(HEADER.pack(sealed.nbytes, height, width, digest))
                        # send_lease() returns once the kernel accepted every
                        # byte; the kernel may go on reading the memory after
                        # that, and the lease stays referenced until it is done.
                        await stream.send_lease(sealed)
                        sent_bytes += sealed.nbytes
                    # Here the lease is released: the next image may get the
                    # same memory, but only after the kernel let go of it.
            # Closing the stream waits for the kernel's last completions, so
            # the statistics below are final.
            stats = stream.statistics()
            await done.wait()
            nursery.cancel_scope.cancel()
        pool_stats = pool.statistics()

    sent = stats.sent
    print(f"sent {IMAGES} images ({sent_bytes / 1e6:.1f} MB) with kernel {stats.kernel!r}")
    print(f"receiver verified {sum(verified)}/{IMAGES} images (SHA-256)")
    # What went which way. send_all() copies, so the headers are always in
    # bytes_copied; images are there too when the stream copied them instead
    # of sending them zero-copy ("auto" does so for a peer on loopback, where
    # the kernel would copy them anyway): the fallbacks say why.
    headers = IMAGES * HEADER.size
    print(
        f"zero-copy: {sent.zerocopy_calls} calls, {sent.completions} completions,"
        f" {sent.bytes_zerocopy + sent.bytes_kernel_copied} bytes of images sent without a copy at"
        f" the send call ({sent.bytes_kernel_copied} of them copied by the kernel at delivery, as it"
        " does for any peer on loopback)"
    )
    print(
        f"copied at the send call: {sent.bytes_copied} bytes, the {IMAGES} headers ({headers} bytes:"
        f" send_all() copies) and {sent.bytes_copied - headers} bytes of images"
        + (" (the stream copied them instead of zero-copy: see the fallbacks)" if stats.fallbacks else "")
    )
    if stats.fallbacks:
        print(f"fallbacks: {'; '.join(reason for reason, _ in stats.fallbacks)}")
    print(
        f"pool: {pool_stats.free_bytes} of {pool_stats.max_bytes} bytes free,"
        f" {pool_stats.sends_in_flight} sends in flight"
    )
    return 0 if len(verified) == IMAGES and all(verified) else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
