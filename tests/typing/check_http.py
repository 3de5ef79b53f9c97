"""Mistakes with trio_zc.http and LeaseCache that mypy must reject (see README.md here)."""

from __future__ import annotations

import trio_zc
import trio_zc.http


async def misuse(pool: trio_zc.BufferPool) -> None:
    writable = await pool.acquire(4096)
    sealed = writable.seal()

    # A response carries a sealed lease, a cached one, or bytes: not a writable lease, not text.
    trio_zc.http.Response(writable)  # type: ignore[arg-type]
    trio_zc.http.Response("text")  # type: ignore[arg-type]
    trio_zc.http.Response(sealed, status="200")  # type: ignore[arg-type]

    with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:

        async def render() -> trio_zc.SealedLease:
            return sealed

        async def render_writable() -> trio_zc.WritableLease:
            return writable

        # Keys are the cache's type; renders return sealed leases.
        await cache.get(1, render)  # type: ignore[arg-type]
        await cache.get("k", render_writable)  # type: ignore[arg-type]

        held = await cache.get("k", render)
        # A cached lease has no write API either.
        held.lease.write(b"x")  # type: ignore[attr-defined]
        held.lease.view()[0] = 1  # type: ignore[index]
        # The hold's lease is read-only to the checker: it cannot be replaced.
        held.lease = sealed  # type: ignore[misc]

        # What must keep type-checking: the hold in a response, its key typed.
        key: str = held.key
        trio_zc.http.Response(held, content_type="image/jpeg", etag=key)
        trio_zc.http.Response(sealed, offset=10, nbytes=100)
        trio_zc.http.Response(b"small page", status=404, headers={"Cache-Control": "no-store"})


async def handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
    return trio_zc.http.Response(b"hello")


async def not_a_handler(request: trio_zc.http.Request) -> bytes:
    return b"hello"


async def serving(pool: trio_zc.BufferPool) -> None:
    trio_zc.http.HTTPServer(handler)
    trio_zc.http.HTTPServer(not_a_handler)  # type: ignore[arg-type]
    await trio_zc.http.serve(pool, handler, port=0)
    await trio_zc.http.serve(pool, not_a_handler, port=0)  # type: ignore[arg-type]
