"""The runnable examples in examples/ run to completion and say what they should."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
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
