"""ZeroCopyStream's behaviour over loopback TCP, on every real kernel."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from functools import partial

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool

from ..streams import KERNELS, kernel, receive_exactly, socket_pair, stop_reading, stream_pair

#: Kernels whose zero-copy sends can stay in flight.
ZC_KERNELS = ["msg_zerocopy", "io_uring", "mock"]
MiB = 1 << 20
# Keep zero-copy on although loopback reports every send COPIED.
ALWAYS_ZC = ZeroCopyPolicy(copied_streak=0)


async def sealed_with(pool: trio_zc.BufferPool, data: bytes) -> trio_zc.SealedLease:
    lease = await pool.acquire(len(data))
    lease.write(data)
    return lease.seal()


@pytest.mark.parametrize("name", KERNELS)
async def test_send_lease_delivers_exactly_the_sealed_bytes(name: str) -> None:
    async with open_pool(max_bytes=8 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            image = os.urandom(3 * MiB + 123)
            sealed = await sealed_with(pool, image)
            await a.send_lease(sealed)
            await a.send_lease(sealed, offset=100, nbytes=1000)
            await a.send_lease(sealed, offset=len(image) - 5)
            sealed.release()
            got = await receive_exactly(b, len(image) + 1005)
            assert got == image + image[100:1100] + image[-5:]
        stats = a.statistics()
        assert stats.kernel == name and stats.sends_in_flight == 0
        if name in ZC_KERNELS:
            assert stats.sent.zerocopy_calls > 0
            assert stats.sent.zerocopy_calls == stats.sent.completions
            # The image went zero-copy; the 1000- and 5-byte sends were
            # below the threshold and copied.
            assert stats.sent.bytes_kernel_copied + stats.sent.bytes_zerocopy == len(image)
            assert stats.sent.bytes_copied == 1005
        elif name == "sendfile":
            # No completions: the image went by sendfile; the small sends
            # were copied.
            assert stats.sent.zerocopy_calls == 0
            assert stats.sent.bytes_zerocopy == len(image)
            assert stats.sent.bytes_copied == 1005
        else:
            assert stats.sent.zerocopy_calls == 0
            assert stats.sent.bytes_copied == len(image) + 1005
        assert pool.statistics().free_bytes == 8 * MiB


@pytest.mark.parametrize("name", KERNELS)
async def test_one_sealed_lease_to_many_streams_at_once(name: str) -> None:
    async with open_pool(max_bytes=8 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        image = os.urandom(2 * MiB)
        sealed = await sealed_with(pool, image)
        pairs = [await stream_pair(pool) for _ in range(3)]
        results: list[bytes] = []
        async with trio.open_nursery() as nursery:
            for a, b in pairs:
                nursery.start_soon(a.send_lease, sealed)

                async def receive(b: trio_zc.ZeroCopyStream = b) -> None:
                    results.append(await receive_exactly(b, len(image)))

                nursery.start_soon(receive)
        sealed.release()
        assert results == [image] * 3
        for a, b in pairs:
            await a.aclose()
            await b.aclose()
        assert pool.statistics().free_bytes == 8 * MiB
        assert pool.statistics().sent.quarantined_sends == 0


async def test_small_sends_are_copied_and_counted() -> None:
    async with open_pool(max_bytes=MiB, kernel="msg_zerocopy") as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            sealed = await sealed_with(pool, b"x" * 1000)
            await a.send_lease(sealed)
            await a.send_all(b"header")
            assert await receive_exactly(b, 1006) == b"x" * 1000 + b"header"
            stats = a.statistics()
            assert stats.sent.zerocopy_calls == 0 and stats.sent.bytes_copied == 1006
            assert stats.zerocopy_enabled and stats.min_zerocopy_bytes == 16384
            sealed.release()






@pytest.mark.parametrize("name", KERNELS)
async def test_bad_send_lease_arguments_change_nothing(name: str) -> None:
    async with open_pool(max_bytes=MiB, kernel=kernel(name)) as pool, open_pool(max_bytes=MiB) as other:
        a, b = await stream_pair(pool)
        async with a, b:
            writable = await pool.acquire(100)
            sealed = await sealed_with(pool, b"z" * 100)
            foreign = await sealed_with(other, b"f")
            stale = await sealed_with(pool, b"s")
            stale.release()
            before = pool.statistics()
            cases: list[tuple[object, dict[str, object], type[Exception]]] = [
                (writable, {}, TypeError),
                (b"bytes", {}, TypeError),
                (None, {}, TypeError),
                (foreign, {}, trio_zc.ForeignLeaseError),
                (stale, {}, trio_zc.StaleLeaseError),
                (sealed, {"offset": 100}, ValueError),
                (sealed, {"offset": -1}, ValueError),
                (sealed, {"offset": 1.0}, TypeError),
                (sealed, {"nbytes": 0}, ValueError),
                (sealed, {"nbytes": 101}, ValueError),
                (sealed, {"offset": 50, "nbytes": 51}, ValueError),
                (sealed, {"nbytes": "1"}, TypeError),
            ]
            for lease, kwargs, error in cases:
                with pytest.raises(error):
                    await a.send_lease(lease, **kwargs)  # type: ignore[arg-type]
            assert pool.statistics() == before
            # The stream is still fine.
            await a.send_lease(sealed, offset=99)
            assert await receive_exactly(b, 1) == b"z"
            writable.release()
            sealed.release()
            foreign.release()


@pytest.mark.parametrize("name", KERNELS)
async def test_closed_and_half_closed_streams_refuse_leases(name: str) -> None:
    async with open_pool(max_bytes=MiB, kernel=kernel(name)) as pool:
        a, b = await stream_pair(pool)
        sealed = await sealed_with(pool, b"q" * 10)
        await a.send_eof()
        with pytest.raises(trio.ClosedResourceError, match="EOF"):
            await a.send_lease(sealed)
        assert await b.receive_some(10) == b""
        await a.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await a.send_lease(sealed)
        with pytest.raises(trio.ClosedResourceError):
            a.statistics() and a.getpeername()
        await b.aclose()
        assert sealed.sends_in_flight == 0
        sealed.release()


async def test_stream_construction_errors() -> None:
    async with open_pool(max_bytes=MiB) as pool:
        with pytest.raises(TypeError, match="SocketStream or a Trio socket"):
            trio_zc.ZeroCopyStream(object(), pool=pool)  # type: ignore[arg-type]
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp, pytest.raises(ValueError, match="SOCK_STREAM"):
            trio_zc.ZeroCopyStream(udp, pool=pool)
        a, b = await socket_pair()
        with a, b, pytest.raises(ValueError, match="drain_timeout"):
            trio_zc.ZeroCopyStream(a, pool=pool, drain_timeout=-1)
    a, b = await socket_pair()
    with a, b, pytest.raises(trio.ClosedResourceError):
        trio_zc.ZeroCopyStream(a, pool=pool)


@pytest.mark.parametrize("name", KERNELS)
async def test_receiving_while_sends_are_in_flight(name: str) -> None:
    async with open_pool(max_bytes=16 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        image = os.urandom(MiB)
        async with a, b, trio.open_nursery() as nursery:

            async def a_sends() -> None:
                for _ in range(20):
                    async with pool.lease(len(image)) as lease:
                        lease.write(image)
                        await a.send_lease(lease.seal())

            async def a_receives() -> None:
                assert await receive_exactly(a, 5 * MiB) == image * 5

            async def b_echoes_some() -> None:
                for _ in range(5):
                    await b.send_all(image)

            nursery.start_soon(a_sends)
            nursery.start_soon(a_receives)
            nursery.start_soon(b_echoes_some)
            assert await receive_exactly(b, 20 * MiB) == image * 20


@pytest.mark.parametrize("name", ["copy", "msg_zerocopy"])
async def test_blocked_sender_with_completions_pending_uses_no_cpu(name: str) -> None:
    async with open_pool(max_bytes=64 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            sealed = await sealed_with(pool, os.urandom(4 * MiB))

            async def send_forever() -> None:
                while True:
                    await a.send_lease(sealed)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_forever)
                # Let some data flow, so that completions are produced...
                await receive_exactly(b, 12 * MiB)
                # ...then stop reading: the sender blocks with sends in flight.
                await trio.sleep(0.3)
                cpu0, wall0 = time.process_time(), time.monotonic()
                await trio.sleep(1.0)
                cpu = time.process_time() - cpu0
                wall = time.monotonic() - wall0
                nursery.cancel_scope.cancel()
            assert cpu < 0.05 * wall, f"{cpu:.3f}s of CPU over a blocked {wall:.2f}s"
            if name == "msg_zerocopy":
                assert a.statistics().sent.completions > 0
                assert a.statistics().sends_in_flight > 0
            # Drain what is stuck so the streams close at once.
            with trio.fail_after(10):
                while a.statistics().sends_in_flight:
                    with trio.move_on_after(0.05):
                        await b.receive_some(MiB)
            sealed.release()


@pytest.mark.parametrize("name", ZC_KERNELS)
async def test_close_with_sends_in_flight_waits_then_forces_and_loses_nothing(name: str) -> None:
    async with open_pool(max_bytes=64 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        stop_reading(b)
        a._drain_timeout = 0.3
        sealed = await sealed_with(pool, os.urandom(8 * MiB))
        with trio.move_on_after(0.5):
            while True:  # fill the connection; the peer reads nothing
                await a.send_lease(sealed)
        sealed.release()
        assert a.statistics().sends_in_flight > 0
        assert pool.statistics().draining_leases == 1
        start = trio.current_time()
        await a.aclose()
        waited = trio.current_time() - start
        assert 0.3 <= waited < 2.0
        # The abort made the kernel report every send: nothing quarantined.
        stats = pool.statistics()
        assert stats.sent.quarantined_sends == 0 and stats.quarantined_leases == 0
        assert stats.sent.zerocopy_calls == stats.sent.completions
        assert stats.free_bytes == 64 * MiB
        with pytest.raises(trio.BrokenResourceError):
            while True:
                if not await b.receive_some(MiB):
                    raise trio.BrokenResourceError  # an EOF instead of a reset is also a loss
        await b.aclose()




@pytest.mark.parametrize("name", ZC_KERNELS)
async def test_cancelled_send_lease_never_releases_early(name: str) -> None:
    async with open_pool(max_bytes=32 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        stop_reading(b)
        image = os.urandom(16 * MiB)
        async with pool.lease(len(image)) as lease:
            lease.write(image)
            sealed = lease.seal()
            with trio.move_on_after(0.2) as scope:
                await a.send_lease(sealed)  # the peer reads nothing: blocks
            assert scope.cancelled_caught
        # Released by its scope, but the kernel still holds part of it.
        assert pool.statistics().draining_leases == 1
        assert pool.statistics().free_bytes == 16 * MiB
        with pytest.raises(trio.WouldBlock):
            pool.acquire_nowait(17 * MiB)
        # The stream still works, and what arrived is a prefix of the image.
        got = bytearray()
        with trio.fail_after(10):
            while pool.statistics().draining_leases:
                # The last completion may come after the last byte is read.
                with trio.move_on_after(0.05):
                    got += await b.receive_some(MiB)
        # Some, all or none of it, as for a cancelled send_all (io_uring's
        # request may finish after its task was cancelled); never other bytes.
        assert len(got) <= len(image) and image.startswith(got)
        assert pool.statistics().free_bytes == 32 * MiB
        await a.send_all(b"after")
        rest = b""
        while not rest.endswith(b"after"):
            rest += await b.receive_some(MiB)
        await a.aclose()
        await b.aclose()


async def test_serve_tcp_and_open_tcp_stream() -> None:
    async with open_pool(max_bytes=8 * MiB) as pool:
        image = os.urandom(MiB)
        digests: list[str] = []

        async def handler(stream: trio_zc.ZeroCopyStream) -> None:
            assert isinstance(stream, trio_zc.ZeroCopyStream) and stream.pool is pool
            async with pool.lease(len(image)) as lease:
                lease.write(image)
                await stream.send_lease(lease.seal())
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio_zc.serve_tcp, handler, 0, pool=pool, host="127.0.0.1"))
            port = listeners[0].listener.socket.getsockname()[1]
            for _ in range(2):
                client = await trio_zc.open_tcp_stream("127.0.0.1", port, pool=pool)
                async with client:
                    data = await receive_exactly(client, len(image))
                    digests.append(hashlib.sha256(data).hexdigest())
            nursery.cancel_scope.cancel()
        assert digests == [hashlib.sha256(image).hexdigest()] * 2


async def test_unknown_kernel_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown kernel 'sendfile2'"):
        async with open_pool(max_bytes=MiB, kernel="sendfile2"):
            pass
    with pytest.raises(TypeError):
        async with open_pool(max_bytes=MiB, kernel=3):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        async with open_pool(max_bytes=MiB, policy={"copied_streak": 0}):  # type: ignore[arg-type]
            pass


async def test_pool_sums_what_its_streams_did() -> None:
    async with open_pool(max_bytes=MiB, kernel="msg_zerocopy") as pool:
        pairs = [await stream_pair(pool) for _ in range(2)]
        left, right = trio.socket.socketpair()
        unix = trio_zc.ZeroCopyStream(left, pool=pool)
        sealed = await sealed_with(pool, b"p" * 20000)
        for a, b in pairs:
            await a.send_lease(sealed)
            await a.send_all(b"hdr")
            await receive_exactly(b, 20003)
        sealed.release()
        for a, b in pairs:
            await a.aclose()
            await b.aclose()
        await unix.aclose()
        right.close()
        stats = pool.statistics()
        per_stream = [a.statistics().sent for a, _ in pairs]
        assert stats.sent.zerocopy_calls == sum(s.zerocopy_calls for s in per_stream) > 0
        assert stats.sent.bytes_copied == 6
        assert stats.sent.bytes_kernel_copied == 40000
        assert stats.fallbacks == (("not a TCP socket (family AF_UNIX)", 1),)
        assert stats.kernel == "msg_zerocopy"


@pytest.mark.parametrize("name", ZC_KERNELS)
async def test_pool_close_forces_stuck_streams_and_recovers_their_memory(name: str) -> None:
    async with open_pool(
        max_bytes=64 * MiB, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=0.3
    ) as pool:
        a, b = await stream_pair(pool)
        stop_reading(b)
        async with pool.lease(8 * MiB) as lease:
            sealed = lease.seal()
            with trio.move_on_after(0.3):
                while True:  # the peer reads nothing
                    await a.send_lease(sealed)
        assert pool.statistics().sends_in_flight > 0
        start = trio.current_time()
    # Leaving the block waited the drain deadline, then aborted the stuck
    # connection, which still reported every send: nothing quarantined.
    assert 0.3 <= trio.current_time() - start < 3
    stats = pool.statistics()
    assert stats.quarantined_leases == 0 and stats.sends_in_flight == 0
    assert stats.sent.completions == stats.sent.zerocopy_calls
    await a.aclose()
    await b.aclose()
