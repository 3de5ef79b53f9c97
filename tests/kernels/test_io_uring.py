"""The io_uring kernel, its probe's fallbacks, and what "auto" picks."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool
from trio_zc._kernels._io_uring import IoUringKernel
from trio_zc._kernels._msg_zerocopy import MsgZeroCopyKernel
from trio_zc._kernels._ring import Probe, Ring, probe, probe_uncached

from ..streams import ALWAYS_ZC, receive_exactly, stop_reading, stream_pair

MiB = 1 << 20
REPO = pathlib.Path(__file__).resolve().parents[2]
BLOCKED_CHILD = REPO / "tests" / "children" / "io_uring_blocked.py"
HERE = probe()
needs_io_uring = pytest.mark.skipif(not (HERE.available and HERE.send_zc), reason=HERE.reason)


@needs_io_uring
async def test_auto_picks_io_uring_here_and_says_why() -> None:
    async with open_pool(max_bytes=8 * MiB) as pool:
        stats = pool.statistics()
        assert stats.kernel == "io_uring"
        assert stats.kernel_note is not None and stats.kernel_note.startswith("auto: io_uring: ")
        assert isinstance(pool._kernel, IoUringKernel) and pool._kernel.fixed


@needs_io_uring
async def test_registered_and_adopted_buffers_and_copied_reports() -> None:
    async with open_pool(max_bytes=8 * MiB, kernel="io_uring", policy=ZeroCopyPolicy(copied_streak=0)) as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            image = os.urandom(3 * MiB)
            frame = bytearray(os.urandom(MiB))
            text = b"read-only bytes " * 4096
            received: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    received.append(await receive_exactly(b, len(image) + len(frame) + len(text)))

                nursery.start_soon(receive)
                async with pool.lease(len(image)) as lease:
                    lease.write(image)
                    await a.send_lease(lease.seal())  # from the registered arena
                adopted = pool.adopt(frame)
                await a.send_lease(adopted)  # an ordinary SEND_ZC from the application's memory
                readonly = pool.adopt(text)
                await a.send_lease(readonly)
            assert received == [image + bytes(frame) + text]
            await adopted.wait_reusable()
            await readonly.wait_reusable()
            sent = a.statistics().sent
            assert sent.zerocopy_calls == sent.completions >= 3
            # REPORT_USAGE: loopback copies every send, and the kernel says so.
            assert sent.bytes_kernel_copied == len(image) + len(frame) + 65536
            assert sent.bytes_zerocopy == 0


@needs_io_uring
async def test_a_send_after_a_cancelled_one_waits_for_it() -> None:
    """A cancelled SEND_ZC goes on in the kernel: a send after it must not put its bytes in the middle.

    The channel raises a barrier when a send's wait is cancelled, and a
    later send, even a copy, waits for the kernel's result first.
    """
    async with open_pool(max_bytes=32 * MiB, kernel="io_uring", policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        assert isinstance(b, trio_zc.ZeroCopyStream)
        stop_reading(b)
        a._channel.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # type: ignore[attr-defined]
        async with a, b:
            image = os.urandom(12 * MiB)  # one request: within the first registered chunk
            header = b"after the image" * 100
            async with pool.lease(len(image)) as lease:
                lease.write(image)
                sealed = lease.seal()
                with trio.move_on_after(0.5) as scope:
                    await a.send_lease(sealed)  # the peer reads nothing: it cannot finish
                assert scope.cancelled_caught
            received = bytearray()
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    with trio.fail_after(60):  # generous: what arrives is what is checked
                        while chunk := await b.receive_some(1 << 20):
                            received.extend(chunk)

                nursery.start_soon(receive)
                await a.send_all(header)
                await a.send_eof()
            # The image's request went on to its end, then the header: nothing interleaved.
            assert bytes(received) == image + header


@needs_io_uring
async def test_sends_that_are_ready_together_are_submitted_together() -> None:
    async with open_pool(max_bytes=32 * MiB, kernel="io_uring", policy=ZeroCopyPolicy(copied_streak=0)) as pool:
        kernel = pool._kernel
        assert isinstance(kernel, IoUringKernel)
        pairs = [await stream_pair(pool) for _ in range(6)]
        image = os.urandom(256 * 1024)
        async with pool.lease(len(image)) as lease:
            lease.write(image)
            sealed = lease.seal()
            async with trio.open_nursery() as nursery:
                for a, b in pairs:
                    nursery.start_soon(a.send_lease, sealed)
                    nursery.start_soon(receive_exactly, b, len(image))
        assert kernel.submitted >= 6 and kernel.submit_calls < kernel.submitted
        for a, b in pairs:
            await a.aclose()
            await b.aclose()


@needs_io_uring
@pytest.mark.parametrize("refused", ["register_sparse_buffers", "update_buffers"])
async def test_registration_failure_falls_back_to_unregistered_sends(
    monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    """The buffer table, or a chunk of the arena, refused (ENOMEM): sends go unregistered."""

    def refuse(self: Ring, *args: object) -> None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(Ring, refused, refuse)
    async with open_pool(max_bytes=8 * MiB, kernel="io_uring", policy=ZeroCopyPolicy(copied_streak=0)) as pool:
        kernel = pool._kernel
        assert isinstance(kernel, IoUringKernel)
        assert kernel.fixed is (refused == "update_buffers")
        a, b = await stream_pair(pool)
        async with a, b:
            image = os.urandom(MiB)
            async with pool.lease(len(image)) as lease:
                lease.write(image)
                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(a.send_lease, lease.seal())
                        assert await receive_exactly(b, len(image)) == image
            assert a.statistics().sent.zerocopy_calls >= 1
        note = pool.statistics().kernel_note or ""
        assert note.startswith("io_uring: ")
        if refused == "update_buffers":
            assert kernel.refused_chunks == 1 and kernel.registered_bytes == 0
            assert "Registering 8 MiB of the pool's memory failed ([Errno 12]" in note
        else:
            assert "registering a buffer table failed" in note and "each send pins its own pages" in note


@pytest.mark.parametrize("kernel", ["auto", "io_uring"])
@pytest.mark.parametrize("blocked", [errno.EPERM, errno.ENOSYS])
def test_io_uring_blocked_by_seccomp_falls_back_cleanly(kernel: str, blocked: int) -> None:
    """A real seccomp filter in a child process, as a container's profile would set."""
    child = subprocess.run(
        [sys.executable, str(BLOCKED_CHILD), str(blocked), "pool", kernel],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["intact"] is True
    assert result["kernel"] == "msg_zerocopy"
    prefix = "auto: " if kernel == "auto" else ""
    assert result["note"].startswith(f"{prefix}msg_zerocopy, because io_uring is not usable: ")
    assert errno.errorcode[blocked] in result["note"]
    if kernel == "auto":
        # auto copies to a peer on loopback, where the kernel would copy anyway.
        assert result["sent"]["zerocopy_calls"] == 0 and result["sent"]["bytes_copied"] > 0
    else:
        assert result["sent"]["zerocopy_calls"] == result["sent"]["completions"] > 0


def test_io_uring_disabled_by_the_sysctl_falls_back() -> None:
    """``kernel.io_uring_disabled=2`` for a moment (root only), and back."""
    path = pathlib.Path("/proc/sys/kernel/io_uring_disabled")
    try:
        before = path.read_text()
        path.write_text("2")
    except OSError:
        pytest.skip("cannot set kernel.io_uring_disabled here (needs root)")
    try:
        found = probe_uncached()

        async def open_one() -> tuple[str, str | None]:
            probe.cache_clear()
            try:
                async with open_pool(max_bytes=MiB, kernel="auto") as pool:
                    return pool.statistics().kernel, pool.statistics().kernel_note
            finally:
                probe.cache_clear()

        kernel, note = trio.run(open_one)
    finally:
        path.write_text(before)
    assert not found.available and "io_uring_disabled" in found.reason
    assert kernel == "msg_zerocopy" and note is not None and "io_uring_disabled" in note


async def test_a_probe_that_finds_no_send_zc_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    old = Probe(False, "this kernel is too old for SEND_ZC (Linux 6.0)", False, False, False)
    monkeypatch.setattr("trio_zc._kernels._choice.probe", lambda: old)
    async with open_pool(max_bytes=MiB, kernel="io_uring") as pool:
        assert isinstance(pool._kernel, MsgZeroCopyKernel)
        assert pool.statistics().kernel_note == (
            "msg_zerocopy, because io_uring is not usable: this kernel is too old for SEND_ZC (Linux 6.0)"
        )


async def test_explicit_kernel_names() -> None:
    for name in ["copy", "msg_zerocopy", "sendfile"]:
        async with open_pool(max_bytes=MiB, kernel=name) as pool:
            assert pool.statistics().kernel == name
            assert pool.statistics().kernel_note is None
    with pytest.raises(ValueError, match="auto, copy, io_uring, msg_zerocopy, sendfile"):
        async with open_pool(max_bytes=MiB, kernel="uring"):
            pass
    assert trio_zc.open_pool  # the public name


async def test_auto_copies_to_loopback_peers_from_the_start() -> None:
    async with open_pool(max_bytes=8 * MiB) as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            image = os.urandom(MiB)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_exactly, b, len(image))
                async with pool.lease(len(image)) as lease:
                    lease.write(image)
                    await a.send_lease(lease.seal())
            stats = a.statistics()
            assert not stats.zerocopy_enabled and stats.sent.zerocopy_calls == 0
            assert stats.fallbacks == (
                ("the peer is on loopback, where Linux copies every zero-copy send anyway", 1),
            )
        # An explicit zero-copy kernel is taken at its word, even on loopback.
    async with open_pool(max_bytes=8 * MiB, kernel="msg_zerocopy") as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            assert a.statistics().zerocopy_enabled


@pytest.mark.parametrize("name", ["auto", "copy", "msg_zerocopy", "io_uring", "sendfile"])
async def test_pools_give_back_every_file_descriptor(name: str) -> None:
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        async with open_pool(max_bytes=MiB, kernel=name) as pool:
            a, b = await stream_pair(pool)
            async with a, b:
                async with pool.lease(100_000) as lease:
                    await a.send_lease(lease.seal())
                await receive_exactly(b, 100_000)
    with pytest.raises(ValueError):
        async with open_pool(max_bytes=MiB, kernel=name, drain_timeout=-1):
            pass
    assert set(os.listdir("/proc/self/fd")) == before


async def test_a_completion_for_no_request_is_counted_in_the_pool_statistics_and_releases_nothing() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="io_uring") as pool:
        if pool.statistics().kernel != "io_uring":
            pytest.skip(f"io_uring is not usable here: {pool.statistics().kernel_note}")
        kernel = pool._kernel
        lease = await pool.acquire(4096)
        free_before = pool.statistics().free_bytes
        # A real CQE from the kernel whose user_data names no send of ours.
        kernel.ring.prep_nop(0xDEAD_BEEF)
        kernel.ring.submit()
        with trio.fail_after(5):
            while pool.statistics().sent.malformed_records == 0:
                await trio.sleep(0.01)
        assert pool.statistics().sent.malformed_records == 1
        assert pool.statistics().free_bytes == free_before
        lease.release()


async def receive_into(stream: trio.abc.ReceiveStream, n: int, into: list[bytes]) -> None:
    into.append(await receive_exactly(stream, n))


def arena_allocated_bytes(pool: trio_zc.BufferPool) -> int:
    """Memory the pool's arena holds: the pages allocated to its memfd (each counted once)."""
    return os.fstat(pool._arena.fd).st_blocks * 512


def process_shmem_bytes() -> int:
    """RssShmem of this process (/proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem in /proc/self/status")


@needs_io_uring
@pytest.mark.parametrize("protect_sealed", [False, True])
async def test_an_idle_io_uring_pool_pins_nothing_and_registers_chunks_as_sends_use_them(
    protect_sealed: bool,
) -> None:
    """Registering pins (allocates) memory: only the 16 MiB chunks sends use are registered.

    Before, opening a 256 MiB io_uring pool registered the whole arena and so
    added 256 MiB of shared memory to the process, idle. (With
    *protect_sealed* the lease being sent is read-only, which registering
    from the arena's own mapping would refuse.)
    """
    chunk = 16 * MiB
    shmem_before = process_shmem_bytes()
    async with open_pool(
        max_bytes=256 * MiB,
        kernel="io_uring",
        policy=ZeroCopyPolicy(copied_streak=0),
        protect_sealed=protect_sealed,
    ) as pool:
        kernel = pool._kernel
        assert isinstance(kernel, IoUringKernel)
        # Idle: nothing registered, nothing allocated.
        assert arena_allocated_bytes(pool) < MiB
        assert process_shmem_bytes() - shmem_before < 8 * MiB
        assert kernel.fixed and kernel.chunk == chunk and kernel.registered_bytes == 0
        a, b = await stream_pair(pool)
        async with a, b:
            for expected_chunks in (1, 2):
                image = os.urandom(MiB)
                filler = None
                if expected_chunks == 2:
                    # The next lease lands in the arena's last chunk.
                    filler = await pool.acquire(pool.max_bytes - 2 * MiB)
                received: list[bytes] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive_into, b, len(image), received)
                    async with pool.lease(len(image)) as lease:
                        lease.write(image)
                        await a.send_lease(lease.seal())
                assert received == [image]
                if filler is not None:
                    filler.release()
                # The chunk holding the lease was registered, so allocated: no more.
                assert kernel.registered_bytes == expected_chunks * chunk
                assert kernel.refused_chunks == 0
                assert arena_allocated_bytes(pool) == expected_chunks * chunk
            sent = a.statistics().sent
            assert sent.zerocopy_calls == sent.completions >= 2
    assert process_shmem_bytes() - shmem_before < 8 * MiB


@needs_io_uring
async def test_a_request_whose_result_never_comes_does_not_hang_its_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the kernel lost a request: the entry is never handed over, so
    # neither its result nor its notification ever comes. Closing the stream
    # quarantines the send; the task waiting for its result must wake too.
    monkeypatch.setattr(IoUringKernel, "flush", lambda self: None)
    monkeypatch.setattr(IoUringKernel, "_submitter", lambda self: trio.sleep_forever())
    monkeypatch.setattr("trio_zc._kernels._closing.ABORT_GRACE", 0.05)
    always = ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)
    async with open_pool(max_bytes=8 * MiB, kernel="io_uring", policy=always) as pool:
        a, b = await stream_pair(pool)
        a._drain_timeout = 0.05
        outcome: list[BaseException] = []

        async def send() -> None:
            try:
                async with pool.lease(MiB) as lease:
                    await a.send_lease(lease.seal())
            except BaseException as exc:  # noqa: B036 - recorded for the test
                outcome.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                with pytest.warns(trio_zc.QuarantineWarning):
                    await a.aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], trio.BrokenResourceError), outcome
        assert pool.statistics().quarantined_leases == 1
        await b.aclose()


@needs_io_uring
async def test_io_uring_enter_short_of_resources_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    real_submit = Ring.submit
    failures = [errno.EAGAIN, errno.EBUSY]

    def submit(self: Ring, wait_for: int = 0) -> int:
        if failures:
            err = failures.pop(0)
            raise OSError(err, os.strerror(err))
        return real_submit(self, wait_for)

    monkeypatch.setattr(Ring, "submit", submit)
    always = ZeroCopyPolicy(min_zerocopy_bytes=0, copied_streak=0)
    async with open_pool(max_bytes=8 * MiB, kernel="io_uring", policy=always) as pool:
        a, b = await stream_pair(pool)
        image = os.urandom(MiB)
        async with trio.open_nursery() as nursery:
            async with pool.lease(MiB) as lease:
                lease.write(image)
                nursery.start_soon(a.send_lease, lease.seal())
                assert await receive_exactly(b, MiB) == image
        assert not failures
        await a.aclose()
        await b.aclose()
