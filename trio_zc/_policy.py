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
