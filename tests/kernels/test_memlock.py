"""Real ENOBUFS and RLIMIT_MEMLOCK = 0, from a child process that is not exempt.

MSG_ZEROCOPY charges the pages of every zero-copy send call to the user's
locked memory (``user->locked_vm``), against RLIMIT_MEMLOCK, until the
call's completion; past the limit the call fails with ENOBUFS. On this
kernel each call is charged for its whole requested length plus two pages,
however much of it the socket takes. A process with CAP_IPC_LOCK (root,
here) is exempt, so these tests run the sender in a child
(``tests/children/enobufs_child.py``) that lowers RLIMIT_MEMLOCK and
removes CAP_IPC_LOCK from its capability sets with ``prctl`` and
``capset`` (staying root: user nobody cannot read the interpreter under
/root), then sends unique images over loopback to a receiver that reads
nothing at first, checking every image's SHA-256. The pool is small, so
its memory is reused while the receiver stalls: a lease released before
its completion would show as a corrupted image.

A control run keeps CAP_IPC_LOCK and must meet no ENOBUFS. A user
namespace is tried too: CAP_IPC_LOCK shows in CapEff there but does not
exempt, and the library must not be fooled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trio_zc._decider import MAX_ENOBUFS_BACKOFF

CHILD = Path(__file__).parent.parent / "children" / "enobufs_child.py"
REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
CAP_IPC_LOCK = 14
EXIT_SKIP = 77
#: The policy's enobufs_backoff in the child runs.
BACKOFF = 4

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MSG_ZEROCOPY is Linux-only")


def run_child(*args: str, timeout: float = 60) -> dict[str, Any]:
    """Run the child; its one JSON line, or skip/fail with what it said."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, str(CHILD), "--timeout", str(timeout - 15), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child did not finish within {timeout} s; stderr: {exc.stderr!r}")
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {proc.stdout!r}; stderr: {proc.stderr}"
    result: dict[str, Any] = json.loads(lines[0])
    if proc.returncode == EXIT_SKIP:
        pytest.skip(f"cannot drop CAP_IPC_LOCK here: {result['skip']}")
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode}: {result.get('error')}\n"
        f"{result.get('traceback', '')}\nstderr: {proc.stderr}"
    )
    return result


def assert_not_exempt(result: dict[str, Any], memlock: int) -> None:
    """The child really ran without CAP_IPC_LOCK, under the limit asked for."""
    assert result["rlimit_memlock"] == [memlock, memlock]
    assert not int(result["privilege"]["CapEff"], 16) >> CAP_IPC_LOCK & 1, result["privilege"]


def assert_every_image_intact(result: dict[str, Any]) -> None:
    n = result["images"]
    assert result["images_sent"] == n
    assert result["images_received"] == n
    assert result["images_verified"] == n, "some images arrived corrupted"
    assert result["bytes_received"] == n * result["image_bytes"]


def assert_settled(stats: dict[str, Any], result: dict[str, Any]) -> None:
    """Every byte was sent exactly once, every zero-copy call completed."""
    assert stats["sends_in_flight"] == 0
    assert stats["zerocopy_calls"] == stats["completions"]
    assert stats["quarantined_sends"] == 0
    assert stats["malformed_records"] == 0
    total = stats["bytes_copied"] + stats["bytes_kernel_copied"] + stats["bytes_zerocopy"]
    assert total == result["images"] * result["image_bytes"]


def backoff_violations(timeline: str, backoff: int) -> list[int]:
    """Images that broke "after ENOBUFS copy some sends, then try again".

    Timeline letters, one per image: Z all zero-copy, R zero-copy after an
    ENOBUFS that draining and retrying overcame, E refused (the rest copied)
    before any zero-copy call, P refused after some, C copied without trying.
    A refusal is followed by *backoff* copied sends, twice as many for each
    refusal in a row, back to *backoff* after a send that went through
    (capped at MAX_ENOBUFS_BACKOFF).
    """
    bad = []
    copies_due = 0
    next_backoff = backoff
    for index, mode in enumerate(timeline):
        if copies_due:
            copies_due -= 1
            if mode != "C":
                bad.append(index)
        elif mode == "C":
            bad.append(index)  # every image is large: zero-copy was due
        elif mode in "EP":
            copies_due = next_backoff
            next_backoff = min(2 * next_backoff, MAX_ENOBUFS_BACKOFF)
        else:
            next_backoff = backoff
    return bad


@pytest.mark.parametrize(
    "memlock",
    [
        # Room for one 1 MiB call (258 pages) but not two: the second image
        # is refused at its first call.
        pytest.param(2 * MiB, id="2MiB"),
        # 1152 pages: room for four 1 MiB calls (1032 pages), but the socket
        # usually takes only part of the fourth image, and the call for its
        # remainder (charged for its whole length again) is refused.
        pytest.param(4 * MiB + 512 * 1024, id="4.5MiB"),
    ],
)
def test_real_enobufs_falls_back_to_copying_and_recovers(memlock: int) -> None:
    result = run_child(
        "--memlock", str(memlock), "--images", "64", "--size", str(MiB),
        "--pool-bytes", str(8 * MiB), "--stall", "5", "--backoff", str(BACKOFF),
    )
    assert_not_exempt(result, memlock)
    assert result["warnings"] == []
    stats = result["settled"]
    timeline = result["timeline"]
    context = f"timeline {timeline}, stats {stats}"
    # The sender got stuck on the full socket (no busy loop) before the
    # receiver read anything.
    assert result["stall_expired"] is False, context
    # The kernel really refused, and the stream said why.
    assert stats["enobufs"] > 0, context
    assert any("ENOBUFS" in reason for reason, _ in stats["fallbacks"]), context
    assert stats["bytes_copied"] > 0, context
    assert_every_image_intact(result)
    # It recovered: zero-copy calls were made after the first refusal.
    first = result["first_enobufs"]
    assert first is not None, context
    assert stats["zerocopy_calls"] > first["zerocopy_calls"], context
    # The policy: exactly `enobufs_backoff` copied sends after each refusal.
    assert backoff_violations(timeline, BACKOFF) == [], context
    refusals = sum(count for _, count in stats["fallbacks"])
    assert timeline.count("E") + timeline.count("P") == refusals, context
    assert_settled(stats, result)
    # Closing found nothing in flight, and the pool got all its memory back.
    assert result["closed"]["quarantined_sends"] == 0
    pool = result["pool"]
    assert pool["quarantined_leases"] == 0 and pool["free_bytes"] == pool["max_bytes"]


def test_without_the_limit_the_same_run_meets_no_enobufs() -> None:
    """Control: with CAP_IPC_LOCK kept, the run above is never refused."""
    result = run_child(
        "--memlock", str(2 * MiB), "--privilege", "keep", "--images", "64", "--size", str(MiB),
        "--pool-bytes", str(8 * MiB), "--stall", "5", "--backoff", str(BACKOFF),
    )
    if not int(result["privilege"]["CapEff"], 16) >> CAP_IPC_LOCK & 1:
        pytest.skip("this process has no CAP_IPC_LOCK to keep")
    stats = result["settled"]
    assert stats["enobufs"] == 0, stats
    assert result["timeline"] == "Z" * 64
    assert stats["bytes_copied"] == 0
    assert_every_image_intact(result)
    assert_settled(stats, result)


@pytest.mark.parametrize(
    "privilege",
    [
        pytest.param("drop", id="capset"),
        # CAP_IPC_LOCK shows in CapEff inside a user namespace (a rootless
        # container) but does not exempt the process from the limit.
        pytest.param("userns", id="user-namespace"),
    ],
)
def test_memlock_zero_without_cap_ipc_lock_copies_from_the_start(privilege: str) -> None:
    result = run_child(
        "--memlock", "0", "--privilege", privilege, "--images", "16", "--size", str(MiB),
        "--pool-bytes", str(4 * MiB), "--stall", "5", "--backoff", str(BACKOFF),
    )
    if privilege == "drop":
        assert_not_exempt(result, 0)
    assert result["rlimit_memlock"] == [0, 0]
    assert result["warnings"] == []
    stats = result["settled"]
    # Sent by copying, intact, whatever the library decided.
    assert_every_image_intact(result)
    assert_settled(stats, result)
    # Zero-copy was never attempted, and the stream said why from the start.
    for when in ("initial", "settled"):
        assert result[when]["zerocopy_enabled"] is False, (when, result[when])
        reasons = [reason for reason, _ in result[when]["fallbacks"]]
        assert any("RLIMIT_MEMLOCK" in reason for reason in reasons), (when, result[when])
    assert stats["zerocopy_calls"] == 0 and stats["enobufs"] == 0, stats
    assert stats["bytes_copied"] == 16 * MiB
    assert result["timeline"] == "C" * 16


# --- io_uring under the limit ----------------------------------------------------------
#
# Measured on Linux 6.18 without CAP_IPC_LOCK: with RLIMIT_MEMLOCK 0 even
# io_uring_setup fails (ENOMEM: the rings are charged to the limit); with
# 8 MiB the ring works, registering more than the limit leaves fails
# (ENOMEM), and a SEND_ZC from unregistered memory is charged for its whole
# length until its notification, and fails with ENOMEM past the limit. The
# connection is fine then: the send must be copied, never reported broken.


def pool_note(result: dict[str, Any]) -> str:
    note = result["pool"]["kernel_note"]
    assert isinstance(note, str)
    return note


def test_io_uring_copies_the_sends_the_limit_refuses_and_says_why() -> None:
    """12 MiB images under 8 MiB: the arena's chunk and every image's SEND_ZC are refused (ENOMEM)."""
    result = run_child(
        "--memlock", str(8 * MiB), "--kernel", "io_uring", "--images", "8", "--size", str(12 * MiB),
        "--pool-bytes", str(32 * MiB), "--stall", "5", "--backoff", str(BACKOFF),
    )
    assert_not_exempt(result, 8 * MiB)
    if result["pool"]["kernel"] != "io_uring":
        pytest.skip(f"io_uring is not usable here: {pool_note(result)}")
    assert result["warnings"] == []
    stats = result["settled"]
    timeline = result["timeline"]
    context = f"timeline {timeline}, stats {stats}"
    assert stats["enobufs"] > 0, context
    assert any("ENOMEM" in reason for reason, _ in stats["fallbacks"]), context
    assert_every_image_intact(result)
    # The same policy as for MSG_ZEROCOPY's ENOBUFS: copy a while, try again.
    assert backoff_violations(timeline, BACKOFF) == [], context
    assert "E" in timeline or "P" in timeline, context
    assert_settled(stats, result)
    pool = result["pool"]
    assert pool["quarantined_leases"] == 0 and pool["free_bytes"] == pool["max_bytes"]
    # The note says what failed, and why, for this process.
    note = pool_note(result)
    assert "Registering 16 MiB of the pool's memory failed" in note, note
    assert "RLIMIT_MEMLOCK is 8 MiB and the process lacks CAP_IPC_LOCK" in note, note


@pytest.mark.parametrize("kernel", ["io_uring", "auto"])
def test_six_connections_under_an_8_mib_limit_deliver_every_image(kernel: str) -> None:
    """The outside tester's case: 6 connections, 2 MiB images, a 32 MiB pool, RLIMIT_MEMLOCK 8 MiB.

    Before, io_uring reported 4 of the 6 healthy connections broken
    (ENOMEM); MSG_ZEROCOPY backed off. With ``auto`` the peers are on
    loopback, so every send is copied from the start and nothing is pinned.
    """
    connections, images = 6, 8
    result = run_child(
        "--memlock", str(8 * MiB), "--kernel", kernel, "--connections", str(connections),
        "--images", str(images), "--size", str(2 * MiB), "--pool-bytes", str(32 * MiB),
        "--stall", "5", "--backoff", str(BACKOFF),
    )
    assert_not_exempt(result, 8 * MiB)
    if result["pool"]["kernel"] != "io_uring":
        pytest.skip(f"io_uring is not usable here: {pool_note(result)}")
    assert result["warnings"] == []
    assert_every_image_intact(result)
    lanes = result["lanes"]
    assert len(lanes) == connections
    for lane in lanes:
        stats = lane["settled"]
        assert lane["images_verified"] == images
        assert_settled(stats, {"images": images, "image_bytes": 2 * MiB})
        if kernel == "io_uring":
            assert backoff_violations(lane["timeline"], BACKOFF) == [], lane
        else:
            assert lane["timeline"] == "C" * images
    refused = sum(lane["settled"]["enobufs"] for lane in lanes)
    if kernel == "io_uring":
        # Six 2 MiB sends are charged at once before any receiver reads: more than 8 MiB.
        assert refused > 0, lanes
    else:
        assert refused == 0
        assert all(lane["settled"]["zerocopy_calls"] == 0 for lane in lanes)
        assert pool_note(result).startswith("auto: io_uring: ")
    pool = result["pool"]
    assert pool["quarantined_leases"] == 0 and pool["free_bytes"] == pool["max_bytes"]


@pytest.mark.parametrize("kernel", ["io_uring", "auto"])
def test_memlock_zero_io_uring_falls_back_and_the_note_names_the_limit(kernel: str) -> None:
    """RLIMIT_MEMLOCK 0: on Linux 6.18 the ring itself is refused; the note says so, for this process."""
    result = run_child(
        "--memlock", "0", "--kernel", kernel, "--images", "4", "--size", str(MiB),
        "--pool-bytes", str(4 * MiB), "--stall", "5", "--backoff", str(BACKOFF),
    )
    assert_not_exempt(result, 0)
    assert result["warnings"] == []
    assert_every_image_intact(result)
    assert_settled(result["settled"], result)
    note = pool_note(result)
    if result["pool"]["kernel"] == "io_uring":
        pytest.skip(f"this kernel set up a ring under RLIMIT_MEMLOCK 0: {note}")
    prefix = "auto: " if kernel == "auto" else ""
    assert note.startswith(f"{prefix}msg_zerocopy, because io_uring is not usable: io_uring_setup failed with ENOMEM")
    assert "RLIMIT_MEMLOCK is 0 bytes and the process lacks CAP_IPC_LOCK" in note, note
    # msg_zerocopy cannot pin anything either: every send is copied.
    assert result["settled"]["zerocopy_calls"] == 0
    assert result["timeline"] == "C" * 4
