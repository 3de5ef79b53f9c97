"""The pool's memory: one memfd, mapped once, with page protection per lease.

Why a memfd: it is shared memory with a file descriptor, so the sendfile
kernel can send from it and punch pages out of it, and the io_uring kernel
can map a piece of it afresh to register it with its ring (see
``_kernels/_sendfile.py`` and ``_kernels/_io_uring.py``).

The arena is mapped twice, both mappings shared (``MAP_SHARED``), so both
show the same pages:

- a read-write mapping, which only the pool and writable leases use: the
  pool's own writes and zeroing, and the views of writable leases, whose
  exporter is a ctypes array over its range (see below);
- a read-only mapping (``PROT_READ``), from which every view of a sealed
  lease is cut. The ``obj`` behind such a view (``memoryview.obj``) is that
  read-only :class:`mmap.mmap`, so no Python object reachable from a sealed
  lease can write, and native code that writes through a pointer into it
  (``Image.frombuffer(...).im.paste``, say) faults instead of changing an
  image in flight.

In pools opened with ``protect_sealed=True``, sealing a lease also
``mprotect``\\ s its pages in the read-write mapping to read-only, so that
even a pointer into the writable mapping kept from before the seal faults;
it is opt-in because the two calls and TLB flush per lease cost as much as
sending 64 KiB. Free and writable memory is read-write there.

Which memory is pool memory: :func:`overlaps_arena` tells whether a range
of addresses lies in any arena's mappings in this process, so that
``adopt()`` can refuse to make a second lease over pool memory.

After ``fork()``: the child shares the memfd's pages with the parent, so a
view it kept could write into an image the parent is sending. In the child,
:func:`_remap_private_after_fork` replaces every arena mapping by a private
copy-on-write mapping of the same range (the child's writes stay in the
child), and the pools refuse to work there (see ``_pool.py``).

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
import weakref
from collections.abc import Callable

from ._address import buffer_address
from ._libc import function

PAGE_SIZE: int = mmap.PAGESIZE

_mmap = function(
    "mmap", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
)
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_PROT_NONE = 0
_mprotect = function("mprotect", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
_fallocate = function("fallocate", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

Exporter = ctypes.Array[ctypes.c_char]


def open_read_only(fd: int) -> int:
    """A new descriptor of the memfd *fd*, opened read-only (through ``/proc/self/fd``).

    Whoever holds it can read the file and ``sendfile`` from it, but can
    neither write the pages, nor map them writable, nor punch them out
    (``fallocate`` needs a descriptor open for writing) through it. It
    guards against mistakes only: reopening it through ``/proc/self/fd``
    checks the memfd's mode (0777), not this descriptor's, so code in the
    process can get a writable one back. Raises OSError without procfs.
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def _map_read_only(fd: int, size: int) -> mmap.mmap:
    """A shared, read-only mapping of the memfd *fd* that can never become writable.

    Mapped from a descriptor opened read-only (the memfd reopened through
    ``/proc/self/fd``): a read-only mapping of the read-write descriptor
    could still be made writable (``mprotect``), and its ``mmap`` object --
    the ``obj`` of every sealed view -- could punch the pool's pages out
    with ``madvise(MADV_REMOVE)``, turning images in flight into zeros.
    Without procfs it falls back to the read-write descriptor.
    """
    try:
        ro_fd = open_read_only(fd)
    except OSError:  # pragma: no cover - no procfs
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        return mmap.mmap(ro_fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(ro_fd)  # the mmap object keeps a duplicate of its own


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
            # arena unsafe (see _kernels/_thp.py). Sizes the settings force anyway are
            # handled by aligning leases to them.
            self._map.madvise(mmap.MADV_NOHUGEPAGE)
            self._ro_map = _map_read_only(self.fd, size)
            self._ro_map.madvise(mmap.MADV_NOHUGEPAGE)
        except BaseException:
            if hasattr(self, "_map"):
                self._map.close()
            os.close(self.fd)
            raise
        # Holding one export keeps mmap.close() from unmapping under us; the
        # arena decides when unmapping is safe (see close()).
        self._anchor = ctypes.c_char.from_buffer(self._map)
        #: Where the read-write mapping starts (io_uring registers it).
        self.address: int = ctypes.addressof(self._anchor)
        #: The whole arena, read-write, for the pool's own writes (never handed out).
        self.rw: memoryview = memoryview(self._map)
        #: The whole arena from the read-only mapping: sealed leases' views
        #: are slices of this, and its ``obj`` cannot write.
        self.readonly: memoryview = memoryview(self._ro_map)
        self.readonly_address: int = buffer_address(self.readonly)
        ro_map = self._ro_map
        self._ro_alive: Callable[[], object] = lambda: None if ro_map.closed else ro_map
        self.closed = False
        self._fd_open = True
        _MAPPED[id(self)] = self

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
        pages. The range must cover whole folios (see _kernels/_thp.py).
        """
        if _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length):
            err = ctypes.get_errno()
            raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")

    def open_read_only(self) -> int:
        """A new read-only descriptor of the arena's memfd, the caller's to close.

        For another program's ``sendfile`` (``trio_zc.asgi`` hands one to an
        ASGI server): never the read-write descriptor. Raises OSError without
        procfs, and :class:`ValueError` once the arena is closed.
        """
        if self.closed:
            raise ValueError("the arena is closed")
        return open_read_only(self.fd)

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
            self._map.close()
            ro_map = self._ro_map
            try:
                ro_map.close()
            except BufferError:
                # A sealed view escaped to the application and is still
                # alive; the read-only mapping goes when the last one does.
                # Until then it is still pool memory for overlaps_arena().
                self._ro_alive = weakref.ref(ro_map)
            del self._ro_map, ro_map
        os.close(self.fd)
        self._fd_open = False
        if not self.ranges():
            # Nothing of it is mapped any more: forget it now, or a process
            # that opens and closes pools would keep every closed arena.
            _MAPPED.pop(id(self), None)

    def ranges(self) -> list[tuple[int, int]]:
        """The address ranges ``[start, end)`` of the arena's mappings that still exist."""
        out = []
        if not self._map.closed:
            out.append((self.address, self.address + self.size))
        if self._ro_alive() is not None:
            out.append((self.readonly_address, self.readonly_address + self.size))
        return out

    def remap_private(self) -> None:
        """Replace the mappings by private ones of the same ranges (in a forked child).

        Copy-on-write mappings of the memfd while it is open (a view the
        child kept still reads the same bytes, and its writes stay in the
        child); zero pages once the memfd is closed.
        """
        for start, end in self.ranges():
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if start == self.address else 0)
            if self._fd_open:
                got = _mmap(start, end - start, prot, mmap.MAP_PRIVATE | _MAP_FIXED, self.fd, 0)
            else:
                got = _mmap(start, end - start, prot, mmap.MAP_PRIVATE | _MAP_FIXED | mmap.MAP_ANONYMOUS, -1, 0)
            if got != start:
                # Nothing else keeps the parent's images safe from this
                # child's views: make the range inaccessible instead.
                _mprotect(start, end - start, _PROT_NONE)


#: Every arena whose mappings may still exist. Strong references: an arena
#: kept mapped for quarantine must stay known for the life of the process.
_MAPPED: dict[int, Arena] = {}


def overlaps_arena(start: int, length: int) -> bool:
    """Whether ``[start, start + length)`` touches any arena's mappings in this process."""
    end = start + length
    for key, arena in list(_MAPPED.items()):
        ranges = arena.ranges()
        if not ranges:
            del _MAPPED[key]
            continue
        for lo, hi in ranges:
            if start < hi and lo < end:
                return True
    return False


def _remap_private_after_fork() -> None:
    for arena in list(_MAPPED.values()):
        try:
            arena.remap_private()
        except Exception:  # pragma: no cover - must never break the child
            pass


os.register_at_fork(after_in_child=_remap_private_after_fork)


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
