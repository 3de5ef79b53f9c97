"""A Starlette image app on Trio: images sealed in leases, answered with trio_zc.asgi.LeaseResponse.

Run it with ``python examples/asgi_app.py --port 8080`` (anycorn on
127.0.0.1 until Ctrl-C; ``--server hypercorn`` for hypercorn's Trio worker;
needs Starlette, anycorn or hypercorn, and Pillow), then open
``/image/1.png`` on it (a Starlette route) or ``/raw/1.png`` (answered in
front of the framework, the way to serve leases next to a Quart app).
``python examples/asgi_app.py --self-test``
serves on a free loopback port with each server in turn, fetches every image
with the standard library's HTTP client, checks each byte and exits.

Each image is encoded once into a lease and kept sealed in a
:class:`trio_zc.LeaseCache`; a request gets a hold on the cached lease, and
the :class:`~trio_zc.asgi.LeaseResponse` releases the hold when the response
is over. anycorn offers the ``http.response.zerocopysend`` extension, so the
bytes go from the pool's memory to the socket with ``sendfile`` and no copy;
hypercorn takes them as an ordinary body.
"""

from __future__ import annotations

import argparse
import http.client
import io
import re
import sys
from typing import Any

import trio
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import trio_zc
import trio_zc.asgi
from trio_zc import images

IMAGES = 4
ZEROCOPY = "http.response.zerocopysend"


def picture(n: int) -> Image.Image:
    """Image *n*: a gradient of its own size, so a client can tell the images apart."""
    size = (320 + 160 * n, 240 + 120 * n)
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = red.rotate(90 * n, expand=False)
    return Image.merge("RGB", (red, green, blue))


class Images:
    """The images: each encoded once into a lease of *pool*, kept sealed in a cache."""

    def __init__(self, pool: trio_zc.BufferPool) -> None:
        self.pool = pool
        self.cache: trio_zc.LeaseCache[int] = trio_zc.LeaseCache(pool, max_bytes=pool.max_bytes // 2)
        #: One line per image sent, saying whether the server offered sendfile.
        self.served: list[str] = []

    async def response(self, n: int, scope: Any) -> trio_zc.asgi.LeaseResponse:
        """The response for image *n*: a hold on its cached lease, which the response owns."""

        async def render() -> trio_zc.SealedLease:
            return await images.encode(self.pool, picture(n), "PNG")

        held = await self.cache.get(n, render)
        offered = ZEROCOPY in (scope.get("extensions") or {})
        self.served.append(f"{scope['path']} ({'sendfile offered' if offered else 'ordinary body'})")
        # Released when the response is over, however it ends.
        return trio_zc.asgi.LeaseResponse(held, content_type="image/png", headers={"Cache-Control": "max-age=60"})


def make_app(pictures: Images) -> Starlette:
    """The Starlette application: a handler returns the LeaseResponse, as any Starlette response."""

    async def image(request: Request) -> Any:
        n = int(request.path_params["n"])
        if not 0 <= n < IMAGES:
            return PlainTextResponse("no such image", status_code=404)
        return await pictures.response(n, request.scope)

    return Starlette(routes=[Route("/image/{n:int}.png", image)])


def in_front_of(app: Any, pictures: Images) -> Any:
    """An ASGI app that answers ``/raw/<n>.png`` itself and hands every other request to *app*.

    For frameworks whose handlers cannot return an ASGI application
    (Quart sends its own Response objects): the images are answered in
    front of the framework, which serves the rest.
    """
    raw = re.compile(r"/raw/(\d+)\.png")

    async def front(scope: Any, receive: Any, send: Any) -> None:
        match = raw.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match and int(match.group(1)) < IMAGES:
            response = await pictures.response(int(match.group(1)), scope)
            await response(scope, receive, send)
        else:
            await app(scope, receive, send)

    return front


async def serve(server: str, app: Any, port: int, stop: trio.Event, *, task_status: Any) -> None:
    """Run *app* with anycorn (on Trio, through anyio) or hypercorn's Trio worker until *stop* is set."""
    if server == "anycorn":
        import anycorn

        config: Any = anycorn.Config()
        run: Any = anycorn.serve
    else:
        import hypercorn.config
        import hypercorn.trio

        config = hypercorn.config.Config()
        run = hypercorn.trio.serve
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    await run(app, config, shutdown_trigger=stop.wait, task_status=task_status)


def expected(n: int) -> bytes:
    """What image *n* encodes to, encoded here the same way."""
    out = io.BytesIO()
    picture(n).save(out, "PNG")
    return out.getvalue()


def fetch_all(port: int) -> list[str]:
    """GET every image (and one that does not exist) over one keep-alive connection; check each."""
    lines = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        paths = [f"/image/{n}.png" for n in range(IMAGES)] + ["/raw/0.png", f"/image/{IMAGES}.png"]
        for path in paths:
            connection.request("GET", path)
            reply = connection.getresponse()
            body = reply.read()
            n = int(re.sub(r"\D", "", path))
            if n < IMAGES:
                assert reply.status == 200, reply.status
                assert reply.getheader("Content-Type") == "image/png"
                assert body == expected(n), f"image {n}: the bytes differ"
            else:
                assert reply.status == 404, reply.status
            lines.append(f"GET {path} -> {reply.status}, {len(body)} bytes")
    finally:
        connection.close()
    return lines


async def self_test() -> int:
    for server in ("anycorn", "hypercorn"):
        # The sendfile kernel aligns leases to whole shared-memory folios, so
        # their pages can always be replaced after the server's sendfile.
        async with trio_zc.open_pool(max_bytes=16 << 20, kernel="sendfile") as pool:
            pictures = Images(pool)
            app = in_front_of(make_app(pictures), pictures)
            stop = trio.Event()
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    urls = await nursery.start(serve, server, app, 0, stop)
                    port = int(re.sub(r".*:", "", urls[0]))
                    for line in await trio.to_thread.run_sync(fetch_all, port):
                        print(f"{server}: {line}")
                    stop.set()
            stats = pictures.cache.statistics()
            print(f"{server}: {len(pictures.served)} images sent, {pictures.served[0]}")
            print(f"{server}: cache: {stats.misses} encoded, {stats.hits} from the cache")
            pictures.cache.close()
            pool_stats = pool.statistics()
            print(f"{server}: pool: {pool_stats.free_bytes} of {pool_stats.max_bytes} bytes free, {pool_stats.sends_in_flight} sends in flight")
    print("self-test passed")
    return 0


async def main_serve(server: str, port: int) -> None:
    async with trio_zc.open_pool(max_bytes=64 << 20, kernel="sendfile") as pool:
        pictures = Images(pool)
        app = in_front_of(make_app(pictures), pictures)
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(serve, server, app, port, trio.Event())
            print(f"serving on {urls[0]} (Ctrl-C to stop)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--server", choices=["anycorn", "hypercorn"], default="anycorn")
    parser.add_argument("--self-test", action="store_true", help="serve on a free port, check, exit")
    args = parser.parse_args()
    if args.self_test:
        return trio.run(self_test)
    try:
        trio.run(main_serve, args.server, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
