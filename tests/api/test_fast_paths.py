"""Each hot path's fast check and its slow one give the same answer, over every row of the bad-input table.

The calls made once per image (``pool.acquire``, ``pool.lease``,
``lease.write``, ``lease.seal``, ``stream.send_lease``, ``receive_some``)
test the common, valid case with a cheap inline predicate (``type(x) is
int``, ``type(lease) is SealedLease``, ``type(data) is bytes``...) and only
when it fails run the full checks, which build every error message
(``trio_zc/_validate.py``). That is sound only if the predicate never lets
through what the full checks would refuse, and the two paths leave the
same state behind.

So every row of ``tests/bad_inputs.py`` runs twice, each time in a fresh
context: once as it is, and once with the hot paths' arguments made to fail
their predicates while meaning the same thing -- each int becomes an
:class:`_Slow`, a subclass of int worth the same value (which the full
checks take at its value), each ``bytes`` a ``bytearray`` of the same
bytes, and defaulted arguments are passed explicitly so. The two runs must
raise the same exception with the same message (or both return the same
result) and leave the same state: every pool's statistics, the stream's,
and the state and bytes of every lease the row had.
"""

from __future__ import annotations

import ast
import functools
import inspect
import pathlib
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import attrs
import pytest
import trio.testing

import trio_zc
import trio_zc._validate
from trio_zc.testing import MockPeer

from ..bad_inputs import ROWS, Ctx, Row, open_context

#: Where the hot paths are: the methods, and the arguments the slow run changes.
HOT_PATHS: list[tuple[type, str, tuple[str, ...]]] = [
    (trio_zc.BufferPool, "acquire", ("nbytes",)),
    (trio_zc.BufferPool, "acquire_nowait", ("nbytes",)),
    (trio_zc.BufferPool, "lease", ("nbytes",)),
    (trio_zc.WritableLease, "write", ("data", "offset")),
    (trio_zc.WritableLease, "seal", ("nbytes",)),
    (trio_zc.ZeroCopyStream, "send_lease", ("offset", "nbytes", "head")),
    (trio_zc.ZeroCopyStream, "receive_some", ("max_bytes",)),
    (MockPeer, "receive_some", ("max_bytes",)),
]

#: The prepared leases of a context (see Ctx).
LEASES = ("lease", "sealed", "foreign", "foreign_writable", "stale", "released", "released_writable")


class _Slow(int):
    """An int that fails every ``type(x) is int`` test and is worth exactly its value."""


def _slowed(value: object) -> object:
    if type(value) is int:
        return _Slow(value)
    if type(value) is bytes:
        return bytearray(value)
    return value


@functools.cache
def _defined(module: ModuleType) -> dict[str, ast.ClassDef]:
    """The classes defined in *module*'s source (next to it when it is compiled)."""
    file = getattr(module, "__file__", None)
    if file is None:
        return {}
    source = pathlib.Path(file).with_name(module.__name__.rpartition(".")[2] + ".py")
    if not source.exists():
        return {}
    return {n.name: n for n in ast.parse(source.read_text()).body if isinstance(n, ast.ClassDef)}


def _signature(cls: type, name: str) -> tuple[inspect.Signature, bool]:
    """The signature of the method *name* of *cls*, and whether it is async; in the compiled build, from the source.

    mypyc's methods carry no usable signature (those declared as a single
    ``@overload`` none at all), and an async one may be reached through a
    plain function that returns its coroutine; the pure-Python source is
    installed next to the compiled module, and says what the implementation
    takes.
    """
    # The module that defines the class (its __module__ names the public one).
    (module,) = (
        m
        for m in list(sys.modules.values())
        if m.__name__.startswith("trio_zc.") and vars(m).get(cls.__name__) is cls and cls.__name__ in _defined(m)
    )
    assert module.__file__ is not None
    if module.__file__.endswith(".py"):
        method = getattr(cls, name)
        return inspect.signature(method), inspect.iscoroutinefunction(method)
    owner = _defined(module)[cls.__name__]
    # The last definition of the name is the implementation (after its @overload).
    *_, impl = (n for n in owner.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    args = impl.args
    for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
        arg.annotation = None
    namespace: dict[str, Any] = {}
    exec(f"def stub({ast.unparse(args)}): pass", namespace)  # the defaults are literals
    return inspect.signature(namespace["stub"]), isinstance(impl, ast.AsyncFunctionDef)


def _wrap(
    original: Callable[..., Any],
    signature: inspect.Signature,
    is_async: bool,
    key: str,
    slowed: tuple[str, ...],
    refused: dict[str, int],
) -> Callable[..., Any]:
    """*original* with its *slowed* arguments slowed (defaults passed explicitly); counts the calls that raised."""

    def slowed_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        for name in slowed:
            bound.arguments[name] = _slowed(bound.arguments[name])
        return bound.args, bound.kwargs

    def count() -> None:
        refused[key] = refused.get(key, 0) + 1

    if is_async:

        @functools.wraps(original)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                call_args, call_kwargs = slowed_call(args, kwargs)
            except TypeError:
                return await original(*args, **kwargs)  # the call's own TypeError, as in the fast run
            try:
                return await original(*call_args, **call_kwargs)
            except Exception:
                count()
                raise

        return async_wrapper

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            call_args, call_kwargs = slowed_call(args, kwargs)
        except TypeError:
            return original(*args, **kwargs)
        try:
            return original(*call_args, **call_kwargs)
        except Exception:
            count()
            raise

    return wrapper


@contextmanager
def slow_paths(refused: dict[str, int]) -> Iterator[None]:
    """Make every hot path's arguments fail its fast predicate; count the calls that raised."""
    originals = [(cls, name, cls.__dict__[name]) for cls, name, _ in HOT_PATHS]
    for (cls, name, original), (_, _, slowed) in zip(originals, HOT_PATHS):
        signature, is_async = _signature(cls, name)
        setattr(cls, name, _wrap(original, signature, is_async, f"{cls.__name__}.{name}", slowed, refused))
    try:
        yield
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)


def _normal(text: str) -> str:
    """A message or repr with what differs between two contexts taken out (lease numbers, addresses)."""
    text = re.sub(r"#\d+", "#N", text)
    text = re.sub(r"0x[0-9a-f]+", "0x?", text)
    return re.sub(r"\('(127\.0\.0\.1|::1)', \d+", r"('\1', PORT", text)


def _lease_state(lease: trio_zc.WritableLease | trio_zc.SealedLease) -> tuple[object, ...]:
    slot = lease._slot
    return (type(lease).__name__, slot.state, slot.capacity, slot.nbytes, slot.clean_bytes, slot.inflight)


async def outcome(row: Row, *, slow: bool, refused: dict[str, int]) -> dict[str, object]:
    """Run *row* in a fresh context; what it raised or returned, and the state it left."""
    async with open_context(row.context) as c:
        with slow_paths(refused) if slow else _nothing():
            await c.mark()
            try:
                result: object = await row.run(c)
                answer: tuple[object, ...] = ("returned", _normal(repr(result)))
                c.keep(result)
            except Exception as exc:
                answer = ("raised", type(exc), _normal(str(exc)))
            await trio.testing.wait_all_tasks_blocked()
            return {"answer": answer, **_state(c)}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _state(c: Ctx) -> dict[str, object]:
    state: dict[str, object] = {
        f"pool {i}": attrs.asdict(attrs.evolve(pool.statistics(), leases_total=0))
        for i, pool in enumerate(c.pools)
    }
    if hasattr(c, "stream"):
        state["stream"] = attrs.asdict(c.stream.statistics())
    for name in LEASES:
        if hasattr(c, name):
            state[name] = _lease_state(getattr(c, name))
    state["tracked"] = [_lease_state(lease) for lease, _ in c.leases]
    return state


async def test_fast_and_slow_paths_agree_on_every_bad_input_row() -> None:
    refused: dict[str, int] = {}
    differ = []
    for row in ROWS:
        fast = await outcome(row, slow=False, refused={})
        slow = await outcome(row, slow=True, refused=refused)
        if fast != slow:
            keys = [k for k in fast if fast[k] != slow.get(k)]
            differ.append(f"{row.id}: " + "; ".join(f"{k}: {fast[k]!r} != {slow.get(k)!r}" for k in keys))
    assert not differ, "\n".join(differ)
    # Every hot path's slow checks refused some row's input: the table reaches them all.
    assert sorted(refused) == sorted(f"{cls.__name__}.{name}" for cls, name, _ in HOT_PATHS), refused


@pytest.mark.parametrize("value", [0, 1, 2**64, -5])
def test_a_slow_int_is_worth_its_value(value: int) -> None:
    slow = _slowed(value)
    assert type(slow) is not int and slow == value
    assert trio_zc._validate.exact_int("n", slow) == value
    assert type(trio_zc._validate.exact_int("n", slow)) is int
