"""A forked child touches nothing of its parent's: not its connections, not its locks.

Rule 8 of the life cycle covered the pools and lease handles a child
inherits, but not two other things it inherits:

- The parent's *streams*. The child shares each connection with the
  parent -- and with it the socket's error queue (the parent's
  MSG_ZEROCOPY completions), the kernel's epoll or io_uring ring, and the
  connection itself. At b591049 a child that did what well-behaved forked
  workers do, closing what it inherited (``await stream.aclose()``), waited
  for the parent's sends, read (stole) their completions from the shared
  error queue and then reset the parent's connection with
  ``connect(AF_UNSPEC)``: the parent's client got a reset in the middle of an
  image and the parent's memory was quarantined for good. ``send_eof()``
  half-closed the parent's connection, ``send_all()`` put the child's bytes
  into the parent's byte stream. Now every use of an inherited stream in the
  child raises :class:`trio.ClosedResourceError`, and ``aclose()`` closes
  only the child's descriptor.
- Lease *locks* held by a parent's thread at the moment of the fork (a
  ``write()`` in progress in a worker). That thread does not exist in the
  child, so the lock stayed held: at b591049 the child's ``write()`` or
  ``view()`` of the lease hung for ever instead of raising
  :class:`~trio_zc.StaleLeaseError`. The child's copies get fresh locks.

The child runs in a process forked from a worker thread (the only way it can
start a Trio run of its own), reports through a pipe and leaves with
``os._exit``. A child that hangs is ended by ``SIGALRM``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..streams import ALWAYS_ZC, KERNELS, kernel, pattern, receive_exactly, stop_reading, stream_pair
from .test_threads import PAUSES, PausedWrite, wait_for

SIZE = 256 * 1024
#: The longest a child may take before SIGALRM ends it (a hang).
CHILD_SECONDS = 10


def _fork(child: Callable[[], dict[str, str]]) -> tuple[int, int]:
    """Fork (from the calling thread); the child runs *child* and writes its report to a pipe."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a multi-threaded process.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        signal.alarm(CHILD_SECONDS)
        # A Trio run started in the child finds the signal wakeup fd that the
        # parent's run set (it is process-wide), and warns about it.
        warnings.filterwarnings("ignore", "It looks like Trio's signal handling", RuntimeWarning)
        try:
            os.close(read_end)
            report = child()
            os.write(write_end, json.dumps(report).encode())
        except BaseException as exc:  # noqa: B036 - reported, whatever it is
            os.write(write_end, json.dumps({"child": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


async def _reap(pid: int, read_end: int) -> tuple[int, dict[str, str]]:
    """Wait for the child without blocking the Trio thread: its exit code and report."""
    with trio.fail_after(CHILD_SECONDS + 10):
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            await trio.sleep(0.02)
    with os.fdopen(read_end, "rb") as f:
        text = f.read()
    return os.waitstatus_to_exitcode(status), (json.loads(text) if text else {})


def _attempts(stream: trio_zc.ZeroCopyStream) -> dict[str, str]:
    """In the child: try every use of the inherited stream, then close it; what each did."""

    async def main() -> dict[str, str]:
        report: dict[str, str] = {}

        async def receive() -> None:
            with trio.move_on_after(1):  # at b591049 this waited, draining the error queue
                await stream.receive_some(16)

        attempts: dict[str, Callable[[], Any]] = {
            "send_all": lambda: stream.send_all(b"the child's bytes"),
            "receive_some": receive,
            "wait_send_all_might_not_block": stream.wait_send_all_might_not_block,
            "send_eof": stream.send_eof,
            "aclose": stream.aclose,
        }
        for what, attempt in attempts.items():
            try:
                await attempt()
                report[what] = "ok"
            except BaseException as exc:  # noqa: B036 - reported
                report[what] = f"{type(exc).__name__}: {exc}"
        return report

    return trio.run(main)


@pytest.mark.parametrize("name", KERNELS)
async def test_a_forked_child_cannot_use_or_break_its_parents_stream(name: str) -> None:
    first, second = pattern(SIZE, 1), pattern(SIZE, 2)
    async with trio_zc.open_pool(
        max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC, drain_timeout=1
    ) as pool:
        stream, peer = await stream_pair(pool)
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.hold_transmission()
        else:
            stop_reading(peer)
        sealed = await pool.acquire(SIZE)
        sealed.write(first)
        image = sealed.seal()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, image)  # in flight, or waiting, at the fork
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            pid, read_end = await trio.to_thread.run_sync(_fork, lambda: _attempts(stream))
            code, report = await _reap(pid, read_end)
            if isinstance(peer, trio_zc.testing.MockPeer):
                peer.transmit()
            got = await receive_exactly(peer, SIZE)
        assert code == 0 and "child" not in report, (code, report)
        for what in ("send_all", "receive_some", "wait_send_all_might_not_block", "send_eof"):
            assert report[what].startswith("ClosedResourceError") and "forked" in report[what], report
        assert report["aclose"] == "ok", report
        # The parent's connection is whole: the first image arrived intact,
        # and a second one goes the same way.
        assert got == first
        again = await pool.acquire(SIZE)
        again.write(second)
        image2 = again.seal()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, image2)
            assert await receive_exactly(peer, SIZE) == second
        image.release()
        image2.release()
        await stream.aclose()
        await peer.aclose()
        stats = pool.statistics()
        assert stats.sent.quarantined_sends == 0 and stats.sent.malformed_records == 0, stats.sent
    assert stats.quarantined_bytes == 0


@pytest.mark.parametrize("how", PAUSES)
async def test_a_write_in_progress_at_the_fork_cannot_hang_the_child(how: str) -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        lease = await pool.acquire(SIZE)
        paused = PausedWrite(lease, pattern(SIZE, 3), how)  # holds the lease's lock until told

        def in_child() -> dict[str, str]:
            report = {}
            attempts: dict[str, Callable[[], object]] = {
                "write": lambda: lease.write(b"c" * 16),
                "view": lease.view,
                "ndarray": lambda: lease.ndarray((16,)),
            }
            for what, attempt in attempts.items():
                try:
                    attempt()
                    report[what] = "ok"
                except BaseException as exc:  # noqa: B036 - reported
                    report[what] = f"{type(exc).__name__}: {exc}"
            return report

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, paused.run)
            await wait_for(paused.at_copy)
            try:
                pid, read_end = _fork(in_child)
                code, report = await _reap(pid, read_end)
            finally:
                paused.go_on.set()
        assert code == 0, f"the child did not finish (exit code {code}): it hung on the lease's lock"
        for what in ("write", "view", "ndarray"):
            assert report[what].startswith("StaleLeaseError") and "forked" in report[what], report
        # The parent's write went on, untouched.
        assert paused.outcome == "wrote"
        sealed = lease.seal()
        assert bytes(sealed.view()) == pattern(SIZE, 3)
        sealed.release()


@pytest.mark.parametrize("name", [k for k in KERNELS if k != "mock"])
async def test_a_child_forked_from_a_worker_opens_its_own_pool_and_sends_intact(name: str) -> None:
    # While the parent has a send in flight on its own pool and connection.
    mine, childs = pattern(SIZE, 4), pattern(SIZE, 5)
    async with trio_zc.open_pool(max_bytes=4 * SIZE, kernel=kernel(name), policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        stop_reading(peer)
        lease = await pool.acquire(SIZE)
        lease.write(mine)
        sealed = lease.seal()
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def in_child() -> dict[str, str]:
            async def main() -> dict[str, str]:
                async with trio_zc.open_pool(max_bytes=2 * SIZE, kernel=name, policy=ALWAYS_ZC) as own:
                    out = await trio_zc.open_tcp_stream("127.0.0.1", port, pool=own)
                    child_lease = await own.acquire(SIZE)
                    child_lease.write(childs)
                    child_sealed = child_lease.seal()
                    await out.send_lease(child_sealed)
                    child_sealed.release()
                    await out.aclose()
                    return {"kernel": own.statistics().kernel}

            return trio.run(main)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_lease, sealed)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            pid, read_end = await trio.to_thread.run_sync(_fork, in_child)
            with trio.fail_after(15):
                conn, _ = await listener.accept()
            received = trio.SocketStream(conn)
            got_childs = await receive_exactly(received, SIZE)
            code, report = await _reap(pid, read_end)
            got_mine = await receive_exactly(peer, SIZE)
        await received.aclose()
        listener.close()
        assert code == 0 and "kernel" in report, (code, report)
        assert got_childs == childs
        assert got_mine == mine
        sealed.release()
        await stream.aclose()
        await peer.aclose()
