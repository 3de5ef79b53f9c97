"""What the optional compiled build needs of the source, at no cost to the pure one.

Some modules of the package can be compiled with mypyc (``make compiled``,
docs/install.rst); the same source runs interpreted everywhere else.
:func:`mypyc_attr` is ``mypy_extensions.mypyc_attr`` to the type checker and
so to mypyc, which reads it from the source (a class's ``native_class`` and
``allow_interpreted_subclasses``) and never calls it. At run time it is a
decorator that changes nothing, so the package does not depend on
mypy_extensions. :func:`own_abc_state` gives the compiled classes that derive
from an ABC what ``abc.ABCMeta`` gives the interpreted ones. This module
itself is never compiled.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:
        """Change nothing (see the module's docstring)."""

        def keep(obj: _T) -> _T:
            return obj

        return keep


def is_compiled(module: Any) -> bool:
    """Whether *module* was compiled by mypyc (an extension module, not a ``.py`` file)."""
    return not str(getattr(module, "__file__", "") or "").endswith(".py")


#: ``abc.ABCMeta``'s own initialiser (CPython's ``_abc._abc_init``, which
#: ``abc`` imports; the pure-Python ``_py_abc`` fallback has no such function).
_ABC_INIT: Callable[[type], None] | None = getattr(abc, "_abc_init", None)


def own_abc_state(*classes: type) -> None:
    """Give each of *classes* an ``isinstance()`` cache of its own, as ``ABCMeta`` does.

    An ABC keeps the classes it has found to be (or not to be) its subclasses
    in an ``_abc_impl`` attribute that ``ABCMeta.__new__`` puts on every class
    it makes. mypyc builds its classes without calling the metaclass's
    ``__new__``, so a compiled class deriving from an ABC has none and finds
    its base's by attribute lookup: every such class then shares one cache
    (``abc.ABC``'s, or trio's ``HalfCloseableStream``'s), and once
    ``isinstance(k, Kernel)`` has cached ``type(k)``, ``isinstance(k,
    MockKernel)`` answers True too. The compiled modules call this for their
    ABC-derived classes right after defining them; in the pure build (or
    under ``_py_abc``) it changes nothing.
    """
    for cls in classes:
        if _ABC_INIT is not None and isinstance(cls, abc.ABCMeta) and "_abc_impl" not in vars(cls):
            _ABC_INIT(cls)


_E = TypeVar("_E", bound=BaseException)


def caused(error: _E, cause: BaseException | None) -> _E:
    """*error* with *cause* as its ``__cause__``: ``raise caused(error, cause)`` is ``raise error from cause``.

    The compiled modules spell ``raise ... from ...`` this way because mypyc
    compiles the ``from`` clause away: the error came out with no cause, so
    code that follows the chain, such as ``_highlevel.is_connection_error``, did not find the
    socket's error under the stream's; and ``from None`` hid nothing, so a
    user's traceback showed the library's internal error above the message
    meant for them. Setting ``__cause__`` (None included) also sets
    ``__suppress_context__``, as the ``from`` clause does. Inside an
    ``except`` clause the ``from`` clause stays too (``raise caused(error,
    exc) from exc``): the same cause, and what the linter asks for there.
    tests/test_build.py checks that the compiled modules raise no other way.
    """
    error.__cause__ = cause
    return error
