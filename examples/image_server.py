"""An HTTP/1.1 image server: h11 speaks the protocol, trio_zc sends the images.

Run it with ``python examples/image_server.py --port 8080`` (serves on
127.0.0.1 until Ctrl-C; needs h11, NumPy and Pillow; ``--port 0`` picks a
free port), then open http://127.0.0.1:8080/.
``python examples/image_server.py --self-test`` starts the server on a free
loopback port, fetches pages and images from it with the standard library's
HTTP clients, checks them and exits.

Routes: ``GET /`` (a small HTML page), ``GET /image/<n>.jpg`` (a generated
image, encoded into a lease for each request), anything else 404.

h11 does no I/O: it turns events into bytes and bytes into events. That lets
the server write the response head with ``send_all`` (a small copy) and the
body with ``send_lease`` (no copy), while h11 still checks the framing: see
:func:`send_image`.

Clients come and go as they like: one that resets, closes mid-response or
stops reading ends its own connection only. ``trio_zc.serve_tcp`` does that
for the handler (it ends the connection whose own stream broke, and closes
the stream when the handler returns); the handler's part is to bound how
long a client may keep it waiting (``IDLE_TIMEOUT`` for reading, the pool's
``send_timeout`` for writing) and to answer what it cannot parse with 400.
"""

from __future__ import annotations

import argparse
import http.client
import io
import re
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from functools import partial
from typing import Any, cast

import h11
import numpy as np
import trio
from PIL import Image

import trio_zc
from trio_zc import images

IMAGES = 8
MAX_RECEIVE = 64 * 1024
#: How long a keep-alive connection may sit idle (or a request take to
#: arrive) before the server closes it; bounds what a slow client can hold.
IDLE_TIMEOUT = 20.0
#: The longest one send may take: a client that stops reading is cut off
#: after this (its connection reset, the memory it held back in the pool).
SEND_TIMEOUT = 10.0
IMAGE_PATH = re.compile(rb"/image/(\d+)\.jpg")


def image_size(n: int) -> tuple[int, int]:
    """(width, height) of image *n*: each image has its own size, so a client can tell them apart."""
    return 320 + 160 * (n % 4), 240 + 90 * (n % 3)


def render(n: int) -> Image.Image:
    """Image *n*: colour gradients drawn with NumPy, handed to Pillow."""
    width, height = image_size(n)
    y, x = np.ogrid[:height, :width]
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = x * 255 // (width - 1)
    pixels[..., 1] = y * 255 // (height - 1)
    pixels[..., 2] = n * 255 // (IMAGES - 1)
    return Image.fromarray(pixels, "RGB")


def index_page() -> bytes:
    links = "\n".join(
        f'<li><a href="/image/{n}.jpg">image {n}</a> ({"x".join(map(str, image_size(n)))})</li>'
        for n in range(IMAGES)
    )
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>trio_zc images</title></head>\n"
        f"<body><h1>trio_zc image server</h1>\n<ul>\n{links}\n</ul></body></html>\n"
    ).encode()


class LeaseBody:
    """Stands in for a lease's bytes in h11's ``Data`` event.

    h11 only needs ``len()`` of a body part to keep its Content-Length
    accounting. With ``send_with_data_passthrough`` it hands this very object
    back in the list of things to write, untouched, so the server can send the
    lease there instead: the image bytes never pass through h11 (or Python).
    """

    __slots__ = ("sealed",)

    def __init__(self, sealed: trio_zc.SealedLease) -> None:
        self.sealed = sealed

    def __len__(self) -> int:
        return self.sealed.nbytes


@dataclass
class ServerStats:
    connections: int = 0
    open_connections: int = 0
    requests: int = 0
    images: int = 0
    image_bytes: int = 0
    bad_requests: int = 0


async def next_event(conn: h11.Connection, stream: trio_zc.ZeroCopyStream) -> Any:
    """The next h11 event, reading from the stream as long as h11 needs more data."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        # receive_some() returns b"" at end of stream; h11 turns that into
        # ConnectionClosed (or an error if it came in mid-request).
        conn.receive_data(await stream.receive_some(MAX_RECEIVE))


def reason(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode()


async def send_simple(
    conn: h11.Connection, stream: trio_zc.ZeroCopyStream, status: int, content_type: str, body: bytes
) -> None:
    """A small response, all bytes: h11 frames it, send_all copies it (cheap at this size)."""
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
    data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


async def send_image(
    conn: h11.Connection, stream: trio_zc.ZeroCopyStream, sealed: trio_zc.SealedLease
) -> None:
    """A response whose body is a sealed lease, sent without copying it.

    An explicit Content-Length makes h11 frame the body by length (not chunked),
    so ``send_with_data_passthrough`` returns exactly the object we gave it --
    no chunk headers around it. h11 still counts the bytes: a body shorter or
    longer than the header says raises LocalProtocolError before anything
    wrong is written. The general loop below would also cope with framing
    bytes around the body (chunked): those are bytes, the body is ours.
    """
    headers = [("Content-Type", "image/jpeg"), ("Content-Length", str(sealed.nbytes))]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
    body = LeaseBody(sealed)
    parts: list[object] = list(conn.send_with_data_passthrough(h11.Data(data=cast(bytes, body))) or ())
    for part in parts:
        if part is body:
            await stream.send_lease(sealed)
        else:
            await stream.send_all(cast(bytes, part))
    # With Content-Length framing the end of the message is b"" (nothing to
    # write), but h11 must see it to move on to the next request.
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def respond(
    conn: h11.Connection, stream: trio_zc.ZeroCopyStream, pool: trio_zc.BufferPool,
    request: h11.Request, stats: ServerStats,
) -> None:
    stats.requests += 1
    if request.method not in (b"GET", b"HEAD"):
        await send_simple(conn, stream, 405, "text/plain", b"only GET and HEAD here\n")
        return
    if request.target == b"/":
        await send_simple(conn, stream, 200, "text/html; charset=utf-8", index_page())
        return
    match = IMAGE_PATH.fullmatch(request.target)
    if match is None or int(match[1]) >= IMAGES:
        await send_simple(conn, stream, 404, "text/plain", b"no such page\n")
        return
    # Encode for this request straight into pool memory: the lease holds
    # exactly the JPEG's bytes. (A real server might keep popular images
    # sealed and send one lease to many clients, as examples/broadcast.py does.)
    sealed = await images.encode(pool, render(int(match[1])), "JPEG", quality=85)
    try:
        if request.method == b"HEAD":
            # h11 knows a HEAD response has no body; send the head only.
            headers = [("Content-Type", "image/jpeg"), ("Content-Length", str(sealed.nbytes))]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        else:
            await send_image(conn, stream, sealed)
            stats.images += 1
            stats.image_bytes += sealed.nbytes
    finally:
        # Released as soon as send_lease() returned. That is safe even though
        # the kernel may still be reading the memory: the pool reuses it only
        # once the kernel reports the send complete.
        sealed.release()


async def handle_connection(
    stream: trio_zc.ZeroCopyStream, pool: trio_zc.BufferPool, stats: ServerStats
) -> None:
    """One connection: requests one after another, for as long as both sides keep it alive.

    No ``try``/``except`` for a client that goes away: its stream raises
    BrokenResourceError, and ``trio_zc.serve_tcp`` ends this connection (and
    only this one) when it does. serve_tcp also closes the stream when this
    returns, waiting (boundedly) for the sends still in flight, so their
    memory is never reused early.
    """
    stats.connections += 1
    stats.open_connections += 1
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            try:
                event: Any = None
                with trio.move_on_after(IDLE_TIMEOUT):
                    event = await next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    # Idle too long (event still None) or the client
                    # closed the connection (ConnectionClosed).
                    return
                await respond(conn, stream, pool, event, stats)
                # Read the rest of the request (a GET has no body, but h11
                # wants EndOfMessage before it starts a new cycle), within
                # the same bound: a client trickling a body holds nothing long.
                with trio.move_on_after(IDLE_TIMEOUT) as body_scope:
                    while type(event) is not h11.EndOfMessage:
                        event = await next_event(conn, stream)
                        if type(event) is h11.ConnectionClosed:
                            return
                if body_scope.cancelled_caught:
                    return
            except h11.RemoteProtocolError as exc:
                # A malformed request: answer 400 if a response can still be
                # started, then close (h11 is in ERROR state now).
                stats.bad_requests += 1
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await send_simple(conn, stream, status, "text/plain", b"bad request\n")
                return
            # Keep-alive: both sides DONE means h11 may start over on the
            # same connection. MUST_CLOSE (HTTP/1.0 client, "Connection:
            # close") means the response was the last one.
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return
    finally:
        stats.open_connections -= 1


async def serve(port: int, send_timeout: float = SEND_TIMEOUT) -> None:
    async with trio_zc.open_pool(max_bytes=16 << 20, send_timeout=send_timeout) as pool:
        stats = ServerStats()
        # Ctrl-C as a signal we wait for, rather than a KeyboardInterrupt
        # raised in whichever task runs: the server then stops by
        # cancellation, and leaving open_pool waits for the kernel as usual.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio_zc.serve_tcp, partial(handle_connection, pool=pool, stats=stats),
                            port, pool=pool, host="127.0.0.1")
                )
                bound = listeners[0].listener.socket.getsockname()[1]
                print(f"serving on http://127.0.0.1:{bound}/ (Ctrl-C to stop)", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    lost = sum(listener.statistics().connection_errors for listener in listeners)
    print(
        f"stopped after {stats.requests} requests over {stats.connections} connections"
        f" ({stats.images} images, {stats.bad_requests} bad requests,"
        f" {lost} connections ended by their client)"
    )


# -- self-test ------------------------------------------------------------------
# The clients are the standard library's (urllib, http.client): a different
# HTTP implementation than the server's, run in a worker thread because they
# block. Every socket has a timeout, so a broken server fails the test, not
# hangs it.

def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


def check_jpeg(n: int, content_type: str, body: bytes) -> None:
    assert content_type == "image/jpeg", content_type
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "JPEG", image.format
        assert image.size == image_size(n), (image.size, image_size(n))
        image.load()  # decodes every byte: a truncated body fails here


def client_checks(port: int) -> list[str]:
    """Blocking HTTP checks against the server; returns lines for the summary."""
    base = f"http://127.0.0.1:{port}"
    lines = []

    status, content_type, body = fetch(base + "/")
    assert status == 200 and content_type.startswith("text/html"), (status, content_type)
    assert body.count(b"<li>") == IMAGES
    lines.append(f"GET / -> {status} ({len(body)} bytes of HTML)")

    # One connection per request (urllib sends "Connection: close").
    for n in range(4):
        status, content_type, body = fetch(f"{base}/image/{n}.jpg")
        assert status == 200, status
        check_jpeg(n, content_type, body)
        lines.append(f"GET /image/{n}.jpg -> {status}, {len(body)} bytes, {image_size(n)} JPEG ok")

    # Keep-alive: http.client reuses its socket while the server keeps the
    # connection open; if the server closed it, conn.sock would be replaced.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        results = []
        first_socket = None
        for target in ("/image/4.jpg", "/image/5.jpg", "/image/99.jpg", "/nothing-here"):
            conn.request("GET", target)
            with conn.getresponse() as response:
                body = response.read()
                assert not response.will_close, f"{target}: the server did not keep the connection"
                if first_socket is None:
                    first_socket = conn.sock
                assert conn.sock is first_socket, "the connection was reopened"
                if target.startswith("/image/") and response.status == 200:
                    check_jpeg(int(target[7:-4]), response.headers["Content-Type"], body)
                results.append(f"{target} {response.status}")
        assert results == ["/image/4.jpg 200", "/image/5.jpg 200", "/image/99.jpg 404",
                           "/nothing-here 404"], results
        lines.append(f"keep-alive: {len(results)} requests on one connection: {', '.join(results)}")
    finally:
        conn.close()
    return lines


async def self_test() -> int:
    async with trio_zc.open_pool(max_bytes=16 << 20, send_timeout=SEND_TIMEOUT) as pool:
        stats = ServerStats()
        # Bounded: the whole test must finish in well under a minute.
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio_zc.serve_tcp, partial(handle_connection, pool=pool, stats=stats),
                            0, pool=pool, host="127.0.0.1")
                )
                port = listeners[0].listener.socket.getsockname()[1]
                lines = await trio.to_thread.run_sync(client_checks, port)
                # Let the handlers see the clients' EOF and close their
                # streams normally before stopping the server.
                with trio.move_on_after(5):
                    while stats.open_connections:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        pool_stats = pool.statistics()

    for line in lines:
        print(f"  {line}")
    sent = pool_stats.sent
    print(
        f"served {stats.requests} requests over {stats.connections} connections;"
        f" {stats.images} images ({stats.image_bytes} bytes) sent from leases"
        f" with kernel {pool_stats.kernel!r}"
    )
    print(
        f"zero-copy: {sent.zerocopy_calls} calls, {sent.bytes_zerocopy} bytes;"
        f" copied: {sent.bytes_copied} bytes (headers, HTML, and on loopback the images too)"
    )
    print(
        f"pool: {pool_stats.free_bytes} of {pool_stats.max_bytes} bytes free,"
        f" {pool_stats.sends_in_flight} sends in flight"
    )
    print("self-test passed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    parser.add_argument("--self-test", action="store_true", help="serve on a free port, check, exit")
    parser.add_argument("--send-timeout", type=float, default=SEND_TIMEOUT,
                        help=f"cut off a client that stops reading after this many seconds (default {SEND_TIMEOUT})")
    args = parser.parse_args()
    if args.self_test:
        return trio.run(self_test)
    trio.run(serve, args.port, args.send_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
