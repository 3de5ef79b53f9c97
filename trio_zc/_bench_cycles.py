"""The library's own overhead: full lease cycles per second on the mock kernel.

A cycle is what an application does for every image, with the kernel's
work taken out: acquire a lease, write a small payload into it, seal it,
send it zero-copy (the policy's threshold is set to zero so that even small
payloads take the zero-copy path and its completion), let the completion
arrive and the memory return to the pool. The peer drops what arrives
(:meth:`MockPeer.discard`): a task reading it would add a pass through
Trio's scheduler to every cycle, which is the test's cost, not the
library's; so is the stack walk that records where each send was made
(``MockKernel(call_sites=False)``). The mock's completion task still runs
once per wake, as the real kernels' reapers do, and the mock still checks
every send's bytes at completion. One process, one thread: one core. The loop is
the "tight send loops" recipe's: ``send_lease`` is each cycle's
checkpoint, and taking the lease (``schedule=False``) is not a second one.
"""

from __future__ import annotations

import time

import attrs
import trio

from ._policy import ZeroCopyPolicy
from ._pool_open import open_pool


@attrs.frozen
class CycleResult:
    """How many full lease cycles ran, and in how much time."""

    cycles: int
    streams: int
    payload: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.cycles / self.seconds

    @property
    def per_cpu_second(self) -> float:
        return self.cycles / self.cpu_seconds if self.cpu_seconds else float("inf")


async def _cycles(cycles: int, streams: int, payload: int) -> CycleResult:
    from .testing import MockKernel  # the mock is test machinery: import it only here

    # Where each send was made is the mock's diagnostics, not the library's
    # work: it walks the stack on every send (see MockKernel's call_sites).
    mock = MockKernel(call_sites=False)
    policy = ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)
    data = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
    async with open_pool(max_bytes=max(streams, 4) * (1 << 20), kernel=mock, policy=policy) as pool:
        pairs = [mock.open_stream(pool) for _ in range(streams)]
        for _, peer in pairs:
            peer.discard()

        async def send(stream: trio.abc.HalfCloseableStream, n: int) -> None:
            from ._stream import ZeroCopyStream

            assert isinstance(stream, ZeroCopyStream)
            for _ in range(n):
                async with pool.lease(payload, schedule=False) as lease:
                    lease.write(data)
                    await stream.send_lease(lease.seal())
            await stream.send_eof()

        per_stream = cycles // streams
        t0, c0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as senders:
            for stream, _ in pairs:
                senders.start_soon(send, stream, per_stream)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        for stream, _ in pairs:
            await stream.aclose()  # waits for the last completions
        arrived = sum(peer.discarded for _, peer in pairs)
        for _, peer in pairs:
            await peer.aclose()
        done = pool.statistics().sent.completions
    if done < per_stream * streams:
        raise RuntimeError(f"only {done} of {per_stream * streams} sends completed")
    if arrived != per_stream * streams * payload:
        raise RuntimeError(f"{arrived} bytes arrived, not {per_stream * streams * payload}")
    return CycleResult(per_stream * streams, streams, payload, seconds, cpu)


def run_cycles(cycles: int = 100_000, *, streams: int = 1, payload: int = 1024) -> CycleResult:
    """Run *cycles* full lease cycles over *streams* mock streams; time them."""
    if cycles < streams or streams < 1 or payload < 1:
        raise ValueError("need cycles >= streams >= 1 and payload >= 1")
    return trio.run(_cycles, cycles, streams, payload)
