"""benchmarks/http_load.py: its servers, its body checks, its verdicts; the whole run only where wrk is.

The suite never needs wrk or nginx: the servers are started and checked with
a Python client, the table and targets are computed from made-up figures,
and only the tests that drive wrk are skipped without it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from benchmarks import http_load
from benchmarks.http_load import Run, Summary, Target

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "http_load.py"

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def test_the_bodies_are_real_jpegs_of_the_sizes() -> None:
    from PIL import Image

    for size in (13_000, 100_000):
        data = http_load.jpeg_of_size(size)
        assert len(data) == size
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
            image.load()
    thumbnail = http_load.render_thumbnail(http_load.source_picture())
    assert 10_000 < len(thumbnail) < 16_000


def test_case_selection() -> None:
    assert http_load.select_cases("nginx") == ["13K/nginx", "512K/nginx", "4M/nginx"]
    assert http_load.select_cases("render") == [f"render/{s}" for s in http_load.RENDER_SERVERS]
    assert http_load.select_cases("4M/trio-h11,13K/trio_zc-auto") == ["13K/trio_zc-auto", "4M/trio-h11"]
    assert "512K/trio-h11-joined" not in http_load.all_cases()
    with pytest.raises(ValueError, match="'nope' is no group"):
        http_load.select_cases("13K,nope")


def _start(case: str, workdir: str, body_file: str) -> http_load.Server:
    return http_load.start_python_server(case, workdir, None if case.startswith("render/") else body_file)


def test_every_python_server_serves_the_expected_bytes_and_survives_a_rude_client(tmp_path: pathlib.Path) -> None:
    body = http_load.jpeg_of_size(13_000)
    body_file = tmp_path / "13K.jpg"
    body_file.write_bytes(body)
    rendered = http_load.render_thumbnail(http_load.source_picture())
    cases = [c for c in http_load.all_cases() if c.startswith(("13K/", "render/")) and not c.endswith("/nginx")]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        servers = list(pool.map(lambda c: _start(c, str(tmp_path), str(body_file)), cases))
    try:
        for server in servers:
            path, expected = (
                (http_load.RENDER_PATH, rendered) if server.case.startswith("render/") else (http_load.IMAGE_PATH, body)
            )
            assert http_load.check_bodies(server.port, path, expected) == 0, server.case
            # The check can fail: a body other than the expected one is counted.
            assert http_load.check_bodies(server.port, path, expected[:-1] + b"?", requests=2) == 2, server.case
            assert http_load.check_bodies(server.port, "/elsewhere", expected, requests=1) == 1, server.case
            # A client that sends half a request and leaves, then one that sends garbage.
            with socket.create_connection(("127.0.0.1", server.port)) as rude:
                rude.sendall(b"GET /image.jpg HTTP/1.1\r\nHo")
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as rude:
                rude.sendall(b"\x00\x01 not http\r\n\r\n")
                rude.recv(1000)
            assert http_load.check_bodies(server.port, path, expected) == 0, server.case
            assert server.alive(), server.case
            assert server.cpu() > 0, server.case
            if server.case.split("/")[1] in {f"trio_zc-{k}" for k in http_load.KERNELS[:-1]}:
                assert server.kernel == server.case.split("-", 1)[1], server.case
    finally:
        statuses = {server.case: server.stop() for server in servers}
    assert statuses == dict.fromkeys(cases, 0), [s.log_tail() for s in servers]


def _run(case: str, rps: float, *, bad: int = 0, rep: int = 0) -> Run:
    return Run(case, rep, int(rps * 10), 10.0, rps * 10 * 0.0001, 0, 0, 0, bad, 0, 1.0, 5.0)


GOOD = {
    "13K/trio_zc-auto": 20_000, "13K/trio-h11": 9_000, "13K/nginx": 60_000,
    "512K/trio_zc-auto": 5_000, "512K/nginx": 4_900, "4M/trio_zc-auto": 600, "4M/trio-h11": 500,
    "4M/nginx": 300, "render/trio_zc-threads": 300, "render/trio_zc-workers": 350, "render/trio-pillow": 240,
}  # fmt: skip


def _report(rates: dict[str, float], tmp_path: pathlib.Path, *, bad: int = 0, failures: int = 0
            ) -> tuple[list[Target], str]:
    runs = [_run(case, rate * factor, rep=i) for case, rate in rates.items() for i, factor in enumerate((0.9, 1, 1.2))]
    if bad:
        runs.append(_run("13K/nginx", 60_000, bad=bad, rep=3))
    result = {
        "runs": runs, "kernels": dict.fromkeys(rates, "copy"),
        "body_sizes": {"13K": 13_000, "512K": 512 << 10, "4M": 4 << 20, "render": 13_018},
        "bad_checks": 0, "failures": failures, "notes": [], "tmpfs": True,
    }
    args = argparse.Namespace(duration=10, repeat=3, json=str(tmp_path / "r.json"), chart=str(tmp_path / "c.svg"),
                              argv=["--json", "r.json"])
    return http_load.report(result, list(rates), args)


def test_targets_all_met_on_figures_that_meet_them(tmp_path: pathlib.Path) -> None:
    found, text = _report(GOOD, tmp_path)
    assert [t.name for t in found] == [
        "13K cached: trio_zc-auto / trio-h11", "13K cached: trio_zc-auto / nginx", "512K cached: trio_zc-auto / nginx",
        "4M cached: trio_zc-auto / trio-h11", "4M cached: trio_zc-auto / nginx",
        "13K rendered: trio_zc-workers (the faster) / trio-pillow",
        "corrupt, short or non-200 responses", "servers that exited or did not stop cleanly",
    ]
    assert all(t.met for t in found) and "MISSED" not in text
    assert http_load.exit_status(found, check_targets=True) == 0
    # Medians: the 1.2x run is not the figure.
    assert "13K/trio_zc-auto" in text and "20,000" in text and "18,000-24,000" in text
    saved = json.loads((tmp_path / "r.json").read_text())
    assert len(saved["runs"]) == 3 * len(GOOD) and all(t["met"] for t in saved["targets"])
    assert (tmp_path / "c.svg").read_text().startswith("<svg")


def test_a_miss_prints_missed_on_the_unrounded_figure(tmp_path: pathlib.Path) -> None:
    # 17,999 / 9,000 is 1.9999: it would print as 2.00 if rounded to two decimals.
    found, text = _report(GOOD | {"13K/trio_zc-auto": 17_999}, tmp_path)
    assert "MISSED  13K cached: trio_zc-auto / trio-h11: 1.9999 (target >= 2.0)" in text
    assert http_load.exit_status(found, check_targets=False) == 0
    assert http_load.exit_status(found, check_targets=True) == 3


def test_a_corrupt_body_or_a_dead_server_fails_the_run(tmp_path: pathlib.Path) -> None:
    found, text = _report(GOOD, tmp_path, bad=1)
    assert "MISSED  corrupt, short or non-200 responses: 1 (target <= 0)" in text
    assert http_load.exit_status(found, check_targets=False) == 1
    found, text = _report(GOOD, tmp_path, failures=1)
    assert "MISSED  servers that exited or did not stop cleanly: 1 (target <= 0)" in text
    assert http_load.exit_status(found, check_targets=False) == 1


def test_summary_medians_and_cpu() -> None:
    runs = [_run("4M/nginx", rate, rep=i) for i, rate in enumerate((300, 100, 200))]
    (s,) = http_load.summarize(runs, {"4M/nginx": "sendfile"}, {"4M": 4 << 20})
    assert s == Summary("4M/nginx", "sendfile", 3, 200, 100, 300, pytest.approx(0.1), 5.0, 0, 0, 4 << 20)


def test_bad_options_are_one_line_and_status_2(tmp_path: pathlib.Path) -> None:
    for args, message in (
        (["--cases", "13K,nope"], "'nope' is no group"),
        (["--duration", "0"], "--duration must be 1 second or more"),
        (["--json", str(tmp_path / "missing" / "r.json")], "--json: the folder"),
    ):
        result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


@needs_wrk
def test_the_wrk_script_counts_every_wrong_body(tmp_path: pathlib.Path) -> None:
    body = http_load.jpeg_of_size(13_000)
    (tmp_path / "right.jpg").write_bytes(body)
    (tmp_path / "wrong.jpg").write_bytes(body[:6000] + bytes([body[6000] ^ 1]) + body[6001:])
    (tmp_path / "short.jpg").write_bytes(body + b"!")
    server = http_load.start_python_server("13K/trio-h11", str(tmp_path), str(tmp_path / "right.jpg"))
    try:
        figures = {
            name: http_load.run_wrk(server.port, http_load.IMAGE_PATH, 1,
                                    http_load.write_wrk_script(str(tmp_path), str(tmp_path / f"{name}.jpg")))
            for name in ("right", "wrong", "short")
        }
        missing = http_load.run_wrk(server.port, "/nothing", 1,
                                    http_load.write_wrk_script(str(tmp_path), str(tmp_path / "right.jpg")))
    finally:
        assert server.stop() == 0
    right, wrong, short = figures["right"], figures["wrong"], figures["short"]
    assert right["requests"] > 0 and right["checked"] == right["requests"]
    assert (right["corrupt"], right["short"], right["bad_status"]) == (0, 0, 0)
    assert wrong["corrupt"] == wrong["checked"] > 0
    assert short["short"] == short["checked"] > 0
    assert missing["bad_status"] == missing["checked"] > 0


@needs_wrk
def test_the_whole_run_with_wrk(tmp_path: pathlib.Path) -> None:
    cases = "13K/trio_zc-auto,13K/trio-h11" + (",13K/nginx" if shutil.which("nginx") else "")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--duration", "1", "--repeat", "1", "--cases", cases, "--no-install",
         "--json", str(tmp_path / "r.json"), "--chart", str(tmp_path / "c.svg")],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "targets (ratios of medians from this run):" in result.stdout
    assert "13K cached: trio_zc-auto / trio-h11" in result.stdout
    assert "met     corrupt, short or non-200 responses: 0" in result.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert {s["case"] for s in saved["summaries"]} == set(cases.split(","))
    assert all(r["requests"] > 0 and r["corrupt"] == 0 for r in saved["runs"])
