"""When a stream sends zero-copy and when it copies: a policy with no I/O.

Rules
=====

1. Small sends are copied. Zero-copy costs page pinning and a completion
   per call, which only pays above roughly 10 KB (kernel documentation);
   the default threshold is 16 KiB.
2. ENOBUFS (option memory or locked-memory limit exhausted; io_uring says
   ENOMEM for the latter) is not an error: the kernel that sees it drains
   completions and retries once, then
   the send's remainder is copied, the next few sends are copied too, and
   zero-copy is tried again after them. Each ENOBUFS in a row doubles the
   number of copied sends (up to a cap), so a limit that can never be met
   costs almost nothing; a zero-copy send that goes through resets it.
3. A run of completions that all report COPIED means zero-copy cannot win
   on this path (loopback, a NIC without scatter-gather, checksum offload
   missing): the stream switches to copying for good, as the kernel
   documentation suggests.
4. Where zero-copy cannot work at all (not TCP, a locked-memory limit of
   zero without CAP_IPC_LOCK, SO_ZEROCOPY refused) it is never attempted.

Every switch is recorded with its reason, for ``statistics()``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ._validate import check_count


def _count(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_count(attribute.name, value)


@attrs.frozen
class ZeroCopyPolicy:
    """How streams choose between zero-copy and copying; pass to :func:`open_pool`.

    The defaults suit most servers; each knob is visible in
    :meth:`ZeroCopyStream.statistics`.
    """

    #: Sends smaller than this many bytes are copied.
    min_zerocopy_bytes: int = attrs.field(default=16 * 1024, validator=_count)
    #: After this many zero-copy calls in a row come back COPIED, copy for good.
    #: Zero disables the switch.
    copied_streak: int = attrs.field(default=64, validator=_count)
    #: After a send fell back to copying on ENOBUFS, copy this many more
    #: sends before trying zero-copy again.
    enobufs_backoff: int = attrs.field(default=16, validator=_count)


#: Why a stream copies for a while: the kernel refused to pin memory for a
#: zero-copy send (MSG_ZEROCOPY says ENOBUFS; io_uring's SEND_ZC from
#: unregistered memory says ENOMEM).
ENOBUFS_FALLBACK = (
    "ENOBUFS or ENOMEM (the kernel is out of locked or option memory for zero-copy):"
    " copying the next sends, then trying zero-copy again"
)
#: The most sends copied after one ENOBUFS, however many came in a row.
MAX_ENOBUFS_BACKOFF = 4096


class SendDecider:
    """One stream's use of a :class:`ZeroCopyPolicy`."""

    __slots__ = ("policy", "_disabled", "_backoff", "_next_backoff", "_streak", "fallbacks", "_notify")

    def __init__(
        self,
        policy: ZeroCopyPolicy,
        *,
        unavailable_reason: str | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy
        # Why zero-copy is off for good, or None while it may be used.
        self._disabled: str | None = None
        self._backoff = 0
        self._next_backoff = policy.enobufs_backoff
        self._streak = 0
        #: Every reason zero-copy was switched off, with how often, oldest first.
        self.fallbacks: dict[str, int] = {}
        # Told of every fallback too (the pool sums them up).
        self._notify = notify
        if unavailable_reason:
            self.disable(unavailable_reason)

    def _fall_back(self, reason: str) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        if self._notify is not None:
            self._notify(reason)

    @property
    def zerocopy_enabled(self) -> bool:
        """Whether large sends currently go zero-copy."""
        return self._disabled is None and self._backoff == 0

    @property
    def disabled_reason(self) -> str | None:
        return self._disabled

    def use_zerocopy(self, nbytes: int) -> bool:
        """Decide for one send of *nbytes* bytes."""
        if self._disabled is not None or nbytes < self.policy.min_zerocopy_bytes:
            return False
        if self._backoff:
            self._backoff -= 1
            return False
        return True

    def on_enobufs(self) -> None:
        """A zero-copy send was refused with ENOBUFS (io_uring: ENOMEM) even after a retry."""
        self._backoff = self._next_backoff
        self._next_backoff = min(max(2 * self._next_backoff, 1), MAX_ENOBUFS_BACKOFF)
        self._fall_back(ENOBUFS_FALLBACK)

    def on_zerocopy_sent(self) -> None:
        """A whole send went out zero-copy: the locked-memory pressure is gone."""
        self._next_backoff = self.policy.enobufs_backoff

    def on_completions(self, calls: int, copied: bool) -> None:
        """The kernel completed *calls* zero-copy calls, all COPIED or none."""
        if not copied:
            self._streak = 0
            return
        self._streak += calls
        limit = self.policy.copied_streak
        if limit and self._streak >= limit and self._disabled is None:
            self.disable(
                f"the kernel copied {limit} zero-copy sends in a row"
                " (loopback or a device without scatter-gather): copying from now on"
            )

    def disable(self, reason: str) -> None:
        """Stop zero-copy for good (the kernel refused the socket option, say)."""
        if self._disabled is None:
            self._disabled = reason
            self._fall_back(reason)
