"""The benchmark runs its cases in a shuffled, reproducible order per repetition."""

from __future__ import annotations

from trio_zc._bench import _order
from trio_zc._bench_cases import ALL_CASES


def test_each_repetition_is_a_permutation_and_reproducible() -> None:
    for rep in range(5):
        key = f"2026/{rep}/65536"
        order = _order(ALL_CASES, key)
        assert sorted(order) == sorted(ALL_CASES)
        assert order == _order(ALL_CASES, key)


def test_no_case_always_follows_the_same_neighbour() -> None:
    # What the shuffle is for: in a fixed order, the case after sendfile
    # paid for sendfile's clean-up in every repetition.
    orders = [_order(ALL_CASES, f"2026/{rep}/65536") for rep in range(5)]
    followers = {o[o.index("sendfile") + 1] if o[-1] != "sendfile" else None for o in orders}
    assert len(followers) > 1
