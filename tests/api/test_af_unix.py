"""Streams over AF_UNIX (socketpair): what each kernel does, and that sendfile stays safe there (issue 17).

msg_zerocopy and io_uring zero-copy only over TCP, so on a Unix-domain
socket their streams (and auto's) copy. The sendfile kernel does not look at
the socket's family: sendfile into an AF_UNIX socket hands the socket
references to the memfd's pages, as into TCP, so rewriting those pages
before the reader reads changes what it reads. Its page replacement (the
sent range is punched out of the memfd when the lease comes back) must keep
the bytes that were sent -- tested here for real.
"""

from __future__ import annotations

import os
import select
import socket

import pytest
import trio

import trio_zc
from trio_zc._arena import Arena

from ..streams import receive_exactly

KiB = 1024
SO_SNDBUFFORCE = 32


def roomy(sock: socket.socket, size: int = 4 << 20) -> None:
    """Let *sock* hold a whole image unread (an AF_UNIX stream's bytes count against the sender's buffer)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def test_sendfile_into_an_af_unix_socket_sends_by_reference() -> None:
    """Without the library: sendfile, overwrite the file in place, then read: the new bytes arrive."""
    size = 64 * KiB
    fd = os.memfd_create("af_unix_race")
    a, b = socket.socketpair()
    try:
        roomy(a)
        os.write(fd, b"A" * size)
        sent = 0
        for _ in range(1000):  # bounded
            if sent == size:
                break
            _, writable, _ = select.select([], [a], [], 10)
            assert writable, f"the socket took only {sent} of {size} bytes"
            sent += os.sendfile(a.fileno(), fd, sent, size - sent)
        assert sent == size
        os.pwrite(fd, b"B" * size, 0)
        got = bytearray()
        while len(got) < size:
            chunk = b.recv(size - len(got))
            assert chunk
            got += chunk
    finally:
        os.close(fd)
        a.close()
        b.close()
    assert b"B" in got  # the socket held the pages, not a copy


async def send_then_rewrite(pool: trio_zc.BufferPool, size: int, rounds: int) -> list[tuple[bytes, bytes]]:
    """Send a lease over a socketpair, release it, rewrite its memory through a new lease, then read.

    Returns (sent, received) for each round.
    """
    a, b = trio.socket.socketpair()
    roomy(a)  # type: ignore[arg-type]
    sender = trio_zc.ZeroCopyStream(a, pool=pool)
    receiver = trio_zc.ZeroCopyStream(b, pool=pool)
    out = []
    async with sender, receiver:
        for round_ in range(rounds):
            original = bytes([65 + round_ % 26]) * size
            async with pool.lease(size) as lease:
                lease.write(original)
                await sender.send_lease(lease.seal())
            # At once, before the reader read a byte: the pool's only memory again.
            async with pool.lease(size) as lease:
                assert pool.statistics().free_bytes == 0
                lease.write(b"z" * size)
                lease.seal()
            out.append((original, await receive_exactly(receiver, size)))
        stats = sender.statistics()
    assert stats.sent.bytes_zerocopy == rounds * size and stats.sent.bytes_copied == 0, stats
    return out


async def test_the_sendfile_kernel_over_af_unix_keeps_the_bytes_it_sent() -> None:
    size = 64 * KiB
    async with trio_zc.open_pool(max_bytes=size, kernel="sendfile") as pool:
        if pool.statistics().page_size > size:  # pragma: no cover - huge folios forced by the settings
            pytest.skip("shmem THP makes the allocation unit larger than this test's pool")
        for sent, received in await send_then_rewrite(pool, size, rounds=10):
            assert received == sent


async def test_without_page_replacement_the_same_sequence_sends_the_new_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above can fail: with the punch turned off, the reader gets the rewritten bytes."""
    monkeypatch.setattr(Arena, "punch", lambda self, offset, length: None)
    size = 64 * KiB
    async with trio_zc.open_pool(max_bytes=size, kernel="sendfile") as pool:
        if pool.statistics().page_size > size:  # pragma: no cover - huge folios forced by the settings
            pytest.skip("shmem THP makes the allocation unit larger than this test's pool")
        results = await send_then_rewrite(pool, size, rounds=3)
    assert any(b"z" in received for _, received in results)


@pytest.mark.parametrize("kernel", ["copy", "msg_zerocopy", "io_uring", "auto", "sendfile"])
async def test_what_each_kernel_does_over_af_unix(kernel: str) -> None:
    size = 300 * KiB  # more than a socket buffer: the sends wait for the reader
    data = os.urandom(size)
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel) as pool:
        a, b = trio.socket.socketpair()
        sender = trio_zc.ZeroCopyStream(a, pool=pool)
        receiver = trio_zc.ZeroCopyStream(b, pool=pool)
        async with sender, receiver:
            got = []
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    got.append(await receive_exactly(receiver, size))

                nursery.start_soon(read)
                async with pool.lease(size) as lease:
                    lease.write(data)
                    await sender.send_lease(lease.seal())
            assert got == [data]
            stats = sender.statistics()
    if kernel == "sendfile":
        assert stats.zerocopy_enabled and stats.sent.bytes_zerocopy == size and stats.sent.bytes_copied == 0
    else:
        assert not stats.zerocopy_enabled and stats.sent.bytes_copied == size and stats.sent.bytes_zerocopy == 0
        reasons = dict(stats.fallbacks)
        assert reasons == ({"the pool's kernel is 'copy'": 1} if kernel == "copy"
                           else {"not a TCP socket (family AF_UNIX)": 1}), reasons
