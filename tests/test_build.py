"""Which build the suite runs against: the pure one, or the compiled one when told so.

``make pytest-compiled`` runs the suite's core against the mypyc-compiled
build (setup.py, docs/install.rst) with ``TRIO_ZC_EXPECT_COMPILED=1``: then
every module setup.py compiles must be imported as an extension module, so
that the run cannot test the pure sources by mistake. Otherwise every module
must be the pure source.
"""

from __future__ import annotations

import ast
import importlib
import os
import pathlib

import trio_zc
from trio_zc._mypyc import is_compiled

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPECT_COMPILED = os.environ.get("TRIO_ZC_EXPECT_COMPILED") == "1"


def compiled_modules() -> list[str]:
    """The modules setup.py hands to mypyc (its COMPILED list, read without running it)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["COMPILED"]:
            paths: list[str] = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no COMPILED list")


def test_the_build_under_test_is_the_one_expected() -> None:
    modules = compiled_modules()
    assert len(modules) > 10
    wrong = [
        f"{name}: {importlib.import_module(name).__file__}"
        for name in modules
        if is_compiled(importlib.import_module(name)) != EXPECT_COMPILED
    ]
    assert not wrong, f"expected {'compiled' if EXPECT_COMPILED else 'pure'} modules: {wrong}"
    # The rest is interpreted either way (and so has code objects that _ki.py protects).
    assert not is_compiled(trio_zc) and not is_compiled(importlib.import_module("trio_zc._ki"))


def test_every_abc_derived_class_has_an_isinstance_cache_of_its_own() -> None:
    """mypyc builds classes without ``ABCMeta.__new__``: unfixed, the compiled ABC-derived
    classes shared one ``_abc_impl``, and ``isinstance(k, Kernel)`` made ``isinstance(k,
    MockKernel)`` True for a real kernel (the tests then took real pools for mock ones, and
    the library a socket transport for the mock's). _mypyc.own_abc_state gives each its own."""
    import abc

    import trio_zc.testing
    from trio_zc._kernels._base import Kernel, Transport
    from trio_zc._kernels._msg_zerocopy import MsgZeroCopyKernel
    from trio_zc._kernels._socket import SocketTransport
    from trio_zc.testing._transport import MockTransport

    shared = [
        f"{cls.__module__}.{cls.__qualname__}"
        for name in [*compiled_modules(), "trio_zc", "trio_zc.testing"]
        for cls in vars(importlib.import_module(name)).values()
        if isinstance(cls, abc.ABCMeta)
        and getattr(cls, "_is_protocol", False) is False
        and cls.__module__ == name
        and "_abc_impl" not in vars(cls)
    ]
    assert not shared, shared
    kernel = MsgZeroCopyKernel()
    assert isinstance(kernel, Kernel)
    assert not isinstance(kernel, trio_zc.testing.MockKernel)
    assert issubclass(SocketTransport, Transport)
    assert not issubclass(SocketTransport, MockTransport)
    assert isinstance(trio_zc.testing.MockKernel(), Kernel)


def test_a_broken_connection_keeps_the_socket_error_as_its_cause() -> None:
    """mypyc compiled ``raise ... from exc`` without the cause: the BrokenResourceError of a
    reset came out alone, so the server took a client's reset for its own failure
    (test_http's test_a_client_that_leaves_ends_only_its_connection); _mypyc.caused keeps it."""
    import errno

    import pytest
    import trio

    from trio_zc._kernels._base import broken

    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    with pytest.raises(trio.BrokenResourceError) as info:
        broken(reset)
    assert info.value.__cause__ is reset
    assert info.value.__suppress_context__



def test_every_raise_from_of_a_compiled_module_goes_through_caused() -> None:
    """mypyc compiles ``raise error from cause`` as ``raise error`` (cause and ``from None`` lost).

    So in the modules setup.py compiles, a raise with a ``from`` clause
    raises ``caused(error, cause)`` (trio_zc/_mypyc.py), which keeps both in
    either build; the tests below check the ones there are.
    """
    bare = []
    for name in compiled_modules():
        path = ROOT / (name.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.cause is not None:
                exc = node.exc
                if not (isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name) and exc.func.id == "caused"):
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bare, f"raise ... from without caused(): {bare}"


async def test_argument_errors_hide_the_internal_error_they_replace() -> None:
    """``raise ... from None`` of a compiled module hides the error it replaces in the compiled build too.

    mypyc compiles ``raise error from None`` as ``raise error``: the compiled
    build's tracebacks showed the library's internal TypeError, and "During
    handling of the above exception, another exception occurred", above the
    message meant for the user (adopt() of a non-buffer, ndarray()'s shape).
    """
    import pytest

    import trio_zc
    from trio_zc.testing import MockKernel

    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=MockKernel()) as pool:
        errors = []
        with pytest.raises(TypeError, match="adopt\\(\\) needs a buffer") as info:
            pool.adopt(object())  # type: ignore[arg-type]
        errors.append(info.value)
        lease = await pool.acquire(4096)
        for shape in (1.5, (2, "3")):
            with pytest.raises(TypeError, match="shape must be") as info:
                lease.ndarray(shape)  # type: ignore[arg-type]
            errors.append(info.value)
        lease.release()
    for error in errors:
        assert error.__cause__ is None and error.__suppress_context__, repr(error)


#: A child process with no NumPy to import, asking for an array over a lease.
_NO_NUMPY = """
import sys
sys.modules["numpy"] = None  # what a missing NumPy does to `import numpy`
import trio, trio_zc, trio_zc._lease
from trio_zc._mypyc import is_compiled
from trio_zc.testing import MockKernel

print("compiled" if is_compiled(trio_zc._lease) else "pure")

async def main():
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=MockKernel()) as pool:
        lease = await pool.acquire(4096)
        try:
            lease.ndarray((16,))
        except ModuleNotFoundError as error:
            print(type(error.__cause__).__name__, error.__suppress_context__, error)
        lease.release()

trio.run(main)
"""


def test_a_missing_numpy_is_the_cause_of_ndarrays_error() -> None:
    """``raise ... from exc`` keeps its cause in the compiled build (mypyc dropped it).

    In a child process (run from the same directory, so the same build):
    a compiled module imports NumPy once per process, so only a process
    that never had it shows the error.
    """
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _NO_NUMPY], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    build, outcome = result.stdout.split("\n", 1)
    assert build == ("compiled" if EXPECT_COMPILED else "pure")
    assert outcome.startswith("ModuleNotFoundError True WritableLease.ndarray needs NumPy"), result.stdout
