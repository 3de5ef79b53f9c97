"""One socket, two counters: MSG_ZEROCOPY on a socket someone else also sends zero-copy on.

The MSG_ZEROCOPY completion counter and error queue belong to the socket,
not to a descriptor. A stream assumes its counter starts at 0 and that the
error queue is its own. At b591049 neither was checked:

- Two ``ZeroCopyStream`` objects over duplicates of one connection's
  descriptor (``socket.dup()``, ``socket.fromfd()``) numbered their calls
  from 0 each, and each read the other's completion records: memory was
  released on the other stream's completion (while the kernel still read
  it), or never (counted as malformed, quarantined at close).
- A socket whose application had already made its own MSG_ZEROCOPY send
  (counter 0) before wrapping it: the stream's first call took counter 1 and
  its tracker expected 0, so its completion was refused as malformed, its
  lease was never freed, and the next acquire waited for ever.

Now a stream that finds ``SO_ZEROCOPY`` already on copies instead (and says
why in its statistics), and a stream that does not send zero-copy never
reads the error queue. Real MSG_ZEROCOPY over loopback (the mock has no
sockets to share); the receiver compares every byte.
"""

from __future__ import annotations

import os
import socket

import trio
import trio.testing

import trio_zc
from trio_zc._kernels._errqueue import MSG_ZEROCOPY, SO_ZEROCOPY

from ..streams import ALWAYS_ZC, pattern, receive_exactly, socket_pair

SIZE = 256 * 1024


async def test_two_streams_over_duplicates_of_one_connection_keep_every_image_intact() -> None:
    a, b = await socket_pair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the peer stalls soon
    a2 = trio.socket.from_stdlib_socket(socket.socket(fileno=os.dup(a.fileno())))
    first, second, third = pattern(SIZE, 1), pattern(SIZE, 2), pattern(SIZE, 3)
    # Room for two images: the third gets the memory of whichever came back first.
    async with trio_zc.open_pool(max_bytes=2 * SIZE, kernel="msg_zerocopy", policy=ALWAYS_ZC, drain_timeout=2) as pool:
        one = trio_zc.ZeroCopyStream(a, pool=pool)
        two = trio_zc.ZeroCopyStream(a2, pool=pool)
        peer = trio.SocketStream(b)
        got = bytearray()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    for stream, data in ((one, first), (two, second), (one, third)):
                        lease = await pool.acquire(SIZE)
                        lease.write(data)
                        sealed = lease.seal()
                        await stream.send_lease(sealed)
                        sealed.release()

                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                got += await receive_exactly(peer, SIZE)  # the first image: its completion comes now
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                got += await receive_exactly(peer, 2 * SIZE)
        assert bytes(got) == first + second + third
        await one.aclose()
        await two.aclose()
        await peer.aclose()
        sent = pool.statistics().sent
        assert sent.malformed_records == 0 and sent.quarantined_sends == 0, sent
        reasons = dict(two.statistics().fallbacks)
        assert any("SO_ZEROCOPY was already on" in reason for reason in reasons), reasons
    stats = pool.statistics()
    assert stats.quarantined_bytes == 0 and stats.free_bytes == stats.max_bytes


async def test_a_socket_with_zero_copy_sends_of_its_own_never_frees_a_lease_early_or_never() -> None:
    a, b = await socket_pair()
    a.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    # The application's own zero-copy send, before the stream exists: it
    # takes counter 0, and its completion waits on the error queue.
    await a.send(b"hello", MSG_ZEROCOPY)
    assert await b.recv(5) == b"hello"
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    first, second = pattern(SIZE, 4), pattern(SIZE, 5)
    # Room for one image: the second needs the first's memory back.
    async with trio_zc.open_pool(max_bytes=SIZE, kernel="msg_zerocopy", policy=ALWAYS_ZC, drain_timeout=2) as pool:
        stream = trio_zc.ZeroCopyStream(a, pool=pool)
        peer = trio.SocketStream(b)
        got = bytearray()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    for data in (first, second):
                        lease = await pool.acquire(SIZE)
                        lease.write(data)
                        sealed = lease.seal()
                        await stream.send_lease(sealed)
                        sealed.release()

                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                got += await receive_exactly(peer, 2 * SIZE)
        assert bytes(got) == first + second
        await stream.aclose()
        await peer.aclose()
        sent = pool.statistics().sent
        assert sent.malformed_records == 0 and sent.quarantined_sends == 0, sent
    assert pool.statistics().quarantined_bytes == 0
