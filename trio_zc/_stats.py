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

    # Read directly on hot paths (the rest go through count() and snapshot()).
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
    #: Times a zero-copy send met ENOBUFS.
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

    #: The pool's kernel: "copy" or "msg_zerocopy".
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
