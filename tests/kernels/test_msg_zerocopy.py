"""The msg_zerocopy kernel on the real Linux kernel (loopback TCP): send(MSG_ZEROCOPY) and its
completions from the error queue.

Its parser and tracker are tested without I/O in ``tests/sansio/test_errqueue.py`` and
``tests/sansio/test_completions.py``; what every kernel must do (faults, closing, cancellation)
runs on this one too, in the ``guarantees`` and ``api`` folders, parametrized by kernel.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import trio
import trio.testing

import trio_zc
from trio_zc import ZeroCopyPolicy, open_pool
from trio_zc._kernels._completion import CompletionChannel
from trio_zc._kernels._socket import SocketTransport

from ..guarantees.test_faults import ALWAYS_ZC, MASK, KiB, MiB, assert_whole, pattern, sealed_with
from ..streams import receive_exactly, stop_reading, stream_pair


async def test_loopback_copies_make_the_stream_switch_to_copying() -> None:
    policy = ZeroCopyPolicy(copied_streak=4)
    async with open_pool(max_bytes=8 * MiB, kernel="msg_zerocopy", policy=policy) as pool:
        a, b = await stream_pair(pool)
        async with a, b:
            sealed = await sealed_with(pool, os.urandom(64 * 1024))
            for _ in range(40):
                await a.send_lease(sealed)
                await receive_exactly(b, 64 * 1024)
                await trio.sleep(0.001)
                if not a.statistics().zerocopy_enabled:
                    break
            sealed.release()
            stats = a.statistics()
            assert not stats.zerocopy_enabled
            assert "copied 4 zero-copy sends in a row" in stats.fallbacks[0][0]
            assert stats.sent.bytes_kernel_copied >= 4 * 64 * 1024
            assert stats.sent.bytes_zerocopy == 0  # loopback never avoids the copy
        assert pool.statistics().sent.bytes_kernel_copied == stats.sent.bytes_kernel_copied


async def test_unix_sockets_never_try_zero_copy() -> None:
    async with open_pool(max_bytes=MiB, kernel="msg_zerocopy") as pool:
        left, right = trio.socket.socketpair()
        a = trio_zc.ZeroCopyStream(left, pool=pool)
        async with a:
            sealed = await sealed_with(pool, b"y" * 65536)
            await a.send_lease(sealed)
            sealed.release()
            got = b""
            with right:
                while len(got) < 65536:
                    got += await right.recv(65536)
            assert got == b"y" * 65536
            stats = a.statistics()
            assert not stats.zerocopy_enabled
            assert stats.fallbacks == (("not a TCP socket (family AF_UNIX)", 1),)
            assert stats.sent.zerocopy_calls == 0


async def test_completions_that_never_come_are_quarantined(monkeypatch: pytest.MonkeyPatch) -> None:
    # Make the forced close fail to bring the completions back, as if the
    # kernel had lost them.
    monkeypatch.setattr(SocketTransport, "abort", lambda self: None)
    monkeypatch.setattr("trio_zc._kernels._closing.ABORT_GRACE", 0.05)
    async with open_pool(max_bytes=64 * MiB, kernel="msg_zerocopy", policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        stop_reading(b)
        a._drain_timeout = 0.05
        sealed = await sealed_with(pool, os.urandom(8 * MiB))
        with trio.move_on_after(0.5):
            while True:
                await a.send_lease(sealed)
        sealed.release()
        with pytest.warns(trio_zc.QuarantineWarning, match="quarantined"):
            await a.aclose()
        stats = pool.statistics()
        assert stats.quarantined_leases == 1 and stats.quarantined_bytes == 8 * MiB
        assert stats.sent.quarantined_sends > 0
        assert stats.free_bytes == 56 * MiB  # withheld for good
        assert stats.sends_in_flight == 0
        await b.aclose()


async def test_msg_zerocopy_counter_continuity() -> None:
    sends, size = 3000, 20 * KiB
    async with open_pool(max_bytes=8 * MiB, kernel="msg_zerocopy", policy=ALWAYS_ZC) as pool:
        a, b = await stream_pair(pool)
        channel = a._channel
        assert isinstance(channel, CompletionChannel) and channel.tracker.next_counter == 0
        images = [pattern(700 + i, size) for i in range(8)]
        leases = [await sealed_with(pool, image) for image in images]
        expected = hashlib.sha256()
        for i in range(sends):
            expected.update(images[i % len(images)])
        received = hashlib.sha256()

        async def receive() -> None:
            left = sends * size
            while left:
                chunk = await b.receive_some(min(left, MiB))
                assert chunk
                received.update(chunk)
                left -= len(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for i in range(sends):
                await a.send_lease(leases[i % len(leases)])
        with trio.fail_after(10):
            while a.statistics().sends_in_flight:
                await trio.sleep(0.01)
        assert received.digest() == expected.digest()
        sent = a.statistics().sent
        # Every call the kernel numbered came back, and no range was refused:
        # the tracker's counter followed the kernel's all the way.
        assert sent.malformed_records == 0 and sent.quarantined_sends == 0
        assert sent.completions == sent.zerocopy_calls
        assert channel.tracker.next_counter == sent.zerocopy_calls & MASK
        assert channel.tracker.outstanding == 0
        assert sent.bytes_zerocopy + sent.bytes_kernel_copied + sent.bytes_copied == sends * size
        if sent.enobufs == 0:
            assert sent.zerocopy_calls >= sends and sent.bytes_copied == 0
        else:  # option memory ran out now and then; those sends were copied
            assert sent.zerocopy_calls >= sends // 2
        for lease in leases:
            lease.release()
        await a.aclose()
        await b.aclose()
        assert_whole(pool)
