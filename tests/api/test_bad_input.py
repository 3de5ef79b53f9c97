"""Every row of the bad-input table (tests/bad_inputs.py): the exception, and nothing lost.

For each row: the call raises the row's exception with a message containing
the row's fragment; then

1. the statistics of every pool involved, and of the stream, are what they
   were just before the call;
2. every prepared lease still holds its bytes and still works (a writable
   one seals, a sealed one is readable), and whatever the row made (views,
   sockets, streams) is undone;
3. every pool's memory is all free again, no file descriptor was left open,
   and the pool still leases, its stream still sends a sealed lease that
   arrives intact and still receives (a new stream if the row closed it).

A second test keeps docs/bad_input.rst in step with the table.
"""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

import trio_zc
import trio_zc.testing

from ..bad_inputs import (
    DOCS_PAGE,
    REGENERATE,
    ROWS,
    SEALED_BYTES,
    Ctx,
    Row,
    open_context,
    open_fds,
    page_table,
    pattern,
    render_rst,
)
from ..streams import receive_exactly


async def settle(c: Ctx) -> None:
    """Wait until the kernel reported every send complete, so that released memory is back."""
    with trio.fail_after(10):
        while any(pool.statistics().sends_in_flight for pool in c.pools):
            await trio.sleep(0.001)
    await trio.testing.wait_all_tasks_blocked()


def assert_all_free(c: Ctx) -> None:
    for pool in c.pools:
        stats = pool.statistics()
        assert stats.free_bytes == stats.max_bytes, stats
        assert stats.writable_leases == stats.sealed_leases == stats.draining_leases == 0, stats
        assert stats.abandoned_leases == stats.quarantined_leases == stats.adopted_leases == 0, stats


async def assert_still_works(c: Ctx) -> None:
    """The pool leases, and a stream on it sends and receives."""
    stream, peer = c.stream, c.peer
    if stream._closed or stream._eof_sent:
        stream, peer = await c.new_pair()
    data = pattern(SEALED_BYTES, 42)
    async with c.pool.lease(len(data)) as lease:
        lease.write(data)
        sealed = lease.seal()
        await stream.send_lease(sealed)
        assert await receive_exactly(peer, len(data)) == data
    if not stream._closed:
        await peer.send_all(b"ping")
        assert await receive_exactly(stream, 4) == b"ping"
    await settle(c)
    assert_all_free(c)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
async def test_bad_input(row: Row) -> None:
    async with open_context(row.context) as c:
        await c.mark()
        if row.raises is None:
            c.keep(await row.run(c))
        else:
            with pytest.raises(row.raises, match=re.escape(row.match)) as info:
                await row.run(c)
            # The traceback holds the frames of the row (and so views it made).
            del info
            await trio.testing.wait_all_tasks_blocked()
            assert c.state() == c.snapshot, "the bad call changed the state"
        await c.cleanup()
        await settle(c)
        assert open_fds() == c.fds, "a file descriptor was left open (or closed)"
        if c.kind != "bare":
            assert_all_free(c)
            await assert_still_works(c)


def test_every_category_and_context_is_used() -> None:
    from ..bad_inputs import CATEGORIES, CONTEXTS

    assert {row.category for row in ROWS} == set(CATEGORIES)
    assert {row.context for row in ROWS} == set(CONTEXTS)
    assert all(issubclass(row.raises, BaseException) for row in ROWS if row.raises is not None)


def test_the_docs_page_shows_the_table() -> None:
    page = DOCS_PAGE.read_text()
    assert page_table(page) == render_rst().strip("\n"), (
        f"{DOCS_PAGE.name} is out of date with tests/bad_inputs.py; regenerate it with: {REGENERATE}"
    )
    assert "bad_input" in (DOCS_PAGE.parent / "index.rst").read_text(), "bad_input is not in the toctree"


def test_the_error_names_are_public() -> None:
    # The docs name exceptions as trio_zc.X / trio.X; they must exist there.
    for row in ROWS:
        exc = row.raises
        if exc is not None and exc.__module__.startswith("trio_zc"):
            module = trio_zc if exc.__module__ == "trio_zc" else trio_zc.testing
            assert getattr(module, exc.__name__) is exc, row.id
