"""Which build of trio_zc the tests run against, for the few tests that can only run on one.

``make pytest-compiled`` runs the suite against the mypyc-compiled build
(tests/test_build.py checks that it does). A handful of tests reach inside
the library in ways that only interpreted code allows: a trace function that
stops a thread at a line (compiled functions have no lines), or an attribute
replaced on an object that compiled code reads natively (compiled classes
have no instance dictionary, and their calls to each other skip attribute
lookup). Those tests carry :func:`pure_only` with the reason, and still run
in the pure suite; where the guarantee they check can be reached another way,
a test next to them does so in both builds.
"""

from __future__ import annotations

import pytest

import trio_zc._lease
from trio_zc._mypyc import is_compiled

#: Whether the package under test is the compiled build (all of setup.py's
#: modules are compiled, or none: tests/test_build.py).
COMPILED = is_compiled(trio_zc._lease)


def pure_only(reason: str) -> pytest.MarkDecorator:
    """Skip the test in the compiled build, saying *reason* (why it cannot work there)."""
    return pytest.mark.skipif(COMPILED, reason=f"pure build only: {reason}")
