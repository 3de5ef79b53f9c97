"""The type of a sealed lease's view (:class:`ReadOnlyBuffer`), for the type checker.

In a module of its own because mypyc cannot compile a protocol whose
methods are overloaded without an implementation; ``_lease.py`` is compiled
in the optional compiled build, this module never is.
"""

from __future__ import annotations
from typing import Protocol, overload


class ReadOnlyBuffer(Protocol):
    """What :meth:`SealedLease.view` returns, as far as the type checker knows.

    At run time it is a read-only :class:`memoryview`; this protocol lists
    the reading half of memoryview's interface and none of its writing
    half, so that ``sealed.view()[0] = 1`` is a type error as well as a
    run-time one. It is a buffer: ``hashlib.sha256(sealed.view())`` and
    ``bytes(sealed.view())`` work.
    """

    @property
    def nbytes(self) -> int:
        """How many bytes the buffer holds."""
        ...

    @property
    def readonly(self) -> bool:
        """Always True."""
        ...

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, index: int, /) -> int: ...

    @overload
    def __getitem__(self, index: slice, /) -> ReadOnlyBuffer: ...

    def tobytes(self) -> bytes:
        """A copy of the bytes."""
        ...

    def release(self) -> None:
        """Let go of the view now rather than when it is garbage collected."""
        ...

    def __buffer__(self, flags: int, /) -> memoryview: ...
