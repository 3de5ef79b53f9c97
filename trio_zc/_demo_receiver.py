"""The receiving side of ``python -m trio_zc demo``: a separate process that checks every image.

It listens on two loopback ports and prints them on one line, ``LAGGING
PROMPT``. Every connection carries images, each as :data:`HEADER` (the
image's length and SHA-256) followed by its bytes; when the sender ends
its side of the connection, the receiver answers :data:`ANSWER` (images
received, images intact, bytes received) and closes. Each connection gets
a thread: plain blocking sockets, so the receiver costs the same whatever
the sender does.

- The *lagging* port stands for a client across a network, which reads
  later than a loopback peer would: its connections have a small receive
  buffer and pause :data:`PAUSE` seconds after each image. While it lags,
  the sender's kernel still holds the last bytes of the image just sent;
  that is when rewriting the memory they came from changes what arrives.
- The *prompt* port reads as fast as it can, for timing the sender.

An image is intact when its bytes have the SHA-256 of its header. The
receiver keeps each image it found intact, so that the next time the same
image (the same digest) comes, comparing the bytes with the kept copy --
a ``memcmp``, fast enough not to slow down the timed runs, where SHA-256
would be the bottleneck -- tells the same.

It exits when its standard input closes (the parent went away).
"""

from __future__ import annotations

import hashlib
import socket
import struct
import sys
import threading
import time
from typing import Final

#: Per image: its length, and the SHA-256 of its bytes.
HEADER: Final = struct.Struct("!I32s")
#: At the end of a connection: images received, images intact, bytes received.
ANSWER: Final = struct.Struct("!QQQ")
#: The lagging port's receive buffer, and its pause after each image.
LAGGING_RCVBUF: Final = 64 << 10
PAUSE: Final = 0.002

_CHUNK: Final = 1 << 20

# digest -> the bytes found to have it (a dict is safe to share between threads).
_verified: dict[bytes, bytes] = {}


def _read_exactly(conn: socket.socket, view: memoryview) -> bool:
    """Fill *view*; False at a clean end of stream before its first byte."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:], min(len(view) - got, _CHUNK))
        if n == 0:
            if got == 0:
                return False
            raise ConnectionError(f"the sender stopped after {got} of {len(view)} bytes")
        got += n
    return True


def intact(body: bytearray, digest: bytes) -> bool:
    """Whether *body* has the SHA-256 *digest*."""
    known = _verified.get(digest)
    if known is not None:
        return body == known
    if hashlib.sha256(body).digest() != digest:
        return False
    _verified[digest] = bytes(body)
    return True


def serve(conn: socket.socket, pause: float) -> None:
    """Receive images on *conn* until the sender's end of stream, check them, answer."""
    header = bytearray(HEADER.size)
    # One buffer per image length, reused when it comes again: comparing a
    # whole bytearray with bytes is a memcmp, a memoryview slice is not.
    buffers: dict[int, bytearray] = {}
    images = good = nbytes = 0
    with conn:
        try:
            while _read_exactly(conn, memoryview(header)):
                length, digest = HEADER.unpack(header)
                body = buffers.get(length)
                if body is None:
                    body = buffers[length] = bytearray(length)
                if not _read_exactly(conn, memoryview(body)):
                    raise ConnectionError("the sender stopped between a header and its image")
                images += 1
                nbytes += length
                good += intact(body, digest)
                if pause:
                    time.sleep(pause)
            conn.sendall(ANSWER.pack(images, good, nbytes))
        except OSError:
            pass  # the sender went away; it learns nothing, and will say so


def _listen(rcvbuf: int | None) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf is not None:
        # Set before listening, so that accepted connections inherit it and
        # advertise a window that fits it from the start.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def _accept_forever(listener: socket.socket, pause: float) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn, pause), daemon=True).start()


def main() -> None:
    lagging, prompt = _listen(LAGGING_RCVBUF), _listen(None)
    print(lagging.getsockname()[1], prompt.getsockname()[1], flush=True)
    threading.Thread(target=_accept_forever, args=(lagging, PAUSE), daemon=True).start()
    threading.Thread(target=_accept_forever, args=(prompt, 0.0), daemon=True).start()
    sys.stdin.read()  # until the parent closes it, or dies


if __name__ == "__main__":
    main()
