"""The buffer pool: an arena of shared memory handed out as leases.

The pool is the scope that owns every lease: it is opened with
``async with open_pool(...)``, and when that block ends it waits for the
kernel to finish every send in flight (up to a drain deadline), reports the
leases the application still held, and quarantines what never completed.

Waiting for memory is first-come first-served: a request that does not fit
waits behind earlier ones even if a smaller later one would fit, so a large
image is never starved by a stream of small ones.
"""

from __future__ import annotations

import collections
import errno
import os
import resource
import threading
import warnings
from typing import Any, Final, NoReturn, overload

import attrs
import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from ._mypyc import caused, mypyc_attr
from ._address import buffer_address
from ._allocator import Allocator
from ._arena import PAGE_SIZE, Arena, overlaps_arena
from ._errors import ForeignLeaseError, LeaseLeakWarning, QuarantineWarning
from ._kernels._base import Kernel
from ._kernels._thp import shmem_folios
from ._lease import LeaseHome, SealedLease, WritableLease, _LeaseRecord, adopted_memory
from ._lifecycle import OWNED_STATES, TERMINAL_STATES, LeaseState

# Module globals for the per-image checks below (cheaper than LeaseState.X).
_WRITABLE, _FREE = LeaseState.WRITABLE, LeaseState.FREE
from ._policy import ZeroCopyPolicy
from ._stats import Counters, SendStatistics
from ._validate import (
    check_bool,
    check_lease_size,
)

#: How long closing a pool waits, by default, for sends in flight to complete.
#: Completions normally arrive within microseconds of the data leaving; ten
#: seconds covers a peer that stalls, a retransmit timeout or two, and a
#: loaded machine, while still bounding how long a shutdown can hang.
DEFAULT_DRAIN_TIMEOUT: Final = 10.0

#: How often the pool checks whether the views of an abandoned lease are gone.
_SWEEP_INTERVAL: Final = 0.05

# Memory the kernel may still read when its pool closed: kept alive (mapped)
# for the life of the process, because nobody will ever say it is free.
_graveyard: list[object] = []


# Pools not yet closed, for the fork handler below. A plain set, not a
# WeakSet: the compiled build makes BufferPool a native class, which cannot be
# weakly referenced, and every pool leaves the set when it closes (the first
# thing _close() does, which open_pool's block always runs).
_open_pools: set[BufferPool] = set()


#: This process's id, kept current by the fork handler below: streams ask it
#: on every send and receive, and os.getpid() is a system call.
current_pid = os.getpid()


def _after_fork_in_child() -> None:
    global current_pid
    current_pid = os.getpid()
    for pool in list(_open_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


@mypyc_attr(native_class=False)
@attrs.frozen
class StreamDefaults:
    """What a pool's streams start with: one value, given to each stream when it is made."""

    #: ZeroCopyStream.send_timeout (None: no limit).
    send_timeout: float | None
    #: ZeroCopyStream.max_in_flight, in bytes.
    max_in_flight: int
    #: How long a stream's close waits for completions before forcing the connection down.
    drain_timeout: float


@mypyc_attr(native_class=False)
@attrs.frozen
class PoolStatistics:
    """A snapshot of a pool's state, from :meth:`BufferPool.statistics`.

    All byte counts are of arena memory (whole pages), except the
    ``adopted_*`` ones, which count the application's own buffers.
    """

    #: Bytes of pool memory: *max_bytes* rounded down to whole pages.
    max_bytes: int
    #: The unit leases are rounded up to: the page size, or the largest
    #: shared-memory folio for the sendfile kernel when huge pages are on.
    page_size: int
    #: Bytes of pool memory free for new leases.
    free_bytes: int
    #: The largest lease that could be served right now without waiting.
    largest_free_block: int
    #: Leases the application holds writable.
    writable_leases: int
    #: Leases the application holds sealed (pool and adopted).
    sealed_leases: int
    #: Leases released by the application, waiting for the kernel.
    draining_leases: int
    #: Leases released while writable views were alive, waiting for them to go.
    abandoned_leases: int
    #: Leases their owner still holds whose memory will never be reused: a
    #: send of each was lost (its connection closed before the kernel was done).
    tainted_leases: int
    #: Leases released and withheld for good: a send of each was lost (its
    #: connection closed, or the pool's drain deadline passed, before the
    #: kernel was done), or (``protect_sealed``) their pages could not be
    #: made writable again.
    quarantined_leases: int
    #: Bytes of pool memory withheld for good by quarantine.
    quarantined_bytes: int
    #: Adopted buffers not yet reusable by the application.
    adopted_leases: int
    #: Bytes of those adopted buffers.
    adopted_bytes: int
    #: Sends handed to the kernel and not yet reported complete.
    sends_in_flight: int
    #: Tasks waiting in :meth:`BufferPool.acquire`.
    tasks_waiting: int
    #: Leases ever handed out (acquired or adopted).
    leases_total: int
    #: Leases the application still held when the pool closed.
    leaked_at_close: int
    #: Whether the pool's block has ended.
    closed: bool
    #: The pool's kernel: "copy", "msg_zerocopy", "io_uring", "sendfile", or
    #: "mock" (:class:`trio_zc.testing.MockKernel`); "auto" is one of the first four.
    kernel: str
    #: Why the kernel runs as it does (a fallback, an alignment), or None.
    kernel_note: str | None
    #: What the pool's streams sent, and how (sums over all its streams).
    sent: SendStatistics
    #: Why streams stopped using zero-copy: ``(reason, how many times)``.
    fallbacks: tuple[tuple[str, int], ...]


class LeaseScope:
    """What :meth:`BufferPool.lease` returns: ``async with`` it to hold a lease for a block."""

    # A plain class rather than @asynccontextmanager: this runs once per
    # image, and a generator-based context manager costs several
    # microseconds more per use.
    __slots__ = ("_pool", "_nbytes", "_schedule", "_slot", "_entering")

    def __init__(self, pool: BufferPool, nbytes: int, schedule: bool) -> None:
        self._pool = pool
        self._nbytes = nbytes
        self._schedule = schedule
        self._slot: _LeaseRecord | None = None
        # Set from the start of __aenter__: a second task entering the same
        # scope while the first waits for its lease would otherwise get a
        # lease of its own, and one of the two would never be released.
        self._entering = False

    async def __aenter__(self) -> WritableLease:
        if self._slot is not None or self._entering:
            raise RuntimeError("this pool.lease() scope was already entered; call pool.lease() again")
        self._entering = True
        # BufferPool.acquire() inlined (nbytes was checked by pool.lease()):
        # a second coroutine per image costs more than these lines.
        pool = self._pool
        try:
            if pool._closed:
                pool._check_open()  # raises
            await checkpoint_if_cancelled()
            lease = pool._take(self._nbytes)
            if lease is None:
                lease = await pool._wait_for(self._nbytes)
            elif self._schedule:
                await cancel_shielded_checkpoint()
        except BaseException:
            self._entering = False  # nothing was taken: the scope may be entered again
            raise
        self._slot = lease._slot
        return lease

    async def __aexit__(self, *exc_info: object) -> None:
        slot = self._slot
        assert slot is not None
        if slot.state in OWNED_STATES:
            self._pool._release(slot, "its `async with pool.lease()` block ended")


@mypyc_attr(native_class=False)
@attrs.define(eq=False)
class _Waiter:
    nbytes: int
    event: trio.Event = attrs.field(factory=trio.Event)
    slot: _LeaseRecord | None = None
    closed: bool = False


class BufferPool:
    """Page-aligned shared memory, handed out as leases.

    Create one with :func:`open_pool`; there is no public constructor. See
    :class:`WritableLease` and :class:`SealedLease` for the life of a lease.
    """

    def __init__(
        self,
        _arena: Arena,
        *,
        kernel: Kernel,
        policy: ZeroCopyPolicy,
        drain_timeout: float,
        protect_sealed: bool = False,
        send_timeout: float | None = None,
        stream_max_in_flight: int | None = None,
    ) -> None:
        self._arena = _arena
        self._pid = os.getpid()
        self._kernel = kernel
        self._granule = kernel.allocation_granule()
        self._policy = policy
        self._counters = Counters()
        self._fallbacks: collections.Counter[str] = collections.Counter()
        self._allocator = Allocator(_arena.size, self._granule)
        self._drain_timeout = drain_timeout
        self._waiters: collections.deque[_Waiter] = collections.deque()
        # Every slot not yet FREE or QUARANTINED.
        self._slots: dict[int, _LeaseRecord] = {}
        self._abandoned: list[_LeaseRecord] = []
        self._sweep_wanted = trio.Event()
        self._sends_in_flight = 0
        self._drained: trio.Event | None = None
        self._leases_total = 0
        self._leaked_at_close = 0
        self._quarantined_leases = 0
        self._quarantined_bytes = 0
        self._closed = False
        #: Whether sealed leases' pages are read-only in the page tables too.
        self._protect_sealed = protect_sealed
        #: The Trio thread that runs the pool: the one thread allowed to
        #: change whom memory belongs to (see "Threads" in _lease.py).
        self._trio_thread = threading.get_ident()
        #: What every lease record of this pool gets to reach it (and only this).
        self._home = LeaseHome(
            arena=_arena,
            thread=self._trio_thread,
            protect_sealed=protect_sealed,
            round_up=self._allocator.round_up,
            send_began=self._send_began,
            send_ended=self._on_send_complete,
            give_back=self._give_back,
            release=self._release,
            wrong_thread=self._wrong_thread,
            pages_replaceable=self._pages_replaceable,
        )
        # Whether whole blocks of this pool cover whole folios of the memfd
        # (see _kernels/_thp.py); read from sysfs when first needed.
        self._folios_fit: bool | None = None
        #: Set in a forked child: why nothing of this pool may be used there.
        self._forked: str | None = None
        #: Leases whose memory could not be made writable again (protect_sealed).
        self._unprotectable: list[str] = []
        #: What the pool's streams start with (see open_pool).
        self._stream_defaults = StreamDefaults(
            send_timeout=send_timeout,
            max_in_flight=stream_max_in_flight or max(_arena.size // 4, PAGE_SIZE),
            drain_timeout=drain_timeout,
        )
        # Last: a pool whose making failed is not kept for the fork handler.
        _open_pools.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<trio_zc.BufferPool {state}, {self._arena.size} bytes>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # copy.copy() would make a second pool object over the same arena,
        # allocator and leases, with a "closed" flag of its own: after the
        # pool's block ended it would still hand out leases of unmapped (or
        # remapped) memory. copy.deepcopy() and pickle end here too.
        raise TypeError("a BufferPool cannot be copied or pickled: it owns its memory; pass the pool itself")

    # -- checks -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            if self._forked is not None:
                raise trio.ClosedResourceError(self._forked)
            raise trio.ClosedResourceError("this pool's block has ended; open a new pool")

    def _pages_replaceable(self) -> bool:
        """Whether a lease's pages may be punched out when it comes back (for ``trio_zc.asgi``).

        The kernel must keep no reference to them (:meth:`Kernel.pages_replaceable`),
        and a lease's blocks must cover whole folios, or the punch zeroes
        the rest of a folio in place, under the socket's feet.
        """
        if self._folios_fit is None:
            self._folios_fit = self._granule >= shmem_folios().largest
        return self._folios_fit and self._kernel.pages_replaceable()

    def _wrong_thread(self, what: str) -> NoReturn:
        raise RuntimeError(
            f"{what} must be called from the Trio thread that runs the pool; from a worker"
            f" thread, call it through trio.from_thread.run_sync"
        )

    def _after_fork_in_child(self) -> None:
        """This is a forked child's copy of the pool: make it and its leases refuse to work."""
        self._forked = (
            f"this pool belongs to process {self._pid}, which forked this one; a forked"
            " child cannot use its parent's pools or leases: open a new pool in the child"
        )
        self._closed = True
        self._waiters.clear()
        for slot in self._slots.values():
            slot.stale_reason = self._forked
            slot.fork()
            # A lock held by a thread of the parent (a write in progress at
            # the fork) would stay held for ever here, where that thread does
            # not exist: write() and view() would hang instead of refusing.
            slot.lock = threading.Lock()
        self._slots.clear()
        self._abandoned.clear()

    def _check_nbytes(self, nbytes: object) -> int:
        return check_lease_size(nbytes, self._arena.size)

    def _own(self, lease: object) -> _LeaseRecord:
        if not isinstance(lease, (WritableLease, SealedLease)):
            raise TypeError(f"expected a lease, not {type(lease).__name__}")
        slot = lease._slot
        if slot.home is not self._home:
            raise ForeignLeaseError(f"{lease!r} belongs to another pool")
        return slot

    @property
    def max_bytes(self) -> int:
        """The most memory the pool's leases ever use, in bytes (the arena's size)."""
        return self._arena.size

    # -- acquiring ----------------------------------------------------------

    def _new_slot(self, nbytes: int) -> _LeaseRecord | None:
        # _take() has these lines inlined: keep the two in step.
        offset = self._allocator.allocate(nbytes)
        if offset is None:
            return None
        slot = _LeaseRecord(self._home, offset, nbytes)  # positional: once per image
        self._slots[slot.id] = slot
        self._leases_total += 1
        return slot

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    def acquire_nowait(self, nbytes: int) -> WritableLease: ...
    def acquire_nowait(self, nbytes: object) -> WritableLease:
        """Take a lease of *nbytes* now, or raise :class:`trio.WouldBlock`.

        It raises WouldBlock also when the memory is there but other tasks
        are already waiting for it: they come first. Only from the pool's
        Trio thread.
        """
        self._check_open()
        if threading.get_ident() != self._trio_thread:
            self._wrong_thread("BufferPool.acquire_nowait()")
        lease = self._take(self._check_nbytes(nbytes))
        if lease is None:
            raise trio.WouldBlock
        return lease

    def _take(self, nbytes: int) -> WritableLease | None:
        """A lease of *nbytes* (already checked) if one can be had now, without waiting."""
        if self._waiters:
            return None
        if self._abandoned:
            self._sweep()
        # _new_slot() inlined: this runs once per image.
        offset = self._allocator.allocate(nbytes)
        if offset is None:
            return None
        slot = _LeaseRecord(self._home, offset, nbytes)
        self._slots[slot.id] = slot
        self._leases_total += 1
        return WritableLease(slot)

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    async def acquire(self, nbytes: int, *, schedule: bool = True) -> WritableLease: ...
    async def acquire(self, nbytes: object, *, schedule: object = True) -> WritableLease:
        """Take a lease of *nbytes*, waiting while the pool is full.

        Waiters are served first-come first-served. Cancelling the wait
        leaves nothing behind. Every request of at most :attr:`max_bytes` is
        served once enough leases come back: freed memory is merged, so
        fragmentation delays a request but never refuses it.

        Like every Trio checkpoint, it lets other tasks run even when the
        memory is there at once. With ``schedule=False`` it is still a cancel
        point, but yields to other tasks only when it has to wait: for loops
        whose every turn already yields elsewhere (``send_lease`` is a
        checkpoint), this saves one pass through Trio's scheduler per image
        (see the "tight send loops" recipe). Never use it in a loop that
        has no other checkpoint.
        """
        if self._closed or type(nbytes) is not int or not 0 < nbytes <= self._arena.size:
            # The checks with their messages (an int subclass passes them, at its value).
            self._check_open()
            nbytes = self._check_nbytes(nbytes)
        if type(schedule) is not bool:
            check_bool("schedule", schedule)  # raises
        await trio.lowlevel.checkpoint_if_cancelled()
        lease = self._take(nbytes)
        if lease is not None:
            if schedule:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return lease
        return await self._wait_for(nbytes)

    async def _wait_for(self, nbytes: int) -> WritableLease:
        """Queue for a lease of *nbytes* (already checked) and wait for it."""
        waiter = _Waiter(nbytes)
        self._waiters.append(waiter)
        if self._abandoned:
            self._sweep_wanted.set()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.slot is not None:
                # Granted just as we were cancelled: give it back untouched.
                self._release(waiter.slot, "its acquire() was cancelled")
            else:
                self._waiters.remove(waiter)
                # We may have been the head holding back smaller requests.
                self._serve_waiters()
            raise
        if waiter.closed:
            raise trio.ClosedResourceError("the pool closed while waiting for memory")
        assert waiter.slot is not None
        return WritableLease(waiter.slot)

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    def lease(self, nbytes: int, *, schedule: bool = True) -> LeaseScope: ...
    def lease(self, nbytes: object, *, schedule: object = True) -> LeaseScope:
        """``async with pool.lease(n) as lease:``: a lease scoped to a block.

        Entering acquires (waiting like :meth:`acquire`, which explains
        *schedule*). When the block ends, the lease is released in whatever
        state it reached: the writable handle, or the sealed one that
        :meth:`WritableLease.seal` returned. Its memory returns to the pool
        once the kernel has finished every send of it.
        """
        if type(schedule) is not bool:
            schedule = check_bool("schedule", schedule)  # raises
        if type(nbytes) is not int or not 0 < nbytes <= self._arena.size:
            nbytes = self._check_nbytes(nbytes)  # raises, with the reason (an int subclass passes, at its value)
        return LeaseScope(self, nbytes, schedule)

    def adopt(self, buffer: Any) -> SealedLease:
        """Wrap a buffer the application owns as a sealed lease, without copying.

        *buffer* is anything with the buffer protocol that is C-contiguous
        (bytes, bytearray, a NumPy array, an mmap). Read-only buffers are
        fine: sending only reads. The lease keeps the buffer exported, so a
        bytearray cannot be resized, nor an mmap closed, while the kernel may
        read it; call :meth:`SealedLease.wait_reusable` to give the lease up
        and learn when the buffer may be written again. Adopted memory does
        not count against *max_bytes*.

        Pool memory cannot be adopted (a view of a lease, of this pool or
        another): a second lease over the same memory would keep sending
        it after the first one gave it back. It raises :class:`ValueError`;
        send the lease itself, or part of it with
        :meth:`ZeroCopyStream.send_lease`'s *offset* and *nbytes*.

        The same memory may be adopted more than once (by this pool or
        another): :meth:`SealedLease.wait_reusable` of any of those leases
        returns only once no lease over that memory has a send in flight.
        """
        self._check_open()
        if threading.get_ident() != self._trio_thread:
            self._wrong_thread("BufferPool.adopt()")
        try:
            view = memoryview(buffer)
        except TypeError:
            # caused(..., None) does what ``from None`` does where mypyc compiles the clause away.
            raise caused(
                TypeError(f"adopt() needs a buffer (bytes, bytearray, array, mmap), not {type(buffer).__name__}"),
                None,
            ) from None
        with view:
            if not view.c_contiguous:
                raise ValueError("adopt() needs a C-contiguous buffer; this one is strided")
            if view.nbytes == 0:
                raise ValueError("adopt() needs a non-empty buffer")
            address = buffer_address(view)
            if overlaps_arena(address, view.nbytes):
                raise ValueError(
                    "adopt() cannot take pool memory (a view of a lease): the lease it belongs to"
                    " decides when that memory is reused. Send that lease instead, or a part of"
                    " it with send_lease(lease, offset, nbytes)"
                )
            immutable = type(view.obj) is bytes
            # Read-only: the sealed handle never writes, and neither may
            # anything reached through it (SealedLease.view().obj).
            with view.cast("B") as flat:
                readonly = flat.toreadonly()
        slot = _LeaseRecord(self._home, 0, readonly.nbytes, readonly)
        adopted_memory.add(slot, address, immutable)
        self._slots[slot.id] = slot
        self._leases_total += 1
        return SealedLease(slot)

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    def release(self, lease: WritableLease | SealedLease) -> None: ...
    def release(self, lease: object) -> None:
        """Release *lease*, which must come from this pool.

        The same as ``lease.release()``, after checking that the lease is
        this pool's (:class:`ForeignLeaseError` otherwise); for code that
        keeps leases of several pools.
        """
        if not isinstance(lease, (WritableLease, SealedLease)):
            self._own(lease)  # raises
        else:
            self._own(lease)
            lease.release()

    # -- the end of a lease -------------------------------------------------

    def _release(self, slot: _LeaseRecord, reason: str) -> None:
        """The owner gave *slot* up (or its scope did it for them)."""
        slot.stale_reason = reason
        if slot.state is _WRITABLE:
            # A view still alive, or a write running in another thread
            # (which holds the lock), means the memory is not ours to
            # reuse yet: abandon it until they are gone.
            lock = slot.lock
            if lock.acquire(blocking=False):
                try:
                    busy = slot.live_views() > 0
                    if not busy:
                        slot.release()
                finally:
                    lock.release()
            else:
                busy = True
            if busy:
                slot.release(views_alive=True)
                self._abandoned.append(slot)
                self._sweep_wanted.set()
            else:
                self._settle(slot)
        elif slot.release() in TERMINAL_STATES:
            self._settle(slot)
        # Otherwise DRAINING: the last completion settles it.

    def _send_began(self) -> None:
        self._sends_in_flight += 1

    def _on_send_complete(self, slot: _LeaseRecord) -> None:
        self._sends_in_flight -= 1
        if slot.state in TERMINAL_STATES:
            self._settle(slot)
        elif slot.idle is not None and not slot.inflight:
            slot.idle.set()  # an overlapping adopted lease's wait_reusable() waits for this
        if self._sends_in_flight == 0 and self._drained is not None:
            self._drained.set()

    def _settle(self, slot: _LeaseRecord) -> None:
        """Act on the state *slot* reached, once per lease when it ends."""
        if slot.state not in TERMINAL_STATES or self._slots.pop(slot.id, None) is None:
            return
        if slot.state is _FREE:
            if slot.adopted is not None:
                adopted_memory.discard(slot)
                slot.adopted.release()
            elif not self._arena.closed:
                # Free memory keeps its bytes: the next lease clears what
                # its owner does not overwrite before anyone can see it
                # (see _LeaseRecord.clean_bytes), which costs nothing when the whole
                # lease is written with write().
                if self._protect_sealed and slot.was_sealed:
                    try:
                        self._arena.protect(slot.offset, slot.block_length, writable=True)
                    except OSError as exc:
                        # The process has no memory-map area to spare
                        # (vm.max_map_count): the pages stay read-only, so
                        # they cannot be handed out. Withheld for good,
                        # counted as quarantined, and said at close.
                        self._quarantined_leases += 1
                        self._quarantined_bytes += slot.block_length
                        self._unprotectable.append(f"{slot.describe()}: {exc}")
                        slot.wake_reusable()
                        return
                if slot.pages_held:
                    # A socket may still hold these pages (sendfile): give
                    # them up and let the next writer fault in fresh zero
                    # pages. Blocks cover whole folios (see _kernels/_thp.py).
                    self._arena.punch(slot.offset, slot.block_length)
                self._allocator.free(slot.offset, slot.capacity)
                if self._waiters:
                    self._serve_waiters()
            if slot._reusable is not None:  # someone waits in wait_reusable()
                slot.wake_reusable()
        else:
            self._quarantined_leases += 1
            self._quarantined_bytes += slot.block_length
            if slot.adopted is not None:
                # Keep the application's buffer exported: it must not be
                # resized or freed while the kernel may read it.
                _graveyard.append(slot.adopted)
            slot.wake_reusable()

    def _give_back(self, offset: int, length: int) -> None:
        """Return writable pages a lease no longer needs (the tail past its seal)."""
        self._allocator.free(offset, length)
        self._serve_waiters()

    def _serve_waiters(self) -> None:
        while self._waiters:
            waiter = self._waiters[0]
            slot = self._new_slot(waiter.nbytes)
            if slot is None:
                return
            self._waiters.popleft()
            waiter.slot = slot
            waiter.event.set()

    def _sweep(self) -> None:
        """Free abandoned leases whose writable views have gone away."""
        if not self._abandoned:
            return
        still = []
        for slot in self._abandoned:
            # The lock is free once no thread is writing into the lease.
            if slot.lock.acquire(blocking=False):
                try:
                    gone = not slot.live_views()
                    if gone:
                        slot.views = None
                        slot.views_gone()
                finally:
                    slot.lock.release()
                if gone:
                    self._settle(slot)
                    continue
            still.append(slot)
        self._abandoned = still

    async def _sweeper(self) -> None:
        while True:
            await self._sweep_wanted.wait()
            while self._abandoned:
                self._sweep()
                await trio.sleep(_SWEEP_INTERVAL)
            self._sweep_wanted = trio.Event()

    # -- closing ------------------------------------------------------------

    async def _close(self) -> None:
        """Drain, report and quarantine; the end of :func:`open_pool`'s block."""
        self._closed = True
        _open_pools.discard(self)
        for waiter in self._waiters:
            waiter.closed = True
            waiter.event.set()
        self._waiters.clear()

        held = [slot for slot in self._slots.values() if slot.owned]
        self._leaked_at_close = len(held)
        # Named as the application left them, before they are released.
        names = ", ".join(slot.describe() for slot in held[:10])
        for slot in held:
            self._release(slot, "its pool closed")
        try:
            if self._sends_in_flight:
                self._drained = trio.Event()
                # Shielded: a cancelled scope must not cut the drain short, or
                # memory would be recycled under the kernel. The deadline bounds it.
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self._drain_timeout):
                        await self._drained.wait()
                    if self._sends_in_flight:
                        # Past the deadline: let the kernel force its connections
                        # down (which still reports their sends complete) and
                        # quarantine what it cannot bring back.
                        await self._kernel.abort_in_flight()
        finally:
            # Also when the wait above was interrupted (a KeyboardInterrupt is
            # delivered even in a shielded scope): the pool ends whole, with
            # whatever is still in flight quarantined; and the warnings come
            # last, so that one turned into an exception tears nothing.
            inflight = [s for s in self._slots.values() if s.inflight]
            for slot in inflight:
                slot.stale_reason = "its pool closed"
                if not slot.quarantine_reason:
                    slot.quarantine_reason = "the pool closed"
                slot.quarantine()
                self._settle(slot)
            self._sweep()
            # Unmapping is safe only if neither the kernel (quarantine) nor a
            # view the application kept (abandoned) can still touch the memory.
            keep = bool(self._quarantined_bytes or self._abandoned)
            if keep:
                _graveyard.append(self._arena)
            self._arena.close(keep_mapping=keep)
            if held:
                more = f" and {len(held) - 10} more" if len(held) > 10 else ""
                warnings.warn(
                    LeaseLeakWarning(
                        f"the pool closed while the application still held {len(held)}"
                        f" lease(s): {names}{more}; the pool released them"
                    ),
                    stacklevel=4,
                )
            if self._unprotectable:
                warnings.warn(
                    QuarantineWarning(
                        f"{len(self._unprotectable)} released lease(s) could not be made writable"
                        " again (protect_sealed; the process ran out of memory-map areas,"
                        f" vm.max_map_count): that memory was withheld: {self._unprotectable[0]}"
                    ),
                    stacklevel=4,
                )
            if inflight:
                warnings.warn(
                    QuarantineWarning(
                        f"the pool closed with {len(inflight)} lease(s) the kernel never"
                        f" reported done ({self._quarantined_bytes} arena bytes and"
                        f" {sum(s.nbytes for s in inflight if s.adopted is not None)} adopted"
                        " bytes); that memory is quarantined: never reused or unmapped"
                    ),
                    stacklevel=4,
                )

    # -- statistics ---------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's memory and leases."""
        counts: collections.Counter[LeaseState] = collections.Counter()
        adopted_leases = adopted_bytes = 0
        for slot in self._slots.values():
            counts[slot.state] += 1
            if slot.adopted is not None:
                adopted_leases += 1
                adopted_bytes += slot.capacity
        return PoolStatistics(
            max_bytes=self._arena.size,
            page_size=self._granule,
            free_bytes=self._allocator.free_bytes,
            largest_free_block=self._allocator.largest_free_block,
            writable_leases=counts[LeaseState.WRITABLE],
            sealed_leases=counts[LeaseState.SEALED] + counts[LeaseState.SENDING] + counts[LeaseState.TAINTED],
            draining_leases=counts[LeaseState.DRAINING],
            abandoned_leases=counts[LeaseState.ABANDONED],
            tainted_leases=counts[LeaseState.TAINTED],
            quarantined_leases=self._quarantined_leases,
            quarantined_bytes=self._quarantined_bytes,
            adopted_leases=adopted_leases,
            adopted_bytes=adopted_bytes,
            sends_in_flight=self._sends_in_flight,
            tasks_waiting=len(self._waiters),
            leases_total=self._leases_total,
            leaked_at_close=self._leaked_at_close,
            closed=self._closed,
            kernel=self._kernel.name,
            kernel_note=self._kernel.note,
            sent=attrs.evolve(
                SendStatistics.of(self._counters),
                malformed_records=self._counters.malformed_records + self._kernel.malformed_records,
            ),
            fallbacks=tuple(self._fallbacks.items()),
        )

    def _note_fallback(self, reason: str) -> None:
        self._fallbacks[reason] += 1


def check_pool(pool: object) -> BufferPool:
    """*pool* if it is an open pool (a stream's, a listener's, a server's *pool*); refuse anything else."""
    if not isinstance(pool, BufferPool):
        raise TypeError(f"pool must be a BufferPool (from trio_zc.open_pool), not {type(pool).__name__}")
    pool._check_open()
    return pool


def _map_areas() -> tuple[int, int]:
    """The process's memory-map areas and the most it may have (0, 0 where unknown)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f), limit
    except (OSError, ValueError):
        return 0, 0


def _cannot_map(size: int, exc: OSError) -> OSError:
    """What to raise when the arena of *size* bytes could not be made: which limit was hit."""
    soft_as = resource.getrlimit(resource.RLIMIT_AS)[0]
    if exc.errno == errno.ENOMEM:
        map_areas, max_map_count = _map_areas()
        if max_map_count and map_areas >= max_map_count - 2:
            # Out of memory-map areas (an arena takes two), not of memory.
            why = f"the process already has as many memory mappings as vm.max_map_count allows ({max_map_count})"
        else:
            why = "more address space than this process has free"
            if soft_as != resource.RLIM_INFINITY:
                why += f" (its RLIMIT_AS is {soft_as} bytes)"
    elif exc.errno == errno.EMFILE:
        why = (
            "no file descriptor left for the pool's memory"
            f" (RLIMIT_NOFILE: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
        )
    elif exc.errno == errno.ENFILE:
        why = "the system's table of open files is full"
    elif exc.errno == errno.EFBIG:
        why = f"larger than the files this process may make (RLIMIT_FSIZE: {resource.getrlimit(resource.RLIMIT_FSIZE)[0]})"
    else:
        why = "the kernel refused"
    return OSError(exc.errno, f"cannot map a pool of {size} bytes ({exc.strerror}): {why}")

