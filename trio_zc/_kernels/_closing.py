"""What every zero-copy channel shares: the close protocol and the refusal retry.

Rules
=====

1. Closing a connection whose sends are still in flight never makes their
   memory reusable early. Linux drops the completions of a closed socket,
   so the socket stays open while the close waits for them, up to the
   drain deadline; then the connection is reset (:meth:`Transport.abort`),
   which makes Linux drop what it still queues and report those sends; a
   short grace (:data:`ABORT_GRACE`) later, whatever is still missing is
   quarantined: never reused, never unmapped.
2. Cancelling a close skips the wait, never the safety: the reset, the
   grace and the quarantine run shielded.
3. When Linux refuses to pin memory for a zero-copy send (ENOBUFS: option
   memory or the locked-memory limit used up; ENOMEM: io_uring's SEND_ZC
   from unregistered memory over the limit), the connection is fine: the
   channel retries once, then gives up on zero-copy for the rest of the
   send, which the stream copies (and its policy backs off).

Theory of operation
===================

:class:`DrainingClose` is the close protocol, one object per channel; it
reaches the channel only through :class:`Drainable`. The MSG_ZEROCOPY and
mock channels (:mod:`._completion`) and the io_uring channel
(:mod:`._io_uring`) each own one. It also owns the two things every such
close does the same way: waiting until no send is in flight (a channel
calls :meth:`DrainingClose.notify` whenever its count drops), and
quarantining what never completes (the channel hands its outstanding sends
over, :meth:`Drainable.take_outstanding`; the leases and counts are settled
here). :func:`settle_all` is what a pool closing
past its deadline runs for every busy connection at once. :class:`RefusalRetry`
is rule 3, shared by the same three channels.
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Iterable
from typing import Final, Protocol

import trio

from .._errors import QuarantineWarning
from .._stats import Counters
from ._base import SendableLease, Transport

#: After aborting a connection, how long to wait for the completions that
#: the abort makes Linux send (they normally arrive at once).
ABORT_GRACE: Final = 1.0

#: Errors with which Linux refuses to pin memory for a zero-copy send (rule 3).
ZEROCOPY_REFUSED: Final = frozenset({errno.ENOBUFS, errno.ENOMEM})

#: Heads of quarantined sends (see keep_forever).
_KEPT: list[object] = []


def keep_forever(head: object) -> None:
    """Keep *head* -- the memory of a quarantined send's head -- referenced for good.

    Linux may still read a quarantined send's memory (rule 1). A pool's
    memory is quarantined by the pool; a head is the application's bytes,
    which Python would free and reuse for other objects once unreferenced,
    so it is kept here instead: a few hundred bytes per send Linux never
    reported done, which is rare and already warned about.
    """
    _KEPT.append(head)


class Drainable(Protocol):
    """What the close protocol needs of a channel."""

    transport: Transport
    counters: Counters

    @property
    def sends_in_flight(self) -> int:
        """Zero-copy calls whose completion has not arrived."""

    def poll_completions(self) -> None:
        """Act on completions waiting now, if the channel reads its own (never blocks)."""

    def take_outstanding(self) -> list[tuple[SendableLease, int]]:
        """Every send still in flight, as (lease, bytes), forgotten by the channel from now on.

        A completion that arrives for one of them later must change nothing.
        """

    def close_transport(self) -> None:
        """Close the transport for good, after whatever the channel must do first."""


class DrainingClose:
    """The close protocol (rules 1 and 2) for one channel."""

    __slots__ = ("_channel", "_drained")

    def __init__(self, channel: Drainable) -> None:
        self._channel = channel
        # Set by notify() once nothing is in flight, while wait_drained() waits.
        self._drained: trio.Event | None = None

    def notify(self) -> None:
        """The channel's sends in flight went down: wake :meth:`wait_drained` if none are left."""
        if self._drained is not None and not self._channel.sends_in_flight:
            self._drained.set()

    async def wait_drained(self) -> None:
        """Return once no send of the channel is in flight."""
        channel = self._channel
        while channel.sends_in_flight:
            self._drained = trio.Event()
            channel.poll_completions()
            if channel.sends_in_flight:
                await self._drained.wait()
        self._drained = None

    async def aclose(self, drain_timeout: float) -> None:
        """Wait up to *drain_timeout* for completions, then settle the rest and close."""
        channel = self._channel
        if channel.transport.closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if channel.sends_in_flight:
                with trio.move_on_after(drain_timeout):
                    await self.wait_drained()
        finally:
            # Also when cancelled (rule 2): force the rest, then close.
            try:
                await self.settle_or_quarantine()
            finally:
                channel.close_transport()
        await trio.lowlevel.checkpoint()

    async def settle_or_quarantine(self) -> None:
        """Reset, collect what the reset completes, quarantine the rest. Shielded."""
        channel = self._channel
        if not channel.sends_in_flight or channel.transport.closed:
            return
        channel.transport.abort()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(ABORT_GRACE):
                await self.wait_drained()
        self.quarantine_outstanding()

    def quarantine_outstanding(self) -> None:
        """Quarantine whatever is still in flight, and say so."""
        channel = self._channel
        outstanding = channel.take_outstanding()
        if not outstanding:
            return
        nbytes = 0
        for lease, n in outstanding:
            lease.quarantine_send()
            nbytes += n
        count = len(outstanding)
        channel.counters.quarantined(count, nbytes)
        warnings.warn(
            QuarantineWarning(
                f"a connection closed with {count} zero-copy send(s) Linux never"
                " reported done; their memory is quarantined: never reused or unmapped"
            ),
            stacklevel=2,
        )


async def settle_all(closes: Iterable[DrainingClose]) -> None:
    """:meth:`DrainingClose.settle_or_quarantine` for every channel, side by side.

    Each waits up to :data:`ABORT_GRACE` for the completions its reset
    brings; one after another, a pool with many stuck connections would
    take that long per connection to close.
    """
    async with trio.open_nursery() as nursery:
        for close in closes:
            nursery.start_soon(close.settle_or_quarantine)


class RefusalRetry:
    """Rule 3 for one send: retry once after a refusal, then give up.

    ``refused()`` after each refusal says whether to try again;
    ``went_through()`` after each call Linux accepted starts over.
    """

    __slots__ = ("_retried",)

    def __init__(self) -> None:
        self._retried = False

    def refused(self, counters: Counters) -> bool:
        """Linux refused to pin memory: count it; whether to try once more."""
        counters.refused()
        if self._retried:
            return False
        self._retried = True
        return True

    def went_through(self) -> None:
        """Linux took a call: a later refusal gets its own retry."""
        self._retried = False
