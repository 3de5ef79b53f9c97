"""System calls per HTTP response on each kernel, counted by strace: head and body in one call.

Serves one cached image with :mod:`trio_zc.http` on each kernel, in a child
process run under ``strace -f -c -e trace=sendmsg,sendto,sendfile,io_uring_enter``,
sends it keep-alive requests (with the built-in client, which checks every
body, or with ``wrk``), stops it, and prints the send calls per response.
A run with no requests at all is subtracted, so what the pool does once
(the io_uring probe) is not counted against the responses.

Each kernel runs twice: with the default policy (a small image is copied:
one ``sendmsg`` of head and body on every kernel) and with zero-copy for
every send (``msg_zerocopy``: one ``sendmsg`` with MSG_ZEROCOPY; ``io_uring``:
one SENDMSG_ZC request, at most one ``io_uring_enter`` per response, fewer
when responses are batched; ``sendfile``: the head with MSG_MORE, then
``sendfile``: two calls).

Needs strace (Debian: ``apt-get install -y strace``); ``--wrk SECONDS``
needs wrk (``apt-get install -y wrk``). ``--count transport`` needs
neither: the server counts the calls its streams make through their
transports (and the io_uring ring's submissions) itself, as
``tests/api/test_send_head.py`` does -- what the smoke test runs.

Run: python benchmarks/syscalls_per_response.py [--requests 2000] [--connections 4] [--size 13000]
[--wrk 5] [--count strace|transport] [--kernels copy,msg_zerocopy,io_uring,sendfile]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

import trio_zc
import trio_zc.http
from trio_zc._kernels._io_uring import IoUringKernel
from trio_zc._kernels._msg_zerocopy import ErrorQueue
from trio_zc._kernels._socket import SocketTransport

KERNELS = ("copy", "msg_zerocopy", "io_uring", "sendfile")
POLICIES = ("default", "zerocopy")
SYSCALLS = ("sendmsg", "sendto", "sendfile", "io_uring_enter")
#: Zero-copy for every send, whatever its size and whatever the completions say.
ALWAYS_ZC = trio_zc.ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)


def image(size: int) -> bytes:
    block = bytes((i * 7 + 3) & 0xFF for i in range(251))
    return (block * (size // len(block) + 1))[:size]


# -- the server (the child under strace) ------------------------------------------------------


#: The system call each transport operation makes (``--count transport``).
TRANSPORT_CALLS: dict[tuple[type, str], str] = {
    (SocketTransport, "send"): "sendto",
    (SocketTransport, "send_with_head"): "sendmsg",
    (SocketTransport, "send_more"): "sendto",
    (SocketTransport, "sendfile"): "sendfile",
    (ErrorQueue, "zerocopy_send"): "sendto",
    (ErrorQueue, "zerocopy_send_with_head"): "sendmsg",
}


def count_transport_calls(counts: Counter[str]) -> None:
    """Count, by system call, every send the streams make through their transports."""

    def counted(original: Callable[..., Any], syscall: str) -> Callable[..., Any]:
        def call(self: object, *args: Any) -> Any:
            result = original(self, *args)
            counts[syscall] += 1
            return result

        return call

    for (cls, name), syscall in TRANSPORT_CALLS.items():
        setattr(cls, name, counted(getattr(cls, name), syscall))


async def serve(kernel: str, policy: str, size: int, count: str) -> None:
    body = image(size)
    counts: Counter[str] = Counter()
    if count == "transport":
        count_transport_calls(counts)
    async with trio_zc.open_pool(
        max_bytes=16 << 20, kernel=kernel, policy=ALWAYS_ZC if policy == "zerocopy" else None
    ) as pool:
        with trio_zc.LeaseCache[str](pool, max_bytes=4 << 20) as cache:

            async def render() -> trio_zc.SealedLease:
                lease = await pool.acquire(len(body))
                lease.write(body)
                return lease.seal()

            async def handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
                return trio_zc.http.Response(await cache.get("image", render), content_type="image/png")

            server = trio_zc.http.HTTPServer(handler)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(
                        partial(trio_zc.http.serve, pool, server, port=0, host="127.0.0.1")
                    )
                    port = listeners[0].listener.socket.getsockname()[1]
                    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
        kernel_name = pool.statistics().kernel
        if isinstance(pool._kernel, IoUringKernel):
            counts["io_uring_enter"] = pool._kernel.submit_calls
    stats = server.statistics()
    print(json.dumps({"responses": stats.responses, "kernel": kernel_name, "counts": counts}), flush=True)


# -- the clients ------------------------------------------------------------------------------


async def client(port: int, requests: int, size: int) -> None:
    """*requests* keep-alive GETs on one connection, each body checked."""
    expected = hashlib.sha256(image(size)).digest()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    buffer = b""
    async with stream:
        for _ in range(requests):
            await stream.send_all(request)
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive_some(1 << 20)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
            while len(buffer) < length:
                buffer += await stream.receive_some(1 << 20)
            body, buffer = buffer[:length], buffer[length:]
            if not head.startswith(b"HTTP/1.1 200 ") or hashlib.sha256(body).digest() != expected:
                raise SystemExit("a response was not the image")


async def clients(port: int, requests: int, connections: int, size: int) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(connections):
            nursery.start_soon(client, port, requests // connections + (i < requests % connections), size)


# -- the parent -------------------------------------------------------------------------------


def strace_counts(path: str) -> dict[str, int]:
    """Calls per system call from an ``strace -c`` summary."""
    counts = dict.fromkeys(SYSCALLS, 0)
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[-1] in counts and parts[3].isdigit():
                counts[parts[-1]] = int(parts[3])
    return counts


def run_one(kernel: str, policy: str, args: argparse.Namespace, requests: int) -> tuple[dict[str, int], int, str]:
    """One server: (calls per system call, responses, the pool's kernel)."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        command = [sys.executable, os.path.abspath(__file__), "serve", kernel, policy, str(args.size), args.count]
        if args.count == "strace":
            command = ["strace", "-f", "-c", "-o", out.name, "-e", "trace=" + ",".join(SYSCALLS), *command]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        pid = None
        try:
            assert server.stdout is not None
            started = json.loads(server.stdout.readline())
            pid = started["pid"]
            if requests:
                if args.wrk:
                    subprocess.run(
                        ["wrk", "-t1", f"-c{args.connections}", f"-d{args.wrk}s", f"http://127.0.0.1:{started['port']}/"],
                        check=True, stdout=subprocess.DEVNULL,
                    )
                else:
                    trio.run(clients, started["port"], requests, args.connections, args.size)
            time.sleep(0.2)
            os.kill(pid, signal.SIGTERM)
            pid = None
            done = json.loads(server.stdout.readline())
            server.wait(timeout=60)
        finally:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # the server, which strace alone would leave running
            if server.poll() is None:
                server.kill()
                server.wait()
        if args.count == "strace":
            counts = strace_counts(out.name)
        else:
            counts = {name: int(done["counts"].get(name, 0)) for name in SYSCALLS}
        return counts, int(done["responses"]), str(done["kernel"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per kernel and policy (built-in client)")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections")
    parser.add_argument("--size", type=int, default=13_000, help="the image's size in bytes")
    parser.add_argument("--wrk", type=int, default=0, metavar="SECONDS", help="drive the server with wrk this long instead")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument(
        "--count", choices=("strace", "transport"), default="strace",
        help="count system calls with strace, or through the streams' transports (no strace needed)",
    )
    args = parser.parse_args()
    if args.count == "strace" and shutil.which("strace") is None:
        print("strace is not installed (Debian: apt-get install -y strace)", file=sys.stderr)
        return 2
    if args.wrk and shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    how = "strace -c" if args.count == "strace" else "the transports"
    print(f"{args.size}-byte image, keep-alive over {args.connections} connection(s); calls per response"
          f" (counted by {how}) after subtracting an idle server's")
    print(f"{'kernel':14} {'policy':9} {'responses':>9} " + " ".join(f"{name:>15}" for name in SYSCALLS))
    for kernel in args.kernels.split(","):
        for policy in POLICIES:
            idle, _, _ = run_one(kernel, policy, args, 0)
            busy, responses, actual = run_one(kernel, policy, args, args.requests)
            if actual != kernel:
                print(f"{kernel:14} {policy:9} ran as {actual!r} (see the pool's kernel_note)")
                continue
            per = [(busy[name] - idle[name]) / max(responses, 1) for name in SYSCALLS]
            print(f"{kernel:14} {policy:9} {responses:>9} " + " ".join(f"{value:>15.3f}" for value in per))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        trio.run(serve, sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        sys.exit(0)
    sys.exit(main())
