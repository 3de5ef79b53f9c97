"""A child process in which io_uring_setup is blocked by a seccomp filter.

Usage: python io_uring_blocked.py ERRNO probe
       python io_uring_blocked.py ERRNO pool KERNEL

The filter makes syscall 425 (io_uring_setup, x86_64) fail with ERRNO, as a
container's seccomp profile does; everything else is allowed. Then the
child either runs the io_uring probe, or opens a pool with KERNEL, sends a
few images over loopback TCP, checks them, and prints one JSON line.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x00050000, 0x7FFF0000
IO_URING_SETUP = 425


def block_io_uring(blocked_errno: int) -> None:
    program = [
        (BPF_LD_W_ABS, 0, 0, 4),  # A = seccomp_data.arch
        (BPF_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),  # another ABI: allow
        (BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
        (BPF_JEQ_K, 0, 1, IO_URING_SETUP),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | blocked_errno),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    filters = (SockFilter * len(program))(*(SockFilter(*insn) for insn in program))
    fprog = SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        sys.exit(f"PR_SET_NO_NEW_PRIVS failed: errno {ctypes.get_errno()}")
    if libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, MODE_FILTER
        sys.exit(f"PR_SET_SECCOMP failed: errno {ctypes.get_errno()}")


def probe() -> None:
    import attrs

    from trio_zc._kernels._ring import probe as run_probe

    print(json.dumps(attrs.asdict(run_probe())))


def pool(kernel: str) -> None:
    import attrs
    import trio

    import trio_zc

    async def main() -> dict[str, object]:
        images = [os.urandom(300_000 + 1000 * i) for i in range(8)]
        async with trio_zc.open_pool(max_bytes=4 << 20, kernel=kernel) as zc_pool:
            listener = trio.socket.socket()
            await listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = trio.socket.socket()
            await client.connect(listener.getsockname())
            server, _ = await listener.accept()
            listener.close()
            stream = trio_zc.ZeroCopyStream(client, pool=zc_pool)
            received = bytearray()
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    with server:
                        while chunk := await server.recv(1 << 20):
                            received.extend(chunk)

                nursery.start_soon(receive)
                async with stream:
                    for image in images:
                        async with zc_pool.lease(len(image)) as lease:
                            lease.write(image)
                            await stream.send_lease(lease.seal())
            stats = zc_pool.statistics()
            intact = bytes(received) == b"".join(images)
            return {
                "kernel": stats.kernel,
                "note": stats.kernel_note,
                "intact": intact,
                "digest": hashlib.sha256(received).hexdigest(),
                "sent": attrs.asdict(stats.sent),
            }

    print(json.dumps(trio.run(main)))


if __name__ == "__main__":
    block_io_uring(int(sys.argv[1]))
    if sys.argv[2] == "probe":
        probe()
    else:
        pool(sys.argv[3])
