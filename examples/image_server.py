"""An HTTP/1.1 image server: trio_zc.http speaks the protocol, leases carry the images.

Run it with ``python examples/image_server.py --port 8080`` (serves on
127.0.0.1 until Ctrl-C; needs h11, NumPy and Pillow; ``--port 0`` picks a
free port), then open http://127.0.0.1:8080/.
``python examples/image_server.py --self-test`` starts the server on a free
loopback port, fetches pages and images from it with the standard library's
HTTP clients, checks them and exits.

Routes: ``GET /`` (a small HTML page), ``GET /image/<n>.jpg`` (a generated
image, encoded into a lease the first time it is asked for and kept sealed
in a :class:`trio_zc.LeaseCache`: every later client gets the same lease,
sent without a copy), anything else 404. :mod:`trio_zc.http` does the rest:
keep-alive, HEAD, ranges, ETag and 304, 405 for other methods, 400 for
what h11 rejects, timeouts for idle and slow clients, and clients that
leave at any point.
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
from functools import partial

import numpy as np
import trio
from PIL import Image

import trio_zc
import trio_zc.http
from trio_zc import images

IMAGES = 8
#: The longest one send may take: a client that stops reading is cut off
#: after this (its connection reset, the memory it held back in the pool).
SEND_TIMEOUT = 10.0
IMAGE_PATH = re.compile(r"/image/(\d+)\.jpg")


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


def make_handler(pool: trio_zc.BufferPool, cache: trio_zc.LeaseCache[int]) -> trio_zc.http.Handler:
    async def handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
        if request.path == "/":
            return trio_zc.http.Response(index_page(), content_type="text/html; charset=utf-8")
        match = IMAGE_PATH.fullmatch(request.path)
        if match is None or int(match[1]) >= IMAGES:
            return trio_zc.http.Response(b"no such page\n", status=404, content_type="text/plain")
        n = int(match[1])

        async def encode() -> trio_zc.SealedLease:
            return await images.encode(pool, render(n), "JPEG", quality=85)

        # Encoded straight into pool memory the first time, then kept sealed;
        # the response holds the cached lease until it is sent.
        held = await cache.get(n, encode)
        return trio_zc.http.Response(
            held, content_type="image/jpeg", etag=f"image-{n}-q85", headers={"Cache-Control": "max-age=60"}
        )

    return handler


async def serve(port: int, send_timeout: float = SEND_TIMEOUT) -> None:
    async with trio_zc.open_pool(max_bytes=16 << 20, send_timeout=send_timeout) as pool:
        with trio_zc.LeaseCache[int](pool, max_bytes=4 << 20) as cache:
            server = trio_zc.http.HTTPServer(make_handler(pool, cache))
            # Ctrl-C as a signal we wait for, rather than a KeyboardInterrupt
            # raised in whichever task runs: the server then stops by
            # cancellation, and leaving open_pool waits for the kernel as usual.
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(
                        partial(trio_zc.http.serve, pool, server, port=port, host="127.0.0.1")
                    )
                    bound = listeners[0].listener.socket.getsockname()[1]
                    print(f"serving on http://127.0.0.1:{bound}/ (Ctrl-C to stop)", flush=True)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
    stats = server.statistics()
    lost = sum(listener.statistics().connection_errors for listener in listeners)
    print(
        f"stopped after {stats.requests} requests over {stats.connections} connections"
        f" ({stats.bad_requests} bad requests, {stats.idle_timeouts + stats.header_timeouts} timed out,"
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
        whole = b""
        for target, headers in [
            ("/image/4.jpg", {}),
            ("/image/4.jpg", {"Range": "bytes=100-199"}),
            ("/image/4.jpg", {"If-None-Match": '"image-4-q85"'}),
            ("/image/5.jpg", {}),
            ("/image/99.jpg", {}),
            ("/nothing-here", {}),
        ]:
            conn.request("GET", target, headers=headers)
            with conn.getresponse() as response:
                body = response.read()
                assert not response.will_close, f"{target}: the server did not keep the connection"
                if first_socket is None:
                    first_socket = conn.sock
                assert conn.sock is first_socket, "the connection was reopened"
                if response.status == 200 and target.startswith("/image/"):
                    check_jpeg(int(target[7:-4]), response.headers["Content-Type"], body)
                    whole = whole or body
                elif response.status == 206:
                    assert body == whole[100:200], "the range is not the image's bytes 100-199"
                results.append(f"{target} {response.status}")
        assert results == ["/image/4.jpg 200", "/image/4.jpg 206", "/image/4.jpg 304", "/image/5.jpg 200",
                           "/image/99.jpg 404", "/nothing-here 404"], results
        lines.append(f"keep-alive: {len(results)} requests on one connection: {', '.join(results)}")
    finally:
        conn.close()
    return lines


async def self_test() -> int:
    async with trio_zc.open_pool(max_bytes=16 << 20, send_timeout=SEND_TIMEOUT) as pool:
        with trio_zc.LeaseCache[int](pool, max_bytes=4 << 20) as cache:
            server = trio_zc.http.HTTPServer(make_handler(pool, cache))
            # Bounded: the whole test must finish in well under a minute.
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(
                        partial(trio_zc.http.serve, pool, server, port=0, host="127.0.0.1")
                    )
                    port = listeners[0].listener.socket.getsockname()[1]
                    lines = await trio.to_thread.run_sync(client_checks, port)
                    # Let the handlers see the clients' EOF and close their
                    # streams normally before stopping the server.
                    with trio.move_on_after(5):
                        while server.statistics().open_connections:
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
            cached = cache.statistics()
        pool_stats = pool.statistics()

    for line in lines:
        print(f"  {line}")
    stats = server.statistics()
    print(
        f"served {stats.requests} requests over {stats.connections} connections"
        f" ({stats.body_bytes} body bytes, {stats.partial} partial, {stats.not_modified} not modified)"
        f" with kernel {pool_stats.kernel!r}"
    )
    print(f"cache: {cached.misses} images encoded, {cached.hits} served from the cache ({cached.bytes} bytes kept)")
    sent = pool_stats.sent
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
