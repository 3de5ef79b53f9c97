"""The pool's memory: one memfd, mapped once, with page protection per lease.

Why a memfd: it is shared memory with a file descriptor, so later kernels
can ``sendfile`` from it or register it with io_uring.

The arena is mapped once. In pools opened with ``protect_sealed=True``,
sealing a lease ``mprotect``\\ s its pages to read-only, so the process's only
mapping of sealed memory cannot be written (a stray write from native code
would fault rather than corrupt an image in flight); it is opt-in because the
two calls and TLB flush per lease cost as much as sending 64 KiB. Free and
writable memory is read-write.

Why not one ``mmap`` object per view: measured on this kind of machine
(``benchmarks/stale_bytes.py``), mapping a fresh range per lease costs page
faults on every first touch; ``mprotect`` on an already-populated mapping
does not.

How views are counted: each writable lease exports its pages through one
small ctypes array (:meth:`Arena.exporter`). Every memoryview, NumPy array
or PIL image built on the lease holds a reference to that exporter (slices
share their parent's), so the exporter's reference count beyond the pool's
own says how many views are alive; see :class:`ViewCounter`.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

PAGE_SIZE: int = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_mprotect = _libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_mprotect.restype = ctypes.c_int
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

Exporter = ctypes.Array[ctypes.c_char]


class Arena:
    """A memfd of *size* bytes (a multiple of the page size), mapped read-write."""

    def __init__(self, size: int, *, name: str = "trio_zc-arena") -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"arena size must be a positive multiple of {PAGE_SIZE}")
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self._map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
            # Ask for base pages: huge folios would make punching part of the
            # arena unsafe (see _thp.py). Sizes the settings force anyway are
            # handled by aligning leases to them.
            self._map.madvise(mmap.MADV_NOHUGEPAGE)
        except BaseException:
            os.close(self.fd)
            raise
        # Holding one export keeps mmap.close() from unmapping under us; the
        # arena decides when unmapping is safe (see close()).
        self._anchor = ctypes.c_char.from_buffer(self._map)
        self.address: int = ctypes.addressof(self._anchor)
        #: The whole arena, for the pool's own writes (never handed out).
        self.rw: memoryview = memoryview(self._map)
        #: The whole arena, read-only: sealed leases are slices of this.
        self.readonly: memoryview = self.rw.toreadonly()
        self.closed = False

    def protect(self, offset: int, length: int, *, writable: bool) -> None:
        """Make ``[offset, offset + length)`` read-write or read-only."""
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        if _mprotect(self.address + offset, length, prot):
            err = ctypes.get_errno()
            raise OSError(err, f"mprotect failed: {os.strerror(err)}")

    def punch(self, offset: int, length: int) -> None:
        """Replace the pages of a range with fresh zero pages.

        The old pages leave the file; whoever still holds them (a socket,
        after sendfile) keeps them, and the next access faults in new zeroed
        pages. The range must cover whole folios (see _thp.py).
        """
        if _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length):
            err = ctypes.get_errno()
            raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")

    def zero(self, offset: int, length: int) -> None:
        """Overwrite a (writable) range with zeros."""
        ctypes.memset(self.address + offset, 0, length)

    def exporter(self, offset: int, length: int) -> Exporter:
        """A new ctypes array over ``[offset, offset + length)`` to build views on."""
        return (ctypes.c_char * length).from_address(self.address + offset)

    def close(self, *, keep_mapping: bool = False) -> None:
        """Close the memfd and, unless *keep_mapping*, unmap the arena.

        Keep the mapping when anything may still touch the memory: the
        kernel (quarantined sends) or a view the application kept.
        """
        if self.closed:
            return
        self.closed = True
        if not keep_mapping:
            del self._anchor
            self.readonly.release()
            self.rw.release()
            try:
                self._map.close()
            except BufferError:
                # A sealed view escaped to the application and is still
                # alive; the mapping goes when it does.
                pass
        os.close(self.fd)


class ViewCounter:
    """Owns a lease's exporter and counts the views built on it.

    The count is the exporter's reference count beyond the counter's own.
    The baseline is measured once, through this same method, so that the
    interpreter's temporary references (which differ between Python
    versions) cancel out.
    """

    __slots__ = ("exporter",)

    def __init__(self, exporter: Exporter | None) -> None:
        self.exporter = exporter

    def live_views(self) -> int:
        exporter = self.exporter
        if exporter is None:
            return 0
        return sys.getrefcount(exporter) - _BASELINE


_BASELINE = 0
_BASELINE = ViewCounter((ctypes.c_char * 1)()).live_views()
