"""The sendfile kernel: the race it exists for, for real, and its cure."""

from __future__ import annotations

import os
import select
import pathlib
import socket

import pytest
import trio
import trio.testing

from trio_zc import open_pool
from trio_zc._kernels._sendfile import SendfileKernel
from trio_zc._kernels._thp import THP_DIR, shmem_folios

from ..streams import receive_exactly, stream_pair

KiB = 1024
MiB = 1 << 20
SO_RCVBUFFORCE = 33


def big_receive_buffer(sock: socket.socket, size: int = 4 * MiB) -> None:
    """Let a paused reader's socket hold several images (root may exceed rmem_max)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "EOF"
        buf += chunk
    return bytes(buf)


def test_the_race_is_real_sendfile_then_overwrite_sends_the_new_bytes() -> None:
    """Without the library: sendfile, overwrite the memory in place, then let the reader read."""
    size = 256 * KiB
    fd = os.memfd_create("race")
    client, server = loopback_pair()
    try:
        big_receive_buffer(server)
        os.write(fd, b"A" * size)
        # The reader is paused: the bytes sit in socket buffers, by reference.
        # sendfile may take them in more than one call while the buffers grow.
        sent = 0
        for _ in range(1000):  # bounded; each call moves a buffer's worth
            if sent == size:
                break
            _, writable, _ = select.select([], [client], [], 10)
            assert writable, f"the socket buffers took only {sent} of {size} bytes"
            sent += os.sendfile(client.fileno(), fd, sent, size - sent)
        assert sent == size
        os.pwrite(fd, b"B" * size, 0)  # "reuse the buffer" right after sendfile returned
        received = recv_exactly(server, size)
    finally:
        os.close(fd)
        client.close()
        server.close()
    # The client got (at least some of) the new bytes: sendfile did not copy.
    assert b"B" in received


async def test_through_the_library_reused_memory_never_changes_what_was_sent() -> None:
    size = 256 * KiB
    # A pool of exactly one image: every lease reuses the same memory.
    async with open_pool(max_bytes=size, kernel="sendfile") as pool:
        a, b = await stream_pair(pool, family=socket.AF_INET)
        async with a, b:
            big_receive_buffer(b._channel.transport.sock)  # type: ignore[union-attr]
            for round_ in range(20):
                first, second = bytes([65 + round_ % 26]) * size, bytes([97 + round_ % 26]) * size
                async with pool.lease(size) as lease:
                    lease.write(first)
                    await a.send_lease(lease.seal())
                # The reader has not read a byte; the memory is handed out at once.
                async with pool.lease(size) as lease:
                    lease.write(second)
                    await a.send_lease(lease.seal())
                got = await receive_exactly(b, 2 * size)
                assert got[:size] == first, f"round {round_}: the first image changed in flight"
                assert got[size:] == second
            stats = a.statistics()
            assert stats.sent.bytes_zerocopy == 40 * size and stats.sent.bytes_copied == 0
            assert pool.statistics().leases_total == 40


async def test_sendfile_releases_at_once_and_a_cancelled_send_is_still_safe() -> None:
    size = 8 * MiB
    async with open_pool(max_bytes=size, kernel="sendfile") as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            original = os.urandom(size)
            async with pool.lease(size) as lease:
                lease.write(original)
                sealed = lease.seal()
                with trio.move_on_after(0.3) as scope:
                    await a.send_lease(sealed)  # the reader reads nothing: blocks
                assert scope.cancelled_caught
            # No completions to wait for: the memory is back, replaced.
            assert pool.statistics().free_bytes == size
            async with pool.lease(size) as lease:
                lease.write(b"\xff" * size)  # overwrite what is still in flight
                lease.seal()
            got = bytearray()
            with trio.move_on_after(1):
                while True:
                    got += await b.receive_some(MiB)
            assert 0 < len(got) < size and original.startswith(got)


async def test_adopted_buffers_are_copied() -> None:
    async with open_pool(max_bytes=MiB, kernel="sendfile") as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            frame = bytearray(os.urandom(100 * KiB))
            sealed = pool.adopt(frame)
            await a.send_lease(sealed)
            await sealed.wait_reusable()
            assert await receive_exactly(b, len(frame)) == frame
            assert a.statistics().sent.bytes_copied == len(frame)


async def test_the_pool_uses_base_pages_with_the_default_settings() -> None:
    async with open_pool(max_bytes=MiB, kernel="sendfile") as pool:
        stats = pool.statistics()
        assert stats.kernel == "sendfile"
        if shmem_folios().largest == 4096:
            assert stats.page_size == 4096 and stats.kernel_note is None


def fake_thp(tmp_path: pathlib.Path, global_setting: str, per_size: dict[int, str]) -> pathlib.Path:
    (tmp_path / "shmem_enabled").write_text(
        " ".join(f"[{s}]" if s == global_setting else s for s in
                 ["always", "within_size", "advise", "never", "deny", "force"]) + "\n"
    )
    (tmp_path / "hpage_pmd_size").write_text("2097152\n")
    for kib, setting in per_size.items():
        d = tmp_path / f"hugepages-{kib}kB"
        d.mkdir()
        d.joinpath("shmem_enabled").write_text(
            " ".join(f"[{s}]" if s == setting else s for s in
                     ["always", "inherit", "within_size", "advise", "never"]) + "\n"
        )
    return tmp_path


@pytest.mark.parametrize(
    ("global_setting", "per_size", "largest"),
    [
        ("never", {2048: "inherit", 64: "never"}, 4096),
        ("advise", {2048: "inherit"}, 4096),  # the arena never asks for huge pages
        ("always", {2048: "inherit", 64: "never"}, 2 * MiB),
        ("within_size", {2048: "inherit"}, 2 * MiB),
        ("never", {2048: "inherit", 64: "always", 16: "within_size"}, 64 * KiB),
        ("force", {2048: "never", 64: "never"}, 2 * MiB),
        ("deny", {2048: "always", 64: "always"}, 4096),
        ("always", {}, 2 * MiB),  # before per-size settings existed
    ],
)
def test_largest_shmem_folio_from_the_settings(
    tmp_path: pathlib.Path, global_setting: str, per_size: dict[int, str], largest: int
) -> None:
    folios = shmem_folios(fake_thp(tmp_path, global_setting, per_size))
    assert folios.largest == largest, folios.reason


def test_no_thp_in_the_kernel_means_base_pages(tmp_path: pathlib.Path) -> None:
    assert shmem_folios(tmp_path / "missing").largest == 4096


@pytest.fixture
def shmem_thp_always() -> object:
    """Turn shared-memory THP on for the test (root only), and back afterwards."""
    path = THP_DIR / "shmem_enabled"
    try:
        before = path.read_text()
        selected = before[before.index("[") + 1 : before.index("]")]
        path.write_text("always")
    except (OSError, ValueError):
        pytest.skip("cannot change shmem_enabled here (needs root and sysfs)")
    try:
        yield
    finally:
        path.write_text(selected)


@pytest.mark.usefixtures("shmem_thp_always")
async def test_with_huge_pages_on_leases_are_aligned_to_whole_folios() -> None:
    kernel = SendfileKernel()
    assert kernel.allocation_granule() == 2 * MiB
    assert kernel.note is not None and "aligned to 2048 KiB" in kernel.note
    async with open_pool(max_bytes=8 * MiB, kernel=kernel) as pool:
        stats = pool.statistics()
        assert stats.page_size == 2 * MiB and stats.kernel_note == kernel.note
        leases = [pool.acquire_nowait(100 * KiB) for _ in range(4)]
        with pytest.raises(trio.WouldBlock):
            pool.acquire_nowait(1)  # each small lease takes a whole 2 MiB folio
        for lease in leases:
            lease.release()
        # The race test's guarantee holds with huge folios too.
        a, b = await stream_pair(pool)
        async with a, b:
            size = 1 * MiB
            for round_ in range(5):
                first = bytes([65 + round_]) * size
                async with pool.lease(size) as lease:
                    lease.write(first)
                    await a.send_lease(lease.seal())
                async with pool.lease(size) as lease:
                    lease.write(b"z" * size)
                    lease.seal()
                assert await receive_exactly(b, size) == first
    with pytest.raises(ValueError, match="allocation unit"):
        async with open_pool(max_bytes=MiB, kernel=SendfileKernel()):
            pass
