"""open_pool: the block that a pool lives for.

Apart from ``_pool.py`` because it is an async generator (through
``@asynccontextmanager``), which mypyc does not compile: ``_pool.py`` is
compiled in the optional compiled build, this module never is.

The context manager that ``async with open_pool(...)`` gets is this
module's own :class:`_PoolBlock`, not contextlib's: the ``async with``
statement calls its ``__aenter__`` and ``__aexit__`` straight from the
application's frame, and contextlib's run unprotected, so a SIGINT there was
raised before contextlib resumed the generator, which left the pool open and
its nursery never exited (Trio then reports its nursery stack corrupted).
Ours are the library's code, KeyboardInterrupt-protected like all of it
(``_ki.py``), and call contextlib's from a protected frame: the interrupt
waits for the next checkpoint, where the pool deals with it as with a
cancellation.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import ParamSpec

import trio

from ._arena import PAGE_SIZE, Arena
from ._background import background_nursery
from ._kernels._base import Kernel
from ._kernels._choice import make_kernel
from ._policy import ZeroCopyPolicy
from ._pool import DEFAULT_DRAIN_TIMEOUT, BufferPool, _cannot_map
from ._validate import (
    check_bool,
    check_drain_timeout,
    check_max_in_flight,
    check_pool_size,
    check_send_timeout,
)


class _PoolBlock(AbstractAsyncContextManager[BufferPool]):
    """What ``open_pool`` returns: contextlib's manager entered and exited from protected frames."""

    __slots__ = ("_manager",)

    def __init__(self, manager: AbstractAsyncContextManager[BufferPool]) -> None:
        self._manager = manager

    async def __aenter__(self) -> BufferPool:
        return await self._manager.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._manager.__aexit__(exc_type, exc, traceback)


#: The parameters of the function :func:`_protected_block` wraps.
_P = ParamSpec("_P")


def _protected_block(
    block: Callable[_P, AbstractAsyncContextManager[BufferPool]],
) -> Callable[_P, AbstractAsyncContextManager[BufferPool]]:
    """*block*, its manager handed out as a :class:`_PoolBlock` (same parameters, same docs)."""

    @functools.wraps(block)
    def open_block(*args: _P.args, **kwargs: _P.kwargs) -> AbstractAsyncContextManager[BufferPool]:
        return _PoolBlock(block(*args, **kwargs))

    return open_block


@_protected_block
@asynccontextmanager
async def open_pool(
    *,
    max_bytes: int,
    kernel: str | Kernel = "auto",
    policy: ZeroCopyPolicy | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    send_timeout: float | None = None,
    stream_max_in_flight: int | None = None,
    protect_sealed: bool = False,
) -> AsyncIterator[BufferPool]:
    """Open a pool of *max_bytes* of shared memory for the duration of a block.

    ``async with trio_zc.open_pool(max_bytes=64 * 2**20) as pool:``

    *max_bytes* is rounded down to whole pages and is the most memory the
    pool's leases ever use; one the process cannot map raises
    :class:`ValueError` (past ``sys.maxsize``) or :class:`OSError` naming the
    limit it hit, with nothing left open. Pages are allocated as leases
    first write them and stay allocated until the pool closes; with io_uring
    (``"io_uring"``, and ``"auto"`` where it picks io_uring) sending from a
    16 MiB chunk of the pool for the first time registers that whole chunk
    with the kernel, which allocates and pins it (counted against
    ``RLIMIT_MEMLOCK`` without ``CAP_IPC_LOCK``) until the pool closes (see
    docs/kernels.rst, "Memory"). *kernel* says how its streams send: ``"copy"``
    (plain sends), ``"msg_zerocopy"`` (Linux MSG_ZEROCOPY), ``"io_uring"``
    (SEND_ZC from the arena registered as fixed buffers; falls back to
    msg_zerocopy where io_uring is not usable), ``"sendfile"`` (sendfile
    from the arena, with page replacement), ``"auto"`` (the default:
    io_uring or msg_zerocopy where zero-copy can win, copying elsewhere),
    or a :class:`~trio_zc.testing.MockKernel`. *policy*
    tunes when streams copy anyway (:class:`ZeroCopyPolicy`). When the block ends, the pool waits up to
    *drain_timeout* seconds (even if the block was cancelled) for the
    kernel to finish every send in flight, releases and reports (with
    :class:`LeaseLeakWarning`) the leases the application still holds, and
    quarantines (with :class:`QuarantineWarning`) memory the kernel never
    reported done. Afterwards every method raises
    :class:`trio.ClosedResourceError` and every lease handle is stale.

    An exception raised in the block comes out of it as itself, never
    wrapped in an :class:`ExceptionGroup` by the pool's background tasks
    (a cancellation from outside comes out as one bare
    :class:`trio.Cancelled`); only several failures at once make a group
    (docs/guarantees.rst, "Exceptions").

    Slow peers: *send_timeout* (seconds, default None: no limit) is the
    default :attr:`ZeroCopyStream.send_timeout` of the pool's streams -- a
    send that takes longer resets its connection, which gives its memory
    back -- and *stream_max_in_flight* (bytes, default a quarter of the
    pool) their :attr:`ZeroCopyStream.max_in_flight`, the most zero-copy
    bytes one stream may have in flight before its sends wait. Together they
    keep peers that stop reading from holding the pool's memory for long;
    see the "Slow and stalled clients" recipe.

    With *protect_sealed*, sealing a lease also makes its pages read-only
    in the process's page tables (``mprotect``), so that even native code
    writing through a pointer it kept from a released view faults instead
    of changing bytes in flight. The library's own checks (stale handles,
    live views, read-only views of sealed leases) apply either way; this
    guards against code that goes around them, at the price of two system
    calls and a TLB flush per lease, measured at about 25 us a lease, as
    much as sending 64 KiB costs (see the benchmarks page). Good for test
    suites and debugging.
    """
    send_timeout = check_send_timeout(send_timeout)
    if stream_max_in_flight is not None:
        stream_max_in_flight = check_max_in_flight(stream_max_in_flight)
    protect_sealed = check_bool("protect_sealed", protect_sealed)
    max_bytes = check_pool_size(max_bytes, PAGE_SIZE, sys.maxsize)
    drain_timeout = check_drain_timeout(drain_timeout)
    if policy is None:
        policy = ZeroCopyPolicy()
    elif not isinstance(policy, ZeroCopyPolicy):
        raise TypeError(f"policy must be a ZeroCopyPolicy, not {type(policy).__name__}")
    the_kernel = make_kernel(kernel)
    the_kernel.claim()
    arena: Arena | None = None
    try:
        granule = the_kernel.allocation_granule()
        if max_bytes < granule:
            raise ValueError(
                f"max_bytes must be at least one allocation unit of the {the_kernel.name!r} kernel"
                f" ({granule} bytes{': ' + the_kernel.note if the_kernel.note else ''}), not {max_bytes}"
            )
        try:
            arena = Arena(max_bytes - max_bytes % granule)
        except OSError as exc:
            raise _cannot_map(max_bytes - max_bytes % granule, exc) from exc
        the_kernel.attach(arena)
        pool = BufferPool(
            arena,
            kernel=the_kernel,
            policy=policy,
            drain_timeout=drain_timeout,
            protect_sealed=protect_sealed,
            send_timeout=send_timeout,
            stream_max_in_flight=stream_max_in_flight,
        )
    except BaseException:
        # Nothing was handed out: release the kernel's ring or epoll and the memory.
        the_kernel.close()
        if arena is not None:
            arena.close()
        raise
    # The kernel's background work (the completion reaper, io_uring's
    # submitter, the mock's pump) is what brings in the completions that
    # closing waits for, so a cancelled block must not cancel it: it runs
    # shielded until the pool has closed, and is stopped then.
    background = trio.CancelScope(shield=True)

    async def run_kernel() -> None:
        with background:
            await the_kernel.run()

    # Not pool._sweeper itself: in the compiled build it has no frame, and a
    # task must start in a protected one (_ki.py, "The compiled build").
    async def sweep() -> None:
        await pool._sweeper()

    try:
        # A background nursery: an exception of the application's block comes
        # out of open_pool as itself, never wrapped in an ExceptionGroup.
        async with background_nursery() as nursery:
            nursery.start_soon(sweep)
            nursery.start_soon(run_kernel)
            try:
                yield pool
            finally:
                try:
                    await pool._close()
                finally:
                    background.cancel()
    finally:
        the_kernel.close()
        if not arena.closed:  # pragma: no cover - only if _close itself failed
            arena.close(keep_mapping=True)
