"""Channels whose zero-copy calls are numbered and completed by records: MSG_ZEROCOPY and the mock.

Rules
=====

1. Each zero-copy call Linux accepts takes the next value of the
   connection's 32-bit counter, and holds its lease (``begin_send``) until a
   completion record covering that value arrives (``end_send``).
2. Records are parsed strictly (:mod:`._errqueue`) and matched to calls by
   a tracker (:mod:`._completions`); a record that does not fit exactly is
   counted as malformed and changes nothing: garbage never releases memory.
3. Whatever the transport, the same parser, tracker, accounting, refusal
   retry and close protocol apply: the mock kernel's transport produces
   the records a real socket's error queue would, so the mock is held to
   the contract of the real thing.

Theory of operation
===================

:class:`CompletionChannel` sends through a transport that also offers the
operations of :class:`ZeroCopyTransport`: one zero-copy call, and the
completion records waiting now. The real one is
:class:`~trio_zc._kernels._msg_zerocopy.ZeroCopySocket`; the mock's is its
wire. The transport is also told when a call was accepted and when calls
are about to be released (the mock checks there that the memory did not
change while Linux was reading it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import trio

from .._stats import Counters
from ._base import Channel, CompletionListener, SendableLease, Transport, broken
from ._closing import ZEROCOPY_REFUSED, DrainingClose, RefusalRetry
from ._completions import CompletionRangeError, CompletionTracker
from ._errqueue import MalformedRecordError, QueuedSocketError, ZeroCopyCompletion, parse_ancdata

Ancdata = list[tuple[int, int, bytes]]
#: A call as the tracker keeps it: the lease it read and its byte count.
Call = tuple[SendableLease, int]


class ZeroCopyTransport(Protocol):
    """The transport operations a :class:`CompletionChannel` needs beyond copying."""

    def zerocopy_send(self, data: memoryview) -> int:
        """One non-blocking zero-copy send call: bytes accepted.

        Raises BlockingIOError when nothing can be accepted now, and OSError
        as Linux would (ENOBUFS, EPIPE, ECONNRESET...).
        """

    def completion_records(self) -> Iterable[tuple[Ancdata, bool]]:
        """Completion records waiting now, as ``(ancdata, truncated)``. Never blocks."""

    def accepted(self, call: Call, counter: int) -> None:
        """A zero-copy call was accepted and took *counter*."""

    def releasing(self, calls: list[Call]) -> None:
        """*calls* are complete and about to be released."""

    def after_completion(self) -> None:
        """A completion record was acted on (the pool's state is whole again)."""


class CompletionChannel(Channel):
    """A channel whose zero-copy calls are numbered and completed by records."""

    #: An ordinary socket error that arrived among the completion records.
    queued_error: QueuedSocketError | None = None

    def __init__(
        self,
        transport: Transport,
        zerocopy: ZeroCopyTransport,
        counters: Counters,
        on_completions: CompletionListener,
        *,
        counter_start: int = 0,
    ) -> None:
        super().__init__(transport, counters, on_completions)
        #: The same object as the transport, seen as its zero-copy operations.
        self.zerocopy = zerocopy
        self.tracker: CompletionTracker[Call] = CompletionTracker(counter_start)
        self.closing = DrainingClose(self)

    @property
    def sends_in_flight(self) -> int:
        return self.tracker.outstanding

    # -- completions ------------------------------------------------------------

    def before_wait(self) -> None:
        # A pending completion also wakes a task waiting to read or write the
        # socket: going back to waiting with one queued would busy-loop.
        if self.copy_only_reason is None:
            # Only a channel that sends zero-copy reads the records: on a
            # socket shared with another stream they are that one's.
            self.drain()

    def drain(self) -> None:
        """Act on every completion record waiting now. Never blocks."""
        if self.transport.closed:
            return
        for ancdata, truncated in self.zerocopy.completion_records():
            if truncated:
                self.counters.malformed()
                continue
            try:
                records = parse_ancdata(ancdata)
            except MalformedRecordError:
                self.counters.malformed()
                continue
            for record in records:
                if isinstance(record, ZeroCopyCompletion):
                    self._complete(record)
                else:
                    self.queued_error = record
        self.closing.notify()

    def _complete(self, record: ZeroCopyCompletion) -> None:
        try:
            calls = self.tracker.complete(record.lo, record.hi, copied=record.copied)
        except CompletionRangeError:
            # Garbage must never release memory (rule 2); count it and go on.
            self.counters.malformed()
            return
        self.zerocopy.releasing(calls)
        nbytes = 0
        for lease, n in calls:
            nbytes += n
            lease.end_send()
        self.counters.completed(len(calls), nbytes, nbytes, record.copied)
        self.on_completions(len(calls), record.copied)
        self.zerocopy.after_completion()

    def _record_call(self, lease: SendableLease, nbytes: int) -> None:
        call = (lease, nbytes)
        counter = self.tracker.record(call)
        lease.begin_send()
        self.counters.zerocopy_call(nbytes)
        self.zerocopy.accepted(call, counter)

    # -- sending ----------------------------------------------------------------

    def zerocopy_now(self, data: memoryview, lease: SendableLease) -> tuple[int, bool]:
        total = len(data)
        sent = 0
        retry: RefusalRetry | None = None  # made only on a refusal: this runs per image
        while sent < total:
            try:
                if sent:
                    with data[sent:] as rest:
                        n = self.zerocopy.zerocopy_send(rest)
                else:
                    n = self.zerocopy.zerocopy_send(data)  # most sends: one call, no slice
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in ZEROCOPY_REFUSED:
                    broken(exc)
                # Reading completions frees the option memory that ran out.
                self.drain()
                if retry is None:
                    retry = RefusalRetry()
                if not retry.refused(self.counters):
                    return sent, True
                continue
            # Each successful call took the next counter value (rule 1).
            self._record_call(lease, n)
            sent += n
            if retry is not None:
                retry.went_through()
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

    # -- closing (what DrainingClose needs) ---------------------------------------

    def poll_completions(self) -> None:
        self.drain()

    def take_outstanding(self) -> list[Call]:
        calls = self.tracker.items_outstanding()
        # Later records for these counter values are garbage to the new tracker.
        self.tracker = CompletionTracker(self.tracker.next_counter)
        return calls

    def close_transport(self) -> None:
        self.transport.close()

    async def aclose(self, drain_timeout: float) -> None:
        await self.closing.aclose(drain_timeout)
