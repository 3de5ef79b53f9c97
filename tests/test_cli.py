from __future__ import annotations

import subprocess
import sys

import trio_zc._lifecycle as lifecycle


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_zc", *args], capture_output=True, text=True, timeout=120
    )


def test_demo_runs_end_to_end_and_verifies_every_image() -> None:
    result = run("demo", "--images", "4", "--clients", "3")
    assert result.returncode == 0, result.stderr
    assert "images verified : 60/60" in result.stdout
    assert "corrupt images  : 0" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line[:1].isalpha()}
    for kernel in ["auto", "io_uring", "msg_zerocopy", "sendfile", "copy"]:
        assert rows[kernel][1:3] == ["3", "12"], rows[kernel]  # streams, images
        assert rows[kernel][7] == "0"  # corrupt
    assert float(rows["sendfile"][5]) > 0  # sendfile bytes count as zero-copy


def test_lifecycle_command_prints_the_generated_diagram() -> None:
    result = run("lifecycle")
    assert result.returncode == 0
    assert lifecycle.render_mermaid() in result.stdout
    assert lifecycle.render_table() in result.stdout


def test_bench_smoke_runs_every_kernel_and_verifies_every_image() -> None:
    result = run("bench", "--kernels", "copy,msg_zerocopy,sendfile", "--sizes", "64K,1M",
                 "--bytes", "2M", "--repeat", "1")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.strip().endswith(("yes", "NO"))]
    assert len(rows) == 6 and all(line.endswith("yes") for line in rows)
    assert "ratios to 'copy'" in result.stdout
