"""Child process for ``tests/kernels/test_memlock.py``: zero-copy sends that are not exempt.

Root with CAP_IPC_LOCK is exempt from RLIMIT_MEMLOCK, so the kernel never
refuses its MSG_ZEROCOPY sends with ENOBUFS. This script, run as a child
process, first lowers RLIMIT_MEMLOCK and removes CAP_IPC_LOCK from its own
capability sets (bounding set with ``prctl(PR_CAPBSET_DROP)`` where
allowed, then effective, permitted and inheritable with ``capset``), and
only then imports Trio and trio_zc. Its effective uid stays 0, so it can
still read the interpreter under /root (user nobody cannot); only its real
uid changes, to one of its own, so that its pinned pages are charged to a
``locked_vm`` no other process shares (see ``isolate_accounting``).

(``--privilege keep`` skips the drop, for a control run;
``--privilege userns`` instead enters a new user namespace, where
CAP_IPC_LOCK shows in CapEff but does not exempt the process.)

Then it sends ``--images`` unique images of ``--size`` bytes with
``send_lease`` over loopback TCP, from a small pool of ``--kernel``
(msg_zerocopy by default; so that memory is reused and an early release
would corrupt an image in flight), to a receiver that reads nothing until
the sender is stuck (at most ``--stall`` seconds) and then everything,
checking each image's SHA-256; on ``--connections`` connections at once,
each with its own images and receiver.

It prints exactly one JSON line on stdout and exits with status 0 when the
run completed (whatever the figures; the test judges them), 77 with
``{"skip": reason}`` when the environment cannot drop the privilege, or 1
with ``{"error": ...}`` when the run itself failed.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import json
import os
import random
import resource
import socket
import sys
import time
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import trio_zc

CAP_IPC_LOCK: Final = 14
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
CLONE_NEWUSER: Final = 0x10000000
EXIT_SKIP: Final = 77
#: Each end's receive buffer (see where the sockets are made).
RCVBUF: Final = 256 * 1024


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class Skip(Exception):
    """The environment cannot provide what the run needs."""


def capability_sets() -> dict[str, int]:
    """CapEff, CapPrm, CapInh, CapBnd of this process, from /proc."""
    sets: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapEff", "CapPrm", "CapInh", "CapBnd"):
                sets[key] = int(value.split()[0], 16)
    return sets


def drop_cap_ipc_lock() -> dict[str, Any]:
    """Remove CAP_IPC_LOCK from every capability set this process may change.

    Returns what was done, for the report. Raises Skip when the capability
    is still effective afterwards.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    done: dict[str, Any] = {"mechanism": "prctl(PR_CAPBSET_DROP) + capset via ctypes"}
    # The bounding set: needs CAP_SETPCAP. Not essential (this process does
    # not exec), so a refusal is only reported.
    if libc.prctl(PR_CAPBSET_READ, CAP_IPC_LOCK, 0, 0, 0) == 1:
        if libc.prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) == 0:
            done["bounding_set"] = "dropped"
        else:
            done["bounding_set"] = f"kept ({errno.errorcode.get(ctypes.get_errno(), '?')})"
    else:
        done["bounding_set"] = "absent already"
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise Skip(f"capget failed: {os.strerror(ctypes.get_errno())}")
    # Capability 14 lives in the first 32-bit word.
    mask = ~(1 << CAP_IPC_LOCK) & 0xFFFFFFFF
    data[0].effective &= mask
    data[0].permitted &= mask
    data[0].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise Skip(f"capset could not clear CAP_IPC_LOCK: {os.strerror(ctypes.get_errno())}")
    sets = capability_sets()
    if sets.get("CapEff", 0) >> CAP_IPC_LOCK & 1:
        raise Skip("CAP_IPC_LOCK is still effective after capset")
    done.update({name: f"{value:016x}" for name, value in sets.items()})
    return done


def isolate_accounting() -> int | None:
    """Charge this process's pinned pages to a user of its own; its uid, or None.

    The kernel charges MSG_ZEROCOPY pins to the *real* user's
    ``locked_vm``, shared by every process of that user that is not exempt:
    two of these runs at once (two test sessions, say) would eat into each
    other's limit. Changing only the real uid to one nobody else uses gives
    this process a counter of its own, while the effective uid stays 0 (so
    files read as before) and the capabilities stay as they are.
    """
    uid = 2_000_000_000 + os.getpid()
    try:
        os.setresuid(uid, 0, 0)
    except OSError:
        return None
    return uid


def enter_user_namespace() -> dict[str, Any]:
    """Become root of a new user namespace, as ``unshare -U -r`` does.

    There every capability shows in CapEff, CAP_IPC_LOCK included, but the
    kernel's MSG_ZEROCOPY accounting asks ``capable(CAP_IPC_LOCK)`` of the
    initial namespace: the process is not exempt (a rootless container).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise Skip(f"unshare(CLONE_NEWUSER) failed: {os.strerror(ctypes.get_errno())}")
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError as exc:
        raise Skip(f"cannot map ids in the new user namespace: {exc}") from None
    sets = capability_sets()
    if not sets.get("CapEff", 0) >> CAP_IPC_LOCK & 1:
        raise Skip("CAP_IPC_LOCK does not show in the new user namespace")
    done: dict[str, Any] = {"mechanism": "unshare(CLONE_NEWUSER) via ctypes, uid 0 mapped to itself"}
    done.update({name: f"{value:016x}" for name, value in sets.items()})
    return done


def image_bytes(index: int, size: int) -> bytes:
    """Image *index*: *size* pseudo-random bytes, different for every index."""
    return random.Random(0x5EED0000 + index).randbytes(size)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import attrs
    import trio
    import trio.testing

    import trio_zc

    size: int = args.size
    count: int = args.images
    started = time.monotonic()

    def snapshot(stream: trio_zc.ZeroCopyStream) -> dict[str, Any]:
        stats = stream.statistics()
        out: dict[str, Any] = attrs.asdict(stats.sent)
        out["zerocopy_enabled"] = stats.zerocopy_enabled
        out["sends_in_flight"] = stats.sends_in_flight
        out["fallbacks"] = [[reason, count] for reason, count in stats.fallbacks]
        return out

    async def connect() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        listener = trio.socket.socket()
        with listener:
            # A fixed receive buffer (no autotuning): with the kernel's default
            # of up to 32 MiB the stalled receiver's socket would take every
            # image, and loopback frees zero-copy pages once they are delivered,
            # so nothing would stay pinned long enough to meet the limit.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            await listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client = trio.socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            await client.connect(listener.getsockname())
            server, _ = await listener.accept()
        return client, server

    async def lane(
        lane_index: int, pool: trio_zc.BufferPool, client: trio.socket.SocketType, server: trio.socket.SocketType
    ) -> dict[str, Any]:
        """One connection: send *count* images, receive and check them."""
        expected: list[bytes] = []
        verified: list[bool] = []
        received_bytes = 0
        receiver_started_at: float | None = None
        stall_expired: bool | None = None
        timeline: list[str] = []
        first_enobufs: dict[str, int] | None = None

        async def receive(sock: trio.socket.SocketType) -> None:
            nonlocal received_bytes, receiver_started_at, stall_expired
            with sock:
                # Read nothing until the senders are stuck (every other task
                # blocked: the sockets are full), at most --stall seconds: the
                # senders' queues fill with zero-copy sends whose pages stay
                # pinned (charged to RLIMIT_MEMLOCK), whatever the machine's load.
                with trio.move_on_after(args.stall) as stall:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                receiver_started_at = time.monotonic() - started
                stall_expired = stall.cancelled_caught
                buf = bytearray(size)
                view = memoryview(buf)
                for index in range(count):
                    got = 0
                    while got < size:
                        n = await sock.recv_into(view[got:])
                        if n == 0:
                            raise RuntimeError(f"EOF in image {index} after {got} of {size} bytes")
                        got += n
                    received_bytes += size
                    # The sender computed the digest before sending this image.
                    verified.append(hashlib.sha256(view).digest() == expected[index])
                extra = await sock.recv(1)
                if extra:
                    raise RuntimeError("the receiver got more bytes than were sent")

        stream = trio_zc.ZeroCopyStream(client, pool=pool)
        initial = snapshot(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, server)
            for index in range(count):
                image = image_bytes(lane_index * count + index, size)
                expected.append(hashlib.sha256(image).digest())
                before = stream.statistics()
                fallbacks_before = sum(count for _, count in before.fallbacks)
                async with pool.lease(size) as lease:
                    lease.write(image)
                    sealed = lease.seal()
                    await stream.send_lease(sealed)
                after = stream.statistics()
                zerocopied = after.sent.zerocopy_calls > before.sent.zerocopy_calls
                if sum(count for _, count in after.fallbacks) > fallbacks_before:
                    # Refused even after draining and retrying; the rest
                    # was copied. "P" after part of it went zero-copy,
                    # "E" before any.
                    timeline.append("P" if zerocopied else "E")
                elif after.sent.enobufs > before.sent.enobufs:
                    timeline.append("R")  # refused, but the retry went through
                elif zerocopied:
                    timeline.append("Z")  # all of it zero-copy
                else:
                    timeline.append("C")  # copied (the policy said so)
                if after.sent.enobufs and first_enobufs is None:
                    first_enobufs = {"image": index, "zerocopy_calls": after.sent.zerocopy_calls}
            await stream.send_eof()
        sent_at = time.monotonic() - started
        # Every byte was delivered, so every completion is due; wait for
        # the reaper to collect them (bounded by fail_after in the caller).
        while stream.statistics().sends_in_flight:
            await trio.sleep(0.005)
        settled = snapshot(stream)
        await stream.aclose()
        closed = snapshot(stream)
        return {
            "images_sent": len(timeline),
            "images_received": len(verified),
            "images_verified": sum(verified),
            "bytes_received": received_bytes,
            "timeline": "".join(timeline),
            "first_enobufs": first_enobufs,
            "initial": initial,
            "settled": settled,
            "closed": closed,
            "receiver_started_at": receiver_started_at,
            "stall_expired": stall_expired,
            "sent_at": round(sent_at, 3),
        }

    policy = trio_zc.ZeroCopyPolicy(copied_streak=0, enobufs_backoff=args.backoff)
    lanes: list[dict[str, Any]] = [{} for _ in range(args.connections)]
    with trio.fail_after(args.timeout):
        # No per-stream limit on bytes in flight: it keeps the stream under
        # the locked-memory limit, and this test wants the kernel to refuse.
        async with trio_zc.open_pool(
            max_bytes=args.pool_bytes, kernel=args.kernel, policy=policy,
            stream_max_in_flight=args.pool_bytes,
        ) as pool:
            kernel_note = pool.statistics().kernel_note
            pairs = [await connect() for _ in range(args.connections)]

            async def run_lane(index: int) -> None:
                lanes[index] = await lane(index, pool, *pairs[index])

            async with trio.open_nursery() as nursery:
                for index in range(args.connections):
                    nursery.start_soon(run_lane, index)
        pool_stats = attrs.asdict(pool.statistics())
    # One connection's figures at the top (what the single-connection tests
    # read); every connection's under "lanes", with the totals.
    result: dict[str, Any] = dict(lanes[0])
    for key in ("images_sent", "images_received", "images_verified", "bytes_received"):
        result[key] = sum(one[key] for one in lanes)
    result.update(
        {
            "images": count * args.connections,
            "image_bytes": size,
            "lanes": lanes,
            "pool": pool_stats,
            "kernel_note": kernel_note,
            "elapsed": round(time.monotonic() - started, 3),
        }
    )
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--memlock", type=int, required=True, help="RLIMIT_MEMLOCK in bytes")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per image")
    parser.add_argument("--pool-bytes", type=int, default=8 << 20)
    parser.add_argument(
        "--stall", type=float, default=5.0, help="most seconds the receiver waits for the sender to block"
    )
    parser.add_argument("--backoff", type=int, default=4, help="the policy's enobufs_backoff")
    parser.add_argument(
        "--kernel", default="msg_zerocopy", choices=("msg_zerocopy", "io_uring", "auto"), help="the pool's kernel"
    )
    parser.add_argument("--connections", type=int, default=1, help="connections sending at once, each --images")
    parser.add_argument(
        "--privilege",
        choices=("drop", "keep", "userns"),
        default="drop",
        help="drop CAP_IPC_LOCK (default), keep it (a control run), or enter a new"
        " user namespace (CAP_IPC_LOCK shows there but does not exempt)",
    )
    parser.add_argument("--timeout", type=float, default=45.0, help="trio.fail_after for the run")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    result: dict[str, Any] = {}
    status = 0
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (args.memlock, args.memlock))
        result["rlimit_memlock"] = list(resource.getrlimit(resource.RLIMIT_MEMLOCK))
        if args.privilege == "keep":
            sets = capability_sets()
            result["privilege"] = {"mechanism": "none: CAP_IPC_LOCK kept (control run)"}
            result["privilege"].update({name: f"{value:016x}" for name, value in sets.items()})
        elif args.privilege == "userns":
            result["privilege"] = enter_user_namespace()
        else:
            result["accounting_uid"] = isolate_accounting()
            result["privilege"] = drop_cap_ipc_lock()
        result["uid"] = os.getuid()
        import trio

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result.update(trio.run(run, args))
        result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    except Skip as exc:
        result["skip"] = str(exc)
        status = EXIT_SKIP
    except BaseException as exc:  # report anything, including a timeout
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        status = 1
    print(json.dumps(result), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
