"""Fuzzing the completion parsers, and what garbage can do to memory (nothing).

Three layers, each fed with arbitrary and adversarial input:

1. The error-queue parser (:mod:`trio_zc._kernels._errqueue`), checked against an
   independent reading of ``struct sock_extended_err`` written here from the
   kernel's format: every cmsg either becomes exactly the record that
   reading gives, or is refused with :class:`MalformedRecordError` whose
   message names what was wrong. No other exception may escape.
2. A real :class:`~trio_zc._kernels._completion.CompletionChannel` (the mock
   kernel's, over a real pool with real leases) with sends in flight, fed
   arbitrary error-queue messages through its ``drain``: only a well-formed
   completion covering exactly calls that are outstanding releases
   anything, and every piece of garbage is counted in ``malformed_records``.
3. The io_uring CQE path (:func:`parse_cqe` and
   :meth:`SendZcTracker.on_cqe`), fed runs of entries built from raw bytes and
   from adversarial fields: an entry is refused with
   :class:`UnexpectedCqeError` naming the reason unless the kernel could have
   written it for a send in flight, and memory is released exactly once.

``tests/sansio/test_errqueue.py``, ``tests/sansio/test_completions.py`` and
``tests/sansio/test_uring_tracker.py`` fuzz single records and the trackers on their
own; this file checks exact agreement with a reference, the error messages,
and the whole way from bytes to released leases.
"""

from __future__ import annotations

import struct
import unittest.mock
from collections.abc import Iterator
from typing import TypeVar, Union

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_zc import BufferPool, ZeroCopyPolicy, ZeroCopyStream, open_pool
from trio_zc._kernels._completion import Ancdata, CompletionChannel
from trio_zc._kernels._errqueue import (
    IP_RECVERR,
    IPV6_RECVERR,
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_EE_ORIGIN_LOCAL,
    SO_EE_ORIGIN_TXSTATUS,
    SO_EE_ORIGIN_ZEROCOPY,
    SOL_IP,
    SOL_IPV6,
    MalformedRecordError,
    QueuedSocketError,
    ZeroCopyCompletion,
    parse_ancdata,
    parse_cmsg,
)
from trio_zc._lease import _LeaseRecord
from trio_zc._lifecycle import LeaseState
from trio_zc._kernels._uring_tracker import (
    IORING_CQE_F_MORE,
    IORING_CQE_F_NOTIF,
    IORING_NOTIF_USAGE_ZC_COPIED,
    Cqe,
    MalformedCqeError,
    SendReleased,
    SendResult,
    SendZcTracker,
    UnexpectedCqeError,
    pack_cqe,
    parse_cqe,
)
from trio_zc.testing import MockKernel, MockPeer

MASK = 0xFFFFFFFF
U64_MAX = 2**64 - 1
MORE = IORING_CQE_F_MORE
NOTIF = IORING_CQE_F_NOTIF

# Deterministic, and nothing written into the tree.
_BASE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(examples: int) -> settings:
    return settings(_BASE, max_examples=examples)


T = TypeVar("T")


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Draw from one of the strategies, picked in proportion to its weight.

    (``st.one_of(s, s, t)`` does not weigh ``s`` double: it drops repeated branches.)
    """
    picks = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda strategy: strategy)


# --- 1. the error-queue parser against the kernel's format ---------------------------------

# struct sock_extended_err as include/uapi/linux/errqueue.h lays it out:
# u32 ee_errno, u8 ee_origin, u8 ee_type, u8 ee_code, u8 ee_pad, u32 ee_info,
# u32 ee_data; host byte order, no padding.
EXTENDED_ERR = struct.Struct("=IBBBBII")
RECVERR_KINDS = ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR))

Record = Union[ZeroCopyCompletion, QueuedSocketError]


def reference(level: int, type_: int, data: bytes) -> Record | str:
    """What a cmsg is by the kernel's format: its record, or the reason it is none.

    The reason is a fragment the parser's error message must contain: it
    names the offending values, so that a log line says what was wrong.
    """
    if (level, type_) not in RECVERR_KINDS:
        return f"level {level}, type {type_} is not an extended socket error"
    if len(data) < EXTENDED_ERR.size:
        return f"is {len(data)} bytes long, shorter than the {EXTENDED_ERR.size}"
    errno_, origin, ee_type, code, pad, info, ee_data = EXTENDED_ERR.unpack(data[: EXTENDED_ERR.size])
    if origin == SO_EE_ORIGIN_ZEROCOPY:
        # The zero-copy path writes errno, type and pad as 0; code is 0 or COPIED (1).
        if errno_ or ee_type or pad:
            return f"zero-copy record with errno {errno_}, type {ee_type}, pad {pad}"
        return ZeroCopyCompletion(lo=info, hi=ee_data, copied=bool(code & 1))
    if errno_ == 0:
        return f"record of origin {origin} carries no errno"
    return QueuedSocketError(errno=errno_, origin=origin, type=ee_type, code=code, info=info, data=ee_data)


u8 = st.integers(0, 255)
u32 = st.one_of(st.sampled_from([0, 1, 2**31 - 1, 2**31, MASK - 1, MASK]), st.integers(0, MASK))
origins = st.one_of(
    st.just(SO_EE_ORIGIN_ZEROCOPY),
    st.sampled_from([0, SO_EE_ORIGIN_LOCAL, SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, SO_EE_ORIGIN_TXSTATUS, 6]),
    u8,
)
# The kernel's trailer is a zeroed sockaddr_in (16) or sockaddr_in6 (28).
trailers = st.one_of(
    st.sampled_from([b"", bytes(16), bytes(28)]),
    st.binary(min_size=1, max_size=300),  # oversized and non-zero trailers
)


@st.composite
def extended_errs(
    draw: st.DrawFn, lo: st.SearchStrategy[int] = u32, hi: st.SearchStrategy[int] = u32
) -> bytes:
    """A ``sock_extended_err`` with adversarial fields, whole, truncated or oversized."""
    fields = (
        draw(st.one_of(st.just(0), u32)),  # errno
        draw(origins),
        draw(st.one_of(st.just(0), u8)),  # type
        draw(st.one_of(st.sampled_from([0, 1]), u8)),  # code
        draw(st.one_of(st.just(0), u8)),  # pad
        draw(lo),  # info: first counter value
        draw(hi),  # data: last counter value
    )
    header = EXTENDED_ERR.pack(*fields)
    if draw(st.integers(0, 5)) == 0:
        return header[: draw(st.integers(0, EXTENDED_ERR.size - 1))]  # truncated
    return header + draw(trailers)


int_fields = st.one_of(st.integers(-1, 300), st.integers(-(2**31), 2**31 - 1), st.integers(-(2**70), 2**70))
kinds = st.one_of(
    st.sampled_from(RECVERR_KINDS),
    st.sampled_from([(SOL_IP, IPV6_RECVERR), (SOL_IPV6, IP_RECVERR), (1, IP_RECVERR), (SOL_IP, 0)]),
    st.tuples(int_fields, int_fields),
)
payloads = st.one_of(extended_errs(), st.binary(max_size=80))


@st.composite
def cmsgs(draw: st.DrawFn, payload: st.SearchStrategy[bytes] = payloads) -> tuple[int, int, bytes]:
    level, type_ = draw(kinds)
    return level, type_, draw(payload)


@fuzz(1500)
@given(cmsgs())
def test_cmsg_is_what_the_kernel_format_says_or_refused_with_the_reason(cmsg: tuple[int, int, bytes]) -> None:
    expected = reference(*cmsg)
    try:
        record = parse_cmsg(*cmsg)
    except MalformedRecordError as exc:
        assert isinstance(expected, str), f"refused a record the kernel could have written: {exc}"
        assert expected in str(exc), f"{str(exc)!r} does not say {expected!r}"
        return
    # Any other exception escapes here and fails the test.
    assert not isinstance(expected, str), f"accepted garbage ({expected}) as {record!r}"
    assert type(record) is type(expected) and record == expected
    if isinstance(record, ZeroCopyCompletion):
        assert 0 <= record.lo <= MASK and 0 <= record.hi <= MASK


@fuzz(500)
@given(st.lists(cmsgs(), max_size=5))
def test_ancdata_is_all_or_nothing_and_names_the_first_bad_cmsg(ancdata: Ancdata) -> None:
    expected = [reference(*cmsg) for cmsg in ancdata]
    reasons = [e for e in expected if isinstance(e, str)]
    try:
        records = parse_ancdata(ancdata)
    except MalformedRecordError as exc:
        assert reasons, f"refused records the kernel could have written: {exc}"
        assert reasons[0] in str(exc)
        return
    assert not reasons
    assert records == expected


@pytest.mark.parametrize(
    "lo, hi",
    [(5, 4), (MASK, 0), (0, MASK), (MASK, MASK), (1, 0), (2**31, 2**31 - 1)],
)
def test_wrapped_and_huge_ranges_are_parsed_as_ranges_not_walked(lo: int, hi: int) -> None:
    # The parser does not judge ranges (the tracker does, against what is
    # outstanding); it must hand them over unchanged, wrapped or not.
    data = EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, lo, hi) + bytes(16)
    assert parse_cmsg(SOL_IP, IP_RECVERR, data) == ZeroCopyCompletion(lo, hi, False)


# --- 2. garbage through a real completion channel, with leases in flight ---------------------

ALWAYS_ZC = ZeroCopyPolicy(copied_streak=0)
#: Each zero-copy call of the mock accepts this much, so a lease of k
#: chunks goes out in k calls (k counter values).
CHUNK = 16 * 1024
POOL_BYTES = 1 << 20


@attrs.frozen
class ChannelCase:
    #: The counter value of the connection's first zero-copy call.
    start: int
    #: How many calls (chunks) each lease is sent in.
    lease_calls: tuple[int, ...]
    #: Error-queue reads as ``(ancdata, MSG_CTRUNC set)``.
    reads: tuple[tuple[Ancdata, bool], ...]


@st.composite
def channel_cases(draw: st.DrawFn) -> ChannelCase:
    start = draw(st.one_of(st.just(0), st.integers(MASK - 6, MASK), st.integers(0, MASK)))
    lease_calls = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)))
    ncalls = sum(lease_calls)
    # Counter values around the window, so that ranges inside it, reaching
    # past either end, wrapping over 2**32 and repeating completed calls all
    # come up, next to values anywhere in the counter space.
    near = st.integers(-3, ncalls + 2).map(lambda k: (start + k) & MASK)
    counter = weighted((2, near), (1, u32))
    # Mostly a first value near the window and a short length; then any
    # two values (usually wrapped and huge), and [lo, lo - 1], which spans
    # all 2**32 values.
    inside = st.integers(0, ncalls - 1).map(lambda k: (start + k) & MASK)
    first = weighted((2, inside), (1, near))
    length = weighted((2, st.just(1)), (1, st.integers(2, 3)), (1, st.integers(1, ncalls + 2)))
    short = st.builds(lambda lo, n: (lo, (lo + n - 1) & MASK), first, length)
    whole_space = near.map(lambda lo: (lo, (lo - 1) & MASK))
    ranges = weighted((6, short), (2, st.tuples(counter, counter)), (1, whole_space))

    def completion(r: tuple[int, int], copied: bool, ipv6: bool) -> tuple[int, int, bytes]:
        header = EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, int(copied), 0, *r)
        return (
            (SOL_IPV6, IPV6_RECVERR, header + bytes(28)) if ipv6 else (SOL_IP, IP_RECVERR, header + bytes(16))
        )

    well_formed = st.builds(completion, ranges, st.booleans(), st.booleans())
    # Near-completions with one field wrong, and arbitrary garbage.
    near_payloads = extended_errs(lo=counter, hi=counter)
    one_cmsg = st.one_of(well_formed, cmsgs(near_payloads), cmsgs())
    # The kernel puts one cmsg in each read: mostly that, well-formed or
    # not, then empty and crowded reads (one bad cmsg spoils a read).
    ancdata = weighted(
        (3, st.lists(well_formed, min_size=1, max_size=1)),
        (1, st.lists(one_cmsg, min_size=1, max_size=1)),
        (1, st.lists(one_cmsg, max_size=3)),
    )
    truncated = weighted((6, st.just(False)), (1, st.just(True)))
    reads = draw(st.lists(st.tuples(ancdata, truncated), max_size=10))
    return ChannelCase(start, lease_calls, tuple(reads))


class Model:
    """Which calls are outstanding, and what the channel must have counted."""

    def __init__(self, calls: dict[int, tuple[_LeaseRecord, int]]) -> None:
        self.outstanding = dict(calls)
        self.malformed = 0
        self.completions = 0
        self.bytes_zerocopy = 0
        self.bytes_kernel_copied = 0
        self.queued_error: QueuedSocketError | None = None

    def read(self, ancdata: Ancdata, truncated: bool) -> None:
        # As the channel does today: a cut read (MSG_CTRUNC) and a read with a
        # bad cmsg each count once, whole; a read with no cmsg at all counts
        # nothing (the kernel never sends one, and it releases nothing).
        if truncated:
            self.malformed += 1
            return
        expected = [reference(*cmsg) for cmsg in ancdata]
        records = [e for e in expected if not isinstance(e, str)]
        if len(records) != len(expected):
            self.malformed += 1
            return
        for record in records:
            if isinstance(record, QueuedSocketError):
                self.queued_error = record
            else:
                self.complete(record)

    def complete(self, record: ZeroCopyCompletion) -> None:
        count = ((record.hi - record.lo) & MASK) + 1
        # Only a range of calls that are all outstanding releases anything.
        if count > len(self.outstanding):
            self.malformed += 1
            return
        values = [(record.lo + k) & MASK for k in range(count)]
        if not all(v in self.outstanding for v in values):
            self.malformed += 1
            return
        nbytes = sum(self.outstanding.pop(v)[1] for v in values)
        self.completions += count
        if record.copied:
            self.bytes_kernel_copied += nbytes
        else:
            self.bytes_zerocopy += nbytes


def deliver(channel: CompletionChannel, ancdata: Ancdata, truncated: bool) -> None:
    """One error-queue read, as ``recvmsg(..., MSG_ERRQUEUE)`` would return it."""

    def read_records() -> Iterator[tuple[Ancdata, bool]]:
        yield ancdata, truncated

    with unittest.mock.patch.object(channel.zerocopy, "completion_records", read_records):
        channel.drain()


async def run_channel_case(case: ChannelCase) -> int:
    """Send the leases, deliver the reads, check after each; the malformed count after them."""
    mock = MockKernel(counter_start=case.start)
    async with open_pool(max_bytes=POOL_BYTES, kernel=mock, policy=ALWAYS_ZC) as pool:
        stream, peer = mock.open_stream(pool)
        async with stream, peer:
            await send_leases(pool, stream, peer, case.lease_calls)
            channel = mock.connections[0].channel
            assert channel is not None
            # The window as the mock kernel numbered it: counter -> (slot, bytes).
            calls: dict[int, tuple[_LeaseRecord, int]] = {}
            for send in peer.sends:
                assert send.record is not None
                calls[send.counter] = (send.record, send.nbytes)
            assert sorted(calls) == sorted((case.start + k) & MASK for k in range(sum(case.lease_calls)))
            slots = {id(slot): slot for slot, _ in calls.values()}
            assert len(slots) == len(case.lease_calls)
            free_in_flight = pool.statistics().free_bytes
            model = Model(calls)

            def check(after: str) -> None:
                sent = stream.statistics().sent
                stats = pool.statistics()
                assert sent.malformed_records == stats.sent.malformed_records == model.malformed, after
                assert sent.completions == model.completions, after
                assert (sent.bytes_zerocopy, sent.bytes_kernel_copied) == (
                    model.bytes_zerocopy,
                    model.bytes_kernel_copied,
                ), after
                # Nothing released beyond what the model released: in-flight
                # counts of the tracker, the pool, and every single lease.
                assert channel.tracker.outstanding == len(model.outstanding), after
                assert stats.sends_in_flight == len(model.outstanding), after
                assert sorted(s.counter for s in peer.sends) == sorted(model.outstanding), after
                for slot in slots.values():
                    left = sum(1 for s, _ in model.outstanding.values() if s is slot)
                    assert slot.inflight == left, after
                    assert (slot.state is LeaseState.FREE) == (left == 0), after
                # Arena memory comes back only for leases whose every call completed.
                freed = sum(slot.block_length for slot in slots.values() if slot.state is LeaseState.FREE)
                assert stats.free_bytes == free_in_flight + freed, after
                assert channel.queued_error == model.queued_error, after

            check("before any record")
            for i, (ancdata, truncated) in enumerate(case.reads):
                deliver(channel, ancdata, truncated)
                model.read(ancdata, truncated)
                check(f"after read {i}: {ancdata!r}, truncated={truncated}")
            malformed = model.malformed

            # Complete what is left, one exact record per call, newest first.
            for value in sorted(model.outstanding, key=lambda v: (v - case.start) & MASK, reverse=True):
                record = (
                    SOL_IP,
                    IP_RECVERR,
                    EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, value, value),
                )
                deliver(channel, [record], False)
                model.read([record], False)
            check("after the exact completions")
            assert pool.statistics().free_bytes == pool.statistics().max_bytes
    return malformed


async def send_leases(
    pool: BufferPool, stream: ZeroCopyStream, peer: MockPeer, lease_calls: tuple[int, ...]
) -> None:
    # The test delivers every record itself; the mock's own are dropped.
    peer.lose_completions()
    peer.accept_at_most(CHUNK)
    for n, calls in enumerate(lease_calls):
        lease = await pool.acquire(calls * CHUNK)
        lease.write(bytes([n + 1]) * (calls * CHUNK))
        sealed = lease.seal()
        await stream.send_lease(sealed)
        sealed.release()  # the memory goes back to the pool when its sends complete
    await trio.testing.wait_all_tasks_blocked()


def run(case: ChannelCase) -> int:
    # Virtual time: if a bug leaves sends in flight, closing gives up on them
    # at once instead of after the real drain timeout.
    return trio.run(run_channel_case, case, clock=trio.testing.MockClock(autojump_threshold=0))


@fuzz(250)
@given(channel_cases())
def test_channel_releases_nothing_on_garbage_and_counts_it(case: ChannelCase) -> None:
    run(case)


@pytest.mark.parametrize(
    "ancdata, truncated",
    [
        ([], True),  # MSG_CTRUNC: the record was cut; whatever it said is lost
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 0, 0))], True),
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(11, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 0, 0))], False),
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ICMP, 0, 0, 0, 0, 0))], False),
        ([(SOL_IP, 99, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 0, 0))], False),
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 0, 0)[:15])], False),
        # A good record next to a bad one: all or nothing.
        (
            [
                (SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 0, 0)),
                (SOL_IP, IP_RECVERR, b"\x00" * 8),
            ],
            False,
        ),
        # Ranges that are not exactly outstanding calls.
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 0, 3))], False),
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 1, 0))], False),
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, MASK, 0))], False),
        ([(SOL_IP, IP_RECVERR, EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 3, 3))], False),
    ],
)
def test_each_kind_of_garbage_is_counted_once_and_releases_nothing(ancdata: Ancdata, truncated: bool) -> None:
    # Three calls outstanding (counter values 0, 1, 2); one piece of garbage.
    case = ChannelCase(start=0, lease_calls=(1, 2), reads=((ancdata, truncated),))
    assert run(case) == 1


# --- 3. io_uring CQEs: from bytes to released memory -----------------------------------------


class UringModel:
    """The SEND_ZC contract, for judging entries: sends by user_data, and their phase."""

    def __init__(self) -> None:
        # user_data -> [item, nbytes, phase], phase "result" or "notif".
        self.sends: dict[int, list[object]] = {}
        self.released: set[str] = set()

    def judge(self, cqe: Cqe) -> list[object] | str:
        """The events the tracker must answer with, or what its refusal must say."""
        ud = cqe.user_data
        send = self.sends.get(ud)
        if send is None:
            return f"user_data {ud}, which is not a send in flight"
        item, nbytes, phase = send
        assert isinstance(nbytes, int)
        notif, more = bool(cqe.flags & NOTIF), bool(cqe.flags & MORE)
        if notif:
            if more:
                return f"send {ud} has both F_NOTIF and F_MORE"
            if phase != "notif":
                return f"notification for send {ud} before its result CQE"
            copied = bool(cqe.res & IORING_NOTIF_USAGE_ZC_COPIED)
            return [SendReleased(ud, item, copied=copied, notified=True)]
        if phase != "result":
            return f"second result CQE for send {ud}"
        if not -4095 <= cqe.res <= nbytes:
            return f"result {cqe.res} for send {ud} of {nbytes} bytes"
        result = SendResult(ud, item, nbytes, cqe.res, more=more)
        if more:
            return [result]
        return [result, SendReleased(ud, item, copied=False, notified=False)]

    def apply(self, cqe: Cqe, events: list[object]) -> None:
        for event in events:
            if isinstance(event, SendReleased):
                item = self.sends.pop(event.user_data)[0]
                assert isinstance(item, str) and item not in self.released
                self.released.add(item)
            else:
                self.sends[cqe.user_data][2] = "notif"


@attrs.frozen
class UringCase:
    first_user_data: int
    #: Per send: its byte count, and whether its result (with F_MORE) came already.
    sends: tuple[tuple[int, bool], ...]
    #: The CQ ring's contents, 16 bytes per entry.
    entries: tuple[bytes, ...]


@st.composite
def uring_cases(draw: st.DrawFn) -> UringCase:
    # Near 2**64 the user_data counter wraps (skipping 0).
    first = draw(st.one_of(st.just(1), st.integers(U64_MAX - 3, U64_MAX), st.integers(1, U64_MAX)))
    sends = tuple(draw(st.lists(st.tuples(st.integers(0, 1 << 20), st.booleans()), min_size=1, max_size=6)))
    # The values start() hands out, and ones already used and released.
    known = []
    value = first
    for _ in sends:
        value = value or 1  # start() never hands out 0
        known.append(value)
        value = (value + 1) & U64_MAX
    user_data = weighted(
        (4, st.sampled_from(known)),
        (1, st.sampled_from([0, U64_MAX, (first - 1) & U64_MAX, value, (value + 1) & U64_MAX])),
        (1, st.integers(0, U64_MAX)),
    )
    sizes = sorted({n for n, _ in sends})
    res = weighted(
        (2, st.sampled_from(sizes)),
        (1, st.sampled_from([0, 1, -1, -4095, -4096, 2**31 - 1, -(2**31), -(2**31) + 1])),
        (1, st.integers(-(2**31), 2**31 - 1)),
    )
    flag_combos = st.sampled_from([0, MORE, NOTIF, MORE | NOTIF])
    # Bits the kernel may add (F_BUFFER, F_SOCK_NONEMPTY...) mixed into the combos.
    other_bits = st.one_of(st.just(0), st.integers(0, 2**32 - 1).map(lambda b: b & ~(MORE | NOTIF)))
    flags = st.builds(lambda combo, extra: combo | extra, flag_combos, other_bits)
    structured = st.builds(lambda u, r, f: pack_cqe(Cqe(u, r, f)), user_data, res, flags)
    raw = st.binary(min_size=16, max_size=16)
    entries = tuple(draw(st.lists(weighted((3, structured), (1, raw)), max_size=25)))
    return UringCase(first, sends, entries)


@fuzz(600)
@given(uring_cases())
def test_cqe_runs_release_memory_only_when_the_kernel_said_so(case: UringCase) -> None:
    tracker: SendZcTracker[str] = SendZcTracker(first_user_data=case.first_user_data)
    model = UringModel()
    for i, (nbytes, has_result) in enumerate(case.sends):
        item = f"lease{i}"
        ud = tracker.start(item, nbytes)
        model.sends[ud] = [item, nbytes, "result"]
        if has_result:
            cqe = Cqe(ud, nbytes, MORE)
            events: list[object] = list(tracker.on_cqe(cqe))
            model.apply(cqe, events)

    # The ring hands the entries over as one run of bytes.
    ring = b"".join(case.entries)
    for offset in range(0, len(ring), 16):
        cqe = parse_cqe(ring[offset : offset + 16])
        expected = model.judge(cqe)
        before = (tracker.outstanding, tracker.awaiting_notification, tracker.items_outstanding())
        try:
            events = list(tracker.on_cqe(cqe))
        except UnexpectedCqeError as exc:
            assert isinstance(expected, str), f"refused an entry the kernel could have written: {exc}"
            assert expected in str(exc), f"{str(exc)!r} does not say {expected!r}"
            assert exc.cqe == cqe
            # Refused: nothing changed, nothing released.
            assert (tracker.outstanding, tracker.awaiting_notification, tracker.items_outstanding()) == before
            continue
        # Any other exception escapes here and fails the test.
        assert not isinstance(expected, str), f"accepted {cqe!r} ({expected}) with {events!r}"
        assert events == expected
        model.apply(cqe, events)

    assert tracker.items_outstanding() == [s[0] for s in model.sends.values()]
    assert tracker.released_sends == len(model.released)
    assert tracker.awaiting_notification == sum(1 for s in model.sends.values() if s[2] == "notif")


@pytest.mark.parametrize(
    "steps, refusal",
    [
        # (user_data offset from the first send, res, flags) of each entry;
        # the last one is refused with the given message.
        ([(0, 0, NOTIF)], "before its result CQE"),
        ([(0, 100, MORE), (0, 0, NOTIF), (0, 0, NOTIF)], "not a send in flight"),  # duplicate notification
        ([(0, 100, MORE), (0, 100, MORE)], "second result CQE"),
        ([(0, 100, MORE), (0, 0, MORE | NOTIF)], "both F_NOTIF and F_MORE"),
        ([(0, 100, 0), (0, 0, NOTIF)], "not a send in flight"),  # notification not announced
        ([(7, 100, MORE)], "not a send in flight"),  # unknown user_data
        ([(0, 101, MORE)], "result 101 for send"),  # more bytes than asked for
        ([(0, -4096, MORE)], "is neither a byte count"),
    ],
)
def test_each_kind_of_unexpected_cqe_is_refused_by_name(
    steps: list[tuple[int, int, int]], refusal: str
) -> None:
    tracker: SendZcTracker[str] = SendZcTracker(first_user_data=50)
    assert tracker.start("lease", 100) == 50
    *good, bad = [parse_cqe(pack_cqe(Cqe(50 + off, res, flags))) for off, res, flags in steps]
    for cqe in good:
        tracker.on_cqe(cqe)
    held = tracker.items_outstanding()
    released = tracker.released_sends
    with pytest.raises(UnexpectedCqeError, match=refusal):
        tracker.on_cqe(bad)
    assert tracker.items_outstanding() == held and tracker.released_sends == released


def test_the_ring_uses_16_byte_cqes_and_32_byte_ones_are_refused() -> None:
    # Rings set up with IORING_SETUP_CQE32 have 32-byte entries; this
    # library's ring does not ask for them, so an entry of any other size is
    # refused by length instead of being read as two.
    from trio_zc._kernels import _ring as _uring

    assert _uring._CQE_SIZE == 16
    big = pack_cqe(Cqe(1, 100, MORE)) + bytes(16)
    with pytest.raises(MalformedCqeError, match="16 bytes long, not 32"):
        parse_cqe(big)
