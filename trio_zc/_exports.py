"""Public names report the public module they are documented under.

A class defined in ``trio_zc._pool`` and re-exported as ``trio_zc.BufferPool``
would otherwise show as ``trio_zc._pool.BufferPool`` in reprs, tracebacks,
pickles and the generated reference (Sphinx renders type hints from
``__module__``). Each public module lists its names in ``__all__`` and calls
:func:`publish` at its end; ``tests/tools/test_exports.py`` checks that ``__all__``,
``__module__`` and ``docs/reference.rst`` agree.
"""

from __future__ import annotations

import types
from collections.abc import Mapping


def publish(namespace: Mapping[str, object]) -> None:
    """Set ``__module__`` of each class and function in ``namespace["__all__"]``.

    *namespace* is the public module's ``globals()``. Only names defined in
    one of the package's private modules change; constants (which have no
    ``__module__`` of their own) are left alone.
    """
    public = namespace["__name__"]
    assert isinstance(public, str)
    names = namespace["__all__"]
    assert isinstance(names, list)
    package = public.partition(".")[0]
    for name in names:
        obj = namespace[name]
        # type(obj), not isinstance: on Python 3.10 an alias such as
        # Callable[[X], Y] passes isinstance(alias, type) (and has no module of its own).
        if not (issubclass(type(obj), type) or isinstance(obj, types.FunctionType)):
            continue
        module = obj.__module__
        if module.startswith(package + ".") and any(part.startswith("_") for part in module.split(".")):
            obj.__module__ = public
