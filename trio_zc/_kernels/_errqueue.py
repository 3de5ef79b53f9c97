"""Reading a socket's error queue: control messages to records, with no I/O.

Rules
=====

1. Only a record the kernel could have written becomes a
   :class:`ZeroCopyCompletion`. Anything else (an unexpected level or type,
   a short buffer, a zero-copy record with an errno or nonzero reserved
   fields) raises :class:`MalformedRecordError` instead of being guessed at.
   A wrong guess here would release memory the kernel may still be reading.
2. An ordinary socket error that shares the queue (an ICMP error, a
   timestamp) is returned as a :class:`QueuedSocketError`, not raised and
   not dropped: the caller decides what it means for the connection.
3. The parser never sees a socket. The caller runs
   ``recvmsg(0, bufsize, MSG_ERRQUEUE | MSG_DONTWAIT)`` and hands over the
   ancillary data, so everything here can be tested without a kernel.

Theory of operation
===================

Each message on the error queue carries one ``struct sock_extended_err``,
in a control message of level ``SOL_IP`` and type ``IP_RECVERR`` on IPv4
sockets, or ``SOL_IPV6``/``IPV6_RECVERR`` on IPv6 sockets. Its first 16
bytes are ``(ee_errno u32, ee_origin u8, ee_type u8, ee_code u8, ee_pad u8,
ee_info u32, ee_data u32)`` in host byte order; the offender's address
follows and is of no use for completions. A zero-copy completion has origin
:data:`SO_EE_ORIGIN_ZEROCOPY` and errno 0; ``ee_info`` and ``ee_data`` are
the first and last counter values of the finished send calls (an inclusive
range that may wrap), and ``ee_code`` has :data:`SO_EE_CODE_ZEROCOPY_COPIED`
set if the kernel copied the data after all.

What the kernel sends (observed on Linux 6.18 over loopback TCP, and UDP
for IPv6): an ``AF_INET`` socket gets ``(SOL_IP, IP_RECVERR)`` with 32 bytes
of data (16 of header, a zeroed ``sockaddr_in``); an ``AF_INET6`` socket gets
``(SOL_IPV6, IPV6_RECVERR)`` with 44 bytes (a zeroed ``sockaddr_in6``), and
so does an ``AF_INET6`` socket connected to an IPv4-mapped address
(``::ffff:127.0.0.1``). The level follows the socket's family, not the
peer's, so both pairs are accepted for every socket.
:func:`pack_zerocopy_record` builds records of exactly these shapes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, NamedTuple

import attrs

from .._mypyc import mypyc_attr

__all__ = [
    "IPV6_RECVERR",
    "IP_RECVERR",
    "MSG_ZEROCOPY",
    "SOL_IP",
    "SOL_IPV6",
    "SO_EE_CODE_ZEROCOPY_COPIED",
    "SO_EE_ORIGIN_ICMP",
    "SO_EE_ORIGIN_ICMP6",
    "SO_EE_ORIGIN_LOCAL",
    "SO_EE_ORIGIN_NONE",
    "SO_EE_ORIGIN_TXSTATUS",
    "SO_EE_ORIGIN_TXTIME",
    "SO_EE_ORIGIN_ZEROCOPY",
    "SO_ZEROCOPY",
    "MalformedRecordError",
    "QueuedSocketError",
    "ZeroCopyCompletion",
    "pack_zerocopy_record",
    "parse_ancdata",
    "parse_cmsg",
]

# Python's socket module lacks several of these, and which ones it has
# depends on the Python version, so all are defined here (values from the
# kernel's uapi headers; Linux only).

#: ``setsockopt(SOL_SOCKET, SO_ZEROCOPY, 1)`` opts a socket in.
SO_ZEROCOPY: Final = 60
#: The send flag; silently ignored on a socket that has not opted in.
MSG_ZEROCOPY: Final = 0x4000000

SOL_IP: Final = 0
SOL_IPV6: Final = 41
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25

SO_EE_ORIGIN_NONE: Final = 0
SO_EE_ORIGIN_LOCAL: Final = 1
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3
#: Transmit timestamps (``SO_EE_ORIGIN_TIMESTAMPING`` in the kernel headers).
SO_EE_ORIGIN_TXSTATUS: Final = 4
SO_EE_ORIGIN_ZEROCOPY: Final = 5
SO_EE_ORIGIN_TXTIME: Final = 6

#: In a zero-copy record's ``ee_code``: the kernel copied the data after all.
SO_EE_CODE_ZEROCOPY_COPIED: Final = 1

# struct sock_extended_err, host byte order, no padding.
_EXTENDED_ERR: Final = struct.Struct("=IBBBBII")
# What follows it in the kernel's control message: the offender address,
# zeroed for zero-copy records.
_SOCKADDR_IN_SIZE: Final = 16
_SOCKADDR_IN6_SIZE: Final = 28

_MAX_U32: Final = 0xFFFFFFFF
_RECVERR_KINDS: Final = frozenset({(SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)})


class ZeroCopyCompletion(NamedTuple):
    """The kernel finished the zero-copy send calls ``lo`` to ``hi``.

    An inclusive range of 32-bit counter values; ``lo > hi`` means it wraps
    (``lo .. 2**32 - 1`` and then ``0 .. hi``).

    A named tuple, where the other values of the package are frozen attrs
    classes: one is made per completion batch, on the per-image path, and
    a tuple costs about half as much to make in the pure build and next to
    nothing in the compiled one (where an attrs class stays interpreted).
    """

    #: The first counter value of the range.
    lo: int
    #: The last counter value of the range, inclusive.
    hi: int
    #: Whether the kernel copied the data after all (loopback always does).
    copied: bool


@mypyc_attr(native_class=False)
@attrs.frozen
class QueuedSocketError:
    """An ordinary error that arrived on the error queue, such as an ICMP error.

    The fields are those of ``struct sock_extended_err``, without the
    ``ee_`` prefix.
    """

    #: The error number (never 0).
    errno: int
    #: Where the error came from: one of the ``SO_EE_ORIGIN_*`` values, or
    #: one this module does not know.
    origin: int
    #: For ICMP origins, the ICMP type.
    type: int
    #: For ICMP origins, the ICMP code.
    code: int
    #: Origin-specific, for instance the path MTU for "fragmentation needed".
    info: int
    #: Origin-specific.
    data: int


class MalformedRecordError(ValueError):
    """A control message that is not a record the kernel could have written."""


def parse_cmsg(level: int, type: int, data: bytes) -> ZeroCopyCompletion | QueuedSocketError:
    """Parse one control message received with ``MSG_ERRQUEUE``.

    *level*, *type* and *data* are one entry of the ancillary data that
    :meth:`socket.socket.recvmsg` returns.

    Raises:
      MalformedRecordError: the message is not an extended socket error
        (see the module docstring for what is accepted).
    """
    if (level, type) not in _RECVERR_KINDS:
        raise MalformedRecordError(
            f"control message of level {level}, type {type} is not an extended socket"
            f" error (expected level {SOL_IP}/type {IP_RECVERR}"
            f" or level {SOL_IPV6}/type {IPV6_RECVERR})"
        )
    if len(data) < _EXTENDED_ERR.size:
        raise MalformedRecordError(
            f"extended socket error is {len(data)} bytes long,"
            f" shorter than the {_EXTENDED_ERR.size} of struct sock_extended_err"
        )
    errno, origin, ee_type, code, pad, info, ee_data = _EXTENDED_ERR.unpack_from(data)
    if origin == SO_EE_ORIGIN_ZEROCOPY:
        # The kernel writes zero into every field it does not use; a record
        # that says otherwise did not come from the zero-copy path, and its
        # range must not be trusted.
        if errno or ee_type or pad:
            raise MalformedRecordError(
                f"zero-copy record with errno {errno}, type {ee_type}, pad {pad}"
                " (the kernel sets all three to 0)"
            )
        # Positional (lo, hi, copied): one record per completion batch.
        return ZeroCopyCompletion(info, ee_data, bool(code & SO_EE_CODE_ZEROCOPY_COPIED))
    if errno == 0:
        # Every other origin reports an error (ICMP errors, EMSGSIZE, and
        # ENOMSG for timestamps): without one the record means nothing we
        # could act on, so it is refused, whatever its origin.
        raise MalformedRecordError(f"error queue record of origin {origin} carries no errno")
    return QueuedSocketError(
        errno=errno, origin=origin, type=ee_type, code=code, info=info, data=ee_data
    )


def parse_ancdata(
    ancdata: Iterable[tuple[int, int, bytes]],
) -> list[ZeroCopyCompletion | QueuedSocketError]:
    """Parse every control message of one ``recvmsg(..., MSG_ERRQUEUE)``.

    All or nothing: if any message is malformed, :class:`MalformedRecordError`
    is raised and no record is returned.
    """
    return [parse_cmsg(level, type_, data) for level, type_, data in ancdata]


def pack_zerocopy_record(
    lo: int, hi: int, copied: bool, *, ipv6: bool = False
) -> tuple[int, int, bytes]:
    """A zero-copy completion as the kernel delivers it, as a ``recvmsg`` cmsg tuple.

    The inverse of :func:`parse_cmsg`, for tests and for a mock kernel: the
    level, type and length match what an IPv4 (or, with *ipv6*, an IPv6)
    socket receives.
    """
    if not (0 <= lo <= _MAX_U32 and 0 <= hi <= _MAX_U32):
        raise ValueError(f"[{lo}, {hi}] is not a range of 32-bit counter values")
    code = SO_EE_CODE_ZEROCOPY_COPIED if copied else 0
    header = _EXTENDED_ERR.pack(0, SO_EE_ORIGIN_ZEROCOPY, 0, code, 0, lo, hi)
    if ipv6:
        return SOL_IPV6, IPV6_RECVERR, header + bytes(_SOCKADDR_IN6_SIZE)
    return SOL_IP, IP_RECVERR, header + bytes(_SOCKADDR_IN_SIZE)
