"""ZeroCopyStream passes Trio's generic conformance test on every real kernel."""

from __future__ import annotations

import socket

import pytest
from trio.testing import check_half_closeable_stream

import trio_zc

from .streams import clog, stream_pair

KERNELS = ["copy", "msg_zerocopy"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
async def test_check_half_closeable_stream(kernel: str, family: int) -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel=kernel) as pool:

        async def maker() -> tuple[trio_zc.ZeroCopyStream, trio_zc.ZeroCopyStream]:
            return await stream_pair(pool, family=family)

        async def clogged() -> tuple[trio_zc.ZeroCopyStream, trio_zc.ZeroCopyStream]:
            a, b = await maker()
            await clog(a)
            await clog(b)
            return a, b

        await check_half_closeable_stream(maker, clogged)
