"""Argument checks: every validator of the package's options and sizes, each message built here once.

Rules
=====

1. A bad argument gets a :class:`TypeError` (wrong kind) or a
   :class:`ValueError` (right kind, wrong value) whose message names the
   argument, says what it must be, and shows what it got.
2. An integer argument is taken at its value: a subclass of :class:`int`
   passes as the plain :class:`int` it is worth, so that its own
   comparisons and arithmetic (which could say anything, or call back into
   the library) never decide a bound. Types are checked with ``type()``,
   which an object cannot fake, unlike ``isinstance`` (``__class__``).
   :class:`bool` is never a number here.
3. A number of seconds is checked as the :class:`float` it becomes, for the
   same reason.
4. A check returns the value to use; nothing is changed when it raises.

Theory of operation
===================

Hot paths (``acquire``, ``write``, ``send_lease``...) test the common,
valid case inline with a cheap predicate and call the checks here only
when it fails: the predicate never accepts what these checks would refuse,
so the error (its type and message) always comes from here.
``tests/api/test_fast_paths.py`` runs every row of the bad-input table through
the hot paths both ways and compares the exceptions and the state left.

This module imports nothing from the package: every other module may use it.
"""

from __future__ import annotations

import math
import operator
from typing import Final, NoReturn, final

@final
class RuntimeChecked:
    """Never made: a member of a parameter's annotation, as in ``pool: BufferPool | RuntimeChecked``.

    The compiled build (setup.py) checks each argument against its
    annotation before the function runs, and unboxes an ``int``, so that a
    bool arrives as 1 and a string is refused with mypyc's own message.
    A union with this class, which mypyc does not compile, makes the
    argument arrive as it was given, for the function's own check here
    (the same exception and message in both builds). The other public
    entries declare their signature as a single ``@overload`` instead,
    which shows callers the exact types; mypyc cannot compile an
    overloaded ``__init__``, hence this class for constructors.
    """

    def __init__(self) -> NoReturn:
        raise TypeError("RuntimeChecked is a marker in annotations, never an argument")


#: What ``receive_some()`` asks for when given no size, as in Trio.
DEFAULT_RECEIVE_SIZE: Final = 65536


def exact_int(name: str, value: object, expected: str = "an int") -> int:
    """*value*, an int but not a bool, as an exact :class:`int`; TypeError otherwise (rule 2)."""
    kind = type(value)
    if not issubclass(kind, int) or issubclass(kind, bool):
        raise TypeError(f"{name} must be {expected}, not {kind.__name__}")
    return int.__index__(value)  # type: ignore[arg-type]


def check_head(value: object) -> bytes:
    """A head to send before a lease's bytes, as immutable :class:`bytes`.

    ``bytes`` is taken as it is (nothing can change it); any other
    bytes-like object is copied, so that writing to it after the call
    returns never changes what is sent.
    """
    if type(value) is bytes:
        return value
    if not isinstance(value, str):
        try:
            view = memoryview(value)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            with view:
                return view.tobytes()
    raise TypeError(
        f"head must be a bytes-like object (bytes, bytearray, memoryview...), not {type(value).__name__}"
        + (": encode the text first" if isinstance(value, str) else "")
    )


def check_at_least(name: str, value: object, minimum: int) -> int:
    """An int of at least *minimum*."""
    value = exact_int(name, value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def check_positive_index(name: str, value: object) -> int:
    """A positive size given as any integer :func:`operator.index` takes (NumPy's too), but not a bool."""
    expected = "a positive int (bytes)"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}, not bool")
    try:
        size = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be {expected}, not {type(value).__name__}") from None
    if size < 1:
        raise ValueError(f"{name} must be a positive int, not {size}")
    return size


def check_bool(name: str, value: object) -> bool:
    """True or False, and nothing that merely has a truth value."""
    if type(value) is not bool:
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


# -- sizes --------------------------------------------------------------------------


def check_lease_size(nbytes: object, max_bytes: int) -> int:
    """A lease's size, for a pool of *max_bytes*: a positive int the pool can ever serve."""
    nbytes = exact_int("nbytes", nbytes)
    if nbytes <= 0:
        raise ValueError(f"nbytes must be positive, not {nbytes}")
    if nbytes > max_bytes:
        raise ValueError(f"a lease of {nbytes} bytes can never be served: the pool holds {max_bytes}")
    return nbytes


def check_pool_size(max_bytes: object, page_size: int, most: int) -> int:
    """A pool's size: at least a page, at most *most* (the largest mapping a process can ask for)."""
    max_bytes = exact_int("max_bytes", max_bytes)
    if max_bytes < page_size:
        raise ValueError(f"max_bytes must be at least one page ({page_size}), not {max_bytes}")
    if max_bytes > most:
        raise ValueError(
            f"max_bytes must be at most {most} (sys.maxsize, the largest mapping a process"
            f" can ask for), not {max_bytes}"
        )
    return max_bytes


def check_max_in_flight(value: object) -> int:
    """A stream's bound on its zero-copy bytes in flight."""
    value = exact_int("max_in_flight", value, "an int (bytes)")
    if value < 1:
        raise ValueError(f"max_in_flight must be at least 1 byte, not {value}")
    return value


def check_receive_size(max_bytes: object) -> int:
    """``receive_some()``'s *max_bytes*: None (the default size) or an int of at least 1."""
    if max_bytes is None:
        return DEFAULT_RECEIVE_SIZE
    if type(max_bytes) is not int:
        max_bytes = exact_int("max_bytes", max_bytes)
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    return max_bytes


def check_count(name: str, value: object) -> int:
    """A count that may be zero (a policy's thresholds)."""
    value = exact_int(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return value


# -- seconds ------------------------------------------------------------------------


def _seconds(name: str, value: object, *, optional: bool) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        kind = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
    # Checked as the float it becomes: a subclass's own comparisons could say anything.
    return float(value)


def check_send_timeout(value: object) -> float | None:
    """A send's time limit: None (no limit) or a positive number of seconds."""
    if value is None:
        return None
    seconds = _seconds("send_timeout", value, optional=True)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"send_timeout must be a positive number of seconds or None, not {value}")
    return seconds


def check_drain_timeout(value: object, *, or_none: bool = False) -> float:
    """How long a close waits for completions: a non-negative number of seconds.

    *or_none*: the caller takes None too (a stream's, which defaults to its
    pool's, and handles None itself); the message then says so.
    """
    seconds = _seconds("drain_timeout", value, optional=or_none)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"drain_timeout must be a non-negative number of seconds, not {value}")
    return seconds
