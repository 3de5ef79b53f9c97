"""trio_zc.LeaseCache: bounded, rendered once per key, safe to evict while sending.

The logic (hits, misses, LRU by bytes and by entries, renders shared by
concurrent callers, failed and cancelled renders, holds) on a real pool;
eviction while a slow client is reading, through trio_zc.http, on every
kernel: the client still gets every byte right although the evicted lease's
memory was handed out again and overwritten; and every way to write into a
cached lease is refused.
"""

from __future__ import annotations

import ctypes
from collections.abc import Awaitable, Callable
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.http

from ..http_client import Client, read_to_eof, running, sealed_with
from ..streams import KERNELS, pattern

PAGE = 4096
THUMB = pattern(13_000, 78)


class Renders:
    """Render functions that count their calls, each rendering distinct bytes."""

    def __init__(self, pool: trio_zc.BufferPool) -> None:
        self.pool = pool
        self.calls: list[object] = []

    def of(
        self, key: object, nbytes: int = 1000, *, delay: float = 0.0, error: Exception | None = None
    ) -> Callable[[], Awaitable[trio_zc.SealedLease]]:
        async def render() -> trio_zc.SealedLease:
            self.calls.append(key)
            if delay:
                await trio.sleep(delay)
            if error is not None:
                raise error
            return await sealed_with(self.pool, pattern(nbytes, hash(key) & 0xFF))

        return render


async def test_hits_misses_and_statistics() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:
            with await cache.get("a", renders.of("a")) as held:
                assert bytes(held.lease.view()) == pattern(1000, hash("a") & 0xFF)
                assert held.key == "a" and held.nbytes == 1000
            with await cache.get("a", renders.of("a")) as again:
                assert again.lease is held._entry.lease
            assert renders.calls == ["a"]
            assert "a" in cache and len(cache) == 1
            stats = cache.statistics()
            assert (stats.hits, stats.misses, stats.entries, stats.bytes, stats.holds) == (1, 1, 1, PAGE, 0)
            assert (stats.evictions, stats.render_errors, stats.not_kept, stats.closed) == (0, 0, 0, False)
            assert held.released
            with pytest.raises(trio_zc.StaleLeaseError):
                _ = held.lease
            held.release()  # again: nothing happens
        assert cache.statistics().closed
        assert pool.statistics().sealed_leases == 0  # closing released the cached lease
        with pytest.raises(trio.ClosedResourceError):
            await cache.get("a", renders.of("a"))


async def test_concurrent_gets_of_a_missing_key_render_it_once() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:
            leases: list[trio_zc.SealedLease] = []

            async def ask() -> None:
                with await cache.get("k", renders.of("k", delay=0.1)) as held:
                    leases.append(held.lease)
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()
                assert cache.statistics().rendering == 1
            assert renders.calls == ["k"]
            assert len(leases) == 10 and all(lease is leases[0] for lease in leases)
            stats = cache.statistics()
            assert (stats.misses, stats.coalesced, stats.hits, stats.holds, stats.rendering) == (1, 9, 0, 0, 0)


async def test_a_failed_render_reaches_every_waiter_and_the_key_stays_absent() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:
            boom = ValueError("the encoder failed")
            errors: list[BaseException] = []

            async def ask() -> None:
                try:
                    await cache.get("k", renders.of("k", delay=0.1, error=boom))
                except ValueError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(ask)
            assert renders.calls == ["k"]
            assert len(errors) == 5 and all(exc is boom for exc in errors)
            assert "k" not in cache
            stats = cache.statistics()
            assert (stats.render_errors, stats.entries, stats.holds, stats.rendering) == (1, 0, 0, 0)
            # The next get renders again.
            with await cache.get("k", renders.of("k")) as held:
                assert held.nbytes == 1000
            assert renders.calls == ["k", "k"]
        assert pool.statistics().sealed_leases == 0


async def test_render_must_return_a_sealed_lease() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:
            made: list[trio_zc.WritableLease] = []

            async def writable() -> trio_zc.SealedLease:
                made.append(await pool.acquire(10))
                return made[-1]  # type: ignore[return-value]

            with pytest.raises(TypeError, match="seal"):
                await cache.get("w", writable)
            made[0].release()  # still the application's: the cache did not take it

            async def released() -> trio_zc.SealedLease:
                sealed = await sealed_with(pool, b"x")
                sealed.release()
                return sealed

            with pytest.raises(trio_zc.StaleLeaseError):
                await cache.get("r", released)

            async def text() -> trio_zc.SealedLease:
                return "not a lease"  # type: ignore[return-value]

            with pytest.raises(TypeError, match="SealedLease"):
                await cache.get("t", text)
            assert len(cache) == 0 and cache.statistics().render_errors == 3


async def test_a_cancelled_render_hands_over_to_a_waiter() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:
            got: list[int] = []

            async def first(scope_out: list[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    scope_out.append(scope)
                    await cache.get("k", renders.of("k", delay=10))
                assert scope.cancelled_caught

            async def waiter() -> None:
                with await cache.get("k", renders.of("k2")) as held:
                    got.append(held.nbytes)

            scopes: list[trio.CancelScope] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first, scopes)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                scopes[0].cancel()
            # The waiter rendered in its place, with its own render function.
            assert renders.calls == ["k", "k2"] and got == [1000]
            stats = cache.statistics()
            assert (stats.entries, stats.holds, stats.render_errors) == (1, 0, 0)


async def test_a_cancelled_waiter_keeps_no_hold() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20, max_entries=0) as cache:
            async with trio.open_nursery() as nursery:
                held: list[trio_zc.CachedLease[str]] = []

                async def renderer() -> None:
                    held.append(await cache.get("k", renders.of("k", delay=1)))

                async def waiter(scope: trio.CancelScope) -> None:
                    with scope:
                        await cache.get("k", renders.of("k"))

                nursery.start_soon(renderer)
                await trio.testing.wait_all_tasks_blocked()
                scopes = [trio.CancelScope() for _ in range(3)]
                for scope in scopes:
                    nursery.start_soon(waiter, scope)
                await trio.testing.wait_all_tasks_blocked()
                for scope in scopes:
                    scope.cancel()
            # Not kept (max_entries=0): only the renderer's hold keeps it alive.
            assert cache.statistics().holds == 1
            assert pool.statistics().sealed_leases == 1
            held[0].release()
            assert cache.statistics().holds == 0
            assert pool.statistics().sealed_leases == 0


async def test_least_recently_used_entries_are_evicted_by_bytes_and_by_entries() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=3 * PAGE) as cache:
            for key in "abc":
                (await cache.get(key, renders.of(key))).release()
            (await cache.get("a", renders.of("a"))).release()  # a is now the most recent
            (await cache.get("d", renders.of("d"))).release()  # evicts b, the least recent
            assert [key for key in "abcd" if key in cache] == ["a", "c", "d"]
            # 5000 bytes take two pages: c and then a, the least recent, go.
            (await cache.get("e", renders.of("e", 5000))).release()
            assert [key for key in "abcde" if key in cache] == ["d", "e"]
            stats = cache.statistics()
            assert (stats.evictions, stats.bytes, stats.entries) == (3, 3 * PAGE, 2)
            assert pool.statistics().sealed_leases == 2  # the evicted ones were released
        with trio_zc.LeaseCache[int](pool, max_bytes=1 << 20, max_entries=2) as by_count:
            for key in range(5):
                (await by_count.get(key, renders.of(key))).release()
            assert [key for key in range(5) if key in by_count] == [3, 4]
            assert by_count.statistics().evictions == 3
        assert pool.statistics().sealed_leases == 0


async def test_an_entry_larger_than_the_bound_is_served_but_not_kept() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=2 * PAGE) as cache:
            (await cache.get("small", renders.of("small"))).release()
            held = await cache.get("big", renders.of("big", 3 * PAGE))
            assert bytes(held.lease.view()) == pattern(3 * PAGE, hash("big") & 0xFF)
            assert "big" not in cache and "small" in cache  # nothing evicted for it
            assert cache.statistics().not_kept == 1
            assert pool.statistics().sealed_leases == 2
            held.release()
            assert pool.statistics().sealed_leases == 1


async def test_an_evicted_entry_stays_valid_until_its_last_hold_is_released() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:
            first = await cache.get("a", renders.of("a"))
            second = await cache.get("a", renders.of("a"))
            assert cache.discard("a") and not cache.discard("a")
            assert bytes(first.lease.view()) == pattern(1000, hash("a") & 0xFF)
            first.release()
            assert pool.statistics().sealed_leases == 1
            second.release()
            assert pool.statistics().sealed_leases == 0
            # A new get renders anew.
            (await cache.get("a", renders.of("a"))).release()
            assert renders.calls == ["a", "a"]


async def test_closing_keeps_holds_valid_and_the_pool_sees_no_leak() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        cache = trio_zc.LeaseCache[str](pool, max_bytes=1 << 20)
        held = await cache.get("a", renders.of("a"))
        cache.close()
        cache.close()
        assert bytes(held.lease.view())[:10] == pattern(1000, hash("a") & 0xFF)[:10]
        held.release()
        assert pool.statistics().sealed_leases == 0
    assert pool.statistics().leaked_at_close == 0


async def test_mutating_a_cached_lease_is_refused() -> None:
    async with trio_zc.open_pool(max_bytes=4 << 20) as pool:
        renders = Renders(pool)
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:
            with await cache.get("a", renders.of("a")) as held:
                lease = held.lease
                expected = pattern(1000, hash("a") & 0xFF)
                view = lease.view()
                assert view.readonly
                with pytest.raises(TypeError):
                    view[0] = 1  # type: ignore[index]
                with pytest.raises(TypeError):
                    memoryview(view)[0:4] = b"evil"  # type: ignore[index]
                with pytest.raises(TypeError):
                    ctypes.c_char.from_buffer(view)  # type: ignore[arg-type]
                array = np.frombuffer(view, dtype=np.uint8)
                with pytest.raises(ValueError):
                    array[0] = 1
                with pytest.raises(ValueError):
                    array.setflags(write=True)
                # A sealed lease has no write API at all.
                for name in ("write", "ndarray", "seal"):
                    assert not hasattr(lease, name), name
                with pytest.raises(AttributeError):
                    held.lease = lease  # type: ignore[misc]
                assert bytes(lease.view()) == expected
                view.release()
            # The lease belongs to the cache; released by the application anyway,
            # the cache notices and renders anew instead of handing out freed memory.
            with await cache.get("a", renders.of("a")) as held:
                held.lease.release()
            with await cache.get("a", renders.of("a")) as held:
                assert bytes(held.lease.view()) == expected
            assert renders.calls == ["a", "a"]
            assert cache.statistics().found_stale == 1


async def test_bad_arguments_are_refused() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20) as pool:
        with pytest.raises(TypeError):
            trio_zc.LeaseCache("pool", max_bytes=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            trio_zc.LeaseCache(pool, max_bytes=-1)
        with pytest.raises(TypeError):
            trio_zc.LeaseCache(pool, max_bytes=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            trio_zc.LeaseCache(pool, max_bytes=1, max_entries=-1)
    with pytest.raises(trio.ClosedResourceError):
        trio_zc.LeaseCache(pool, max_bytes=1)


# -- eviction while a slow client reads, on every kernel ----------------------------------------


@pytest.mark.parametrize(
    "size",
    # 12 KiB fits the server's socket buffer but not the client's window: the
    # response is handed to the kernel whole, and the kernel still holds the
    # lease's pages (zero-copy) or references them (sendfile) when the lease is
    # released. 4 MiB does not fit: the lease is evicted while send_lease() runs.
    [12 << 10, 4 << 20],
    ids=["evicted after send_lease returned", "evicted during send_lease"],
)
@pytest.mark.parametrize("name", KERNELS)
async def test_evicting_while_a_slow_client_reads_sends_the_right_bytes(name: str, size: int) -> None:
    """A cached image goes to a client that reads nothing yet; meanwhile the
    cache is cleared (the lease released: at once if the server has handed
    the whole response to the kernel, else when the send returns) and every
    byte the pool will hand out is leased and overwritten. Then the client
    reads: it gets the image's bytes, not the scribbles."""
    image = pattern(size, 77)
    caches: list[trio_zc.LeaseCache[str]] = []

    def handler(app: object) -> trio_zc.http.Handler:
        async def cached(request: trio_zc.http.Request) -> trio_zc.http.Response:
            pool = caches[0].pool
            return trio_zc.http.Response(await caches[0].get("image", partial(sealed_with, pool, image)))

        return cached

    # A pool just large enough for the image and what overwrites it: its
    # memory is handed out again as soon as the pool lets it.
    async with running(name, handler=handler, pool_bytes=2 * size + (1 << 20)) as srv:
        with trio_zc.LeaseCache[str](srv.pool, max_bytes=8 << 20) as cache:
            caches.append(cache)
            if srv.port is None:
                peer = await srv.connect()
                assert isinstance(peer, trio_zc.testing.MockPeer)
                peer.hold_transmission()
                stream: trio.abc.Stream = peer
            else:
                stream = await srv.tcp(rcvbuf=4096)
            await stream.send_all(b"GET /image HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            # Until the server handed the whole response to the kernel, or is blocked sending it.
            small = size < 1 << 20
            with trio.move_on_after(20 if small else 0.3):
                while not srv.server.statistics().responses:
                    await trio.sleep(0.01)
            if small:
                assert srv.server.statistics().responses == 1
            assert cache.statistics().entries == 1
            cache.clear()
            scribbled: list[trio_zc.SealedLease] = []
            while free := srv.pool.statistics().largest_free_block:
                lease = srv.pool.acquire_nowait(free)
                lease.write(b"\xee" * free)
                scribbled.append(lease.seal())
            if isinstance(stream, trio_zc.testing.MockPeer):
                stream.transmit()
            with trio.fail_after(60):
                data = await read_to_eof(stream)
            await stream.aclose()
            for lease in scribbled:
                lease.release()
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert body == image
            await srv.settled()


async def test_the_example_pattern_serves_one_lease_to_many_clients() -> None:
    """Through trio_zc.http: a hundred requests of one cached image, one render, every body right."""
    caches: list[trio_zc.LeaseCache[str]] = []

    def handler(app: object) -> trio_zc.http.Handler:
        async def cached(request: trio_zc.http.Request) -> trio_zc.http.Response:
            pool = caches[0].pool
            render = partial(sealed_with, pool, THUMB)
            return trio_zc.http.Response(await caches[0].get(request.path, render), etag="x")

        return cached

    async with running("msg_zerocopy", handler=handler) as srv:
        with trio_zc.LeaseCache[str](srv.pool, max_bytes=1 << 20) as cache:
            caches.append(cache)

            async def client() -> None:
                c = Client(await srv.connect())
                for _ in range(10):
                    assert (await c.request("/thumb")).body == THUMB
                await c.aclose()

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(client)
            stats = cache.statistics()
            assert (stats.misses, stats.hits + stats.coalesced) == (1, 99)
        await srv.settled()


async def test_a_render_that_asks_for_its_own_key_fails_instead_of_waiting_for_ever() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20) as pool:
        with trio_zc.LeaseCache[str](pool, max_bytes=1 << 20) as cache:

            async def recursive() -> trio_zc.SealedLease:
                return (await cache.get("k", recursive)).lease

            with trio.fail_after(10), pytest.raises(RuntimeError, match="would wait for ever"):
                await cache.get("k", recursive)
            assert cache.statistics().render_errors == 1 and "k" not in cache
