"""No context manager of trio_zc wraps an exception raised in the application's block.

For every ``async with`` the library offers (``open_pool`` on every kernel,
``pool.lease()``, streams, listeners, the mock's peers, the ``mock_pool``
fixture): an exception raised in the block, before or after an await, comes
out as itself, with its own traceback and ``__context__``; ``fail_after``
inside raises a bare TooSlowError; a cancellation from an outer scope is
caught by that scope; KeyboardInterrupt comes out bare. Only several real
failures at once make a group (docs/guarantees.rst, "Exceptions").
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing
import trio_zc.testing._plugin
from trio_zc.testing import MockKernel, PrematureReuseError

from ..streams import KERNELS, kernel, stream_pair

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

MiB = 1 << 20

Body = Callable[[], Awaitable[None]]


# -- the context managers under test ------------------------------------------------
# Each subject runs `async with <the library's context manager>: await body()`,
# with whatever it needs opened around it; the exception under test is raised in
# body(), inside that very block.


async def in_pool(name: str, body: Body) -> None:
    async with trio_zc.open_pool(max_bytes=MiB, kernel=kernel(name)):
        await body()


async def in_lease(body: Body) -> None:
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        async with pool.lease(4096):
            await body()
        assert pool.statistics().free_bytes == pool.max_bytes


async def in_stream(body: Body) -> None:
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        stream, peer = await stream_pair(pool)
        try:
            async with stream:
                await body()
        finally:
            await peer.aclose()


async def in_listener(body: Body) -> None:
    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        (listener,) = await trio_zc.open_tcp_listeners(0, pool=pool, host="127.0.0.1")
        async with listener:
            await body()


async def in_mock_peer(body: Body) -> None:
    mock = MockKernel()
    async with trio_zc.open_pool(max_bytes=MiB, kernel=mock) as pool:
        stream, peer = mock.open_stream(pool)
        try:
            async with peer:
                await body()
        finally:
            await stream.aclose()


# The plugin's fixture, as a context manager: pytest-trio drives the same
# generator (asend/athrow at its yield).
_mock_pool_fixture: Callable[[MockKernel], AsyncIterator[trio_zc.BufferPool]] = (
    trio_zc.testing._plugin.mock_pool.__wrapped__  # type: ignore[attr-defined]
)
mock_pool_context: Callable[[MockKernel], AbstractAsyncContextManager[trio_zc.BufferPool]] = (
    asynccontextmanager(_mock_pool_fixture)
)


async def in_mock_pool_fixture(body: Body) -> None:
    async with mock_pool_context(MockKernel()):
        await body()


async def in_image_workers(body: Body) -> None:
    from trio_zc import images

    async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
        async with images.open_workers(pool, 1):
            await body()


SUBJECTS: dict[str, Callable[[Body], Awaitable[None]]] = {
    **{f"open_pool-{name}": (lambda body, name=name: in_pool(name, body)) for name in KERNELS},  # type: ignore[misc]
    "pool.lease": in_lease,
    "ZeroCopyStream": in_stream,
    "ZeroCopyListener": in_listener,
    "MockPeer": in_mock_peer,
    "mock_pool fixture": in_mock_pool_fixture,
    "images.open_workers": in_image_workers,
}
subjects = pytest.mark.parametrize("subject", list(SUBJECTS))


def raised_in(exc: BaseException, function: str) -> bool:
    """Whether *exc*'s traceback ends in *function*, at a ``raise`` line."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].name == function and "raise" in (frames[-1].line or "")


# -- an exception of the block ------------------------------------------------------


@subjects
@pytest.mark.parametrize("when", ["sync", "after an await"])
async def test_an_exception_of_the_block_comes_out_as_itself(subject: str, when: str) -> None:
    mine = ValueError("mine")

    async def body() -> None:
        if when != "sync":
            await trio.sleep(0)
        raise mine

    with pytest.raises(ValueError) as info:
        await SUBJECTS[subject](body)
    assert info.value is mine
    assert raised_in(mine, "body"), traceback.format_exception(mine)
    # Nothing points at a group or at the library's own cleanup.
    assert mine.__context__ is None and mine.__cause__ is None


@subjects
async def test_the_block_exceptions_own_context_is_kept(subject: str) -> None:
    async def body() -> None:
        try:
            {}["missing"]
        except KeyError:
            raise ValueError("while handling a KeyError") from None

    with pytest.raises(ValueError) as info:
        await SUBJECTS[subject](body)
    assert isinstance(info.value.__context__, KeyError)
    assert info.value.__suppress_context__


@subjects
async def test_a_group_the_block_raised_comes_out_unchanged(subject: str) -> None:
    mine = ExceptionGroup("the application's own", [ValueError("a"), KeyError("b")])

    async def body() -> None:
        raise mine

    with pytest.raises(ExceptionGroup) as info:
        await SUBJECTS[subject](body)
    assert info.value is mine


# -- timeouts, cancellation, Ctrl-C -------------------------------------------------


@subjects
async def test_fail_after_inside_the_block_raises_a_bare_TooSlowError(subject: str) -> None:
    async def body() -> None:
        with trio.fail_after(0.01):
            await trio.sleep_forever()

    with pytest.raises(trio.TooSlowError) as info:
        await SUBJECTS[subject](body)
    assert type(info.value) is trio.TooSlowError
    assert info.value.__context__ is None or isinstance(info.value.__context__, trio.Cancelled)


@subjects
async def test_an_outer_cancel_scope_catches_its_own_cancellation(subject: str) -> None:
    seen: list[BaseException] = []

    async def body() -> None:
        await trio.sleep_forever()

    async def around() -> None:
        try:
            await SUBJECTS[subject](body)
        except BaseException as exc:
            seen.append(exc)
            raise

    with trio.move_on_after(0.01) as scope:
        await around()
    assert scope.cancelled_caught
    # What left the context manager was one bare Cancelled, not a group of them.
    assert len(seen) == 1 and type(seen[0]) is trio.Cancelled, seen


@subjects
async def test_fail_after_around_the_block_raises_a_bare_TooSlowError(subject: str) -> None:
    async def body() -> None:
        await trio.sleep_forever()

    with pytest.raises(trio.TooSlowError) as info:
        with trio.fail_after(0.01):
            await SUBJECTS[subject](body)
    assert type(info.value) is trio.TooSlowError


@subjects
@pytest.mark.parametrize("when", ["sync", "after an await"])
async def test_keyboard_interrupt_in_the_block_comes_out_bare(subject: str, when: str) -> None:
    interrupt = KeyboardInterrupt()

    async def body() -> None:
        if when != "sync":
            await trio.sleep(0)
        raise interrupt

    with pytest.raises(KeyboardInterrupt) as info:
        await SUBJECTS[subject](body)
    assert info.value is interrupt
    assert interrupt.__context__ is None


# -- the library's own failures -----------------------------------------------------


async def reuse_too_early(mock: MockKernel, pool: trio_zc.BufferPool) -> None:
    """The bug the mock catches: an adopted frame written while the kernel still reads it.

    The mock's background task raises PrematureReuseError, which cancels the block."""
    frame = bytearray(b"A" * 40000)
    stream, peer = mock.open_stream(pool)
    peer.hold_transmission()
    sealed = pool.adopt(frame)
    await stream.send_lease(sealed)
    sealed.release()
    frame[:5] = b"BBBBB"
    peer.transmit()


ALWAYS_ZC = trio_zc.ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)


async def test_a_single_failure_of_the_library_comes_out_as_itself() -> None:
    mock = MockKernel()
    with pytest.raises(PrematureReuseError) as info:
        async with trio_zc.open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
            await reuse_too_early(mock, pool)
            await trio.sleep_forever()  # cancelled by the failure: not an exception of its own
    assert "lease #" in str(info.value)
    assert info.value.__context__ is None


async def test_the_fixture_reports_a_failure_of_its_pool_as_itself() -> None:
    mock = MockKernel()
    with pytest.raises(PrematureReuseError):
        async with mock_pool_context(mock) as pool:
            pool._policy = ALWAYS_ZC
            await reuse_too_early(mock, pool)
            await trio.sleep_forever()


async def test_several_real_failures_come_out_as_a_group_of_all_of_them() -> None:
    """The block's cleanup fails after the library's task failed: both happened."""
    mock = MockKernel()
    mine = ValueError("cleanup failed")
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio_zc.open_pool(max_bytes=MiB, kernel=mock, policy=ALWAYS_ZC) as pool:
            await reuse_too_early(mock, pool)
            try:
                await trio.sleep_forever()
            finally:
                raise mine
    leaves = [exc for exc in info.value.exceptions if not isinstance(exc, trio.Cancelled)]
    assert len(leaves) == 2
    assert mine in leaves and any(isinstance(exc, PrematureReuseError) for exc in leaves)


async def test_an_error_closing_the_pool_after_the_blocks_error_keeps_the_chain() -> None:
    """A failure while closing (a lease leak turned into an error by -W error) follows
    the block's exception as Python chains it: __context__ is the block's exception."""
    mine = ValueError("mine")
    with pytest.raises(trio_zc.LeaseLeakWarning) as info:
        async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
            await pool.acquire(4096)  # never released
            raise mine
    assert info.value.__context__ is mine


async def test_the_pool_is_closed_and_whole_after_an_exception_of_the_block() -> None:
    with pytest.raises(ValueError):
        async with trio_zc.open_pool(max_bytes=MiB, kernel="copy") as pool:
            async with pool.lease(4096) as lease:
                lease.write(b"x")
                raise ValueError
    stats = pool.statistics()
    assert stats.closed and stats.free_bytes == stats.max_bytes
