"""The socket a stream sends through: :class:`SocketTransport` and its helpers.

Every real kernel (copy, msg_zerocopy, io_uring, sendfile) sends on a
connected stream socket that its channel owns; this module owns the socket
operations they share, so that each is written once: taking the socket out
of a Trio stream, sending and receiving without blocking, resetting the
connection while keeping the socket open, and closing it so that its
descriptor number is never used again (rule 4 of :mod:`._base`).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
from typing import Final

import trio

from .._libc import function
from ._base import Transport

_connect = function("connect", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32])
_AF_UNSPEC_ADDR: Final = struct.pack("=H14x", socket.AF_UNSPEC)

#: ``MSG_MORE``: more data follows at once; hold back a partial packet.
_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0x8000)
#: ``TCP_NOTSENT_LOWAT`` where Python knows it.
_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)
#: The most bytes a copying stream made from a trio.SocketStream lets the
#: kernel hold unsent (trio's own setting is 16 KiB).
NOTSENT_LOWAT: Final = 1 << 20


def take_socket(transport: object) -> socket.socket:
    """Take the OS socket out of a Trio SocketStream or Trio socket (which is then detached)."""
    if isinstance(transport, trio.SocketStream):
        transport = transport.socket
    if isinstance(transport, socket.socket):
        raise TypeError(
            "ZeroCopyStream wraps a Trio socket, not a standard-library socket.socket;"
            " convert it with trio.socket.from_stdlib_socket()"
        )
    if not isinstance(transport, trio.socket.SocketType):
        raise TypeError(
            "ZeroCopyStream wraps a trio.SocketStream or a Trio socket,"
            f" not {type(transport).__name__}"
        )
    if transport.type != socket.SOCK_STREAM:
        raise ValueError("ZeroCopyStream needs a SOCK_STREAM socket")
    if transport.fileno() == -1:
        raise trio.ClosedResourceError("the socket is already closed")
    family = transport.family
    # Detach so that exactly one object owns (and closes) the descriptor.
    sock = socket.socket(family, socket.SOCK_STREAM, fileno=transport.detach())
    if family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not fatal
            pass
    return sock


def local_peer(sock: socket.socket) -> str | None:
    """Why zero-copy cannot win to this socket's peer, if the peer is loopback."""
    try:
        host = sock.getpeername()[0]
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except (OSError, ValueError, IndexError, TypeError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "the peer is on loopback, where Linux copies every zero-copy send anyway"
    return None


def not_tcp(sock: socket.socket) -> str | None:
    """Why zero-copy cannot be used on *sock* because it is not TCP, or None."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return f"not a TCP socket (family {sock.family.name})"
    return None


def abort_connection(sock: socket.socket) -> None:
    """Reset *sock*'s TCP connection but keep the socket open.

    ``connect(AF_UNSPEC)`` makes Linux drop the queued data and send a reset,
    and Linux reports the zero-copy sends it dropped as complete -- which it
    could not do for a closed socket.

    It takes the socket object, never a bare descriptor number, and does
    nothing once the socket is closed: by then the number may belong to
    another connection, which a reset through it would break.
    """
    fd = sock.fileno()
    if fd < 0:
        return
    if _connect(fd, _AF_UNSPEC_ADDR, len(_AF_UNSPEC_ADDR)) != 0:
        err = ctypes.get_errno()
        if err not in (errno.ENOTCONN, errno.EBADF):  # pragma: no cover - defensive
            raise OSError(err, f"aborting the connection failed: {errno.errorcode.get(err)}")


class SocketTransport(Transport):
    """A connected, non-blocking stream socket that a channel owns."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        #: The descriptor number, for system calls that take one (sendfile,
        #: io_uring); valid only while the transport is open.
        self.fd = sock.fileno()

    def send(self, data: memoryview) -> int:
        return self.sock.send(data)

    def send_with_head(self, head: memoryview, data: memoryview) -> int:
        return self.sock.sendmsg((head, data))

    def send_more(self, data: memoryview) -> int:
        """:meth:`send` with ``MSG_MORE``: what follows at once fills the same packets."""
        return self.sock.send(data, _MSG_MORE)

    def sendfile(self, in_fd: int, offset: int, count: int) -> int:
        """One non-blocking ``sendfile`` of *count* bytes of *in_fd* from *offset*: bytes sent."""
        return os.sendfile(self.fd, in_fd, offset, count)

    def recv(self, max_bytes: int) -> bytes:
        return self.sock.recv(max_bytes)

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        if not self.closed:
            abort_connection(self.sock)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def let_more_unsent(self) -> None:
        """Let a copying stream queue more unsent bytes than trio.SocketStream's 16 KiB.

        Trio caps the bytes queued but not yet sent (TCP_NOTSENT_LOWAT) at 16
        KiB, which keeps interactive protocols responsive but makes a large
        send go out in many short calls, each with a wait for the socket to
        become writable again: it cost about a quarter of the throughput at
        1-16 MiB on loopback (see docs/benchmarks.rst). 1 MiB gave most of
        what no cap at all gave. Only for streams that always copy: the
        unsent bytes of a zero-copy send are pool memory, and a peer that
        stops reading would keep that much of it per connection.
        """
        if _NOTSENT_LOWAT is None or not_tcp(self.sock) is not None:
            return
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, NOTSENT_LOWAT)
        except OSError:  # pragma: no cover - not fatal
            pass

    def sockname(self) -> object:
        self.check_open()
        return self.sock.getsockname()

    def peername(self) -> object:
        self.check_open()
        return self.sock.getpeername()


def socket_of(transport: Transport, kernel: str) -> SocketTransport:
    """*transport* as a socket, for a kernel that sends on sockets; TypeError (closing it) otherwise."""
    if isinstance(transport, SocketTransport):
        return transport
    transport.close()
    raise TypeError(f"the {kernel} kernel sends on sockets, not on {type(transport).__name__}")
