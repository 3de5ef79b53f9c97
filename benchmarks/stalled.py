"""Stalled clients: what a trio_zc server costs while nobody reads.

The project's target checked here: *with 1,000 concurrent clients that have
stopped reading, the server's CPU stays under 5% and its memory under the
pool size plus 64 MiB.* A server that sends images to slow or dead peers
must not spin (a busy loop on EPOLLERR or writability, a completion reaper
polling, a pool sweeper ticking) and must not buffer what it cannot send
(copies of images queued in user space): every send has to sit parked in
the kernel, costing nothing until the peer reads again.

Run: python benchmarks/stalled.py run [--clients 1000] [--kernel auto] [--check]
(``benchmarks/acceptance.py`` runs it too, with the other targets).

Three processes, so that each figure is only the server's:

- the **server** (this file run with ``server``), a fresh
  interpreter that does what an image server does for every client: take a
  lease of the image size, write an image into it, seal it, send it, release
  it, and again, until the connection breaks. It answers ``stats`` on stdin
  with its counters (a JSON line on stdout), and exits when stdin closes or
  its maximum lifetime passes;
- the **clients** (this file run with ``clients``), plain
  blocking sockets with a small receive buffer that connect to the server on
  loopback and never read;
- the **parent** (:func:`run_stalled`), which starts both, waits until the
  server has accepted every client, waits *settle* seconds so that every send
  is blocked, then reads the server's CPU time (``/proc/<pid>/stat``) across
  *window* seconds and its memory (``/proc/<pid>/status``: VmRSS and the peak,
  VmHWM) at the end.

Memory is the resident set: the pool's pages the server touched (shared
memory, counted in RssShmem) plus the interpreter and its per-connection
objects (RssAnon). Socket buffers are kernel memory and are not counted; the
pool bounds what the application holds, the kernel bounds the rest.

With more clients than the pool has room for images, most handlers wait in
``pool.lease()``: that wait must cost nothing either, and the report says how
many were waiting.

On loopback ``"auto"`` copies (the kernel would copy a zero-copy send to a
local socket anyway), so it shows the copying path of the kernel it chose;
``"msg_zerocopy"`` shows zero-copy sends parked with their completions
outstanding. The io_uring kernel registers the whole arena with its ring, so
under ``"auto"`` all of the pool is resident from the start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import IO, Any

import attrs
import trio

import trio_zc

#: Memory the server may use beyond its pool: the target's allowance.
MEMORY_ALLOWANCE = 64 << 20
#: The server's CPU share while its clients are stalled must stay below this.
CPU_TARGET = 0.05
#: Descriptors each child needs beyond one per connection (stdio, epoll,
#: io_uring, the memfd, the listener, imports).
_FD_MARGIN = 64
#: Hard maximum lifetime of a child unless the parent asks for longer: the
#: children end by themselves even if the parent vanished without closing
#: their stdin.
DEFAULT_LIFETIME = 120.0
#: How long a child may take to exit after its stdin closed before it is killed.
_EXIT_GRACE = 10.0
#: How often the parent asks the server how many clients it has accepted.
_POLL_INTERVAL = 0.25
#: How long the parent waits for a child's answer to one question.
_ANSWER_TIMEOUT = 10.0


class StalledBenchError(RuntimeError):
    """The benchmark could not run (a child failed or a wait timed out)."""


@attrs.frozen
class StalledResult:
    """What :func:`run_stalled` measured. Byte counts are bytes, times seconds."""

    #: The kernel asked for (``open_pool(kernel=...)``).
    kernel: str
    #: The kernel the pool actually ran (``auto`` chooses one; io_uring may fall back).
    kernel_used: str
    #: Why the pool's kernel runs as it does, from its statistics, or None.
    kernel_note: str | None
    #: Connections the clients opened.
    clients: int
    #: Connections the server accepted.
    connected: int
    #: Size of each image sent.
    image_size: int
    #: Sends the server had begun at the end of the window.
    images_started: int
    #: Sends begun during the window: zero when every client really stalled.
    images_in_window: int
    #: Sends the kernel accepted completely (before the clients stalled).
    images_sent: int
    #: Handlers waiting in ``pool.lease()`` for memory at the end of the window.
    tasks_waiting: int
    #: Sealed leases (being sent, or waiting for their completion) at the end of the window.
    leases_held: int
    #: Why streams stopped using zero-copy, ``(reason, count)``, from the pool's statistics.
    fallbacks: tuple[tuple[str, int], ...]
    #: Server CPU time (user + system, all threads) during the window.
    cpu_seconds: float
    #: Length of the window, measured.
    window_seconds: float
    #: The server's resident set once listening, before any client.
    rss_idle_bytes: int
    #: The server's resident set at the end of the window (VmRSS, pool pages counted once).
    rss_bytes: int
    #: Its pool pages among them (RssShmem, each page counted once).
    rss_shmem_bytes: int
    #: Its private memory among them (RssAnon).
    rss_anon_bytes: int
    #: The server's peak resident set over its whole life (VmHWM).
    rss_peak_bytes: int
    #: The pool's size (``open_pool(max_bytes=...)``).
    pool_bytes: int

    @property
    def cpu_share(self) -> float:
        """Server CPU seconds per second of the window (1.0 = one core busy)."""
        return self.cpu_seconds / self.window_seconds if self.window_seconds > 0 else 0.0

    @property
    def memory_limit(self) -> int:
        """The target's memory bound: the pool plus 64 MiB."""
        return self.pool_bytes + MEMORY_ALLOWANCE

    @property
    def cpu_ok(self) -> bool:
        """Whether the server's CPU share stayed under 5%."""
        return self.cpu_share < CPU_TARGET

    @property
    def memory_ok(self) -> bool:
        """Whether the server's peak resident set stayed under the pool plus 64 MiB."""
        return self.rss_peak_bytes < self.memory_limit

    def format(self) -> str:
        """A short human-readable report."""

        def verdict(ok: bool) -> str:
            return "ok" if ok else "MISSED"

        lines = [
            f"stalled clients, kernel {self.kernel!r} (ran {self.kernel_used!r}):"
            f" {self.connected} of {self.clients} clients connected,"
            f" images of {_mib(self.image_size)}, pool {_mib(self.pool_bytes)}",
            f"  sends begun {self.images_started} ({self.images_in_window} during the window),"
            f" completed {self.images_sent}; {self.leases_held} leases held,"
            f" {self.tasks_waiting} handlers waiting for memory",
            f"  server CPU {self.cpu_seconds:.3f} s in {self.window_seconds:.2f} s ="
            f" {100 * self.cpu_share:.2f}% (target < {100 * CPU_TARGET:.0f}%): {verdict(self.cpu_ok)}",
            f"  server memory: peak {_mib(self.rss_peak_bytes)}, now {_mib(self.rss_bytes)}"
            f" (pool pages {_mib(self.rss_shmem_bytes)}, private {_mib(self.rss_anon_bytes)};"
            f" {_mib(self.rss_idle_bytes)} before any client);"
            f" limit pool + {_mib(MEMORY_ALLOWANCE)} = {_mib(self.memory_limit)}: {verdict(self.memory_ok)}",
        ]
        if self.fallbacks:
            reasons = "; ".join(f"{reason} (x{count})" for reason, count in self.fallbacks)
            lines.append(f"  zero-copy fallbacks: {reasons}")
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# -- reading the server from /proc ----------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* and all its threads, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may contain spaces and parentheses: the
    # fields that follow start after its last ")". utime and stime are fields
    # 14 and 15, so 11 and 12 counted from field 3.
    fields = data[data.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _memory(pid: int) -> dict[str, int]:
    """The Vm* and Rss* lines of /proc/<pid>/status, in bytes, pool pages counted once.

    The pool maps its memory twice (read-write, and read-only for sealed
    views), and RssShmem counts a page once per mapping that has touched it.
    The proportional count (Pss_Shmem in smaps_rollup) splits a page among
    its mappings, so it counts each of the pool's pages once.
    """
    out: dict[str, int] = {}
    for name, keys in ((f"/proc/{pid}/status", ("Vm", "Rss")), (f"/proc/{pid}/smaps_rollup", ("Pss_Shmem",))):
        with open(name) as f:
            for line in f:
                key, _, value = line.partition(":")
                parts = value.split()
                if key.startswith(keys) and len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0]) * 1024
    if "Pss_Shmem" in out and "RssShmem" in out:
        out["VmRSS"] -= out["RssShmem"] - out["Pss_Shmem"]
        out["RssShmem"] = out["Pss_Shmem"]
    return out


# -- the children ----------------------------------------------------------------


def _raise_nofile(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; fail clearly if even that is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"this needs {needed} file descriptors but RLIMIT_NOFILE's hard limit is {hard}"
            " (raise it with ulimit -Hn, or run fewer clients)"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _image(size: int) -> bytes:
    # Any bytes do: the clients never look. A pattern rather than zeros so
    # that nothing along the way could treat the pages as empty.
    block = bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


@attrs.define
class _ServerCounters:
    connected: int = 0
    started: int = 0
    sent: int = 0
    broken: int = 0


async def _handle(
    pool: trio_zc.BufferPool, image: bytes, counters: _ServerCounters, stream: trio_zc.ZeroCopyStream
) -> None:
    counters.connected += 1
    async with stream:
        try:
            while True:
                async with pool.lease(len(image)) as lease:
                    lease.write(image)
                    sealed = lease.seal()
                    counters.started += 1
                    await stream.send_lease(sealed)
                    counters.sent += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away: the normal end of a connection here.
            counters.broken += 1


def _emit(tag: str, payload: object) -> None:
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


async def _answer_stdin(pool: trio_zc.BufferPool, counters: _ServerCounters) -> None:
    """Answer ``stats`` lines on stdin until it closes."""
    # A private descriptor: FdStream makes it non-blocking and closes it.
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        pending = b""
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                if line.strip() == b"stats":
                    _emit("stats", {"server": attrs.asdict(counters), "pool": attrs.asdict(pool.statistics())})


async def _serve(image_size: int, pool_bytes: int, kernel: str, lifetime: float) -> None:
    counters = _ServerCounters()
    image = _image(image_size)
    with trio.move_on_after(lifetime):
        # A short drain: at exit the clients are gone or never coming back,
        # and waiting the default ten seconds for them would only delay it.
        async with trio_zc.open_pool(max_bytes=pool_bytes, kernel=kernel, drain_timeout=1.0) as pool:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio_zc.serve_tcp, partial(_handle, pool, image, counters), 0, pool=pool, host="127.0.0.1")
                )
                port = listeners[0].listener.socket.getsockname()[1]
                stats = pool.statistics()
                _emit("port", {"port": port, "kernel": stats.kernel, "note": stats.kernel_note})
                await _answer_stdin(pool, counters)
                nursery.cancel_scope.cancel()


def _server_main(args: argparse.Namespace) -> None:
    _raise_nofile(args.clients + _FD_MARGIN)
    trio.run(_serve, args.image_size, args.pool_bytes, args.kernel, args.lifetime)


def _clients_main(args: argparse.Namespace) -> None:
    _raise_nofile(args.clients + _FD_MARGIN)
    deadline = time.monotonic() + args.lifetime
    socks: list[socket.socket] = []
    try:
        for _ in range(args.clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            if args.rcvbuf:
                # Before connect, so that the window the server sees is small
                # from the start and the sends block after a few kilobytes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
            # Reset rather than a graceful close at the end: the unread data
            # is dropped at once and nothing lingers in FIN_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            sock.connect(("127.0.0.1", args.port))
        sys.stdout.write(f"ready {len(socks)}\n")
        sys.stdout.flush()
        # Hold every connection, reading nothing, until stdin closes.
        stdin = sys.stdin.fileno()
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([stdin], [], [], remaining)
            if readable and not os.read(stdin, 4096):
                break
    finally:
        for sock in socks:
            sock.close()


# -- the parent --------------------------------------------------------------------


class _Child:
    """A child process started by the parent, with line reading that never blocks unbounded."""

    def __init__(self, name: str, argv: Sequence[str], lifetime: float) -> None:
        self.name = name
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        # The child runs this file as a script, and must import the same
        # trio_zc as the parent even when that one is found through the
        # parent's sys.path rather than installed.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(trio_zc.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), *argv, "--lifetime", str(lifetime)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
            )
        except BaseException:
            self._stderr.close()
            raise
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._stdin = self.proc.stdin
        self._stdout_fd = self.proc.stdout.fileno()
        self._buffer = bytearray()
        self._eof = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def fail(self, what: str) -> StalledBenchError:
        """An error saying *what* went wrong, with the child's state and stderr."""
        code = self.proc.poll()
        state = "still running" if code is None else f"exit status {code}"
        err = self.stderr_text()
        return StalledBenchError(
            f"{what} ({self.name}, {state})" + (f"; its stderr:\n{err[-4000:]}" if err else "")
        )

    def readline(self, timeout: float) -> str | None:
        """The next line of the child's stdout; None if nothing came within *timeout*.

        Reads the raw descriptor (no buffered reader), so that select()
        tells the truth about what is waiting.
        """
        deadline = time.monotonic() + timeout
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.decode()
            if self._eof:
                raise self.fail("it closed its stdout")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self._stdout_fd], [], [], remaining)
            if readable:
                chunk = os.read(self._stdout_fd, 65536)
                if chunk:
                    self._buffer += chunk
                else:
                    self._eof = True

    def expect(self, tag: str, timeout: float) -> Any:
        """Wait for the line starting with *tag*; its JSON payload."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            line = self.readline(remaining)
            if line is None:
                break
            word, _, rest = line.partition(" ")
            if word == tag:
                return json.loads(rest) if rest.startswith(("{", "[")) else rest
        raise self.fail(f"no {tag!r} line within {timeout:.0f} s")

    def ask(self, question: str, tag: str) -> Any:
        try:
            self._stdin.write(question.encode() + b"\n")
            self._stdin.flush()
        except OSError as exc:
            raise self.fail(f"could not ask {question!r}: {exc}") from exc
        return self.expect(tag, _ANSWER_TIMEOUT)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise self.fail("it exited early")

    def stop(self) -> None:
        """Close stdin (the child's signal to exit), wait, kill it only if it hangs."""
        try:
            with contextlib.suppress(OSError):
                self._stdin.close()
            try:
                self.proc.wait(timeout=_EXIT_GRACE)
            except subprocess.TimeoutExpired:
                # Only the process this object started, by its own PID.
                self.proc.kill()
                self.proc.wait(timeout=_EXIT_GRACE)
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self._stderr.close()


@contextlib.contextmanager
def _child(name: str, argv: Sequence[str], lifetime: float) -> Iterator[_Child]:
    child = _Child(name, argv, lifetime)
    try:
        yield child
    finally:
        child.stop()


def run_stalled(
    clients: int = 1000,
    *,
    image_size: int = 1 << 20,
    pool_bytes: int = 256 << 20,
    kernel: str = "auto",
    settle: float = 3.0,
    window: float = 5.0,
    progress: bool = False,
    rcvbuf: int = 4096,
    connect_timeout: float = 60.0,
) -> StalledResult:
    """Measure a trio_zc image server's CPU and memory while *clients* peers do not read.

    Starts the server and the clients in fresh processes (see the module
    docstring), waits up to *connect_timeout* seconds for the server to have
    accepted every client, then *settle* seconds for every send to block,
    then measures the server over *window* seconds. *rcvbuf* is the clients'
    SO_RCVBUF (0 leaves the system default). *progress* reports the steps on
    stderr. Raises :class:`StalledBenchError` if a child fails or a wait
    times out; the children are always shut down.
    """
    if clients < 1:
        raise ValueError(f"clients must be at least 1, not {clients}")
    if not 0 < image_size <= pool_bytes:
        raise ValueError(f"image_size must be positive and fit the pool ({pool_bytes}), not {image_size}")
    if settle < 0 or window <= 0:
        raise ValueError("settle must be >= 0 and window > 0")

    def say(message: str) -> None:
        if progress:
            print(f"[stalled {kernel}] {message}", file=sys.stderr, flush=True)

    lifetime = max(DEFAULT_LIFETIME, connect_timeout + settle + window + 60.0)
    server_argv = [
        "server",
        "--clients", str(clients),
        "--image-size", str(image_size),
        "--pool-bytes", str(pool_bytes),
        "--kernel", kernel,
    ]  # fmt: skip
    with _child("server", server_argv, lifetime) as server:
        hello = server.expect("port", _ANSWER_TIMEOUT * 3)
        port = int(hello["port"])
        kernel_used, kernel_note = str(hello["kernel"]), hello["note"]
        rss_idle = _memory(server.pid)["VmRSS"]
        say(f"server pid {server.pid} on 127.0.0.1:{port}, {kernel_used}; RSS {_mib(rss_idle)}")

        clients_argv = ["clients", "--clients", str(clients), "--port", str(port), "--rcvbuf", str(rcvbuf)]
        with _child("clients", clients_argv, lifetime) as peers:
            deadline = time.monotonic() + connect_timeout
            ready = False
            connected = 0
            while True:
                server.check_alive()
                if not ready:
                    peers.check_alive()
                    ready = peers.readline(_POLL_INTERVAL) is not None
                else:
                    time.sleep(_POLL_INTERVAL)
                connected = server.ask("stats", "stats")["server"]["connected"]
                if ready and connected >= clients:
                    break
                if time.monotonic() > deadline:
                    who = server if ready else peers
                    raise who.fail(
                        f"only {connected} of {clients} clients connected within {connect_timeout:.0f} s"
                    )
            say(f"{connected} clients connected; settling {settle:.1f} s")
            time.sleep(settle)

            before = server.ask("stats", "stats")
            cpu0, t0 = _cpu_seconds(server.pid), time.monotonic()
            time.sleep(window)
            cpu1, t1 = _cpu_seconds(server.pid), time.monotonic()
            memory = _memory(server.pid)
            after = server.ask("stats", "stats")
            peers.check_alive()
            say(f"measured {cpu1 - cpu0:.3f} CPU s in {t1 - t0:.2f} s; shutting down")

    pool_stats = after["pool"]
    return StalledResult(
        kernel=kernel,
        kernel_used=kernel_used,
        kernel_note=None if kernel_note is None else str(kernel_note),
        clients=clients,
        connected=after["server"]["connected"],
        image_size=image_size,
        images_started=after["server"]["started"],
        images_in_window=after["server"]["started"] - before["server"]["started"],
        images_sent=after["server"]["sent"],
        tasks_waiting=pool_stats["tasks_waiting"],
        leases_held=pool_stats["sealed_leases"],
        fallbacks=tuple((str(reason), int(count)) for reason, count in pool_stats["fallbacks"]),
        cpu_seconds=cpu1 - cpu0,
        window_seconds=t1 - t0,
        rss_idle_bytes=rss_idle,
        rss_bytes=memory["VmRSS"],
        rss_shmem_bytes=memory.get("RssShmem", 0),
        rss_anon_bytes=memory.get("RssAnon", 0),
        rss_peak_bytes=memory["VmHWM"],
        pool_bytes=pool_bytes,
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/stalled.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="role", required=True)
    run = sub.add_parser("run", help="measure: start the server and the clients, print the report")
    run.add_argument("--clients", type=int, default=1000, help="clients that stop reading (1000)")
    run.add_argument("--kernel", default="auto", help="the server's kernel (auto)")
    run.add_argument("--image-size", type=int, default=1 << 20, help="bytes per image (1 MiB)")
    run.add_argument("--pool-bytes", type=int, default=256 << 20, help="the server's pool (256 MiB)")
    run.add_argument("--settle", type=float, default=3.0, help="seconds for every send to block (3)")
    run.add_argument("--window", type=float, default=5.0, help="seconds the server is measured (5)")
    run.add_argument("--check", action="store_true", help="exit with status 3 if a target is missed")
    server = sub.add_parser("server", help="the image server (internal)")
    server.add_argument("--image-size", type=int, required=True)
    server.add_argument("--pool-bytes", type=int, required=True)
    server.add_argument("--kernel", default="auto")
    clients = sub.add_parser("clients", help="the clients that never read (internal)")
    clients.add_argument("--port", type=int, required=True)
    clients.add_argument("--rcvbuf", type=int, default=4096)
    for p in (server, clients):
        p.add_argument("--clients", type=int, required=True)
        p.add_argument("--lifetime", type=float, default=DEFAULT_LIFETIME)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``run`` measures and reports; ``server`` and ``clients`` are its children."""
    args = _parse(argv)
    if args.role == "server":
        _server_main(args)
    elif args.role == "clients":
        _clients_main(args)
    else:
        result = run_stalled(
            args.clients,
            image_size=args.image_size,
            pool_bytes=args.pool_bytes,
            kernel=args.kernel,
            settle=args.settle,
            window=args.window,
            progress=True,
        )
        print(result.format())
        if args.check and not (result.cpu_ok and result.memory_ok):
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
