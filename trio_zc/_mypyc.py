"""What the optional compiled build needs of the source, at no cost to the pure one.

Some modules of the package can be compiled with mypyc (``make compiled``,
docs/install.rst); the same source runs interpreted everywhere else.
:func:`mypyc_attr` is ``mypy_extensions.mypyc_attr`` to the type checker and
so to mypyc, which reads it from the source (a class's ``native_class`` and
``allow_interpreted_subclasses``) and never calls it. At run time it is a
decorator that changes nothing, so the package does not depend on
mypy_extensions. This module itself is never compiled.
"""

from __future__ import annotations

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
