"""Which zero-copy sends the kernel has finished with: a tracker with no I/O.

Rules
=====

1. An item comes back from :meth:`CompletionTracker.complete` exactly once,
   and only after the kernel reported the counter value of its send call.
2. A completion range that reaches even one counter value that is not
   outstanding (never assigned, or already completed) is rejected whole,
   and the tracker is left exactly as it was. The ranges come from the
   kernel through a parser; if anything along that path is wrong, releasing
   memory on a guess could put freed memory on the wire, so the only safe
   answer to garbage is to release nothing.
3. Counter arithmetic is modulo 2**32, always. A range is never walked with
   ``range(lo, hi + 1)``: that walks nothing for a wrapped range
   (``lo > hi``) and, in C, never ends for ``hi == 2**32 - 1`` (the bug that
   Folly and gRPC shipped).

Theory of operation
===================

Linux numbers every successful ``MSG_ZEROCOPY`` send call on a socket with
the next value of an unsigned 32-bit counter, and later reports finished
calls as inclusive, possibly coalesced, possibly wrapped ranges ``[lo, hi]``
of that counter. The tracker mirrors the counter: :meth:`~CompletionTracker.record`
takes the next value for one call and stores the caller's item (its
reference to the lease being sent).

The outstanding calls always lie in a *window* that starts at the oldest
outstanding value (the *base*) and ends just before the next value to be
assigned. Each value in the window has a slot, found by its offset
``(value - base) mod 2**32``; the window is shorter than 2**32, so the
offset is unambiguous, and a range is inside the window exactly when its
first offset plus its length does not pass the window's end. Completions
that arrive out of order leave a done marker in their slots (dropping the
item, so the tracker does not keep it alive); whenever the oldest call
completes, the done slots at the front are dropped and the base moves up.
So the front slot is always outstanding, and the base is the oldest
outstanding value.

The slots are a Python list with a moving front index rather than a deque:
a deque is slow to index in the middle, and an out-of-order range deep in
a large window would then cost time in proportion to the window instead of
to the range. With a list, a range of N calls costs O(N); dropping the
front slots is paid for by the calls that filled them.
"""

from __future__ import annotations

import enum
from typing import Final, Generic, TypeVar, cast

__all__ = ["CompletionRangeError", "CompletionTracker"]

T = TypeVar("T")

#: The kernel's counter is an unsigned 32-bit integer.
_MASK: Final = 0xFFFFFFFF
#: Most slots the window may hold. One more and the next value assigned
#: would equal the base, and a range could no longer be placed.
_WINDOW_LIMIT: Final = _MASK
#: Drop the consumed front of the slot list once it is at least this long
#: and at least half the list, so that compaction is paid for by the calls
#: that were consumed.
_COMPACT_AFTER: Final = 1024


class _Done(enum.Enum):
    DONE = "done"


# Marks a slot completed out of order. Compared by identity only: items are
# opaque, and an item's own __eq__ (a NumPy array's, say) must never run.
_DONE: Final = _Done.DONE


class CompletionRangeError(ValueError):
    """A completion range that does not lie within the outstanding calls.

    Raised by :meth:`CompletionTracker.complete`, which then changes nothing.

    Attributes:
      lo: the first counter value of the rejected range, as reported.
      hi: the last counter value of the rejected range, as reported.
    """

    def __init__(self, message: str, lo: int, hi: int) -> None:
        super().__init__(message)
        self.lo = lo
        self.hi = hi


class CompletionTracker(Generic[T]):
    """Maps the kernel's zero-copy completion ranges back to the caller's items.

    One tracker per socket. *start* is the counter value the kernel will
    give the socket's next zero-copy send call: 0 for a fresh socket.
    """

    __slots__ = (
        "_slots",
        "_window_limit",
        "_head",
        "_base",
        "_outstanding",
        "_completed",
        "_copied",
    )

    def __init__(self, start: int = 0) -> None:
        if not 0 <= start <= _MASK:
            raise ValueError(f"start must be a 32-bit counter value (0..{_MASK}), not {start}")
        # Slots of the window live in _slots[_head:]; _slots[_head] belongs
        # to counter value _base.
        self._slots: list[T | _Done] = []
        self._head = 0
        self._base = start
        self._outstanding = 0
        self._completed = 0
        self._copied = 0
        # An attribute, not the constant, so that a test can lower it (a
        # compiled build reads the constant natively, past any patch).
        self._window_limit = _WINDOW_LIMIT

    def __repr__(self) -> str:
        return (
            f"<CompletionTracker next_counter={self.next_counter}"
            f" outstanding={self._outstanding} oldest={self.oldest_outstanding}>"
        )

    @property
    def _window(self) -> int:
        return len(self._slots) - self._head

    @property
    def outstanding(self) -> int:
        """Calls recorded and not yet reported complete."""
        return self._outstanding

    @property
    def next_counter(self) -> int:
        """The counter value that the next :meth:`record` will return."""
        return (self._base + self._window) & _MASK

    @property
    def oldest_outstanding(self) -> int | None:
        """The counter value of the oldest outstanding call, or None if there is none."""
        # The front slot is never done (see the module docstring), so the
        # base is the oldest outstanding value whenever the window is not empty.
        return self._base if self._window else None

    @property
    def completed_calls(self) -> int:
        """Calls reported complete since the tracker was created."""
        return self._completed

    @property
    def copied_calls(self) -> int:
        """Completed calls whose range the kernel flagged as copied after all."""
        return self._copied

    @property
    def zerocopy_calls(self) -> int:
        """Completed calls whose range the kernel did not flag as copied."""
        return self._completed - self._copied

    def record(self, item: T) -> int:
        """Register one successful zero-copy send call; its counter value.

        Call this only for a send call that succeeded and sent at least one
        byte: failed and zero-length calls take no counter value, and
        recording one would shift every later completion onto the wrong item.

        Raises:
          RuntimeError: the window already spans 2**32 - 1 counter values,
            so one more would make ranges ambiguous.
        """
        slots = self._slots
        window = len(slots) - self._head  # self._window, once per send: inlined
        if window >= self._window_limit:
            raise RuntimeError(
                f"{window} zero-copy sends are awaiting completion;"
                " another would wrap the 32-bit completion counter onto them"
            )
        slots.append(item)
        self._outstanding += 1
        return (self._base + window) & _MASK

    def complete(self, lo: int, hi: int, *, copied: bool) -> list[T]:
        """The kernel reported the calls ``[lo, hi]`` complete; their items.

        The range is inclusive and wraps if ``lo > hi``. The items come back
        in counter order, each exactly once over the tracker's life.

        Raises:
          CompletionRangeError: *lo* or *hi* is not a 32-bit value, or the
            range reaches a value that is not outstanding. Nothing changes.
        """
        if not (0 <= lo <= _MASK and 0 <= hi <= _MASK):
            raise CompletionRangeError(
                f"completion range [{lo}, {hi}] is not made of 32-bit counter values", lo, hi
            )
        count = ((hi - lo) & _MASK) + 1
        offset = (lo - self._base) & _MASK
        window = self._window
        # The window is shorter than 2**32, so every value in it has exactly
        # one offset, and the range is inside the window if and only if its
        # offsets are.
        if offset + count > window:
            raise self._range_error(lo, hi, count, "reaches values not in the window")
        first = self._head + offset
        stop = first + count
        run = self._slots[first:stop]
        # Without holes every slot in the window is outstanding; in-order
        # completion, the usual case, never needs the scan.
        if window != self._outstanding and any(slot is _DONE for slot in run):
            raise self._range_error(lo, hi, count, "reaches values already completed")

        # Validated: from here on nothing can fail.
        self._slots[first:stop] = [_DONE] * count
        self._outstanding -= count
        self._completed += count
        if copied:
            self._copied += count
        if offset == 0:
            self._drop_done_front()
        # The scan above (or the absence of holes) showed no slot in run is done.
        return cast("list[T]", run)

    def items_outstanding(self) -> list[T]:
        """The items of the calls not yet reported complete, in counter order.

        Meant for when a socket closes: the kernel drops pending completions
        with the socket, so these items' memory may never be reported free.
        """
        return [slot for slot in self._slots[self._head :] if slot is not _DONE]

    def _range_error(self, lo: int, hi: int, count: int, why: str) -> CompletionRangeError:
        if self._window:
            last = (self.next_counter - 1) & _MASK
            window = (
                f"the window is [{self._base}, {last}]"
                f" with {self._outstanding} calls outstanding"
            )
        else:
            window = f"no calls are outstanding (next counter value {self._base})"
        calls = "1 call" if count == 1 else f"{count} calls"
        return CompletionRangeError(
            f"completion range [{lo}, {hi}] ({calls}) {why}: {window}", lo, hi
        )

    def _drop_done_front(self) -> None:
        slots = self._slots
        head = self._head
        end = len(slots)
        while head < end and slots[head] is _DONE:
            head += 1
        self._base = (self._base + head - self._head) & _MASK
        if head == end:
            # Empty window: start the list afresh rather than keep a tail of markers.
            slots.clear()
            head = 0
        elif head >= _COMPACT_AFTER and 2 * head >= end:
            del slots[:head]
            head = 0
        self._head = head
