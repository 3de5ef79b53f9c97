"""Faults: resets, killed peers, cancellation storms, stuck closes, counter wrap-around.

What is covered where (kernels: the real ones over loopback TCP on
127.0.0.1, and the mock):

1. Peer resets the connection mid-image
   - ``test_peer_reset_mid_image``: the receiving side closes with
     SO_LINGER 0 (the mock: :meth:`MockPeer.reset`) while an 8 MiB send is
     part-way through and more leases wait behind it; every kernel.
   - ``test_peer_process_killed_mid_image``: the receiver is a child process
     started here (plain sockets, loopback only), killed with SIGKILL by its
     own PID; every real kernel (the mock has no processes).
   In both, ``send_lease`` raises :class:`trio.BrokenResourceError`, the
   receiver's bytes are the image's first ones, the statistics count no more
   bytes sent than part of that image (a regression check: io_uring counted
   every request's full length, even for a request the reset cut short), and
   the in-flight leases are *drained*,
   not quarantined: a reset makes Linux free the socket's queued data, which
   reports those zero-copy sends complete while the socket is still open
   (MSG_ZEROCOPY queues the completions on the error queue, io_uring posts
   the notifications), and the mock reports dropped sends the same way. So
   the pool reaches full capacity again with nothing quarantined, checked in
   ``pool.statistics()`` before and after the stream is closed; closing warns
   about nothing (a QuarantineWarning would fail the test).

2. Cancellation storms
   - ``test_cancellation_storm``: on every kernel, three connections at a
     time with four sender tasks each (a lock per stream, as a stream allows
     one sender), a small pool so acquires wait, and a slow receiver so sends
     block; every operation runs under a random ``move_on_after`` and a
     storm task cancels random operations and whole connections, all from
     seeded ``random.Random`` streams. A connection whose send was cut short
     stops sending (its byte stream is no longer framed) and closes; the
     receiver checks every whole image against its digest and the cut one as
     a prefix. Afterwards: only Cancelled was raised, no lease was reused
     early (the mock's PrematureReuseError would surface; real kernels would
     corrupt an image), every zero-copy call completed, and the pool is
     whole again.

3. Closing with sends in flight (mock kernel, autojump clock)
   - ``test_close_with_held_completions_waits_then_quarantines``: completions
     held for good; ``aclose`` waits exactly the drain timeout plus the
     abort's grace, warns, and quarantines every lease; completions arriving
     later change nothing.
   - ``test_completions_before_the_deadline_drain_cleanly``: released part
     way through the wait (coalesced, reversed); ``aclose`` returns then,
     the peer gets every byte and a clean EOF (no reset), nothing quarantined.
   - ``test_close_quarantines_only_what_did_not_complete``: some calls
     complete before the deadline; exactly the leases with a missing
     completion are quarantined (an adopted one's ``wait_reusable`` raises
     LeaseQuarantinedError), the others come back.
   - ``test_cancelled_close_skips_the_wait_not_the_safety``.
   - ``test_io_uring_close_quarantines_a_completion_that_never_comes``: the
     real io_uring kernel (test_stream.py has the msg_zerocopy case); the
     notification that turns up after the quarantine changes nothing.
   - ``test_close_drains_cleanly_when_the_peer_catches_up``: the real
     msg_zerocopy and io_uring kernels, real time: ``aclose`` is waiting when
     the peer starts reading, and returns without a reset.

4. The zero-copy counter wrapping at 2**32
   - ``test_counter_wraps_in_a_long_running_stream`` (mock): thousands of
     calls across the wrap, with completions coalesced, reversed, split into
     shuffled sub-ranges (some crossing the wrap) and deferred; every lease
     is freed exactly once, only after its last call completed (seen in the
     pool's allocator, and in the arena of a pool that protects sealed leases).
   - ``test_mock_complete_keeps_the_rest_of_held_records``: regression test
     for the bug the test above found in :meth:`MockPeer.complete`.
   - ``test_msg_zerocopy_counter_continuity``: the real kernel's counter
     cannot be made to wrap in a test. It starts at 0 on every socket, and
     Linux offers no way to set it; reaching 2**32 takes 4.3 billion
     successful ``send(MSG_ZEROCOPY)`` calls, each pinning pages and queuing
     a notification: days at the few tens of thousands of calls a second
     this suite makes from Python, and over 70 minutes of a core even at a
     million a second. The wrap logic lives in the parser and the
     tracker, which are the same code for the mock's records, so the mock
     test covers it; against the real kernel this test checks that the
     tracker's counter follows the kernel's over a few thousand calls (every
     call completed, no range rejected, the mirrored counter equal to the
     number of calls).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import attrs
import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool
from trio_zc._kernels._closing import ABORT_GRACE
from trio_zc._kernels._socket import SocketTransport
from trio_zc.testing import MockKernel, MockPeer

from ..builds import pure_only
from ..streams import KERNELS, Peer, receive_exactly, socket_pair, stream_pair

MiB = 1 << 20
KiB = 1 << 10
MASK = 0xFFFFFFFF
#: Every kernel, "auto" included (which copies on loopback).
ALL_KERNELS = [*KERNELS, "auto"]
REAL_KERNELS = [name for name in ALL_KERNELS if name != "mock"]
# Keep zero-copy on although loopback reports every send COPIED.
ALWAYS_ZC = ZeroCopyPolicy(copied_streak=0)


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def sealed_with(pool: trio_zc.BufferPool, data: bytes) -> trio_zc.SealedLease:
    lease = await pool.acquire(len(data))
    lease.write(data)
    return lease.seal()


def assert_whole(pool: trio_zc.BufferPool) -> None:
    """Every byte of the pool is free again, nothing in flight, nothing quarantined."""
    stats = pool.statistics()
    assert stats.free_bytes == stats.largest_free_block == stats.max_bytes, stats
    assert stats.sends_in_flight == stats.sent.bytes_in_flight == 0, stats
    assert stats.writable_leases == stats.sealed_leases == 0, stats
    assert stats.draining_leases == stats.abandoned_leases == 0, stats
    assert stats.quarantined_leases == stats.quarantined_bytes == 0, stats
    assert stats.sent.quarantined_sends == stats.sent.malformed_records == 0, stats.sent
    assert stats.sent.completions == stats.sent.zerocopy_calls, stats.sent


def pin_send_buffer(stream: trio_zc.ZeroCopyStream, nbytes: int) -> None:
    """Keep a real stream's send buffer small, so that big sends stay part-way for a while."""
    sock = getattr(stream._channel.transport, "sock", None)
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, nbytes)


# -- 1. the peer resets, or dies ------------------------------------------------------

IMAGE = 8 * MiB
IMAGES = 4
#: What the receiver reads before it goes away: part of the first image.
READ_FIRST = MiB + 12345


@attrs.define
class Outcome:
    #: Images whose send_lease returned, once the sender stopped.
    sent: int | None = None
    error: BaseException | None = None
    #: The pool's sends in flight just before the peer went.
    in_flight_at_reset: int = -1


async def send_images_until_broken(
    stream: trio_zc.ZeroCopyStream, leases: list[trio_zc.SealedLease], outcome: Outcome
) -> None:
    sent = 0
    try:
        for lease in leases:
            await stream.send_lease(lease)
            sent += 1
    except trio.BrokenResourceError as exc:
        outcome.error = exc
    outcome.sent = sent


async def check_broken_and_recovered(
    pool: trio_zc.BufferPool,
    stream: trio_zc.ZeroCopyStream,
    leases: list[trio_zc.SealedLease],
    outcome: Outcome,
    name: str,
) -> None:
    try:
        # The first image was part-way when the peer went: nothing completed.
        assert isinstance(outcome.error, trio.BrokenResourceError), outcome
        assert outcome.sent == 0
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_lease(leases[1])  # the stream stays broken
        for lease in leases:
            lease.release()
        # Drained, not quarantined: the reset made the kernel report every
        # send it dropped while the socket is still open.
        with trio.fail_after(10):
            while pool.statistics().sends_in_flight:
                await trio.sleep(0.01)
        stats = pool.statistics()
        assert stats.quarantined_leases == 0 and stats.draining_leases == 0
        assert stats.free_bytes == stats.max_bytes
        # The running send holds its lease; with zero-copy, so do the calls
        # the kernel accepted: those really were in flight when the peer went.
        if name in ("msg_zerocopy", "io_uring", "mock"):
            assert outcome.in_flight_at_reset >= 2, outcome
            assert stats.sent.zerocopy_calls > 0
        else:
            assert outcome.in_flight_at_reset == 1, outcome
            assert stats.sent.zerocopy_calls == 0
        # What the statistics say went out is part of the first image: the
        # bytes the kernel took, not the bytes asked for.
        sent = stats.sent
        assert sent.bytes_zerocopy + sent.bytes_kernel_copied + sent.bytes_copied < IMAGE, sent
    finally:
        await stream.aclose()
    assert_whole(pool)


@pytest.mark.parametrize("name", ALL_KERNELS)
async def test_peer_reset_mid_image(name: str) -> None:
    the_kernel = MockKernel(socket_buffer=256 * KiB, receive_buffer=64 * KiB) if name == "mock" else name
    async with open_pool(max_bytes=IMAGES * IMAGE, kernel=the_kernel, policy=ALWAYS_ZC) as pool:
        images = [pattern(i, IMAGE) for i in range(IMAGES)]
        leases = [await sealed_with(pool, image) for image in images]
        reset: Callable[[], None]
        peer: trio.abc.ReceiveStream
        if isinstance(the_kernel, MockKernel):
            stream, mock_peer = the_kernel.open_stream(pool)
            peer = mock_peer
            reset = mock_peer.reset
        else:
            a, b = await socket_pair()
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
            stream = trio_zc.ZeroCopyStream(a, pool=pool)
            pin_send_buffer(stream, 256 * KiB)
            peer = trio.SocketStream(b)

            def reset() -> None:
                # Close with SO_LINGER 0: the kernel sends RST, not FIN.
                b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                b.close()

        outcome = Outcome()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_images_until_broken, stream, leases, outcome)
                got = await receive_exactly(peer, READ_FIRST)
                assert got == images[0][:READ_FIRST]
                # Let the sender fill the connection again, part-way through image 0.
                await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                assert outcome.sent is None
                outcome.in_flight_at_reset = pool.statistics().sends_in_flight
                reset()
        finally:
            await peer.aclose()
        await check_broken_and_recovered(pool, stream, leases, outcome, name)


#: The receiver the test kills: reads a prefix, reports its digest, waits.
RECEIVER = """
import hashlib, socket, sys, time
port, need = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.connect(("127.0.0.1", port))
h, got = hashlib.sha256(), 0
while got < need:
    chunk = s.recv(min(65536, need - got))
    if not chunk:
        break
    h.update(chunk)
    got += len(chunk)
print(got, h.hexdigest(), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("name", REAL_KERNELS)
async def test_peer_process_killed_mid_image(name: str) -> None:
    async with open_pool(max_bytes=IMAGES * IMAGE, kernel=name, policy=ALWAYS_ZC) as pool:
        images = [pattern(i, IMAGE) for i in range(IMAGES)]
        leases = [await sealed_with(pool, image) for image in images]
        listener = trio.socket.socket()
        with listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", RECEIVER, str(port), str(READ_FIRST)], stdout=subprocess.PIPE
            )
            try:
                with trio.fail_after(20):
                    sock, _ = await listener.accept()
                stream = trio_zc.ZeroCopyStream(sock, pool=pool)
                pin_send_buffer(stream, 256 * KiB)
                outcome = Outcome()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_images_until_broken, stream, leases, outcome)
                    assert proc.stdout is not None
                    line = b""
                    with trio.fail_after(20):
                        while not line.endswith(b"\n"):
                            chunk = await proc.stdout.receive_some()
                            assert chunk, "the receiver exited early"
                            line += chunk
                    got, digest = line.split()
                    assert int(got) == READ_FIRST
                    assert digest.decode() == hashlib.sha256(images[0][:READ_FIRST]).hexdigest()
                    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                    assert outcome.sent is None
                    outcome.in_flight_at_reset = pool.statistics().sends_in_flight
                    os.kill(proc.pid, signal.SIGKILL)
                    with trio.fail_after(20):
                        assert await proc.wait() == -signal.SIGKILL
            finally:
                if proc.returncode is None:
                    os.kill(proc.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await proc.wait()
                    if proc.stdout is not None:
                        await proc.stdout.aclose()
        await check_broken_and_recovered(pool, stream, leases, outcome, name)


# -- 2. cancellation storms -------------------------------------------------------------

STORM_SEED = 6_2024
#: Connections open at a time, each with its own sender tasks.
STORM_SLOTS = 3
STORM_TASKS = 4
#: Sends each slot attempts, over however many connections it takes.
STORM_OPS = 60
#: The most connections a slot opens (a storm can cut each one short).
STORM_MAX_CONNECTIONS = 40
STORM_SIZES = (16 * KiB + 1, 64 * KiB, 200 * KiB, 700 * KiB, 2 * MiB)
STORM_POOL = 4 * MiB
#: Send and receive buffers: small, so that sends block and stay part-way.
STORM_BUFFER = 64 * KiB
# magic, slot, connection, sequence number, length, SHA-256 of the image
FRAME = struct.Struct("!4sIIII32s")
MAGIC = b"IMG!"


def storm_image(slot: int, index: int, seq: int, size: int) -> bytes:
    return random.Random(f"{STORM_SEED}/{slot}/{index}/{seq}").randbytes(size)


@attrs.define(eq=False)
class StormConnection:
    slot: int
    index: int
    lock: trio.Lock = attrs.Factory(trio.Lock)
    next_seq: int = 0
    #: A send was cut short by a cancellation: nothing more may follow it.
    retired: bool = False
    cut_seq: int | None = None
    #: Sequence numbers whose send_lease returned, and those that arrived whole.
    completed: set[int] = attrs.Factory(set)
    received_whole: set[int] = attrs.Factory(set)
    received_cut: int | None = None


@attrs.define
class StormReport:
    attempted: int = 0
    cancelled: int = 0
    cut: int = 0
    completed: int = 0
    released_in_flight: int = 0
    connections: list[StormConnection] = attrs.Factory(list)


@attrs.define
class StormTargets:
    """The cancel scopes the storm task picks from."""

    operations: list[trio.CancelScope] = attrs.Factory(list)
    connections: list[trio.CancelScope] = attrs.Factory(list)


async def storm_send_one(
    pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, conn: StormConnection, size: int, report: StormReport
) -> None:
    lease = await pool.acquire(size)  # the pool is small: often waits
    handle: trio_zc.WritableLease | trio_zc.SealedLease = lease
    try:
        seq = conn.next_seq
        conn.next_seq += 1
        image = storm_image(conn.slot, conn.index, seq, size)
        lease.write(image)
        sealed = handle = lease.seal()
        frame = FRAME.pack(MAGIC, conn.slot, conn.index, seq, size, hashlib.sha256(image).digest())
        async with conn.lock:
            if conn.retired:
                return
            try:
                await stream.send_all(frame)
                await stream.send_lease(sealed)
            except trio.Cancelled:
                # Any prefix of the frame may have gone out: the byte stream
                # is no longer framed, so this connection sends nothing more.
                conn.retired = True
                conn.cut_seq = seq
                report.cut += 1
                raise
            conn.completed.add(seq)
            report.completed += 1
    finally:
        # Released at once, whatever the kernel still holds.
        if isinstance(handle, trio_zc.SealedLease):
            report.released_in_flight += handle.sends_in_flight > 0
        handle.release()


async def storm_sender(
    pool: trio_zc.BufferPool,
    stream: trio_zc.ZeroCopyStream,
    conn: StormConnection,
    budget: list[int],
    rng: random.Random,
    targets: StormTargets,
    report: StormReport,
) -> None:
    while not conn.retired and budget[0] > 0:
        budget[0] -= 1
        report.attempted += 1
        size = rng.choice(STORM_SIZES)
        with trio.move_on_after(rng.uniform(0, 0.1)) as scope:
            targets.operations.append(scope)
            try:
                await storm_send_one(pool, stream, conn, size, report)
            finally:
                targets.operations.remove(scope)
        report.cancelled += scope.cancelled_caught


async def storm_receiver(peer: Peer, conn: StormConnection) -> None:
    """Check every frame: whole ones against their digest, a cut last one as a prefix."""
    buf = bytearray()
    eof = False

    async def fill(n: int) -> None:
        nonlocal eof
        while len(buf) < n and not eof:
            chunk = await peer.receive_some(256 * KiB)
            if chunk:
                buf.extend(chunk)
            else:
                eof = True

    while True:
        await fill(FRAME.size)
        if len(buf) < FRAME.size:
            # The end of the stream, or a frame cut inside its header.
            assert MAGIC.startswith(bytes(buf[:4])), bytes(buf[:8])
            assert not buf or conn.cut_seq is not None
            break
        magic, slot, index, seq, size, digest = FRAME.unpack_from(buf)
        assert (magic, slot, index) == (MAGIC, conn.slot, conn.index)
        assert seq not in conn.received_whole
        await fill(FRAME.size + size)
        body = bytes(buf[FRAME.size : FRAME.size + size])
        expected = storm_image(slot, index, seq, size)
        if len(body) < size:
            assert eof and body == expected[: len(body)], f"cut image {seq} is not a prefix"
            conn.received_cut = seq
            break
        assert hashlib.sha256(body).digest() == digest == hashlib.sha256(expected).digest(), (
            f"connection {slot}/{index}: image {seq} of {size} bytes arrived corrupted"
        )
        conn.received_whole.add(seq)
        del buf[: FRAME.size + size]
    await peer.aclose()


async def storm_connection(
    pool: trio_zc.BufferPool,
    conn: StormConnection,
    budget: list[int],
    rng: random.Random,
    targets: StormTargets,
    report: StormReport,
) -> None:
    stream, peer = await stream_pair(pool)
    pin_send_buffer(stream, STORM_BUFFER)
    if isinstance(peer, trio_zc.ZeroCopyStream):
        peer._channel.transport.sock.setsockopt(  # type: ignore[attr-defined]
            socket.SOL_SOCKET, socket.SO_RCVBUF, STORM_BUFFER
        )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(storm_receiver, peer, conn)
        with trio.CancelScope() as scope:
            targets.connections.append(scope)
            try:
                async with trio.open_nursery() as senders:
                    for task in range(STORM_TASKS):
                        task_rng = random.Random(rng.random() + task)
                        senders.start_soon(storm_sender, pool, stream, conn, budget, task_rng, targets, report)
            finally:
                targets.connections.remove(scope)
        # Never cancelled: closing waits for the sends in flight to complete.
        await stream.aclose()


async def storm_slot(
    pool: trio_zc.BufferPool, slot: int, targets: StormTargets, report: StormReport
) -> None:
    rng = random.Random(STORM_SEED * 100 + slot)
    budget = [STORM_OPS]
    for index in range(STORM_MAX_CONNECTIONS):
        if budget[0] <= 0:
            break
        conn = StormConnection(slot, index)
        report.connections.append(conn)
        await storm_connection(pool, conn, budget, rng, targets, report)


async def storm(targets: StormTargets, rng: random.Random, done: trio.Event) -> None:
    while not done.is_set():
        await trio.sleep(rng.expovariate(250))  # about 4 ms apart
        if targets.connections and rng.random() < 0.05:
            rng.choice(targets.connections).cancel()
        elif targets.operations:
            rng.choice(targets.operations).cancel()


@pytest.mark.parametrize("name", ALL_KERNELS)
async def test_cancellation_storm(name: str) -> None:
    the_kernel = (
        MockKernel(socket_buffer=STORM_BUFFER, receive_buffer=STORM_BUFFER) if name == "mock" else name
    )
    report = StormReport()
    targets = StormTargets()
    async with open_pool(max_bytes=STORM_POOL, kernel=the_kernel, policy=ALWAYS_ZC) as pool:
        # Anything but Cancelled (BusyResourceError, BrokenResourceError, the
        # mock's PrematureReuseError, a failed check) comes out of here.
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                done = trio.Event()
                nursery.start_soon(storm, targets, random.Random(STORM_SEED), done)
                async with trio.open_nursery() as slots:
                    for slot in range(STORM_SLOTS):
                        slots.start_soon(storm_slot, pool, slot, targets, report)
                done.set()
        # Every stream is closed: all the memory is back, nothing quarantined.
        assert_whole(pool)
        stats = pool.statistics()
    assert stats.leaked_at_close == 0
    # The storm really hit sends part-way, and images still got through.
    assert report.cut > 0 and report.completed > 0, report
    assert report.cancelled >= report.cut
    for conn in report.connections:
        # Every send that returned arrived whole; of the one cut short, a
        # prefix (or all of it: io_uring finishes a request it accepted).
        assert conn.completed <= conn.received_whole, conn
        assert conn.received_whole <= conn.completed | {conn.cut_seq}, conn
        assert conn.received_cut in (None, conn.cut_seq), conn
    if name in ("msg_zerocopy", "io_uring", "mock"):
        # The hazard was there: leases released while the kernel held them.
        assert report.released_in_flight > 0, report
    print(
        f"[storm {name}] attempted={report.attempted} completed={report.completed}"
        f" cancelled={report.cancelled} cut={report.cut} connections={len(report.connections)}"
        f" released_in_flight={report.released_in_flight} {stats.sent}"
    )


# -- 3. closing with sends in flight ------------------------------------------------

LEASE = 100_000
#: Each lease goes out in this many zero-copy calls (accept_at_most).
CALL = 40_000
CALLS_PER_LEASE = -(-LEASE // CALL)
PAGE = 4096


def block(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


async def send_held(
    pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream, peer: MockPeer, leases: list[trio_zc.SealedLease]
) -> bytes:
    """Send *leases* with completions held; the peer reads all of it. What it read."""
    peer.accept_at_most(CALL)
    peer.hold_completions()
    for lease in leases:
        await stream.send_lease(lease)
    total = sum(lease.nbytes for lease in leases)
    got = await peer.receive_exactly(total)
    await trio.testing.wait_all_tasks_blocked()
    assert stream.statistics().sends_in_flight == len(leases) * CALLS_PER_LEASE
    return got


async def test_close_with_held_completions_waits_then_quarantines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=4 * MiB, kernel=mock, policy=ALWAYS_ZC, drain_timeout=60) as pool:
        stream, peer = mock.open_stream(pool, drain_timeout=5)
        images = [pattern(100 + i, LEASE) for i in range(3)]
        leases = [await sealed_with(pool, image) for image in images]
        assert await send_held(pool, stream, peer, leases) == b"".join(images)
        for lease in leases:
            lease.release()
        assert pool.statistics().draining_leases == 3
        start = trio.current_time()
        with pytest.warns(trio_zc.QuarantineWarning, match=f"with {3 * CALLS_PER_LEASE} zero-copy send"):
            await stream.aclose()
        # The whole drain deadline, then the abort's grace: nothing came.
        assert trio.current_time() - start == 5 + ABORT_GRACE
        sent = stream.statistics().sent
        assert sent.quarantined_sends == 3 * CALLS_PER_LEASE and sent.completions == 0
        stats = pool.statistics()
        assert stats.sends_in_flight == stats.draining_leases == 0
        assert stats.quarantined_leases == 3 and stats.quarantined_bytes == 3 * block(LEASE)
        assert stats.free_bytes == 4 * MiB - 3 * block(LEASE)
        # Completions that turn up after the quarantine change nothing.
        peer.release_completions(coalesce=True)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics() == stats
        await peer.aclose()
    # Closing the pool found nothing more to quarantine (no second warning).
    assert pool.statistics().quarantined_leases == 3


async def test_completions_before_the_deadline_drain_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=4 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool, drain_timeout=5)
        images = [pattern(200 + i, LEASE) for i in range(3)]
        leases = [await sealed_with(pool, image) for image in images]
        assert await send_held(pool, stream, peer, leases) == b"".join(images)
        for lease in leases:
            lease.release()
        counters = [send.counter for send in peer.sends]

        async def completions_arrive() -> None:
            # Out of order and in pieces, all before the deadline.
            await trio.sleep(1)
            peer.complete(counters[6], counters[8])
            peer.complete(counters[0], counters[0])
            await trio.sleep(1.5)
            peer.complete(counters[3], counters[5])
            peer.release_completions(reverse=True)  # the rest, as the kernel queued them

        async with trio.open_nursery() as nursery:
            nursery.start_soon(completions_arrive)
            start = trio.current_time()
            await stream.aclose()  # any QuarantineWarning would fail the test
            assert trio.current_time() - start == 2.5
        # No reset: the peer sees a clean end of stream.
        assert await peer.receive_some() == b""
        await peer.aclose()
        sent = stream.statistics().sent
        assert sent.completions == sent.zerocopy_calls == 3 * CALLS_PER_LEASE
        assert_whole(pool)


async def test_close_quarantines_only_what_did_not_complete(autojump_clock: trio.testing.MockClock) -> None:
    mock = MockKernel()
    frame = bytearray(pattern(300, LEASE))
    outcome: list[BaseException] = []
    async with open_pool(max_bytes=4 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool, drain_timeout=5)
        first = await sealed_with(pool, pattern(301, LEASE))
        second = await sealed_with(pool, pattern(302, LEASE))
        adopted = pool.adopt(frame)
        await send_held(pool, stream, peer, [first, second, adopted])
        first.release()
        second.release()
        counters = [send.counter for send in peer.sends]

        async def wait_for_the_frame() -> None:
            try:
                await adopted.wait_reusable()
            except trio_zc.LeaseQuarantinedError as exc:
                outcome.append(exc)

        async def some_completions() -> None:
            await trio.sleep(1)
            peer.complete(counters[0], counters[CALLS_PER_LEASE])  # all of `first`, one of `second`

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_the_frame)
            nursery.start_soon(some_completions)
            missing = 2 * CALLS_PER_LEASE - 1
            with pytest.warns(trio_zc.QuarantineWarning, match=f"with {missing} zero-copy send"):
                await stream.aclose()
        assert len(outcome) == 1
        sent = stream.statistics().sent
        assert sent.completions == CALLS_PER_LEASE + 1 and sent.quarantined_sends == missing
        stats = pool.statistics()
        # `first` came back; `second` and the adopted frame are withheld for good.
        assert stats.quarantined_leases == 2 and stats.quarantined_bytes == block(LEASE)
        assert stats.free_bytes == 4 * MiB - block(LEASE)
        assert stats.sends_in_flight == 0 and stats.adopted_leases == 0
        with pytest.raises(BufferError):
            frame.extend(b"!")  # still exported: the kernel may read it
        await peer.aclose()


async def test_cancelled_close_skips_the_wait_not_the_safety(autojump_clock: trio.testing.MockClock) -> None:
    mock = MockKernel()
    async with open_pool(max_bytes=4 * MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool, drain_timeout=5)
        lease = await sealed_with(pool, pattern(400, LEASE))
        await send_held(pool, stream, peer, [lease])
        lease.release()
        start = trio.current_time()
        with pytest.warns(trio_zc.QuarantineWarning):
            with trio.move_on_after(1) as scope:
                await stream.aclose()
        assert scope.cancelled_caught
        # Cut short at 1 s, but the shielded abort and its grace still ran.
        assert trio.current_time() - start == 1 + ABORT_GRACE
        stats = pool.statistics()
        assert stats.quarantined_leases == 1 and stats.sends_in_flight == 0
        assert stats.sent.quarantined_sends == CALLS_PER_LEASE
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x")
        await peer.aclose()


async def test_io_uring_close_quarantines_a_completion_that_never_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the forced close could not bring the notification back.
    monkeypatch.setattr(SocketTransport, "abort", lambda self: None)
    monkeypatch.setattr("trio_zc._kernels._closing.ABORT_GRACE", 0.05)
    async with open_pool(max_bytes=32 * MiB, kernel="io_uring", policy=ALWAYS_ZC) as pool:
        if pool.statistics().kernel != "io_uring":
            pytest.skip(f"io_uring is not usable here: {pool.statistics().kernel_note}")
        a, b = await socket_pair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        stream = trio_zc.ZeroCopyStream(a, pool=pool, drain_timeout=0.05)
        pin_send_buffer(stream, 256 * KiB)
        lease = await sealed_with(pool, pattern(500, 8 * MiB))
        with trio.move_on_after(0.3):
            await stream.send_lease(lease)  # the peer reads nothing: stays part-way
        lease.release()
        assert stream.statistics().sends_in_flight == 1
        with pytest.warns(trio_zc.QuarantineWarning, match="1 zero-copy send"):
            await stream.aclose()
        stats = pool.statistics()
        assert stats.quarantined_leases == 1 and stats.quarantined_bytes == 8 * MiB
        assert stats.sent.quarantined_sends == 1 and stats.sends_in_flight == 0
        assert stats.free_bytes == 24 * MiB
        # The peer goes: the request fails and its notification arrives
        # late, for a call already quarantined. It must change nothing.
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()
        ring = pool._kernel
        with trio.fail_after(10):
            while list(ring.tracker.items_outstanding()):  # type: ignore[attr-defined]
                await trio.sleep(0.01)
        assert pool.statistics() == stats


@pytest.mark.parametrize("name", ["msg_zerocopy", "io_uring"])
async def test_close_drains_cleanly_when_the_peer_catches_up(name: str) -> None:
    async with open_pool(max_bytes=32 * MiB, kernel=name, policy=ALWAYS_ZC) as pool:
        a, b = await socket_pair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        stream = trio_zc.ZeroCopyStream(a, pool=pool, drain_timeout=60)
        peer = trio.SocketStream(b)
        image = pattern(600, 4 * MiB)
        lease = await sealed_with(pool, image)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, lease)
            received += await receive_exactly(peer, MiB)
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            nursery.cancel_scope.cancel()  # part-way: the rest is in flight or unsent
        lease.release()
        assert stream.statistics().sends_in_flight > 0

        closed = trio.Event()

        async def close() -> None:
            await stream.aclose()
            closed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close)
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            # Closing waits for the completions; only now the peer catches up.
            assert not closed.is_set() and stream.statistics().sends_in_flight > 0
            while chunk := await peer.receive_some(MiB):
                received.extend(chunk)
        # Not aborted: the peer read a clean prefix of the image and a FIN.
        assert image.startswith(received) and len(received) > MiB
        await peer.aclose()
        assert_whole(pool)


# -- 4. the counter wrapping at 2**32 -----------------------------------------------

#: Calls made before the counter wraps, and in all.
WRAP_AFTER = 1500
WRAP_CALLS = 5000
WRAP_SEED = 4_2**5


@attrs.define(eq=False)
class WrapModel:
    """What the test knows: each lease's calls not yet reported, and its memory."""

    #: counter -> lease id, for calls whose completion the test has not delivered.
    pending: dict[int, int] = attrs.Factory(dict)
    #: lease id -> counters it still waits for.
    waiting: Counter[int] = attrs.Factory(Counter)
    #: arena offset -> lease id, for leases whose memory is not back.
    live: dict[int, int] = attrs.Factory(dict)
    freed: Counter[int] = attrs.Factory(Counter)

    def deliver(self, counters: list[int]) -> None:
        for counter in counters:
            self.waiting[self.pending.pop(counter)] -= 1

    def on_free(self, offset: int) -> None:
        lease = self.live.pop(offset)  # KeyError: memory freed twice, or never leased
        assert self.waiting[lease] == 0, f"lease {lease} freed with {self.waiting[lease]} calls in flight"
        self.freed[lease] += 1


class WatchedAllocator:
    """The pool's allocator, telling the model whenever memory comes back."""

    def __init__(self, allocator: object, model: WrapModel) -> None:
        self._allocator = allocator
        self._model = model

    def free(self, offset: int, length: int) -> None:
        self._model.on_free(offset)
        self._allocator.free(offset, length)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._allocator, name)


def watch_the_arena(pool: trio_zc.BufferPool, model: WrapModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tell *model* whenever memory comes back, from the pool's arena (a protect_sealed pool).

    Such a pool makes a sealed lease's pages writable again just before it
    frees them, once per lease (and makes them read-only at the seal).
    """
    arena = pool._arena
    protect = arena.protect

    def watched(offset: int, length: int, *, writable: bool) -> None:
        if writable:
            model.on_free(offset)
        protect(offset, length, writable=writable)

    monkeypatch.setattr(arena, "protect", watched)


#: Where the test sees memory come back: in the pool's allocator (the pure
#: build only), or in the arena of a pool that protects sealed leases.
WATCHES = [
    pytest.param(
        "allocator",
        marks=pure_only(
            "the pool's allocator is replaced by a stand-in, and compiled BufferPool code takes"
            " pool._allocator for the compiled Allocator class ('Allocator object expected')"
        ),
    ),
    "arena",
]


@pytest.mark.parametrize("watch", WATCHES)
async def test_counter_wraps_in_a_long_running_stream(watch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    start = 2**32 - WRAP_AFTER
    mock = MockKernel(counter_start=start, socket_buffer=4 * MiB, receive_buffer=4 * MiB)
    rng = random.Random(WRAP_SEED)
    model = WrapModel()
    ways: Counter[str] = Counter()
    protect = watch == "arena"
    async with open_pool(
        max_bytes=2 * MiB, kernel=mock, policy=ALWAYS_ZC, drain_timeout=1, protect_sealed=protect
    ) as pool:
        if watch == "allocator":
            monkeypatch.setattr(pool, "_allocator", WatchedAllocator(pool._allocator, model))
        else:
            watch_the_arena(pool, model, monkeypatch)
        stream, peer = mock.open_stream(pool)
        # The test holds completions back, up to the whole pool.
        stream.max_in_flight = pool.max_bytes
        peer.accept_at_most(4096)  # a call per page: 5 to 16 calls a lease
        peer.hold_completions()

        def deliver_some(everything: bool) -> None:
            """Deliver pending completions: coalesced, reversed, or in shuffled pieces."""
            order = sorted(model.pending, key=lambda c: (c - start) & MASK)
            if not everything:
                order = order[: rng.randint(0, len(order))]
            if not order:
                return
            how = rng.choice(["coalesce", "reverse", "pieces"])
            if how != "pieces" and len(order) == len(model.pending):
                # The mock's own records, as the kernel queued them.
                ways[how] += 1
                ways["wrapped"] += order[0] > order[-1]
                model.deliver(order)
                peer.release_completions(coalesce=how == "coalesce", reverse=how == "reverse")
                peer.hold_completions()
                return
            # Contiguous pieces (some crossing the wrap), delivered shuffled.
            pieces = []
            i = 0
            while i < len(order):
                n = rng.randint(1, 40)
                run = [order[i]]
                while len(run) < n and i + len(run) < len(order) and order[i + len(run)] == (run[-1] + 1) & MASK:
                    run.append(order[i + len(run)])
                pieces.append(run)
                i += len(run)
            rng.shuffle(pieces)
            ways["pieces"] += len(pieces)
            for run in pieces:
                ways["wrapped"] += run[0] > run[-1]
                model.deliver(run)
                peer.complete(run[0], run[-1])

        leases = 0
        expected = hashlib.sha256()
        received = hashlib.sha256()
        while stream.statistics().sent.zerocopy_calls < WRAP_CALLS:
            batch = []
            for _ in range(rng.randint(1, 8)):
                size = rng.randint(20 * KiB, 64 * KiB)
                if pool.statistics().largest_free_block < size:
                    deliver_some(everything=True)
                lease = pool.acquire_nowait(size)  # never waits: the test holds the completions
                model.live[lease._slot.offset] = lease._slot.id
                data = pattern(leases, size)
                lease.write(data)
                expected.update(data)
                batch.append(lease.seal())
                leases += 1
            batch_bytes = sum(sealed.nbytes for sealed in batch)
            for sealed in batch:
                before = {send.counter for send in peer.sends}
                await stream.send_lease(sealed)
                for send in peer.sends:
                    if send.counter not in before:
                        model.pending[send.counter] = sealed._slot.id
                        model.waiting[sealed._slot.id] += 1
                sealed.release()  # released at once: memory comes back on the last completion
            received.update(await peer.receive_exactly(batch_bytes))
            await trio.testing.wait_all_tasks_blocked()
            deliver_some(everything=rng.random() < 0.3)
            # Everything delivered is accounted for; nothing else was released.
            assert stream.statistics().sends_in_flight == len(model.pending)
        deliver_some(everything=True)
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
        await peer.aclose()

        sent = stream.statistics().sent
        assert sent.zerocopy_calls >= WRAP_CALLS and sent.completions == sent.zerocopy_calls
        channel = mock.connections[0].channel
        assert channel is not None
        assert channel.tracker.next_counter == (start + sent.zerocopy_calls) & MASK
        assert channel.tracker.next_counter < start  # it wrapped
        assert received.digest() == expected.digest()
        # Every lease's memory came back exactly once, after its last completion.
        assert model.pending == {} and model.live == {}
        assert len(model.freed) == leases and set(model.freed.values()) == {1}
        assert_whole(pool)
    # Every way of delivering was used, ranges crossing the wrap included.
    assert all(ways[how] for how in ("coalesce", "reverse", "pieces", "wrapped")), ways




async def test_mock_complete_keeps_the_rest_of_held_records() -> None:
    """Regression: MockPeer.complete() dropped whole held records that it overlapped.

    A held record overlapping the delivered range only in part was dropped,
    so its other calls never completed (their memory was quarantined at
    close), and a record wrapping past 2**32 was never seen to overlap, so
    it was delivered again later and refused whole as garbage.
    """
    mock = MockKernel(counter_start=2**32 - 3)
    async with open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        peer.accept_at_most(20000)
        peer.hold_completions()
        lease = await sealed_with(pool, pattern(800, 100_000))
        await stream.send_lease(lease)
        await peer.receive_exactly(100_000)
        await trio.testing.wait_all_tasks_blocked()
        assert [r[:2] for r in peer._conn.records] == [[2**32 - 3, 1]]  # one wrapped record
        peer.complete(2**32 - 2, 2**32 - 2)  # inside it, before the wrap
        peer.complete(0, 0)  # inside it, after the wrap
        assert stream.statistics().sends_in_flight == 3
        assert [r[:2] for r in peer._conn.records] == [[2**32 - 3, 2**32 - 3], [2**32 - 1, 2**32 - 1], [1, 1]]
        assert peer.release_completions() == 3
        sent = stream.statistics().sent
        assert stream.statistics().sends_in_flight == 0
        assert sent.completions == 5 and sent.malformed_records == 0
        lease.release()
        await stream.aclose()
        assert_whole(pool)
