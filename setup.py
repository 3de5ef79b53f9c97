"""The optional compiled build (docs/install.rst, "The compiled build").

Everything about the package is in pyproject.toml; this file only adds the
modules that mypyc compiles, and only when asked: ``TRIO_ZC_COMPILE=1`` (or
``required``) in the environment of a build with mypy installed and
``--no-build-isolation``. Without it (an ordinary ``pip install``) the
package is pure Python, as it always was. With ``1``, a build that cannot
compile (no mypy, no C compiler, a mypyc error) says so and installs the
pure package; with ``required`` it fails instead (``make compiled`` and CI).
The compiled modules behave as the pure ones do (the test suite runs against
both); they make the per-lease path about twice as fast.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: What mypyc compiles: the per-lease path (pool, lease, stream, completion
#: bookkeeping) and the mock kernel that tests and the benchmark run on.
#: Async generators, overloaded protocols and attrs classes with validators
#: stay in modules of their own that are not compiled (docs/howitworks.rst).
COMPILED = [
    "trio_zc/_lifecycle.py",
    "trio_zc/_stats.py",
    "trio_zc/_decider.py",
    "trio_zc/_allocator.py",
    "trio_zc/_conflict.py",
    "trio_zc/_lease.py",
    "trio_zc/_pool.py",
    "trio_zc/_stream.py",
    "trio_zc/_kernels/_base.py",
    "trio_zc/_kernels/_completion.py",
    "trio_zc/_kernels/_completions.py",
    "trio_zc/_kernels/_errqueue.py",
    "trio_zc/testing/_wire.py",
    "trio_zc/testing/_sends.py",
    "trio_zc/testing/_transport.py",
    "trio_zc/testing/_kernel.py",
]

MODE = os.environ.get("TRIO_ZC_COMPILE", "")


def _say(message: str) -> None:
    print(f"trio_zc: {message}", file=sys.stderr)


def _extensions() -> list[object]:
    if MODE not in ("1", "required"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if MODE == "required":
            raise
        _say("mypyc is not installed (pip install mypy, and build with --no-build-isolation): pure Python")
        return []
    try:
        return list(mypycify(["--strict", *COMPILED], opt_level="3"))
    except BaseException as exc:  # noqa: B036 - mypyc reports its errors with SystemExit
        if MODE == "required":
            raise
        _say(f"mypyc could not compile the package ({exc!r}): pure Python")
        return []


class _BuildExt(build_ext):
    """build_ext that installs the pure package when compiling fails (unless required)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if MODE == "required":
                raise
            _say(f"the C compiler failed ({exc!r}): pure Python")
            self.extensions = []

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
