"""HTTP load: trio_zc.http against a plain Trio + h11 server and nginx, driven by wrk.

One run compares, on loopback with ``wrk -t1 -c50 -d<duration>s``:

- ``trio_zc-<kernel>``: :mod:`trio_zc.http` serving a sealed lease held in a
  :class:`trio_zc.LeaseCache`, on each kernel (copy, msg_zerocopy, io_uring,
  sendfile) and on ``auto``, with the default policy;
- ``trio-h11``: a plain Trio + h11 server, the body held in memory as
  :class:`bytes`, keep-alive, one ``send_all`` per h11 event as h11's
  documentation shows (the head, then the body);
- ``trio-h11-joined`` (13K only): the same, with head and body joined into
  one ``send_all`` (one system call, as trio_zc does);
- ``trio_zc-auto-pure-h11`` (13K only): ``trio_zc-auto`` with the pure-Python
  h11 (``TRIO_ZC_PURE_H11=1``), the parser the plain servers use: what the
  compiled h11 (h11-mypyc, installed by the ``http`` extra) is worth;
- ``nginx``: nginx with one process (``master_process off``, ``daemon off``),
  ``sendfile on``, ``access_log off``, serving the same bytes from a tmpfs;

at three sizes of a cached JPEG (``13K``, ``512K``, ``4M``), and, in the
group ``render``, a 13 KB JPEG thumbnail rendered per request (a
1024x768 picture held in memory, resized and JPEG-encoded; no cache):

- ``trio_zc-threads``: trio_zc.http, Pillow in worker threads
  (``trio.to_thread``, two at a time: one per core), the JPEG copied into a
  lease;
- ``trio_zc-workers``: trio_zc.http, resize and encode in two worker
  processes (:func:`trio_zc.images.open_workers`), results in leases;
- ``trio-pillow``: the plain Trio + h11 server rendering in its event loop.

Each server is its own process; its CPU time (user + system, with its
threads and child processes, from ``/proc``) is read before and after every
wrk run. Every case runs ``--repeat`` times, the cases of a group in a
rotated order each time. Every response is checked by a wrk Lua script:
its status (200) and its whole body, compared byte for byte with the
expected bytes (a Lua string comparison); a Python client (the standard
library's http.client) fetches and compares bodies before and after a
group's runs. The report is a table of medians and ranges and the targets
of issue 20 as ratios of medians from this run, each ``met`` or ``MISSED``
(on unrounded figures). Needs wrk and nginx: when missing they are installed
with ``apt-get install -y wrk nginx`` (``--no-install`` refuses instead).

Exit status: 0; 1 if a body was wrong or short, a response was not a 200, or
a server exited; 2 for a bad option or a missing tool; 3 if a target was
missed (with ``--check-targets``).

Run: python benchmarks/http_load.py [--duration 10] [--repeat 3] [--cases 13K,render]
[--json out.json] [--chart out.svg]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any
from xml.sax.saxutils import escape

import attrs

if not __package__:
    # Run as a file: its siblings are imported as the package ``benchmarks``.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.goals import figure

#: Cached image sizes, by group name.
SIZES: dict[str, int] = {"13K": 13_000, "512K": 512 << 10, "4M": 4 << 20}
RENDER = "render"
GROUPS = (*SIZES, RENDER)
KERNELS = ("copy", "msg_zerocopy", "io_uring", "sendfile", "auto")
PURE_H11 = "trio_zc-auto-pure-h11"
CACHED_SERVERS = (*(f"trio_zc-{k}" for k in KERNELS), PURE_H11, "trio-h11", "trio-h11-joined", "nginx")
#: Servers that only the smallest size has: the parser and joining head and
#: body matter for small bodies only.
SMALL_ONLY = (PURE_H11, "trio-h11-joined")
RENDER_SERVERS = ("trio_zc-threads", "trio_zc-workers", "trio-pillow")

IMAGE_PATH = "/image.jpg"
RENDER_PATH = "/render.jpg"
#: The picture rendered from, and the thumbnail made of it per request (about 13 KB as JPEG).
SOURCE_SIZE = (1024, 768)
THUMB_SIZE = (240, 180)
QUALITY = 85
POOL_BYTES = 64 << 20
CONNECTIONS = 50
#: How long a server may take to start, stop, or answer the check client.
STARTUP_TIMEOUT = 60.0


def case_name(group: str, server: str) -> str:
    return f"{group}/{server}"


def all_cases() -> list[str]:
    cached = [case_name(g, s) for g in SIZES for s in CACHED_SERVERS if g == "13K" or s not in SMALL_ONLY]
    return cached + [case_name(RENDER, s) for s in RENDER_SERVERS]


def select_cases(spec: str) -> list[str]:
    """The cases *spec* names, in the canonical order: comma-separated groups, servers or group/server.

    Raises :exc:`ValueError` naming what matches nothing.
    """
    everything = all_cases()
    chosen: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        matched = {c for c in everything if item in (c, c.split("/")[0], c.split("/")[1])}
        if not matched:
            raise ValueError(
                f"--cases: {item!r} is no group ({', '.join(GROUPS)}), server"
                f" ({', '.join((*CACHED_SERVERS, *RENDER_SERVERS))}) or group/server"
            )
        chosen |= matched
    if not chosen:
        raise ValueError("--cases names no case")
    return [c for c in everything if c in chosen]


# -- the bytes served -------------------------------------------------------------------------


def jpeg_of_size(size: int) -> bytes:
    """A real JPEG (a noisy gradient) of exactly *size* bytes: the largest one that fits, padded after its end.

    Decoders stop at the end-of-image marker, so the zero padding is part of
    the file but not of the picture.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(size)

    def encode(side: int) -> bytes:
        y, x = np.ogrid[:side, :side]
        pixels = np.empty((side, side, 3), dtype=np.int32)
        pixels[..., 0] = x * 255 // max(side - 1, 1)
        pixels[..., 1] = y * 255 // max(side - 1, 1)
        pixels[..., 2] = 128
        pixels += rng.integers(-40, 41, size=(side, side, 3))
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(out, "JPEG", quality=90)
        return out.getvalue()

    lo, hi = 8, 8
    while len(encode(hi)) <= size:
        lo, hi = hi, hi * 2
    best = encode(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        data = encode(mid)
        if len(data) <= size:
            lo, best = mid, data
        else:
            hi = mid
    return best + bytes(size - len(best))


def source_picture() -> Any:
    """The picture the render cases resize: gradients, a checkerboard and noise (a PIL RGB image)."""
    import numpy as np
    from PIL import Image

    width, height = SOURCE_SIZE
    rng = np.random.default_rng(20)
    y, x = np.ogrid[:height, :width]
    pixels = np.empty((height, width, 3), dtype=np.int32)
    pixels[..., 0] = x * 255 // (width - 1)
    pixels[..., 1] = y * 255 // (height - 1)
    pixels[..., 2] = ((x // 32 + y // 32) % 2) * 160 + 40
    pixels += rng.integers(-24, 25, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def render_thumbnail(source: Any) -> bytes:
    """The per-request work: *source* resized to THUMB_SIZE (bicubic) and JPEG-encoded."""
    from PIL import Image

    out = io.BytesIO()
    source.resize(THUMB_SIZE, Image.Resampling.BICUBIC).save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


# -- the Python servers (each run as its own process: ``http_load.py serve ...``) ------------


async def _until_signalled(start: Callable[..., Awaitable[Any]], describe: Callable[[], dict[str, Any]]) -> None:
    """Start a server with ``nursery.start(start)``, print its port and pid, serve until SIGTERM or SIGINT."""
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(start)
            port = listeners[0].socket.getsockname()[1] if hasattr(listeners[0], "socket") else (
                listeners[0].listener.socket.getsockname()[1]
            )
            print(json.dumps({"port": port, "pid": os.getpid(), **describe()}), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def serve_trio_zc(kernel: str, body: bytes | None) -> None:
    """trio_zc.http on *kernel*: *body* from a LeaseCache, or (None) a thumbnail rendered per request.

    *kernel* is a kernel name for the cached image, or ``threads`` /
    ``workers`` for the rendered one (on the default kernel).
    """
    import trio

    import trio_zc
    import trio_zc.http

    not_found = trio_zc.http.Response(b"not found\n", status=404, content_type="text/plain")
    pool_kernel = "auto" if body is None else kernel
    async with trio_zc.open_pool(max_bytes=POOL_BYTES, kernel=pool_kernel) as pool:
        # Which h11 build trio_zc.http imported (the compiled one unless TRIO_ZC_PURE_H11 is set).
        parser = "h11_mypyc" if "h11_mypyc" in sys.modules else "h11"
        stats: dict[str, Any] = {"kernel": pool.statistics().kernel, "parser": parser}
        if body is not None:
            cached = body
            with trio_zc.LeaseCache[str](pool, max_bytes=len(body) + (1 << 20)) as cache:

                async def render() -> trio_zc.SealedLease:
                    lease = await pool.acquire(len(cached))
                    lease.write(cached)
                    return lease.seal()

                async def cached_handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
                    if request.path != IMAGE_PATH:
                        return not_found
                    return trio_zc.http.Response(await cache.get(IMAGE_PATH, render), content_type="image/jpeg")

                server = trio_zc.http.HTTPServer(cached_handler)
                await _until_signalled(partial(trio_zc.http.serve, pool, server, port=0, host="127.0.0.1"),
                                       lambda: stats)
        elif kernel == "threads":
            source = source_picture()
            # One thread per core: Pillow lets go of the GIL while it resizes and encodes.
            limiter = trio.CapacityLimiter(len(os.sched_getaffinity(0)))

            async def thread_handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
                if request.path != RENDER_PATH:
                    return not_found
                data = await trio.to_thread.run_sync(render_thumbnail, source, limiter=limiter)
                # images.encode runs Pillow in the calling task (the event loop), so the
                # thread encodes into bytes and the 13 KB are copied into a lease.
                lease = await pool.acquire(len(data))
                try:
                    lease.write(data)
                    sealed = lease.seal()
                except BaseException:
                    lease.release()
                    raise
                return trio_zc.http.Response(sealed, content_type="image/jpeg")

            server = trio_zc.http.HTTPServer(thread_handler)
            await _until_signalled(partial(trio_zc.http.serve, pool, server, port=0, host="127.0.0.1"),
                                   lambda: stats)
        elif kernel == "workers":
            from PIL import Image

            from trio_zc import images

            source = source_picture()
            async with images.open_workers(pool, processes=len(os.sched_getaffinity(0))) as workers:
                # RGBX, as Pillow holds RGB in memory: the worker maps it as it is, with no
                # unpacking per request (the thumbnail's JPEG is the same bytes as from RGB).
                pixels = source.convert("RGBX").tobytes()
                lease = await pool.acquire(len(pixels))
                lease.write(pixels)
                raw = images.RawImage(lease.seal(), "RGBX", source.size)

                async def worker_handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
                    if request.path != RENDER_PATH:
                        return not_found
                    small = await workers.resize(raw, THUMB_SIZE, Image.Resampling.BICUBIC)
                    try:
                        sealed = await workers.encode(small, "JPEG", quality=QUALITY)
                    finally:
                        small.lease.release()
                    return trio_zc.http.Response(sealed, content_type="image/jpeg")

                server = trio_zc.http.HTTPServer(worker_handler)
                try:
                    await _until_signalled(partial(trio_zc.http.serve, pool, server, port=0, host="127.0.0.1"),
                                           lambda: stats)
                finally:
                    raw.lease.release()
        else:
            raise ValueError(f"unknown render mode {kernel!r}")
        sent = pool.statistics().sent
    s = server.statistics()
    print(json.dumps({
        "responses": s.responses, "connections": s.connections, "handler_errors": s.handler_errors,
        "zerocopy_calls": sent.zerocopy_calls, "bytes_zerocopy": sent.bytes_zerocopy,
        "bytes_kernel_copied": sent.bytes_kernel_copied, "bytes_copied": sent.bytes_copied,
    }), flush=True)


async def serve_plain(body: bytes | None, join: bool = False) -> None:
    """A plain Trio + h11 server: *body* (bytes in memory), or a thumbnail rendered in the event loop (None).

    One ``send_all`` per h11 event (head, then body), or with *join* one
    ``send_all`` of head and body together.
    """
    import h11
    import trio

    if body is None:
        source = source_picture()
        path = RENDER_PATH

        def respond() -> bytes:
            return render_thumbnail(source)
    else:
        cached = body
        path = IMAGE_PATH

        def respond() -> bytes:
            return cached

    counts = {"responses": 0, "connections": 0, "connection_errors": 0}

    async def connection(stream: trio.SocketStream) -> None:
        counts["connections"] += 1
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        if event.target.decode("ascii", "replace") == path and event.method in (b"GET", b"HEAD"):
                            status, data, kind = 200, respond(), "image/jpeg"
                        else:
                            status, data, kind = 404, b"not found\n", "text/plain"
                        head = conn.send(h11.Response(
                            status_code=status, headers=[("Content-Type", kind), ("Content-Length", str(len(data)))]
                        ))
                        if event.method == b"HEAD":
                            data = b""
                        else:
                            data = conn.send(h11.Data(data=data))
                        conn.send(h11.EndOfMessage())
                        if join:
                            await stream.send_all(head + data)
                        else:
                            await stream.send_all(head)
                            if data:
                                await stream.send_all(data)
                        counts["responses"] += 1
                    elif isinstance(event, h11.EndOfMessage):
                        if conn.our_state is h11.MUST_CLOSE:
                            return
                        conn.start_next_cycle()
                    elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            # The client misbehaved or left: its connection ends, the server goes on.
            counts["connection_errors"] += 1

    await _until_signalled(partial(trio.serve_tcp, connection, 0, host="127.0.0.1"), lambda: {"kernel": "-"})
    print(json.dumps(counts), flush=True)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def serve_main(argv: Sequence[str]) -> int:
    """``serve trio_zc KERNEL|threads|workers [BODYFILE]`` or ``serve plain|plain-joined [BODYFILE]``."""
    import trio

    kind, rest = argv[0], list(argv[1:])
    if kind == "trio_zc":
        mode = rest.pop(0)
        trio.run(serve_trio_zc, mode, _read(rest[0]) if rest else None)
    elif kind in ("plain", "plain-joined"):
        trio.run(serve_plain, _read(rest[0]) if rest else None, kind == "plain-joined")
    else:
        raise SystemExit(f"unknown server {kind!r}")
    return 0


# -- starting, measuring and stopping servers -------------------------------------------------


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid*, its threads and its live descendants (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        # utime, stime, and the times of its children it has waited for.
        cpu[int(entry)] = sum(int(v) for v in fields[11:15]) / ticks
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == p)
    return total


@attrs.define
class Server:
    """A server process of one case: its port, pid, and what it said when it started."""

    case: str
    process: subprocess.Popen[str]
    port: int
    pid: int
    kernel: str
    log: str
    #: What the server printed when it stopped (its counts), once stopped.
    final: dict[str, Any] = attrs.Factory(dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; its exit status (0: stopped cleanly)."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
                return -signal.SIGKILL
            finally:
                if self.process.stdout is not None:
                    for line in self.process.stdout.read().splitlines():
                        try:
                            self.final = json.loads(line)
                        except ValueError:
                            pass
                    self.process.stdout.close()
        return self.process.returncode

    def log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-15:])
        except OSError:
            return ""


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


def start_python_server(case: str, workdir: str, body_file: str | None) -> Server:
    """Start the Python server of *case* (``group/server``) as a child process of this one."""
    group, name = case.split("/")
    script = os.path.abspath(__file__)
    env = dict(os.environ)
    env.pop("TRIO_ZC_PURE_H11", None)
    if name == PURE_H11:
        args = ["trio_zc", "auto"]
        env["TRIO_ZC_PURE_H11"] = "1"
    elif name.startswith("trio_zc-"):
        args = ["trio_zc", name.removeprefix("trio_zc-")]
    elif name in ("trio-h11", "trio-pillow"):
        args = ["plain"]
    elif name == "trio-h11-joined":
        args = ["plain-joined"]
    else:
        raise ValueError(f"{case} is not a Python server")
    if group != RENDER:
        assert body_file is not None
        args.append(body_file)
    log = os.path.join(workdir, case.replace("/", "_") + ".log")
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, script, "serve", *args], stdout=subprocess.PIPE,
                                   stderr=err, text=True, env=env)
    line = _read_line(process, STARTUP_TIMEOUT)
    if not line:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        with open(log) as f:
            raise RuntimeError(f"{case}: the server did not start:\n{f.read()[-2000:]}")
    started = json.loads(line)
    return Server(case, process, int(started["port"]), int(started["pid"]), str(started["kernel"]), log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ image/jpeg jpg; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def start_nginx(case: str, workdir: str, root: str) -> Server:
    """nginx, one process, serving *root* on a free loopback port; waits until it accepts connections."""
    conf_dir = tempfile.mkdtemp(prefix="nginx-", dir=workdir)
    port = free_port()
    conf = os.path.join(conf_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=conf_dir, port=port, root=root))
    log = os.path.join(conf_dir, "error.log")
    with open(os.path.join(conf_dir, "stderr.log"), "w") as err:
        process = subprocess.Popen(["nginx", "-p", conf_dir, "-e", log, "-c", conf], stdout=subprocess.DEVNULL,
                                   stderr=err, text=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                process.wait()
                with open(os.path.join(conf_dir, "stderr.log")) as f:
                    raise RuntimeError(f"{case}: nginx did not start: {f.read()[-2000:]}") from None
            time.sleep(0.05)
    return Server(case, process, port, process.pid, "sendfile", log)


def check_bodies(port: int, path: str, expected: bytes, requests: int = 3) -> int:
    """Fetch *path* *requests* times over one keep-alive connection (http.client); how many were wrong."""
    bad = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=STARTUP_TIMEOUT)
    try:
        for _ in range(requests):
            conn.request("GET", path)
            with conn.getresponse() as response:
                body = response.read()
                if response.status != 200 or body != expected:
                    bad += 1
    except (OSError, http.client.HTTPException):
        bad += 1
    finally:
        conn.close()
    return bad


# -- wrk --------------------------------------------------------------------------------------

#: Checks every response: its status, its length, and every byte (a Lua string comparison
#: with the expected body, read from a file). ``done`` sums the threads' counts and prints
#: them with wrk's own figures as one JSON line.
WRK_SCRIPT = """\
local f = assert(io.open({path}, "rb"))
local expected = f:read("*a")
f:close()
checked, bad_status, short, corrupt = 0, 0, 0, 0

function response(status, headers, body)
    checked = checked + 1
    if status ~= 200 then
        bad_status = bad_status + 1
    elseif #body ~= #expected then
        short = short + 1
    elseif body ~= expected then
        corrupt = corrupt + 1
    end
end

local threads = {{}}
function setup(thread)
    table.insert(threads, thread)
end

function done(summary, latency, requests)
    local c, s, l, b = 0, 0, 0, 0
    for _, t in ipairs(threads) do
        c = c + t:get("checked")
        s = s + t:get("bad_status")
        l = l + t:get("short")
        b = b + t:get("corrupt")
    end
    local e = summary.errors
    io.write(string.format(
        'WRKJSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d,'
        .. ' "status": %d, "timeout": %d, "checked": %d, "bad_status": %d, "short": %d, "corrupt": %d,'
        .. ' "p50_us": %d, "p99_us": %d}}\\n',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
        c, s, l, b, latency:percentile(50), latency:percentile(99)))
end
"""


def write_wrk_script(directory: str, expected_file: str) -> str:
    path = os.path.join(directory, os.path.basename(expected_file) + ".lua")
    with open(path, "w") as f:
        f.write(WRK_SCRIPT.format(path=json.dumps(expected_file)))
    return path


def run_wrk(port: int, path: str, duration: int, script: str) -> dict[str, int]:
    """``wrk -t1 -c50 -d<duration>s`` with *script*; its JSON line as a dict."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--timeout", "10s", "-s", script,
               f"http://127.0.0.1:{port}{path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            figures: dict[str, int] = json.loads(line.removeprefix("WRKJSON "))
            return figures
    raise RuntimeError(f"wrk printed no figures (status {result.returncode}):\n{result.stdout}\n{result.stderr}")


# -- results ----------------------------------------------------------------------------------


@attrs.frozen
class Run:
    """One wrk run against one server."""

    case: str
    repetition: int
    requests: int
    seconds: float
    cpu_seconds: float
    #: wrk's socket errors (connect, read, write, timeout).
    socket_errors: int
    #: Responses that were not a 200.
    bad_status: int
    #: 200s whose body had the wrong length / the right length but wrong bytes.
    short: int
    corrupt: int
    #: Responses wrk counted that the script did not check (should be 0).
    unchecked: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def bad(self) -> int:
        return self.bad_status + self.short + self.corrupt + self.unchecked

    @classmethod
    def from_wrk(cls, case: str, repetition: int, figures: Mapping[str, int], cpu_seconds: float) -> Run:
        return cls(
            case, repetition, figures["requests"], figures["duration_us"] / 1e6, cpu_seconds,
            figures["connect"] + figures["read"] + figures["write"] + figures["timeout"],
            figures["bad_status"], figures["short"], figures["corrupt"],
            max(figures["requests"] - figures["checked"], 0), figures["p50_us"] / 1000, figures["p99_us"] / 1000,
        )


@attrs.frozen
class Summary:
    """The runs of one case: medians and ranges."""

    case: str
    kernel: str
    runs: int
    median_rps: float
    min_rps: float
    max_rps: float
    #: Median of the runs' server CPU milliseconds per request.
    cpu_ms_per_request: float
    p99_ms: float
    socket_errors: int
    bad: int
    body_bytes: int

    @property
    def mb_per_s(self) -> float:
        return self.median_rps * self.body_bytes / 1e6


def summarize(runs: Sequence[Run], kernels: Mapping[str, str], body_sizes: Mapping[str, int]) -> list[Summary]:
    """One Summary per case, in the order the cases first appear in *runs*."""
    by: dict[str, list[Run]] = {}
    for run in runs:
        by.setdefault(run.case, []).append(run)
    out = []
    for case, group in by.items():
        rates = [r.rps for r in group]
        out.append(Summary(
            case, kernels.get(case, "?"), len(group), statistics.median(rates), min(rates), max(rates),
            statistics.median(r.cpu_seconds * 1000 / r.requests if r.requests else float("inf") for r in group),
            statistics.median(r.p99_ms for r in group), sum(r.socket_errors for r in group),
            sum(r.bad for r in group), body_sizes.get(case.split("/")[0], 0),
        ))
    return out


@attrs.frozen
class Target:
    """One target of issue 20 and how this run did against it."""

    name: str
    value: float
    limit: float
    #: True when *value* must be at least *limit*, False when at most.
    at_least: bool
    #: A count (printed as an integer) rather than a ratio.
    count: bool = False

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def describe(self) -> str:
        sign = ">=" if self.at_least else "<="
        if self.count:
            shown, limit = f"{self.value:.0f}", f"{self.limit:.0f}"
        else:
            shown, limit = figure(self.value, self.limit, self.met, self.at_least), f"{self.limit}"
        return f"{'met   ' if self.met else 'MISSED'}  {self.name}: {shown} (target {sign} {limit})"


#: (group, case, baseline, at least): the ratio targets of issue 20.
RATIO_TARGETS = (
    ("13K", "trio_zc-auto", "trio-h11", 2.0),
    ("13K", "trio_zc-auto", "nginx", 0.25),
    ("512K", "trio_zc-auto", "nginx", 1.0),
    ("4M", "trio_zc-auto", "trio-h11", 1.0),
    ("4M", "trio_zc-auto", "nginx", 1.0),
)
RENDER_TARGET = 1.4


def targets(summaries: Sequence[Summary], bad_bodies: int, server_failures: int) -> list[Target]:
    """The targets this run has the cases for, and the two counts that must be zero.

    *bad_bodies* counts every response (wrk's or the check client's) that
    was not a 200 with exactly the expected bytes; *server_failures* the
    servers that exited before they were stopped, or did not stop cleanly.
    The render target takes the faster of trio_zc's two ways (threads,
    worker processes) in this run.
    """
    median = {s.case: s.median_rps for s in summaries}
    out = []
    for group, case, base, limit in RATIO_TARGETS:
        a, b = median.get(case_name(group, case)), median.get(case_name(group, base))
        if a is not None and b:
            out.append(Target(f"{group} cached: {case} / {base}", a / b, limit, True))
    base_rps = median.get(case_name(RENDER, "trio-pillow"))
    mine = [(median[c], c) for c in (case_name(RENDER, "trio_zc-threads"), case_name(RENDER, "trio_zc-workers"))
            if c in median]
    if base_rps and mine:
        best, case = max(mine)
        out.append(Target(f"13K rendered: {case.split('/')[1]} (the faster) / trio-pillow", best / base_rps,
                          RENDER_TARGET, True))
    out.append(Target("corrupt, short or non-200 responses", bad_bodies, 0, False, count=True))
    out.append(Target("servers that exited or did not stop cleanly", server_failures, 0, False, count=True))
    return out


def other_ratios(summaries: Sequence[Summary]) -> list[str]:
    """Ratios that are not targets but say where trio_zc stands: the stricter baseline, each kernel, CPU."""
    by = {s.case: s for s in summaries}
    lines = []

    def ratio(a: str, b: str, what: str = "req/s") -> None:
        x, y = by.get(a), by.get(b)
        if x is None or y is None:
            return
        if what == "req/s" and y.median_rps:
            lines.append(f"{a} / {b.split('/')[1]}: {x.median_rps / y.median_rps:.2f} (req/s)")
        elif what == "cpu" and y.cpu_ms_per_request:
            lines.append(f"{a} / {b.split('/')[1]}: {x.cpu_ms_per_request / y.cpu_ms_per_request:.2f}"
                         " (server CPU per request)")

    ratio("13K/trio_zc-auto", "13K/trio-h11-joined")
    ratio(case_name("13K", PURE_H11), "13K/trio-h11")
    ratio(case_name("13K", PURE_H11), "13K/trio-h11", "cpu")
    for group in SIZES:
        for kernel in KERNELS[:-1]:
            ratio(case_name(group, f"trio_zc-{kernel}"), case_name(group, "nginx"))
        ratio(case_name(group, "trio_zc-auto"), case_name(group, "trio-h11"), "cpu")
        ratio(case_name(group, "trio_zc-auto"), case_name(group, "nginx"), "cpu")
    ratio(case_name(RENDER, "trio_zc-threads"), case_name(RENDER, "trio-pillow"))
    ratio(case_name(RENDER, "trio_zc-workers"), case_name(RENDER, "trio-pillow"))
    return lines


def format_table(summaries: Sequence[Summary]) -> str:
    header = (f"{'case':25} {'kernel':13} {'runs':>4} {'req/s':>9} {'range':>17} {'MB/s':>8} {'CPU ms/req':>10}"
              f" {'p99 ms':>8} {'sock err':>8} {'bad':>4}")
    lines = [header, "-" * len(header)]
    for s in summaries:
        lines.append(
            f"{s.case:25} {s.kernel:13} {s.runs:>4} {s.median_rps:>9,.0f} {f'{s.min_rps:,.0f}-{s.max_rps:,.0f}':>17}"
            f" {s.mb_per_s:>8,.0f} {s.cpu_ms_per_request:>10.3f} {s.p99_ms:>8.1f} {s.socket_errors:>8} {s.bad:>4}"
        )
    return "\n".join(lines)


def render_svg(summaries: Sequence[Summary], path: str, title: str) -> None:
    """A bar chart per group: median req/s per server, a line for the range. Plain SVG, no dependency."""
    groups: dict[str, list[Summary]] = {}
    for s in summaries:
        groups.setdefault(s.case.split("/")[0], []).append(s)
    if not groups:
        raise ValueError("render_svg(): no case to draw")
    bar, gap, label_w, plot_w, top = 18, 6, 150, 420, 50
    panel_h = {g: 40 + len(items) * (bar + gap) for g, items in groups.items()}
    width = label_w + plot_w + 110
    height = top + sum(panel_h.values()) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    y = top
    for group, items in groups.items():
        peak = max(s.max_rps for s in items) or 1.0
        body = f"{items[0].body_bytes:,} bytes" if group != RENDER else "13 KB JPEG rendered per request"
        out.append(f'<text x="10" y="{y + 14}" font-weight="bold">{escape(group)} ({escape(body)}), req/s</text>')
        yy = y + 26
        for s in items:
            server = s.case.split("/")[1]
            own = server.startswith("trio_zc")
            colour = "#1f77b4" if own else ("#2ca02c" if server == "nginx" else "#ff7f0e")
            w = plot_w * s.median_rps / peak
            lo, hi = label_w + plot_w * s.min_rps / peak, label_w + plot_w * s.max_rps / peak
            mid = yy + bar / 2
            out += [
                f'<text x="{label_w - 6}" y="{mid + 4}" text-anchor="end">{escape(server)}</text>',
                f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="{bar}" fill="{colour}"/>',
                f'<line x1="{lo:.1f}" y1="{mid}" x2="{hi:.1f}" y2="{mid}" stroke="black" stroke-width="1.5"/>',
                f'<text x="{label_w + max(w, hi - label_w) + 6:.1f}" y="{mid + 4}">{s.median_rps:,.0f}</text>',
            ]
            yy += bar + gap
        y += panel_h[group]
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# -- the run ----------------------------------------------------------------------------------


def ensure_tools(need_nginx: bool, install: bool) -> str | None:
    """Install wrk (and nginx) with apt-get if missing and allowed; what is still missing, or None."""
    wanted = ["wrk"] + (["nginx"] if need_nginx else [])
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if missing and install and shutil.which("apt-get") is not None:
        print(f"installing {' '.join(missing)}: apt-get install -y wrk nginx", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "install", "-y", "wrk", "nginx"], stdout=subprocess.DEVNULL, check=False)
        missing = [tool for tool in wanted if shutil.which(tool) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: apt-get install -y wrk nginx"
                f"{'' if install else ' (or leave out --no-install)'}")
    return None


def tmpfs_directory() -> str | None:
    """/dev/shm if it is a tmpfs (where nginx's files live), else None."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[1] == "/dev/shm" and parts[2] == "tmpfs":
                    return "/dev/shm"
    except OSError:
        pass
    return None


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_benchmark(
    cases: Sequence[str], duration: int, repeat: int, *, wrk: bool = True, log: Callable[[str], None] = progress
) -> dict[str, Any]:
    """Run *cases*: servers started per group, *repeat* rotated rounds of wrk, servers checked and stopped."""
    tmp_root = tmpfs_directory()
    workdir = tempfile.mkdtemp(prefix="http_load-", dir=tmp_root)
    runs: list[Run] = []
    kernels: dict[str, str] = {}
    body_sizes: dict[str, int] = {}
    notes: list[str] = []
    bad_checks = 0
    failures = 0
    final_stats: dict[str, dict[str, Any]] = {}
    try:
        www = os.path.join(workdir, "www")
        os.mkdir(www)
        for group in GROUPS:
            group_cases = [c for c in cases if c.split("/")[0] == group]
            if not group_cases:
                continue
            if group == RENDER:
                expected = render_thumbnail(source_picture())
                path = RENDER_PATH
            else:
                expected = jpeg_of_size(SIZES[group])
                path = IMAGE_PATH
            body_sizes[group] = len(expected)
            body_file = os.path.join(workdir, f"{group}.jpg")
            with open(body_file, "wb") as f:
                f.write(expected)
            with open(os.path.join(www, IMAGE_PATH.lstrip("/")), "wb") as f:
                f.write(expected)
            script = write_wrk_script(workdir, body_file)
            log(f"{group}: {len(expected):,}-byte body; starting {len(group_cases)} servers")
            servers: dict[str, Server] = {}
            try:
                for case in group_cases:
                    if case.endswith("/nginx"):
                        servers[case] = start_nginx(case, workdir, www)
                    else:
                        servers[case] = start_python_server(case, workdir, None if group == RENDER else body_file)
                    kernels[case] = servers[case].kernel
                    wanted = case.split("/")[1].removeprefix("trio_zc-")
                    if wanted in KERNELS[:-1] and servers[case].kernel != wanted:
                        notes.append(f"{case} ran on kernel {servers[case].kernel!r}")
                for case, server in servers.items():
                    wrong = check_bodies(server.port, path, expected)
                    if wrong:
                        log(f"  {case}: {wrong} wrong bodies from the check client before the runs")
                    bad_checks += wrong
                if wrk:
                    for server in servers.values():  # warm-up, not measured
                        run_wrk(server.port, path, 1, script)
                    for rep in range(repeat):
                        order = group_cases[rep % len(group_cases):] + group_cases[:rep % len(group_cases)]
                        if rep % 2:
                            order.reverse()
                        for case in order:
                            server = servers[case]
                            if not server.alive():
                                continue
                            before = server.cpu()
                            figures = run_wrk(server.port, path, duration, script)
                            run = Run.from_wrk(case, rep, figures, server.cpu() - before)
                            runs.append(run)
                            log(f"  {case} #{rep + 1}: {run.rps:,.0f} req/s, {run.cpu_seconds * 1000 / max(run.requests, 1):.3f}"
                                f" CPU ms/req, {run.socket_errors} socket errors, {run.bad} bad")
                for case, server in servers.items():
                    if not server.alive():
                        failures += 1
                        notes.append(f"{case}: the server exited during the runs:\n{server.log_tail()}")
                        continue
                    wrong = check_bodies(server.port, path, expected)
                    if wrong:
                        log(f"  {case}: {wrong} wrong bodies from the check client after the runs")
                    bad_checks += wrong
            finally:
                for case, server in servers.items():
                    was_alive = server.alive()
                    status = server.stop()
                    final_stats[case] = server.final
                    if was_alive and status != 0:
                        failures += 1
                        notes.append(f"{case}: stopped with status {status}:\n{server.log_tail()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "runs": runs, "kernels": kernels, "body_sizes": body_sizes, "bad_checks": bad_checks,
        "failures": failures, "notes": notes, "tmpfs": tmp_root is not None, "server_stats": final_stats,
    }


def report(result: Mapping[str, Any], cases: Sequence[str], args: argparse.Namespace) -> tuple[list[Target], str]:
    """The table, notes and targets as text, and the targets."""
    runs: list[Run] = result["runs"]
    summaries = summarize(sorted(runs, key=lambda r: cases.index(r.case)), result["kernels"], result["body_sizes"])
    bad = result["bad_checks"] + sum(r.bad for r in runs)
    found = targets(summaries, bad, result["failures"])
    lines = [
        f"wrk -t1 -c{CONNECTIONS} -d{args.duration}s on 127.0.0.1, {args.repeat} rotated rounds per group;"
        f" medians (range); server CPU = user + system of the server's processes per request;"
        f" every response checked (status and every body byte, by a wrk Lua script)",
        "",
        format_table(summaries),
    ]
    sent = []
    for case, final in result.get("server_stats", {}).items():
        total = sum(final.get(k, 0) for k in ("bytes_zerocopy", "bytes_kernel_copied", "bytes_copied"))
        if total and final.get("responses"):
            sent.append(
                f"  {case:25} {final['zerocopy_calls'] / final['responses']:>6.2f} zero-copy calls per response;"
                f" bytes: {final['bytes_zerocopy'] / total:.0%} zero-copy, {final['bytes_kernel_copied'] / total:.0%}"
                f" copied by the kernel after a zero-copy call, {final['bytes_copied'] / total:.0%} copied"
            )
    if sent:
        lines += ["", "how the trio_zc servers sent (their pool's statistics, warm-up and checks included):", *sent]
    for note in result["notes"]:
        lines.append(f"note: {note}")
    lines += ["", "targets (ratios of medians from this run):"]
    lines += ["  " + t.describe() for t in found]
    others = other_ratios(summaries)
    if others:
        lines += ["", "other ratios of medians (not targets):"]
        lines += ["  " + line for line in others]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "command": "python benchmarks/http_load.py " + " ".join(args.argv),
                "duration": args.duration, "repeat": args.repeat, "connections": CONNECTIONS,
                "cpus": len(os.sched_getaffinity(0)), "kernel_release": os.uname().release,
                "runs": [attrs.asdict(r) | {"rps": r.rps} for r in runs],
                "summaries": [attrs.asdict(s) for s in summaries],
                "targets": [attrs.asdict(t) | {"met": t.met} for t in found],
                "notes": result["notes"], "server_stats": result.get("server_stats", {}),
            }, f, indent=1)
        lines.append(f"\nfigures: {args.json}")
    if args.chart and summaries:
        render_svg(summaries, args.chart, f"HTTP load, wrk -t1 -c{CONNECTIONS} -d{args.duration}s, loopback (medians)")
        lines.append(f"chart: {args.chart}")
    return found, "\n".join(lines)


def _writable(path: str) -> bool:
    return os.path.isdir(os.path.dirname(os.path.abspath(path)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/http_load.py",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case, in rotated order (3)")
    p.add_argument("--cases", default="all",
                   help=f"comma-separated groups ({', '.join(GROUPS)}), servers, or group/server (all)")
    p.add_argument("--json", metavar="FILE", help="also write every run, the summaries and the targets as JSON")
    p.add_argument("--chart", metavar="SVG", help="also draw the medians as an SVG bar chart")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install a missing wrk or nginx")
    p.add_argument("--check-targets", action="store_true", help="exit with status 3 if a target is missed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    args.argv = argv
    try:
        cases = all_cases() if args.cases == "all" else select_cases(args.cases)
    except ValueError as exc:
        p.error(str(exc))
    if args.duration < 1:
        p.error(f"--duration must be 1 second or more, not {args.duration}")
    if args.repeat < 1:
        p.error(f"--repeat must be 1 or more, not {args.repeat}")
    for option in ("json", "chart"):
        value = getattr(args, option)
        if value and not _writable(value):
            p.error(f"--{option}: the folder of {value!r} does not exist")
    problem = ensure_tools(any(c.endswith("/nginx") for c in cases), not args.no_install)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    result = run_benchmark(cases, args.duration, args.repeat)
    found, text = report(result, cases, args)
    print(text)
    return exit_status(found, args.check_targets)


def exit_status(found: Sequence[Target], check_targets: bool) -> int:
    """1 if a count target (wrong bodies, servers that exited) is missed; 3 for another with *check_targets*."""
    if not all(t.met for t in found if t.count):
        return 1
    if check_targets and not all(t.met for t in found):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
