"""Ctrl-C while ``async with open_pool(...)`` enters or exits never leaves the pool open.

The ``async with`` statement calls the pool's context manager's
``__aenter__`` and ``__aexit__`` from the application's frame. When those
were contextlib's (``open_pool`` was an ``@asynccontextmanager``), they ran
unprotected: a SIGINT there was raised at once, before contextlib resumed
``open_pool``'s generator, so the pool stayed open, its background nursery
was never exited and Trio reported its nursery stack corrupted (found by the
line sweep of test_keyboard_interrupt.py). Now the methods the statement
calls are the library's own, protected (trio_zc/_ki.py): the interrupt is
delivered at the next checkpoint, where the pool's opening or closing deals
with it as with a cancellation.

Each run raises the real SIGINT, through Trio's real handler, at one line of
the code the ``async with`` calls directly (a dry run lists those lines),
then checks that nothing but KeyboardInterrupt escaped and that every pool
opened was closed whole (no memory lost).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import trio

import trio_zc
from trio_zc.testing import MockKernel

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64 * 1024

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def only_keyboard_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(only_keyboard_interrupts(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


#: What ``async with open_pool(...)`` calls: open_pool (contextlib's
#: ``helper`` when it was an ``@asynccontextmanager``), then the manager's methods.
STATEMENT_CALLS = {"open_pool", "helper", "__aenter__", "__aexit__"}


class Tracer:
    """Numbers the lines run by the callees of the test's frames during *phase*; raises SIGINT at one."""

    def __init__(self, target: tuple[str, int] | None) -> None:
        self.target = target
        self.phase: str | None = None
        self.count = {"enter": 0, "exit": 0}
        self.fired = False

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        caller = frame.f_back
        if self.phase is None or caller is None or caller.f_code is not app.__code__:
            return None
        if frame.f_code.co_name not in STATEMENT_CALLS:
            return None  # a weakref callback of the garbage collector, say
        return self._line

    def _line(self, frame: types.FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "line" and self.phase is not None:
            where = (self.phase, self.count[self.phase])
            self.count[self.phase] += 1
            if where == self.target and not self.fired:
                self.fired = True
                signal.raise_signal(signal.SIGINT)
        return self._line


async def app(tracer: Tracer, pools: list[trio_zc.BufferPool]) -> None:
    tracer.phase = "enter"
    async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=MockKernel()) as pool:
        tracer.phase = None
        pools.append(pool)
        async with pool.lease(SIZE) as lease:
            lease.write(b"x" * SIZE)
        tracer.phase = "exit"
    tracer.phase = None


def run(target: tuple[str, int] | None) -> tuple[Tracer, list[str]]:
    tracer = Tracer(target)
    pools: list[trio_zc.BufferPool] = []
    problems: list[str] = []
    before = {id(o) for o in gc.get_objects() if isinstance(o, trio_zc.BufferPool)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        previous = sys.gettrace()  # a coverage tool's, say
        sys.settrace(tracer)
        try:
            trio.run(app, tracer, pools)
        except BaseException as exc:  # noqa: B036 - anything but KeyboardInterrupt is a finding
            if not only_keyboard_interrupts(exc):
                problems.append(f"{type(exc).__name__} escaped: {exc!r}")
        finally:
            sys.settrace(previous)
    # A pool opened but never handed to the block (an interrupted enter) counts too.
    before.update(id(pool) for pool in pools)
    pools += [o for o in gc.get_objects() if isinstance(o, trio_zc.BufferPool) and id(o) not in before]
    for pool in pools:
        stats = pool.statistics()
        if not stats.closed or stats.free_bytes + stats.quarantined_bytes != stats.max_bytes:
            problems.append(f"the pool was left open or lost memory: {stats}")
    return tracer, problems


def test_sigint_while_open_pool_enters_or_exits_leaves_nothing_open() -> None:
    dry, problems = run(None)
    assert not problems, problems
    targets = [(phase, n) for phase, count in dry.count.items() for n in range(count)]
    # Both the enter and the exit run a few lines of the code the statement calls.
    assert dry.count["enter"] > 0 and dry.count["exit"] > 0, dry.count
    assert len(targets) < 500, dry.count  # bounded: one short run per line
    findings: list[str] = []
    for target in targets:
        tracer, problems = run(target)
        assert tracer.fired, target
        findings += [f"{target}: {problem}" for problem in problems]
    assert not findings, f"{len(findings)} of {len(targets)} lines:\n" + "\n".join(findings)
