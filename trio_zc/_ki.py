"""Ctrl-C never lands in the middle of trio_zc's bookkeeping.

Rules
=====

1. Every function of the package -- module functions, methods, properties,
   and the closures, lambdas and comprehensions inside them -- runs with
   Trio's KeyboardInterrupt protection (``trio.lowlevel.enable_ki_protection``),
   as Trio's own primitives do.
2. So a ``SIGINT`` that arrives while library code runs is never raised
   there. Trio delivers it to the main task at its next checkpoint, where
   it surfaces like a cancellation: the library's code at that await already
   has to survive an exception (every ``await`` in it is written for
   :class:`trio.Cancelled`, and catches ``BaseException`` where it cleans
   up), so the lease, pool and stream bookkeeping is never torn.
3. Code the library calls back into (the application's handler in
   ``serve_tcp``, say) runs in its own task and is not protected.

Theory of operation
===================

Since Trio 0.28, protection is a property of a *code object*: Trio keeps a
weak table of protected code objects, and its SIGINT handler walks the
interrupted frame and its callers until it meets one that the table
decides. Decorating each function by hand would leave the next one written
unprotected, so instead :func:`protect_package` walks every module of the
package that is loaded, finds every code object reachable from it (through
functions, classes and their members, and the constants of each code
object, which hold the nested ones) and registers them all.
``trio_zc/__init__.py`` calls it once the core is imported, and each module
that is imported on its own later (``images``, ``testing`` and its pytest
plugin) calls it again at its end; a test checks that no code object of the
package is left out. The command-line tools (the demo and the benchmark) are
applications of the library, not part of it, and are left as they are.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator

from trio.lowlevel import enable_ki_protection

_PACKAGE = __name__.rpartition(".")[0]
#: Applications built on the library rather than the library: Ctrl-C in
#: them is the user's to handle (rule 3).
TOOLS = ("__main__", "_demo", "_bench")
_done: set[str] = set()


def is_tool(name: str) -> bool:
    """Whether module *name* of the package is one of the tools (left unprotected)."""
    return name.rpartition(".")[2].startswith(TOOLS)


class _Code:
    """What ``enable_ki_protection`` takes: anything with a ``__code__``."""

    __slots__ = ("__code__",)

    def __init__(self, code: types.CodeType) -> None:
        self.__code__ = code


_DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def _ours(code: types.CodeType) -> bool:
    """Whether *code* was compiled from a library module of the package (not a tool)."""
    filename = os.path.abspath(code.co_filename)
    if not filename.startswith(_DIRECTORY + os.sep):
        return False
    relative = os.path.relpath(filename, _DIRECTORY)
    return not is_tool(os.path.splitext(relative)[0].replace(os.sep, "."))


def _functions_of(obj: object, seen: set[int]) -> Iterator[types.FunctionType]:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    # A decorated function (asynccontextmanager's, functools.cache's) keeps ours here.
    wrapped = getattr(obj, "__wrapped__", None)
    if wrapped is not None and not isinstance(obj, type):
        yield from _functions_of(wrapped, seen)
    if isinstance(obj, types.FunctionType):
        yield obj
    elif isinstance(obj, (staticmethod, classmethod)):
        yield from _functions_of(obj.__func__, seen)
    elif isinstance(obj, property):
        for accessor in (obj.fget, obj.fset, obj.fdel):
            if accessor is not None:
                yield from _functions_of(accessor, seen)
    elif isinstance(obj, type) and obj.__module__.split(".")[0] == _PACKAGE:
        for member in vars(obj).values():
            yield from _functions_of(member, seen)


def code_objects(module: types.ModuleType) -> Iterator[types.CodeType]:
    """Every code object of the library reachable from *module*, nested ones included."""
    seen: set[int] = set()
    stack = [
        function.__code__
        for obj in list(vars(module).values())
        for function in _functions_of(obj, seen)
        if _ours(function.__code__)
    ]
    codes: set[int] = set()
    while stack:
        code = stack.pop()
        if id(code) in codes:
            continue
        codes.add(id(code))
        yield code
        stack.extend(const for const in code.co_consts if isinstance(const, types.CodeType))


def protect_package(caller: str | None = None) -> None:
    """Protect every loaded module of the package not protected yet (rule 1).

    A module calls this at its end with its own ``__name__`` as *caller*:
    that one is protected although its import has not finished.
    """
    for name, module in list(sys.modules.items()):
        if module is None or name in _done or not (name == _PACKAGE or name.startswith(_PACKAGE + ".")):
            continue
        if is_tool(name):
            continue
        if name != caller and getattr(module.__spec__, "_initializing", False):
            continue  # still being imported: its own end (or a later call) protects it
        _done.add(name)
        for code in code_objects(module):
            enable_ki_protection(_Code(code))
