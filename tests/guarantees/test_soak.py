"""A bounded soak run: every kernel at once, hundreds of clients, resets and cancellations.

One pool per kernel (copy, msg_zerocopy, sendfile, io_uring, auto and the
mock), all open at the same time, each with a server that sends images of
1 KiB to 32 MiB to its own clients: 60 client tasks per real kernel over
loopback TCP (127.0.0.1 only) and 40 on the mock, each connecting, asking
for a few images at a time, verifying every one and reconnecting, until the
run's time is up. On the way:

- a client now and then resets its connection part-way through an image
  (``SO_LINGER`` 0, so the server's sends fail with ECONNRESET while the
  kernel still holds zero-copy sends of that connection);
- the server now and then cancels an image's send (or its wait for pool
  memory) after a random delay, and then closes that connection;
- leases are sometimes taken larger than the image and sealed short, and
  released in both ways (the scoped ``pool.lease()`` and explicitly).

Each image is a slice of one of a few random bases followed by a stamp
naming the kernel, the connection and the image, so every image is unique.
Its SHA-256 comes from hash states saved along the bases, never from pool
memory, and every client hashes every byte it receives; images that are
cut short (by a reset or a cancellation) are compared byte by byte instead,
as far as they got. At the end: zero corrupt images, every pool back to its
full capacity with nothing in flight, quarantined or leaked, and the
process's open file descriptors back to where they started.

It runs ``TRIO_ZC_SOAK_SECONDS`` seconds (default 60), under the ``slow``
marker; ``TRIO_ZC_SOAK_SEED`` changes the random choices and
``TRIO_ZC_SOAK_KERNELS`` (comma-separated) runs only some kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio

import trio_zc
from trio_zc.testing import MockKernel, MockPeer

if TYPE_CHECKING:
    from hashlib import _Hash

pytestmark = pytest.mark.slow

KiB: Final = 1 << 10
MiB: Final = 1 << 20

SOAK_SECONDS: Final = float(os.environ.get("TRIO_ZC_SOAK_SECONDS", "60"))
SEED: Final = int(os.environ.get("TRIO_ZC_SOAK_SEED", "20240607"))

ALL_KERNELS: Final = ("copy", "msg_zerocopy", "sendfile", "io_uring", "auto", "mock")
#: TRIO_ZC_SOAK_KERNELS (comma-separated) narrows the run to some kernels.
KERNELS: Final = tuple(
    k.strip() for k in os.environ.get("TRIO_ZC_SOAK_KERNELS", ",".join(ALL_KERNELS)).split(",") if k.strip()
)
#: Client tasks per kernel: 340 in all.
CLIENTS: Final = {"mock": 40, "copy": 60, "msg_zerocopy": 60, "sendfile": 60, "io_uring": 60, "auto": 60}
#: Each pool is small against what its clients ask for at once, so memory is reused all the time.
POOL_BYTES: Final = 128 * MiB
MIN_IMAGE: Final = 1 * KiB
MAX_IMAGE: Final = 32 * MiB
#: Images larger than this are "big": at most BIG_AT_ONCE of them per kernel at a time.
BIG_IMAGE: Final = 8 * MiB
BIG_AT_ONCE: Final = 2
EDGE_SIZES: Final = (
    MIN_IMAGE, 4 * KiB - 1, 4 * KiB, 4 * KiB + 1, 16 * KiB - 1, 16 * KiB, 16 * KiB + 1,
    MiB, 2 * MiB + 1, MAX_IMAGE - 1, MAX_IMAGE,
)  # fmt: skip
#: Per image: the client resets its connection part-way through it.
RESET_RATE: Final = 0.03
#: Per image: the server sends it under a cancel scope with a random deadline.
CUT_RATE: Final = 0.04
#: Per image: the lease is taken larger than the image and sealed short.
SHORT_SEAL_RATE: Final = 0.3
#: What each client asks its kernel's socket for (loopback would grow it to 32 MiB).
CLIENT_RCVBUF: Final = 1 * MiB
RECEIVE_CHUNK: Final = 1 * MiB
#: Past the soak's end: how long a client may go on receiving before it hangs up.
OVERRUN: Final = 1.0
#: Past the soak's end: how long clients, servers and pools may take to finish.
WIND_DOWN: Final = 180.0
#: Open files needed: two sockets per connection, and some.
NOFILE_NEEDED: Final = 4 * sum(CLIENTS.get(k, 0) for k in KERNELS) + 256

# Client -> server: images wanted, seed of the server's choices for them.
REQUEST: Final = struct.Struct("!IQ")
# Server -> client before each image: nbytes, base, variant, may be cut, connection, serial, SHA-256.
HEADER: Final = struct.Struct("!QBBBIQ32s")
# Ends every image: run nonce, kernel, connection, serial, a marker.
STAMP: Final = struct.Struct("!16sIIQ4s")
MARKER: Final = b"soak"


# -- the images ----------------------------------------------------------------------


@attrs.frozen
class Spec:
    """One image: ``bases[base][offset : offset + nbytes - STAMP.size]`` and its stamp."""

    nbytes: int
    base: int
    variant: int
    kernel: int
    connection: int
    serial: int


class Images:
    """Unique images cut from a few random bases, with SHA-256 digests that cost little."""

    BASES: Final = 3
    #: Where in a base an image may start: each start gives a different image at the same offset.
    OFFSETS: Final = (0, 4097, 65543, MiB + 13)
    #: Distance between the hash states saved along each (base, start).
    STEP: Final = 256 * KiB

    def __init__(self, rng: random.Random) -> None:
        self.nonce = rng.randbytes(16)
        length = MAX_IMAGE + max(self.OFFSETS)
        self.bases = [rng.randbytes(length) for _ in range(self.BASES)]
        # states[base][variant][k]: SHA-256 of the first k * STEP bytes from that start.
        self.states: list[list[list[_Hash]]] = []
        for base in self.bases:
            per_base = []
            with memoryview(base) as view:
                for start in self.OFFSETS:
                    h = hashlib.sha256()
                    chain = [h.copy()]
                    for k in range(start, start + MAX_IMAGE - self.STEP + 1, self.STEP):
                        h.update(view[k : k + self.STEP])
                        chain.append(h.copy())
                    per_base.append(chain)
            self.states.append(per_base)

    def stamp(self, spec: Spec) -> bytes:
        return STAMP.pack(self.nonce, spec.kernel, spec.connection, spec.serial, MARKER)

    def body(self, spec: Spec) -> memoryview:
        """The image without its stamp (a view of a base)."""
        start = self.OFFSETS[spec.variant]
        return memoryview(self.bases[spec.base])[start : start + spec.nbytes - STAMP.size]

    def digest(self, spec: Spec) -> bytes:
        start = self.OFFSETS[spec.variant]
        prefix = spec.nbytes - STAMP.size
        k = prefix // self.STEP
        h = self.states[spec.base][spec.variant][k].copy()
        with memoryview(self.bases[spec.base]) as view:
            h.update(view[start + k * self.STEP : start + prefix])
        h.update(self.stamp(spec))
        return h.digest()

    def expected(self, spec: Spec, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of the image."""
        prefix = spec.nbytes - STAMP.size
        parts = []
        if lo < prefix:
            with self.body(spec) as body:
                parts.append(bytes(body[lo : min(hi, prefix)]))
        if hi > prefix:
            parts.append(self.stamp(spec)[max(lo - prefix, 0) : hi - prefix])
        return b"".join(parts)


def image_size(rng: random.Random) -> int:
    """1 KiB..32 MiB, log-uniform, with the edges now and then."""
    if rng.random() < 0.1:
        return rng.choice(EDGE_SIZES)
    return min(MAX_IMAGE, int(math.exp(rng.uniform(math.log(MIN_IMAGE), math.log(MAX_IMAGE)))))


# -- one kernel's server and clients ---------------------------------------------------------


@attrs.define(eq=False)
class KernelRun:
    name: str
    index: int
    images: Images
    pool: trio_zc.BufferPool | None = None
    big: trio.Semaphore = attrs.Factory(lambda: trio.Semaphore(BIG_AT_ONCE))
    port: int = 0
    connections: int = 0
    active_handlers: int = 0
    # What the server did.
    images_sent: int = 0
    cut: int = 0
    cut_in_acquire: int = 0
    server_saw_reset: int = 0
    short_seals: int = 0
    # What the clients saw.
    good: int = 0
    good_bytes: int = 0
    reset: int = 0
    cut_seen: int = 0
    stopped_at_end: int = 0
    corrupt: list[str] = attrs.Factory(list)
    final: trio_zc.PoolStatistics | None = None
    closed: trio_zc.PoolStatistics | None = None

    @property
    def the_pool(self) -> trio_zc.BufferPool:
        assert self.pool is not None
        return self.pool

    def note_closed(self) -> None:
        if self.pool is not None:
            self.closed = self.pool.statistics()

    # -- the server -----------------------------------------------------------------

    async def serve(self, stream: trio_zc.ZeroCopyStream) -> None:
        self.connections += 1
        connection = self.connections
        self.active_handlers += 1
        try:
            async with stream:
                await self.serve_requests(stream, connection)
        except trio.BrokenResourceError:
            # The client reset the connection (or went away mid-image).
            self.server_saw_reset += 1
        finally:
            self.active_handlers -= 1

    async def serve_requests(self, stream: trio_zc.ZeroCopyStream, connection: int) -> None:
        serial = 0
        while True:
            request = await receive_exactly(stream, REQUEST.size, eof_ok=True)
            if not request:
                return
            count, seed = REQUEST.unpack(request)
            rng = random.Random(seed)
            for _ in range(count):
                spec = Spec(
                    nbytes=image_size(rng),
                    base=rng.randrange(Images.BASES),
                    variant=rng.randrange(len(Images.OFFSETS)),
                    kernel=self.index,
                    connection=connection,
                    serial=serial,
                )
                serial += 1
                may_cut = rng.random() < CUT_RATE
                header = HEADER.pack(
                    spec.nbytes, spec.base, spec.variant, may_cut, connection, spec.serial,
                    self.images.digest(spec),
                )  # fmt: skip
                await stream.send_all(header)
                if not may_cut:
                    await self.send_image(stream, spec, rng)
                    continue
                # Cancel the send (or the wait for memory before it) after a random delay;
                # if it was cut short, the stream is mid-image: close it.
                delay = rng.choice([0.0, rng.uniform(0, 0.002), rng.uniform(0, 0.05)])
                state = {"acquired": False}
                with trio.move_on_after(delay) as scope:
                    await self.send_image(stream, spec, rng, state)
                if scope.cancelled_caught:
                    self.cut += 1
                    self.cut_in_acquire += not state["acquired"]
                    return

    async def send_image(
        self, stream: trio_zc.ZeroCopyStream, spec: Spec, rng: random.Random, state: dict[str, bool] | None = None
    ) -> None:
        pool = self.the_pool
        short = rng.random() < SHORT_SEAL_RATE
        extra = min(rng.randint(1, 64 * KiB), pool.max_bytes - spec.nbytes) if short else 0
        scoped = rng.random() < 0.5
        async with self.big if spec.nbytes > BIG_IMAGE else contextlib.nullcontext():
            if scoped:
                async with pool.lease(spec.nbytes + extra) as lease:
                    if state is not None:
                        state["acquired"] = True
                    sealed = self.write(lease, spec, extra)
                    await stream.send_lease(sealed)
            else:
                lease = await pool.acquire(spec.nbytes + extra)
                if state is not None:
                    state["acquired"] = True
                try:
                    sealed = self.write(lease, spec, extra)
                except BaseException:
                    lease.release()
                    raise
                try:
                    await stream.send_lease(sealed)
                finally:
                    sealed.release()
        self.images_sent += 1

    def write(self, lease: trio_zc.WritableLease, spec: Spec, extra: int) -> trio_zc.SealedLease:
        with self.images.body(spec) as body:
            end = lease.write(body)
        lease.write(self.images.stamp(spec), end)
        if extra:
            self.short_seals += 1
            return lease.seal(spec.nbytes)
        return lease.seal()

    # -- the clients ------------------------------------------------------------------

    async def connect(self, server: trio.Nursery) -> tuple[trio.abc.Stream, Callable[[], Awaitable[None]]]:
        """A connection to this kernel's server, and how to reset it."""
        if self.name == "mock":
            kernel = self.the_pool._kernel
            assert isinstance(kernel, MockKernel)
            stream, peer = kernel.open_stream(self.the_pool)
            server.start_soon(self.serve, stream)

            async def reset_mock() -> None:
                assert isinstance(peer, MockPeer)
                peer.reset()
                await peer.aclose()

            return peer, reset_mock
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
            await sock.connect(("127.0.0.1", self.port))
        except BaseException:
            sock.close()
            raise
        tcp = trio.SocketStream(sock)

        async def reset_tcp() -> None:
            # An RST instead of a FIN: the server's sends fail with ECONNRESET.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await tcp.aclose()

        return tcp, reset_tcp

    async def client(self, server: trio.Nursery, rng: random.Random, deadline: float) -> None:
        while trio.current_time() < deadline:
            stream, reset = await self.connect(server)
            ended = "error"
            try:
                # Sessions end at a request boundary past the deadline; one
                # that is still receiving OVERRUN seconds later (hundreds of
                # clients share the machine: a 32 MiB image may take a while)
                # is closed then, mid-image, which the server sees as a reset.
                with trio.CancelScope(deadline=deadline + OVERRUN) as scope:
                    ended = await self.session(stream, reset, rng, deadline)
                self.stopped_at_end += scope.cancelled_caught
            finally:
                if ended != "closed":
                    await stream.aclose()

    async def session(
        self, stream: trio.abc.Stream, reset: Callable[[], Awaitable[None]], rng: random.Random, deadline: float
    ) -> str:
        """Requests on one connection, until the end, a reset or a cut; how it ended."""
        # Whether the last image came under a cancel scope: the server closes
        # the connection if the scope was cancelled, which may happen even
        # though every byte went out (a cancelled send leaves the stream in
        # an unknown state). Closing with our next request unread makes the
        # server's kernel reset the connection (and may drop what we have
        # not read yet): for us, the same as a cut.
        may_cut = False
        try:
            for _ in range(rng.randint(1, 6)):
                if trio.current_time() >= deadline:
                    break
                count = rng.randint(1, 4)
                await stream.send_all(REQUEST.pack(count, rng.getrandbits(64)))
                for _ in range(count):
                    header = await receive_exactly(stream, HEADER.size, eof_ok=True)
                    if not header:
                        if may_cut:
                            self.cut_seen += 1
                        else:
                            self.corrupt.append(f"{self.name}: the server closed the connection between images")
                        return "eof"
                    nbytes, base, variant, cut_flag, connection, serial, digest = HEADER.unpack(header)
                    may_cut = bool(cut_flag)
                    spec = Spec(nbytes, base, variant, self.index, connection, serial)
                    if digest != self.images.digest(spec):
                        self.corrupt.append(f"{self.name}: header of {spec} carries a wrong digest")
                        return "eof"
                    reset_at = rng.randrange(nbytes) if rng.random() < RESET_RATE else None
                    ended = await self.receive_image(stream, spec, digest, may_cut, reset_at)
                    if ended == "reset":
                        await reset()
                        self.reset += 1
                        return "closed"
                    if ended != "ok":
                        return ended
        except trio.BrokenResourceError:
            if not may_cut:
                raise
            self.cut_seen += 1
            return "eof"
        return "done"

    async def receive_image(
        self, stream: trio.abc.Stream, spec: Spec, digest: bytes, may_cut: bool, reset_at: int | None
    ) -> str:
        # Hash every byte; where the image may end early, also compare every byte as it comes.
        compare = may_cut or reset_at is not None
        h = hashlib.sha256()
        received = 0
        end = spec.nbytes if reset_at is None else reset_at
        while received < end:
            # (A reset by the server raises BrokenResourceError: session() decides.)
            chunk = await stream.receive_some(min(end - received, RECEIVE_CHUNK))
            if not chunk:
                if may_cut:
                    self.cut_seen += 1
                    return "cut"
                self.corrupt.append(f"{self.name}: {spec}: EOF after {received} bytes")
                return "eof"
            if compare and chunk != self.images.expected(spec, received, received + len(chunk)):
                self.corrupt.append(f"{self.name}: {spec}: wrong bytes in [{received}, {received + len(chunk)})")
                return "eof"
            h.update(chunk)
            received += len(chunk)
        if reset_at is not None:
            return "reset"
        if h.digest() != digest:
            self.corrupt.append(f"{self.name}: {spec}: SHA-256 mismatch")
            return "eof"
        self.good += 1
        self.good_bytes += spec.nbytes
        return "ok"


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int, *, eof_ok: bool = False) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            if eof_ok and not buf:
                return b""
            raise trio.BrokenResourceError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def nofile_limit(needed: int) -> Iterator[None]:
    """Raise RLIMIT_NOFILE's soft limit to *needed* (at most the hard limit) for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def check_pool_whole(run: KernelRun) -> None:
    stats = run.final
    assert stats is not None
    where = f"{run.name}: {stats}"
    assert stats.free_bytes == stats.largest_free_block == stats.max_bytes, where
    assert stats.sends_in_flight == stats.tasks_waiting == 0, where
    assert stats.writable_leases == stats.sealed_leases == stats.draining_leases == 0, where
    assert stats.abandoned_leases == 0, where
    # Resets and cancellations must not cost memory: the kernel reports the
    # sends of a reset connection done, so nothing is ever quarantined here.
    assert stats.quarantined_leases == stats.quarantined_bytes == 0, where
    assert stats.sent.zerocopy_calls == stats.sent.completions, where
    assert stats.sent.quarantined_sends == stats.sent.malformed_records == 0, where
    closed = run.closed
    assert closed is not None and closed.closed, where
    assert closed.leaked_at_close == closed.quarantined_bytes == 0, f"{run.name}: {closed}"


async def test_soak_every_kernel_hundreds_of_clients_resets_and_cancellations() -> None:
    unknown = set(KERNELS) - set(ALL_KERNELS)
    assert not unknown, f"TRIO_ZC_SOAK_KERNELS names unknown kernels: {sorted(unknown)}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE_NEEDED:
        pytest.skip(f"RLIMIT_NOFILE's hard limit ({hard}) is below the {NOFILE_NEEDED} files the soak needs")
    rng = random.Random(SEED)
    images = Images(rng)
    runs = [KernelRun(name, index, images) for index, name in enumerate(KERNELS)]
    with nofile_limit(NOFILE_NEEDED):
        fds_before = open_fds()
        started = time.perf_counter()
        with trio.fail_after(SOAK_SECONDS + WIND_DOWN):
            await soak(runs, rng)
        elapsed = time.perf_counter() - started
        fds_after = open_fds()

    for run in runs:
        print(
            f"[soak {run.name}] {run.good} images verified ({run.good_bytes / 2**30:.2f} GiB,"
            f" {run.good_bytes / elapsed / 1e9:.2f} GB/s), {run.connections} connections,"
            f" {run.reset} resets by clients ({run.server_saw_reset} seen by the server),"
            f" {run.cut} sends cancelled ({run.cut_in_acquire} while waiting for memory;"
            f" {run.cut_seen} seen cut by clients), {run.short_seals} short seals,"
            f" {run.stopped_at_end} clients hung up mid-image at the end;"
            f" pool: {run.final}"
        )
    print(f"[soak] {elapsed:.1f} s (TRIO_ZC_SOAK_SECONDS={SOAK_SECONDS:g}, seed {SEED});"
          f" open fds {fds_before} -> {fds_after}")

    corrupt = [line for run in runs for line in run.corrupt]
    assert corrupt == [], f"{len(corrupt)} corrupt images: {corrupt[:20]}"
    for run in runs:
        check_pool_whole(run)
        assert run.good > 0, run.name
    assert fds_after == fds_before, (fds_before, fds_after)
    # The hard cases happened (some only show up in a run of a few seconds or more).
    if SOAK_SECONDS >= 10:
        assert sum(run.reset for run in runs) > 0
        assert sum(run.cut for run in runs) > 0
        assert sum(run.cut_seen for run in runs) > 0
        assert sum(run.short_seals for run in runs) > 0


async def soak(runs: list[KernelRun], rng: random.Random) -> None:
    async with contextlib.AsyncExitStack() as pools:
        for run in runs:
            kernel: str | MockKernel = MockKernel() if run.name == "mock" else run.name
            # Keep zero-copy on although loopback reports every send COPIED ("auto" keeps its default).
            policy = None if run.name == "auto" else trio_zc.ZeroCopyPolicy(copied_streak=0)
            # Registered first so that it runs once the pool's block has ended.
            pools.callback(run.note_closed)
            run.pool = await pools.enter_async_context(
                trio_zc.open_pool(max_bytes=POOL_BYTES, kernel=kernel, policy=policy)
            )
        async with trio.open_nursery() as server:
            for run in runs:
                if run.name != "mock":
                    listeners = await server.start(
                        partial(trio_zc.serve_tcp, run.serve, 0, pool=run.the_pool, host="127.0.0.1")
                    )
                    run.port = listeners[0].listener.socket.getsockname()[1]
            deadline = trio.current_time() + SOAK_SECONDS
            async with trio.open_nursery() as clients:
                for run in runs:
                    for _ in range(CLIENTS[run.name]):
                        clients.start_soon(run.client, server, random.Random(rng.getrandbits(64)), deadline)
            # Every client is done; the servers' handlers end when they see EOF.
            while any(run.active_handlers for run in runs):
                await trio.sleep(0.01)
            server.cancel_scope.cancel()
        for run in runs:
            run.final = run.the_pool.statistics()
