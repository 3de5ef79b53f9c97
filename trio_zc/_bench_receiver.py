"""The receiving side of ``python -m trio_zc bench``: a separate process.

It listens on loopback, prints its port, and serves one connection at a
time: it reads the header (see :mod:`trio_zc._bench_protocol`), regenerates
the images, receives every image and compares it byte for byte with the
one expected, noting when each one's last byte arrived, and answers with
the number intact and the timestamps. Plain blocking sockets and
``recv_into``, so that the receiver costs the same whatever the sender
does. It exits when its standard input closes (the parent went away).
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from ._bench_protocol import ANSWER, HEADER, READY, STAMP, patterns

CHUNK = 1 << 20


def _read_exactly(conn: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:], min(len(view) - got, CHUNK))
        if n == 0:
            return False
        got += n
    return True


_cache: dict[tuple[int, int, int], list[bytes]] = {}


def _expected(size: int, npatterns: int, seed: int) -> list[bytes]:
    # Cases repeat with the same images: make them once (64 MiB ones take a while).
    key = (size, npatterns, seed)
    if key not in _cache:
        _cache.clear()
        _cache[key] = patterns(size, npatterns, seed)
    return _cache[key]


def serve_one(conn: socket.socket) -> None:
    """Receive one case's images on *conn*, check them, answer."""
    head = bytearray(HEADER.size)
    if not _read_exactly(conn, memoryview(head)):
        return
    size, count, npatterns, seed = HEADER.unpack(head)
    expected = _expected(size, npatterns, seed)
    conn.sendall(READY)
    image = bytearray(size)
    view = memoryview(image)
    stamps = bytearray(STAMP.size * count)
    intact = received = 0
    for i in range(count):
        if not _read_exactly(conn, view):
            break
        STAMP.pack_into(stamps, STAMP.size * i, time.monotonic_ns())
        received += 1
        intact += image == expected[i % npatterns]
    conn.sendall(ANSWER.pack(intact, received) + bytes(stamps))


def main() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(listener.getsockname()[1], flush=True)
        # Stop when the parent closes our stdin (or dies): never linger.
        def watch_parent() -> None:
            sys.stdin.read()
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()

        threading.Thread(target=watch_parent, daemon=True).start()
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    serve_one(conn)
                except OSError:
                    continue  # the sender went away mid-case; the next case starts afresh


if __name__ == "__main__":
    main()
