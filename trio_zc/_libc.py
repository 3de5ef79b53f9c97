"""The C library, loaded once, and the functions the package calls in it through ctypes.

Every module that calls libc (the arena's mmap, mprotect and fallocate, the
socket helpers' connect, the ring's syscall) takes its functions from
:func:`function`. Each call of it gives a function object of its own,
with the argument and result types its caller declares: a library's
attributes are cached by ctypes (``libc.connect`` is one object for the
whole process), so two modules setting types on the same attribute would
change each other's calls.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

_LIBC = ctypes.CDLL(None, use_errno=True)


def function(name: str, restype: Any, argtypes: Sequence[Any] | None) -> Callable[..., Any]:
    """libc's *name*, returning *restype* and taking *argtypes* (None: unchecked, for variadic ones).

    ``ctypes.get_errno()`` gives the errno of its last call (the library is
    loaded with ``use_errno``).
    """
    fn = _LIBC[name]  # item access makes a new function object; attribute access would share one
    fn.restype = restype
    if argtypes is not None:
        fn.argtypes = list(argtypes)
    return fn
