"""The io_uring probe keeps only answers that cannot change during the process.

Success, an unsupported platform, ENOSYS (no io_uring, or a seccomp filter,
which a process cannot lift) and EINVAL (an old kernel) are kept. Anything
else -- too many open files, a memory or locked-memory shortage, EAGAIN,
``kernel.io_uring_disabled`` switched on for a moment (EPERM) -- may be gone
for the next pool, which must then get io_uring, with a note that is true.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from trio_zc import open_pool
from trio_zc._kernels import _ring as _uring
from trio_zc._kernels._io_uring import IoUringKernel
from trio_zc._kernels._msg_zerocopy import MsgZeroCopyKernel
from trio_zc._kernels._ring import probe

REPO = pathlib.Path(__file__).resolve().parents[2]
CHILD = REPO / "tests" / "children" / "probe_child.py"
MiB = 1 << 20


def io_uring_works() -> bool:
    found = _uring.probe_uncached()
    return found.available and found.send_zc


needs_io_uring = pytest.mark.skipif(not io_uring_works(), reason="io_uring is not usable here")


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Start and end with nothing kept, so no other test sees this one's answers."""
    probe.cache_clear()
    yield
    probe.cache_clear()


def fail_setup_with(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    real = _uring._call

    def fake(nr: int, *args: int | None) -> tuple[int, int]:
        if nr == _uring._NR_IO_URING_SETUP:
            return -1, err
        return real(nr, *args)

    monkeypatch.setattr(_uring, "_call", fake)


@needs_io_uring
@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EPERM])
async def test_a_passing_failure_is_probed_again(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None, err: int
) -> None:
    fail_setup_with(monkeypatch, err)
    async with open_pool(max_bytes=MiB, kernel="io_uring") as pool:
        assert isinstance(pool._kernel, MsgZeroCopyKernel)
        note = pool.statistics().kernel_note or ""
        assert f"io_uring_setup failed with {errno.errorcode[err]}" in note
    monkeypatch.undo()  # the shortage is over
    found = probe()
    assert found.available and found.send_zc, found.reason
    async with open_pool(max_bytes=MiB, kernel="io_uring") as pool:
        assert isinstance(pool._kernel, IoUringKernel)
        note = pool.statistics().kernel_note or ""
        assert note.startswith("io_uring: io_uring works on Linux ")
        assert "failed" not in note


@needs_io_uring
@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL])
def test_an_answer_that_cannot_change_is_kept(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None, err: int
) -> None:
    fail_setup_with(monkeypatch, err)
    first = probe()
    assert not first.available and errno.errorcode[err] in first.reason
    monkeypatch.undo()
    # Kept: the kernel will not grow io_uring, nor lose a seccomp filter.
    assert probe() is first
    probe.cache_clear()
    assert probe().available


@needs_io_uring
def test_success_is_kept(fresh_probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    first = probe()
    assert first.available
    fail_setup_with(monkeypatch, errno.EMFILE)
    assert probe() is first  # not probed again


def test_unsupported_platform_is_kept(fresh_probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_uring, "_unsupported_platform", lambda: "io_uring is Linux-only, and this is plan9")
    first = probe()
    assert not first.available and "plan9" in first.reason
    monkeypatch.undo()
    assert probe() is first


@needs_io_uring
def test_running_out_of_descriptors_for_a_moment_does_not_turn_io_uring_off_for_good() -> None:
    """For real, in a child: RLIMIT_NOFILE lowered so that nothing opens, then raised again."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    child = subprocess.run(
        [sys.executable, str(CHILD)], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    starved = result["starved"]
    assert starved["available"] is False and "EMFILE" in starved["reason"], starved
    # Nothing at all can be opened then, not even the fallback's epoll.
    assert "Too many open files" in result["starved_choice"].get("error", ""), result
    # Once descriptors can be had again, so can io_uring.
    again = result["again"]
    assert again["available"] is True and again["send_zc"] is True, again
    assert result["again_choice"]["kernel"] == "io_uring", result
    assert "EMFILE" not in result["again_choice"]["note"]
    # And the starved probe said which limit it was.
    assert "RLIMIT_NOFILE" in starved["reason"], starved
