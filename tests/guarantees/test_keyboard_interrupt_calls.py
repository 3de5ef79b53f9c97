"""Ctrl-C inside what the library calls never tears its bookkeeping (the compiled build's check).

The line sweep (test_keyboard_interrupt.py) raises SIGINT at the package's
interpreted lines. In the compiled build most of the library has no lines
and no frames, and what could tear its bookkeeping there is a SIGINT that
arrives while compiled library code runs an *interpreted callee*: one of
Trio's functions, an attrs-generated ``__init__``, the standard library.
Trio's handler walks from the interrupted frame up through its callers; the
compiled code in between has no frames, so without the protected wrappers of
trio_zc/_ki.py ("The compiled build") the walk goes from the callee straight
to the application's frame and raises the interrupt there, in the middle of
the library's work.

So this sweep raises SIGINT -- the real signal, through Trio's real handler
-- inside each such callee. The candidates are the calls from library code
(an interpreted frame of the package, or one of the application's frames
under which compiled code runs) into code outside the package and the
tests, made while the application's frame stands at one of its lines that
call nothing but the library (marked ``# library``: a SIGINT in a function
the application calls itself is the application's). A dry run lists the
first CALLS_EACH calls of each callee under each such line; then one run per
call raises SIGINT in it. After each run the
checks of the line sweep apply: no frame arrived corrupted, nothing but
KeyboardInterrupt escaped, no stream was left busy, and the pool was whole
again once everything was released.

It runs in both builds. With ``unprotected`` (the compiled build only), the
compiled entries are put back in place of their wrappers first, and the
sweep must find torn runs: that is what the wrappers prevent
(test_without_the_wrappers_the_sweep_finds_tears).
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import types
import warnings
from typing import Any

import attrs
import pytest
import trio

import trio_zc
from trio_zc._mypyc import is_compiled

from ..streams import ALWAYS_ZC, kernel, pattern, stream_pair
from .test_keyboard_interrupt import HEADER, Outcome, close, only_keyboard_interrupts, receiver

IMAGES = 3
SIZE = 96 * 1024
PACKAGE = os.path.dirname(os.path.abspath(trio_zc.__file__))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.abspath(__file__)
#: The application's lines that call only the library.
LIBRARY_LINES = frozenset(
    number for number, line in enumerate(pathlib.Path(HERE).read_text().splitlines(), 1) if line.endswith("# library")
)
#: The longest one run may take before it counts as a hang.
HANG = 20.0

#: How many calls of one callee under one line of the application are candidates.
CALLS_EACH = 3

Callee = tuple[str, int, str, int, int]  # file, first line, name; the application's line; which call


class CallTracer:
    """Lists the library's calls out of the package (see the module docstring); raises SIGINT in one."""

    def __init__(self, target: Callee | None) -> None:
        self.target = target
        self.seen: dict[Callee, None] = {}
        self.counts: dict[tuple[str, int, str, int], int] = {}
        self.fired = False

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        filename = code.co_filename
        if event != "call" or filename.startswith((PACKAGE, TESTS)):
            return None
        caller = frame.f_back
        if caller is None or not caller.f_code.co_filename.startswith((PACKAGE, TESTS)):
            return None  # called by the callee's own kind (Trio by Trio): not a call out of the library
        while caller is not None and not caller.f_code.co_filename.startswith(TESTS):
            caller = caller.f_back
        if caller is None or caller.f_code.co_filename != HERE or caller.f_lineno not in LIBRARY_LINES:
            return None
        key = (os.path.basename(filename), code.co_firstlineno, code.co_name, caller.f_lineno)
        nth = self.counts[key] = self.counts.get(key, 0) + 1
        if nth > CALLS_EACH:
            return None
        where = (*key, nth)
        self.seen.setdefault(where)
        if where == self.target and not self.fired:
            self.fired = True
            signal.raise_signal(signal.SIGINT)
        return None


async def app(name: str, outcome: Outcome) -> None:
    with trio.move_on_after(HANG) as scope:
        await _app(name, outcome)
    if scope.cancelled_caught:
        outcome.problems.append(f"the application hung for {HANG} s")


async def _app(name: str, outcome: Outcome) -> None:
    pools: list[trio_zc.BufferPool] = []
    try:
        async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=2) as pool:
            pools.append(pool)
            async with trio.open_nursery() as nursery:
                await steps(pool, nursery, outcome)
            stats = pool.statistics()  # library
            if (stats.free_bytes, stats.sends_in_flight) != (stats.max_bytes, 0) or (
                stats.quarantined_leases or stats.abandoned_leases or stats.tainted_leases
            ):
                outcome.problems.append(f"the pool is not whole once everything was released: {stats}")
    except BaseException as exc:  # noqa: B036
        if not only_keyboard_interrupts(exc):
            raise
        outcome.interrupts += 1
        outcome.ended = True
    if pools:
        stats = pools[0].statistics()
        if not stats.closed or stats.free_bytes + stats.quarantined_bytes != stats.max_bytes:
            outcome.problems.append(f"memory lost: {stats}")
        if stats.quarantined_leases and not outcome.ended:
            outcome.problems.append(f"quarantine without an interrupted close: {stats}")


async def steps(pool: trio_zc.BufferPool, nursery: trio.Nursery, outcome: Outcome) -> None:
    """Send IMAGES framed images on leases, catching KeyboardInterrupt around every step."""
    stream: trio_zc.ZeroCopyStream | None = None
    seq = 0
    for _ in range(3 * IMAGES):
        if seq >= IMAGES:
            break
        try:
            if stream is None:
                stream, peer = await stream_pair(pool)
                nursery.start_soon(receiver, peer, outcome)
            data = pattern(SIZE, seq)
            header = HEADER.pack(seq, SIZE, hashlib.sha256(data).digest())
            async with pool.lease(SIZE) as lease:  # library
                lease.write(data)  # library
                sealed = lease.seal()  # library
                await stream.send_lease(sealed, head=header)  # library
            seq += 1
        except KeyboardInterrupt:
            outcome.interrupts += 1
            if stream is not None:
                if stream._send_conflict._held or stream._receive_conflict._held:
                    outcome.problems.append("a stream was left busy")
                await close(stream, outcome)  # the byte stream may be cut mid-frame
                stream = None
    if stream is not None:
        await close(stream, outcome)


def run(name: str, target: Callee | None) -> tuple[Outcome, CallTracer]:
    outcome = Outcome()
    tracer = CallTracer(target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.settrace(tracer)
        try:
            trio.run(app, name, outcome)
        except KeyboardInterrupt:
            outcome.interrupts += 1  # delivered after the application had finished
        except BaseException as exc:  # noqa: B036 - anything else is a finding
            outcome.problems.append(f"{type(exc).__name__} escaped: {exc!r}")
        finally:
            sys.settrace(None)
    outcome.warnings = [f"{w.category.__name__}: {w.message}" for w in caught if w.category is not ResourceWarning]
    if outcome.warnings and not outcome.ended:
        outcome.problems.append(f"warnings without an interrupted close: {outcome.warnings}")
    return outcome, tracer


def unprotect() -> None:
    """Put the compiled entries back in place of their protected wrappers."""
    from trio_zc._ki import REPLACED

    for (cls, name), member in REPLACED.items():
        setattr(cls, name, member)


def sweep(name: str, unprotected: bool) -> None:
    """The sweep for kernel *name*, one JSON line per run (run as ``python -m``)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if unprotected:
        unprotect()
    dry, tracer = run(name, None)
    print(json.dumps({"dry": attrs.asdict(dry), "calls": len(tracer.seen)}), flush=True)
    for where in tracer.seen:
        # A run that hangs past the application's own bound (Trio itself
        # stuck) ends the process with every thread's traceback.
        faulthandler.dump_traceback_later(3 * HANG, exit=True)
        print(json.dumps({"start": where}), flush=True)
        outcome, t = run(name, where)
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"where": where, "fired": t.fired, "outcome": attrs.asdict(outcome)}), flush=True)


#: The whole sweep takes seconds; generous for a loaded machine.
SWEEP_TIMEOUT = 300


def run_sweep(name: str, unprotected: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The sweep's runs and its findings (in a child process: a torn run can break Trio itself)."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "tests.guarantees.test_keyboard_interrupt_calls", name]
    try:
        proc = subprocess.run(
            [*command, *(["unprotected"] if unprotected else [])],
            capture_output=True,
            text=True,
            cwd=repo,
            timeout=SWEEP_TIMEOUT,
        )
        out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        last = out.strip().splitlines()[-1:] or ["nothing"]
        pytest.fail(f"the sweep hung for {SWEEP_TIMEOUT} s; last line: {last[0]}")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert records and "dry" in records[0], err[-3000:]
    dry = records[0]["dry"]
    assert not dry["problems"] and not dry["corrupt"] and dry["frames"] == IMAGES, dry
    runs = [r for r in records if "where" in r]
    if len(runs) != records[0]["calls"]:
        last = [r for r in records if "start" in r][-1:]
        pytest.fail(f"the sweep stopped after {len(runs)} of {records[0]['calls']} runs at {last}: {err[-3000:]}")
    findings = [
        f"{r['where']}: {r['outcome']['corrupt'] + r['outcome']['problems']}"
        for r in runs
        if r["outcome"]["corrupt"] or r["outcome"]["problems"]
    ]
    return runs, findings


#: The mock kernel is left out for now: in the compiled build with the
#: earlier generic wrappers (``*args, **kwargs``), the application hung in
#: about half of the processes of 20 runs, no SIGINT needed: the peer never
#: saw EOF (the hang the earlier call sweep met). Only the generic wrapper of
#: ``LeaseScope.__aexit__`` brings it back; with the wrappers of the source's
#: parameters it did not happen in 240 runs, and the sweep passes on the mock
#: too, but the cause is not understood yet.
@pytest.mark.parametrize("name", ["msg_zerocopy"])
def test_sigint_in_every_call_out_of_the_library_tears_nothing(name: str) -> None:
    """MSG_ZEROCOPY over loopback: an interpreted kernel under the compiled stream and pool code."""
    runs, findings = run_sweep(name)
    assert len(runs) >= 10, len(runs)  # Trio's checkpoints and reschedules, attrs' __init__s
    # Which call comes when depends on the real kernel's completions: a few
    # listed in the dry run may not come again.
    assert sum(r["fired"] for r in runs) > len(runs) // 2
    assert not findings, f"{len(findings)} of {len(runs)} calls tore something:\n" + "\n".join(findings)


@pytest.mark.skipif(not is_compiled(sys.modules["trio_zc._pool"]), reason="the pure build has no wrappers")
def test_without_the_wrappers_the_sweep_finds_tears() -> None:
    """The sweep above can fail: with the compiled entries unwrapped, it finds torn runs."""
    runs, findings = run_sweep("msg_zerocopy", unprotected=True)
    assert findings, f"no finding in {len(runs)} runs without the wrappers"


if __name__ == "__main__":
    sweep(sys.argv[1], unprotected=sys.argv[2:] == ["unprotected"])
