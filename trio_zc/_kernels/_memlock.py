"""The locked-memory limit that zero-copy runs into, and how to say so.

Linux charges memory pinned for zero-copy to the user's locked memory,
against ``RLIMIT_MEMLOCK``, unless the process holds ``CAP_IPC_LOCK`` in the
initial user namespace: MSG_ZEROCOPY's pages until each completion (ENOBUFS
past the limit), io_uring's registered buffers and the pages of SEND_ZC
calls from unregistered memory (ENOMEM), and io_uring's rings themselves:
checked on Linux 6.18 without CAP_IPC_LOCK, ``io_uring_setup`` fails with
ENOMEM under a limit of 0, and a 4096-entry ring under 64 KiB. Kernels
before 5.12 charged the rings too; later ones charged them to the memory
cgroup instead, until the rings became io_uring memory "regions", which are
charged to the limit again (``io_create_region`` in ``io_uring/memmap.c``).
Nothing here imports Trio.
"""

from __future__ import annotations

import resource
from typing import Final

_CAP_IPC_LOCK: Final = 14


def _in_initial_user_namespace() -> bool:
    # The initial namespace maps every uid to itself; any other map means a
    # user namespace (a rootless container, say).
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:  # pragma: no cover - no user namespaces in this kernel
        return True


def has_cap_ipc_lock() -> bool:
    """Whether the process is exempt from RLIMIT_MEMLOCK.

    Only CAP_IPC_LOCK held in the initial user namespace exempts it: inside
    a user namespace the capability shows in CapEff but the kernel still
    charges pinned pages against the limit.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    has = bool(int(line.split()[1], 16) >> _CAP_IPC_LOCK & 1)
                    return has and _in_initial_user_namespace()
    except OSError:  # pragma: no cover - /proc is always there on Linux
        pass
    return False


def memlock_problem() -> str | None:
    """Why this process cannot pin pages for zero-copy at all, or None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == 0 and not has_cap_ipc_lock():
        return "RLIMIT_MEMLOCK is 0 and the process lacks CAP_IPC_LOCK"
    return None


def describe_limit() -> str:
    """The locked-memory limit as it applies to this process, in words."""
    if has_cap_ipc_lock():
        return "the process has CAP_IPC_LOCK, so RLIMIT_MEMLOCK does not apply to it"
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return "RLIMIT_MEMLOCK is unlimited"
    return f"RLIMIT_MEMLOCK is {_size(soft)} and the process lacks CAP_IPC_LOCK"


def limited() -> bool:
    """Whether pinned memory is charged against a finite limit here."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return soft != resource.RLIM_INFINITY and not has_cap_ipc_lock()


def _size(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} bytes"
