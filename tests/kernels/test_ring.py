"""Tests of the io_uring layer (trio_zc._kernels._ring) against the real kernel, over loopback TCP."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from trio_zc._kernels import _ring as _uring
from trio_zc._kernels._ring import (
    IORING_FEAT_NODROP,
    IORING_FEAT_SINGLE_MMAP,
    Message,
    Probe,
    Ring,
    SubmissionQueueFull,
    UringUnavailable,
    probe,
    probe_uncached,
)
from trio_zc._kernels._uring_tracker import (
    IORING_CQE_F_MORE,
    IORING_CQE_F_NOTIF,
    IORING_NOTIF_USAGE_ZC_COPIED,
    Cqe,
    SendReleased,
    SendResult,
    SendZcTracker,
)

PROBE = probe()
pytestmark = pytest.mark.skipif(not PROBE.available, reason=PROBE.reason)

REPO = Path(__file__).resolve().parents[2]
MSG_WAITALL_NOSIGNAL = socket.MSG_WAITALL | socket.MSG_NOSIGNAL


# --- helpers ----------------------------------------------------------------------


@pytest.fixture
def ring() -> Iterator[Ring]:
    with Ring(16) as r:
        yield r


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: (sender, receiver), the receiver non-blocking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = socket.create_connection(listener.getsockname(), timeout=2)
        receiver, _ = listener.accept()
    receiver.setblocking(False)
    with sender, receiver:
        yield sender, receiver


@contextmanager
def mapped(data: bytes, size: int | None = None) -> Iterator[tuple[mmap.mmap, int]]:
    """An anonymous mapping holding *data*, and its address."""
    region = mmap.mmap(-1, size or max(len(data), 1))
    region[: len(data)] = data
    view = ctypes.c_char.from_buffer(region)
    try:
        yield region, ctypes.addressof(view)
    finally:
        del view
        region.close()


def pump(
    ring: Ring,
    done: Callable[[list[Cqe], bytearray], bool],
    receiver: socket.socket | None = None,
    timeout: float = 2.0,
) -> tuple[list[Cqe], bytearray]:
    """Reap CQEs and drain *receiver* until *done* says so; fails after *timeout* s."""
    cqes: list[Cqe] = []
    received = bytearray()
    deadline = time.monotonic() + timeout
    while not done(cqes, received):
        assert time.monotonic() < deadline, f"gave up after {timeout} s: {cqes}, {len(received)} bytes"
        cqes.extend(ring.reap())
        if receiver is not None:
            try:
                while chunk := receiver.recv(1 << 20):
                    received += chunk
            except BlockingIOError:
                pass
        if not done(cqes, received):
            # Any system call runs the task work that posts completions.
            time.sleep(0.0005)
    return cqes, received


def flags_of(cqes: list[Cqe]) -> list[tuple[int, int]]:
    return [(c.user_data, c.flags) for c in cqes]


# --- setup and teardown -----------------------------------------------------------


def test_setup_and_close() -> None:
    r = Ring(8)
    assert r.fd >= 0 and r.fileno() == r.fd
    assert (r.sq_entries, r.cq_entries) == (8, 16)
    assert r.features & IORING_FEAT_SINGLE_MMAP and r.features & IORING_FEAT_NODROP
    assert r.sq_space_left() == 8 and r.sq_pending() == 0
    assert r.cqes_lost == 0 and not r.closed
    assert "sq_entries=8" in repr(r)
    fd = r.fd
    r.close()
    assert r.closed and repr(r) == "<Ring closed>"
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    r.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        r.prep_nop(1)
    with pytest.raises(ValueError, match="closed"):
        r.reap()


def test_context_manager_and_sizes() -> None:
    with Ring(5, cq_entries=40) as r:
        # The kernel rounds both up to powers of two.
        assert (r.sq_entries, r.cq_entries) == (8, 64)
    assert r.closed


@pytest.mark.parametrize("kwargs", [{"entries": 0}, {"entries": 32769}, {"entries": 8, "cq_entries": 4}])
def test_bad_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="entries"):
        Ring(**kwargs)


def test_separate_ring_mappings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kernels before 5.4 lack IORING_FEAT_SINGLE_MMAP and need the CQ ring
    # mapped on its own; this kernel allows that too, so the path is tried
    # by pretending the feature bit means nothing.
    monkeypatch.setattr(_uring, "IORING_FEAT_SINGLE_MMAP", 0)
    with Ring(4, cq_entries=8) as r:
        maps = r._live()
        assert maps.sq_ring is not maps.cq_ring
        for i in range(12):
            if r.sq_space_left() == 0:
                r.submit()
            r.prep_nop(i + 1)
        r.submit()
        assert [c.user_data for c in r.reap()] == list(range(1, 13))


def test_nop_and_submit_wait_for(ring: Ring) -> None:
    ring.prep_nop(42)
    assert ring.sq_pending() == 1
    assert ring.submit(wait_for=1) == 1
    assert ring.sq_pending() == 0
    assert ring.reap() == [Cqe(42, 0, 0)]
    assert ring.reap() == []


def test_wait_is_bounded(ring: Ring) -> None:
    start = time.monotonic()
    assert ring.wait(1, 0.05) == []
    assert time.monotonic() - start < 0.5


def test_submission_queue_full(ring: Ring) -> None:
    for i in range(ring.sq_entries):
        ring.prep_nop(i)
    assert ring.sq_space_left() == 0
    with pytest.raises(SubmissionQueueFull, match="submit"):
        ring.prep_nop(99)
    assert ring.submit() == ring.sq_entries
    assert ring.sq_space_left() == ring.sq_entries
    assert sorted(c.user_data for c in ring.wait(ring.sq_entries, 1.0)) == list(range(ring.sq_entries))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sockfd": -1},
        {"sockfd": 2**31},
        {"addr": -1},
        {"addr": 2**64},
        {"length": 2**32},
        {"user_data": 2**64},
        {"msg_flags": -1},
        {"buf_index": 2**16},
    ],
)
def test_prep_send_zc_validates(ring: Ring, kwargs: dict[str, int]) -> None:
    args: dict[str, Any] = {"sockfd": 0, "addr": 4096, "length": 1, "user_data": 1} | kwargs
    with pytest.raises(ValueError):
        ring.prep_send_zc(**args)
    assert ring.sq_pending() == 0


# --- SEND_ZC ------------------------------------------------------------------------


def test_send_zc_delivers_bytes_then_notifies(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    # Bigger than the socket buffers, so the send goes asynchronous and the
    # receiver must drain while it runs; MSG_WAITALL makes it send it all.
    payload = os.urandom(4 << 20)
    tracker: SendZcTracker[str] = SendZcTracker()
    with mapped(payload) as (_, addr):
        ud = tracker.start("payload", len(payload))
        ring.prep_send_zc(sender.fileno(), addr, len(payload), ud, msg_flags=MSG_WAITALL_NOSIGNAL)
        assert ring.submit() == 1
        cqes, received = pump(ring, lambda c, r: len(c) == 2 and len(r) == len(payload), receiver)
        events = [e for c in cqes for e in tracker.on_cqe(c)]
    assert flags_of(cqes) == [(ud, IORING_CQE_F_MORE), (ud, IORING_CQE_F_NOTIF)]
    assert cqes[0].res == len(payload)
    assert cqes[1].res == 0  # no REPORT_USAGE: nothing reported
    assert received == payload
    assert events == [
        SendResult(ud, "payload", len(payload), len(payload), more=True),
        SendReleased(ud, "payload", copied=False, notified=True),
    ]
    assert tracker.outstanding == 0


def test_report_usage_says_copied_on_loopback(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    payload = b"usage" * 1000
    with mapped(payload) as (_, addr):
        ring.prep_send_zc(sender.fileno(), addr, len(payload), 7, report_usage=True)
        ring.submit()
        cqes, received = pump(ring, lambda c, r: len(c) == 2 and len(r) == len(payload), receiver)
    assert flags_of(cqes) == [(7, IORING_CQE_F_MORE), (7, IORING_CQE_F_NOTIF)]
    assert cqes[0].res == len(payload)
    # Loopback copies every zero-copy skb at delivery; the kernel says so.
    assert cqes[1].res & IORING_NOTIF_USAGE_ZC_COPIED
    assert cqes[1].res == -(2**31)
    assert received == payload
    tracker: SendZcTracker[None] = SendZcTracker(first_user_data=7)
    tracker.start(None, len(payload))
    events = [e for c in cqes for e in tracker.on_cqe(c)]
    assert events[-1] == SendReleased(7, None, copied=True, notified=True)


def test_send_zc_from_registered_buffer(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    size = 1 << 20
    payload = os.urandom(size)
    with mapped(payload, size) as (_, addr):
        ring.register_buffers([(addr, size)])
        try:
            # From the middle of the region: addr need not be its start.
            offset, length = 4096 + 100, 200_000
            ring.prep_send_zc(
                sender.fileno(),
                addr + offset,
                length,
                3,
                buf_index=0,
                report_usage=True,
                msg_flags=MSG_WAITALL_NOSIGNAL,
            )
            ring.submit()
            cqes, received = pump(ring, lambda c, r: len(c) == 2 and len(r) == length, receiver)
            assert flags_of(cqes) == [(3, IORING_CQE_F_MORE), (3, IORING_CQE_F_NOTIF)]
            assert cqes[0].res == length
            assert cqes[1].res & IORING_NOTIF_USAGE_ZC_COPIED
            assert received == payload[offset : offset + length]

            # Outside the registered buffer, or a buffer that does not exist:
            # EFAULT, and (Linux 6.18) still F_MORE and a notification.
            ring.prep_send_zc(sender.fileno(), addr + size - 10, 100, 4, buf_index=0)
            ring.prep_send_zc(sender.fileno(), addr, 100, 5, buf_index=1)
            ring.submit()
            cqes, _ = pump(ring, lambda c, r: len(c) == 4)
            results = {c.user_data: c.res for c in cqes if not c.notif}
            assert results == {4: -errno.EFAULT, 5: -errno.EFAULT}
            assert sorted(c.user_data for c in cqes if c.notif) == [4, 5]
        finally:
            ring.unregister_buffers()


def test_register_buffer_errors(ring: Ring) -> None:
    with pytest.raises(OSError) as info:
        ring.unregister_buffers()
    assert info.value.errno == errno.ENXIO
    with pytest.raises(ValueError):
        ring.register_buffers([])
    with pytest.raises(ValueError):
        ring.register_buffers([(4096, 0)])
    with mapped(b"x", 4096) as (_, addr):
        ring.register_buffers([(addr, 4096)])
        with pytest.raises(OSError) as info:
            ring.register_buffers([(addr, 4096)])
        assert info.value.errno == errno.EBUSY
        ring.unregister_buffers()


def test_sparse_buffer_table_filled_later(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    """A table of empty slots, one filled afterwards (what the io_uring kernel does per chunk)."""
    sender, receiver = pair
    size = 64 * 1024
    payload = os.urandom(size)
    with mapped(payload, size) as (_, addr):
        ring.register_sparse_buffers(4)
        try:
            # An empty slot: EFAULT, with F_MORE and a notification.
            ring.prep_send_zc(sender.fileno(), addr, 100, 1, buf_index=2)
            ring.submit()
            cqes, _ = pump(ring, lambda c, r: len(c) == 2)
            assert [c.res for c in cqes if not c.notif] == [-errno.EFAULT]
            ring.update_buffers(2, [(addr, size)])
            ring.prep_send_zc(sender.fileno(), addr + 10, 1000, 2, buf_index=2, msg_flags=MSG_WAITALL_NOSIGNAL)
            ring.submit()
            cqes, received = pump(ring, lambda c, r: len(c) == 2 and len(r) == 1000, receiver)
            assert [c.res for c in cqes if not c.notif] == [1000]
            assert received == payload[10:1010]
            with pytest.raises(OSError) as info:
                ring.update_buffers(4, [(addr, size)])  # past the table
            assert info.value.errno == errno.EINVAL
            with pytest.raises(OSError) as info:
                ring.register_sparse_buffers(4)
            assert info.value.errno == errno.EBUSY
        finally:
            ring.unregister_buffers()
    with pytest.raises(ValueError):
        ring.register_sparse_buffers(0)
    with pytest.raises(ValueError):
        ring.update_buffers(0, [])
    with pytest.raises(ValueError):
        ring.update_buffers(0, [(4096, 0)])
    with pytest.raises(OSError) as info:
        ring.update_buffers(0, [(4096, 4096)])  # no table
    assert info.value.errno == errno.ENXIO


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


needs_sendmsg_zc = pytest.mark.skipif(not PROBE.sendmsg_zc, reason=PROBE.reason)
needs_vectored_fixed = pytest.mark.skipif(not PROBE.vectored_fixed, reason=PROBE.reason)


@needs_sendmsg_zc
def test_sendmsg_zc_sends_its_regions_in_order_from_ordinary_memory(
    ring: Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = pair
    head, body = b"HTTP/1.1 200 OK\r\n\r\n", os.urandom(300_000)
    with mapped(head) as (_, head_addr), mapped(body) as (_, body_addr):
        message = Message([(head_addr, len(head)), (body_addr, len(body))])
        assert message.nbytes == len(head) + len(body)
        ring.prep_sendmsg_zc(sender.fileno(), message, 9, report_usage=True, msg_flags=MSG_WAITALL_NOSIGNAL)
        ring.submit()
        cqes, received = pump(ring, lambda c, r: len(c) == 2 and len(r) == len(head) + len(body), receiver)
    assert flags_of(cqes) == [(9, IORING_CQE_F_MORE), (9, IORING_CQE_F_NOTIF)]
    assert cqes[0].res == len(head) + len(body)
    assert received == head + body


@needs_vectored_fixed
def test_sendmsg_zc_from_one_registered_buffer_made_of_two_files(
    ring: Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    """What the io_uring kernel does for a head and a lease: a head area and a chunk
    of the arena registered side by side, written through other mappings afterwards."""
    sender, receiver = pair
    page = mmap.PAGESIZE
    heads = os.memfd_create("test-heads")
    arena = os.memfd_create("test-arena")
    try:
        os.ftruncate(heads, 2 * page)
        os.ftruncate(arena, 16 * page)
        ring.register_sparse_buffers(2)
        try:
            base = ring.register_files(1, [(heads, 0, 2 * page), (arena, 4 * page, 8 * page)])
            head, body = b"head bytes " * 30, os.urandom(5 * page)
            with mmap.mmap(heads, 2 * page) as h, mmap.mmap(arena, 16 * page) as a:
                h[1000 : 1000 + len(head)] = head
                a[4 * page + 123 : 4 * page + 123 + len(body)] = body  # file offset 4 pages = buffer offset 2 pages
                message = Message([(base + 1000, len(head)), (base + 2 * page + 123, len(body))])
                ring.prep_sendmsg_zc(sender.fileno(), message, 1, buf_index=1, msg_flags=MSG_WAITALL_NOSIGNAL)
                # An iovec past the buffer's end: EFAULT, and nothing sent.
                outside = Message([(base + 1000, 10), (base + 10 * page - 5, 10)])
                ring.prep_sendmsg_zc(sender.fileno(), outside, 2, buf_index=1, msg_flags=MSG_WAITALL_NOSIGNAL)
                ring.submit()
                cqes, received = pump(ring, lambda c, r: len(c) == 4 and len(r) == len(head) + len(body), receiver)
            results = {c.user_data: c.res for c in cqes if not c.notif}
            assert results == {1: len(head) + len(body), 2: -errno.EFAULT}
            assert received == head + body
        finally:
            ring.unregister_buffers()
    finally:
        os.close(heads)
        os.close(arena)


def test_message_and_register_files_refuse_bad_regions(ring: Ring) -> None:
    with pytest.raises(ValueError, match="at least one region"):
        Message([])
    with pytest.raises(ValueError):
        Message([(4096, 0)])
    fd = os.memfd_create("test-misaligned")
    try:
        os.ftruncate(fd, 2 * mmap.PAGESIZE)
        with pytest.raises(ValueError, match="page-aligned"):
            ring.register_files(0, [(fd, 100, mmap.PAGESIZE)])
        with pytest.raises(ValueError, match="page-aligned"):
            ring.register_files(0, [(fd, 0, 100)])
        with pytest.raises(OSError) as info:
            ring.register_files(0, [(fd, 0, mmap.PAGESIZE)])  # no table
        assert info.value.errno == errno.ENXIO
    finally:
        os.close(fd)


def test_batched_sends(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    chunks = [bytes([65 + i]) * (1000 + i) for i in range(6)]
    tracker: SendZcTracker[int] = SendZcTracker()
    with mapped(b"".join(chunks)) as (_, addr):
        offset = 0
        for i, chunk in enumerate(chunks):
            ud = tracker.start(i, len(chunk))
            ring.prep_send_zc(sender.fileno(), addr + offset, len(chunk), ud)
            offset += len(chunk)
        assert ring.submit() == len(chunks)
        total = sum(map(len, chunks))
        cqes, received = pump(ring, lambda c, r: len(c) == 2 * len(chunks) and len(r) == total, receiver)
        released = [e.item for c in cqes for e in tracker.on_cqe(c) if isinstance(e, SendReleased)]
    # Small sends on an idle socket are issued inline, in submission order.
    assert received == b"".join(chunks)
    assert sorted(released) == list(range(len(chunks)))
    assert tracker.outstanding == 0
    for ud in range(1, len(chunks) + 1):
        mine = [c for c in cqes if c.user_data == ud]
        assert [c.flags for c in mine] == [IORING_CQE_F_MORE, IORING_CQE_F_NOTIF]


def test_send_to_reset_peer_fails_and_still_releases(
    ring: Ring, pair: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = pair
    # Close with linger 0: the peer sends a RST, which loopback delivers at once.
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    receiver.close()
    tracker: SendZcTracker[str] = SendZcTracker()
    with mapped(b"z" * 1000) as (_, addr):
        uds = [tracker.start(name, 1000) for name in ("first", "second")]
        for ud in uds:
            ring.prep_send_zc(sender.fileno(), addr, 1000, ud, msg_flags=socket.MSG_NOSIGNAL)
        ring.submit()
        cqes, _ = pump(ring, lambda c, r: len(c) == 4)
        events = [e for c in cqes for e in tracker.on_cqe(c)]
    results = [e for e in events if isinstance(e, SendResult)]
    assert [r.res for r in results] == [-errno.ECONNRESET, -errno.EPIPE]
    # Failed, yet each announced a notification, which then released it.
    assert all(r.more for r in results)
    assert sorted(e.item for e in events if isinstance(e, SendReleased)) == ["first", "second"]
    assert tracker.outstanding == 0


def test_plain_send(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    with mapped(b"plain send") as (_, addr):
        ring.prep_send(sender.fileno(), addr, 10, 11)
        ring.submit()
        cqes, received = pump(ring, lambda c, r: len(c) == 1 and len(r) == 10, receiver)
    assert cqes == [Cqe(11, 10, 0)]
    assert received == b"plain send"


def test_cq_overflow_is_flushed(pair: tuple[socket.socket, socket.socket]) -> None:
    # 3 * 4 sends of 2 CQEs each into a CQ ring of 8: most of them overflow
    # into the kernel's list, and reap() must bring every one back.
    sender, receiver = pair
    with Ring(4, cq_entries=8) as r, mapped(b"o" * 64) as (_, addr):
        for batch in range(3):
            for i in range(4):
                r.prep_send_zc(sender.fileno(), addr, 64, batch * 4 + i + 1)
            r.submit()
        time.sleep(0.01)  # let the notifications be posted
        cqes, received = pump(r, lambda c, rec: len(c) == 24 and len(rec) == 12 * 64, receiver)
        assert r.cqes_lost == 0
    for ud in range(1, 13):
        assert [c.flags for c in cqes if c.user_data == ud] == [IORING_CQE_F_MORE, IORING_CQE_F_NOTIF]


def test_cq_overflow_with_nops() -> None:
    with Ring(4, cq_entries=8) as r:
        for i in range(12):
            if r.sq_space_left() == 0:
                r.submit()
            r.prep_nop(i + 1)
        r.submit()
        assert r._live().sq_flags.value & _uring._IORING_SQ_CQ_OVERFLOW
        assert [c.user_data for c in r.reap()] == list(range(1, 13))
        assert not r._live().sq_flags.value & _uring._IORING_SQ_CQ_OVERFLOW
        assert r.cqes_lost == 0


# --- the probe ------------------------------------------------------------------------


def test_probe_here() -> None:
    assert probe() == PROBE  # cached (other tests may have cleared the cache)
    fresh = probe_uncached()
    assert fresh == PROBE
    assert fresh.available and fresh.send_zc and fresh.report_usage and fresh.fixed_buffers
    assert fresh.sendmsg_zc
    # Vectored sends from registered buffers came with Linux 6.15.
    assert fresh.vectored_fixed == _kernel_at_least(6, 15)
    assert fresh.reason.startswith("io_uring works on Linux ")
    assert fresh.reason.endswith(".") and "\n" not in fresh.reason


def test_probe_when_setup_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _uring._call

    def fake(nr: int, *args: int | None) -> tuple[int, int]:
        if nr == _uring._NR_IO_URING_SETUP:
            return -1, errno.ENOSYS
        return real(nr, *args)

    monkeypatch.setattr(_uring, "_call", fake)
    with pytest.raises(UringUnavailable) as info:
        Ring(4)
    assert info.value.errno == errno.ENOSYS
    result = probe_uncached()
    assert result == Probe(False, result.reason, False, False, False)
    assert "ENOSYS" in result.reason and result.reason.endswith(".")


def test_unsupported_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(UringUnavailable) as info:
        Ring(4)
    assert "aarch64" in info.value.reason and "x86_64" in info.value.reason
    assert info.value.errno is None
    result = probe_uncached()
    assert not result.available and "aarch64" in result.reason


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("2\n", "disabled for every process"),
        ("1\n", "restricted to privileged processes"),
        ("0\n", "seccomp"),
        (None, "could not be read"),
        ("garbage", "could not be read"),
    ],
)
def test_eperm_reason_follows_the_sysctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, expected: str
) -> None:
    # The sysctl is global: the test points the reader at a file of its own.
    path = tmp_path / "io_uring_disabled"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr(_uring, "_IO_URING_DISABLED", str(path))
    reason = _uring._describe_setup_errno(errno.EPERM)
    assert reason.startswith("io_uring_setup failed with EPERM: ")
    assert expected in reason


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (errno.ENOSYS, "no io_uring"),
        (errno.EINVAL, "too old"),
        (errno.ENOMEM, "RLIMIT_MEMLOCK"),
        (errno.EMFILE, "too many open files"),
        (errno.EIO, os.strerror(errno.EIO)),
    ],
)
def test_other_setup_reasons(err: int, expected: str) -> None:
    assert expected in _uring._describe_setup_errno(err)


# A child that blocks io_uring_setup with a seccomp filter, then probes.
BLOCKED_CHILD = REPO / "tests" / "children" / "io_uring_blocked.py"


@pytest.mark.parametrize(
    ("blocked", "expected"),
    [
        (errno.EPERM, "EPERM: the system call is blocked"),
        (errno.ENOSYS, "ENOSYS: this kernel has no io_uring"),
    ],
)
def test_probe_falls_back_under_seccomp(blocked: int, expected: str) -> None:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    child = subprocess.run(
        [sys.executable, str(BLOCKED_CHILD), str(blocked), "probe"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["available"] is False
    assert not (result["send_zc"] or result["report_usage"] or result["fixed_buffers"])
    assert expected in result["reason"]
    assert "seccomp" in result["reason"]
