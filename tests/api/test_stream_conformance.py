"""ZeroCopyStream passes Trio's generic conformance test on every real kernel."""

from __future__ import annotations

import socket

import pytest
from trio.testing import check_half_closeable_stream

import trio_zc

from ..streams import KERNELS, Peer, clog, kernel, stream_pair


CASES = [(name, socket.AF_INET) for name in KERNELS] + [
    (name, socket.AF_INET6) for name in KERNELS if name != "mock"  # the mock has no families
]


@pytest.mark.parametrize(("name", "family"), CASES)
async def test_check_half_closeable_stream(name: str, family: int) -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel(name)) as pool:

        async def maker() -> tuple[trio_zc.ZeroCopyStream, Peer]:
            return await stream_pair(pool, family=family)

        async def clogged() -> tuple[trio_zc.ZeroCopyStream, Peer]:
            a, b = await maker()
            await clog(a)
            await clog(b)
            return a, b

        await check_half_closeable_stream(maker, clogged)
