"""Send counters, kept per stream and summed per pool."""

from __future__ import annotations

from typing import Final

import attrs

from ._mypyc import mypyc_attr


class Counters:
    """A stream's send counters (or, with no parent, a pool's sums): each change is also made to the parent's.

    Every change has a method of its own, named for the event it counts, so
    that what a kernel may count is typed and spelled once. The three that
    run once or twice per image (:meth:`copied`, :meth:`zerocopy_call`,
    :meth:`completed`) walk the parents with a plain loop: they are the
    ones the lease-cycle benchmark feels. A plain class (not attrs): the
    compiled build makes it a native class, whose fields those methods
    reach directly.
    """

    #: What :meth:`SendStatistics.of` copies (``tests/sansio/test_stats.py``
    #: keeps this, the fields below and :class:`SendStatistics` in step).
    FIELDS: Final = (
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

    __slots__ = (*FIELDS, "parent")

    def __init__(self, *, parent: Counters | None = None) -> None:
        #: Bytes sent zero-copy and reported done without a copy.
        self.bytes_zerocopy = 0
        #: Bytes sent zero-copy that Linux copied after all.
        self.bytes_kernel_copied = 0
        #: Bytes sent by copying.
        self.bytes_copied = 0
        #: Zero-copy calls made.
        self.zerocopy_calls = 0
        #: Zero-copy calls reported complete.
        self.completions = 0
        #: Zero-copy calls Linux refused for want of memory.
        self.enobufs = 0
        #: Zero-copy calls whose completion can never come.
        self.quarantined_sends = 0
        #: Completion records that made no sense.
        self.malformed_records = 0
        #: Bytes of zero-copy calls not reported done yet (a gauge).
        self.bytes_in_flight = 0
        #: The pool's counters, for a stream's.
        self.parent = parent

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)}" for name in self.FIELDS)
        return f"Counters({values})"

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

    def sent_by_reference(self, nbytes: int) -> None:
        """*nbytes* went without a copy and with no completion to wait for (sendfile)."""
        c: Counters | None = self
        while c is not None:
            c.bytes_zerocopy += nbytes
            c = c.parent

    def refused(self) -> None:
        """Linux refused to pin memory for a zero-copy call (ENOBUFS; io_uring's ENOMEM)."""
        c: Counters | None = self
        while c is not None:
            c.enobufs += 1
            c = c.parent

    def malformed(self) -> None:
        """A completion record made no sense and was ignored."""
        c: Counters | None = self
        while c is not None:
            c.malformed_records += 1
            c = c.parent

    def quarantined(self, calls: int, nbytes: int) -> None:
        """*calls* zero-copy calls holding *nbytes* will never complete: no longer in flight."""
        c: Counters | None = self
        while c is not None:
            c.quarantined_sends += calls
            c.bytes_in_flight -= nbytes
            c = c.parent


@mypyc_attr(native_class=False)
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
        """A snapshot of *counters* (``tests/sansio/test_stats.py`` keeps the two classes' fields in step)."""
        return cls(
            bytes_zerocopy=counters.bytes_zerocopy,
            bytes_kernel_copied=counters.bytes_kernel_copied,
            bytes_copied=counters.bytes_copied,
            zerocopy_calls=counters.zerocopy_calls,
            completions=counters.completions,
            enobufs=counters.enobufs,
            quarantined_sends=counters.quarantined_sends,
            malformed_records=counters.malformed_records,
            bytes_in_flight=counters.bytes_in_flight,
        )


@mypyc_attr(native_class=False)
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
