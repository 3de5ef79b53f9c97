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
:class:`~trio_zc._kernels._msg_zerocopy.ErrorQueue`; the mock's is its
wire. The transport is also told when a call was accepted and when calls
are about to be released (the mock checks there that the memory did not
change while Linux was reading it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import trio

from .._mypyc import mypyc_attr, own_abc_state
from .._stats import Counters
from ._base import Channel, CompletionListener, SendableLease, Transport, broken
from ._closing import ZEROCOPY_REFUSED, DrainingClose, RefusalRetry, keep_forever
from ._completions import CompletionRangeError, CompletionTracker
from ._errqueue import MalformedRecordError, QueuedSocketError, ZeroCopyCompletion, parse_ancdata

Ancdata = list[tuple[int, int, bytes]]
#: A call as the tracker keeps it: the lease it read, its byte count of the
#: lease, and the head it also read (the immutable bytes object), or None.
Call = tuple[SendableLease, int, object]


class ZeroCopyTransport(Protocol):
    """The transport operations a :class:`CompletionChannel` needs beyond copying."""

    def zerocopy_send(self, data: memoryview) -> int:
        """One non-blocking zero-copy send call: bytes accepted.

        Raises BlockingIOError when nothing can be accepted now, and OSError
        as Linux would (ENOBUFS, EPIPE, ECONNRESET...).
        """

    def zerocopy_send_with_head(self, head: memoryview, data: memoryview) -> int:
        """:meth:`zerocopy_send` of *head* then *data* in one call (two iovecs): bytes of both accepted."""

    def completion_records(self) -> Iterable[tuple[Ancdata, bool]]:
        """Completion records waiting now, as ``(ancdata, truncated)``. Never blocks."""

    def accepted(self, call: Call, counter: int) -> None:
        """A zero-copy call was accepted and took *counter*."""

    def releasing(self, calls: list[Call], first: int) -> None:
        """*calls* are complete and about to be released; the first took counter *first*, the others the next ones.

        Keep what a call holds by its counter, never by ``id(call)``: the
        compiled build keeps a call tuple unboxed and makes a new object of
        it at each crossing into Python code.
        """

    def after_completion(self) -> None:
        """A completion record was acted on (the pool's state is whole again)."""


@mypyc_attr(allow_interpreted_subclasses=True)
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
        self.zerocopy.releasing(calls, record.lo)
        nbytes = 0
        for lease, n, _ in calls:
            nbytes += n
            lease.end_send()
        self.counters.completed(len(calls), nbytes, nbytes, record.copied)
        self.on_completions(len(calls), record.copied)
        self.zerocopy.after_completion()

    def _record_call(self, lease: SendableLease, nbytes: int, head: object = None) -> None:
        call = (lease, nbytes, head)
        counter = self.tracker.record(call)
        lease.begin_send()
        self.counters.zerocopy_call(nbytes)
        self.zerocopy.accepted(call, counter)

    # -- sending ----------------------------------------------------------------

    def zerocopy_now(
        self, data: memoryview, lease: SendableLease, head: memoryview | None = None
    ) -> tuple[int, bool]:
        if head is not None:
            return self._zerocopy_now_with_head(data, lease, head)
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

    def _zerocopy_now_with_head(
        self, data: memoryview, lease: SendableLease, head: memoryview
    ) -> tuple[int, bool]:
        """:meth:`zerocopy_now` with a head: calls of head and data together
        until the head is all taken, then as without one."""
        head_len = len(head)
        # The calls may read the head until they complete: they keep its
        # immutable bytes object, not the view (which the caller releases).
        owner = head.obj
        sent = 0
        retry: RefusalRetry | None = None
        while sent < head_len:
            try:
                if sent:
                    with head[sent:] as rest:
                        n = self.zerocopy.zerocopy_send_with_head(rest, data)
                else:
                    n = self.zerocopy.zerocopy_send_with_head(head, data)
            except BlockingIOError:
                return sent, False
            except OSError as exc:
                if exc.errno not in ZEROCOPY_REFUSED:
                    broken(exc)
                self.drain()
                if retry is None:
                    retry = RefusalRetry()
                if not retry.refused(self.counters):
                    return sent, True
                continue
            # A short call may end inside the head: then it read none of the
            # lease, but took a counter value all the same (rule 1).
            head_taken = min(n, head_len - sent)
            self.counters.copied(head_taken)
            self._record_call(lease, n - head_taken, owner)
            sent += n
            if retry is not None:
                retry.went_through()
        body_sent = sent - head_len
        if body_sent == len(data):
            return sent, False
        if body_sent:
            with data[body_sent:] as rest:
                n, refused = self.zerocopy_now(rest, lease)
        else:
            n, refused = self.zerocopy_now(data, lease)
        return sent + n, refused

    async def send_zerocopy(
        self, data: memoryview, lease: SendableLease, start: int, head: memoryview | None = None
    ) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        total = len(data) + (0 if head is None else len(head))
        sent, refused = self.zerocopy_now(data, lease, head)
        if sent == total or refused:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return sent
        head_len = 0 if head is None else len(head)
        while sent < total and not refused:
            await self.wait_writable()  # a checkpoint
            if sent < head_len:
                assert head is not None
                with head[sent:] as rest:
                    n, refused = self.zerocopy_now(data, lease, rest)
            else:
                with data[sent - head_len :] as rest:
                    n, refused = self.zerocopy_now(rest, lease)
            sent += n
        return sent

    # -- closing (what DrainingClose needs) ---------------------------------------

    def poll_completions(self) -> None:
        self.drain()

    def take_outstanding(self) -> list[tuple[SendableLease, int]]:
        calls = self.tracker.items_outstanding()
        # Later records for these counter values are garbage to the new tracker.
        self.tracker = CompletionTracker(self.tracker.next_counter)
        outstanding = []
        for lease, nbytes, head in calls:
            if head is not None:
                keep_forever(head)  # Linux may still read it
            outstanding.append((lease, nbytes))
        return outstanding

    def close_transport(self) -> None:
        self.transport.close()

    async def aclose(self, drain_timeout: float) -> None:
        await self.closing.aclose(drain_timeout)


own_abc_state(ZeroCopyTransport)  # the compiled build: see own_abc_state
