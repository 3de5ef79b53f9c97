"""One stream's use of a :class:`~trio_zc.ZeroCopyPolicy`: the decision per send.

The rules are the policy's (see ``_policy.py``); this module applies them,
once per send, and is compiled in the optional compiled build (the policy
itself, an attrs class with validators, is not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._policy import ZeroCopyPolicy

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
