"""LeaseCache: a memory-bounded LRU of sealed leases, each rendered once per key.

A server that sends the same image to many clients keeps it sealed and sends
that one lease to each: no copy per client, and no second encode. The cache
holds such leases by a key the application chooses (an image id, a size, a
format), evicts the least recently used ones when a byte bound (and an
optional entry bound) would be passed, and renders a missing key only once
however many tasks ask for it at the same time.

Eviction may come while a lease is being sent, or between the moment a task
got it from the cache and the moment it sends it. So the cache hands out a
:class:`CachedLease`, a *hold* on the entry: an evicted entry is released
only when its last hold is; and releasing is safe while sends are in flight,
since the pool reuses memory only once the kernel reports every send of it
complete.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Generic, TypeVar

import attrs
import trio

from ._errors import StaleLeaseError
from ._lease import SealedLease
from ._validate import exact_int
from ._pool import BufferPool

K = TypeVar("K", bound=Hashable)


@attrs.frozen
class CacheStatistics:
    """A snapshot of a :class:`LeaseCache`, from :meth:`LeaseCache.statistics`."""

    #: Leases in the cache now.
    entries: int
    #: Pool memory those leases occupy: each lease's size rounded up to the
    #: pool's page size (an adopted lease counts its own size).
    bytes: int
    #: The bound on :attr:`bytes`.
    max_bytes: int
    #: The bound on :attr:`entries`, or None.
    max_entries: int | None
    #: Calls of :meth:`LeaseCache.get` answered from the cache.
    hits: int
    #: Calls of :meth:`LeaseCache.get` that rendered their key.
    misses: int
    #: Calls of :meth:`LeaseCache.get` that waited for another task's render of the same key.
    coalesced: int
    #: Entries evicted to make room, or removed by :meth:`LeaseCache.discard`,
    #: :meth:`LeaseCache.clear` or :meth:`LeaseCache.close`.
    evictions: int
    #: Renders that raised (their key stayed absent).
    render_errors: int
    #: Rendered leases larger than the cache's bounds: served, then released, never kept.
    not_kept: int
    #: Entries that were found released by someone other than the cache, and rendered anew.
    found_stale: int
    #: :class:`CachedLease` holds not yet released.
    holds: int
    #: Keys being rendered now.
    rendering: int
    #: Whether the cache was closed (its close method was called, or its with block ended).
    closed: bool


class _Entry(Generic[K]):
    __slots__ = ("key", "lease", "charge", "holds", "indexed", "freed")

    def __init__(self, key: K, lease: SealedLease, charge: int, indexed: bool) -> None:
        self.key = key
        self.lease = lease
        #: What the entry counts against the cache's byte bound.
        self.charge = charge
        #: CachedLease handles not yet released.
        self.holds = 0
        #: Whether the entry is in the cache's index (it may still be held once evicted).
        self.indexed = indexed
        self.freed = False


class _Render(Generic[K]):
    """A render in progress, which other tasks asking for the same key wait for."""

    __slots__ = ("done", "entry", "error", "waiters", "task")

    def __init__(self) -> None:
        self.done = trio.Event()
        #: The task rendering (a render that asks for its own key would wait for itself).
        self.task = trio.lowlevel.current_task()
        #: The entry rendered, once done (None if the render failed or was cancelled).
        self.entry: _Entry[K] | None = None
        #: What the render raised, if it raised an Exception.
        self.error: Exception | None = None
        #: Tasks waiting: each gets a hold on the entry, counted when it is made.
        self.waiters = 0


class CachedLease(Generic[K]):
    """A hold on a :class:`LeaseCache` entry: its lease stays valid until :meth:`release`.

    Send :attr:`lease` as any sealed lease (``await stream.send_lease(held.lease)``,
    or return it in a :class:`trio_zc.http.Response`, which releases the hold
    once the response is sent). The lease belongs to the cache: never
    release it yourself; release the hold. The memory goes back to the
    pool once the entry has been evicted, every hold released, and the
    kernel is done with every send.

    Usable as a context manager: ``with await cache.get(key, render) as held:``.
    """

    __slots__ = ("_cache", "_entry")

    def __init__(self, cache: LeaseCache[K], entry: _Entry[K]) -> None:
        self._cache: LeaseCache[K] | None = cache
        self._entry = entry

    def __repr__(self) -> str:
        state = "released" if self._cache is None else "held"
        return f"<trio_zc.CachedLease {self._entry.key!r}, {state}>"

    @property
    def lease(self) -> SealedLease:
        """The cached sealed lease (:class:`StaleLeaseError` once this hold is released)."""
        if self._cache is None:
            raise StaleLeaseError(f"this CachedLease of {self._entry.key!r} was released")
        return self._entry.lease

    @property
    def key(self) -> K:
        """The key the lease is cached under."""
        return self._entry.key

    @property
    def nbytes(self) -> int:
        """How many bytes the lease sends."""
        return self.lease.nbytes

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._cache is None

    def release(self) -> None:
        """Give up this hold (again: nothing happens). Never blocks."""
        cache = self._cache
        if cache is not None:
            self._cache = None
            cache._unhold(self._entry)

    def __enter__(self) -> CachedLease[K]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class LeaseCache(Generic[K]):
    """A memory-bounded LRU cache of sealed leases of *pool*, keyed by the application.

    ``await cache.get(key, render)`` returns a :class:`CachedLease` hold on
    the lease cached under *key*; on a miss it calls ``await render()``,
    which returns a new :class:`~trio_zc.SealedLease` of the pool (an
    encoded image, say), and keeps that. While one task renders a key,
    other tasks asking for it wait for that render instead of starting
    their own; if it raises, every one of them gets its exception and the
    key stays absent (the next :meth:`get` renders again); if the rendering
    task is cancelled, a waiting task renders in its place.

    The cache holds at most *max_bytes* of pool memory (each lease counts
    its size rounded up to the pool's page size) and, if given, at most
    *max_entries* leases, evicting the least recently used. A lease larger
    than the bounds is handed to the tasks that asked for it and released
    when they release their holds, never kept. Evicting releases the lease
    once no hold is left on it; sends in flight keep its memory from reuse
    until the kernel is done, as for any released lease.

    Close the cache (:meth:`close`, or ``with LeaseCache(...) as cache:``)
    before its pool closes, so that the pool does not report its leases as
    leaked. Only from the pool's Trio thread, like the pool.
    """

    def __init__(self, pool: BufferPool, *, max_bytes: int, max_entries: int | None = None) -> None:
        if not isinstance(pool, BufferPool):
            raise TypeError(f"pool must be a BufferPool (from trio_zc.open_pool), not {type(pool).__name__}")
        stats = pool.statistics()
        if stats.closed:
            raise trio.ClosedResourceError("the pool is closed")
        max_bytes = exact_int("max_bytes", max_bytes, "an int (bytes)")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be at least 0, not {max_bytes}")
        if max_entries is not None:
            max_entries = exact_int("max_entries", max_entries, "an int or None")
            if max_entries < 0:
                raise ValueError(f"max_entries must be at least 0 or None, not {max_entries}")
        self._pool = pool
        self._page_mask = stats.page_size - 1
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._index: OrderedDict[K, _Entry[K]] = OrderedDict()
        self._renders: dict[K, _Render[K]] = {}
        self._bytes = 0
        self._holds = 0
        self._hits = 0
        self._misses = 0
        self._coalesced = 0
        self._evictions = 0
        self._render_errors = 0
        self._not_kept = 0
        self._found_stale = 0
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<trio_zc.LeaseCache {len(self._index)} entries, {self._bytes} of {self._max_bytes} bytes"
            f"{', closed' if self._closed else ''}>"
        )

    @property
    def pool(self) -> BufferPool:
        """The pool whose leases the cache keeps."""
        return self._pool

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    async def get(self, key: K, render: Callable[[], Awaitable[SealedLease]]) -> CachedLease[K]:
        """A hold on the lease cached under *key*, rendered with ``await render()`` if missing.

        Release the hold (:meth:`CachedLease.release`, or ``with``) once
        the lease is sent. :class:`trio.ClosedResourceError` once the cache
        is closed. What *render* raises comes out of this call, in the
        rendering task and in every task that waited for it; a *render*
        that returns anything but a :class:`~trio_zc.SealedLease` raises
        :class:`TypeError` the same way.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this LeaseCache was closed")
            entry = self._index.get(key)
            if entry is not None:
                if _is_stale(entry.lease):
                    # Released by someone other than the cache (a bug of
                    # the application's): forget it and render anew.
                    self._found_stale += 1
                    self._evict(entry, count=False)
                    continue
                self._index.move_to_end(key)
                self._hits += 1
                held = self._hold(entry)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return held
            pending = self._renders.get(key)
            if pending is None:
                return await self._render(key, render)
            if pending.task is trio.lowlevel.current_task():
                raise RuntimeError(f"the render of {key!r} asked the cache for {key!r} itself: it would wait for ever")
            self._coalesced += 1
            pending.waiters += 1
            try:
                await pending.done.wait()
            except BaseException:
                if pending.done.is_set():
                    # The render ended and counted a hold for us before the
                    # cancellation reached us: give it back.
                    if pending.entry is not None:
                        self._unhold(pending.entry)
                else:
                    pending.waiters -= 1
                raise
            if pending.error is not None:
                raise pending.error
            if pending.entry is not None:
                return CachedLease(self, pending.entry)  # its hold was counted by the render
            # The rendering task was cancelled: render it here, or wait for whoever does.

    async def _render(self, key: K, render: Callable[[], Awaitable[SealedLease]]) -> CachedLease[K]:
        pending: _Render[K] = _Render()
        self._renders[key] = pending
        self._misses += 1
        try:
            sealed = await render()
            if not isinstance(sealed, SealedLease):
                raise TypeError(
                    f"a LeaseCache render must return a SealedLease, not {type(sealed).__name__}"
                    + (" (seal() it first)" if type(sealed).__name__ == "WritableLease" else "")
                )
            nbytes = sealed.nbytes  # StaleLeaseError if the render released it already
            charge = nbytes if sealed.adopted else (nbytes + self._page_mask) & ~self._page_mask
        except BaseException as exc:
            if self._renders.get(key) is pending:
                del self._renders[key]
            if isinstance(exc, Exception):
                self._render_errors += 1
                pending.error = exc
            # Otherwise (cancelled, interrupted) the waiters try again.
            pending.done.set()
            raise
        if self._renders.get(key) is pending:
            del self._renders[key]
        entry = self._insert(key, sealed, charge)
        # Holds for this task and every waiter, counted before any of them
        # runs: a waiter that released its hold before another woke up must
        # not free a lease that is not kept.
        entry.holds += 1 + pending.waiters
        self._holds += 1 + pending.waiters
        pending.entry = entry
        pending.done.set()
        return CachedLease(self, entry)

    def _insert(self, key: K, sealed: SealedLease, charge: int) -> _Entry[K]:
        limit = self._max_entries
        if self._closed or charge > self._max_bytes or limit == 0:
            self._not_kept += 1
            return _Entry(key, sealed, charge, indexed=False)
        old = self._index.get(key)
        if old is not None:  # pragma: no cover - a key renders once at a time; kept for safety
            self._evict(old)
        while self._index and (
            self._bytes + charge > self._max_bytes or (limit is not None and len(self._index) >= limit)
        ):
            _, victim = next(iter(self._index.items()))
            self._evict(victim)
        entry = _Entry(key, sealed, charge, indexed=True)
        self._index[key] = entry
        self._bytes += charge
        return entry

    def _hold(self, entry: _Entry[K]) -> CachedLease[K]:
        entry.holds += 1
        self._holds += 1
        return CachedLease(self, entry)

    def _unhold(self, entry: _Entry[K]) -> None:
        entry.holds -= 1
        self._holds -= 1
        if not entry.holds and not entry.indexed:
            self._free(entry)

    def _evict(self, entry: _Entry[K], count: bool = True) -> None:
        if not entry.indexed:
            return
        entry.indexed = False
        del self._index[entry.key]
        self._bytes -= entry.charge
        if count:
            self._evictions += 1
        if not entry.holds:
            self._free(entry)

    def _free(self, entry: _Entry[K]) -> None:
        if entry.freed:
            return
        entry.freed = True
        try:
            # Safe with sends in flight: the pool reuses the memory only once
            # the kernel reports every send of it complete.
            entry.lease.release()
        except StaleLeaseError:
            pass  # released already: by the application, or by its pool closing

    def discard(self, key: K) -> bool:
        """Remove *key*'s entry (released once no hold is left on it); whether there was one.

        A render of *key* in progress is not affected: its lease is kept when it ends.
        """
        entry = self._index.get(key)
        if entry is None:
            return False
        self._evict(entry)
        return True

    def clear(self) -> None:
        """Remove every entry, as :meth:`discard` does."""
        for entry in list(self._index.values()):
            self._evict(entry)

    def close(self) -> None:
        """Remove every entry and refuse further :meth:`get` calls.

        Holds already given out stay valid until released; a render in
        progress hands its lease to the tasks that asked for it, and it is
        released when they release their holds. Closing twice does nothing.
        """
        self._closed = True
        self.clear()

    def __enter__(self) -> LeaseCache[K]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def statistics(self) -> CacheStatistics:
        """A snapshot of the cache's contents and of what it did."""
        return CacheStatistics(
            entries=len(self._index),
            bytes=self._bytes,
            max_bytes=self._max_bytes,
            max_entries=self._max_entries,
            hits=self._hits,
            misses=self._misses,
            coalesced=self._coalesced,
            evictions=self._evictions,
            render_errors=self._render_errors,
            not_kept=self._not_kept,
            found_stale=self._found_stale,
            holds=self._holds,
            rendering=len(self._renders),
            closed=self._closed,
        )


def _is_stale(lease: SealedLease) -> bool:
    try:
        _ = lease.nbytes
    except StaleLeaseError:
        return True
    return False
