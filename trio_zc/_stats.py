"""Send counters, kept per stream and summed per pool."""

from __future__ import annotations

from typing import Final

import attrs

#: The counters every stream keeps; the pool keeps their sums.
COUNTER_NAMES: Final = (
    "bytes_zerocopy",
    "bytes_kernel_copied",
    "bytes_copied",
    "zerocopy_calls",
    "completions",
    "enobufs",
    "quarantined_sends",
    "malformed_records",
    "bytes_in_flight",
)


class Counters:
    """Mutable counters; each change is also made to the parent's (the pool's)."""

    __slots__ = (*COUNTER_NAMES, "parent")

    bytes_zerocopy: int
    bytes_kernel_copied: int
    bytes_copied: int
    zerocopy_calls: int
    completions: int
    bytes_in_flight: int
    malformed_records: int

    def __init__(self, parent: Counters | None = None) -> None:
        for name in COUNTER_NAMES:
            setattr(self, name, 0)
        self.parent = parent

    def count(self, name: str, n: int = 1) -> None:
        setattr(self, name, getattr(self, name) + n)
        if self.parent is not None:
            self.parent.count(name, n)

    # The three changes every send makes, spelled out rather than going
    # through count(): they run once or twice per image, and attribute
    # access by name (getattr/setattr) plus the recursion cost more than
    # the rest of the bookkeeping.

    def copied(self, nbytes: int) -> None:
        """*nbytes* were sent by copying."""
        c: Counters | None = self
        while c is not None:
            c.bytes_copied += nbytes
            c = c.parent

    def zerocopy_call(self, nbytes: int) -> None:
        """A zero-copy call of *nbytes* was accepted and is now in flight."""
        c: Counters | None = self
        while c is not None:
            c.zerocopy_calls += 1
            c.bytes_in_flight += nbytes
            c = c.parent

    def completed(self, calls: int, nbytes: int, taken: int, copied: bool) -> None:
        """*calls* zero-copy calls holding *nbytes* completed, having sent *taken* bytes."""
        c: Counters | None = self
        while c is not None:
            c.bytes_in_flight -= nbytes
            c.completions += calls
            if copied:
                c.bytes_kernel_copied += taken
            else:
                c.bytes_zerocopy += taken
            c = c.parent

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_NAMES}


@attrs.frozen
class SendStatistics:
    """What was sent how. Part of :class:`StreamStatistics` and :class:`PoolStatistics`."""

    #: Bytes sent zero-copy whose completion said the kernel did not copy them.
    bytes_zerocopy: int
    #: Bytes sent zero-copy that the kernel reported it copied after all
    #: (always the case on loopback).
    bytes_kernel_copied: int
    #: Bytes sent by copying: ``send_all``, small leases, fallbacks.
    bytes_copied: int
    #: Zero-copy send calls made.
    zerocopy_calls: int
    #: Zero-copy calls the kernel reported complete.
    completions: int
    #: Times the kernel refused a zero-copy send call for want of locked or
    #: option memory (ENOBUFS; io_uring's ENOMEM).
    enobufs: int
    #: Zero-copy calls whose completion can never come (socket closed first).
    quarantined_sends: int
    #: Completion records that made no sense and were ignored (never acted on).
    malformed_records: int
    #: Bytes of zero-copy sends the kernel has not reported done yet (a
    #: gauge, not a total): memory this stream or pool keeps from reuse.
    bytes_in_flight: int = 0

    @classmethod
    def of(cls, counters: Counters) -> SendStatistics:
        return cls(**counters.snapshot())


@attrs.frozen
class StreamStatistics:
    """A snapshot of one stream, from :meth:`ZeroCopyStream.statistics`."""

    #: The pool's kernel, as in :attr:`PoolStatistics.kernel`.
    kernel: str
    #: Whether large sends currently go zero-copy.
    zerocopy_enabled: bool
    #: Sends below this many bytes are copied.
    min_zerocopy_bytes: int
    #: Zero-copy calls whose completion has not arrived yet.
    sends_in_flight: int
    #: Why zero-copy was switched off: ``(reason, how many times)``, oldest first.
    fallbacks: tuple[tuple[str, int], ...]
    #: Byte and call counts.
    sent: SendStatistics
