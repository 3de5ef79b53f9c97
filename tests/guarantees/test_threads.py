"""Writing into a lease from worker threads, with real threads.

The rule (``_lease.py``, "Threads"): a ``WritableLease`` may be written
from any thread -- ``write``, ``view``, ``ndarray`` -- while everything
that changes whom memory belongs to (seal, release, acquire, adopt, send)
runs in the pool's Trio thread.

At 70a1a5f ``write()`` checked the lease's state and then copied; a thread
switch between the two let the copy land after ``seal()`` (the sealed bytes
changed under the send) or after the memory went to another lease (the next
image got this one's bytes). The deterministic tests below stop a worker
thread exactly there and make the Trio thread seal or release meanwhile, as
an abandoned ``trio.to_thread.run_sync(lease.write, ...,
abandon_on_cancel=True)`` would; the free-running ones race real threads
without pauses. They stop the thread two ways (:data:`PAUSES`): at the copy's
line, with a trace function (pure build only: compiled functions have no
lines), and in the copy itself, through the arena's read-write view (both
builds).
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
import trio
import trio.testing

import trio_zc

from ..builds import pure_only
from ..streams import ALWAYS_ZC, KERNELS, kernel, pattern, receive_exactly, stream_pair

SIZE = 256 * 1024


def _copy_lines() -> set[int]:
    """The lines of WritableLease.write that copy bytes into the lease."""
    lines, first = inspect.getsourcelines(trio_zc.WritableLease.write)
    found = {first + i for i, line in enumerate(lines) if "arena.rw[start : start +" in line}
    assert found, "WritableLease.write has no copy line to stop at"
    return found


class PausedWrite:
    """A write() in a worker thread, stopped just before it copies.

    *how* says where it stops (see :data:`PAUSES`): ``"line"``, at the line
    of ``WritableLease.write`` that copies, with a trace function; ``"copy"``,
    in the copy itself: the lease's arena's read-write view, the only thing
    ``write()`` copies into, is replaced for the run by one whose slice
    assignment first waits when the worker makes it. Both stop after the
    state check, with the lease's lock held, before any byte is copied. The
    arena (``_arena.py``) is never compiled, so ``"copy"`` stops the
    compiled ``write()`` too.
    """

    def __init__(self, lease: trio_zc.WritableLease, data: bytes, how: str = "line") -> None:
        assert how in ("line", "copy"), how
        self.lease = lease
        self.data = data
        self.how = how
        self.at_copy = threading.Event()
        self.go_on = threading.Event()
        self.outcome = "not run"
        self._lines = _copy_lines() if how == "line" else set()
        self._thread: int | None = None

    def _stop(self) -> None:
        self.at_copy.set()
        self.go_on.wait(10)

    def _tracer(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "call" and frame.f_code is trio_zc.WritableLease.write.__code__:
            return self._line_tracer
        return None

    def _line_tracer(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "line" and frame.f_lineno in self._lines:
            self._stop()
        return self._line_tracer

    def run(self) -> None:
        self._thread = threading.get_ident()
        arena = self.lease._slot.home.arena
        real = arena.rw
        if self.how == "line":
            sys.settrace(self._tracer)
        else:
            arena.rw = _StoppingView(real, self)  # type: ignore[assignment]
        try:
            self.lease.write(self.data)
            self.outcome = "wrote"
        except BaseException as exc:  # noqa: B036 - recorded for the test
            self.outcome = type(exc).__name__
        finally:
            sys.settrace(None)
            arena.rw = real


class _StoppingView:
    """An arena's read-write view whose slice assignment, made by *paused*'s worker, stops first."""

    def __init__(self, real: memoryview, paused: PausedWrite) -> None:
        self._real = real
        self._paused = paused

    def __setitem__(self, where: slice, data: Any) -> None:
        if threading.get_ident() == self._paused._thread:
            self._paused._stop()
        self._real[where] = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


#: The two ways PausedWrite stops a write; the trace function only in the pure build.
PAUSES = [
    pytest.param(
        "line",
        marks=pure_only(
            "sys.settrace() stops the worker at a line of WritableLease.write, and compiled"
            " functions run no Python lines (the 'copy' pause stops the compiled write)"
        ),
    ),
    "copy",
]


async def wait_for(event: threading.Event) -> None:
    with trio.fail_after(10):
        while not event.is_set():
            await trio.sleep(0.001)


@pytest.mark.parametrize("how", PAUSES)
@pytest.mark.parametrize("name", KERNELS)
async def test_a_seal_during_a_threads_write_never_lets_the_write_change_sealed_bytes(
    name: str, how: str
) -> None:
    async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        lease = await pool.acquire(SIZE)
        lease.write(pattern(SIZE, 1))  # the first image
        paused = PausedWrite(lease, pattern(SIZE, 2), how)  # a second write, in a worker
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, paused.run)
            await wait_for(paused.at_copy)
            try:
                sealed = lease.seal()
            except trio.BusyResourceError:
                sealed = None
            # What the sealed lease holds now is what it must send.
            promised = sealed.view().tobytes() if sealed is not None else None
            paused.go_on.set()
        if sealed is None:
            assert paused.outcome == "wrote"
            sealed = lease.seal()  # the write is over: now it seals
            promised = sealed.view().tobytes()
        assert promised is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            got = await receive_exactly(peer, SIZE)
        assert got == promised == bytes(sealed.view())
        sealed.release()
        await stream.aclose()
        await peer.aclose()


@pytest.mark.parametrize("how", PAUSES)
@pytest.mark.parametrize("name", KERNELS)
async def test_a_lease_given_up_during_a_threads_write_is_not_reused_until_it_ends(
    name: str, how: str
) -> None:
    # Room for one lease only: the next lease gets the same memory once it is free.
    async with trio_zc.open_pool(max_bytes=SIZE, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        next_image = pattern(SIZE, 3)
        paused: PausedWrite | None = None
        async with trio.open_nursery() as nursery:
            async with pool.lease(SIZE) as lease:
                paused = PausedWrite(lease, pattern(SIZE, 4), how)
                nursery.start_soon(trio.to_thread.run_sync, paused.run)
                await wait_for(paused.at_copy)
            # The block ended (as a cancelled request's would) while the
            # worker is about to copy. The next image asks for the memory.
            next_lease: list[trio_zc.SealedLease] = []

            async def next_request() -> None:
                lease = await pool.acquire(SIZE)
                lease.write(next_image)
                next_lease.append(lease.seal())

            nursery.start_soon(next_request)
            # (No cushion: the pool's sweeper wakes every 50 ms while a lease is abandoned.)
            await trio.testing.wait_all_tasks_blocked()
            paused.go_on.set()
        assert paused.outcome == "wrote"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, next_lease[0])
            got = await receive_exactly(peer, SIZE)
        assert got == next_image
        next_lease[0].release()
        await stream.aclose()
        await peer.aclose()


@pytest.mark.parametrize("how", PAUSES)
async def test_an_explicit_release_during_a_threads_write_refuses_and_changes_nothing(how: str) -> None:
    async with trio_zc.open_pool(max_bytes=SIZE, kernel="copy") as pool:
        lease = await pool.acquire(SIZE)
        paused = PausedWrite(lease, pattern(SIZE, 5), how)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, paused.run)
            await wait_for(paused.at_copy)
            before = pool.statistics()
            with pytest.raises(trio.BusyResourceError, match="another thread is writing"):
                lease.release()
            assert pool.statistics() == before
            paused.go_on.set()
        assert paused.outcome == "wrote"
        sealed = lease.seal()
        assert bytes(sealed.view()) == pattern(SIZE, 5)
        sealed.release()


async def test_only_the_trio_thread_seals_releases_acquires_and_adopts() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        lease = await pool.acquire(4096)
        other = await pool.acquire(4096)
        calls: dict[str, Callable[[], object]] = {
            "WritableLease.seal()": lease.seal,
            "WritableLease.release()": other.release,
            "BufferPool.acquire_nowait()": lambda: pool.acquire_nowait(4096),
            "BufferPool.adopt()": lambda: pool.adopt(b"x"),
        }
        for what, call in calls.items():
            with pytest.raises(RuntimeError, match=r"must be called from the Trio thread.*from_thread") as info:
                await trio.to_thread.run_sync(call)
            assert str(info.value).startswith(what)
        # Writing is fine from a worker, and so is sealing through from_thread.
        def fill_and_seal() -> trio_zc.SealedLease:
            lease.write(b"w" * 4096)
            array = lease.ndarray((4096,))
            array[:2] = 7
            del array
            return trio.from_thread.run_sync(lease.seal)

        sealed = await trio.to_thread.run_sync(fill_and_seal)
        assert bytes(sealed.view()[:3]) == b"\x07\x07w"
        with pytest.raises(RuntimeError, match="SealedLease.release"):
            await trio.to_thread.run_sync(sealed.release)
        sealed.release()
        other.release()


@contextmanager
def switch_often() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


async def test_views_made_by_many_threads_at_once_are_all_counted() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        for _ in range(20):
            lease = await pool.acquire(4096)
            kept: list[memoryview] = []
            barrier = threading.Barrier(4)

            def make_views(
                lease: trio_zc.WritableLease, kept: list[memoryview], barrier: threading.Barrier
            ) -> None:
                barrier.wait()
                for _ in range(25):
                    kept.append(lease.view())

            with switch_often():
                threads = [threading.Thread(target=make_views, args=(lease, kept, barrier)) for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            with pytest.raises(trio_zc.LiveViewsError) as info:
                lease.seal()
            assert info.value.count == 100
            kept.clear()
            lease.seal().release()


async def test_free_running_writers_never_change_bytes_after_the_seal() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        with switch_often():
            for round_ in range(150):
                lease = await pool.acquire(8192)
                wrote = threading.Event()
                errors: list[str] = []

                def writer(
                    seed: int, lease: trio_zc.WritableLease, wrote: threading.Event, errors: list[str]
                ) -> None:
                    data = bytes([seed]) * 8192
                    for _ in range(50):
                        try:
                            lease.write(data)
                            wrote.set()
                        except trio_zc.StaleLeaseError:
                            return
                        except BaseException as exc:  # noqa: B036
                            errors.append(repr(exc))
                            return

                threads = [threading.Thread(target=writer, args=(i + 1, lease, wrote, errors)) for i in range(3)]
                for t in threads:
                    t.start()
                await wait_for(wrote)  # seal in the middle of the writes, not before them
                sealed = None
                while sealed is None:  # ends: each writer makes 50 writes at most
                    try:
                        sealed = lease.seal()
                    except trio.BusyResourceError:
                        await trio.sleep(0)
                promised = sealed.view().tobytes()
                for t in threads:
                    t.join()
                assert not errors, errors
                assert sealed.view().tobytes() == promised, f"round {round_}: a write landed after the seal"
                # Whole writes only: one writer's bytes.
                assert promised in {bytes([i]) * 8192 for i in range(1, 4)}
                sealed.release()
