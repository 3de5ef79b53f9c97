"""Child process for ``tests/kernels/test_probe_cache.py``: a passing shortage of descriptors.

Lowers its own RLIMIT_NOFILE so that no new file descriptor can be made
(every number below the limit is taken), runs the io_uring probe and
chooses a kernel the way ``open_pool(kernel="io_uring")`` does, raises the
limit again, and does both once more. Prints one JSON line: what each
probe said, and which kernel and note each choice gave.
"""

from __future__ import annotations

import json
import os
import resource
import sys

import trio_zc._kernels._choice
import trio_zc._kernels._ring


def lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


def choose() -> dict[str, object]:
    kernel = trio_zc._kernels._choice.make_kernel("io_uring")
    try:
        return {"kernel": kernel.name, "note": kernel.note}
    finally:
        kernel.close()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Every descriptor number below the new limit is taken: nothing new opens.
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_fd(), hard))
    try:
        starved = trio_zc._kernels._ring.probe()
        try:
            starved_choice: dict[str, object] = choose()
        except OSError as exc:  # the fallback's epoll needs a descriptor too
            starved_choice = {"error": repr(exc)}
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    again = trio_zc._kernels._ring.probe()
    print(
        json.dumps(
            {
                "starved": {"available": starved.available, "reason": starved.reason},
                "starved_choice": starved_choice,
                "again": {"available": again.available, "send_zc": again.send_zc, "reason": again.reason},
                "again_choice": choose(),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
