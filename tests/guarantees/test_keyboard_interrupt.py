"""Ctrl-C at any line of the library never tears its bookkeeping.

A ``KeyboardInterrupt`` can be raised at any bytecode of unprotected code.
At 70a1a5f a sweep of about 100 injection points found 19 places where it
tore the library's state: between the kernel accepting a MSG_ZEROCOPY send
and the lease recording it, the lease looked idle, an application that
caught the interrupt could release it, its memory was reused at once and the
receiver got the next lease's bytes; elsewhere a stream stayed busy for
ever (``BusyResourceError``) or pool memory was lost for good.

Now every function of the package runs with Trio's KeyboardInterrupt
protection (``trio_zc/_ki.py``), so the interrupt is delivered at the
application's next checkpoint instead, where the library's code handles it
as it handles a cancellation.

How the sweep works: an application (:func:`app`) sends framed images (the
frame's header as the lease's ``head``, or sent before it) over
one connection at a time, catching ``KeyboardInterrupt`` around every step
and going on (a new connection after an interrupted send, since that byte
stream is no longer framed), while a receiver checks every frame's
SHA-256. A dry run records every line of the package that the application
makes run. Then, for each of those lines, a fresh run raises SIGINT -- the
real signal, through Trio's real handler -- the first time that line runs.
After each run: no frame arrived corrupted, nothing but KeyboardInterrupt
escaped, no stream was left busy, and once everything was released the pool
was whole again, with nothing quarantined, abandoned or in flight.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

import trio_zc
from trio_zc._mypyc import is_compiled

from ..streams import ALWAYS_ZC, KERNELS, kernel, pattern, stream_pair

IMAGES = 3
SIZE = 96 * 1024
HEADER = struct.Struct("!II32s")  # sequence number, length, SHA-256
PACKAGE = os.path.dirname(os.path.abspath(trio_zc.__file__))

Location = tuple[str, int]


@attrs.define
class Outcome:
    interrupts: int = 0
    #: Whether an interrupt ended the application (delivered outside its steps).
    ended: bool = False
    frames: int = 0
    corrupt: list[str] = attrs.Factory(list)
    problems: list[str] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)


if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def only_keyboard_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(only_keyboard_interrupts(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


#: The package's tools (demo, benchmark): applications, not the library.
TOOLS = ("__main__", "_demo", "_bench")


def library_line(frame: types.FrameType) -> Location | None:
    code = frame.f_code
    if not code.co_filename.startswith(PACKAGE) or os.path.basename(code.co_filename).startswith(TOOLS):
        return None
    return (os.path.relpath(code.co_filename, PACKAGE), frame.f_lineno)


class Tracer:
    """Records the package's lines as they run, and raises SIGINT at one of them."""

    def __init__(self, target: Location | None) -> None:
        self.target = target
        self.seen: dict[Location, None] = {}
        self.fired = False

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        return self._line

    def _line(self, frame: types.FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "line":
            where = library_line(frame)
            if where is not None:
                self.seen.setdefault(where)
                if where == self.target and not self.fired:
                    self.fired = True
                    # Trio's handler runs now, in this frame, and decides by
                    # the traced frame (this one's caller) what to do.
                    signal.raise_signal(signal.SIGINT)
        return self._line


TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

async def receiver(peer: trio.abc.ReceiveStream, outcome: Outcome) -> None:
    buf = bytearray()
    with trio.CancelScope(shield=True):  # a KeyboardInterrupt is the application's, not ours
        while True:
            try:
                chunk = await peer.receive_some(1 << 20)
            except trio.BrokenResourceError:
                chunk = b""  # an interrupted close resets the connection, as documented
            if not chunk:
                await peer.aclose()
                return  # EOF: a cut frame at the end is an interrupted send's
            buf += chunk
            while len(buf) >= HEADER.size:
                seq, length, digest = HEADER.unpack_from(buf)
                if len(buf) < HEADER.size + length:
                    break
                body = bytes(buf[HEADER.size : HEADER.size + length])
                del buf[: HEADER.size + length]
                if body != pattern(length, seq) or hashlib.sha256(body).digest() != digest:
                    outcome.corrupt.append(f"frame {seq}: {len(body)} bytes, not the sealed ones")
                outcome.frames += 1


#: The longest a run may take before it counts as a hang.
HANG = 20.0


async def app(name: str, outcome: Outcome) -> None:
    with trio.move_on_after(HANG) as scope:
        await _app(name, outcome)
    if scope.cancelled_caught:
        outcome.problems.append(f"the application hung for {HANG} s")


async def _app(name: str, outcome: Outcome) -> None:
    """Send IMAGES framed images, catching KeyboardInterrupt around every step and going on.

    An interrupt that Trio delivers outside the steps (while the pool opens or
    closes, say) ends the application, as it would a real one; the pool must
    still end whole.
    """
    pools: list[trio_zc.BufferPool] = []
    try:
        async with trio_zc.open_pool(
            max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=2
        ) as pool:
            pools.append(pool)
            async with trio.open_nursery() as nursery:
                await steps(pool, nursery, outcome)
            stats = pool.statistics()
            if (stats.free_bytes, stats.sends_in_flight) != (stats.max_bytes, 0) or (
                stats.quarantined_leases or stats.abandoned_leases or getattr(stats, "tainted_leases", 0)
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
    stream: trio_zc.ZeroCopyStream | None = None
    seq = 0
    attempts = 0
    while True:
        try:
            if seq >= IMAGES or attempts >= 3 * IMAGES:
                if stream is not None:
                    await stream.aclose()
                return
            attempts += 1
            if stream is None:
                stream, peer = await stream_pair(pool)
                nursery.start_soon(receiver, peer, outcome)
            async with pool.lease(SIZE) as lease:
                data = pattern(SIZE, seq)
                lease.write(data)
                sealed = lease.seal()
                header = HEADER.pack(seq, SIZE, hashlib.sha256(data).digest())
                if seq % 2:
                    await stream.send_all(header)
                    await stream.send_lease(sealed)
                else:
                    # The frame's header as the lease's head: one system call.
                    await stream.send_lease(sealed, head=header)
            seq += 1
        except KeyboardInterrupt:
            outcome.interrupts += 1
            if stream is not None:
                if stream._send_conflict._held or stream._receive_conflict._held:
                    outcome.problems.append("a stream was left busy")
                # The byte stream may be cut mid-frame: start a new one.
                await close(stream, outcome)
                stream = None


async def close(stream: trio_zc.ZeroCopyStream, outcome: Outcome) -> None:
    while True:
        try:
            await stream.aclose()
            return
        except KeyboardInterrupt:
            outcome.interrupts += 1


def run(name: str, target: Location | None) -> tuple[Outcome, Tracer]:
    outcome = Outcome()
    tracer = Tracer(target)
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
    # (ResourceWarnings are the test application's: sockets it made and lost
    # when an interrupt came between making and wrapping them.)
    outcome.warnings = [f"{w.category.__name__}: {w.message}" for w in caught if w.category is not ResourceWarning]
    if outcome.warnings and not outcome.ended:
        outcome.problems.append(f"warnings without an interrupted close: {outcome.warnings}")
    return outcome, tracer


def sweep(name: str) -> None:
    """Run the sweep for kernel *name*, printing one JSON line per run (``python -m``).

    The compiled build's library has few lines; its check is the sweep of
    test_keyboard_interrupt_calls.py (SIGINT inside the library's calls out).
    """
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    dry, tracer = run(name, None)
    print(json.dumps({"dry": attrs.asdict(dry), "lines": len(tracer.seen)}), flush=True)
    for where in tracer.seen:
        print(json.dumps({"start": where}), flush=True)  # the last one names a hang
        outcome, t = run(name, where)
        print(json.dumps({"where": where, "fired": t.fired, "outcome": attrs.asdict(outcome)}), flush=True)


#: A whole sweep (hundreds of runs of a few milliseconds) takes seconds here.
SWEEP_TIMEOUT = 300


@pytest.mark.parametrize("name", KERNELS)
def test_sigint_at_every_line_the_application_runs_tears_nothing(name: str) -> None:
    check_sweep(name)


def check_sweep(name: str) -> None:
    # In a child process: a torn run can leave Trio itself unable to go on,
    # and a hang must fail the test, not the suite.
    repo = pathlib.Path(__file__).resolve().parents[2]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.guarantees.test_keyboard_interrupt", name],
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
    assert records and "dry" in records[0], err
    dry = records[0]["dry"]
    assert not dry["problems"] and not dry["corrupt"] and dry["frames"] == IMAGES, dry
    runs = [r for r in records if "where" in r]
    assert len(runs) == records[0]["lines"] > 100, (len(runs), records[0]["lines"], err[-2000:])
    assert sum(r["fired"] for r in runs) > len(runs) // 2
    findings = [
        f"{r['where'][0]}:{r['where'][1]}: {r['outcome']['corrupt'] + r['outcome']['problems']}"
        for r in runs
        if r["outcome"]["corrupt"] or r["outcome"]["problems"]
    ]
    assert not findings, f"{len(findings)} of {len(runs)} lines tore something:\n" + "\n".join(findings)


def _qualname(code: types.CodeType) -> str:
    # co_qualname is Python 3.11+; on 3.10 the name (with file and line) has to do.
    return getattr(code, "co_qualname", code.co_name)


def test_every_function_of_the_library_is_protected() -> None:
    """Every code object compiled from the library's files, found independently of
    trio_zc._ki (by compiling the sources), is registered as protected."""
    import pkgutil

    from trio._core._ki import _CODE_KI_PROTECTION_STATUS_WMAP

    import trio_zc._ki

    registered = set()
    for info in pkgutil.walk_packages(trio_zc.__path__, "trio_zc."):
        if not trio_zc._ki.is_tool(info.name):
            __import__(info.name)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("trio_zc") and not trio_zc._ki.is_tool(module_name):
            for code in trio_zc._ki.code_objects(module):
                try:
                    if _CODE_KI_PROTECTION_STATUS_WMAP[code]:
                        registered.add((os.path.abspath(code.co_filename), code.co_firstlineno, _qualname(code)))
                except KeyError:
                    pass
    missing = []
    for path in sorted(pathlib.Path(PACKAGE).rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if trio_zc._ki.is_tool(".".join(relative.parts)):
            continue
        if is_compiled(sys.modules.get("trio_zc." + ".".join(relative.parts))):
            continue  # no code objects at run time: test_compiled_entries_are_protected
        source = path.read_text()
        lines = source.splitlines()
        stack = [compile(source, str(path), "exec")]
        while stack:
            code = stack.pop()
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            if not code.co_flags & inspect.CO_NEWLOCALS:
                continue  # a module or class body: runs once, at import
            if lines[code.co_firstlineno - 1].split("#")[0].strip() == "@overload":
                continue  # a typing stub, replaced by the real definition
            if (str(path), code.co_firstlineno, _qualname(code)) not in registered:
                missing.append(f"{relative}:{code.co_firstlineno} {_qualname(code)}")
    assert not missing, f"{len(missing)} code objects are not KeyboardInterrupt-protected: {missing}"



def test_compiled_entries_are_protected() -> None:
    """In the compiled build, every entry of the exported classes is a protected interpreted wrapper.

    Found from the sources (every ``def`` of those classes and their
    compiled bases: public names, and dunders), not from trio_zc._ki; a
    dunder that _ki.py would not wrap fails the test, so that a new one is a
    decision. In the pure build there is nothing compiled and nothing to check.
    """
    import ast

    import trio_zc.testing
    from trio._core._ki import _CODE_KI_PROTECTION_STATUS_WMAP

    from trio_zc._ki import ENTRY_DUNDERS

    def protected(function: object) -> bool:
        try:
            return isinstance(function, types.FunctionType) and _CODE_KI_PROTECTION_STATUS_WMAP[function.__code__]
        except KeyError:
            return False

    checked, problems = 0, []
    for package in (trio_zc, trio_zc.testing):
        for export in package.__all__:
            cls = getattr(package, export)
            if not isinstance(cls, type):
                continue
            for klass in cls.__mro__:
                if not klass.__module__.startswith("trio_zc"):
                    continue
                body = None
                for name, module in list(sys.modules.items()):
                    if name.startswith("trio_zc.") and is_compiled(module) and vars(module).get(klass.__name__) is klass:
                        source = pathlib.Path(str(module.__file__).split(".cpython")[0] + ".py").read_text()
                        body = next(
                            (n.body for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == klass.__name__),
                            body,
                        )
                if body is None:
                    continue  # an interpreted class: test_every_function_of_the_library_is_protected
                for node in body:
                    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        continue
                    name = node.name
                    if name.startswith("__") and name.endswith("__"):
                        if name not in ENTRY_DUNDERS:
                            problems.append(f"{klass.__name__}.{name}: a dunder _ki.py does not wrap")
                            continue
                    elif name.startswith("_"):
                        continue
                    member = inspect.getattr_static(cls, name)
                    if isinstance(member, (classmethod, staticmethod)):
                        member = member.__func__
                    checked += 1
                    if isinstance(member, property):
                        if not protected(member.fget) or (member.fset is not None and not protected(member.fset)):
                            problems.append(f"{cls.__name__}.{name}: an unprotected property")
                    elif not protected(member):
                        problems.append(f"{cls.__name__}.{name}: not a protected wrapper ({member!r})")
                    elif getattr(member, "protects_awaitables", False):
                        pass  # awaits what the method returns in a protected frame, whichever it is
                    elif inspect.iscoroutinefunction(member) != isinstance(node, ast.AsyncFunctionDef):
                        problems.append(f"{cls.__name__}.{name}: the wrapper is not async as the source is")
    if is_compiled(sys.modules["trio_zc._pool"]):
        assert checked > 50, checked
    assert not problems, problems


if __name__ == "__main__":
    sweep(sys.argv[1])
