"""The servers of examples/ (other than the HTTP one) survive their clients.

Each example's own handler is served (as the example serves it) on loopback
and met by clients that leave mid-header and mid-body (FIN, and SO_LINGER-0
resets), send garbage, or stop reading; after each, a normal client gets
every byte right and the server is still up. (examples/image_server.py has
its own file; examples/broadcast.py's clients that leave are run in
test_examples.py; examples/tight_loop.py serves no clients.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import pathlib
import socket
import struct
import sys
from collections.abc import Callable
from functools import partial
from types import ModuleType

import numpy as np
import pytest
import trio

import trio_zc

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


send_images = load_example("send_images")
slow_clients = load_example("slow_clients")
reuseport = load_example("reuseport")


async def connect(port: int, rcvbuf: int | None = None) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return sock


def leave(sock: trio.socket.SocketType, how: str) -> None:
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def receive(sock: trio.socket.SocketType, nbytes: int) -> bytes:
    data = bytearray()
    while len(data) < nbytes:
        chunk = await sock.recv(min(nbytes - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(30):  # generous; the condition is what is checked
        while not condition():
            await trio.sleep(0.01)


# -- examples/send_images.py: the receiving server ------------------------------------


def one_image(index: int = 1) -> tuple[bytes, bytes]:
    """A header and body as the example's sender makes them."""
    height, width = send_images.SIZES[index % len(send_images.SIZES)]
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    send_images.draw(pixels, index)
    body = pixels.tobytes()
    return send_images.HEADER.pack(len(body), height, width, hashlib.sha256(body).digest()), body


SENDER_MISDEEDS = {
    "mid-header": lambda header, body: header[:10],
    "mid-body": lambda header, body: header + body[: len(body) // 3],
    "garbage header": lambda header, body: b"\xff" * send_images.HEADER.size + body[:1000],
    "lying header": lambda header, body: send_images.HEADER.pack(2**40, 1 << 20, 1 << 20, b"x" * 32),
    "shape mismatch": lambda header, body: send_images.HEADER.pack(12, 3, 3, b"x" * 32) + b"y" * 12,
}


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_send_images_receiver_survives_senders_that_misbehave(how: str) -> None:
    verified: list[bool] = []
    done = trio.Event()
    header, body = one_image()
    async with trio_zc.open_pool(max_bytes=32 << 20) as pool:
        async with trio.open_nursery() as nursery:
            handler = partial(send_images.receiver, verified=verified, done=done)
            listeners = await nursery.start(partial(trio_zc.serve_tcp, handler, 0, pool=pool, host="127.0.0.1"))
            port = listeners[0].listener.socket.getsockname()[1]
            for misdeed in SENDER_MISDEEDS.values():
                sock = await connect(port)
                await sock.send(misdeed(header, body))
                await trio.sleep(0.01)
                leave(sock, how)
            # A normal sender: its image arrives intact, and the receiver sees a clean end.
            stream = await trio_zc.open_tcp_stream("127.0.0.1", port, pool=pool)
            async with stream:
                await stream.send_all(header + body)
            with trio.fail_after(30):
                await done.wait()
            nursery.cancel_scope.cancel()
    assert verified == [True]


# -- examples/slow_clients.py: its handler under trio_zc.serve_listeners --------------


async def slow_clients_reader(port: int) -> int:
    """The example's own reader: checks the SHA-256 of every image; returns how many were intact."""
    verified: list[int] = []
    await slow_clients.reader(port, verified)
    return len(verified)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_slow_clients_server_survives_clients_that_leave_or_stall(how: str) -> None:
    results = {"served": 0, "cut off": 0, "went away": 0}
    async with trio_zc.open_pool(max_bytes=16 << 20, send_timeout=0.5, drain_timeout=1.0) as pool:
        async with trio.open_nursery() as nursery:
            listeners = await trio_zc.open_tcp_listeners(0, pool=pool, host="127.0.0.1")
            port = listeners[0].listener.socket.getsockname()[1]
            nursery.start_soon(trio_zc.serve_listeners, lambda s: slow_clients.handle(s, results), listeners)
            for point in (0, 1000, slow_clients.IMAGE_BYTES + 5):
                sock = await connect(port, rcvbuf=4096)
                if point:
                    await receive(sock, point)
                await sock.send(b"garbage the server never reads")
                leave(sock, how)
            stalled = await connect(port, rcvbuf=4096)  # never reads: send_timeout cuts it off
            await wait_for(lambda: sum(results.values()) == 4)
            assert await slow_clients_reader(port) == slow_clients.IMAGES_PER_CLIENT
            stalled.close()
            nursery.cancel_scope.cancel()
    assert results["served"] == 1 and results["cut off"] >= 1


# -- examples/reuseport.py: a worker's server -------------------------------------------


async def test_reuseport_worker_survives_clients_that_leave_garbage_or_stall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reuseport, "SEND_TIMEOUT", 0.5)
    with socket.socket() as probe:  # a free port for the worker to bind with SO_REUSEPORT
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = multiprocessing.get_context("spawn").Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reuseport.worker_main, port, ready)
        await wait_for(ready.is_set)
        image_bytes = 512 * 1024
        for how in ("close", "reset"):
            for point in (0, 100, reuseport.HEADER.size + image_bytes // 2):
                sock = await connect(port, rcvbuf=4096)
                if point:
                    await receive(sock, point)
                await sock.send(b"GET / HTTP/1.1\r\n\r\n garbage")
                leave(sock, how)
        stalled = [await connect(port, rcvbuf=4096) for _ in range(3)]  # never read
        for _ in range(3):
            ok, pid = await reuseport.fetch(port)
            assert ok
        await trio.sleep(1.0)  # past SEND_TIMEOUT: the stalled ones are cut off, the worker is fine
        for sock in stalled:
            sock.close()
        ok, _ = await reuseport.fetch(port)
        assert ok
        nursery.cancel_scope.cancel()

