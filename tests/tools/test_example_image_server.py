"""examples/image_server.py survives its clients, as a real process on loopback.

The server runs as the recipe says (``python examples/image_server.py
--port 0``). Clients disconnect at every point of an exchange (mid-header,
right after the request, part-way through the body; with a FIN or with an
SO_LINGER-0 reset), send bytes h11 rejects, or stop reading; after each, a
normal client gets every byte of a page and of images right (compared with
Pillow's own encoding of the same image). A load client in Python behaves
like wrk -- many keep-alive connections hammering, then dropped mid-response
-- and, when ``wrk`` is installed, so does wrk itself. At the end the server
stops on SIGINT, cleanly, having counted the clients that left.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import importlib.util
import io
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import h11
import pytest
import trio

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "image_server.py"
SEND_TIMEOUT = 1.0
#: Bounds every blocking socket operation of the tests.
TIMEOUT = 20.0


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_server_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


example = load_example()


def expected_jpeg(n: int) -> bytes:
    """The bytes the server must send for /image/<n>.jpg: Pillow's encoding of the same image."""
    out = io.BytesIO()
    example.render(n).save(out, "JPEG", quality=85)
    return out.getvalue()


EXPECTED = {n: expected_jpeg(n) for n in range(example.IMAGES)}
DIGESTS = {n: hashlib.sha256(data).digest() for n, data in EXPECTED.items()}


class Server:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        #: Whether a test made clients leave (the server must then have counted some).
        self.leavers = False

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    process = subprocess.Popen(
        [sys.executable, "-W", "error", str(EXAMPLE), "--port", "0", "--send-timeout", str(SEND_TIMEOUT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running: Server | None = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the server prints its address once it listens
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match is not None, line + process.stderr.read() if process.stderr else line
        running = Server(process, int(match[1]))
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # the process this fixture started
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hang: fail loudly
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"the server did not stop on SIGINT: {out}{err}") from None
    # Stopped by Ctrl-C, as a user would: cleanly, having counted the clients that left.
    assert process.returncode == 0, out + err
    assert err == "", err
    counted = re.search(r"(\d+) connections ended by their client", out)
    assert counted is not None, out
    if running is not None and running.leavers:
        assert int(counted[1]) > 0, out


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def leave(sock: socket.socket, how: str) -> None:
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def request(target: str, *, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def receive_at_least(sock: socket.socket, nbytes: int) -> bytes:
    data = b""
    while len(data) < nbytes:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def normal_client_gets_every_byte(server: Server) -> None:
    """A keep-alive client (the standard library's, not h11) checks a page and three images byte for byte."""
    assert server.alive(), "the server exited"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/")
        with conn.getresponse() as response:
            assert response.status == 200
            assert response.read() == example.index_page()
        for n in (0, 3, 7):
            conn.request("GET", f"/image/{n}.jpg")
            with conn.getresponse() as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "image/jpeg"
                assert response.read() == EXPECTED[n]
    finally:
        conn.close()


# -- clients that leave ---------------------------------------------------------------

LEAVE_POINTS = ["mid-header", "after the request", "after part of the body", "after the head"]


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("point", LEAVE_POINTS)
def test_a_client_that_leaves_ends_only_its_connection(server: Server, point: str, how: str) -> None:
    server.leavers = True
    for _ in range(3):
        sock = connect(server.port, rcvbuf=8192)
        if point == "mid-header":
            sock.sendall(b"GET /image/7.jpg HTTP/1.1\r\nHo")
        else:
            sock.sendall(request("/image/7.jpg"))
            if point == "after part of the body":
                assert len(receive_at_least(sock, 3000)) >= 3000  # the tester's exact case
            elif point == "after the head":
                assert b"\r\n\r\n" in receive_at_least(sock, 100)
        leave(sock, how)
    normal_client_gets_every_byte(server)


def test_the_testers_case_many_times_over(server: Server) -> None:
    """GET /image/7.jpg, read 3,000 bytes, close: 50 times, 10 at once, then a normal client."""
    server.leavers = True
    for _ in range(5):
        socks = [connect(server.port, rcvbuf=8192) for _ in range(10)]
        for sock in socks:
            sock.sendall(request("/image/7.jpg"))
        for i, sock in enumerate(socks):
            receive_at_least(sock, 3000)
            leave(sock, "reset" if i % 2 else "close")
    normal_client_gets_every_byte(server)


# -- clients that send garbage ----------------------------------------------------------

GARBAGE = {
    "binary": b"\x00\x01\x02\xff\xfe garbage \r\n\r\n",
    "bad request line": b"GET\r\n\r\n",
    "bad header": b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    "negative length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "two lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "huge header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 70000 + b"\r\n\r\n",
    "bad protocol": b"GET / HTTQ/1.1\r\nHost: x\r\n\r\n",
    "garbage after a request": request("/image/1.jpg") + b"\x16\x03\x01 not http at all\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_gets_400_or_a_close_and_the_server_goes_on(server: Server, kind: str) -> None:
    sock = connect(server.port)
    with sock:
        try:
            sock.sendall(GARBAGE[kind])
            sock.shutdown(socket.SHUT_WR)
            answer = receive_at_least(sock, 1 << 30)  # until the server closes
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # the server closed with our garbage unread: also fine
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
            answer = b""  # reset already, before our shutdown: the same
    if kind == "garbage after a request":
        # The good request is answered in full first.
        assert answer.startswith(b"HTTP/1.1 200 ")
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert rest[: len(EXPECTED[1])] == EXPECTED[1]
        answer = rest[len(EXPECTED[1]) :]
    if answer:
        assert re.match(rb"HTTP/1\.1 4\d\d ", answer), answer[:200]
    normal_client_gets_every_byte(server)


# -- clients that stop reading ------------------------------------------------------------


def tcp_state(sock: socket.socket) -> int:
    """The connection's TCP state (the first byte of TCP_INFO; 7 is TCP_CLOSE)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


TCP_CLOSE = 7
PIPELINED = 1000  # more answers than loopback's socket buffers hold (about 13 MB)


def test_a_client_that_stops_reading_is_cut_off_and_others_are_served(server: Server) -> None:
    server.leavers = True
    stalled = []
    for _ in range(5):
        sock = connect(server.port, rcvbuf=4096)
        # Pipelined requests it never reads the answers to: the server's sends block.
        sock.sendall(request("/image/7.jpg") * PIPELINED)
        stalled.append(sock)
    normal_client_gets_every_byte(server)
    # send_timeout cuts each stalled connection off with a reset.
    deadline = time.monotonic() + TIMEOUT
    while any(tcp_state(sock) != TCP_CLOSE for sock in stalled):
        assert time.monotonic() < deadline, "a stalled client was never cut off"
        time.sleep(0.05)
    for sock in stalled:
        received = 0
        with sock:
            try:
                while chunk := sock.recv(65536):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        assert received < PIPELINED * len(EXPECTED[7])
    normal_client_gets_every_byte(server)


# -- load, like wrk -----------------------------------------------------------------------


class LoadResult:
    def __init__(self) -> None:
        self.responses = 0
        self.bad: list[str] = []
        self.dropped_mid_response = 0


async def load_connection(port: int, duration: float, result: LoadResult, index: int) -> None:
    """One wrk-like connection: keep-alive GETs as fast as answers come, every body checked
    against its SHA-256; at the end, a last request whose answer it drops half-read."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    sock = stream.socket
    conn = h11.Connection(h11.CLIENT)
    deadline = trio.current_time() + duration
    n = index % example.IMAGES
    try:
        while trio.current_time() < deadline:
            n = (n + 1) % example.IMAGES
            target = f"/image/{n}.jpg" if n % 4 else "/"
            await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=[("Host", "x")])))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            body = bytearray()
            status = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected {event!r}")
            ok = status == 200 and (
                hashlib.sha256(body).digest() == DIGESTS[n] if n % 4 else bytes(body) == example.index_page()
            )
            if not ok:
                result.bad.append(f"{target}: {status}, {len(body)} bytes")
            result.responses += 1
            conn.start_next_cycle()
        # The end of the run: a request, part of its answer, and gone (as wrk leaves).
        await stream.send_all(request(f"/image/{n}.jpg"))
        await stream.receive_some(1000)
        if index % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        result.dropped_mid_response += 1
    finally:
        await trio.aclose_forcefully(stream)


async def run_load(port: int, connections: int, duration: float) -> LoadResult:
    result = LoadResult()
    with trio.fail_after(duration + 60):
        async with trio.open_nursery() as nursery:
            for index in range(connections):
                nursery.start_soon(load_connection, port, duration, result, index)
    return result


def test_a_load_client_like_wrk_then_dropping_every_connection(server: Server) -> None:
    server.leavers = True
    for _ in range(2):  # twice: the first run's abrupt end must not have hurt the server
        started = time.monotonic()
        result = trio.run(run_load, server.port, 32, 3.0)
        elapsed = time.monotonic() - started
        print(f"python load client: {result.responses} responses in {elapsed:.1f} s over 32 connections")
        assert result.bad == []
        assert result.responses >= 32  # every connection got answers: nobody was refused
        assert result.dropped_mid_response == 32
        normal_client_gets_every_byte(server)


def test_real_wrk_against_the_example_server(server: Server) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (Debian: apt-get install wrk); the Python load client above covers this")
    for target in ("/image/3.jpg", "/"):
        result = subprocess.run(
            [wrk, "-t2", "-c50", "-d3s", "--timeout", "10s", f"http://127.0.0.1:{server.port}{target}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(result.stdout)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Non-2xx or 3xx responses" not in result.stdout, result.stdout
        requests = re.search(r"(\d+) requests in", result.stdout)
        assert requests is not None and int(requests[1]) > 0, result.stdout
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", result.stdout)
        # No refused connection, no request left unanswered (read errors count
        # the connections wrk itself dropped at the end, which is the point).
        assert errors is None or (int(errors[1]) == 0 and int(errors[4]) == 0), result.stdout
        normal_client_gets_every_byte(server)


def test_the_server_is_alive_after_everything(server: Server) -> None:
    normal_client_gets_every_byte(server)
    assert server.alive()
    os.kill(server.process.pid, 0)  # still there (the fixture stops it and checks its report)
