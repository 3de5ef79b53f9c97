"""The senders ``python -m trio_zc bench`` compares: trio_zc's kernels and the baselines.

Every case does, per image, what an application does: put the image's
bytes into the memory it sends from (a lease for trio_zc, a buffer for the
baselines), then send it. The baselines are what a user would otherwise
write, each reusing one buffer for every image as a server would:

- ``blocking``: a blocking socket, ``sendall`` from a ``bytearray``;
- ``blocking-mmap``: the same from an anonymous ``mmap``;
- ``sendfile-memfd``: ``os.sendfile`` from a memfd the image is written into;
- ``trio-send_all``: :meth:`trio.SocketStream.send_all` from a ``bytearray``;
- ``trio-floor``: the least any sender on Trio does per image, from a
  ``bytearray``: a cancel check, a non-blocking ``send()`` (waiting for room
  only when the socket is full) and one pass through Trio's scheduler, with
  the 1 MiB cap on unsent bytes of trio_zc's copying streams. No library
  that keeps Trio's rule that a send is a checkpoint can send faster, so it
  is the ceiling for trio_zc's figures against ``trio-send_all``;
- ``asyncio-sendall``: :meth:`asyncio.loop.sock_sendall` from a ``bytearray``;
- ``asyncio-sendfile``: :meth:`asyncio.loop.sock_sendfile` from a memfd.

The two sendfile baselines reuse their memory as soon as the call returns,
which is exactly the mistake trio_zc exists to prevent: the receiver
reports the images that arrived with another image's bytes.

Each case returns when the receiver has answered, and times only the
images: connecting, the header and making the pool are not counted.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

import attrs
import trio

from ._bench_protocol import ANSWER, HEADER, READY, STAMP
from ._highlevel import open_tcp_stream
from ._kernels._socket import SocketTransport
from ._policy import ZeroCopyPolicy
from ._pool_open import open_pool

#: trio_zc's kernels, as cases.
KERNEL_CASES: Final = ("copy", "msg_zerocopy", "io_uring", "sendfile", "auto")
#: What a user would otherwise write.
BASELINE_CASES: Final = (
    "blocking",
    "blocking-mmap",
    "sendfile-memfd",
    "trio-send_all",
    "trio-floor",
    "asyncio-sendall",
    "asyncio-sendfile",
)
ALL_CASES: Final = KERNEL_CASES + BASELINE_CASES
#: Baselines that send without copying (and without knowing when the memory is free).
_SENDFILE_BASELINES: Final = frozenset({"sendfile-memfd", "asyncio-sendfile"})


@attrs.frozen
class Job:
    """One case's work: *count* images of *size* bytes cycling through *images*."""

    port: int
    size: int
    count: int
    seed: int
    images: list[bytes]

    @property
    def header(self) -> bytes:
        return HEADER.pack(self.size, self.count, len(self.images), self.seed)

    def image(self, i: int) -> bytes:
        return self.images[i % len(self.images)]


@attrs.frozen
class Sent:
    """What a case measured on the sending side, and what the receiver answered."""

    seconds: float
    cpu_seconds: float
    #: When the sender started on each image (ns, CLOCK_MONOTONIC).
    starts: list[int]
    #: When the receiver had each image's last byte (ns, CLOCK_MONOTONIC).
    arrivals: list[int]
    intact: int
    received: int
    #: Bytes the kernel sent without copying, as a share of all bytes sent.
    zerocopy_share: float


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Run:
    """Times one case from its first image to the receiver's answer.

    Wall clock and CPU (every thread of this process), and when the sender
    started on each image, for the latencies.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.starts: list[int] = []
        self._t0, self._c0 = time.perf_counter(), _cpu()
        self._elapsed: tuple[float, float] | None = None

    def images(self) -> Iterator[bytes]:
        """The images to send, in order, noting when each one's turn came."""
        for i in range(self.job.count):
            self.starts.append(time.monotonic_ns())
            yield self.job.image(i)

    def stop(self) -> None:
        self._elapsed = (time.perf_counter() - self._t0, _cpu() - self._c0)

    def result(self, answer: bytes, share: float) -> Sent:
        """What the case measured, with the receiver's *answer*; stops the clock if still running."""
        if self._elapsed is None:
            self.stop()
        assert self._elapsed is not None
        intact, received = ANSWER.unpack_from(answer)
        arrivals = [stamp for (stamp,) in STAMP.iter_unpack(answer[ANSWER.size :])][:received]
        return Sent(*self._elapsed, self.starts, arrivals, intact, received, share)


def _answer_size(job: Job) -> int:
    return ANSWER.size + STAMP.size * job.count


# -- blocking sockets -------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the receiver closed the connection early")
        out += chunk
    return bytes(out)


def _connect(job: Job) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", job.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(job.header)
    if _recv_exactly(sock, len(READY)) != READY:
        raise ConnectionError("the receiver did not get ready")
    return sock


def _blocking(job: Job, buffer: bytearray | mmap.mmap) -> Sent:
    with _connect(job) as sock:
        run = _Run(job)
        for image in run.images():
            buffer[:] = image
            sock.sendall(buffer)
        answer = _recv_exactly(sock, _answer_size(job))
        return run.result(answer, 0.0)


def _memfd(size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("trio_zc-bench")
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


def _sendfile_memfd(job: Job) -> Sent:
    fd, mapping = _memfd(job.size)
    try:
        with _connect(job) as sock:
            run = _Run(job)
            for image in run.images():
                # Rewriting the memory as soon as sendfile returns: the race.
                mapping[:] = image
                offset = 0
                while offset < job.size:
                    offset += os.sendfile(sock.fileno(), fd, offset, job.size - offset)
            answer = _recv_exactly(sock, _answer_size(job))
            return run.result(answer, 1.0)
    finally:
        mapping.close()
        os.close(fd)


# -- Trio -------------------------------------------------------------------------


async def _receive_exactly_async(receive: Callable[[int], Awaitable[bytes]], n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await receive(n - len(out))
        if not chunk:
            raise ConnectionError("the receiver closed the connection early")
        out += chunk
    return bytes(out)


async def _trio_send_all(job: Job) -> Sent:
    stream = await trio.open_tcp_stream("127.0.0.1", job.port)
    async with stream:
        await stream.send_all(job.header)
        await _receive_exactly_async(stream.receive_some, len(READY))
        buffer = bytearray(job.size)
        run = _Run(job)
        for image in run.images():
            buffer[:] = image
            await stream.send_all(buffer)
        answer = await _receive_exactly_async(stream.receive_some, _answer_size(job))
        return run.result(answer, 0.0)


async def _trio_floor(job: Job) -> Sent:
    sock = _connect(job)
    with sock:
        # Non-blocking, with the cap on unsent bytes of trio_zc's copying streams.
        SocketTransport(sock).let_more_unsent()

        async def send(view: memoryview) -> None:
            # What trio.SocketStream.send_all does per call, without its layers:
            # one cancel check before, one schedule point after.
            await trio.lowlevel.checkpoint_if_cancelled()
            sent = 0
            while True:
                try:
                    sent += sock.send(view[sent:] if sent else view)
                except BlockingIOError:
                    pass
                if sent == len(view):
                    break
                await trio.lowlevel.wait_writable(sock)
            await trio.lowlevel.cancel_shielded_checkpoint()

        async def receive(n: int) -> bytes:
            while True:
                try:
                    return sock.recv(n)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)

        buffer = bytearray(job.size)
        view = memoryview(buffer)
        run = _Run(job)
        for image in run.images():
            buffer[:] = image
            await send(view)
        answer = await _receive_exactly_async(receive, _answer_size(job))
        return run.result(answer, 0.0)


async def _trio_zc(job: Job, kernel: str) -> Sent:
    # Room for a few images in flight.
    pool_bytes = max(4 * job.size, 16 << 20)
    # "auto" runs as shipped; the named kernels keep zero-copy on although
    # loopback reports every send COPIED, since measuring them is the point.
    policy = ZeroCopyPolicy() if kernel == "auto" else ZeroCopyPolicy(copied_streak=0)
    async with open_pool(max_bytes=pool_bytes, kernel=kernel, policy=policy) as pool:
        stream = await open_tcp_stream("127.0.0.1", job.port, pool=pool)
        async with stream:
            await stream.send_all(job.header)
            await _receive_exactly_async(stream.receive_some, len(READY))
            run = _Run(job)
            for image in run.images():
                # send_lease() is the loop's checkpoint: taking the lease need
                # not be a second one while the pool has room (schedule=False,
                # as the "tight send loops" recipe does).
                async with pool.lease(job.size, schedule=False) as lease:
                    lease.write(image)
                    await stream.send_lease(lease.seal())
            answer = await _receive_exactly_async(stream.receive_some, _answer_size(job))
            run.stop()
            sent = stream.statistics().sent
    total = sent.bytes_zerocopy + sent.bytes_kernel_copied + sent.bytes_copied
    return run.result(answer, sent.bytes_zerocopy / total if total else 0.0)


# -- asyncio ----------------------------------------------------------------------


async def _asyncio_connect(job: Job) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await loop.sock_connect(sock, ("127.0.0.1", job.port))
    await loop.sock_sendall(sock, job.header)
    await _receive_exactly_async(lambda n: loop.sock_recv(sock, n), len(READY))
    return sock


async def _asyncio_sendall(job: Job) -> Sent:
    loop = asyncio.get_running_loop()
    with await _asyncio_connect(job) as sock:
        buffer = bytearray(job.size)
        run = _Run(job)
        for image in run.images():
            buffer[:] = image
            await loop.sock_sendall(sock, buffer)
        answer = await _receive_exactly_async(lambda n: loop.sock_recv(sock, n), _answer_size(job))
        return run.result(answer, 0.0)


async def _asyncio_sendfile(job: Job) -> Sent:
    loop = asyncio.get_running_loop()
    fd, mapping = _memfd(job.size)
    try:
        with await _asyncio_connect(job) as sock, open(fd, "rb", buffering=0, closefd=False) as file:
            run = _Run(job)
            for image in run.images():
                mapping[:] = image  # the same race as sendfile-memfd
                await loop.sock_sendfile(sock, file, 0, job.size)
            answer = await _receive_exactly_async(lambda n: loop.sock_recv(sock, n), _answer_size(job))
            return run.result(answer, 1.0)
    finally:
        mapping.close()
        os.close(fd)


# -- dispatch ---------------------------------------------------------------------


def run_case(case: str, job: Job) -> Sent:
    """Run one *case* (a name from :data:`ALL_CASES`) on *job*, in this process."""
    if case in KERNEL_CASES:
        return trio.run(_trio_zc, job, case)
    if case == "blocking":
        return _blocking(job, bytearray(job.size))
    if case == "blocking-mmap":
        with mmap.mmap(-1, job.size) as mapping:
            return _blocking(job, mapping)
    if case == "sendfile-memfd":
        return _sendfile_memfd(job)
    if case == "trio-send_all":
        return trio.run(_trio_send_all, job)
    if case == "trio-floor":
        return trio.run(_trio_floor, job)
    if case == "asyncio-sendall":
        return asyncio.run(_asyncio_sendall(job))
    if case == "asyncio-sendfile":
        return asyncio.run(_asyncio_sendfile(job))
    raise ValueError(f"unknown case {case!r}; the cases are {', '.join(ALL_CASES)}")


def is_unsafe(case: str) -> bool:
    """Whether *case* reuses memory the kernel may still read (its corruption is expected)."""
    return case in _SENDFILE_BASELINES
