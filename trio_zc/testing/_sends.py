"""What the mock kernel records of each zero-copy send, and the error it raises for premature reuse."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Final

import trio

from .._mypyc import mypyc_attr

if TYPE_CHECKING:
    from .._kernels._base import SendableLease

#: Where the library's and Trio's code live: a send's call site is the first
#: frame outside both.
_PACKAGE_DIRS: Final = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    os.path.dirname(os.path.abspath(trio.__file__)),
)


@mypyc_attr(native_class=False)
class PrematureReuseError(AssertionError):
    """Memory changed while the kernel was still reading it.

    The mock kernel hashes every zero-copy send's bytes when the send is
    made and again when it completes; this is raised when they differ. In a
    real program the client would have received the new bytes instead of
    the old ones. It usually means an adopted buffer was written before
    :meth:`~trio_zc.SealedLease.wait_reusable` returned.
    """


class MockSend:
    """One zero-copy send call as the mock kernel saw it."""

    # A plain slotted class rather than attrs, and the two strings made only
    # when read: one of these is built on every zero-copy send, and the
    # strings are wanted only by a failure message or a test.
    __slots__ = {
        "counter": "The counter value the call took.",
        "nbytes": "Bytes in the call.",
        "connection": "The connection's name.",
        "transmitted": "Whether the bytes were read from memory and put on the wire yet.",
        "view": "The memory the call reads, as a read-only view, until its completion arrives; then None.",
        "snapshot": "The call's bytes as they were when it was made.",
        "record": "The lease record the call read (what the kernel sees of it).",
        "head": "The head the call sent before the lease's bytes, as it was when made (b'' if none).",
        "head_view": (
            "The head the call sends before the lease's bytes, as a view, until its completion"
            " arrives; then None (None from the start if it has no head)."
        ),
        "_as_sent": None,
        "_site": None,
        "_lease": None,
        "_where": None,
    }
    __match_args__ = (
        "counter",
        "lease",
        "nbytes",
        "where",
        "connection",
        "transmitted",
        "view",
        "snapshot",
        "record",
        "head",
    )

    counter: int
    nbytes: int
    connection: str
    transmitted: bool
    view: memoryview | None
    snapshot: bytes
    record: SendableLease | None
    head: bytes
    head_view: memoryview | None

    def __init__(
        self,
        counter: int,
        nbytes: int,
        connection: str,
        view: memoryview | None,
        snapshot: bytes,
        record: SendableLease,
        site: tuple[str, int, str] | None,
        head_view: memoryview | None = None,
    ) -> None:
        self.counter = counter
        self.nbytes = nbytes
        self.connection = connection
        self.transmitted = False
        self.view = view
        self.snapshot = snapshot
        self.record = record
        # The head is read lazily too (a real kernel reads it at transmission).
        self.head_view = head_view
        self.head = b"" if head_view is None else head_view.tobytes()
        # What the description is made of, taken now: it names the lease as
        # it was when sent (its state then), not as it is when read.
        self._as_sent = record.state
        self._site = site
        self._lease: str | None = None
        self._where: str | None = None

    @property
    def lease(self) -> str:
        """The lease, as ``"lease #N (...)"``, in the state it was sent in."""
        if self._lease is None:
            record = self.record
            assert record is not None
            self._lease = record.describe(self._as_sent)  # as it was when sent
        return self._lease

    @property
    def where(self) -> str:
        """The application's call site that made the send (``file:line in function``)."""
        if self._where is None:
            site = self._site
            if site == _NOT_RECORDED:  # not "is": compiled, the constant tuple is boxed anew at each use
                self._where = "<not recorded>"
            elif site is None:
                self._where = "<unknown>"
            else:
                self._where = f"{site[0]}:{site[1]} in {site[2]}"
        return self._where

    def read(self, done: int, n: int) -> bytes:
        """*n* of the bytes this call puts on the wire (its head, then the lease's), from *done*."""
        view = self.view
        assert view is not None
        head_view = self.head_view
        if head_view is None:
            return bytes(view[done : done + n])
        head_len = len(head_view)
        return bytes(head_view[done : done + n]) + bytes(
            view[max(done - head_len, 0) : max(done + n - head_len, 0)]
        )

    def __repr__(self) -> str:
        return (
            f"MockSend(counter={self.counter!r}, lease={self.lease!r}, nbytes={self.nbytes!r},"
            f" where={self.where!r}, connection={self.connection!r}, transmitted={self.transmitted!r},"
            f" head={self.head!r})"
        )


#: The call site of a send made while ``MockKernel(call_sites=False)``.
_NOT_RECORDED: Final = ("<not recorded>", 0, "")

#: Whether a source file is this package's or Trio's, by file name.
_INSIDE: dict[str, bool] = {}


def _call_site() -> tuple[str, int, str] | None:
    """Where the application made the current send: file, line and function."""
    # This runs on every zero-copy send. Walking frames by hand, rather than
    # traceback.extract_stack(), avoids reading source lines for every frame;
    # remembering each file's answer avoids a prefix test per frame (a send
    # starts several frames deep in the package); and the text is made only
    # when someone reads it. The walk starts at the innermost frame and skips
    # the package's: in the compiled build its compiled functions have no
    # frames, so a fixed depth would skip the application's instead.
    frame = sys._getframe(0)
    inside = _INSIDE
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        known = inside.get(filename)
        if known is None:
            known = inside[filename] = filename.startswith(_PACKAGE_DIRS)
        if not known:
            return filename, frame.f_lineno, code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return None
