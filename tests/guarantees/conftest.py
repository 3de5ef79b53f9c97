"""What the guarantee tests need of the process they run in."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def sigint_is_deliverable() -> Iterator[None]:
    """Python's own SIGINT handler, even where the suite was started with SIGINT ignored.

    A shell without job control starts background commands (``make test &``)
    with SIGINT ignored, and Python then keeps it ignored: a test's SIGINT
    would vanish, and Trio (which installs its Ctrl-C handler only over
    Python's default one) would never see it. The tests that send one would
    fail for the way they were started, not for the library.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
