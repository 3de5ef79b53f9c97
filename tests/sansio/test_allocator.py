from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_zc._allocator import Allocator

PAGE = 4096


def test_rounds_to_pages_and_fills_in_order() -> None:
    a = Allocator(16 * PAGE, PAGE)
    assert a.allocate(1) == 0
    assert a.allocate(PAGE) == PAGE
    assert a.allocate(PAGE + 1) == 2 * PAGE
    assert a.free_bytes == 12 * PAGE
    assert a.allocate(13 * PAGE) is None
    assert a.allocate(12 * PAGE) == 4 * PAGE
    assert a.free_bytes == 0 and a.free_list() == []


def test_freed_neighbours_merge_so_fragmentation_heals() -> None:
    a = Allocator(4 * PAGE, PAGE)
    offsets = [a.allocate(PAGE) for _ in range(4)]
    a.free(offsets[0], PAGE)
    a.free(offsets[2], PAGE)
    assert a.free_bytes == 2 * PAGE
    assert a.allocate(2 * PAGE) is None  # enough bytes, no run: wait, not refuse
    a.free(offsets[1], PAGE)
    assert a.free_list() == [(0, 3 * PAGE)]
    assert a.allocate(2 * PAGE) == 0


@pytest.mark.parametrize(
    ("offset", "nbytes"),
    [(2 * PAGE, PAGE), (2 * PAGE, 1), (-PAGE, PAGE), (1, PAGE), (3 * PAGE, 2 * PAGE), (0, 0)],
)
def test_bad_frees_are_refused_without_change(offset: int, nbytes: int) -> None:
    a = Allocator(4 * PAGE, PAGE)
    a.allocate(2 * PAGE)
    before = a.free_list()
    with pytest.raises(ValueError):
        a.free(offset, nbytes)
    assert a.free_list() == before


@pytest.mark.parametrize(("size", "page"), [(0, PAGE), (PAGE + 1, PAGE), (PAGE, 3000), (PAGE, 0)])
def test_bad_construction(size: int, page: int) -> None:
    with pytest.raises(ValueError):
        Allocator(size, page)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 6 * PAGE), st.integers(0, 1000)), max_size=80))
def test_random_use_never_overlaps_and_always_heals(ops: list[tuple[bool, int, int]]) -> None:
    size = 32 * PAGE
    a = Allocator(size, PAGE)
    live: dict[int, int] = {}
    for alloc, nbytes, pick in ops:
        if alloc or not live:
            off = a.allocate(nbytes)
            used = sum(a.round_up(n) for n in live.values())
            if off is None:
                # Only refuse when no free run is long enough.
                assert a.largest_free_block < a.round_up(nbytes)
            else:
                assert off % PAGE == 0 and off + a.round_up(nbytes) <= size
                for o, n in live.items():
                    assert off + a.round_up(nbytes) <= o or o + a.round_up(n) <= off
                live[off] = nbytes
            assert a.free_bytes == size - sum(a.round_up(n) for n in live.values())
            del used
        else:
            off = sorted(live)[pick % len(live)]
            a.free(off, live.pop(off))
        runs = a.free_list()
        assert all(s + n < t for (s, n), (t, _) in zip(runs, runs[1:])), "adjacent free runs not merged"
    for off, n in list(live.items()):
        a.free(off, n)
    assert a.free_list() == [(0, size)]
