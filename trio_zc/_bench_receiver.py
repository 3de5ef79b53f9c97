"""The receiving side of ``python -m trio_zc bench``: a separate process.

It listens on loopback, prints its port, and for each connection reads a
small header (image size, image count, and the SHA-256 of each of the
patterns the images cycle through), then every image, checking each one's
SHA-256, and answers with the number of images that were intact. Plain
blocking sockets and ``recv_into``: the receiver should cost the same
whatever the sender does.
"""

from __future__ import annotations

import hashlib
import socket
import struct


HEADER = struct.Struct("!QQI")  # image size, image count, number of patterns
CHUNK = 1 << 20


def _read_exactly(conn: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:], min(len(view) - got, CHUNK))
        if n == 0:
            return False
        got += n
    return True


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            head = bytearray(HEADER.size)
            if not _read_exactly(conn, memoryview(head)):
                continue
            size, count, npatterns = HEADER.unpack(head)
            digests = bytearray(32 * npatterns)
            _read_exactly(conn, memoryview(digests))
            image = bytearray(size)
            view = memoryview(image)
            intact = 0
            for i in range(count):
                if not _read_exactly(conn, view):
                    break
                k = i % npatterns
                intact += hashlib.sha256(view).digest() == digests[32 * k : 32 * k + 32]
            conn.sendall(struct.pack("!Q", intact))


def main() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(listener.getsockname()[1], flush=True)
        serve(listener)


if __name__ == "__main__":
    main()
