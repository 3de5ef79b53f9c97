"""One check per argument (trio_zc/_validate.py): the same input gets the same answer wherever it goes.

Before the checks moved into one module, two validators of ``drain_timeout``
(the pool's and the stream's) answered the same bad value with different
messages and different rules (the stream's ran a float subclass's own
``>=``), a pool size that was an ``int`` subclass was compared with its own
operators, and a mock peer's ``receive_some`` named no type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio

import trio_zc
from trio_zc.testing import MockKernel

PAGE = 4096


class _AlwaysInRange(float):
    """A float whose comparisons say "fine" to every bound: -1 passes ``>= 0`` and ``< 0`` alike."""

    def __ge__(self, other: object) -> bool:
        return True

    def __lt__(self, other: object) -> bool:
        return False


class _TinyButBig(int):
    """An int whose comparisons say it is no smaller than a page and no larger than anything."""

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return False


async def _pool_refusal(drain_timeout: Any) -> BaseException:
    with pytest.raises((TypeError, ValueError)) as info:
        async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=MockKernel(), drain_timeout=drain_timeout):
            pass
    return info.value


async def _stream_refusal(drain_timeout: Any) -> BaseException:
    kernel = MockKernel()
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=kernel) as pool:
        with pytest.raises((TypeError, ValueError)) as info:
            kernel.open_stream(pool, drain_timeout=drain_timeout)
    return info.value


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, math.nan, "10", True, [], _AlwaysInRange(-1.0)],
    ids=["negative", "negative-float", "nan", "str", "bool", "list", "lying-float"],
)
async def test_drain_timeout_is_checked_alike_by_pool_and_stream(value: object) -> None:
    by_pool = await _pool_refusal(value)
    by_stream = await _stream_refusal(value)
    assert type(by_pool) is type(by_stream)
    # The stream's also takes None (its pool's default), and says so.
    assert str(by_stream) == str(by_pool).replace("a number of seconds", "a number of seconds or None")
    assert str(by_pool).startswith("drain_timeout must be a")


async def test_a_lying_float_is_not_a_valid_drain_timeout() -> None:
    # Taken as the float it is worth (-1.0), not at its own word.
    assert "not -1.0" in str(await _stream_refusal(_AlwaysInRange(-1.0)))


async def test_a_pool_size_is_compared_at_its_value() -> None:
    with pytest.raises(ValueError, match=r"max_bytes must be at least one page \(4096\), not 100"):
        async with trio_zc.open_pool(max_bytes=_TinyButBig(100), kernel=MockKernel()):
            pass
    # And a valid one works as the plain int it is worth.
    async with trio_zc.open_pool(max_bytes=_TinyButBig(16 * PAGE), kernel=MockKernel()) as pool:
        assert type(pool.max_bytes) is int and pool.max_bytes == 16 * PAGE


@pytest.mark.parametrize(
    ("receive", "exc", "message"),
    [
        ("0", TypeError, "max_bytes must be an int, not str"),
        (1.5, TypeError, "max_bytes must be an int, not float"),
        (True, TypeError, "max_bytes must be an int, not bool"),
        (0, ValueError, "max_bytes must be >= 1"),
    ],
)
async def test_receive_some_is_checked_alike_by_stream_and_mock_peer(
    receive: Any, exc: type[BaseException], message: str
) -> None:
    kernel = MockKernel()
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=kernel) as pool:
        stream, peer = kernel.open_stream(pool)
        ends: list[Callable[[Any], Any]] = [stream.receive_some, peer.receive_some]
        for receive_some in ends:
            with pytest.raises(exc) as info:
                await receive_some(receive)
            assert str(info.value) == message
        await stream.aclose()
        await peer.aclose()


@pytest.mark.parametrize("make", ["pool", "mock"])
async def test_flags_are_true_or_false_everywhere(make: str) -> None:
    with pytest.raises(TypeError) as info:
        if make == "pool":
            async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=MockKernel(), protect_sealed=1):  # type: ignore[arg-type]
                pass
        else:
            MockKernel(call_sites=1)  # type: ignore[arg-type]
    name = "protect_sealed" if make == "pool" else "call_sites"
    assert str(info.value) == f"{name} must be True or False, not int"


async def test_the_checks_change_nothing_when_they_refuse() -> None:
    kernel = MockKernel()
    async with trio_zc.open_pool(max_bytes=16 * PAGE, kernel=kernel) as pool:
        stream, peer = kernel.open_stream(pool)
        before = (stream.send_timeout, stream.max_in_flight)
        for name, value in [("send_timeout", -1), ("send_timeout", "1"), ("max_in_flight", 0), ("max_in_flight", 1.0)]:
            with pytest.raises((TypeError, ValueError)):
                setattr(stream, name, value)
        assert (stream.send_timeout, stream.max_in_flight) == before
        await stream.aclose()
        await peer.aclose()
    await trio.lowlevel.checkpoint()
