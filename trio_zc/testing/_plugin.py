"""The pytest plugin trio_zc installs (entry point ``pytest11``).

Fixtures for applications' test suites, for use with pytest-trio:

``mock_kernel``
   A fresh :class:`~trio_zc.testing.MockKernel`.
``mock_pool``
   A 64 MiB pool on ``mock_kernel``, open for the test's duration (an async
   fixture: the test must be a Trio test, as under pytest-trio's trio mode).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .._pool import BufferPool
from .._pool_open import open_pool
from ._kernel import MockKernel

MOCK_POOL_BYTES = 64 * 2**20


@pytest.fixture
def mock_kernel() -> MockKernel:
    """A fresh MockKernel for one test."""
    return MockKernel()


@pytest.fixture
async def mock_pool(mock_kernel: MockKernel) -> AsyncIterator[BufferPool]:
    """A pool of 64 MiB on the test's ``mock_kernel``."""
    async with open_pool(max_bytes=MOCK_POOL_BYTES, kernel=mock_kernel) as pool:
        yield pool


from .._ki import protect_package as _protect_package

_protect_package(__name__)
