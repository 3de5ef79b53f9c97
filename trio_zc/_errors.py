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
    """The lease cannot change state while writable views of it are alive.

    Raised by :meth:`~trio_zc.WritableLease.seal` and
    :meth:`~trio_zc.WritableLease.release`. Sealing unmaps every writable
    mapping of the lease, and a mapping cannot be unmapped while a view
    (a memoryview or a slice of one, a NumPy array, a PIL image built on it)
    still points into it. Drop or ``release()`` the views and try again;
    the lease is unchanged.

    Attributes:
      count: how many views handed out by the lease were still alive.
    """

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


class ForeignLeaseError(LeaseError, ValueError):
    """A lease was passed to a pool (or a stream of a pool) it does not belong to."""


class LeaseQuarantinedError(LeaseError):
    """The kernel never confirmed it finished reading this memory.

    Raised by :meth:`~trio_zc.SealedLease.wait_reusable` when the pool closed
    before a completion arrived and the drain deadline passed. The memory is
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
    """A pool closed before the kernel confirmed that it finished with some memory.

    That memory is never reused or unmapped; the warning says how much.
    """
