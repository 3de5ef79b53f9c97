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

The compiled build
==================

In the optional build where mypyc compiles some modules (``setup.py``,
docs/install.rst), their functions have no code objects and push no frames:
Trio's walk goes straight through them. A SIGINT that arrives while such a
function runs an interpreted callee (one of Trio's, attrs' generated
``__init__``, Python code of the application's kernel) would find only the
application's frames above it, and be raised there, in the middle of the
library's bookkeeping. So rule 1 is kept another way there:
:func:`protect_package` gives every public method, property and entry
dunder of the exported classes (``trio_zc.__all__`` and
``trio_zc.testing.__all__``, members inherited from compiled bases included)
an interpreted wrapper that only calls the compiled one, and protects the
wrapper's code. Whatever compiled code runs below an entry from the
application then has a protected frame above it, which Trio's walk finds.
Calls between compiled functions go straight to each other (a native call,
not an attribute lookup on the class), so the wrappers cost one Python call
per entry, not per function.

Why these frames, and which must exist (the protection argument):

- A signal handler runs only between bytecodes of interpreted code (the
  eval loop checks for pending signals; compiled code checks only where it
  calls back into the interpreter). So a SIGINT can only be *handled* in an
  interpreted frame: the library's interpreted modules (protected by rule 1),
  or an interpreted callee of compiled code (Trio, attrs' ``__init__``, the
  standard library, the application's kernel).
- Trio's handler decides by the handling frame and its callers' frames. For
  a callee of compiled code those are the callee's own frames, then --
  skipping the compiled functions, which have none -- the nearest
  interpreted frame that called into compiled code. That frame must be
  protected whenever compiled library code is running below it.
- Compiled library code is only ever entered from (a) the application,
  through an entry of an exported class: its wrapper is that frame; (b) the
  package's interpreted, protected modules; (c) a task the package starts,
  which starts in a protected interpreted function (``sweep``,
  ``run_kernel``); (d) Trio calling back code the library handed it (abort
  functions, ``run_sync_soon`` callbacks), which Trio runs from its own
  protected run loop. An async entry runs in more than one piece: each
  ``send()`` into its coroutine comes from whoever awaits it, so its wrapper
  must itself be a coroutine that awaits it (an interpreted coroutine frame
  stays on the stack across every resumption); a sync wrapper that returned
  the compiled coroutine unawaited would leave later pieces under the
  application's frame.
- The wrapper's only work is one call with the same arguments, so no
  SIGINT handled in the wrapper itself can tear anything: protected, it is
  deferred to the next checkpoint, as everywhere else in the library.

To keep the per-lease cost low, each wrapper has the parameters of its
``def`` in the module's source (read with :mod:`ast` when the compiled
module's ``.py`` is next to it, as the build installs it) and is async
exactly when that is, instead of packing ``*args, **kwargs`` on every call;
without the source it falls back to that. Calls from the package's interpreted modules
come from protected frames already. The package's own tasks that run
compiled code start in an interpreted, protected function (``open_pool``'s
``run_kernel`` and ``sweep``).
``trio_zc/__init__.py`` calls it once the core is imported, and each module
that is imported on its own later (``images``, ``testing`` and its pytest
plugin) calls it again at its end; a test checks that no code object of the
package is left out. The command-line tools (the demo and the benchmark) are
applications of the library, not part of it, and are left as they are.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

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
        if name in (_PACKAGE, _PACKAGE + ".testing"):
            for export in getattr(module, "__all__", ()):
                obj = getattr(module, export)
                if isinstance(obj, type):
                    protect_compiled_class(obj)


def is_compiled_function(obj: object) -> bool:
    """Whether *obj* is a function or method that mypyc compiled (no frame of its own)."""
    return callable(obj) and not isinstance(obj, (types.FunctionType, type, classmethod, staticmethod))


#: The dunders of the package's classes that an application calls (directly
#: or through syntax). Others (``__new__``, ``__hash__``, mypyc's own setup
#: methods, pickling state) run no library code worth guarding or are never
#: entries; a test checks that every dunder the compiled modules define is
#: listed here or there.
ENTRY_DUNDERS = frozenset(
    {"__init__", "__aenter__", "__aexit__", "__enter__", "__exit__", "__repr__", "__reduce_ex__", "__copy__"}
)

_protected_classes: set[int] = set()

#: What :func:`protect_compiled_class` replaced, by (class, name): a test
#: puts the compiled entries back to show what the wrappers prevent.
REPLACED: dict[tuple[type, str], object] = {}


def _sync_wrapper(compiled: Any) -> Callable[..., Any]:
    def protected(*args: Any, **kwargs: Any) -> Any:
        return compiled(*args, **kwargs)

    return protected


def _async_wrapper(compiled: Any) -> Callable[..., Any]:
    async def protected(*args: Any, **kwargs: Any) -> Any:
        return await compiled(*args, **kwargs)

    return protected


async def _protected_await(awaitable: Any) -> Any:
    return await awaitable


def _either_wrapper(compiled: Any) -> Callable[..., Any]:
    # mypyc's methods of non-native classes do not say whether they are
    # async: the awaitable such a method returns is awaited in a protected
    # frame too (a sync method's result passes through untouched).
    def protected(*args: Any, **kwargs: Any) -> Any:
        result = compiled(*args, **kwargs)
        if getattr(type(result), "__await__", None) is not None:
            return _protected_await(result)
        return result

    protected.protects_awaitables = True  # type: ignore[attr-defined]
    return protected


#: Mypyc's sync methods of native classes (its async ones say they are).
_SYNC_TYPES = (types.MethodDescriptorType, types.BuiltinFunctionType, types.WrapperDescriptorType)


_SOURCES: dict[str, dict[tuple[str, str], ast.FunctionDef | ast.AsyncFunctionDef]] = {}


def _source_definition(klass: type, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The ``def`` of *name* in the source of compiled class *klass*, if that source is at hand."""
    module = _defining_module(klass)
    filename = getattr(module, "__file__", None)
    if module is None or filename is None:
        return None
    if filename not in _SOURCES:
        definitions: dict[tuple[str, str], ast.FunctionDef | ast.AsyncFunctionDef] = {}
        base = filename.split(".cpython")[0]  # mypyc's extension: name.cpython-311-...so
        if base == filename:
            base = os.path.splitext(filename)[0]
        try:
            with open(base + ".py", encoding="utf-8") as file:
                tree = ast.parse(file.read())
        except (OSError, SyntaxError, ValueError):
            tree = ast.Module(body=[], type_ignores=[])
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and not member.decorator_list:
                        definitions[(node.name, member.name)] = member
        _SOURCES[filename] = definitions
    return _SOURCES[filename].get((klass.__name__, name))


def _defining_module(klass: type) -> types.ModuleType | None:
    # Not klass.__module__: the exported classes say "trio_zc" there (_exports.py).
    for name, module in list(sys.modules.items()):
        if name.startswith(_PACKAGE + ".") and vars(module).get(klass.__name__) is klass:
            if not str(getattr(module, "__file__", "")).endswith(".py"):
                return module
    return None


def _exact_wrapper(compiled: Any, node: ast.FunctionDef | ast.AsyncFunctionDef, globals_: dict[str, Any]) -> Any:
    """A wrapper with the parameters of the source's *node*: no ``*args``/``**kwargs`` packing per call.

    None if a default cannot be evaluated in the module's namespace.
    """
    args = node.args
    namespace: dict[str, Any] = {"_compiled": compiled}
    params: list[str] = []
    call: list[str] = []

    def default(expr: ast.expr) -> str:
        # Only constants and names: a default such as ``object()`` evaluated
        # again would be another object than the compiled function's.
        if not isinstance(expr, (ast.Constant, ast.Name, ast.Attribute, ast.UnaryOp)):
            raise ValueError("a default that is not a constant or a name")
        key = f"_d{len(namespace)}"
        namespace[key] = eval(compile(ast.Expression(expr), "<default>", "eval"), globals_)  # noqa: S307
        return key

    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    for index, arg in enumerate(positional):
        if index >= first_default:
            params.append(f"{arg.arg}={default(args.defaults[index - first_default])}")
        else:
            params.append(arg.arg)
        call.append(arg.arg)
        if args.posonlyargs and index == len(args.posonlyargs) - 1:
            params.append("/")
    if args.vararg is not None:
        params.append(f"*{args.vararg.arg}")
        call.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        params.append("*")
    for arg, expr in zip(args.kwonlyargs, args.kw_defaults):
        params.append(arg.arg if expr is None else f"{arg.arg}={default(expr)}")
        call.append(f"{arg.arg}={arg.arg}")
    if args.kwarg is not None:
        params.append(f"**{args.kwarg.arg}")
        call.append(f"**{args.kwarg.arg}")
    head = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    body = f"await _compiled({', '.join(call)})" if head == "async def" else f"_compiled({', '.join(call)})"
    source = f"{head} protected({', '.join(params)}):\n    return {body}\n"
    # Compiled as this file's: the wrappers are the library's code (tracebacks, tracers).
    exec(compile(source, __file__, "exec"), namespace)  # noqa: S102
    return namespace["protected"]


def protected_wrapper(
    compiled: Any, owner: type, name: str, defined_in: type | None = None
) -> Callable[..., Any]:
    """An interpreted, protected function that calls *compiled* (the compiled build).

    With the source of *defined_in* (the compiled class that defines it) at
    hand, the wrapper takes the same parameters as the source's ``def`` and
    is async exactly when that is; otherwise it takes ``*args, **kwargs``.
    """
    node = _source_definition(defined_in, name) if defined_in is not None else None
    wrapper: Any = None
    if node is not None and defined_in is not None:
        try:
            wrapper = _exact_wrapper(compiled, node, vars(_defining_module(defined_in)))
        except Exception:  # noqa: BLE001 - a default that only makes sense at run time: the generic wrapper
            wrapper = None
    if wrapper is not None:
        pass
    elif inspect.iscoroutinefunction(compiled):
        wrapper = _async_wrapper(compiled)
    elif isinstance(compiled, _SYNC_TYPES):
        wrapper = _sync_wrapper(compiled)
    else:
        wrapper = _either_wrapper(compiled)
    wrapper.__name__ = name
    wrapper.__qualname__ = f"{owner.__qualname__}.{name}"
    wrapper.__doc__ = getattr(compiled, "__doc__", None)
    wrapper.__wrapped__ = compiled
    protected: Callable[..., Any] = enable_ki_protection(wrapper)
    return protected


def _accessor(descriptor: Any, owner: type, name: str, kind: str) -> Callable[..., Any] | None:
    if isinstance(descriptor, property):
        compiled = getattr(descriptor, kind)
        if compiled is None or not is_compiled_function(compiled):
            return compiled  # type: ignore[no-any-return]
    elif kind == "fget":
        compiled = descriptor.__get__
        wrapper = protected_wrapper(lambda obj: compiled(obj, owner), owner, name)
        return wrapper
    elif kind == "fset":
        compiled = descriptor.__set__
    else:
        compiled = descriptor.__delete__
    return protected_wrapper(compiled, owner, name)


def protect_compiled_class(cls: type) -> None:
    """Give the compiled entries of *cls* protected interpreted wrappers (see "The compiled build").

    Does nothing to a class whose members are all interpreted (the pure build).
    """
    if id(cls) in _protected_classes:
        return
    _protected_classes.add(id(cls))
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith(_PACKAGE):
            continue
        for name, member in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("_") and name not in ENTRY_DUNDERS:
                continue
            if isinstance(member, property) or type(member).__name__ == "getset_descriptor":
                if isinstance(member, property) and not any(
                    is_compiled_function(f) for f in (member.fget, member.fset, member.fdel)
                ):
                    continue
                fget = _accessor(member, cls, name, "fget")
                fset = _accessor(member, cls, name, "fset") if _settable(member) else None
                REPLACED.setdefault((cls, name), member)
                setattr(cls, name, property(fget, fset, doc=getattr(member, "__doc__", None)))
            elif isinstance(member, (classmethod, staticmethod)):
                if is_compiled_function(member.__func__):
                    REPLACED.setdefault((cls, name), member)
                    setattr(cls, name, type(member)(protected_wrapper(member.__func__, cls, name)))
            elif is_compiled_function(member):
                REPLACED.setdefault((cls, name), member)
                setattr(cls, name, protected_wrapper(member, cls, name, klass))


def _settable(member: Any) -> bool:
    if isinstance(member, property):
        return member.fset is not None
    # A getset descriptor of a native class: mypyc gives every attribute and
    # property one; those without a setter refuse a set with AttributeError
    # all the same, so the wrapper may as well pass it on.
    return True
