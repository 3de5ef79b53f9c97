"""Which io_uring zero-copy sends are done with their memory: CQE bookkeeping with no I/O.

Rules
=====

1. An item comes back in a :class:`SendReleased` event exactly once, and
   only after the kernel said it will not read the send's memory again:
   after the notification CQE (``IORING_CQE_F_NOTIF``) of a send whose
   result CQE carried ``IORING_CQE_F_MORE``, or together with a result CQE
   that did not carry ``IORING_CQE_F_MORE`` (then no notification follows).
2. The decision is keyed on the flags, never on the result: a send that
   failed may still carry ``F_MORE``, and its memory is then not free until
   the notification arrives.
3. A CQE that the kernel could not have written for the sends in flight
   (unknown ``user_data``, a second result, a notification before the
   result or after a result without ``F_MORE``, a result claiming more
   bytes than were asked for, a notification that also says ``F_MORE``)
   raises :class:`UnexpectedCqeError`, and the tracker is left exactly as
   it was. Releasing memory on a guess could put reused memory on the
   wire; refusing only ever keeps memory busy for longer.
4. Nothing here touches a ring or a socket: the caller hands in CQEs
   (parsed by :func:`parse_cqe`, which only checks their length), so every
   path can be tested and fuzzed without a kernel.

Theory of operation
===================

An ``IORING_OP_SEND_ZC`` request produces one or two completion queue
entries, both carrying the ``user_data`` of its submission entry. The
first is the *result*: the number of bytes sent (possibly fewer than asked
for, a partial send) or ``-errno``. If its flags include ``F_MORE``, a
second CQE, the *notification*, follows once the network stack has dropped
its references to the pages; it has ``F_NOTIF`` set, and with
``IORING_SEND_ZC_REPORT_USAGE`` its ``res`` has bit 31
(:data:`IORING_NOTIF_USAGE_ZC_COPIED`) set when the data was copied after
all (always so on loopback). The kernel posts the result before the
notification (the notification is completed from task work queued while
the request itself completes), which is why a notification that comes
first is refused. On Linux 6.18 every SEND_ZC result seen carried
``F_MORE``, failures (EPIPE, ECONNRESET, EFAULT, EBADF, EOPNOTSUPP)
included. A kernel without SEND_ZC rejects the opcode with ``-EINVAL``
and no ``F_MORE`` (from the kernel source; not observed here).

:meth:`SendZcTracker.start` gives each send a fresh ``user_data`` value
(a 64-bit counter that skips 0 and any value still in use) and remembers
the caller's item and the byte count. Each send is then in one of two
phases: awaiting its result, or awaiting its notification.
:meth:`~SendZcTracker.on_cqe` checks that a CQE fits the phase of its send
before changing anything, and answers with events: a :class:`SendResult`
for a result CQE, and a :class:`SendReleased` when the memory may be
reused. The sends live in a dict, so lookups are O(1) and
:meth:`~SendZcTracker.items_outstanding` lists them in start order.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, Generic, TypeAlias, TypeVar, Union

import attrs

__all__ = [
    "IORING_CQE_F_MORE",
    "IORING_CQE_F_NOTIF",
    "IORING_NOTIF_USAGE_ZC_COPIED",
    "Cqe",
    "MalformedCqeError",
    "SendReleased",
    "SendResult",
    "SendZcEvent",
    "SendZcTracker",
    "UnexpectedCqeError",
    "pack_cqe",
    "parse_cqe",
]

T = TypeVar("T")

# Values from include/uapi/linux/io_uring.h.

#: In a CQE's flags: another CQE with the same user_data will follow.
IORING_CQE_F_MORE: Final = 1 << 1
#: In a CQE's flags: this is a zero-copy send's notification.
IORING_CQE_F_NOTIF: Final = 1 << 3
#: In a notification's res, with ``IORING_SEND_ZC_REPORT_USAGE``: the data was copied.
IORING_NOTIF_USAGE_ZC_COPIED: Final = 1 << 31

# struct io_uring_cqe without the big-CQE extension: u64 user_data, s32 res,
# u32 flags, host byte order, no padding.
_CQE: Final = struct.Struct("=QiI")
_U64_MAX: Final = 2**64 - 1
_U32_MAX: Final = 2**32 - 1
# Kernel error returns are -1 .. -MAX_ERRNO (4095); nothing else is negative.
_MAX_ERRNO: Final = 4095


@attrs.frozen
class Cqe:
    """One completion queue entry, as the kernel wrote it."""

    #: The value the submission entry carried, identifying the request.
    user_data: int
    #: The result: bytes sent or ``-errno`` for a send; usage bits for a notification.
    res: int
    #: ``IORING_CQE_F_*`` bits.
    flags: int

    @property
    def more(self) -> bool:
        """Whether ``IORING_CQE_F_MORE`` is set: another CQE for this request follows."""
        return bool(self.flags & IORING_CQE_F_MORE)

    @property
    def notif(self) -> bool:
        """Whether ``IORING_CQE_F_NOTIF`` is set: this is a zero-copy notification."""
        return bool(self.flags & IORING_CQE_F_NOTIF)


class MalformedCqeError(ValueError):
    """Bytes that cannot be a completion queue entry."""


class UnexpectedCqeError(ValueError):
    """A CQE that does not fit the sends in flight; the tracker changed nothing.

    Attributes:
      cqe: the rejected entry.
    """

    def __init__(self, message: str, cqe: Cqe) -> None:
        super().__init__(message)
        self.cqe = cqe


def parse_cqe(data: bytes) -> Cqe:
    """Decode one 16-byte CQE (``u64 user_data, s32 res, u32 flags``, host order).

    Every 16-byte string decodes; whether the entry makes sense is for
    :meth:`SendZcTracker.on_cqe` to judge.

    Raises:
      MalformedCqeError: *data* is not exactly 16 bytes long.
    """
    if len(data) != _CQE.size:
        raise MalformedCqeError(f"a completion queue entry is {_CQE.size} bytes long, not {len(data)}")
    user_data, res, flags = _CQE.unpack(data)
    return Cqe(user_data=user_data, res=res, flags=flags)


def pack_cqe(cqe: Cqe) -> bytes:
    """The 16 bytes the kernel would write for *cqe*: the inverse of :func:`parse_cqe`.

    Raises:
      ValueError: a field does not fit its C type.
    """
    if not (0 <= cqe.user_data <= _U64_MAX and -(2**31) <= cqe.res < 2**31 and 0 <= cqe.flags <= _U32_MAX):
        raise ValueError(f"{cqe!r} does not fit struct io_uring_cqe")
    return _CQE.pack(cqe.user_data, cqe.res, cqe.flags)


@attrs.frozen
class SendResult(Generic[T]):
    """The result CQE of a send: how many bytes went out, or why none did."""

    #: The send's user_data.
    user_data: int
    #: The item given to :meth:`SendZcTracker.start`.
    item: T
    #: The byte count given to :meth:`SendZcTracker.start`.
    requested: int
    #: Bytes sent (at most *requested*; fewer is a partial send) or ``-errno``.
    res: int
    #: Whether a notification will follow; if not, a :class:`SendReleased`
    #: for the same send comes in the same batch of events.
    more: bool

    @property
    def errno(self) -> int | None:
        """The error number if the send failed, else None."""
        return -self.res if self.res < 0 else None

    @property
    def sent(self) -> int:
        """Bytes sent: *res*, or 0 for a failed send."""
        return max(self.res, 0)

    @property
    def partial(self) -> bool:
        """Whether the send succeeded but sent fewer bytes than requested."""
        return 0 <= self.res < self.requested


@attrs.frozen
class SendReleased(Generic[T]):
    """The kernel is done with a send's memory: it may be reused."""

    #: The send's user_data.
    user_data: int
    #: The item given to :meth:`SendZcTracker.start`.
    item: T
    #: Whether the notification's res had :data:`IORING_NOTIF_USAGE_ZC_COPIED`
    #: set. Only ``IORING_SEND_ZC_REPORT_USAGE`` sends can say so; False otherwise.
    copied: bool
    #: Whether a notification CQE released the memory (False: the result
    #: CQE came without ``F_MORE``, so no notification was due).
    notified: bool


#: What :meth:`SendZcTracker.on_cqe` reports.
SendZcEvent: TypeAlias = Union[SendResult[T], SendReleased[T]]


class _Phase(enum.Enum):
    AWAITING_RESULT = "awaiting result"
    AWAITING_NOTIFICATION = "awaiting notification"


class _Send(Generic[T]):
    __slots__ = ("item", "nbytes", "phase")

    def __init__(self, item: T, nbytes: int) -> None:
        self.item = item
        self.nbytes = nbytes
        self.phase = _Phase.AWAITING_RESULT


class SendZcTracker(Generic[T]):
    """Follows ``IORING_OP_SEND_ZC`` requests through their result and notification CQEs.

    One tracker may serve one ring, or several trackers may share a ring if
    their ``user_data`` ranges never meet (the caller routes CQEs with
    :meth:`is_tracking`). *first_user_data* is the first value
    :meth:`start` hands out (default 1; 0 is never used, so that a zeroed
    entry cannot match a send).
    """

    __slots__ = ("_sends", "_next", "_released", "_copied")

    def __init__(self, first_user_data: int = 1) -> None:
        if not 1 <= first_user_data <= _U64_MAX:
            raise ValueError(f"first_user_data must be in 1..2**64-1, not {first_user_data}")
        self._sends: dict[int, _Send[T]] = {}
        self._next = first_user_data
        self._released = 0
        self._copied = 0

    def __repr__(self) -> str:
        return (
            f"<SendZcTracker outstanding={self.outstanding}"
            f" awaiting_notification={self.awaiting_notification}"
            f" next_user_data={self._next}>"
        )

    @property
    def outstanding(self) -> int:
        """Sends started whose memory has not been released yet."""
        return len(self._sends)

    @property
    def awaiting_notification(self) -> int:
        """Sends whose result came with ``F_MORE`` and whose notification has not."""
        return sum(1 for s in self._sends.values() if s.phase is _Phase.AWAITING_NOTIFICATION)

    @property
    def released_sends(self) -> int:
        """Sends released since the tracker was created."""
        return self._released

    @property
    def copied_sends(self) -> int:
        """Released sends whose notification said the data was copied."""
        return self._copied

    def is_tracking(self, user_data: int) -> bool:
        """Whether *user_data* belongs to a send of this tracker that is not released."""
        return user_data in self._sends

    def items_outstanding(self) -> list[T]:
        """The items of the sends not yet released, in the order they were started.

        Meant for closing: a ring torn down with sends in flight never
        reports them, and these items' memory may still be read by the kernel.
        """
        return [s.item for s in self._sends.values()]

    def start(self, item: T, nbytes: int) -> int:
        """Register a send of *nbytes* bytes about to be submitted; its user_data.

        Put the returned value in the submission entry's ``user_data``. If
        the entry can then not be queued at all, undo with :meth:`withdraw`.

        Raises:
          ValueError: *nbytes* is negative or does not fit the SQE's 32-bit length.
        """
        if not 0 <= nbytes <= _U32_MAX:
            raise ValueError(f"a send of {nbytes} bytes does not fit an SQE's 32-bit length")
        user_data = self._next
        # 2**64 values: skipping ones still in use terminates long before it
        # could wrap back to the start, as only len(self._sends) are in use.
        while user_data in self._sends or user_data == 0:
            user_data = (user_data + 1) & _U64_MAX
        self._sends[user_data] = _Send(item, nbytes)
        self._next = (user_data + 1) & _U64_MAX or 1
        return user_data

    def withdraw(self, user_data: int) -> T:
        """Forget a send whose submission entry never reached the ring; its item.

        Only for a send that the kernel cannot know about (the SQ was full,
        preparing the entry failed): withdrawing a submitted send would
        release memory the kernel may read.

        Raises:
          KeyError: *user_data* is not a send of this tracker.
          ValueError: the send already has its result CQE, so the kernel has it.
        """
        send = self._sends[user_data]
        if send.phase is not _Phase.AWAITING_RESULT:
            raise ValueError(f"send {user_data} already has a result: the kernel took it")
        del self._sends[user_data]
        return send.item

    def on_cqe(self, cqe: Cqe) -> list[SendZcEvent[T]]:
        """Account for one CQE; the events it causes, in order.

        A result with ``F_MORE`` gives ``[SendResult]``; a result without it
        gives ``[SendResult, SendReleased]``; a notification gives
        ``[SendReleased]``.

        Raises:
          UnexpectedCqeError: the CQE does not fit the sends in flight (see
            rule 3 in the module docstring). Nothing changes.
        """
        send = self._check(cqe)
        # Checked: from here on nothing can fail.
        if cqe.notif:
            copied = bool(cqe.res & IORING_NOTIF_USAGE_ZC_COPIED)
            del self._sends[cqe.user_data]
            self._count_release(copied)
            return [SendReleased(cqe.user_data, send.item, copied=copied, notified=True)]
        result = SendResult(cqe.user_data, send.item, send.nbytes, cqe.res, more=cqe.more)
        if cqe.more:
            send.phase = _Phase.AWAITING_NOTIFICATION
            return [result]
        del self._sends[cqe.user_data]
        self._count_release(False)
        return [result, SendReleased(cqe.user_data, send.item, copied=False, notified=False)]

    def _check(self, cqe: Cqe) -> _Send[T]:
        if not 0 <= cqe.flags <= _U32_MAX:
            raise UnexpectedCqeError(f"CQE flags {cqe.flags} do not fit 32 bits", cqe)
        send = self._sends.get(cqe.user_data)
        if send is None:
            raise UnexpectedCqeError(f"CQE for user_data {cqe.user_data}, which is not a send in flight", cqe)
        if cqe.notif:
            # The kernel posts a notification with F_NOTIF alone; an entry
            # that also promises more did not come from the zero-copy path.
            if cqe.more:
                raise UnexpectedCqeError(f"CQE for send {cqe.user_data} has both F_NOTIF and F_MORE", cqe)
            if send.phase is not _Phase.AWAITING_NOTIFICATION:
                raise UnexpectedCqeError(f"notification for send {cqe.user_data} before its result CQE", cqe)
            # A notification's res carries only usage information, never
            # anything that decides whether memory is free, so it is not
            # judged: a newer kernel may report more there.
            return send
        if send.phase is not _Phase.AWAITING_RESULT:
            raise UnexpectedCqeError(f"second result CQE for send {cqe.user_data}", cqe)
        if not (-_MAX_ERRNO <= cqe.res <= send.nbytes):
            raise UnexpectedCqeError(
                f"result {cqe.res} for send {cqe.user_data} of {send.nbytes} bytes"
                f" is neither a byte count up to {send.nbytes} nor -errno",
                cqe,
            )
        return send

    def _count_release(self, copied: bool) -> None:
        self._released += 1
        if copied:
            self._copied += 1
