from __future__ import annotations

import pytest

from trio_zc import ZeroCopyPolicy
from trio_zc._decider import ENOBUFS_FALLBACK, SendDecider


def test_small_sends_are_copied() -> None:
    d = SendDecider(ZeroCopyPolicy(min_zerocopy_bytes=1000))
    assert not d.use_zerocopy(999)
    assert d.use_zerocopy(1000)
    assert d.zerocopy_enabled and d.fallbacks == {}


def test_enobufs_copies_a_few_sends_then_tries_again() -> None:
    d = SendDecider(ZeroCopyPolicy(min_zerocopy_bytes=0, enobufs_backoff=3))
    d.on_enobufs()
    assert not d.zerocopy_enabled
    assert [d.use_zerocopy(1 << 20) for _ in range(4)] == [False, False, False, True]
    assert d.zerocopy_enabled
    assert list(d.fallbacks) == [ENOBUFS_FALLBACK]


def test_small_sends_do_not_use_up_the_backoff() -> None:
    d = SendDecider(ZeroCopyPolicy(min_zerocopy_bytes=100, enobufs_backoff=1))
    d.on_enobufs()
    assert not d.use_zerocopy(10)
    assert not d.use_zerocopy(1000)  # the one backoff send
    assert d.use_zerocopy(1000)


def test_a_run_of_copied_completions_switches_to_copying_for_good() -> None:
    d = SendDecider(ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=10))
    d.on_completions(6, copied=True)
    d.on_completions(1, copied=False)  # a real zero-copy completion resets the run
    d.on_completions(9, copied=True)
    assert d.zerocopy_enabled
    d.on_completions(1, copied=True)
    assert not d.zerocopy_enabled and not d.use_zerocopy(1 << 20)
    assert "copied 10 zero-copy sends in a row" in (d.disabled_reason or "")
    d.on_completions(100, copied=True)
    assert list(d.fallbacks.values()) == [1]


def test_streak_zero_never_switches() -> None:
    d = SendDecider(ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0))
    d.on_completions(10**6, copied=True)
    assert d.zerocopy_enabled


def test_unavailable_zero_copy_is_never_attempted() -> None:
    d = SendDecider(ZeroCopyPolicy(), unavailable_reason="not a TCP socket")
    assert not d.use_zerocopy(1 << 30)
    assert d.fallbacks == {"not a TCP socket": 1}
    d.disable("another reason")
    assert d.fallbacks == {"not a TCP socket": 1}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"min_zerocopy_bytes": -1}, ValueError), ({"copied_streak": 1.5}, TypeError),
     ({"enobufs_backoff": True}, TypeError)],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ZeroCopyPolicy(**kwargs)  # type: ignore[arg-type]


def test_enobufs_in_a_row_back_off_longer_until_a_send_goes_through() -> None:
    d = SendDecider(ZeroCopyPolicy(min_zerocopy_bytes=0, enobufs_backoff=2))

    def copied_after_enobufs() -> int:
        d.on_enobufs()
        n = 0
        while not d.use_zerocopy(1 << 20):
            n += 1
        return n

    assert [copied_after_enobufs() for _ in range(4)] == [2, 4, 8, 16]
    d.on_zerocopy_sent()
    assert copied_after_enobufs() == 2
    assert d.fallbacks == {ENOBUFS_FALLBACK: 5}
    for _ in range(20):
        d.on_enobufs()
    assert d._backoff == 4096  # capped
