"""Tests of the zero-copy completion tracker (trio_zc._kernels._completions)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_zc._kernels._completions import CompletionRangeError, CompletionTracker

U32 = 2**32
MASK = U32 - 1

# Hypothesis keeps no example database: these tests must not write into the tree.
FAST = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def snapshot(t: CompletionTracker[Any]) -> tuple[object, ...]:
    """Everything observable about a tracker, to check that a rejection changed nothing."""
    return (
        t.outstanding,
        t.next_counter,
        t.oldest_outstanding,
        t.completed_calls,
        t.copied_calls,
        t.zerocopy_calls,
        t.items_outstanding(),
    )


def tracker_with(n: int, start: int = 0) -> CompletionTracker[str]:
    t: CompletionTracker[str] = CompletionTracker(start)
    for i in range(n):
        t.record(f"item{i}")
    return t


# --- construction and recording -------------------------------------------------


def test_fresh_tracker() -> None:
    t: CompletionTracker[str] = CompletionTracker()
    assert t.outstanding == 0
    assert t.next_counter == 0
    assert t.oldest_outstanding is None
    assert (t.completed_calls, t.copied_calls, t.zerocopy_calls) == (0, 0, 0)
    assert t.items_outstanding() == []


@pytest.mark.parametrize("start", [-1, U32, U32 + 5, -(2**40)])
def test_start_out_of_range(start: int) -> None:
    with pytest.raises(ValueError, match="start"):
        CompletionTracker(start)


def test_record_returns_consecutive_values_and_wraps() -> None:
    t: CompletionTracker[int] = CompletionTracker(MASK - 1)
    assert [t.record(i) for i in range(4)] == [MASK - 1, MASK, 0, 1]
    assert t.next_counter == 2
    assert t.oldest_outstanding == MASK - 1
    assert t.outstanding == 4
    assert t.items_outstanding() == [0, 1, 2, 3]


def test_record_refuses_an_ambiguous_window() -> None:
    # 2**32 - 1 real records would need tens of gigabytes; shrink the limit
    # (the tracker's own attribute, which both builds read) to check that
    # the refusal happens and leaves the tracker usable.
    import trio_zc._kernels._completions as mod

    t = tracker_with(3)
    assert t._window_limit == mod._WINDOW_LIMIT == 2**32 - 1
    t._window_limit = 3
    before = snapshot(t)
    with pytest.raises(RuntimeError, match="awaiting completion"):
        t.record("one too many")
    assert snapshot(t) == before
    assert t.complete(0, 0, copied=False) == ["item0"]
    assert t.record("fits again") == 3


# --- completing ---------------------------------------------------------------


def test_simple_ranges() -> None:
    t = tracker_with(4)
    assert t.complete(0, 0, copied=False) == ["item0"]
    assert t.oldest_outstanding == 1
    assert t.complete(1, 3, copied=False) == ["item1", "item2", "item3"]
    assert t.outstanding == 0
    assert t.oldest_outstanding is None
    assert t.next_counter == 4
    assert t.completed_calls == 4
    assert t.zerocopy_calls == 4
    assert t.copied_calls == 0


def test_coalesced_range_over_many_calls() -> None:
    n = 100_000
    t: CompletionTracker[int] = CompletionTracker()
    for i in range(n):
        t.record(i)
    assert t.complete(0, n - 1, copied=True) == list(range(n))
    assert t.outstanding == 0
    assert t.copied_calls == n
    assert t.next_counter == n


def test_out_of_order_ranges() -> None:
    t = tracker_with(10)
    assert t.complete(5, 9, copied=False) == [f"item{i}" for i in range(5, 10)]
    # The oldest call is still outstanding, so the window does not move.
    assert t.oldest_outstanding == 0
    assert t.outstanding == 5
    assert t.items_outstanding() == [f"item{i}" for i in range(5)]
    assert t.complete(0, 4, copied=False) == [f"item{i}" for i in range(5)]
    assert t.outstanding == 0
    assert t.oldest_outstanding is None
    assert t.next_counter == 10


def test_out_of_order_single_calls_in_reverse() -> None:
    t = tracker_with(6)
    for i in reversed(range(6)):
        assert t.complete(i, i, copied=False) == [f"item{i}"]
    assert t.outstanding == 0
    assert t.record("next") == 6


def test_hole_in_the_middle_moves_the_window_past_done_slots() -> None:
    t = tracker_with(6)
    t.complete(2, 3, copied=False)
    t.complete(0, 0, copied=False)
    assert t.oldest_outstanding == 1
    t.complete(1, 1, copied=False)
    # 2 and 3 were done already: the window now starts at 4.
    assert t.oldest_outstanding == 4
    assert t.items_outstanding() == ["item4", "item5"]


def test_wrapping_range() -> None:
    start = U32 - 3
    t = tracker_with(6, start)
    assert t.next_counter == 3
    assert t.complete(start, 2, copied=False) == [f"item{i}" for i in range(6)]
    assert t.outstanding == 0
    assert t.next_counter == 3
    assert t.completed_calls == 6


def test_wrapping_range_out_of_order() -> None:
    start = U32 - 3
    t = tracker_with(8, start)
    # Counter values: 2**32-3, 2**32-2, 2**32-1, 0, 1, 2, 3, 4.
    assert t.complete(MASK, 1, copied=False) == ["item2", "item3", "item4"]
    assert t.complete(start, start + 1, copied=False) == ["item0", "item1"]
    assert t.oldest_outstanding == 2
    assert t.complete(2, 4, copied=False) == ["item5", "item6", "item7"]
    assert t.outstanding == 0


def test_range_ending_at_the_last_counter_value_terminates() -> None:
    start = U32 - 4
    t = tracker_with(4, start)
    assert t.complete(start, MASK, copied=False) == ["item0", "item1", "item2", "item3"]
    assert t.next_counter == 0
    assert t.oldest_outstanding is None
    assert t.record("after wrap") == 0
    assert t.complete(0, 0, copied=False) == ["after wrap"]


def test_single_call_at_the_last_counter_value() -> None:
    t = tracker_with(1, MASK)
    assert t.complete(MASK, MASK, copied=True) == ["item0"]
    assert t.next_counter == 0


def test_copied_accounting() -> None:
    t = tracker_with(10)
    t.complete(0, 2, copied=True)
    t.complete(3, 3, copied=False)
    t.complete(7, 9, copied=True)
    t.complete(4, 6, copied=False)
    assert t.completed_calls == 10
    assert t.copied_calls == 6
    assert t.zerocopy_calls == 4


def test_items_are_returned_by_identity_without_comparing_them() -> None:
    class NoCompare:
        def __eq__(self, other: object) -> bool:
            raise AssertionError("items must never be compared")

        __hash__ = object.__hash__

    items = [NoCompare() for _ in range(4)]
    t: CompletionTracker[NoCompare] = CompletionTracker()
    for item in items:
        t.record(item)
    t.complete(2, 2, copied=False)  # leave a hole, so later ranges are scanned
    got = t.complete(3, 3, copied=False) + t.complete(0, 1, copied=False)
    assert [id(x) for x in got] == [id(items[3]), id(items[0]), id(items[1])]


def test_completed_items_are_not_kept_alive() -> None:
    import gc
    import weakref

    class Item:
        pass

    t: CompletionTracker[Item] = CompletionTracker()
    t.record(Item())
    second = Item()
    ref = weakref.ref(second)
    t.record(second)
    del second
    # Completed out of order: its slot stays in the window as a marker.
    assert len(t.complete(1, 1, copied=False)) == 1
    gc.collect()
    assert ref() is None


def test_large_window_then_compaction() -> None:
    # Enough in-order completions to trigger the compaction of the slot list,
    # with a hole straddling it.
    t: CompletionTracker[int] = CompletionTracker(U32 - 1500)
    for i in range(5000):
        t.record(i)
    assert t.complete((U32 - 1500 + 3000) & MASK, (U32 - 1500 + 3009) & MASK, copied=False) == (
        list(range(3000, 3010))
    )
    got: list[int] = []
    for i in range(0, 3000, 7):
        last = min(i + 6, 2999)
        got += t.complete((U32 - 1500 + i) & MASK, (U32 - 1500 + last) & MASK, copied=False)
    assert got == list(range(3000))
    assert t.oldest_outstanding == (U32 - 1500 + 3010) & MASK
    assert t.items_outstanding() == list(range(3010, 5000))
    assert t.record(5000) == (U32 - 1500 + 5000) & MASK


# --- rejection of bad ranges: all or nothing -----------------------------------


@pytest.mark.parametrize(
    ("start", "n", "done", "lo", "hi"),
    [
        # Beyond next_counter.
        (0, 5, [], 5, 5),
        (0, 5, [], 3, 5),
        (0, 5, [], 0, 5),
        # Nothing recorded at all.
        (0, 0, [], 0, 0),
        (U32 - 2, 0, [], U32 - 2, U32 - 2),
        # Already completed (and popped off the window).
        (0, 5, [(0, 1)], 1, 1),
        (0, 5, [(0, 1)], 0, 2),
        # Already completed (a hole inside the window).
        (0, 5, [(2, 2)], 2, 2),
        # Overlapping a hole.
        (0, 5, [(2, 2)], 1, 3),
        (0, 5, [(3, 4)], 2, 3),
        # Before the oldest outstanding value.
        (10, 5, [], 9, 11),
        # The whole 32-bit circle (lo == hi + 1 is 2**32 values).
        (0, 5, [], 1, 0),
        (0, 5, [], 0, MASK),
        # Out of 32-bit bounds.
        (0, 5, [], -1, 2),
        (0, 5, [], 0, U32),
        (0, 5, [], U32, U32 + 2),
        # Wrap-around: beyond the end of a wrapped window, and a backwards range.
        (U32 - 3, 6, [], U32 - 3, 3),
        (U32 - 3, 6, [], 2, U32 - 3),
        (U32 - 3, 6, [(U32 - 3, U32 - 2)], U32 - 2, 0),
    ],
)
def test_bad_range_changes_nothing(
    start: int, n: int, done: list[tuple[int, int]], lo: int, hi: int
) -> None:
    t = tracker_with(n, start)
    for a, b in done:
        t.complete(a, b, copied=False)
    before = snapshot(t)
    with pytest.raises(CompletionRangeError) as info:
        t.complete(lo, hi, copied=True)
    assert snapshot(t) == before
    assert info.value.lo == lo
    assert info.value.hi == hi
    assert f"[{lo}, {hi}]" in str(info.value)
    # The tracker still works: everything outstanding can be completed.
    items = t.items_outstanding()
    got: list[str] = []
    for lo2, hi2 in _outstanding_runs(t, start):
        got += t.complete(lo2, hi2, copied=False)
    assert got == items
    assert t.outstanding == 0


def _outstanding_runs(t: CompletionTracker[str], start: int) -> list[tuple[int, int]]:
    """The maximal runs of outstanding counter values of a :func:`tracker_with` tracker."""
    runs: list[tuple[int, int]] = []
    for name in t.items_outstanding():
        value = (start + int(name.removeprefix("item"))) & MASK
        if runs and runs[-1][1] == (value - 1) & MASK:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


def test_error_message_names_the_window() -> None:
    t = tracker_with(5, 100)
    t.complete(100, 100, copied=False)
    with pytest.raises(CompletionRangeError, match=r"\[101, 104\].*4 calls outstanding"):
        t.complete(103, 200, copied=False)
    empty: CompletionTracker[str] = CompletionTracker(7)
    with pytest.raises(CompletionRangeError, match="no calls are outstanding"):
        empty.complete(7, 7, copied=False)


def test_completion_range_error_is_a_value_error() -> None:
    assert issubclass(CompletionRangeError, ValueError)


# --- property test against a model ---------------------------------------------

starts = st.one_of(
    st.just(0),
    st.integers(U32 - 40, MASK),
    st.integers(0, MASK),
)


class Model:
    """The tracker's meaning, with unbounded sequence numbers and no cleverness."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.items: dict[int, int] = {}  # absolute sequence number -> item
        self.next_seq = 0
        self.completed = 0
        self.copied = 0

    def counter(self, seq: int) -> int:
        return (self.start + seq) & MASK

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs of outstanding sequence numbers, inclusive."""
        runs: list[tuple[int, int]] = []
        for seq in sorted(self.items):
            if runs and runs[-1][1] == seq - 1:
                runs[-1] = (runs[-1][0], seq)
            else:
                runs.append((seq, seq))
        return runs

    def covered(self, lo: int, hi: int) -> list[int] | None:
        """The sequence numbers [lo, hi] completes, or None if it must be refused."""
        if not (0 <= lo <= MASK and 0 <= hi <= MASK):
            return None
        count = ((hi - lo) & MASK) + 1
        if count > len(self.items):
            return None
        by_counter = {self.counter(seq): seq for seq in self.items}
        seqs = []
        for i in range(count):
            seq = by_counter.get((lo + i) & MASK)
            if seq is None:
                return None
            seqs.append(seq)
        return seqs


def check_agrees(t: CompletionTracker[int], m: Model) -> None:
    assert t.outstanding == len(m.items)
    assert t.next_counter == m.counter(m.next_seq)
    assert t.oldest_outstanding == (m.counter(min(m.items)) if m.items else None)
    assert t.items_outstanding() == [m.items[s] for s in sorted(m.items)]
    assert t.completed_calls == m.completed
    assert t.copied_calls == m.copied
    assert t.zerocopy_calls == m.completed - m.copied


@FAST
@given(start=starts, data=st.data())
def test_tracker_agrees_with_model(start: int, data: st.DataObject) -> None:
    t: CompletionTracker[int] = CompletionTracker(start)
    m = Model(start)
    item = 0
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        op = data.draw(st.sampled_from(["record", "complete", "complete", "arbitrary"]))
        if op == "record" or not m.items and op == "complete":
            for _ in range(data.draw(st.integers(1, 8), label="records")):
                assert t.record(item) == m.counter(m.next_seq)
                m.items[m.next_seq] = item
                m.next_seq += 1
                item += 1
        elif op == "complete":
            # A valid range: a contiguous part of one maximal run of outstanding calls.
            first, last = data.draw(st.sampled_from(m.runs()), label="run")
            a = data.draw(st.integers(first, last), label="from")
            b = data.draw(st.integers(a, last), label="to")
            copied = data.draw(st.booleans(), label="copied")
            got = t.complete(m.counter(a), m.counter(b), copied=copied)
            assert got == [m.items.pop(s) for s in range(a, b + 1)]
            m.completed += b - a + 1
            m.copied += (b - a + 1) if copied else 0
        else:
            # Any range near the window (or anywhere): the model decides.
            # Edges of the runs are where off-by-one mistakes live.
            edges = {m.next_seq - 1, m.next_seq, m.next_seq + 1}
            for first, last in m.runs():
                edges |= {first - 1, first, first + 1, last - 1, last, last + 1}
            edge = st.sampled_from(sorted(edges)).map(m.counter)
            near = st.integers(-3, m.next_seq + 3).map(m.counter)
            anywhere = st.integers(-2, U32 + 1)
            lo = data.draw(st.one_of(edge, near, anywhere), label="lo")
            hi = data.draw(st.one_of(edge, near, anywhere), label="hi")
            copied = data.draw(st.booleans(), label="copied")
            expected = m.covered(lo, hi)
            if expected is None:
                before = snapshot(t)
                with pytest.raises(CompletionRangeError):
                    t.complete(lo, hi, copied=copied)
                assert snapshot(t) == before
            else:
                got = t.complete(lo, hi, copied=copied)
                assert got == [m.items.pop(s) for s in expected]
                m.completed += len(expected)
                m.copied += len(expected) if copied else 0
        check_agrees(t, m)

    # Whatever happened, completing every remaining run empties the tracker.
    for first, last in m.runs():
        got = t.complete(m.counter(first), m.counter(last), copied=False)
        assert got == [m.items.pop(s) for s in range(first, last + 1)]
        m.completed += last - first + 1
    check_agrees(t, m)
    assert t.outstanding == 0
