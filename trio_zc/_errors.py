"""The exceptions and warnings that trio_zc raises.

Misuse of a pool after it closed raises :class:`trio.ClosedResourceError`, and
bad sizes raise :class:`ValueError` or :class:`TypeError`, as everywhere in
Trio; the classes here cover what is specific to leases.
"""

from __future__ import annotations


class LeaseError(Exception):
    """Base class of the lease-specific errors below."""


class StaleLeaseError(LeaseError):
    """A lease handle was used after it stopped being valid.

    A :class:`~trio_zc.WritableLease` goes stale when it is sealed or released,
    a :class:`~trio_zc.SealedLease` when it is released, and every handle when
    its pool closes. A stale handle raises this on every use, so that code
    which kept a handle too long fails loudly instead of touching memory that
    may already belong to another image.
    """


class LiveViewsError(LeaseError, BufferError):
    """The lease cannot be sealed or released while writable views of it are alive.

    Raised by :meth:`~trio_zc.WritableLease.seal` and
    :meth:`~trio_zc.WritableLease.release`. A view handed out for writing (a
    memoryview or a slice of one, a NumPy array, a PIL image built on it)
    writes straight into the lease's memory, and nothing can take it back:
    kept past a seal it could change bytes while they are sent, kept past a
    release it could write into the next lease's image. So both refuse
    while one is alive (the lease counts the views through the reference
    count of the buffer object they are all built on). Drop or
    ``release()`` the views and try again; the lease is unchanged.

    Sealing unmaps nothing: the memory stays mapped read-write in the
    pool, and only a pool opened with ``protect_sealed=True`` also makes
    the pages read-only, so that a raw pointer kept past the seal faults.

    Attributes:
      count: how many views handed out by the lease were still alive.
    """

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


class ForeignLeaseError(LeaseError, ValueError):
    """A lease was passed to a pool (or a stream of a pool) it does not belong to."""


class LeaseQuarantinedError(LeaseError):
    """The kernel may go on reading this memory: it must never be reused.

    Raised by :meth:`~trio_zc.SealedLease.wait_reusable` when a send of the
    lease (or of another lease over the same adopted memory) will never be
    reported complete: a connection it was sent on closed with the send in
    flight, or the pool closed before the kernel confirmed it. The memory is
    withheld for good (quarantined): the application must not reuse an
    adopted buffer after this error.
    """


class LeaseLeakWarning(RuntimeWarning):
    """A pool closed while the application still held leases.

    The pool releases them itself (after their sends complete) and names
    them in this warning; in a correct program every lease is released, or
    scoped with ``async with pool.lease(...)``, before its pool closes.
    """


class QuarantineWarning(RuntimeWarning):
    """Some memory was withheld for good: it is never reused or unmapped.

    Warned when a connection closes with zero-copy sends the kernel never
    reported done (the kernel may read their memory for ever), and when a
    pool closes with such sends, or (``protect_sealed=True``) with released
    pages it could not make writable again. The warning says how much.
    """
