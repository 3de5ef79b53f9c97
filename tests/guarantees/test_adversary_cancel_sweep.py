"""Cancellation at every step of the application's task, on every kernel.

The existing storms cancel at random moments; this sweep cancels at each
one in turn. An instrument counts the steps (the runs between two
checkpoints) of the task that runs a scenario, and cancels the scenario's
scope when step *k* begins, for k = 1, 2, ... until a run finishes before
its cancellation: so every ``await`` the scenario reaches -- in
``lease()``, ``send_lease`` (with a head too), ``send_all``, ``wait_reusable``, ``aclose``
and ``images.encode``, and the library's own waits inside them -- is the
one that gets cancelled, once.

After each run: only :class:`trio.Cancelled` came out; the stream is not
left busy; the peer received a prefix of what was sent (all of it when
nothing was cancelled), never other bytes; and once the stream is closed
the pool is whole -- nothing held, abandoned, in flight or quarantined (a
``QuarantineWarning`` would fail the test).

Real kernels over loopback with small socket buffers and a peer that reads
slowly (so sends wait), and the mock.
"""

from __future__ import annotations

import io
import random
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
from PIL import Image

import trio_zc
import trio_zc.testing
from trio_zc import images

from ..streams import ALWAYS_ZC, KERNELS, pattern, stop_reading, stream_pair

SIZE = 128 * 1024
IMAGE = pattern(SIZE, 9)
TRAILER = b"-- end of image --"
#: The most steps swept per scenario (each run is one connection).
MAX_STEPS = 400
#: Socket buffers (send and receive), small so that sends wait often.
BUFFER = 16384

Scenario = Callable[[trio_zc.BufferPool, trio_zc.ZeroCopyStream], Awaitable[None]]


class CancelAtStep(trio.abc.Instrument):
    """Cancels ``scope`` when ``task`` begins its ``k``-th step."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.steps = 0
        self.task: trio.lowlevel.Task | None = None
        self.scope: trio.CancelScope | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task and self.scope is not None:
            self.steps += 1
            if self.steps == self.k:
                self.scope.cancel()


async def send_pool_lease(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream) -> None:
    async with pool.lease(SIZE) as lease:
        lease.write(IMAGE)
        sealed = lease.seal()
        await stream.send_lease(sealed)
        await stream.send_all(TRAILER)


def _owned(sealed: trio_zc.SealedLease) -> bool:
    try:
        return sealed.nbytes > 0
    except trio_zc.StaleLeaseError:
        return False


#: A head larger than the socket buffers, so that sends stop (and are
#: cancelled) inside it too; a bytearray, which send_lease copies.
HEAD = pattern(40_000, 5)


async def send_lease_with_head(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream) -> None:
    async with pool.lease(SIZE) as lease:
        lease.write(IMAGE)
        sealed = lease.seal()
        await stream.send_lease(sealed, head=bytearray(HEAD))
        await stream.send_all(TRAILER)


async def send_adopted_and_wait(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream) -> None:
    sealed = pool.adopt(IMAGE)
    try:
        await stream.send_lease(sealed, 0, SIZE // 2)
        await stream.send_lease(sealed, SIZE // 2)
        await stream.send_all(TRAILER)
        await sealed.wait_reusable()
    finally:
        if _owned(sealed):  # cancelled before wait_reusable() released it
            sealed.release()


async def send_then_close(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream) -> None:
    async with pool.lease(SIZE) as lease:
        lease.write(IMAGE)
        await stream.send_lease(lease.seal())
        await stream.send_all(TRAILER)
        await stream.aclose()


#: Noise, which PNG cannot shrink: the encoded image takes many sends too.
NOISE = Image.frombytes("L", (512, 256), random.Random(9).randbytes(SIZE))
_PNG = io.BytesIO()
NOISE.save(_PNG, format="PNG")
ENCODED = _PNG.getvalue()


async def encode_and_send(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream) -> None:
    sealed = await images.encode(pool, NOISE, "PNG", guess=4096)  # outgrows its first lease
    try:
        await stream.send_lease(sealed)
        await stream.send_all(TRAILER)
    finally:
        sealed.release()


SCENARIOS: dict[str, tuple[Scenario, bytes]] = {
    "lease-send": (send_pool_lease, IMAGE + TRAILER),
    "head-lease-send": (send_lease_with_head, HEAD + IMAGE + TRAILER),
    "adopt-wait_reusable": (send_adopted_and_wait, IMAGE + TRAILER),
    "send-aclose": (send_then_close, IMAGE + TRAILER),
    "encode-send": (encode_and_send, ENCODED + TRAILER),
}


async def one_run(pool: trio_zc.BufferPool, scenario: Scenario, expected: bytes, k: int) -> bool:
    """Run *scenario* once, cancelled at step *k*; whether the cancellation hit it."""
    stream, peer = await stream_pair(pool)
    # Small buffers both ways, so that a send waits many times.
    stop_reading(peer, rcvbuf=BUFFER)
    sock = getattr(stream._channel.transport, "sock", None)
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    received = bytearray()
    instrument = CancelAtStep(k)
    hit = False

    async def reader() -> None:
        try:
            while True:
                chunk = await peer.receive_some(8192)
                if not chunk:
                    return
                received.extend(chunk)
                await trio.sleep(0)
        except trio.BrokenResourceError:
            return  # a cancelled aclose() resets the connection: the peer sees that

    async def app() -> None:
        nonlocal hit
        instrument.task = trio.lowlevel.current_task()
        with trio.CancelScope() as scope:
            instrument.scope = scope
            await scenario(pool, stream)
        instrument.scope = None
        hit = scope.cancelled_caught
        # Whatever was cancelled, the stream is not left busy.
        try:
            await stream.send_all(b"")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        await stream.aclose()

    trio.lowlevel.add_instrument(instrument)
    try:
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await app()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    await peer.aclose()
    assert bytes(received) == expected[: len(received)], f"step {k}: the peer got other bytes"
    if not hit:
        assert bytes(received) == expected, f"step {k}: not cancelled, yet {len(received)} bytes arrived"
    with trio.fail_after(10):
        while pool.statistics().sends_in_flight:
            await trio.sleep(0.01)
    stats = pool.statistics()
    assert stats.free_bytes == stats.max_bytes, (k, stats)
    assert stats.writable_leases == stats.sealed_leases == stats.draining_leases == 0, (k, stats)
    assert stats.abandoned_leases == stats.quarantined_bytes == stats.adopted_leases == 0, (k, stats)
    return hit


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("name", KERNELS)
async def test_cancelling_every_step_of_a_scenario_keeps_bytes_and_pool_whole(name: str, scenario: str) -> None:
    run, expected = SCENARIOS[scenario]
    the_kernel = (
        trio_zc.testing.MockKernel(socket_buffer=BUFFER, receive_buffer=BUFFER) if name == "mock" else name
    )
    async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=the_kernel, policy=ALWAYS_ZC, drain_timeout=5) as pool:
        for k in range(1, MAX_STEPS + 1):
            if not await one_run(pool, run, expected, k):
                break
        else:
            pytest.fail(f"still cancelled after {MAX_STEPS} steps: raise MAX_STEPS")
        assert k > 2, "the scenario never waited: nothing was swept"
