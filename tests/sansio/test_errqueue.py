"""Tests of the error-queue parser (trio_zc._kernels._errqueue), including one against the kernel."""

from __future__ import annotations

import errno
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_zc._kernels._completions import CompletionRangeError, CompletionTracker
from trio_zc._kernels._errqueue import (
    IP_RECVERR,
    IPV6_RECVERR,
    MSG_ZEROCOPY,
    SO_EE_CODE_ZEROCOPY_COPIED,
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_EE_ORIGIN_LOCAL,
    SO_EE_ORIGIN_NONE,
    SO_EE_ORIGIN_TXSTATUS,
    SO_EE_ORIGIN_ZEROCOPY,
    SO_ZEROCOPY,
    SOL_IP,
    SOL_IPV6,
    MalformedRecordError,
    QueuedSocketError,
    ZeroCopyCompletion,
    pack_zerocopy_record,
    parse_ancdata,
    parse_cmsg,
)

U32 = 2**32
MASK = U32 - 1

FAST = settings(max_examples=300, deadline=None, database=None)


def extended_err(
    errno_: int = 0,
    origin: int = SO_EE_ORIGIN_ZEROCOPY,
    type_: int = 0,
    code: int = 0,
    pad: int = 0,
    info: int = 0,
    data: int = 0,
    trailer: bytes = bytes(16),
) -> bytes:
    return struct.pack("=IBBBBII", errno_, origin, type_, code, pad, info, data) + trailer


# --- round trips -----------------------------------------------------------------


@pytest.mark.parametrize("ipv6", [False, True])
@pytest.mark.parametrize("copied", [False, True])
@pytest.mark.parametrize(("lo", "hi"), [(0, 0), (0, 7), (5, 5), (MASK - 2, 3), (7, MASK)])
def test_round_trip(lo: int, hi: int, copied: bool, ipv6: bool) -> None:
    level, type_, data = pack_zerocopy_record(lo, hi, copied, ipv6=ipv6)
    assert (level, type_) == ((SOL_IPV6, IPV6_RECVERR) if ipv6 else (SOL_IP, IP_RECVERR))
    # The lengths the kernel uses: the header plus a sockaddr_in or sockaddr_in6.
    assert len(data) == (44 if ipv6 else 32)
    assert parse_cmsg(level, type_, data) == ZeroCopyCompletion(lo=lo, hi=hi, copied=copied)


@FAST
@given(lo=st.integers(0, MASK), hi=st.integers(0, MASK), copied=st.booleans(), ipv6=st.booleans())
def test_round_trip_property(lo: int, hi: int, copied: bool, ipv6: bool) -> None:
    cmsg = pack_zerocopy_record(lo, hi, copied, ipv6=ipv6)
    assert parse_ancdata([cmsg]) == [ZeroCopyCompletion(lo, hi, copied)]


@pytest.mark.parametrize(("lo", "hi"), [(-1, 0), (0, U32), (U32, 0)])
def test_pack_refuses_values_outside_32_bits(lo: int, hi: int) -> None:
    with pytest.raises(ValueError):
        pack_zerocopy_record(lo, hi, False)


def test_copied_is_the_low_bit_of_code() -> None:
    assert SO_EE_CODE_ZEROCOPY_COPIED == 1
    for code, copied in [(0, False), (1, True), (2, False), (3, True), (255, True)]:
        record = parse_cmsg(SOL_IP, IP_RECVERR, extended_err(code=code, info=1, data=2))
        assert record == ZeroCopyCompletion(lo=1, hi=2, copied=copied)


def test_header_alone_is_enough() -> None:
    data = extended_err(info=3, data=9, trailer=b"")
    assert len(data) == 16
    assert parse_cmsg(SOL_IPV6, IPV6_RECVERR, data) == ZeroCopyCompletion(3, 9, False)


def test_parse_ancdata_keeps_order() -> None:
    anc = [pack_zerocopy_record(0, 3, True), pack_zerocopy_record(4, 4, False, ipv6=True)]
    assert parse_ancdata(anc) == [ZeroCopyCompletion(0, 3, True), ZeroCopyCompletion(4, 4, False)]
    assert parse_ancdata([]) == []


def test_constants() -> None:
    assert (SO_ZEROCOPY, MSG_ZEROCOPY) == (60, 0x4000000)
    assert (SOL_IP, IP_RECVERR, SOL_IPV6, IPV6_RECVERR) == (0, 11, 41, 25)
    # Where the socket module has them, they agree.
    for name in ("SO_ZEROCOPY", "MSG_ZEROCOPY", "IP_RECVERR", "IPV6_RECVERR", "SOL_IP"):
        if hasattr(socket, name):
            assert getattr(socket, name) == globals()[name]


# --- ordinary errors on the queue ---------------------------------------------------


def test_icmp_error_is_a_queued_socket_error() -> None:
    # Destination unreachable (type 3), port unreachable (code 3).
    data = extended_err(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, 3, 3, 0, 0, 0)
    assert parse_cmsg(SOL_IP, IP_RECVERR, data) == QueuedSocketError(
        errno=errno.ECONNREFUSED, origin=SO_EE_ORIGIN_ICMP, type=3, code=3, info=0, data=0
    )


def test_icmp6_packet_too_big_keeps_info() -> None:
    data = extended_err(errno.EMSGSIZE, SO_EE_ORIGIN_ICMP6, 2, 0, 0, 1280, 0, bytes(28))
    record = parse_cmsg(SOL_IPV6, IPV6_RECVERR, data)
    assert isinstance(record, QueuedSocketError)
    assert (record.errno, record.origin, record.info) == (errno.EMSGSIZE, SO_EE_ORIGIN_ICMP6, 1280)


@pytest.mark.parametrize("origin", [SO_EE_ORIGIN_LOCAL, SO_EE_ORIGIN_TXSTATUS, 6, 200])
def test_other_origins_with_errno_are_queued_socket_errors(origin: int) -> None:
    record = parse_cmsg(SOL_IP, IP_RECVERR, extended_err(errno.ENOMSG, origin, info=42))
    assert record == QueuedSocketError(errno.ENOMSG, origin, 0, 0, 42, 0)


# --- malformed records ---------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 8, 15])
def test_short_data_is_malformed(length: int) -> None:
    data = extended_err(info=1, data=2)[:length]
    with pytest.raises(MalformedRecordError, match="shorter"):
        parse_cmsg(SOL_IP, IP_RECVERR, data)


@pytest.mark.parametrize(
    ("level", "type_"),
    [
        (socket.SOL_SOCKET, IP_RECVERR),
        (SOL_IP, IPV6_RECVERR),
        (SOL_IPV6, IP_RECVERR),
        (SOL_IP, 1),
        (6, 11),  # SOL_TCP
    ],
)
def test_wrong_level_or_type_is_malformed(level: int, type_: int) -> None:
    with pytest.raises(MalformedRecordError, match="not an extended socket error"):
        parse_cmsg(level, type_, pack_zerocopy_record(0, 0, False)[2])


@pytest.mark.parametrize(
    ("errno_", "type_", "pad"),
    [(errno.ENOBUFS, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 255, 255)],
)
def test_zerocopy_record_with_stray_fields_is_malformed(errno_: int, type_: int, pad: int) -> None:
    data = extended_err(errno_, SO_EE_ORIGIN_ZEROCOPY, type_, 0, pad, info=0, data=9)
    with pytest.raises(MalformedRecordError, match="zero-copy record"):
        parse_cmsg(SOL_IP, IP_RECVERR, data)


@pytest.mark.parametrize("origin", [SO_EE_ORIGIN_NONE, SO_EE_ORIGIN_ICMP, 7, 255])
def test_other_origin_without_errno_is_malformed(origin: int) -> None:
    with pytest.raises(MalformedRecordError, match="no errno"):
        parse_cmsg(SOL_IP, IP_RECVERR, extended_err(0, origin))


def test_parse_ancdata_is_all_or_nothing() -> None:
    anc = [pack_zerocopy_record(0, 3, True), (SOL_IP, IP_RECVERR, b"short")]
    with pytest.raises(MalformedRecordError):
        parse_ancdata(anc)


# --- fuzzing -------------------------------------------------------------------------

levels = st.one_of(st.sampled_from([SOL_IP, SOL_IPV6, socket.SOL_SOCKET]), st.integers(-1, 300))
types = st.one_of(st.sampled_from([IP_RECVERR, IPV6_RECVERR]), st.integers(-1, 300))
# Raw bytes, and well-shaped headers with arbitrary fields (mostly zero-copy
# origin, so that the interesting branch is reached often).
headers = st.builds(
    extended_err,
    errno_=st.one_of(st.just(0), st.integers(0, MASK)),
    origin=st.one_of(st.just(SO_EE_ORIGIN_ZEROCOPY), st.integers(0, 255)),
    type_=st.one_of(st.just(0), st.integers(0, 255)),
    code=st.integers(0, 255),
    pad=st.one_of(st.just(0), st.integers(0, 255)),
    info=st.integers(0, MASK),
    data=st.integers(0, MASK),
    trailer=st.binary(max_size=32),
)
payloads = st.one_of(st.binary(max_size=64), headers)


@FAST
@given(level=levels, type_=types, data=payloads)
def test_fuzz_parse_cmsg(level: int, type_: int, data: bytes) -> None:
    try:
        record = parse_cmsg(level, type_, data)
    except MalformedRecordError:
        return
    assert (level, type_) in {(SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)}
    assert isinstance(record, (ZeroCopyCompletion, QueuedSocketError))
    if isinstance(record, ZeroCopyCompletion):
        assert 0 <= record.lo <= MASK and 0 <= record.hi <= MASK
    else:
        assert record.errno != 0
        assert record.origin != SO_EE_ORIGIN_ZEROCOPY


@FAST
@given(
    start=st.one_of(st.integers(MASK - 20, MASK), st.integers(0, MASK)),
    n=st.integers(0, 30),
    anc=st.lists(st.tuples(st.sampled_from([SOL_IP, SOL_IPV6]), types, payloads), max_size=6),
)
def test_garbage_never_releases_what_is_not_outstanding(
    start: int, n: int, anc: list[tuple[int, int, bytes]]
) -> None:
    t: CompletionTracker[int] = CompletionTracker(start)
    for i in range(n):
        t.record(i)
    released: list[int] = []
    for cmsg in anc:
        try:
            record = parse_cmsg(*cmsg)
        except MalformedRecordError:
            continue
        if not isinstance(record, ZeroCopyCompletion):
            continue
        before = (t.outstanding, t.next_counter, t.completed_calls, t.items_outstanding())
        outstanding = set(before[3])
        try:
            got = t.complete(record.lo, record.hi, copied=record.copied)
        except CompletionRangeError:
            assert (t.outstanding, t.next_counter, t.completed_calls, t.items_outstanding()) == (
                before
            )
            continue
        assert got and set(got) <= outstanding
        # Items are sequence numbers: what came back is the run lo..hi.
        assert [(start + i) & MASK for i in got] == [
            (record.lo + k) & MASK for k in range(len(got))
        ]
        released += got
    assert len(released) == len(set(released))
    assert sorted(released + t.items_outstanding()) == list(range(n))


# --- the real kernel -----------------------------------------------------------------


def _drain_error_queue(
    sock: socket.socket, tracker: CompletionTracker[int], deadline: float
) -> tuple[list[int], list[ZeroCopyCompletion]]:
    released: list[int] = []
    completions: list[ZeroCopyCompletion] = []
    while tracker.outstanding and time.monotonic() < deadline:
        try:
            _, anc, _, _ = sock.recvmsg(0, 4096, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        for record in parse_ancdata(anc):
            assert isinstance(record, ZeroCopyCompletion), record
            completions.append(record)
            released += tracker.complete(record.lo, record.hi, copied=record.copied)
    return released, completions


def test_real_kernel_loopback_completions() -> None:
    chunk = 64 * 1024
    sends = 8
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sender:
            try:
                sender.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    pytest.skip(f"SO_ZEROCOPY is not available here: {exc}")
                raise
            # Timeouts so that a misbehaving kernel fails the test instead of hanging it.
            sender.settimeout(2.0)
            sender.connect(listener.getsockname())
            receiver, _ = listener.accept()
            with receiver:
                receiver.settimeout(2.0)
                tracker: CompletionTracker[int] = CompletionTracker()
                payload = bytes(range(256)) * (chunk // 256)
                for i in range(sends):
                    sent = sender.send(payload, MSG_ZEROCOPY)
                    # Blocking-with-timeout TCP sends of 64 KiB go out whole
                    # on loopback; a partial send would take a counter value
                    # of its own and break the one-item-per-send bookkeeping.
                    assert sent == chunk
                    assert tracker.record(i) == i
                    received = 0
                    while received < chunk:
                        received += len(receiver.recv(chunk - received))

                released, completions = _drain_error_queue(
                    sender, tracker, time.monotonic() + 2.0
                )

    # Every item exactly once (sorted, because the kernel may report out of order).
    assert sorted(released) == list(range(sends)), completions
    assert tracker.outstanding == 0
    assert tracker.completed_calls == sends
    # Loopback delivers to a local socket, which always copies.
    assert tracker.copied_calls == sends
    assert all(c.copied for c in completions)
