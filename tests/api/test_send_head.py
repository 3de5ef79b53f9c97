"""``send_lease(lease, head=...)``: a head and a lease's bytes in one system call, on every kernel.

Real kernels over loopback TCP (and the mock), a receiver comparing bytes:

- heads of 0, 1, 4095 and 64 KiB bytes before small and 4 MiB leases, on
  the default policy (small leases copied) and with zero-copy for every send;
- how many system calls a response costs, counted through the channel's
  transport (and the ring's submissions): one on copy, MSG_ZEROCOPY and
  io_uring, two on sendfile -- also for trio_zc.http's keep-alive responses;
- short sends (small socket buffers and a slow reader) resuming in the
  middle of the head and in the middle of the lease;
- a head given as a bytearray and changed as soon as the call returns, or
  while it waits: what was given goes on the wire (and the mock and a real
  MSG_ZEROCOPY socket show what happens when a head is not copied);
- the lease held until the completion that covers its bytes, a call that
  carried only head bytes, cancellation, send_timeout;
- io_uring's three ways of sending a head (from the head area in front of
  the registered buffers, from ordinary memory, copied first), its head
  area's slots, and a short result inside the head.

Cancellation at every step of a send with a head is in
``tests/guarantees/test_adversary_cancel_sweep.py`` (the "head-lease-send" scenario).
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
import socket
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.http
import trio_zc.testing
from trio_zc._kernels import _io_uring
from trio_zc._kernels._heads import PAGE, HeadArea
from trio_zc._kernels._io_uring import HEAD_COPIED, HEAD_FIXED, HEAD_PLAIN, IoUringKernel, _Call
from trio_zc._kernels._msg_zerocopy import ErrorQueue, MsgZeroCopyKernel
from trio_zc._kernels._ring import probe
from trio_zc._kernels._socket import SocketTransport
from trio_zc._mypyc import is_compiled
from trio_zc.testing._transport import MockTransport

from ..http_client import BODIES, running
from ..streams import ALWAYS_ZC, KERNELS, kernel, pattern, receive_exactly, sealed_with, stop_reading, stream_pair

MiB = 1 << 20
HEAD_SIZES = [0, 1, 4095, 64 * 1024]
BODY_SIZES = [1000, 4 * MiB]
REAL = [name for name in KERNELS if name != "mock"]
HERE = probe()
needs_io_uring = pytest.mark.skipif(not (HERE.available and HERE.send_zc), reason=HERE.reason)
#: Socket buffers small enough that a 64 KiB head takes several calls. (A
#: receive buffer of 16 KiB would do too, but on loopback MSG_ZEROCOPY sends
#: whose bytes do not start on a page -- any lease after a head -- then get
#: pruned at the receiver and retransmitted with backoff: 13 s for 2 MiB.)
SMALL_BUFFER = 16384
SMALL_RCVBUF = 32768


def small_kernel(name: str) -> Any:
    """kernel(name), and for the mock small buffers (the real ones are set per socket)."""
    if name == "mock":
        return trio_zc.testing.MockKernel(socket_buffer=SMALL_BUFFER, receive_buffer=SMALL_BUFFER)
    return name


def head_of(size: int, seed: int = 1) -> bytes:
    return bytes(pattern(size, seed + 100))


async def send_and_receive(
    stream: trio_zc.ZeroCopyStream,
    peer: trio.abc.ReceiveStream,
    sealed: trio_zc.SealedLease,
    head: Any,
    expected: bytes,
    *,
    read: Callable[[trio.abc.ReceiveStream, int], Awaitable[bytes]] = receive_exactly,
    **kwargs: Any,
) -> bytes:
    """send_lease(sealed, head=head, ...) while the peer *read*s as many bytes as it expects."""
    got = b""

    async def receive() -> None:
        nonlocal got
        got = await read(peer, len(expected))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await stream.send_lease(sealed, head=head, **kwargs)
    return got


# -- bytes, on every kernel ------------------------------------------------------------


@pytest.mark.parametrize("zerocopy", [False, True], ids=["default-policy", "always-zerocopy"])
@pytest.mark.parametrize("name", KERNELS)
async def test_every_head_size_then_the_lease_arrive_exactly(name: str, zerocopy: bool) -> None:
    policy = ALWAYS_ZC if zerocopy else None
    async with trio_zc.open_pool(max_bytes=16 * MiB, kernel=kernel(name), policy=policy) as pool:
        stream, peer = await stream_pair(pool)
        for seed, (head_size, body_size) in enumerate((h, b) for h in HEAD_SIZES for b in BODY_SIZES):
            head, body = head_of(head_size, seed), pattern(body_size, seed)
            sealed = await sealed_with(pool, body)
            assert await send_and_receive(stream, peer, sealed, head, head + body) == head + body
            # A slice of the lease, with its head.
            got = await send_and_receive(stream, peer, sealed, head, head + body[7:507], offset=7, nbytes=500)
            assert got == head + body[7:507]
            sealed.release()
        # send_all before and after: the order holds.
        sealed = await sealed_with(pool, b"body")
        await stream.send_all(b"<")
        assert await send_and_receive(stream, peer, sealed, b"head:", b"<head:body") == b"<head:body"
        sealed.release()
        stats = stream.statistics().sent
        await stream.aclose()
        await peer.aclose()
    # Head bytes count as copied bytes, on every kernel.
    heads = 2 * sum(HEAD_SIZES) * len(BODY_SIZES) + len(b"<head:")
    assert stats.bytes_copied >= heads
    if zerocopy and name != "copy":
        assert stats.bytes_copied == heads, stats
        leases = len(HEAD_SIZES) * (sum(BODY_SIZES) + 500 * len(BODY_SIZES)) + len(b"body")
        assert stats.bytes_zerocopy + stats.bytes_kernel_copied == leases, stats


async def test_an_empty_head_is_no_head() -> None:
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        stream, peer = await stream_pair(pool)
        sealed = await sealed_with(pool, b"body")
        for head in (b"", bytearray(), memoryview(b"")):
            assert await send_and_receive(stream, peer, sealed, head, b"body") == b"body"
        sealed.release()
        await stream.aclose()
        await peer.aclose()


# -- how many system calls ----------------------------------------------------------------


@attrs.define
class Calls:
    """System calls a stream's channel made, counted through its transport."""

    counts: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: (head length, bytes taken) of each call that carried a head.
    with_head: list[tuple[int, int]] = attrs.Factory(list)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    counted = Calls()

    def wrap(cls: type, name: str, head_first: bool = False) -> None:
        original = getattr(cls, name)

        def call(self: object, *args: Any) -> Any:
            n = original(self, *args)
            counted.counts[name] += 1
            if head_first:
                counted.with_head.append((len(args[0]), n))
            return n

        monkeypatch.setattr(cls, name, call)

    for name in ("send", "sendfile"):
        wrap(SocketTransport, name)
    wrap(SocketTransport, "send_more", head_first=True)  # sendfile's head
    wrap(SocketTransport, "send_with_head", head_first=True)
    wrap(ErrorQueue, "zerocopy_send")
    wrap(ErrorQueue, "zerocopy_send_with_head", head_first=True)
    wrap(MockTransport, "zerocopy_send")
    wrap(MockTransport, "zerocopy_send_with_head", head_first=True)
    return counted


#: What one small response costs on each kernel when the lease goes zero-copy.
ZEROCOPY_CALLS = {
    "copy": {"send_with_head": 1},
    "msg_zerocopy": {"zerocopy_send_with_head": 1},
    "io_uring": {},  # one SENDMSG_ZC request, counted on the ring
    "sendfile": {"send_more": 1, "sendfile": 1},
}


@pytest.mark.parametrize("zerocopy", [False, True], ids=["default-policy", "always-zerocopy"])
@pytest.mark.parametrize("name", REAL)
async def test_one_system_call_per_small_response_two_on_sendfile(name: str, zerocopy: bool, calls: Calls) -> None:
    responses, head, body = 20, head_of(200), pattern(13_000, 5)
    policy = ALWAYS_ZC if zerocopy else None
    async with trio_zc.open_pool(max_bytes=4 * MiB, kernel=name, policy=policy) as pool:
        stream, peer = await stream_pair(pool)
        # Room for a whole response: the count must not depend on the moment.
        stream._channel.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MiB)  # type: ignore[attr-defined]
        sealed = await sealed_with(pool, body)
        ring = pool._kernel.ring if isinstance(pool._kernel, IoUringKernel) else None
        before = (ring_submitted(pool), ring_enters(pool))
        for _ in range(responses):
            # One response at a time, as a keep-alive client asks.
            assert await send_and_receive(stream, peer, sealed, head, head + body) == head + body
        submitted, enters = ring_submitted(pool) - before[0], ring_enters(pool) - before[1]
        sealed.release()
        await stream.aclose()
        await peer.aclose()
    expected = ZEROCOPY_CALLS[name] if zerocopy else {"send_with_head": 1}
    assert dict(calls.counts) == {call: count * responses for call, count in expected.items()}
    # Each call took everything it was given (sendfile's first, the head alone).
    assert all(taken == head_len + (0 if name == "sendfile" and zerocopy else len(body))
               for head_len, taken in calls.with_head)
    if ring is not None and zerocopy:
        assert submitted == responses  # one request per response...
        assert enters <= responses  # ...handed over in one io_uring_enter (or fewer: batches)
        kernel = pool._kernel
        assert isinstance(kernel, IoUringKernel)
        path = kernel.head_path
        assert kernel.head_calls_fixed == (responses if path == HEAD_FIXED else 0)
    elif ring is not None:
        assert submitted == 0


def ring_submitted(pool: trio_zc.BufferPool) -> int:
    return pool._kernel.submitted if isinstance(pool._kernel, IoUringKernel) else 0


def ring_enters(pool: trio_zc.BufferPool) -> int:
    return pool._kernel.submit_calls if isinstance(pool._kernel, IoUringKernel) else 0


@pytest.mark.parametrize("name", REAL)
async def test_trio_zc_http_sends_each_keep_alive_response_in_one_call(name: str, calls: Calls) -> None:
    """The server's responses: head and lease together (two calls on sendfile, one elsewhere)."""
    requests = 10
    async with running(name, pool_bytes=8 * MiB) as srv:
        client = await srv.client()
        with trio.fail_after(30):
            for _ in range(requests):
                reply = await client.request("/small")  # 13,000 bytes, a fresh lease each time
                assert reply.status == 200 and reply.body == BODIES["/small"]
        await client.aclose()
        await srv.settled()
        submitted = ring_submitted(srv.pool)
    expected = ZEROCOPY_CALLS[name]
    assert dict(calls.counts) == {call: count * requests for call, count in expected.items()}
    if name == "io_uring":
        assert submitted == requests


# -- short sends ------------------------------------------------------------------------



async def slow_reader(peer: trio.abc.ReceiveStream, nbytes: int) -> bytes:
    """Read *nbytes* a little at a time, letting the sender fill up in between."""
    got = bytearray()
    while len(got) < nbytes:
        chunk = await peer.receive_some(min(SMALL_BUFFER, nbytes - len(got)))  # a little at a time
        assert chunk, f"EOF after {len(got)} of {nbytes} bytes"
        got += chunk
        await trio.sleep(0)
    return bytes(got)


@pytest.mark.parametrize("name", KERNELS)
async def test_short_sends_resume_inside_the_head_and_inside_the_lease(
    name: str, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    head, body = head_of(64 * 1024), pattern(256 * 1024, 3)
    submitted: list[_Call] = []
    if name == "io_uring":
        # With MSG_WAITALL the kernel waits for room itself and never returns
        # short: without it, a full socket makes it return what fit.
        monkeypatch.setattr(_io_uring, "_MSG_WAITALL", 0)
        original = IoUringKernel.submit_send

        def record(self: IoUringKernel, call: _Call) -> None:
            submitted.append(call)
            original(self, call)

        monkeypatch.setattr(IoUringKernel, "submit_send", record)
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=small_kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        stop_reading(peer, rcvbuf=SMALL_RCVBUF)
        sock = getattr(stream._channel.transport, "sock", None)
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        sealed = await sealed_with(pool, body)
        got = await send_and_receive(stream, peer, sealed, bytearray(head), head + body, read=slow_reader)
        assert got == head + body
        sealed.release()
        await stream.aclose()
        await peer.aclose()
        with trio.fail_after(10):
            while pool.statistics().sends_in_flight:
                await trio.sleep(0.01)
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes, stats
    if name == "io_uring":
        with_head = [(call.head_len, call.res or 0) for call in submitted if call.head_len]
        lease_only = [call for call in submitted if not call.head_len]
    else:
        with_head = calls.with_head
        lease_only = []
    # The head went in several calls, each resuming where the last stopped...
    assert len(with_head) >= 2, with_head
    offered = len(head)
    for head_len, taken in with_head:
        assert head_len == offered
        offered -= min(taken, head_len)
    assert offered == 0
    # ...and the lease's bytes in several more, the first of them after the head.
    if name == "io_uring":
        assert len(lease_only) >= 2
    elif name == "sendfile":
        assert calls.counts["send_more"] >= 2 and calls.counts["sendfile"] >= 2
    elif name == "copy":
        assert calls.counts["send"] >= 2
    else:
        assert calls.counts["zerocopy_send"] >= 2


# -- the head is copied or held immutable ------------------------------------------------


async def queued_behind_a_full_window(stream: trio_zc.ZeroCopyStream, peer: Any) -> bytes:
    """Fill the peer's receive window (it reads nothing yet) but not the sender's buffer,
    so that what is sent next is accepted and waits in the sender's queue."""
    if isinstance(peer, trio_zc.testing.MockPeer):
        peer.hold_transmission()
        return b""
    stop_reading(peer, rcvbuf=SMALL_RCVBUF)
    stream._channel.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)  # type: ignore[attr-defined]
    filler = pattern(64 * 1024, 11)
    await stream.send_all(filler)
    return filler


@pytest.mark.parametrize("name", KERNELS)
async def test_a_bytearray_head_changed_once_send_lease_returns_changes_nothing_sent(name: str) -> None:
    async with trio_zc.open_pool(max_bytes=4 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        async with stream, peer:
            filler = await queued_behind_a_full_window(stream, peer)
            head, body = bytearray(head_of(300)), pattern(20_000, 4)
            sent_head = bytes(head)
            sealed = await sealed_with(pool, body)
            try:
                with trio.fail_after(30):
                    await stream.send_lease(sealed, head=head)
                head[:] = b"X" * len(head)  # the call returned; the peer has read nothing yet
            finally:
                sealed.release()
            if isinstance(peer, trio_zc.testing.MockPeer):
                peer.transmit()
            with trio.fail_after(30):
                got = await receive_exactly(peer, len(filler) + len(sent_head) + len(body))
            assert got == filler + sent_head + body


@pytest.mark.parametrize("name", KERNELS)
async def test_a_head_changed_while_send_lease_waits_changes_nothing_sent(name: str) -> None:
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.hold_transmission()
        else:
            stop_reading(peer, rcvbuf=SMALL_RCVBUF)
        head, body = bytearray(head_of(64 * 1024)), pattern(2 * MiB, 4)
        sent_head = bytes(head)
        sealed = await sealed_with(pool, body)
        got = b""
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await stream.send_lease(sealed, head=head)

            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            head[:] = b"X" * len(head)  # while the send waits for the peer
            if isinstance(peer, trio_zc.testing.MockPeer):
                peer.transmit()
            with trio.fail_after(30):
                got = await receive_exactly(peer, len(sent_head) + len(body))
        assert got == sent_head + body
        sealed.release()
        await stream.aclose()
        await peer.aclose()


@pytest.mark.parametrize("name", ["msg_zerocopy", "mock"])
async def test_those_checks_catch_a_head_that_is_held_instead_of_copied(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two tests above can fail: with the bytearray itself handed to the kernel
    (no copy) and read from there (no room in the head area), a real
    MSG_ZEROCOPY socket sends the changed bytes, and the mock reports the
    change at the send's completion.

    Pure build only: compiled send_lease checks that check_head returns the
    bytes its signature promises, so the bytearray cannot be handed on there
    (a TypeError instead); the checks under test are the same code in both."""
    if is_compiled(trio_zc._stream):
        pytest.skip("the mutation needs check_head to return a bytearray, which compiled code refuses")
    monkeypatch.setattr(trio_zc._stream, "check_head", lambda head: head)
    monkeypatch.setattr(MsgZeroCopyKernel, "head_area", lambda self: None)
    with pytest.raises(BaseException) as info:  # noqa: B017 - an AssertionError, maybe in a group
        await test_a_bytearray_head_changed_once_send_lease_returns_changes_nothing_sent(name)
    text = repr(info.value) + "".join(repr(e) for e in getattr(info.value, "exceptions", ()))
    if name == "mock":
        assert "PrematureReuseError" in text and "the head sent with" in text, text
    else:
        assert "AssertionError" in text, text


# -- the lease, held until the completions cover it -----------------------------------------


async def test_the_lease_is_held_until_the_completion_that_covers_its_bytes(
    mock_kernel: trio_zc.testing.MockKernel,
) -> None:
    async with trio_zc.open_pool(max_bytes=MiB, kernel=mock_kernel, policy=ALWAYS_ZC) as pool:
        stream, peer = mock_kernel.open_stream(pool)
        peer.hold_completions()
        # Calls of at most 10 bytes: the first three carry only head bytes.
        peer.accept_at_most(10)
        head, body = b"H" * 25, pattern(100, 1)
        sealed = await sealed_with(pool, body)
        await stream.send_lease(sealed, head=head)
        sends = peer.sends
        assert [(s.head, s.nbytes) for s in sends[:4]] == [(b"H" * 10, 0), (b"H" * 10, 0), (b"H" * 5, 5), (b"", 10)]
        assert sum(s.nbytes for s in sends) == len(body)
        sealed.release()
        assert await receive_exactly(peer, len(head) + len(body)) == head + body
        stats = pool.statistics()
        # Transmitted, but no completion yet: the memory is still the kernel's.
        assert stats.free_bytes < stats.max_bytes and stats.sends_in_flight == len(sends)
        peer.release_completions()
        await trio.testing.wait_all_tasks_blocked()
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes and stats.sends_in_flight == 0
        assert stream.statistics().sent.bytes_copied == len(head)
        await stream.aclose()


@pytest.mark.parametrize("name", KERNELS)
async def test_a_cancelled_send_with_a_head_sends_a_prefix_and_releases_nothing_early(name: str) -> None:
    the_kernel = small_kernel(name)
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=the_kernel, policy=ALWAYS_ZC, drain_timeout=5) as pool:
        stream, peer = await stream_pair(pool)
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.stop_reading()
        else:
            stop_reading(peer, rcvbuf=SMALL_RCVBUF)
            stream._channel.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)  # type: ignore[attr-defined]
        head, body = head_of(64 * 1024), pattern(2 * MiB, 6)
        sealed = await sealed_with(pool, body)
        with trio.move_on_after(0.2) as scope:
            await stream.send_lease(sealed, head=head)
        assert scope.cancelled_caught
        sealed.release()  # while sends may still be in flight: never reused early
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.resume_reading()
        got = bytearray()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.aclose)  # waits for the sends in flight, then EOF
                while chunk := await peer.receive_some(1 << 20):
                    got += chunk
        # A prefix (on io_uring all of it: a request handed to the kernel goes on).
        assert 0 < len(got) <= len(head) + len(body)
        assert len(got) < len(head) + len(body) or name == "io_uring"
        assert bytes(got) == (head + body)[: len(got)]
        await peer.aclose()
        with trio.fail_after(10):
            while pool.statistics().sends_in_flight:
                await trio.sleep(0.01)
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes and not stats.quarantined_leases, stats


@pytest.mark.parametrize("name", KERNELS)
async def test_send_timeout_holds_for_a_send_with_a_head(name: str) -> None:
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=small_kernel(name), policy=ALWAYS_ZC, drain_timeout=5) as pool:
        stream, peer = await stream_pair(pool)
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.stop_reading()
        else:
            stop_reading(peer, rcvbuf=SMALL_RCVBUF)
        stream.send_timeout = 0.3
        sealed = await sealed_with(pool, pattern(4 * MiB, 2))
        with trio.fail_after(30), pytest.raises(trio.BrokenResourceError, match="send_timeout"):
            await stream.send_lease(sealed, head=head_of(64 * 1024))
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_lease(sealed, head=b"again")
        sealed.release()
        await stream.aclose()
        await peer.aclose()
        with trio.fail_after(10):
            while pool.statistics().sends_in_flight:
                await trio.sleep(0.01)
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes and not stats.quarantined_leases, stats


# -- io_uring's ways of sending a head --------------------------------------------------------


def io_uring_kernel(**probe_changes: bool) -> IoUringKernel:
    return IoUringKernel(attrs.evolve(probe(), **probe_changes))


@needs_io_uring
@pytest.mark.parametrize(
    ("changes", "path"),
    [({}, HEAD_FIXED), ({"vectored_fixed": False}, HEAD_PLAIN), ({"vectored_fixed": False, "sendmsg_zc": False}, HEAD_COPIED)],
    ids=["registered", "ordinary-memory", "copied-first"],
)
async def test_io_uring_sends_heads_every_way_the_probe_allows(changes: dict[str, bool], path: str) -> None:
    if path == HEAD_FIXED and not HERE.vectored_fixed:
        pytest.skip(HERE.reason)
    if path != HEAD_COPIED and not HERE.sendmsg_zc:
        pytest.skip(HERE.reason)
    the_kernel = io_uring_kernel(**changes)
    async with trio_zc.open_pool(max_bytes=16 * MiB, kernel=the_kernel, policy=ALWAYS_ZC) as pool:
        assert the_kernel.head_path == path
        if path != HEAD_FIXED:
            assert pool.statistics().kernel_note is not None and "Heads " in pool.statistics().kernel_note
        stream, peer = await stream_pair(pool)
        adopted_data = bytearray(pattern(30_000, 9))
        adopted = pool.adopt(adopted_data)
        for head_size in HEAD_SIZES[1:]:
            for body_size in BODY_SIZES:
                head, body = head_of(head_size), pattern(body_size, head_size)
                sealed = await sealed_with(pool, body)
                assert await send_and_receive(stream, peer, sealed, head, head + body) == head + body
                sealed.release()
            # An adopted lease: never in a registered buffer.
            got = await send_and_receive(stream, peer, adopted, head, head + bytes(adopted_data))
            assert got == head + bytes(adopted_data)
        adopted.release()
        await stream.aclose()
        await peer.aclose()
    sends = 2 * len(HEAD_SIZES[1:])
    if path == HEAD_FIXED:
        assert (the_kernel.head_calls_fixed, the_kernel.head_calls_plain) == (sends, len(HEAD_SIZES[1:]))
    elif path == HEAD_PLAIN:
        assert (the_kernel.head_calls_fixed, the_kernel.head_calls_plain) == (0, sends + len(HEAD_SIZES[1:]))
    else:
        assert the_kernel.head_copies == sends + len(HEAD_SIZES[1:])
        assert the_kernel.head_calls_fixed == the_kernel.head_calls_plain == 0


@needs_io_uring
async def test_io_uring_head_pages_stay_taken_until_their_notification(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads in flight on stalled connections keep their pages of the head area; later
    heads take others (or, once the area is full, go from ordinary memory); every
    stalled client still gets its own head; once all is read, every page is free again."""
    if not HERE.vectored_fixed:
        pytest.skip(HERE.reason)
    monkeypatch.setattr(_io_uring, "_HEAD_AREA", 4 * PAGE)
    the_kernel = io_uring_kernel()
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=the_kernel, policy=ALWAYS_ZC) as pool:
        pairs = [await stream_pair(pool) for _ in range(5)]
        heads = [head_of(1000, i) for i in range(5)]  # a page each, with the lease's first bytes
        body = pattern(100_000, 1)
        sealed = await sealed_with(pool, body)
        for (stream, peer), head in zip(pairs, heads):
            await queued_behind_a_full_window(stream, peer)
            with trio.fail_after(30):
                await stream.send_lease(sealed, head=head)
        heads_area = the_kernel._heads
        assert heads_area is not None and heads_area.pages_taken == 4
        assert (the_kernel.head_calls_fixed, the_kernel.head_calls_plain, the_kernel.head_area_full) == (4, 1, 1)
        sealed.release()
        for (stream, peer), head in zip(pairs, heads):
            with trio.fail_after(30):
                got = await receive_exactly(peer, 64 * 1024 + len(head) + len(body))
            assert got[64 * 1024 :] == head + body
            await stream.aclose()
            await peer.aclose()
        with trio.fail_after(10):
            while heads_area.pages_taken:
                await trio.sleep(0.01)


@needs_io_uring
async def test_io_uring_resumes_inside_the_head_after_a_short_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SENDMSG_ZC that returns short inside the head: the next request carries the
    rest of the head with the lease's bytes again (each with a head slot of its own)."""
    monkeypatch.setattr(_io_uring, "_MSG_WAITALL", 0)
    original = IoUringKernel.submit_send
    submitted: list[_Call] = []

    def record(self: IoUringKernel, call: _Call) -> None:
        submitted.append(call)
        original(self, call)

    monkeypatch.setattr(IoUringKernel, "submit_send", record)
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel="io_uring", policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        stop_reading(peer, rcvbuf=SMALL_RCVBUF)
        stream._channel.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)  # type: ignore[attr-defined]
        head, body = head_of(100_000), pattern(300_000, 2)
        sealed = await sealed_with(pool, body)
        got = await send_and_receive(stream, peer, sealed, head, head + body, read=slow_reader)
        assert got == head + body
        sealed.release()
        await stream.aclose()
        await peer.aclose()
    with_head = [call for call in submitted if call.head_len]
    assert len(with_head) >= 2 and all(call.message is not None for call in with_head)
    assert with_head[0].res is not None and 0 < with_head[0].res < len(head)
    assert with_head[1].head_len == len(head) - with_head[0].res


@needs_io_uring
async def test_io_uring_sends_a_head_too_large_for_one_request_alone_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's result is a 32-bit count, so a head over half the largest request
    (512 MiB; 32 KiB here) goes alone, in pieces, and the lease's bytes after it."""
    monkeypatch.setattr(_io_uring, "_MAX_FIXED_BUFFER", 64 * 1024)
    the_kernel = io_uring_kernel()
    async with trio_zc.open_pool(max_bytes=4 * MiB, kernel=the_kernel, policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        head, body = head_of(100_000), pattern(300_000, 3)
        sealed = await sealed_with(pool, body)
        assert await send_and_receive(stream, peer, sealed, head, head + body) == head + body
        sealed.release()
        await stream.aclose()
        await peer.aclose()
    # Three pieces of at most 32 KiB alone, then the rest of the head with the first bytes of the lease.
    assert the_kernel.head_calls_plain == 4 and the_kernel.head_calls_fixed == 0


# -- a receiver with a tiny receive buffer ------------------------------------------------------


async def tiny_receiver_pair(pool: trio_zc.BufferPool, rcvbuf: int) -> tuple[trio_zc.ZeroCopyStream, trio.socket.SocketType]:
    """A stream on *pool* and a plain socket peer whose receive buffer was set before connecting."""
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return trio_zc.ZeroCopyStream(server, pool=pool), client


async def receive_into(client: trio.socket.SocketType, got: bytearray, nbytes: int) -> None:
    while len(got) < nbytes:
        chunk = await client.recv(1 << 16)
        assert chunk, f"EOF after {len(got)} of {nbytes} bytes"
        got.extend(chunk)


@pytest.mark.parametrize("name", ["msg_zerocopy", "io_uring"])
async def test_a_head_does_not_stall_a_receiver_with_a_tiny_receive_buffer(name: str) -> None:
    """On loopback, a zero-copy call whose first fragment is a small head was dropped
    by a receiver with a 4 KiB receive buffer and retransmitted with backoff (a 1 MiB
    lease had not arrived after a minute); the head goes in a whole first page instead."""
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=name, policy=ALWAYS_ZC) as pool:
        for head_size in (1, 300, 2000, 4095, 5000):
            stream, client = await tiny_receiver_pair(pool, 4096)
            head, body = head_of(head_size), pattern(MiB, head_size)
            sealed = await sealed_with(pool, body)
            got = bytearray()
            with trio.fail_after(30):  # the stall took minutes; this takes milliseconds
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive_into, client, got, len(head) + len(body))
                    await stream.send_lease(sealed, head=head)
            assert bytes(got) == head + body
            sealed.release()
            await stream.aclose()
            client.close()


# -- the head area -------------------------------------------------------------------------


def test_the_head_area_hands_out_whole_pages_and_takes_them_back() -> None:
    area = HeadArea(4 * PAGE)
    try:
        head, data = memoryview(b"H" * 300), memoryview(pattern(10_000, 1))
        first = area.take(head, data)
        # The head, then the lease's first bytes up to a page: one page.
        assert first == (0, PAGE) and area.map[:PAGE] == bytes(head) + bytes(data[: PAGE - 300])
        big = memoryview(b"B" * (PAGE + 1))
        assert area.take(big, data) == (PAGE, PAGE + 1)  # two pages, the head alone
        assert area.take(head, memoryview(b"xy")) == (3 * PAGE, 302)  # all there is
        assert area.pages_taken == 4
        assert area.take(head, data) is None  # full
        area.give_back(PAGE, PAGE + 1)
        assert area.take(big, data) == (PAGE, PAGE + 1)
        with pytest.raises(ValueError, match="number of pages"):
            HeadArea(PAGE + 1)
    finally:
        area.close()
    assert area.take(head, data) is None  # closed: the caller sends the head from its bytes
    area.close()


async def test_msg_zerocopy_head_pages_stay_taken_until_the_completion() -> None:
    the_kernel = MsgZeroCopyKernel()
    async with trio_zc.open_pool(max_bytes=8 * MiB, kernel=the_kernel, policy=ALWAYS_ZC) as pool:
        pairs = [await stream_pair(pool) for _ in range(3)]
        body = pattern(100_000, 2)
        sealed = await sealed_with(pool, body)
        for i, (stream, peer) in enumerate(pairs):
            await queued_behind_a_full_window(stream, peer)
            with trio.fail_after(30):
                await stream.send_lease(sealed, head=head_of(200, i))
        area = the_kernel.head_area()
        assert area is not None and area.pages_taken == 3  # not transmitted: not complete
        sealed.release()
        for i, (_, peer) in enumerate(pairs):
            with trio.fail_after(30):
                got = await receive_exactly(peer, 64 * 1024 + 200 + len(body))
            assert got[64 * 1024 :] == head_of(200, i) + body
        with trio.fail_after(10):
            while area.pages_taken:
                await trio.sleep(0.01)
        for stream, peer in pairs:
            await stream.aclose()
            await peer.aclose()
    assert area.closed
