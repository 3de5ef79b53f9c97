"""examples/reuseport.py: several processes serve one port, each with its own pool."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "reuseport.py"


def test_reuseport_example_spreads_connections_over_processes() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE), "--self-test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "40/40 images intact, served by 2 different processes" in result.stdout
