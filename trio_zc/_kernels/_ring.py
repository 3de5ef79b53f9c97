"""A minimal io_uring for zero-copy sends: three system calls through ctypes, rings through mmap.

Rules
=====

1. No compiled code and no liburing: ``io_uring_setup``, ``io_uring_enter``
   and ``io_uring_register`` are called through libc's ``syscall()``, and the
   rings are Python :class:`mmap.mmap` objects. Trio is not imported: the
   caller waits for the ring fd to become readable however it likes.
2. x86_64 only, because the memory-ordering argument below only holds there.
   Everywhere else :class:`Ring` raises :class:`UringUnavailable` and
   :func:`probe` says why.
3. A :class:`Ring` belongs to one thread at a time. Nothing here locks.
4. Addresses are the caller's business. :meth:`Ring.prep_send_zc` takes a
   raw address and length; the memory there must stay mapped, and must not
   be rewritten, until the send's memory is released (see
   :mod:`trio_zc._kernels._uring_tracker`, which decides that from the CQEs).
5. Once a ``prep_*`` call returned, its entry belongs to the ring: the next
   :meth:`Ring.submit` hands it to the kernel, and there is no taking it
   back. Only an entry whose ``prep_*`` raised never reaches the kernel.
6. A fixed buffer may be made of several files' pages side by side
   (:meth:`Ring.register_files`): the kernel pins the pages, so a mapping
   made only for the registration can go at once, and a vectored send from
   that buffer may join bytes of both files (a head and a lease) in one
   request.
7. :func:`probe` never raises. It tries the real thing (a ring, a SEND_ZC
   on loopback TCP, a registered buffer) and reports what worked, with a
   sentence saying why when something did not.

Theory of operation
===================

``io_uring_setup`` creates the ring and fills ``struct io_uring_params``
with the offsets of the fields of three shared memory areas, which are
mapped from the ring fd at fixed offsets: the submission queue ring (head,
tail, mask, flags, and an array of indices into the SQE array), the
completion queue ring (head, tail, mask, overflow counter, and the CQEs
themselves), and the array of 64-byte submission queue entries. With
``IORING_FEAT_SINGLE_MMAP`` (Linux 5.4+) the two rings share one mapping.

Submitting: :meth:`Ring.prep_send_zc` writes an SQE into the next free slot,
then publishes it by storing the new SQ tail; the SQ array maps slot *i* to
entry *i* and is filled once at setup. :meth:`Ring.submit` then calls
``io_uring_enter`` with the number of published entries the kernel has not
consumed yet (tail minus the kernel's head). Completing: the kernel writes
CQEs and then stores a new CQ tail; :meth:`Ring.reap` reads the tail, reads
every entry between its head and that tail, and then stores the new head,
which gives the slots back to the kernel.

Many completions are posted from task work that runs when the submitting
thread next enters the kernel (any system call, or a wait on the ring fd),
so :meth:`Ring.reap`, which makes no system call, only sees what was
already posted. :meth:`Ring.wait` polls the fd, which both runs that work
and sleeps until a CQE is there.

If completions arrive faster than they are reaped, the CQ ring fills up.
Kernels with ``IORING_FEAT_NODROP`` (5.5+) then keep further CQEs on an
internal list and set ``IORING_SQ_CQ_OVERFLOW`` in the SQ ring's flags;
those CQEs only move into the ring when the application calls
``io_uring_enter`` with ``IORING_ENTER_GETEVENTS``, so :meth:`Ring.reap`
does that whenever it sees the flag. Only when the kernel cannot even
allocate an overflow entry is a CQE lost; the CQ ring's overflow counter
counts those, and :attr:`Ring.cqes_lost` reports it.

Memory ordering
===============

The rings are shared with the kernel, which may write CQEs from another CPU
while this thread reads them. Three orderings matter:

* Reaping: the CQ tail must be read before the CQEs it covers (an acquire),
  or an entry could be read before the kernel finished writing it.
* Giving slots back: all reads of the CQEs must be done before the new CQ
  head becomes visible (a release), or the kernel could overwrite an entry
  still being read.
* Submitting: the SQE must be written before the new SQ tail (a release).
  (Without SQPOLL the kernel only reads the tail inside ``io_uring_enter``,
  called later by this very thread, so this one holds on any CPU.)

The kernel does its side with ``smp_store_release``/``smp_load_acquire``.
On this side, every access to the shared memory is a separate C-level
operation: one ctypes ``c_uint32`` load or store per index (an aligned
32-bit access, which x86_64 performs as a single instruction, so the kernel
never sees a torn value) and one ``struct`` pack or slice copy per entry.
The interpreter performs them in program order, one opaque C call after
another, so the C compiler cannot reorder or merge them either. x86_64 is a
TSO machine: loads are not reordered with other loads, stores are not
reordered with other stores, and stores are not reordered with earlier
loads. So reading the tail and then the CQEs is an acquire, writing the
SQE and then the tail is a release, and reading the CQEs and then writing
the head is a release, with no fence instruction needed. (The one
reordering x86_64 does allow, a store passing a later load, never hurts
here: a stale tail only shows fewer entries.)

On weakly ordered CPUs (arm64, POWER, RISC-V) all of those may be
reordered in hardware: a CQE could be read before the tail that covers it,
or the head store could become visible before the CQE reads are done.
Correct code there needs acquire/release instructions (``ldar``/``stlr``
or ``dmb`` on arm64), which neither Python nor ctypes can emit. Hence rule 2.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import platform
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Final

import attrs

from .._libc import function
from ._memlock import describe_limit, limited
from ._uring_tracker import IORING_NOTIF_USAGE_ZC_COPIED, Cqe, parse_cqe

__all__ = [
    "IORING_FEAT_NODROP",
    "IORING_FEAT_SINGLE_MMAP",
    "IORING_OP_NOP",
    "IORING_OP_SEND",
    "IORING_OP_SEND_ZC",
    "IORING_OP_SENDMSG_ZC",
    "IORING_RECVSEND_FIXED_BUF",
    "IORING_SEND_ZC_REPORT_USAGE",
    "Message",
    "Probe",
    "Ring",
    "SubmissionQueueFull",
    "UringUnavailable",
    "probe",
    "probe_uncached",
]

# --- the ABI (include/uapi/linux/io_uring.h; x86_64 syscall table) -----------

_NR_IO_URING_SETUP: Final = 425
_NR_IO_URING_ENTER: Final = 426
_NR_IO_URING_REGISTER: Final = 427

_IORING_OFF_SQ_RING: Final = 0
_IORING_OFF_CQ_RING: Final = 0x8000000
_IORING_OFF_SQES: Final = 0x10000000

#: Both rings live in one mapping (Linux 5.4+).
IORING_FEAT_SINGLE_MMAP: Final = 1 << 0
#: CQEs that do not fit the ring wait in the kernel instead of being dropped (5.5+).
IORING_FEAT_NODROP: Final = 1 << 1

_IORING_SETUP_CQSIZE: Final = 1 << 3
_IORING_ENTER_GETEVENTS: Final = 1 << 0
# In the SQ ring's flags: CQEs are waiting on the kernel's overflow list.
_IORING_SQ_CQ_OVERFLOW: Final = 1 << 1

IORING_OP_NOP: Final = 0
IORING_OP_SEND: Final = 26
IORING_OP_SEND_ZC: Final = 47
#: A zero-copy ``sendmsg`` (Linux 6.1+); from registered buffers with
#: several iovecs (all inside the one buffer ``buf_index`` names) on 6.15+.
IORING_OP_SENDMSG_ZC: Final = 48

#: In a send SQE's ioprio: ``addr`` lies in registered buffer ``buf_index``.
IORING_RECVSEND_FIXED_BUF: Final = 1 << 2
#: In a SEND_ZC SQE's ioprio: the notification says whether data was copied (6.2+).
IORING_SEND_ZC_REPORT_USAGE: Final = 1 << 3

_IORING_REGISTER_BUFFERS: Final = 0
_IORING_UNREGISTER_BUFFERS: Final = 1
# A buffer table with empty slots, filled in later (Linux 5.13+).
_IORING_REGISTER_BUFFERS2: Final = 15
_IORING_REGISTER_BUFFERS_UPDATE: Final = 16
_IORING_RSRC_REGISTER_SPARSE: Final = 1 << 0
# struct io_uring_rsrc_register: nr, flags, resv2, data, tags.
_RSRC_REGISTER: Final = struct.Struct("=IIQQQ")
# struct io_uring_rsrc_update2: offset, resv, data, tags, nr, resv2.
_RSRC_UPDATE2: Final = struct.Struct("=IIQQII")

# Limits the kernel enforces; checking them here turns a bare EINVAL into a
# message that names the argument.
_MAX_ENTRIES: Final = 32768
_MAX_CQ_ENTRIES: Final = 2 * _MAX_ENTRIES
_MAX_REG_BUFFERS: Final = 1 << 14
_MAX_REG_BUFFER_SIZE: Final = 1 << 30

# struct io_uring_params: ten u32 (sq_entries, cq_entries, flags,
# sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3]), then
# struct io_sqring_offsets and struct io_cqring_offsets (eight u32 and a
# u64 user_addr each). 120 bytes.
_PARAMS: Final = struct.Struct("=10I8IQ8IQ")
# struct io_uring_sqe as used by sends: opcode, flags, ioprio, fd, off,
# addr, len, msg_flags, user_data, buf_index, personality, addr_len, pad,
# addr3, pad. 64 bytes; every field is written each time so that nothing
# is left over from the entry's previous use.
_SQE: Final = struct.Struct("=BBHiQQIIQHHHHQQ")
_CQE_SIZE: Final = 16
_SQ_ARRAY_ENTRY: Final = struct.Struct("=I")

_U16_MAX: Final = 2**16 - 1
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1
_S32_MAX: Final = 2**31 - 1

_IO_URING_DISABLED: Final = "/proc/sys/kernel/io_uring_disabled"

# The SEND_ZC trials of the probe give up after this long.
_PROBE_TIMEOUT: Final = 1.0

assert _PARAMS.size == 120 and _SQE.size == 64
assert _RSRC_REGISTER.size == 32 and _RSRC_UPDATE2.size == 32


class UringUnavailable(Exception):
    """io_uring cannot be used in this process.

    Attributes:
      reason: why, in words.
      errno: the error number ``io_uring_setup`` failed with, or None if it
        was not called (unsupported platform).
    """

    def __init__(self, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


class SubmissionQueueFull(RuntimeError):
    """Every SQ slot holds an entry the kernel has not consumed: :meth:`Ring.submit` first."""


def _unsupported_platform() -> str | None:
    """Why this platform is not supported, or None if it is."""
    if not sys.platform.startswith("linux"):
        return f"io_uring is Linux-only, and this is {sys.platform}"
    machine = platform.machine()
    if machine != "x86_64":
        return (
            f"io_uring is only supported on x86_64, and this is {machine or 'an unknown machine'}:"
            " the rings are shared with the kernel through plain loads and stores, which"
            " are ordered correctly only on x86_64 (see trio_zc._kernels._ring)"
        )
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return "io_uring is only supported for 64-bit x86_64 processes, not the x32 ABI"
    return None


def _read_io_uring_disabled() -> int | None:
    """The sysctl ``kernel.io_uring_disabled`` (Linux 6.6+), or None if unreadable."""
    try:
        with open(_IO_URING_DISABLED) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _memlock_hint() -> str:
    """Why a registration may have failed with ENOMEM."""
    if limited():
        return f"pinned pages are charged to the locked-memory limit: {describe_limit()}"
    return f"the kernel is short of memory: {describe_limit()}"


def _errno_name(err: int) -> str:
    return errno.errorcode.get(err, f"errno {err}")


def _describe_setup_errno(err: int) -> str:
    """Why ``io_uring_setup`` failed with *err*, as a sentence without the full stop."""
    head = f"io_uring_setup failed with {_errno_name(err)}"
    if err == errno.ENOSYS:
        return (
            f"{head}: this kernel has no io_uring (built without CONFIG_IO_URING),"
            " or a seccomp filter makes the system call look absent"
        )
    if err == errno.EPERM:
        disabled = _read_io_uring_disabled()
        if disabled == 2:
            return (
                f"{head}: io_uring is disabled for every process on this machine"
                " (sysctl kernel.io_uring_disabled = 2)"
            )
        if disabled == 1:
            return (
                f"{head}: io_uring is restricted to privileged processes"
                " (sysctl kernel.io_uring_disabled = 1: CAP_SYS_ADMIN or membership"
                " of kernel.io_uring_group is needed), and this process is not one"
            )
        if disabled == 0:
            return (
                f"{head}: the system call is blocked, most likely by a seccomp filter"
                " (container runtimes commonly block io_uring) or a security module;"
                " kernel.io_uring_disabled is 0, so the sysctl is not the cause"
            )
        return (
            f"{head}: the system call is blocked by a seccomp filter or security module,"
            " or by the sysctl kernel.io_uring_disabled (which could not be read)"
        )
    if err == errno.EINVAL:
        return (
            f"{head}: the kernel rejected the ring parameters, so it is probably too old"
            " (io_uring needs Linux 5.1, a custom CQ size 5.5)"
        )
    if err == errno.ENOMEM:
        if limited():
            return (
                f"{head}: most likely the rings did not fit the locked-memory limit"
                f" ({describe_limit()}), which kernels before 5.12 and recent ones (Linux"
                " 6.18, for one) charge the rings to"
            )
        return f"{head}: the kernel could not allocate the rings ({describe_limit()})"
    if err == errno.EMFILE:
        return f"{head}: this process has too many open files (RLIMIT_NOFILE)"
    if err == errno.ENFILE:
        return f"{head}: the system has too many open files (fs.file-max)"
    return f"{head}: {os.strerror(err)}"


# --- system calls ---------------------------------------------------------------


#: syscall() is variadic and reads every argument as a long: arguments are
#: passed as c_long or c_void_p, never as bare ints, which ctypes would pass
#: as 32-bit ints with undefined upper halves.
_syscall = function("syscall", ctypes.c_long, None)
_mmap = function(
    "mmap", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
)
_munmap = function("munmap", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t])
_madvise = function("madvise", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
_MAP_FIXED: Final = 0x10
_PROT_NONE: Final = 0
_MAP_FAILED: Final = 2**64 - 1


def _call(nr: int, *args: int | None) -> tuple[int, int]:
    """Make system call *nr*; (return value, errno), errno 0 on success."""
    cargs = [ctypes.c_void_p(a) if a is None else ctypes.c_long(a) for a in args]
    ret = _syscall(ctypes.c_long(nr), *cargs)
    if ret < 0:
        return ret, ctypes.get_errno()
    return ret, 0


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _iovec_array(iovecs: Sequence[tuple[int, int]]) -> ctypes.Array[_Iovec]:
    """*iovecs* as a C array of ``struct iovec``, each region checked."""
    array = (_Iovec * len(iovecs))()
    for i, (base, length) in enumerate(iovecs):
        if not 0 < base <= _U64_MAX:
            raise ValueError(f"buffer {i}: {base} is not an address")
        if not 0 < length <= _MAX_REG_BUFFER_SIZE:
            raise ValueError(f"buffer {i}: length {length} is not in 1..{_MAX_REG_BUFFER_SIZE}")
        array[i].iov_base = base
        array[i].iov_len = length
    return array


class _Msghdr(ctypes.Structure):
    # struct msghdr on x86_64 (64-bit): name, namelen, iov, iovlen, control, controllen, flags.
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class Message:
    """A ``struct msghdr`` naming ``(address, length)`` regions, for :meth:`Ring.prep_sendmsg_zc`.

    Keep it referenced until the send's result CQE came: the kernel reads
    the header and the iovec array when it takes the entry.

    Raises:
      ValueError: no regions, or a region out of range.
    """

    __slots__ = ("_iovecs", "_header", "address", "nbytes")

    def __init__(self, regions: Sequence[tuple[int, int]]) -> None:
        if not regions:
            raise ValueError("a Message needs at least one region")
        self._iovecs = _iovec_array(regions)
        self._header = _Msghdr(None, 0, ctypes.addressof(self._iovecs), len(regions), None, 0, 0)
        #: Where the header is, for the SQE.
        self.address: int = ctypes.addressof(self._header)
        #: The bytes the regions hold together.
        self.nbytes: int = sum(length for _, length in regions)


def _map_files(pieces: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """Map ``(fd, offset, length)`` ranges one after another, shared and read-write: (address, total length).

    Faulted in as base pages (``MADV_NOHUGEPAGE``), as the arena's own
    mapping is. Unmap it with ``_munmap``.
    """
    total = 0
    for fd, offset, length in pieces:
        if fd < 0 or offset < 0 or length <= 0 or offset % mmap.PAGESIZE or length % mmap.PAGESIZE:
            raise ValueError(f"not a page-aligned file range: fd {fd}, offset {offset}, length {length}")
        total += length
    # Reserve the whole range first, so the pieces land side by side and
    # nothing else of the process's is ever mapped over.
    base = _mmap(None, total, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base is None or base == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"reserving {total} bytes of address space failed: {os.strerror(err)}")
    try:
        at = base
        for fd, offset, length in pieces:
            got = _mmap(
                at, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _MAP_FIXED, fd, offset
            )
            if got != at:
                err = ctypes.get_errno()
                raise OSError(err, f"mapping {length} bytes of fd {fd} failed: {os.strerror(err)}")
            at += length
        _madvise(base, total, mmap.MADV_NOHUGEPAGE)  # advice only: a failure changes nothing
    except BaseException:
        _munmap(base, total)
        raise
    return base, total


# --- the ring -----------------------------------------------------------------


class _Maps:
    """The ring's mappings and the views of the indices inside them.

    The views are made with ``from_address`` rather than ``from_buffer``, so
    they hold no buffer export that would stop :meth:`mmap.mmap.close`; the
    price is that they must never be used after :meth:`close`, which
    :class:`Ring` ensures by dropping this whole object first.
    """

    __slots__ = (
        "sq_ring",
        "cq_ring",
        "sqes",
        "sq_head",
        "sq_tail",
        "sq_flags",
        "cq_head",
        "cq_tail",
        "cq_overflow",
        "cqes_offset",
        "sq_mask",
        "cq_mask",
    )

    def __init__(
        self,
        fd: int,
        features: int,
        sq_entries: int,
        cq_entries: int,
        sq_off: tuple[int, ...],
        cq_off: tuple[int, ...],
    ) -> None:
        sq_head, sq_tail, sq_mask, _sq_ring_entries, sq_flags, _dropped, sq_array = sq_off[:7]
        cq_head, cq_tail, cq_mask, _cq_ring_entries, cq_overflow, cqes = cq_off[:6]
        sq_size = sq_array + sq_entries * _SQ_ARRAY_ENTRY.size
        cq_size = cqes + cq_entries * _CQE_SIZE
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        maps: list[mmap.mmap] = []
        try:
            if features & IORING_FEAT_SINGLE_MMAP:
                size = max(sq_size, cq_size)
                self.sq_ring = self.cq_ring = mmap.mmap(
                    fd, size, mmap.MAP_SHARED, prot, offset=_IORING_OFF_SQ_RING
                )
                maps.append(self.sq_ring)
            else:
                self.sq_ring = mmap.mmap(fd, sq_size, mmap.MAP_SHARED, prot, offset=_IORING_OFF_SQ_RING)
                maps.append(self.sq_ring)
                self.cq_ring = mmap.mmap(fd, cq_size, mmap.MAP_SHARED, prot, offset=_IORING_OFF_CQ_RING)
                maps.append(self.cq_ring)
            self.sqes = mmap.mmap(fd, sq_entries * _SQE.size, mmap.MAP_SHARED, prot, offset=_IORING_OFF_SQES)
            maps.append(self.sqes)
        except BaseException:
            for m in maps:
                m.close()
            raise
        sq_base = _address_of(self.sq_ring)
        cq_base = _address_of(self.cq_ring)
        self.sq_head = ctypes.c_uint32.from_address(sq_base + sq_head)
        self.sq_tail = ctypes.c_uint32.from_address(sq_base + sq_tail)
        self.sq_flags = ctypes.c_uint32.from_address(sq_base + sq_flags)
        self.cq_head = ctypes.c_uint32.from_address(cq_base + cq_head)
        self.cq_tail = ctypes.c_uint32.from_address(cq_base + cq_tail)
        self.cq_overflow = ctypes.c_uint32.from_address(cq_base + cq_overflow)
        self.cqes_offset = cqes
        # The masks never change: read once.
        self.sq_mask = ctypes.c_uint32.from_address(sq_base + sq_mask).value
        self.cq_mask = ctypes.c_uint32.from_address(cq_base + cq_mask).value
        # Slot i of the SQE array is always entry i of the SQ array, so the
        # indirection is set up once and never touched again.
        for i in range(sq_entries):
            _SQ_ARRAY_ENTRY.pack_into(self.sq_ring, sq_array + i * _SQ_ARRAY_ENTRY.size, i)

    def close(self) -> None:
        for m in {id(m): m for m in (self.sq_ring, self.cq_ring, self.sqes)}.values():
            m.close()


def _address_of(m: mmap.mmap) -> int:
    # The temporary view exports the buffer only until it is dropped here.
    view = ctypes.c_char.from_buffer(m)
    try:
        return ctypes.addressof(view)
    finally:
        del view


class Ring:
    """An io_uring instance with *entries* submission slots.

    The kernel rounds *entries* up to a power of two. The completion queue
    gets twice as many slots unless *cq_entries* says otherwise (at least
    *entries*; also rounded up). Close it with :meth:`close` or use it as a
    context manager.

    Raises:
      UringUnavailable: io_uring cannot be used here (see :attr:`UringUnavailable.reason`).
      ValueError: *entries* or *cq_entries* is out of range.
      OSError: mapping the rings failed.
    """

    def __init__(self, entries: int = 256, *, cq_entries: int | None = None) -> None:
        self._maps: _Maps | None = None
        self._fd = -1
        why = _unsupported_platform()
        if why is not None:
            raise UringUnavailable(why)
        if not 1 <= entries <= _MAX_ENTRIES:
            raise ValueError(f"entries must be in 1..{_MAX_ENTRIES}, not {entries}")
        flags = 0
        if cq_entries is not None:
            if not entries <= cq_entries <= _MAX_CQ_ENTRIES:
                raise ValueError(
                    f"cq_entries must be in {entries}..{_MAX_CQ_ENTRIES} (at least entries), not {cq_entries}"
                )
            flags |= _IORING_SETUP_CQSIZE
        params = ctypes.create_string_buffer(_PARAMS.size)
        struct.pack_into("=II", params, 4, cq_entries or 0, flags)
        fd, err = _call(_NR_IO_URING_SETUP, entries, ctypes.addressof(params))
        if err:
            raise UringUnavailable(_describe_setup_errno(err), err)
        self._fd = fd
        fields = _PARAMS.unpack(params.raw)
        self._sq_entries: int = fields[0]
        self._cq_entries: int = fields[1]
        self._features: int = fields[5]
        sq_off, cq_off = fields[10:19], fields[19:28]
        try:
            self._maps = _Maps(fd, self._features, self._sq_entries, self._cq_entries, sq_off, cq_off)
        except BaseException:
            os.close(fd)
            self._fd = -1
            raise
        self._sq_mask = self._maps.sq_mask
        self._cq_mask = self._maps.cq_mask
        # This process is the only writer of the SQ tail and the CQ head, so
        # it keeps its own copies instead of reading them back.
        self._sq_tail = self._maps.sq_tail.value
        self._cq_head = self._maps.cq_head.value

    def __repr__(self) -> str:
        if self._maps is None:
            return "<Ring closed>"
        return f"<Ring fd={self._fd} sq_entries={self._sq_entries} cq_entries={self._cq_entries}>"

    # --- properties ---------------------------------------------------------

    @property
    def fd(self) -> int:
        """The ring's file descriptor; it polls readable while CQEs are waiting."""
        return self._fd

    def fileno(self) -> int:
        """The ring's file descriptor, for APIs that take objects with ``fileno()``."""
        return self._fd

    @property
    def features(self) -> int:
        """The ``IORING_FEAT_*`` bits the kernel reported at setup."""
        return self._features

    @property
    def sq_entries(self) -> int:
        """Slots in the submission queue."""
        return self._sq_entries

    @property
    def cq_entries(self) -> int:
        """Slots in the completion queue."""
        return self._cq_entries

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._maps is None

    @property
    def cqes_lost(self) -> int:
        """CQEs the kernel had to drop because it could not even queue them
        for later (the CQ ring's overflow counter). Should stay 0."""
        return self._live().cq_overflow.value

    def _live(self) -> _Maps:
        if self._maps is None:
            raise ValueError("operation on a closed io_uring")
        return self._maps

    def sq_pending(self) -> int:
        """Entries prepared but not yet consumed by the kernel."""
        return (self._sq_tail - self._live().sq_head.value) & _U32_MAX

    def sq_space_left(self) -> int:
        """How many more entries can be prepared before :meth:`submit` must run."""
        return self._sq_entries - self.sq_pending()

    # --- preparing entries --------------------------------------------------

    def prep_nop(self, user_data: int) -> None:
        """Queue a no-op, which completes with res 0 (handy for tests)."""
        self._push(IORING_OP_NOP, -1, 0, 0, user_data, ioprio=0, msg_flags=0, buf_index=0)

    def prep_send(self, sockfd: int, addr: int, length: int, user_data: int, *, msg_flags: int = 0) -> None:
        """Queue an ordinary (copying) ``send(sockfd, addr, length, msg_flags)``.

        Completes with one CQE: bytes sent or ``-errno``.

        Raises:
          SubmissionQueueFull: no free slot (:meth:`sq_space_left` is 0).
          ValueError: an argument does not fit its field.
        """
        self._push(
            IORING_OP_SEND, sockfd, addr, length, user_data, ioprio=0, msg_flags=msg_flags, buf_index=0
        )

    def prep_send_zc(
        self,
        sockfd: int,
        addr: int,
        length: int,
        user_data: int,
        *,
        buf_index: int | None = None,
        report_usage: bool = False,
        msg_flags: int = 0,
    ) -> None:
        """Queue a zero-copy send of *length* bytes at address *addr* (Linux 6.0+).

        Completes with a result CQE (bytes sent, possibly fewer, or
        ``-errno``) and, if that carries ``F_MORE``, a notification CQE
        (``F_NOTIF``) once the memory may be reused; both have *user_data*.
        With *buf_index*, ``[addr, addr + length)`` must lie inside that
        registered buffer (:meth:`register_buffers`). With *report_usage*
        (6.2+), the notification's res has bit 31 set if the data was copied.
        The memory must stay mapped and unchanged until the notification
        (or a result without ``F_MORE``); even a failed send may have one.

        Raises:
          SubmissionQueueFull: no free slot (:meth:`sq_space_left` is 0).
          ValueError: an argument does not fit its field.
        """
        ioprio = 0
        if buf_index is not None:
            if not 0 <= buf_index <= _U16_MAX:
                raise ValueError(f"buf_index must be in 0..{_U16_MAX}, not {buf_index}")
            ioprio |= IORING_RECVSEND_FIXED_BUF
        if report_usage:
            ioprio |= IORING_SEND_ZC_REPORT_USAGE
        self._push(
            IORING_OP_SEND_ZC,
            sockfd,
            addr,
            length,
            user_data,
            ioprio=ioprio,
            msg_flags=msg_flags,
            buf_index=buf_index or 0,
        )

    def prep_sendmsg_zc(
        self,
        sockfd: int,
        message: Message,
        user_data: int,
        *,
        buf_index: int | None = None,
        report_usage: bool = False,
        msg_flags: int = 0,
    ) -> None:
        """Queue a zero-copy ``sendmsg`` of *message*'s regions, in order (Linux 6.1+).

        Completes as :meth:`prep_send_zc` does: a result CQE (bytes sent of
        all the regions together, or ``-errno``) and, if that carries
        ``F_MORE``, a notification once the memory may be reused. With
        *buf_index* (Linux 6.15+), every region must lie inside that one
        registered buffer. *message* must stay referenced until the result
        came; the regions' memory, until the notification.

        Raises:
          SubmissionQueueFull: no free slot (:meth:`sq_space_left` is 0).
          ValueError: an argument does not fit its field.
        """
        ioprio = 0
        if buf_index is not None:
            if not 0 <= buf_index <= _U16_MAX:
                raise ValueError(f"buf_index must be in 0..{_U16_MAX}, not {buf_index}")
            ioprio |= IORING_RECVSEND_FIXED_BUF
        if report_usage:
            ioprio |= IORING_SEND_ZC_REPORT_USAGE
        # len is 1, as liburing's io_uring_prep_sendmsg_zc() sets it.
        self._push(
            IORING_OP_SENDMSG_ZC,
            sockfd,
            message.address,
            1,
            user_data,
            ioprio=ioprio,
            msg_flags=msg_flags,
            buf_index=buf_index or 0,
        )

    def _push(
        self,
        opcode: int,
        fd: int,
        addr: int,
        length: int,
        user_data: int,
        *,
        ioprio: int,
        msg_flags: int,
        buf_index: int,
    ) -> None:
        maps = self._live()
        if opcode != IORING_OP_NOP and not 0 <= fd <= _S32_MAX:
            raise ValueError(f"not a file descriptor: {fd}")
        if not 0 <= addr <= _U64_MAX:
            raise ValueError(f"address {addr} does not fit 64 bits")
        if not 0 <= length <= _U32_MAX:
            raise ValueError(f"length {length} does not fit an SQE's 32-bit length")
        if not 0 <= user_data <= _U64_MAX:
            raise ValueError(f"user_data {user_data} does not fit 64 bits")
        if not 0 <= msg_flags <= _U32_MAX:
            raise ValueError(f"msg_flags {msg_flags} does not fit 32 bits")
        pending = (self._sq_tail - maps.sq_head.value) & _U32_MAX
        if pending >= self._sq_entries:
            raise SubmissionQueueFull(
                f"all {self._sq_entries} submission queue slots hold entries the kernel"
                " has not consumed yet; call submit() first"
            )
        slot = self._sq_tail & self._sq_mask
        _SQE.pack_into(
            maps.sqes,
            slot * _SQE.size,
            opcode,
            0,
            ioprio,
            fd,
            0,
            addr,
            length,
            msg_flags,
            user_data,
            buf_index,
            0,
            0,
            0,
            0,
            0,
        )
        self._sq_tail = (self._sq_tail + 1) & _U32_MAX
        # Release: the entry's bytes above are stored before the tail (see
        # "Memory ordering" in the module docstring).
        maps.sq_tail.value = self._sq_tail

    # --- submitting and reaping ---------------------------------------------

    def _enter(self, to_submit: int, min_complete: int, flags: int) -> int:
        ret, err = _call(_NR_IO_URING_ENTER, self._fd, to_submit, min_complete, flags, None, 0)
        if err:
            raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
        return ret

    def submit(self, wait_for: int = 0) -> int:
        """Hand every prepared entry to the kernel; how many it consumed.

        With *wait_for*, also wait until at least that many CQEs are in the
        ring (all of them in the kernel, not yet reaped). Interruptions by
        signals (EINTR) are retried, so Python signal handlers still run.

        Raises:
          OSError: ``io_uring_enter`` failed (EBUSY or EAGAIN: the kernel is
            short of resources; reap and retry).
        """
        if not 0 <= wait_for <= _U32_MAX:
            raise ValueError(f"wait_for must be in 0..{_U32_MAX}, not {wait_for}")
        flags = _IORING_ENTER_GETEVENTS if wait_for else 0
        submitted = 0
        while True:
            pending = self.sq_pending()
            try:
                n = self._enter(pending, wait_for, flags)
            except InterruptedError:
                # Nothing was consumed (the kernel returns the count if any
                # entry was); recompute what is pending and go again.
                continue
            submitted += n
            # The kernel stops a batch after an entry it rejects outright (the
            # entry still completes, with an error CQE) and then does not
            # wait: go round again for the rest, which also does the wait.
            if n >= pending or n == 0:
                return submitted

    def _drain(self, maps: _Maps) -> list[Cqe]:
        head = self._cq_head
        # Acquire: the tail is loaded before the entries it covers.
        tail = maps.cq_tail.value
        count = (tail - head) & _U32_MAX
        if count > self._cq_entries:
            raise RuntimeError(f"CQ ring claims {count} entries but has {self._cq_entries} slots: corrupted")
        ring = maps.cq_ring
        base = maps.cqes_offset
        mask = self._cq_mask
        cqes = []
        for i in range(count):
            offset = base + ((head + i) & mask) * _CQE_SIZE
            cqes.append(parse_cqe(ring[offset : offset + _CQE_SIZE]))
        self._cq_head = tail
        # Release: the entries above were read before the head hands their
        # slots back to the kernel.
        maps.cq_head.value = tail
        return cqes

    def reap(self) -> list[Cqe]:
        """Every CQE in the ring now, oldest first; their slots go back to the kernel.

        Makes no system call unless the kernel is holding CQEs that did not
        fit (then it flushes them, see the module docstring).
        """
        maps = self._live()
        cqes = self._drain(maps)
        # The CQ ring was full and the kernel keeps the surplus on its
        # overflow list (IORING_SQ_CQ_OVERFLOW). An io_uring_enter with
        # GETEVENTS moves as many as fit into the ring, which is now empty;
        # repeat until the list is empty or a flush brings nothing.
        while maps.sq_flags.value & _IORING_SQ_CQ_OVERFLOW:
            try:
                self._enter(0, 0, _IORING_ENTER_GETEVENTS)
            except InterruptedError:
                continue
            except OSError:
                # The entries drained above are already off the ring: raising
                # now would lose them. The flag stays set, so the next reap
                # tries the flush again.
                break
            more = self._drain(maps)
            if not more:
                break
            cqes.extend(more)
        return cqes

    def wait(self, min_complete: int, timeout: float) -> list[Cqe]:
        """Reap until at least *min_complete* CQEs came, or *timeout* seconds passed.

        Returns every CQE reaped, possibly more than *min_complete*, or
        fewer on timeout. Blocks the thread: for tests, probes, and code
        that has nothing else to do.
        """
        deadline = time.monotonic() + timeout
        cqes = self.reap()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while len(cqes) < min_complete:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # poll() also runs the task work that posts many completions.
            # Short slices keep the wait bounded even if a wake-up is missed.
            poller.poll(max(1, int(min(remaining, 0.05) * 1000)))
            cqes.extend(self.reap())
        return cqes

    # --- registered buffers -------------------------------------------------

    def _register(self, opcode: int, arg: int | None, nr_args: int) -> int:
        while True:
            ret, err = _call(_NR_IO_URING_REGISTER, self._fd, opcode, arg, nr_args)
            if err != errno.EINTR:
                break
        if err:
            what = {
                _IORING_REGISTER_BUFFERS: "register buffers",
                _IORING_UNREGISTER_BUFFERS: "unregister buffers",
                _IORING_REGISTER_BUFFERS2: "register a sparse buffer table",
                _IORING_REGISTER_BUFFERS_UPDATE: "update registered buffers",
            }[opcode]
            hint = ""
            if err == errno.ENOMEM:
                hint = f" ({_memlock_hint()})"
            elif err == errno.EBUSY:
                hint = " (buffers are already registered; unregister them first)"
            elif err == errno.ENXIO:
                hint = " (no buffers are registered)"
            raise OSError(err, f"io_uring_register: cannot {what}: {os.strerror(err)}{hint}")
        return ret

    def register_buffers(self, iovecs: Sequence[tuple[int, int]]) -> None:
        """Register ``(address, length)`` regions as fixed buffers 0, 1, ...

        The kernel pins the pages once here instead of on every send; a
        send then names its buffer with ``buf_index``. Each region is at
        most 1 GiB, and the pinned pages count against RLIMIT_MEMLOCK.

        Raises:
          ValueError: no regions, too many, or a region out of range.
          OSError: the kernel refused (ENOMEM: memlock limit; EBUSY: some
            are already registered; EFAULT: a region is not mapped).
        """
        self._live()
        if not 1 <= len(iovecs) <= _MAX_REG_BUFFERS:
            raise ValueError(f"between 1 and {_MAX_REG_BUFFERS} buffers can be registered, not {len(iovecs)}")
        array = _iovec_array(iovecs)
        self._register(_IORING_REGISTER_BUFFERS, ctypes.addressof(array), len(iovecs))

    def register_sparse_buffers(self, count: int) -> None:
        """Register a table of *count* empty fixed-buffer slots (Linux 5.13+).

        Nothing is pinned yet: :meth:`update_buffers` fills slots later.
        A send naming an empty slot fails with EFAULT.

        Raises:
          ValueError: *count* is not in 1..16384.
          OSError: the kernel refused (EBUSY: buffers are already registered;
            EINVAL: a kernel older than 5.13).
        """
        self._live()
        if not 1 <= count <= _MAX_REG_BUFFERS:
            raise ValueError(f"between 1 and {_MAX_REG_BUFFERS} buffer slots can be registered, not {count}")
        arg = ctypes.create_string_buffer(_RSRC_REGISTER.pack(count, _IORING_RSRC_REGISTER_SPARSE, 0, 0, 0))
        self._register(_IORING_REGISTER_BUFFERS2, ctypes.addressof(arg), _RSRC_REGISTER.size)

    def update_buffers(self, first: int, iovecs: Sequence[tuple[int, int]]) -> None:
        """Register ``(address, length)`` regions into slots *first*, *first* + 1, ...

        Pins the pages now, as :meth:`register_buffers` does (charged to
        RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK). A slot that
        held a buffer gets the new one; the old one stays pinned until the
        sends using it complete.

        Raises:
          ValueError: no regions, or a region out of range.
          OSError: the kernel refused (ENOMEM: the locked-memory limit;
            EINVAL: a slot outside the table; ENXIO: no table registered).
        """
        self._live()
        if not iovecs:
            raise ValueError("update_buffers() needs at least one region")
        if not 0 <= first <= _MAX_REG_BUFFERS - len(iovecs):
            raise ValueError(f"slots {first}..{first + len(iovecs) - 1} are outside 0..{_MAX_REG_BUFFERS - 1}")
        array = _iovec_array(iovecs)
        arg = ctypes.create_string_buffer(
            _RSRC_UPDATE2.pack(first, 0, ctypes.addressof(array), 0, len(iovecs), 0)
        )
        done = self._register(_IORING_REGISTER_BUFFERS_UPDATE, ctypes.addressof(arg), _RSRC_UPDATE2.size)
        if done != len(iovecs):  # pragma: no cover - the kernel updates all or fails
            raise OSError(errno.EIO, f"io_uring_register updated {done} of {len(iovecs)} buffer slots")

    def register_files(self, slot: int, pieces: Sequence[tuple[int, int, int]]) -> int:
        """Register ``(fd, offset, length)`` file ranges, side by side, as the fixed buffer in *slot*.

        The ranges are mapped one after another for the registration only
        and unmapped right after it (rule 6): the kernel keeps their pages
        pinned, and a send names their bytes by the address returned (the
        buffer's start, as registered) plus their offset in the buffer.
        Writes through any other shared mapping of the files reach the
        pinned pages. Each range must be page-aligned; together at most 1
        GiB. The slot table must exist (:meth:`register_sparse_buffers`).

        Raises:
          ValueError: a range is not page-aligned, or the whole is too large.
          OSError: mapping failed, or the kernel refused (as :meth:`update_buffers`).
        """
        self._live()
        base, total = _map_files(pieces)
        try:
            self.update_buffers(slot, [(base, total)])
        finally:
            _munmap(base, total)
        return base

    def unregister_buffers(self) -> None:
        """Drop the registered buffers.

        Sends still in flight keep their buffer's pages pinned until they
        complete, so this is safe to call at any time.

        Raises:
          OSError: ENXIO if no buffers are registered.
        """
        self._live()
        self._register(_IORING_UNREGISTER_BUFFERS, None, 0)

    # --- closing --------------------------------------------------------------

    def close(self) -> None:
        """Unmap the rings and close the fd; calling it again does nothing.

        Requests in flight are cancelled by the kernel, and their CQEs are
        never seen; the kernel keeps its own references to the pages of
        sends still in progress, so this is memory-safe, but the memory of
        those sends must still not be reused for data the peer should not see.
        """
        maps = self._maps
        if maps is None:
            return
        # Dropped first, so that nothing can reach the views once the
        # mappings are gone.
        self._maps = None
        try:
            maps.close()
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Ring:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A ring dropped without close() would otherwise leak its fd (the
        # mappings close themselves).
        if getattr(self, "_maps", None) is not None:
            self.close()


# --- probing --------------------------------------------------------------------


@attrs.frozen
class Probe:
    """What io_uring can do in this process, as found by :func:`probe`."""

    #: Whether a ring can be set up and used at all.
    available: bool
    #: A sentence saying what worked, or why something did not.
    reason: str
    #: Whether ``IORING_OP_SEND_ZC`` sends (Linux 6.0+), checked with a real send.
    send_zc: bool
    #: Whether ``IORING_SEND_ZC_REPORT_USAGE`` is accepted (Linux 6.2+).
    report_usage: bool
    #: Whether buffers can be registered and a SEND_ZC from one works.
    fixed_buffers: bool
    #: Whether ``IORING_OP_SENDMSG_ZC`` sends two iovecs from ordinary memory (Linux 6.1+).
    sendmsg_zc: bool = False
    #: Whether a SENDMSG_ZC sends two iovecs from one registered buffer made
    #: of two files' pages (:meth:`Ring.register_files`; Linux 6.15+).
    vectored_fixed: bool = False


#: Errors of ``io_uring_setup`` that cannot go away while the process runs:
#: no io_uring in this kernel (or a seccomp filter, which cannot be lifted,
#: making it look absent), and parameters an old kernel rejects.
_SETUP_ERRNOS_FOR_GOOD: Final = frozenset({errno.ENOSYS, errno.EINVAL})


class _CachedProbe:
    """:func:`probe`: the answer is kept only when it cannot change during the process."""

    def __init__(self) -> None:
        self._answer: Probe | None = None

    def __call__(self) -> Probe:
        """What io_uring can do here; never raises.

        See :func:`probe_uncached` for what is tried. An answer that cannot
        change while the process runs is kept and returned from then on:
        success, an unsupported platform, a kernel without io_uring (or a
        seccomp filter that makes it look so) or too old for what is tried.
        Any other failure -- too many open files, memory or the
        locked-memory limit, ``kernel.io_uring_disabled``, a loopback
        connection that could not be made -- may be gone by the next pool,
        so the next call probes again. :meth:`cache_clear` forgets the kept
        answer.
        """
        answer = self._answer
        if answer is None:
            answer, for_good = _probe_once()
            if for_good:
                self._answer = answer
        return answer

    def cache_clear(self) -> None:
        """Forget the kept answer: the next call probes again."""
        self._answer = None


probe = _CachedProbe()


def probe_uncached() -> Probe:
    """Try io_uring for real, now, and report what worked; never raises.

    Sets up a small ring, opens a loopback TCP connection, and sends a few
    bytes with SEND_ZC (checking the result CQE, the notification and the
    bytes received), then with REPORT_USAGE, then from a registered buffer.
    Blocks for at most a few seconds (only if the kernel misbehaves).
    """
    return _probe_once()[0]


def _probe_once() -> tuple[Probe, bool]:
    """The probe's answer, and whether it holds for the rest of the process."""
    try:
        return _probe()
    except Exception as exc:  # the promise is to never raise
        probed = Probe(
            available=False,
            reason=f"The io_uring probe failed unexpectedly: {exc!r}.",
            send_zc=False,
            report_usage=False,
            fixed_buffers=False,
        )
        return probed, False


def _probe() -> tuple[Probe, bool]:
    try:
        ring = Ring(8)
    except UringUnavailable as exc:
        for_good = exc.errno is None or exc.errno in _SETUP_ERRNOS_FOR_GOOD
        return Probe(False, _sentence(exc.reason), False, False, False), for_good
    release = platform.release()
    with ring:
        try:
            sender, receiver = _loopback_pair()
        except OSError as exc:
            probed = Probe(
                True,
                f"io_uring works on Linux {release}, but SEND_ZC could not be tried:"
                f" no loopback TCP connection ({exc}).",
                False,
                False,
                False,
            )
            return probed, False
        with sender, receiver:
            failures: list[str] = []
            # Every failure but an old kernel's EINVAL may be gone next time.
            for_good = True
            err = _trial(ring, sender, receiver, b"trio_zc probe", report_usage=False)
            send_zc = err is None
            if err is not None:
                if err == _errno_name(errno.EINVAL):
                    failures.append(
                        "SEND_ZC does not: the kernel answered EINVAL, so it predates"
                        " IORING_OP_SEND_ZC (Linux 6.0)"
                    )
                else:
                    failures.append(f"SEND_ZC does not: {err}")
                    for_good = False
                return Probe(True, _summary(release, failures), False, False, False), for_good
            err = _trial(ring, sender, receiver, b"usage", report_usage=True)
            report_usage = err is None
            if err is not None:
                if err == _errno_name(errno.EINVAL):
                    failures.append(
                        "REPORT_USAGE does not: the kernel answered EINVAL, so it predates"
                        " IORING_SEND_ZC_REPORT_USAGE (Linux 6.2)"
                    )
                else:
                    failures.append(f"REPORT_USAGE does not: {err}")
                    for_good = False
            err = _fixed_trial(ring, sender, receiver)
            fixed_buffers = err is None
            if err is not None:
                # Most often the locked-memory limit (ENOMEM), which may change.
                failures.append(f"registered buffers do not: {err}")
                for_good = False
            err = _sendmsg_trial(ring, sender, receiver)
            sendmsg_zc = err is None
            if err is not None:
                if err == _errno_name(errno.EINVAL):
                    failures.append(
                        "SENDMSG_ZC does not: the kernel answered EINVAL, so it predates"
                        " IORING_OP_SENDMSG_ZC (Linux 6.1)"
                    )
                else:
                    failures.append(f"SENDMSG_ZC does not: {err}")
                    for_good = False
            vectored_fixed = False
            if sendmsg_zc and fixed_buffers:
                err = _vectored_fixed_trial(ring, sender, receiver)
                vectored_fixed = err is None
                if err is not None:
                    if err == _errno_name(errno.EINVAL):
                        failures.append(
                            "SENDMSG_ZC from registered buffers does not: the kernel answered"
                            " EINVAL, so it predates vectored registered buffers (Linux 6.15)"
                        )
                    else:
                        failures.append(f"SENDMSG_ZC from registered buffers does not: {err}")
                        for_good = False
            probed = Probe(
                True,
                _summary(release, failures),
                send_zc,
                report_usage,
                fixed_buffers,
                sendmsg_zc,
                vectored_fixed,
            )
            return probed, for_good


def _sentence(text: str) -> str:
    # Not capitalized: most reasons start with a name ("io_uring_setup").
    return text + "."


def _summary(release: str, failures: list[str]) -> str:
    if not failures:
        return (
            f"io_uring works on Linux {release}: a SEND_ZC on loopback TCP delivered its"
            " bytes and then its notification, and REPORT_USAGE, registered buffers and"
            " SENDMSG_ZC of two iovecs (from ordinary memory and from one registered buffer)"
            " work too."
        )
    return f"io_uring works on Linux {release}, but " + "; ".join(failures) + "."


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(_PROBE_TIMEOUT)
        sender = socket.create_connection(listener.getsockname(), timeout=_PROBE_TIMEOUT)
        try:
            receiver, _ = listener.accept()
        except BaseException:
            sender.close()
            raise
    receiver.settimeout(_PROBE_TIMEOUT)
    return sender, receiver


_probe_user_data = itertools.count(1)


def _trial(
    ring: Ring,
    sender: socket.socket,
    receiver: socket.socket,
    payload: bytes,
    *,
    report_usage: bool,
    buf_index: int | None = None,
    addr: int | None = None,
    message: Message | None = None,
) -> str | None:
    """One SEND_ZC of *payload* (or a SENDMSG_ZC of *message*, which holds
    *payload*); None if it worked, else what went wrong.

    An errno the kernel answered with comes back as its bare name (``EINVAL``).
    """
    user_data = next(_probe_user_data)
    # Dropping the buffer early would be safe: for a SEND_ZC from ordinary
    # memory the kernel holds its own page references, and a registered
    # buffer is pinned, so even a send that never completes cannot read
    # freed memory. (Only the bytes on the wire could change.)
    buffer = None
    if addr is None and message is None:
        buffer = ctypes.create_string_buffer(payload, len(payload))
        addr = ctypes.addressof(buffer)
    try:
        if message is not None:
            ring.prep_sendmsg_zc(
                sender.fileno(),
                message,
                user_data,
                buf_index=buf_index,
                report_usage=report_usage,
                msg_flags=socket.MSG_NOSIGNAL,
            )
        else:
            assert addr is not None
            ring.prep_send_zc(
                sender.fileno(),
                addr,
                len(payload),
                user_data,
                buf_index=buf_index,
                report_usage=report_usage,
                msg_flags=socket.MSG_NOSIGNAL,
            )
        ring.submit()
    except OSError as exc:
        return f"submitting it failed with {_errno_name(exc.errno or 0)} ({exc.strerror})"
    deadline = time.monotonic() + _PROBE_TIMEOUT
    result: Cqe | None = None
    notification: Cqe | None = None
    while time.monotonic() < deadline:
        for cqe in ring.wait(1, deadline - time.monotonic()):
            if cqe.user_data != user_data:
                continue
            if cqe.notif:
                notification = cqe
            else:
                result = cqe
        if result is not None and (notification is not None or not result.more):
            break
    if result is None:
        return f"no result CQE came within {_PROBE_TIMEOUT:g} s"
    if result.res < 0:
        return _errno_name(-result.res)
    if result.res != len(payload):
        return f"{result.res} of {len(payload)} bytes were sent"
    if not result.more:
        return "the result CQE did not announce a notification (no F_MORE)"
    if notification is None:
        return f"no notification CQE came within {_PROBE_TIMEOUT:g} s"
    if report_usage and not notification.res & IORING_NOTIF_USAGE_ZC_COPIED:
        # Loopback always copies at delivery, so a kernel that honours
        # REPORT_USAGE sets the bit here; one that ignores the flag would not.
        return "the notification did not report the copy that loopback always makes"
    received = b""
    try:
        while len(received) < len(payload):
            chunk = receiver.recv(len(payload) - len(received))
            if not chunk:
                break
            received += chunk
    except OSError as exc:
        return f"receiving the bytes failed ({exc})"
    if received != payload:
        return f"the receiver got {received!r} instead of {payload!r}"
    del buffer
    return None


def _fixed_trial(ring: Ring, sender: socket.socket, receiver: socket.socket) -> str | None:
    """Register an anonymous page and SEND_ZC from it; None if it worked."""
    payload = b"fixed buffer"
    with mmap.mmap(-1, mmap.PAGESIZE) as region:
        region[: len(payload)] = payload
        address = _address_of(region)
        try:
            ring.register_buffers([(address, mmap.PAGESIZE)])
        except OSError as exc:
            return f"registering a page failed with {_errno_name(exc.errno or 0)} ({exc.strerror})"
        try:
            return _trial(ring, sender, receiver, payload, report_usage=False, buf_index=0, addr=address)
        finally:
            ring.unregister_buffers()


def _sendmsg_trial(ring: Ring, sender: socket.socket, receiver: socket.socket) -> str | None:
    """A SENDMSG_ZC of two iovecs from ordinary memory; None if it worked."""
    head = ctypes.create_string_buffer(b"head:", 5)
    body = ctypes.create_string_buffer(b"body", 4)
    message = Message([(ctypes.addressof(head), 5), (ctypes.addressof(body), 4)])
    err = _trial(ring, sender, receiver, b"head:body", report_usage=False, message=message)
    del head, body, message
    return err


def _vectored_fixed_trial(ring: Ring, sender: socket.socket, receiver: socket.socket) -> str | None:
    """What the io_uring kernel does to send a head with a lease, tried on one page of each.

    Two memfds, a page each, registered side by side as one buffer
    (:meth:`Ring.register_files`); then bytes written through other
    mappings of them after the registration, and one SENDMSG_ZC of two
    iovecs inside that buffer. None if the receiver got both, in order.
    """
    page = mmap.PAGESIZE
    head, body = b"vectored head:", b"registered body"
    fds = [os.memfd_create("trio_zc-probe-head", os.MFD_CLOEXEC), os.memfd_create("trio_zc-probe-body", os.MFD_CLOEXEC)]
    try:
        for fd in fds:
            os.ftruncate(fd, page)
        try:
            ring.register_sparse_buffers(1)
        except OSError as exc:
            return f"registering a buffer table failed with {_errno_name(exc.errno or 0)} ({exc.strerror})"
        try:
            try:
                base = ring.register_files(0, [(fds[0], 0, page), (fds[1], 0, page)])
            except OSError as exc:
                return f"registering two files' pages failed with {_errno_name(exc.errno or 0)} ({exc.strerror})"
            # Written after the registration, as a head is: the head ends
            # where the body's file begins, so the send crosses the join.
            with mmap.mmap(fds[0], page) as region:
                region[page - len(head) :] = head
            with mmap.mmap(fds[1], page) as region:
                region[: len(body)] = body
            message = Message([(base + page - len(head), len(head)), (base + page, len(body))])
            return _trial(ring, sender, receiver, head + body, report_usage=False, buf_index=0, message=message)
        finally:
            ring.unregister_buffers()
    finally:
        for fd in fds:
            os.close(fd)
