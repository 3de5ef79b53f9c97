"""Which kernel a pool gets: the application's choice, or ``"auto"``'s.

io_uring is probed when the pool opens (``_uring.probe``: a real ring and a
real SEND_ZC on loopback; the answer is kept for the process only when it
cannot change, so a pool opened after a passing shortage of file
descriptors or locked memory tries again). Missing, disabled by
``kernel.io_uring_disabled``, blocked by seccomp, too old for SEND_ZC, or
short of a resource now (the ring cannot be set up): the pool falls back to
MSG_ZEROCOPY and says why in its statistics (``kernel_note``), never
raising to the application.

``"auto"`` picks per pool io_uring where the probe succeeded and
MSG_ZEROCOPY otherwise; per stream, it copies to peers on loopback (the
kernel copies zero-copy sends to local sockets anyway), and the policy then
copies sends below the size threshold, sends where zero-copy cannot work
(RLIMIT_MEMLOCK of zero, non-TCP sockets), and every send once the stream's
completions show the kernel copies anyway: on such paths copying is the cheapest
(see docs/kernels.rst for the measurements that chose copy over sendfile
there). ``stream.statistics().fallbacks`` says when and why.
"""

from __future__ import annotations

from typing import Final

from ._io_uring import IoUringKernel
from ._base import Kernel
from ._copy import CopyKernel
from ._msg_zerocopy import MsgZeroCopyKernel
from ._sendfile import SendfileKernel
from ._ring import UringUnavailable, probe

#: The names ``open_pool(kernel=...)`` accepts.
KERNEL_NAMES: Final = ("auto", "copy", "io_uring", "msg_zerocopy", "sendfile")


def _io_uring_or_fallback(prefix: str) -> Kernel:
    found = probe()
    if found.available and found.send_zc:
        try:
            kernel: Kernel = IoUringKernel(found)
        except UringUnavailable as exc:
            # The probe's ring worked, the pool's did not: a resource ran
            # out meanwhile (the probe's ring is uncharged only after its
            # teardown, which the kernel does later), say the locked-memory
            # limit or the descriptors.
            reason = f"the probe's ring worked, but the pool's did not: {exc.reason}"
        except OSError as exc:
            reason = f"the probe's ring worked, but mapping the pool's failed: {exc}"
        else:
            kernel.note = f"{prefix}io_uring: {found.reason}"
            return kernel
    else:
        reason = found.reason
    fallback = MsgZeroCopyKernel()
    fallback.note = f"{prefix}msg_zerocopy, because io_uring is not usable: {reason}"
    return fallback


def make_kernel(kernel: object) -> Kernel:
    """The kernel for ``open_pool(kernel=...)``."""
    if isinstance(kernel, Kernel):
        return kernel
    if isinstance(kernel, type) and issubclass(kernel, Kernel):
        raise TypeError(f"kernel must be a Kernel instance, not the class itself: pass {kernel.__name__}()")
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a name or a Kernel, not {type(kernel).__name__}")
    if kernel == "auto":
        chosen = _io_uring_or_fallback("auto: ")
        chosen.copy_local_peers = True
        return chosen
    if kernel == "io_uring":
        return _io_uring_or_fallback("")
    if kernel == "msg_zerocopy":
        return MsgZeroCopyKernel()
    if kernel == "sendfile":
        return SendfileKernel()
    if kernel == "copy":
        return CopyKernel()
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNEL_NAMES)}")
