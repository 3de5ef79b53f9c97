"""Background tasks for the library's context managers, without wrapping the block's exceptions.

The rule (docs/guarantees.rst, "Exceptions"): no context manager of trio_zc
wraps an exception raised in the application's block. A nursery would: with
Trio's strict exception groups, everything that leaves ``async with
trio.open_nursery()`` is an :class:`ExceptionGroup`, so a pool whose kernel
runs in background tasks would turn ``raise ValueError`` in the pool's block
into ``ExceptionGroup([ValueError])``, and ``except ValueError`` around the
pool would miss it.

:func:`background_nursery` is the nursery for such tasks. What leaves it is
decided once the nursery has closed, when every task is done:

- one exception happened (in the block, or in one background task): that
  exception, as itself, with its own traceback and ``__context__``;
- only :class:`trio.Cancelled` happened (the block and the tasks were
  cancelled from outside): one of them, the block's if it has one, which
  the cancel scope that cancelled it catches as usual;
- several exceptions really happened (the block's and a task's, or several
  tasks'): the nursery's :class:`ExceptionGroup`, untouched. A
  :class:`trio.Cancelled` next to a real exception is not counted: it only
  unwinds, and the real exception unwinds as far.

A group that the block raised itself comes out as it went in: only the
nursery's own wrapping is taken off.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio

if sys.version_info < (3, 11):  # pragma: no cover - the backport Trio depends on there
    from exceptiongroup import BaseExceptionGroup


def sole_exception(group: BaseExceptionGroup[BaseException], prefer: BaseException | None = None) -> BaseException:
    """What a nursery's *group* stands for: its one real exception, or the group itself.

    *group* must be the group a strict nursery raised (its members are the
    exceptions of the nursery's tasks and block). *prefer* is the block's
    exception, returned when only cancellations happened.
    """
    members = group.exceptions
    real = [exc for exc in members if not isinstance(exc, trio.Cancelled)]
    if len(real) == 1:
        if prefer is not None and _copy_of(real[0], prefer):
            return prefer
        return real[0]
    if real:
        return group
    # Only cancellations: any of them unwinds to the same scope; the block's
    # has the traceback the application expects.
    return prefer if prefer is not None and prefer in members else members[0]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            yield from _leaves(member)
    else:
        yield exc


def _copy_of(exc: BaseException, original: BaseException) -> bool:
    """Whether *exc* is *original*, or a copy of a group *original* with some leaves taken out.

    A cancelled scope takes its Cancelled out of a group passing through it
    with ``BaseExceptionGroup.split()``, which builds new groups around the
    same leaves: a group the block raised reaches us as such a copy, and the
    application should get its own object back.
    """
    if exc is original:
        return True
    if not (isinstance(exc, BaseExceptionGroup) and isinstance(original, BaseExceptionGroup)):
        return False
    ours = {id(leaf) for leaf in _leaves(original)}
    return all(id(leaf) in ours for leaf in _leaves(exc))


def reraise(exc: BaseException) -> None:
    """Raise *exc* keeping its ``__context__``.

    Raising an exception while another is being handled (in an ``except``
    block, or in ``__aexit__``, where the block's exception is) makes Python
    overwrite its ``__context__``: an exception taken out of a group would
    then point at that group, or at an unrelated cancellation. The context it
    had is put back as it propagates.
    """
    context, suppress = exc.__context__, exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__, exc.__suppress_context__ = context, suppress
        del exc, context


@asynccontextmanager
async def background_nursery() -> AsyncIterator[trio.Nursery]:
    """``async with background_nursery() as nursery:`` a nursery whose block's exceptions come out as themselves.

    The nursery is cancelled when the block ends, however it ends: its tasks
    are background work that lives only as long as the block (shield a
    task's own scope to let it finish something first). See the module
    docstring for what leaves it.
    """
    block_exc: BaseException | None = None
    failure: BaseException | None = None
    try:
        # Strict whatever trio.run() was told: the unwrapping below relies on
        # every exception leaving the nursery as a group of its own making.
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            try:
                yield nursery
            except BaseException as exc:
                block_exc = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        failure = sole_exception(group, block_exc)
        del group
    finally:
        del block_exc
    if failure is not None:
        # Raised here, outside the except block, so that Python does not chain
        # it to the group; reraise() keeps the context it came with.
        try:
            reraise(failure)
        finally:
            del failure
