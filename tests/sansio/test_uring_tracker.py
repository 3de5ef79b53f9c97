"""Tests of the SEND_ZC completion bookkeeping (trio_zc._kernels._uring_tracker), with no kernel."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

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

U64_MAX = 2**64 - 1
MORE = IORING_CQE_F_MORE
NOTIF = IORING_CQE_F_NOTIF
# The bit as the kernel writes it into the signed 32-bit res.
COPIED_RES = -(2**31)

# Hypothesis keeps no example database: these tests must not write into the tree.
FAST = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def snapshot(t: SendZcTracker[Any]) -> tuple[object, ...]:
    """Everything observable about a tracker, to check that a rejection changed nothing."""
    return (
        t.outstanding,
        t.awaiting_notification,
        t.released_sends,
        t.copied_sends,
        t.items_outstanding(),
        repr(t),
    )


def rejected(t: SendZcTracker[Any], cqe: Cqe, match: str | None = None) -> UnexpectedCqeError:
    before = snapshot(t)
    with pytest.raises(UnexpectedCqeError, match=match) as info:
        t.on_cqe(cqe)
    assert snapshot(t) == before
    assert info.value.cqe is cqe
    return info.value


# --- parsing --------------------------------------------------------------------


def test_parse_cqe_fields() -> None:
    data = struct.pack("=QiI", 0x1122334455667788, -104, MORE)
    cqe = parse_cqe(data)
    assert cqe == Cqe(user_data=0x1122334455667788, res=-104, flags=MORE)
    assert cqe.more and not cqe.notif
    assert pack_cqe(cqe) == data


def test_parse_cqe_copied_notification() -> None:
    # The kernel sets bit 31 of the (signed) res: it reads back negative.
    cqe = parse_cqe(struct.pack("=QII", 7, IORING_NOTIF_USAGE_ZC_COPIED, NOTIF))
    assert cqe == Cqe(7, COPIED_RES, NOTIF)
    assert cqe.notif and not cqe.more


@pytest.mark.parametrize("length", [0, 1, 8, 15, 17, 32])
def test_parse_cqe_wrong_length(length: int) -> None:
    with pytest.raises(MalformedCqeError, match=f"not {length}"):
        parse_cqe(bytes(length))


@pytest.mark.parametrize(
    "cqe", [Cqe(-1, 0, 0), Cqe(2**64, 0, 0), Cqe(1, 2**31, 0), Cqe(1, -(2**31) - 1, 0), Cqe(1, 0, 2**32)]
)
def test_pack_cqe_out_of_range(cqe: Cqe) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack_cqe(cqe)


# --- starting sends ---------------------------------------------------------------


def test_fresh_tracker() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    assert (t.outstanding, t.awaiting_notification, t.released_sends, t.copied_sends) == (0, 0, 0, 0)
    assert t.items_outstanding() == []
    assert "outstanding=0" in repr(t)


def test_start_assigns_distinct_nonzero_user_data() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    uds = [t.start(f"item{i}", 100) for i in range(5)]
    assert uds == [1, 2, 3, 4, 5]
    assert t.outstanding == 5
    assert t.items_outstanding() == [f"item{i}" for i in range(5)]
    assert all(t.is_tracking(ud) for ud in uds)
    assert not t.is_tracking(0) and not t.is_tracking(6)


def test_user_data_wraps_past_zero_and_skips_values_in_use() -> None:
    t: SendZcTracker[str] = SendZcTracker(first_user_data=U64_MAX - 1)
    assert t.start("a", 1) == U64_MAX - 1
    assert t.start("b", 1) == U64_MAX
    assert t.start("c", 1) == 1  # 0 is never handed out
    # Complete "b", then go round: values still in use are skipped.
    t.on_cqe(Cqe(U64_MAX, 1, 0))
    t2: SendZcTracker[str] = SendZcTracker(first_user_data=U64_MAX)
    assert t2.start("x", 1) == U64_MAX
    assert t2.start("y", 1) == 1


def test_start_skips_user_data_in_use() -> None:
    t: SendZcTracker[str] = SendZcTracker(first_user_data=U64_MAX)
    assert t.start("a", 1) == U64_MAX
    assert t.start("b", 1) == 1
    # Force the counter back onto used values, as a full wrap would.
    t._next = U64_MAX
    assert t.start("c", 1) == 2


@pytest.mark.parametrize("first", [0, -1, 2**64])
def test_first_user_data_out_of_range(first: int) -> None:
    with pytest.raises(ValueError, match="first_user_data"):
        SendZcTracker(first_user_data=first)


@pytest.mark.parametrize("nbytes", [-1, 2**32])
def test_start_rejects_bad_sizes(nbytes: int) -> None:
    t: SendZcTracker[str] = SendZcTracker()
    with pytest.raises(ValueError, match="32-bit"):
        t.start("a", nbytes)
    assert t.outstanding == 0


def test_withdraw_before_any_cqe() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    assert t.withdraw(ud) == "a"
    assert t.outstanding == 0
    # A CQE for it afterwards is garbage.
    rejected(t, Cqe(ud, 10, MORE), "not a send in flight")


def test_withdraw_refuses_after_result() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    t.on_cqe(Cqe(ud, 10, MORE))
    with pytest.raises(ValueError, match="already has a result"):
        t.withdraw(ud)
    assert t.outstanding == 1
    with pytest.raises(KeyError):
        t.withdraw(ud + 1)


# --- the normal paths -----------------------------------------------------------------


def test_result_with_more_then_notification() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 100)
    assert t.on_cqe(Cqe(ud, 100, MORE)) == [SendResult(ud, "a", 100, 100, more=True)]
    assert t.outstanding == 1 and t.awaiting_notification == 1
    assert t.items_outstanding() == ["a"]
    assert t.on_cqe(Cqe(ud, 0, NOTIF)) == [SendReleased(ud, "a", copied=False, notified=True)]
    assert t.outstanding == 0 and t.awaiting_notification == 0
    assert (t.released_sends, t.copied_sends) == (1, 0)
    assert not t.is_tracking(ud)


def test_notification_reports_copy() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 100)
    t.on_cqe(Cqe(ud, 100, MORE))
    assert t.on_cqe(Cqe(ud, COPIED_RES, NOTIF)) == [SendReleased(ud, "a", copied=True, notified=True)]
    assert (t.released_sends, t.copied_sends) == (1, 1)


def test_notification_res_other_than_usage_bits_is_accepted() -> None:
    # The res of a notification never decides whether memory is free.
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 100)
    t.on_cqe(Cqe(ud, 100, MORE))
    assert t.on_cqe(Cqe(ud, 12345, NOTIF)) == [SendReleased(ud, "a", copied=False, notified=True)]


def test_result_without_more_releases_at_once() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 100)
    assert t.on_cqe(Cqe(ud, 100, 0)) == [
        SendResult(ud, "a", 100, 100, more=False),
        SendReleased(ud, "a", copied=False, notified=False),
    ]
    assert t.outstanding == 0
    rejected(t, Cqe(ud, 0, NOTIF), "not a send in flight")


def test_failed_send_with_more_keeps_memory_until_notification() -> None:
    # Linux 6.18 answers every failed SEND_ZC this way (EPIPE, ECONNRESET, EBADF...).
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 100)
    (result,) = t.on_cqe(Cqe(ud, -32, MORE))
    assert isinstance(result, SendResult)
    assert (result.errno, result.sent, result.partial, result.more) == (32, 0, False, True)
    assert t.items_outstanding() == ["a"]
    assert t.on_cqe(Cqe(ud, 0, NOTIF)) == [SendReleased(ud, "a", copied=False, notified=True)]


def test_failed_send_without_more_releases_at_once() -> None:
    # What a kernel without SEND_ZC answers: EINVAL, and no notification.
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 100)
    result, released = t.on_cqe(Cqe(ud, -22, 0))
    assert result == SendResult(ud, "a", 100, -22, more=False)
    assert released == SendReleased(ud, "a", copied=False, notified=False)
    assert isinstance(result, SendResult) and result.errno == 22


def test_partial_send() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 100)
    (result,) = t.on_cqe(Cqe(ud, 40, MORE))
    assert isinstance(result, SendResult)
    assert (result.partial, result.sent, result.errno) == (True, 40, None)


def test_zero_byte_send() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 0)
    (result, released) = t.on_cqe(Cqe(ud, 0, 0))
    assert isinstance(result, SendResult) and not result.partial and result.sent == 0
    assert isinstance(released, SendReleased)


def test_interleaved_sends_complete_out_of_order() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    a, b, c = (t.start(x, 10) for x in "abc")
    t.on_cqe(Cqe(a, 10, MORE))
    t.on_cqe(Cqe(c, 10, MORE))
    t.on_cqe(Cqe(b, 10, MORE))
    assert t.awaiting_notification == 3
    assert t.on_cqe(Cqe(c, 0, NOTIF))[0].item == "c"
    assert t.items_outstanding() == ["a", "b"]
    assert t.on_cqe(Cqe(a, 0, NOTIF))[0].item == "a"
    assert t.on_cqe(Cqe(b, 0, NOTIF))[0].item == "b"
    assert t.outstanding == 0


# --- garbage ------------------------------------------------------------------------------


def test_unknown_user_data() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    t.start("a", 10)
    for cqe in (Cqe(99, 10, MORE), Cqe(99, 0, NOTIF), Cqe(0, 0, 0)):
        rejected(t, cqe, "not a send in flight")


def test_notification_before_result() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    rejected(t, Cqe(ud, 0, NOTIF), "before its result")


def test_duplicate_result() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    t.on_cqe(Cqe(ud, 10, MORE))
    rejected(t, Cqe(ud, 10, MORE), "second result")
    rejected(t, Cqe(ud, 10, 0), "second result")


def test_duplicate_notification() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    t.on_cqe(Cqe(ud, 10, MORE))
    t.on_cqe(Cqe(ud, 0, NOTIF))
    rejected(t, Cqe(ud, 0, NOTIF), "not a send in flight")


def test_notification_that_also_says_more() -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    t.on_cqe(Cqe(ud, 10, MORE))
    rejected(t, Cqe(ud, 0, NOTIF | MORE), "both F_NOTIF and F_MORE")


@pytest.mark.parametrize("res", [11, 2**31 - 1, -4096, -(2**31)])
def test_result_out_of_range(res: int) -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    rejected(t, Cqe(ud, res, MORE), "neither a byte count")


@pytest.mark.parametrize("flags", [-1, 2**32])
def test_flags_out_of_range(flags: int) -> None:
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    rejected(t, Cqe(ud, 10, flags), "do not fit")


def test_unrelated_flag_bits_are_ignored() -> None:
    # F_BUFFER (1) and F_SOCK_NONEMPTY (4) mean nothing for a send; the
    # decision rests on F_MORE and F_NOTIF alone.
    t: SendZcTracker[str] = SendZcTracker()
    ud = t.start("a", 10)
    assert len(t.on_cqe(Cqe(ud, 10, MORE | 1 | 4))) == 1
    assert len(t.on_cqe(Cqe(ud, 0, NOTIF | 1 | 4))) == 1


# --- a model, and hypothesis ----------------------------------------------------------


class Model:
    """The tracker's contract, written as plainly as possible."""

    def __init__(self) -> None:
        # user_data -> [item, nbytes, phase] where phase is "result" or "notif".
        self.sends: dict[int, list[Any]] = {}
        self.released: list[tuple[int, str]] = []

    def expect(self, cqe: Cqe) -> list[object] | None:
        """The events the tracker must answer with, or None if it must refuse."""
        send = self.sends.get(cqe.user_data)
        if send is None or not 0 <= cqe.flags < 2**32:
            return None
        item, nbytes, phase = send
        notif = bool(cqe.flags & NOTIF)
        more = bool(cqe.flags & MORE)
        if notif:
            if more or phase != "notif":
                return None
            copied = bool(cqe.res & IORING_NOTIF_USAGE_ZC_COPIED)
            return [SendReleased(cqe.user_data, item, copied=copied, notified=True)]
        if phase != "result" or not -4095 <= cqe.res <= nbytes:
            return None
        result = SendResult(cqe.user_data, item, nbytes, cqe.res, more=more)
        if more:
            return [result]
        return [result, SendReleased(cqe.user_data, item, copied=False, notified=False)]

    def apply(self, cqe: Cqe, events: list[object]) -> None:
        for event in events:
            if isinstance(event, SendReleased):
                del self.sends[event.user_data]
                self.released.append((event.user_data, event.item))
            else:
                self.sends[cqe.user_data][2] = "notif"


class TrackerMachine(RuleBasedStateMachine):
    """Random interleavings of starts, results, notifications and garbage against the model."""

    awaiting_result = Bundle("awaiting_result")
    awaiting_notif = Bundle("awaiting_notif")

    def __init__(self) -> None:
        super().__init__()
        self.tracker: SendZcTracker[str] = SendZcTracker()
        self.model = Model()
        self.counter = 0

    def feed(self, cqe: Cqe) -> list[object]:
        expected = self.model.expect(cqe)
        if expected is None:
            rejected(self.tracker, cqe)
            return []
        events: list[object] = list(self.tracker.on_cqe(cqe))
        assert events == expected
        self.model.apply(cqe, events)
        return events

    @rule(target=awaiting_result, nbytes=st.integers(0, 2**20))
    def start(self, nbytes: int) -> int:
        self.counter += 1
        item = f"item{self.counter}"
        ud = self.tracker.start(item, nbytes)
        assert ud not in self.model.sends and ud != 0
        self.model.sends[ud] = [item, nbytes, "result"]
        return ud

    @rule(
        target=awaiting_notif,
        ud=consumes(awaiting_result),
        how=st.sampled_from(["full", "partial", "error"]),
        data=st.data(),
    )
    def result_with_more(self, ud: int, how: str, data: st.DataObject) -> int:
        if self.phase(ud) != "result":
            # A garbage rule happened to hit this send first; the model judges.
            self.feed(Cqe(ud, 0, MORE))
            return ud
        res = self.draw_res(data, self.model.sends[ud][1], how)
        events = self.feed(Cqe(ud, res, MORE))
        assert len(events) == 1 and isinstance(events[0], SendResult)
        return ud

    @rule(ud=consumes(awaiting_result), how=st.sampled_from(["full", "partial", "error"]), data=st.data())
    def result_without_more(self, ud: int, how: str, data: st.DataObject) -> None:
        if self.phase(ud) != "result":
            self.feed(Cqe(ud, 0, 0))
            return
        res = self.draw_res(data, self.model.sends[ud][1], how)
        events = self.feed(Cqe(ud, res, 0))
        assert [type(e) for e in events] == [SendResult, SendReleased]

    @rule(ud=consumes(awaiting_notif), copied=st.booleans())
    def notification(self, ud: int, copied: bool) -> None:
        if self.phase(ud) != "notif":
            self.feed(Cqe(ud, 0, NOTIF))
            return
        events = self.feed(Cqe(ud, COPIED_RES if copied else 0, NOTIF))
        assert len(events) == 1 and isinstance(events[0], SendReleased)
        assert events[0].copied is copied

    @rule(ud=awaiting_result)
    def early_notification(self, ud: int) -> None:
        # Not consumed: the send stays in its bundle. It is refused while
        # awaiting its result; the model knows if a garbage rule moved it on.
        self.feed(Cqe(ud, 0, NOTIF))

    @rule(ud=awaiting_notif, res=st.integers(-(2**31), 2**31 - 1), more=st.booleans())
    def duplicate_result(self, ud: int, res: int, more: bool) -> None:
        assert self.feed(Cqe(ud, res, MORE if more else 0)) == []

    def phase(self, ud: int) -> str | None:
        send = self.model.sends.get(ud)
        return None if send is None else str(send[2])

    @rule(
        user_data=st.integers(0, U64_MAX),
        res=st.integers(-(2**31), 2**31 - 1),
        flags=st.integers(0, 2**32 - 1),
    )
    def garbage(self, user_data: int, res: int, flags: int) -> None:
        # Usually unknown user_data; whatever it is, the model decides.
        self.feed(Cqe(user_data, res, flags))

    @rule(data=st.data())
    def replay_released(self, data: st.DataObject) -> None:
        if not self.model.released:
            return
        ud, _ = data.draw(st.sampled_from(self.model.released))
        flags = data.draw(st.sampled_from([0, MORE, NOTIF]))
        rejected(self.tracker, Cqe(ud, 0, flags))

    @staticmethod
    def draw_res(data: st.DataObject, nbytes: int, how: str) -> int:
        if how == "full":
            return nbytes
        if how == "partial":
            return data.draw(st.integers(0, nbytes))
        return -data.draw(st.integers(1, 4095))

    @invariant()
    def matches_model(self) -> None:
        t = self.tracker
        assert t.outstanding == len(self.model.sends)
        assert t.items_outstanding() == [s[0] for s in self.model.sends.values()]
        assert t.awaiting_notification == sum(1 for s in self.model.sends.values() if s[2] == "notif")
        assert t.released_sends == len(self.model.released)
        released_items = [item for _, item in self.model.released]
        assert len(released_items) == len(set(released_items))  # each exactly once


TrackerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tracker_against_model = TrackerMachine.TestCase


# --- fuzzing ----------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=40))
def test_fuzz_parse_cqe(data: bytes) -> None:
    try:
        cqe = parse_cqe(data)
    except MalformedCqeError:
        assert len(data) != 16
        return
    assert len(data) == 16
    assert 0 <= cqe.user_data <= U64_MAX and -(2**31) <= cqe.res < 2**31 and 0 <= cqe.flags < 2**32
    assert pack_cqe(cqe) == data


@st.composite
def tracker_and_cqe(draw: st.DrawFn) -> tuple[SendZcTracker[str], Model, Cqe]:
    t: SendZcTracker[str] = SendZcTracker(first_user_data=draw(st.integers(1, U64_MAX)))
    model = Model()
    for i in range(draw(st.integers(0, 6))):
        nbytes = draw(st.integers(0, 1000))
        ud = t.start(f"item{i}", nbytes)
        model.sends[ud] = [f"item{i}", nbytes, "result"]
        if draw(st.booleans()):
            t.on_cqe(Cqe(ud, nbytes, MORE))
            model.sends[ud][2] = "notif"
    known = sorted(model.sends)
    user_data = draw(
        st.one_of(st.integers(0, U64_MAX), st.sampled_from(known)) if known else st.integers(0, U64_MAX)
    )
    # Raw 32-bit values, mixed with ones near what the kernel writes, so
    # that both garbage and plausible entries come up.
    res = draw(st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-4096, 1001), st.just(COPIED_RES)))
    flags = draw(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, MORE, NOTIF, MORE | NOTIF])))
    return t, model, Cqe(user_data, res, flags)


@FAST
@given(tracker_and_cqe())
def test_fuzz_on_cqe(case: tuple[SendZcTracker[str], Model, Cqe]) -> None:
    # Arbitrary entries against sends in both phases: the tracker answers
    # exactly as the model does, and refuses with no change otherwise. So
    # nothing is ever released that the model would not release.
    t, model, cqe = case
    expected = model.expect(cqe)
    before = snapshot(t)
    try:
        events = t.on_cqe(cqe)
    except UnexpectedCqeError:
        assert expected is None
        assert snapshot(t) == before
        return
    assert events == expected


@FAST
@given(st.binary(min_size=16, max_size=16))
def test_fuzz_bytes_into_tracker(data: bytes) -> None:
    # Raw bytes all the way through: only a Cqe, MalformedCqeError or
    # UnexpectedCqeError may come out, and a fresh-looking garbage entry
    # releases nothing.
    t: SendZcTracker[str] = SendZcTracker(first_user_data=2**40)
    t.start("a", 100)
    t.on_cqe(Cqe(2**40, 100, MORE))
    t.start("b", 100)
    cqe = parse_cqe(data)
    before = snapshot(t)
    try:
        events = t.on_cqe(cqe)
    except UnexpectedCqeError:
        assert snapshot(t) == before
        return
    # Only an entry that is exactly right for "a" or "b" gets through.
    assert cqe.user_data in (2**40, 2**40 + 1)
    assert events == two_send_model().expect(cqe)


def two_send_model() -> Model:
    model = Model()
    model.sends[2**40] = ["a", 100, "notif"]
    model.sends[2**40 + 1] = ["b", 100, "result"]
    return model
