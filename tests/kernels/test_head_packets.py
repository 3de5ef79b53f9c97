"""A response's head and body leave in one packet train, seen on the wire.

``send_lease(lease, head=...)`` promises one system call for head and body
on copy, MSG_ZEROCOPY and io_uring, and, on sendfile, the head sent with
``MSG_MORE`` so that it waits in the socket for the sendfile's bytes.
Counting system calls (tests/api/test_send_head.py) shows the first half;
this file looks at the packets themselves: a packet socket on the loopback
interface records every TCP segment the sending socket puts out, and no
segment may carry the head alone -- which is what a head sent on its own
(with ``TCP_NODELAY``, as Trio sets) does, as the control test shows.

Root only (a packet socket needs CAP_NET_RAW); only the loopback
interface, only segments from the test's own port.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest
import trio

import trio_zc

from ..streams import ALWAYS_ZC, KERNELS, pattern, receive_exactly, sealed_with, stream_pair

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ETH_HEADER = 14
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 13000\r\n\r\n"
BODY = 13_000
REAL = [name for name in KERNELS if name != "mock"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not hasattr(socket, "AF_PACKET"), reason="a packet socket needs root (CAP_NET_RAW)"
)


class Capture:
    """The TCP payload sizes of segments sent from one local port, in order, on ``lo``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("lo", 0))
        self.sock.setblocking(False)

    def payloads_from(self, port: int) -> list[int]:
        sizes = []
        for _ in range(100_000):  # bounded: the queue holds what the test sent, and other tests' traffic
            try:
                frame, address = self.sock.recvfrom(1 << 17)
            except BlockingIOError:
                break
            if address[2] != PACKET_OUTGOING:
                continue  # loopback shows each packet twice: sent, then received
            ip = frame[ETH_HEADER:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack_from("!H", ip, 2)[0]
            source_port = struct.unpack_from("!H", ip, ihl)[0]
            if source_port != port:
                continue
            data_offset = (ip[ihl + 12] >> 4) * 4
            payload = total - ihl - data_offset
            if payload:
                sizes.append(payload)
        return sizes

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def capture() -> Iterator[Capture]:
    c = Capture()
    yield c
    c.close()


def local_port(stream: trio_zc.ZeroCopyStream) -> int:
    address = stream.getsockname()
    assert isinstance(address, tuple)
    return int(address[1])


@pytest.mark.parametrize("zerocopy", [False, True], ids=["default-policy", "always-zerocopy"])
@pytest.mark.parametrize("name", REAL)
async def test_no_segment_carries_a_head_alone(name: str, zerocopy: bool, capture: Capture) -> None:
    # The default policy copies a 13 KB body on every kernel (one sendmsg of
    # head and body); with zero-copy for every send, each kernel's own way
    # runs: MSG_ZEROCOPY's and io_uring's one call, sendfile's MSG_MORE.
    body = pattern(BODY, 5)
    policy = ALWAYS_ZC if zerocopy else None
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=name, policy=policy) as pool:
        stream, peer = await stream_pair(pool)
        async with stream, peer:
            for _ in range(3):  # the first response and keep-alive ones after it
                sealed = await sealed_with(pool, body)
                await stream.send_lease(sealed, head=HEAD)
                assert await receive_exactly(peer, len(HEAD) + BODY) == HEAD + body
                sealed.release()
            sizes = capture.payloads_from(local_port(stream))
    assert sum(sizes) == 3 * (len(HEAD) + BODY), sizes
    # Not one segment of the head's size or less: each response's first
    # segment carries its head and the start of its body.
    assert all(size > len(HEAD) for size in sizes), sizes


async def test_the_check_sees_a_head_sent_on_its_own(capture: Capture) -> None:
    # The control: the head in its own send(), then the body by sendfile,
    # on a socket with TCP_NODELAY (Trio's default): the head leaves alone.
    body = pattern(BODY, 6)
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="sendfile", policy=ALWAYS_ZC) as pool:
        stream, peer = await stream_pair(pool)
        async with stream, peer:
            sealed = await sealed_with(pool, body)
            sock: socket.socket = stream._channel.transport.sock  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            with trio.fail_after(10):
                assert sock.send(HEAD) == len(HEAD)  # an empty socket takes it whole
                await stream.send_lease(sealed)
                assert await receive_exactly(peer, len(HEAD) + BODY) == HEAD + body
            sealed.release()
            sizes = capture.payloads_from(local_port(stream))
    assert sizes and sizes[0] == len(HEAD), sizes
