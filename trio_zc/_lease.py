"""Lease handles: what the application holds while it writes and sends.

A lease is one record (:class:`_LeaseRecord`) behind two kinds of handle. The
:class:`WritableLease` can write and seal; the :class:`SealedLease` can be
sent and released. They are different classes with no common write or send
method, so the type checker rejects the mistakes, and each handle checks the
record's state on every use, so the program rejects them too.

The record, not the handle, owns the memory and the life cycle: it *is* the
lease's :class:`~trio_zc._lifecycle.Lifecycle` (a subclass, so that the
state every check reads is one attribute away, not two), with the memory
added. Kernels talk to the record through the few methods marked "for
kernels" below.

Threads
=======

The rule: a :class:`WritableLease` may be *written* from any thread --
:meth:`~WritableLease.write`, :meth:`~WritableLease.view`,
:meth:`~WritableLease.ndarray` and :attr:`~WritableLease.nbytes`, from
worker threads (``trio.to_thread.run_sync``) and the Trio thread at once.
Everything that changes whom the memory belongs to -- sealing, releasing,
acquiring, adopting, sending -- runs in the Trio thread that runs the pool
(``trio.from_thread.run_sync(lease.seal)`` from a worker), and says so with
a :class:`RuntimeError` when called elsewhere.

How it holds: each pool lease has a :class:`threading.Lock`. A write checks
the lease's state and copies its bytes while holding it, and a view is
made and counted while holding it, so neither can start after a seal or a
release, nor run across one. Sealing and releasing take the lock without
waiting: a seal or an explicit release that finds a write running in
another thread refuses with :class:`trio.BusyResourceError` (changing
nothing), and a release that cannot refuse (the end of a ``pool.lease()``
block, the pool closing) abandons the lease, which goes back to the pool
once the write is over (rule 5 of the life cycle).
"""

from __future__ import annotations

import io
import itertools
import operator
import os
import threading
from collections.abc import Sequence
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn, SupportsIndex, overload

import trio

# Arena at run time too, not only for the type checker: compiled by mypyc,
# the module checks the type of LeaseHome.arena when a home is made.
from ._arena import Arena, ViewCounter
from ._errors import LeaseQuarantinedError, LiveViewsError, StaleLeaseError
from ._lifecycle import LeaseState, Lifecycle
from ._mypyc import caused
from ._readonly import ReadOnlyBuffer as ReadOnlyBuffer
from ._validate import exact_int

# Module globals for the per-image checks below (cheaper than LeaseState.X).
_WRITABLE, _SEALED, _SENDING = LeaseState.WRITABLE, LeaseState.SEALED, LeaseState.SENDING
_TAINTED = LeaseState.TAINTED

if TYPE_CHECKING:
    import numpy
    import numpy.typing

_ids = itertools.count(1)


def describe_lease(lease_id: int, adopted: bool, nbytes: int, state: LeaseState) -> str:
    """How errors and reprs name a lease: ``lease #N (pool, 4096 bytes, sealed)``."""
    kind = "adopted" if adopted else "pool"
    return f"lease #{lease_id} ({kind}, {nbytes} bytes, {state.value})"


def refuse_deep_copy(kind: str) -> NoReturn:
    """What ``copy.deepcopy()`` and ``pickle`` of a lease handle raise (both builds alike).

    A lease is ownership of memory the pool lent; a deep copy could not be a
    second lease (the pool lent that memory once) and would alias it, so it
    is refused, with what to do instead. Without this the error came from
    deep inside the copy and differed by build: the pure one failed on the
    arena's ``mmap``, the compiled one on the handle's missing constructor
    argument.
    """
    raise TypeError(
        f"a {kind} cannot be deep-copied or pickled: a lease is ownership of pool memory, and a copy"
        " would alias that memory; for a copy of the bytes, write them into a new lease from"
        " pool.lease() (copy.copy() gives another handle of this same lease)"
    )


class LeaseHome:
    """What a lease record needs from its pool, handed to it when it is made.

    The record reaches its pool only through this (never through the
    pool's own attributes), and the pool keeps its counts in the functions
    it puts here. One per pool; its identity is the pool's, for the checks
    that a lease belongs to a given pool. Its fields are set once (``Final``):
    a plain class rather than a frozen attrs one, so that the compiled build
    makes it native and every send reaches them directly.
    """

    __slots__ = (
        "arena",
        "thread",
        "protect_sealed",
        "round_up",
        "send_began",
        "send_ended",
        "give_back",
        "release",
        "wrong_thread",
        "pages_replaceable",
    )

    def __init__(
        self,
        *,
        arena: Arena,
        thread: int,
        protect_sealed: bool,
        round_up: Callable[[int], int],
        send_began: Callable[[], None],
        send_ended: Callable[[_LeaseRecord], None],
        give_back: Callable[[int, int], None],
        release: Callable[[_LeaseRecord, str], None],
        wrong_thread: Callable[[str], NoReturn],
        pages_replaceable: Callable[[], bool],
    ) -> None:
        #: The pool's memory.
        self.arena: Final = arena
        #: The Trio thread that runs the pool (see "Threads" above).
        self.thread: Final = thread
        #: Whether sealed leases' pages are read-only in the page tables too.
        self.protect_sealed: Final = protect_sealed
        #: The arena bytes a lease of *nbytes* occupies.
        self.round_up: Final = round_up
        #: A send of one of the pool's leases was handed to the kernel.
        self.send_began: Final = send_began
        #: The kernel finished one send of this lease (it may have ended).
        self.send_ended: Final = send_ended
        #: The pool takes back the tail of a lease sealed short.
        self.give_back: Final = give_back
        #: The owner gave the lease up, for the given reason.
        self.release: Final = release
        #: Raise for a call made outside the pool's Trio thread.
        self.wrong_thread: Final = wrong_thread
        #: Whether a lease's pages may be punched out of the arena when it comes
        #: back, so that another program may sendfile them (:func:`lend_pages`).
        self.pages_replaceable: Final = pages_replaceable


class _LeaseRecord(Lifecycle):
    """One lease's memory and state. Internal: applications see the handles.

    Its life cycle (``state``, ``inflight`` and the events) is the inherited
    :class:`Lifecycle`; nothing here changes ``state`` but those events.
    """

    __slots__ = (
        "home",
        "id",
        "offset",
        "capacity",
        "nbytes",
        "adopted",
        "views",
        "_reusable",
        "stale_reason",
        "quarantine_reason",
        "was_sealed",
        "pages_held",
        "clean_bytes",
        "lock",
        "idle",
    )

    def __init__(
        self,
        home: LeaseHome,
        offset: int,
        capacity: int,
        adopted: memoryview | None = None,
    ) -> None:
        # Lifecycle.__init__'s work, inlined (once per image): one of its two
        # starting states, nothing in flight.
        self.state = _SEALED if adopted is not None else _WRITABLE
        self.inflight = 0
        self.home = home
        self.id = next(_ids)
        #: Where the lease's pages start in the arena (0 for adopted buffers).
        self.offset = offset
        #: Bytes the application asked for.
        self.capacity = capacity
        #: Bytes sealed (what a send sends); the capacity until sealed.
        self.nbytes = capacity
        #: The application's own buffer, for adopted leases.
        self.adopted = adopted
        #: What writable views are built on, made at the first view.
        self.views: ViewCounter | None = None
        self._reusable: trio.Event | None = None
        self.stale_reason = ""
        #: Why the memory is withheld for good, once a send was lost.
        self.quarantine_reason = ""
        #: Whether the lease was sealed. A flag, not the handle: a slot that
        #: referred to its handles would make a reference cycle per lease,
        #: left for the cyclic garbage collector, whose passes then cost
        #: more than anything else the pool does.
        self.was_sealed = adopted is not None
        #: Whether the kernel may hold the lease's pages after every send
        #: returned (sendfile): they must be punched out, not reused.
        self.pages_held = False
        #: Bytes from the start known to hold only what this lease's owner
        #: wrote, or zeros. Pool memory comes back with an earlier lease's
        #: bytes in it; they are cleared lazily, just before anything could
        #: read them (a view, or sealing), and never where write() has
        #: already overwritten them -- so an image written whole with
        #: write() costs no clearing at all.
        self.clean_bytes = 0 if adopted is None else capacity
        #: Held while a write or a view is made (from any thread), and taken
        #: without waiting by seal and release: see "Threads" above.
        self.lock = threading.Lock()
        #: Set when the last send in flight ends, for a wait_reusable() of
        #: another adopted lease over the same memory; made only when one waits.
        self.idle: trio.Event | None = None

    def make_clean(self, upto: int | None = None) -> None:
        """Zero whatever before *upto* (default: the whole lease) is not clean yet."""
        end = self.capacity if upto is None else upto
        if self.clean_bytes < end:
            self.home.arena.zero(self.offset + self.clean_bytes, end - self.clean_bytes)
            self.clean_bytes = end

    @property
    def block_length(self) -> int:
        """Arena bytes this lease occupies (0 for adopted buffers)."""
        if self.adopted is not None:
            return 0
        return self.home.round_up(self.capacity)

    def describe(self, state: LeaseState | None = None) -> str:
        """``lease #N (pool, 4096 bytes, sealed)``, in *state* (default: its state now)."""
        return describe_lease(self.id, self.adopted is not None, self.nbytes, state or self.state)

    # -- writable views ----------------------------------------------------

    def new_view(self) -> memoryview:
        """A writable byte view of the lease, counted by :attr:`views`."""
        self.make_clean()
        if self.views is None:
            self.views = ViewCounter(self.home.arena.exporter(self.offset, self.capacity))
        exporter = self.views.exporter
        assert exporter is not None
        with memoryview(exporter) as chars:
            return chars.cast("B")

    def live_views(self) -> int:
        """How many writable views of this lease are alive."""
        return 0 if self.views is None else self.views.live_views()

    # -- for kernels --------------------------------------------------------

    def readonly_view(self, start: int = 0, length: int | None = None) -> memoryview:
        """*length* sealed bytes from *start* (default: all), read-only, for a kernel to send from."""
        end = self.nbytes if length is None else start + length
        if self.adopted is not None:
            return self.adopted[start:end]
        return self.home.arena.readonly[self.offset + start : self.offset + end]

    def begin_send(self) -> None:
        """A kernel is about to hand this lease's memory to the kernel."""
        self.send()
        self.home.send_began()

    def end_send(self) -> None:
        """The kernel reported one send of this lease complete."""
        self.complete()
        self.home.send_ended(self)

    def hold_pages(self) -> None:
        """A kernel may keep this lease's pages after its sends returned (sendfile).

        They are then replaced (punched out of the arena) when the lease
        comes back, never handed to the next lease as they are.
        """
        self.pages_held = True

    def quarantine_send(self) -> None:
        """One send of this lease will never be reported complete (its socket is gone).

        The kernel may read this memory for as long as it likes, so the
        memory is never reused, whatever the lease's other sends do; an owner
        who still holds the lease keeps a valid handle (TAINTED).
        """
        if not self.quarantine_reason:
            self.quarantine_reason = "a connection it was sent on closed"
        self.quarantine()
        self.complete()
        self.home.send_ended(self)

    # -- reaching the end ---------------------------------------------------

    def wake_reusable(self) -> None:
        if self._reusable is not None:
            self._reusable.set()
        if self.idle is not None:
            self.idle.set()

    async def wait_idle(self) -> None:
        """Wait until no send of this lease is in flight (or it has ended)."""
        if self.inflight and not self.done:
            if self.idle is None or self.idle.is_set():
                self.idle = trio.Event()
            await self.idle.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def wait_done(self) -> None:
        if not self.done:
            if self._reusable is None:
                self._reusable = trio.Event()
            await self._reusable.wait()
        else:
            await trio.lowlevel.checkpoint()


class AdoptedMemory:
    """The application memory that live adopted leases cover, in every pool.

    The same buffer may be adopted more than once (the same static page
    for every client, or a frame adopted per send); each lease knows only
    its own sends, so ``wait_reusable()`` asks here whether any other lease
    over the same memory is still being read. Immutable ``bytes`` are never
    written, so they never wait for each other.
    """

    def __init__(self) -> None:
        self._ranges: dict[_LeaseRecord, tuple[int, int, bool]] = {}

    def add(self, slot: _LeaseRecord, start: int, immutable: bool) -> None:
        self._ranges[slot] = (start, start + slot.capacity, immutable)

    def discard(self, slot: _LeaseRecord) -> None:
        # Kept while the lease lives (also after the application let go of
        # it), and for good if quarantined: the kernel may read it for ever.
        if slot.state is LeaseState.FREE:
            self._ranges.pop(slot, None)

    def region(self, slot: _LeaseRecord) -> tuple[int, int, bool] | None:
        """*slot*'s memory as ``(start, end, immutable)``, while it is registered."""
        return self._ranges.get(slot)

    def busy_overlapping(self, slot: _LeaseRecord, region: tuple[int, int, bool]) -> _LeaseRecord | None:
        """Another lease over *region* (*slot*'s memory) with sends in flight, or quarantined."""
        start, end, immutable = region
        for other, (lo, hi, other_immutable) in self._ranges.items():
            if other is slot or not (start < hi and lo < end) or (immutable and other_immutable):
                continue
            if other.inflight or other.state is LeaseState.QUARANTINED or other.state is _TAINTED:
                return other
        return None


#: The one registry (adopted leases of every pool).
adopted_memory = AdoptedMemory()


def _overrun(nbytes: int, offset: int, capacity: int) -> ValueError:
    """What write() raises for bytes that would not fit (its fast path and its general one)."""
    return ValueError(f"writing {nbytes} bytes at offset {offset} overruns the lease ({capacity} bytes)")


def _check_shape(shape: object, bools: tuple[type, ...] = (bool,)) -> tuple[int, ...]:
    # Any integer operator.index takes (NumPy's int64 too), but not a bool
    # (one of *bools*), which is an int to Python and never meant as a size.
    # NumPy's bool is not Python's, and NumPy before 2.3 still lets
    # operator.index take it (with a DeprecationWarning): the caller passes it.
    items: Sequence[object] = shape if isinstance(shape, (tuple, list)) else (shape,)
    dims = []
    for d in items:
        try:
            if isinstance(d, bools) or not isinstance(d, SupportsIndex):
                raise TypeError
            n = operator.index(d)
        except TypeError:
            # caused(..., None) does what ``from None`` does where mypyc compiles the clause away.
            if items is shape:
                raise caused(
                    TypeError(f"shape must be a tuple of ints; {d!r} in {shape!r} is a {type(d).__name__}"), None
                ) from None
            raise caused(
                TypeError(f"shape must be an int or a tuple of ints, not {type(shape).__name__}"), None
            ) from None
        if n < 0:
            raise ValueError(f"shape must be non-negative integers, not {shape!r}")
        dims.append(n)
    return tuple(dims)


class WritableLease:
    """Pool memory that the application is filling in.

    Get one from :meth:`BufferPool.acquire`, :meth:`BufferPool.acquire_nowait`
    or :meth:`BufferPool.lease`; there is no public constructor. Its memory
    starts as zeros (never bytes of an earlier image). Write through
    :meth:`view`, :meth:`ndarray` or :meth:`write`, then :meth:`seal` it to
    get the :class:`SealedLease` that can be sent. A writable lease cannot be
    sent.

    After :meth:`seal` or :meth:`release` this handle is stale: every use
    raises :class:`StaleLeaseError`.

    Threads: :meth:`write`, :meth:`view`, :meth:`ndarray` and :attr:`nbytes`
    may be called from any thread, also while the Trio thread uses the
    lease; :meth:`seal` and :meth:`release` only from the pool's Trio
    thread. A seal that finds a write running in another thread raises
    :class:`trio.BusyResourceError` and changes nothing.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: _LeaseRecord) -> None:
        self._slot = slot

    def __copy__(self) -> WritableLease:
        # Another handle of the same lease, as copy.copy() makes of the pure
        # class from its slots; spelled out for the compiled build, whose
        # native class copy.copy() could not make (it calls __new__ with no slot).
        return WritableLease(self._slot)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # copy.deepcopy() and pickle; copy.copy() takes __copy__ above.
        refuse_deep_copy("WritableLease")

    def _live(self) -> _LeaseRecord:
        slot = self._slot
        if slot.state is not _WRITABLE:
            reason = slot.stale_reason
            if slot.was_sealed and slot.state is not LeaseState.FORKED:
                reason = "it was sealed; use the SealedLease that seal() returned"
            raise StaleLeaseError(f"this WritableLease is stale: {reason}")
        return slot

    def __repr__(self) -> str:
        return f"<trio_zc.WritableLease {self._slot.describe()}>"

    @property
    def nbytes(self) -> int:
        """How many bytes the lease holds (what was asked for)."""
        return self._live().capacity

    def view(self) -> memoryview:
        """A new writable :class:`memoryview` of the lease's *nbytes* bytes.

        :meth:`seal` refuses while any view (or a slice of one, or an array
        or image built on one) is still alive: drop them or call their
        ``release()`` first.
        """
        slot = self._slot
        with slot.lock:
            return self._live().new_view()

    def ndarray(
        self,
        shape: SupportsIndex | Sequence[SupportsIndex],
        dtype: numpy.typing.DTypeLike = "uint8",
    ) -> numpy.typing.NDArray[Any]:
        """A writable NumPy array of *shape* and *dtype* over the lease, with no copy.

        *shape* is an integer or a tuple (or list) of them: any integer type
        (``numpy.int64`` too) but bool, none negative.

        It counts as a view: :meth:`seal` refuses while it is alive. Needs
        NumPy (``pip install trio_zc[images]``).
        """
        try:
            import numpy
        except ModuleNotFoundError as exc:  # pragma: no cover - numpy is in the test env
            raise caused(
                ModuleNotFoundError("WritableLease.ndarray needs NumPy: pip install 'trio_zc[images]'"), exc
            ) from exc  # caused(): the compiled build keeps the cause too
        dims = _check_shape(shape, (bool, numpy.bool_))
        dt = numpy.dtype(dtype)
        count = 1
        for d in dims:
            count *= d
        needed = count * dt.itemsize
        slot = self._slot
        with slot.lock:
            self._live()
            if needed > slot.capacity:
                raise ValueError(
                    f"an array of shape {dims} and dtype {dt} needs {needed} bytes;"
                    f" the lease holds {slot.capacity}"
                )
            view = slot.new_view()
        try:
            array: numpy.typing.NDArray[Any] = numpy.frombuffer(view, dtype=dt, count=count)
        except BaseException:
            # NumPy refused (an object or zero-size dtype): the application
            # never gets this view, so it must not count as alive -- the
            # exception's traceback keeps this frame, and the view, alive.
            view.release()
            raise
        return array.reshape(dims)

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    def write(self, data: Any, offset: int = 0) -> int: ...
    def write(self, data: Any, offset: object = 0) -> int:
        """Copy the bytes of *data* (any buffer) into the lease at *offset*.

        Returns the offset just past what was written, so writes chain.
        Leaves no view behind. Safe from any thread (see the class docs).
        """
        if type(offset) is not int:
            offset = exact_int("offset", offset)
        slot = self._slot
        # The state is checked and the bytes copied under the lease's lock:
        # a seal or release in another thread cannot fall between the two.
        # (acquire/try/release rather than ``with``: half the cost, per image.)
        if type(data) is bytes:
            lock = slot.lock
            lock.acquire()
            try:
                if slot.state is not _WRITABLE:
                    self._live()  # raises
                if offset == slot.clean_bytes:
                    # The common case (an image written whole, or in order,
                    # from bytes): nothing to clear and nothing to cast.
                    end = offset + len(data)
                    if end > slot.capacity:
                        raise _overrun(len(data), offset, slot.capacity)
                    start = slot.offset + offset
                    slot.home.arena.rw[start : start + len(data)] = data
                    slot.clean_bytes = end
                    return end
            finally:
                lock.release()
        # The source's buffer is taken before the lease's lock: taking it may
        # run the application's code (a class's __buffer__, Python 3.12+),
        # which could call back into this lease -- under the lock, a hang.
        # (For bytes no application code runs; the lock is simply taken again.)
        src = memoryview(data)
        try:
            with slot.lock:
                if slot.state is not _WRITABLE:
                    self._live()  # raises
                n = src.nbytes
                if offset < 0 or offset + n > slot.capacity:
                    raise _overrun(n, offset, slot.capacity)
                if not src.c_contiguous:
                    raise ValueError("write() needs a C-contiguous buffer")
                # A gap between the clean part and this write must not keep
                # an earlier lease's bytes.
                slot.make_clean(offset)
                start = slot.offset + offset
                with src.cast("B") as flat:
                    slot.home.arena.rw[start : start + n] = flat
                if offset + n > slot.clean_bytes:
                    slot.clean_bytes = offset + n
            return offset + n
        finally:
            src.release()  # outside the lock too (__release_buffer__)

    @overload  # type: ignore[misc]  # one signature for callers, an object-taking implementation
    def seal(self, nbytes: int | None = None) -> SealedLease: ...
    def seal(self, nbytes: object = None) -> SealedLease:
        """Make the lease read-only and sendable; this handle goes stale.

        *nbytes* (default: all of it) is how many bytes, from the start, the
        sealed lease holds and sends; whole pages past it go back to the pool
        at once. Every writable view of the lease must be gone first: if
        one is still alive nothing changes and :class:`LiveViewsError` says
        how many; if another thread is in :meth:`write`, nothing changes and
        :class:`trio.BusyResourceError` says so. In a pool opened with
        ``protect_sealed=True`` the pages also become read-only in the page
        tables. Only from the pool's Trio thread.
        """
        slot = self._slot
        if slot.state is not _WRITABLE:
            self._live()  # raises
        home = slot.home
        if threading.get_ident() != home.thread:
            home.wrong_thread("WritableLease.seal()")
        if nbytes is None:
            nbytes = slot.capacity
        else:
            if type(nbytes) is not int:
                nbytes = exact_int("nbytes", nbytes, "an int or None")
            if not 0 < nbytes <= slot.capacity:
                raise ValueError(f"nbytes must be between 1 and the lease's {slot.capacity}, not {nbytes}")
        lock = slot.lock
        if not lock.acquire(False):
            raise trio.BusyResourceError(
                f"cannot seal {slot.describe()}: another thread is writing into it; seal it after"
                " that write returns"
            )
        try:
            if slot.state is not _WRITABLE:  # pragma: no cover - only this thread changes it
                self._live()
            views = slot.views
            if views is not None:
                alive = views.live_views()
                if alive:
                    raise LiveViewsError(
                        f"cannot seal {slot.describe()}: {alive} writable view(s) of it"
                        " are still alive (memoryviews, arrays or images from view()/ndarray());"
                        " drop them or call their release() first",
                        alive,
                    )
            if slot.clean_bytes < nbytes:
                slot.make_clean(nbytes)
            if home.protect_sealed or nbytes < slot.capacity:
                # Block lengths are worked out only here: most seals are of
                # whole leases in unprotected pools, and need none.
                block = home.round_up(nbytes)
                old_block = slot.block_length
                if home.protect_sealed:
                    # From here on the process has no writable mapping of these
                    # pages. First, so that if it fails (vm.max_map_count, say)
                    # nothing has changed yet.
                    home.arena.protect(slot.offset, block, writable=False)
                if nbytes < slot.capacity:
                    # Give whole unused pages back; the rest of the last page is
                    # never sent nor shown, and the next lease clears it.
                    slot.capacity = slot.clean_bytes = nbytes
                    if block < old_block:
                        home.give_back(slot.offset + block, old_block - block)
            slot.views = None
            slot.seal()
            slot.nbytes = nbytes
            slot.was_sealed = True
        finally:
            lock.release()
        return SealedLease(slot)

    def release(self) -> None:
        """Give the lease back unsent; this handle goes stale.

        Refuses with :class:`LiveViewsError` (changing nothing) while a view
        of it is alive, since the memory is about to belong to someone else,
        and with :class:`trio.BusyResourceError` while another thread is in
        :meth:`write`. Only from the pool's Trio thread.
        """
        slot = self._live()
        home = slot.home
        if threading.get_ident() != home.thread:
            home.wrong_thread("WritableLease.release()")
        lock = slot.lock
        if not lock.acquire(blocking=False):
            raise trio.BusyResourceError(
                f"cannot release {slot.describe()}: another thread is writing into it"
            )
        try:
            alive = slot.live_views()
            if alive:
                raise LiveViewsError(
                    f"cannot release {slot.describe()}: {alive} writable view(s) of it are still alive",
                    alive,
                )
        finally:
            lock.release()
        home.release(slot, "it was released")


class SealedLease:
    """Read-only memory that is ready to send, to any number of streams.

    Comes from :meth:`WritableLease.seal` or :meth:`BufferPool.adopt`; there
    is no public constructor and no way to write through it. Its memory goes
    back to the pool only when both :meth:`release` was called (or the
    lease's scope ended) and the kernel reported every send of it complete.

    After :meth:`release` or :meth:`wait_reusable` this handle is stale:
    every use raises :class:`StaleLeaseError`.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: _LeaseRecord) -> None:
        self._slot = slot

    def __copy__(self) -> SealedLease:
        # Another handle of the same lease, as copy.copy() makes of the pure
        # class from its slots; spelled out for the compiled build, whose
        # native class copy.copy() could not make (it calls __new__ with no slot).
        return SealedLease(self._slot)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # copy.deepcopy() and pickle; copy.copy() takes __copy__ above.
        refuse_deep_copy("SealedLease")

    def _live(self) -> _LeaseRecord:
        slot = self._slot
        state = slot.state
        if state is not _SEALED and state is not _SENDING and state is not _TAINTED:
            raise StaleLeaseError(f"this SealedLease is stale: {slot.stale_reason}")
        return slot

    def __repr__(self) -> str:
        return f"<trio_zc.SealedLease {self._slot.describe()}>"

    @property
    def nbytes(self) -> int:
        """How many bytes the lease sends."""
        return self._live().nbytes

    @property
    def adopted(self) -> bool:
        """Whether the memory is the application's own (from :meth:`BufferPool.adopt`)."""
        return self._live().adopted is not None

    @property
    def sends_in_flight(self) -> int:
        """Sends of this lease that the kernel has not yet reported complete."""
        return self._live().inflight

    def view(self) -> ReadOnlyBuffer:
        """A read-only view of the sealed bytes.

        For reading (hashing, checking) while the lease is held; do not keep
        it past :meth:`release`, after which the memory may hold another image.
        """
        return self._live().readonly_view()

    def release(self) -> None:
        """Give the lease up. Never blocks; this handle goes stale.

        The memory returns to the pool once the kernel reports every send
        of it complete, which may be now or later.
        """
        slot = self._live()
        home = slot.home
        if threading.get_ident() != home.thread:
            home.wrong_thread("SealedLease.release()")
        home.release(slot, "it was released")

    async def wait_reusable(self) -> None:
        """Release the lease and wait until the kernel is done with its memory.

        This is how code that adopted its own buffer learns when it may
        write into it again: it returns once no lease over that memory (this
        one, or another adoption of the same buffer) has a send in flight. Raises :class:`LeaseQuarantinedError` if the
        kernel will never confirm (a connection it was sent on closed with
        the send in flight, or the pool closed before the confirmation):
        never reuse the buffer then. Cancelling the wait does not undo the
        release.
        """
        slot = self._live()
        region = adopted_memory.region(slot)
        slot.home.release(slot, "it was released by wait_reusable()")
        await slot.wait_done()
        if slot.state is LeaseState.QUARANTINED:
            raise LeaseQuarantinedError(
                f"{slot.describe()}: {slot.quarantine_reason} before the kernel confirmed"
                " it was done reading this memory; never reuse it"
            )
        # Other leases over the same memory (adopted twice) may still be read.
        while region is not None and (other := adopted_memory.busy_overlapping(slot, region)) is not None:
            if other.state is LeaseState.QUARANTINED or other.state is _TAINTED:
                raise LeaseQuarantinedError(
                    f"{slot.describe()}: its memory overlaps {other.describe()}, which the kernel"
                    " may read for ever (a send of it was lost); never reuse it"
                )
            await other.wait_idle()



class Lending:
    """One response's hold on a sealed lease, for code that sends it outside a stream (``trio_zc.asgi``).

    Made by :func:`lend`. Until :meth:`end`, the lease counts one send in
    flight, so its memory cannot go back to the pool, whoever releases the
    lease meanwhile (its owner by mistake, the pool's close): the bytes stay
    the sealed ones for as long as they may be read.

    :meth:`sendfile_range` lends the memory to another program's
    ``sendfile`` (an ASGI server's): a read-only file of the pool's memfd,
    of its own, and the range's place in it. From then on the lease's pages
    are marked held, so that when the lease goes back to the pool they are
    punched out of the memfd, never rewritten in place: a socket may still
    hold them after every ``sendfile`` call returned (sendfile puts
    references to the file's pages into the socket, and Linux never says
    when it is done with them), exactly as the sendfile kernel's sends.
    """

    __slots__ = ("_slot", "_file")

    def __init__(self, slot: _LeaseRecord) -> None:
        self._slot: _LeaseRecord | None = slot
        self._file: io.FileIO | None = None

    def _open(self) -> _LeaseRecord:
        slot = self._slot
        if slot is None:
            raise RuntimeError("this lending has ended")
        return slot

    def view(self, start: int, nbytes: int) -> memoryview:
        """``nbytes`` sealed bytes from *start*, read-only (valid until :meth:`end`)."""
        slot = self._open()
        if not 0 <= start <= start + nbytes <= slot.nbytes:
            raise ValueError(f"bytes {start} to {start + nbytes} are not within {slot.describe()}")
        return slot.readonly_view(start, nbytes)

    def sendfile_range(self, start: int, nbytes: int) -> tuple[io.FileIO, int] | None:
        """A read-only file of the memfd and where byte *start* of the lease is in it; None if it cannot be.

        None for an adopted lease (its memory is in no memfd), a pool
        whose kernel keeps references of its own to the arena's pages or
        whose blocks may split a folio (``Kernel.pages_replaceable``), or a
        system without procfs (no read-only descriptor to lend): send those
        bytes some other way. The file is closed by :meth:`end`.
        """
        slot = self._open()
        if not 0 <= start <= start + nbytes <= slot.nbytes:
            raise ValueError(f"bytes {start} to {start + nbytes} are not within {slot.describe()}")
        if slot.adopted is not None:
            return None
        home = slot.home
        if home.arena.closed or not home.pages_replaceable():
            return None
        if self._file is None:
            try:
                fd = home.arena.open_read_only()
            except OSError:  # pragma: no cover - no procfs
                return None
            try:
                self._file = io.FileIO(fd, "rb", closefd=True)
            except BaseException:  # pragma: no cover - FileIO takes any open descriptor
                os.close(fd)
                raise
        # Held from before the first byte can be issued: from then on a
        # socket may keep these pages after every sendfile call returned.
        slot.hold_pages()
        return self._file, slot.offset + start

    def end(self) -> None:
        """Everything lent has been issued: close the file and end the send (again: nothing)."""
        slot = self._slot
        if slot is None:
            return
        self._slot = None
        try:
            if self._file is not None:
                self._file.close()
        finally:
            slot.end_send()


def lend(lease: SealedLease) -> Lending:
    """Hold *lease*'s memory for one response sent outside a stream (see :class:`Lending`).

    Raises :class:`StaleLeaseError` for a stale lease and
    :class:`RuntimeError` outside the pool's Trio thread. The caller must
    call :meth:`Lending.end` once every byte it lent was issued, whatever
    happens.
    """
    slot = lease._live()
    if threading.get_ident() != slot.home.thread:
        slot.home.wrong_thread("sending a lease")
    slot.begin_send()
    return Lending(slot)
