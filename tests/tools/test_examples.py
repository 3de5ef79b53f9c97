"""The runnable examples in examples/ run to completion and say what they should."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_send_images_example_verifies_every_image() -> None:
    result = run_example("send_images.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receiver verified 6/6 images (SHA-256)" in result.stdout
    assert "0 sends in flight" in result.stdout
    assert result.stderr == ""
    # What was copied is told as it is: the headers, and the images the
    # stream copied (all of them, to a peer on loopback under "auto").
    sent = re.search(r"sent 6 images \(([\d.]+) MB\)", result.stdout)
    copied = re.search(
        r"copied at the send call: (\d+) bytes, the 6 headers \(288 bytes: send_all\(\) copies\)"
        r" and (\d+) bytes of images",
        result.stdout,
    )
    assert sent and copied, result.stdout
    assert int(copied.group(1)) == 288 + int(copied.group(2))
    if "the peer is on loopback" in result.stdout:
        assert f"{int(copied.group(2)) / 1e6:.1f}" == sent.group(1)


def test_the_example_application_tests_on_the_mock_kernel_pass() -> None:
    """examples/test_app_on_mock.py is a test suite of its own; it must pass as shipped."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_app_on_mock.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_image_server_self_test_fetches_images_over_http() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "image_server.py"), "--self-test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GET / -> 200" in result.stdout
    for n in range(4):
        assert f"GET /image/{n}.jpg -> 200" in result.stdout
    assert (
        "keep-alive: 6 requests on one connection: /image/4.jpg 200, /image/4.jpg 206, /image/4.jpg 304,"
        " /image/5.jpg 200, /image/99.jpg 404, /nothing-here 404" in result.stdout
    )
    assert "served 11 requests over 6 connections" in result.stdout
    # Images 0-5 encoded once each; the range and the conditional request of image 4 came from the cache.
    assert "cache: 6 images encoded, 2 served from the cache" in result.stdout
    assert "pool: 16777216 of 16777216 bytes free, 0 sends in flight" in result.stdout
    assert "self-test passed" in result.stdout
    assert result.stderr == ""


def test_broadcast_example_sends_one_lease_to_every_client() -> None:
    result = run_example("broadcast.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "50/50 clients received intact copies (SHA-256)" in result.stdout
    assert "pool after the streams closed: 8388608 of 8388608 bytes free" in result.stdout
    assert "all memory back in the pool" in result.stdout
    assert result.stderr == ""


def test_broadcast_example_goes_on_when_clients_leave_part_way() -> None:
    """Two clients close, two reset and two stop reading mid-image: the other 44 get it whole."""
    result = run_example("broadcast.py", "--leave", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "44/44 clients received intact copies (SHA-256)" in result.stdout
    assert "6 clients left part-way (close, reset, stop reading, in turn): 6 sends ended early" in result.stdout
    assert "all memory back in the pool" in result.stdout
    assert result.stderr == ""


def test_slow_clients_example_keeps_serving_while_100_clients_stall() -> None:
    result = run_example("slow_clients.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "readers verified 24/24 images (SHA-256)" in result.stdout
    served = re.search(r"served: (\d+), cut off by send_timeout: (\d+), gone before their turn: (\d+)", result.stdout)
    assert served is not None, result.stdout
    # The 64 that held leases (16 MiB / 256 KiB) are cut off; the rest never got memory.
    assert int(served[1]) == 3 and int(served[2]) > 0 and int(served[2]) + int(served[3]) == 100
    assert "pool at the end: 16384 of 16384 KiB free" in result.stdout


def test_slow_clients_example_without_the_timeout_shows_the_starvation() -> None:
    """The control: the same program with send_timeout off starves its readers."""
    result = run_example("slow_clients.py", "--timeout", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the readers were starved" in result.stdout


def test_tight_loop_example_verifies_every_image_and_shares_the_thread() -> None:
    result = run_example("tight_loop.py", "--images", "300", "--size", "65536")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receiver verified 300/300 images (SHA-256)" in result.stdout
    assert "pool whole again: True" in result.stdout
    # One schedule point per image is still there: send_lease's.
    ticks = int(re.search(r"ticker task ran (\d+) times", result.stdout).group(1))  # type: ignore[union-attr]
    assert ticks >= 100
    assert result.stderr == ""


def test_asgi_app_self_test_serves_leases_through_anycorn_and_hypercorn() -> None:
    result = run_example("asgi_app.py", "--self-test")
    assert result.returncode == 0, result.stdout + result.stderr
    for server in ("anycorn", "hypercorn"):
        for n in range(4):
            assert f"{server}: GET /image/{n}.png -> 200" in result.stdout
        assert f"{server}: GET /raw/0.png -> 200" in result.stdout
        assert f"{server}: GET /image/4.png -> 404" in result.stdout
        assert f"{server}: cache: 4 encoded, 1 from the cache" in result.stdout
        assert f"{server}: pool: 16777216 of 16777216 bytes free, 0 sends in flight" in result.stdout
    # anycorn offers the zero-copy send extension; hypercorn does not.
    assert "anycorn: 5 images sent, /image/0.png (sendfile offered)" in result.stdout
    assert "hypercorn: 5 images sent, /image/0.png (ordinary body)" in result.stdout
    assert "self-test passed" in result.stdout
    assert result.stderr == ""
