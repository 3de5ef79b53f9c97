"""What every channel with MSG_ZEROCOPY-style completions shares.

The real msg_zerocopy channel reads its completion records from a socket's
error queue; the mock kernel's channel produces the same records itself.
Both feed them through here -- the same parser, the same counter tracker,
the same accounting and the same close protocol -- so the mock is held to
the contract of the real thing.

Close protocol (:meth:`CompletionChannel.aclose`): wait for outstanding
completions up to the drain deadline; then :meth:`abort` the connection,
which makes the kernel drop queued data and report those sends; wait a
short grace for those reports; quarantine whatever is still missing.
"""

from __future__ import annotations

import abc
import errno
import warnings
from collections.abc import Iterable
from typing import Final

import trio

from ._completions import CompletionRangeError, CompletionTracker
from .._errors import QuarantineWarning
from ._errqueue import MalformedRecordError, QueuedSocketError, ZeroCopyCompletion, parse_ancdata
from ._base import Channel, broken

from ._base import SendableLease

#: After aborting a connection, how long to wait for the completions that
#: the abort makes the kernel send (they normally arrive at once).
ABORT_GRACE: Final = 1.0

Ancdata = list[tuple[int, int, bytes]]


class DrainingChannel(Channel):
    """A channel whose sends can stay in flight after they return: the close protocol."""

    #: Set by the subclass once its transport is closed.
    closed: bool = False

    @abc.abstractmethod
    async def wait_drained(self) -> None:
        """Return once no send of this channel is in flight."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Reset the connection, keeping the channel able to receive completions."""

    @abc.abstractmethod
    def forget_outstanding(self) -> int:
        """Quarantine every send still in flight (their completions never count); how many."""

    @abc.abstractmethod
    def close_transport(self) -> None:
        """Close for good; completions after this are lost."""

    async def settle_or_quarantine(self) -> None:
        """Abort, collect what the abort completes, quarantine the rest. Shielded."""
        if not self.sends_in_flight or self.closed:
            return
        self.abort()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(ABORT_GRACE):
                await self.wait_drained()
        self.quarantine_outstanding()

    def quarantine_outstanding(self) -> None:
        count = self.forget_outstanding()
        if not count:
            return
        self.counters.count("quarantined_sends", count)
        warnings.warn(
            QuarantineWarning(
                f"a connection closed with {count} zero-copy send(s) the kernel never"
                " reported done; their memory is quarantined: never reused or unmapped"
            ),
            stacklevel=2,
        )

    async def aclose(self, drain_timeout: float) -> None:
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if self.sends_in_flight:
                with trio.move_on_after(drain_timeout):
                    await self.wait_drained()
        finally:
            # Also when cancelled: force the rest, then close.
            try:
                await self.settle_or_quarantine()
            finally:
                self.close_transport()
        await trio.lowlevel.checkpoint()


async def settle_all(channels: Iterable[DrainingChannel]) -> None:
    """:meth:`DrainingChannel.settle_or_quarantine` for every channel, side by side.

    Each waits up to :data:`ABORT_GRACE` for the completions its reset
    brings; one after another, a pool with many stuck connections would
    take that long per connection to close.
    """
    async with trio.open_nursery() as nursery:
        for channel in channels:
            nursery.start_soon(channel.settle_or_quarantine)


class CompletionChannel(DrainingChannel):
    """A channel whose zero-copy calls are numbered and completed by records."""

    tracker: CompletionTracker[tuple[SendableLease, int]]
    _drained: trio.Event | None = None
    #: An ordinary socket error that arrived among the completion records.
    queued_error: QueuedSocketError | None = None

    def init_tracking(self, start: int = 0) -> None:
        self.tracker = CompletionTracker(start)

    @property
    def sends_in_flight(self) -> int:
        return self.tracker.outstanding

    # -- what subclasses provide ------------------------------------------------

    @abc.abstractmethod
    def read_records(self) -> Iterable[tuple[Ancdata, bool]]:
        """Completion records waiting now, as ``(ancdata, truncated)``. Never blocks."""

    # -- completions ------------------------------------------------------------

    def drain(self) -> None:
        """Act on every completion record waiting now. Never blocks."""
        if self.closed:
            return
        for ancdata, truncated in self.read_records():
            if truncated:
                self.counters.count("malformed_records")
                continue
            try:
                records = parse_ancdata(ancdata)
            except MalformedRecordError:
                self.counters.count("malformed_records")
                continue
            for record in records:
                if isinstance(record, ZeroCopyCompletion):
                    self.complete(record)
                else:
                    self.queued_error = record
        if self._drained is not None and not self.tracker.outstanding:
            self._drained.set()

    def complete(self, record: ZeroCopyCompletion) -> None:
        try:
            items = self.tracker.complete(record.lo, record.hi, copied=record.copied)
        except CompletionRangeError:
            # Garbage must never release memory; count it and go on.
            self.counters.count("malformed_records")
            return
        self.before_release(items)
        nbytes = 0
        for lease, n in items:
            nbytes += n
            lease.end_send()
        self.counters.completed(len(items), nbytes, nbytes, record.copied)
        self.on_completions(len(items), record.copied)

    def before_release(self, items: list[tuple[SendableLease, int]]) -> None:
        """Hook: the calls in *items* are complete and about to be released."""

    def record_call(self, lease: SendableLease, nbytes: int) -> tuple[tuple[SendableLease, int], int]:
        """A zero-copy call of *nbytes* of *lease* was accepted: the tracker's item for it, and its counter value."""
        item = (lease, nbytes)
        counter = self.tracker.record(item)
        lease.begin_send()
        self.counters.zerocopy_call(nbytes)
        return item, counter

    # -- sending ----------------------------------------------------------------

    @abc.abstractmethod
    def zerocopy_call(self, data: memoryview) -> int:
        """One non-blocking zero-copy send call: bytes accepted.

        Raises BlockingIOError when nothing can be accepted now, and OSError
        as the kernel would (ENOBUFS, EPIPE, ECONNRESET...).
        """

    def zerocopy_now(self, data: memoryview, lease: SendableLease) -> tuple[int, bool]:
        total = len(data)
        sent = 0
        retried = False
        while sent < total:
            try:
                if sent:
                    with data[sent:] as rest:
                        n = self.zerocopy_call(rest)
                else:
                    n = self.zerocopy_call(data)  # most sends: one call, no slice
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    broken(exc)
                self.counters.count("enobufs")
                # Reading completions frees the option memory that ran out.
                self.drain()
                if retried:
                    return sent, True
                retried = True
                continue
            # Each successful call took the next counter value.
            self.record_call(lease, n)
            sent += n
            retried = False
        return sent, False

    async def send_zerocopy(self, data: memoryview, lease: SendableLease, start: int) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        total = len(data)
        sent, refused = self.zerocopy_now(data, lease)
        if sent == total or refused:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return sent
        while sent < total and not refused:
            await self.wait_writable()  # a checkpoint
            with data[sent:] as rest:
                n, refused = self.zerocopy_now(rest, lease)
            sent += n
        return sent

    async def wait_drained(self) -> None:
        while self.tracker.outstanding:
            self._drained = trio.Event()
            self.drain()
            if self.tracker.outstanding:
                await self._drained.wait()
        self._drained = None

    # -- closing ----------------------------------------------------------------

    def forget_outstanding(self) -> int:
        items = self.tracker.items_outstanding()
        for lease, n in items:
            lease.quarantine_send()
            self.counters.count("bytes_in_flight", -n)
        self.tracker = CompletionTracker(self.tracker.next_counter)
        return len(items)
