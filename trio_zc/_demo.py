"""``python -m trio_zc demo``: is it safe to reuse a buffer after sendfile? How would you know?

The demo answers with a run on loopback TCP, in three parts, against a
receiver in another process (:mod:`trio_zc._demo_receiver`) that checks the
SHA-256 of every image it gets:

1. The naive way: :func:`naive_sendfile` and :func:`naive_msg_zerocopy`
   send the images from one buffer per connection and write the next image
   into it as soon as the send call returns, as the question proposes.
   No library, a few plain lines each. The receiver lags a little, as a
   client across a network would; the images whose bytes the kernel still
   held when they were rewritten arrive corrupted.
2. trio_zc on every kernel, in the same memory (one image's worth per
   connection): each image is written into a lease, sealed, sent and
   released, and the pool hands the memory out again only when the kernel
   is done with it. Every image arrives intact.
3. The send speed alone: the images are sealed in leases first, then sent
   over and over on one connection to a receiver that reads as fast as it
   can, and timed; :meth:`trio.SocketStream.send_all` sends the same bytes
   in the same run, and the table gives each kernel's throughput as a ratio
   to it, with the share of bytes each kernel sent without copying.

Progress goes to standard error (one updating line on a terminal), the
report to standard output. The options are checked, and NumPy and Pillow
looked for, before anything runs (:func:`check_options`).
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import pathlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Final

import attrs
import trio

from ._arena import PAGE_SIZE
from ._kernels._choice import KERNEL_NAMES
from ._demo_receiver import ANSWER, HEADER
from ._highlevel import open_tcp_stream
from ._policy import ZeroCopyPolicy
from ._pool import PoolStatistics
from ._pool_open import open_pool
from ._stats import SendStatistics
from ._kernels._thp import shmem_folios

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: The kernels the demo runs, in the order of its table.
DEMO_KERNELS: Final = ("auto", "io_uring", "msg_zerocopy", "sendfile", "copy")
#: The baseline every kernel's speed is compared with.
BASELINE: Final = "trio send_all"
#: Limits of the options: beyond them the demo would only take long or run out of memory.
MAX_IMAGES: Final = 200
MAX_CLIENTS: Final = 64
MAX_REPEAT: Final = 20
MAX_SEND_MB: Final = 10_000

# Linux's MSG_ZEROCOPY (Python's socket module defines neither constant).
SO_ZEROCOPY: Final = 60
MSG_ZEROCOPY: Final = 0x4000000


class UsageError(Exception):
    """A bad option or a missing package: one line for the user, exit status 2."""


# -- options ------------------------------------------------------------------------


@attrs.frozen
class Options:
    """The demo's options, checked."""

    images: int = 40
    clients: int = 8
    kernels: tuple[str, ...] = DEMO_KERNELS
    repeat: int = 5
    send_mb: int = 250
    chart: pathlib.Path | None = None


def _bounded(name: str, value: int, low: int, high: int, advice: str) -> int:
    if not low <= value <= high:
        raise UsageError(f"{name} must be between {low} and {high}, not {value} ({advice})")
    return value


def parse_kernels(text: str) -> tuple[str, ...]:
    """``"auto,copy"`` -> ``("auto", "copy")``; :exc:`UsageError` for unknown or repeated names."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in KERNEL_NAMES]
    if unknown or not names:
        what = f"unknown kernel {unknown[0]!r}" if unknown else "no kernel named"
        raise UsageError(f"--kernels: {what}; give some of {','.join(DEMO_KERNELS)}, separated by commas")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--kernels: {repeated[0]!r} is named twice; name each kernel once")
    return names


def check_packages(chart: bool) -> None:
    """NumPy and Pillow make the images (and Pillow the chart): :exc:`UsageError` if either is missing."""
    missing = []
    for module, name in (("numpy", "NumPy"), ("PIL.Image", "Pillow")):
        try:
            __import__(module)
        except ImportError:
            missing.append(name)
    if missing:
        what = " and ".join(missing)
        use = "the chart and the images" if chart and "Pillow" in missing else "the images"
        raise UsageError(
            f"the demo needs NumPy and Pillow for {use}, and {what} cannot be imported:"
            " pip install 'trio_zc[images]'"
        )


def _check_chart(path: str) -> pathlib.Path:
    chart = pathlib.Path(path)
    folder = chart.parent
    if chart.is_dir():
        raise UsageError(f"--chart: {path!r} is a directory; give the name of the PNG file to write")
    if not folder.is_dir():
        raise UsageError(f"--chart: the directory {str(folder)!r} does not exist; create it or choose another")
    if not os.access(folder, os.W_OK) or (chart.exists() and not os.access(chart, os.W_OK)):
        raise UsageError(f"--chart: {path!r} cannot be written here; choose a writable place")
    return chart


def check_options(
    *, images: int, clients: int, kernels: str, repeat: int, send_mb: int, chart: str | None
) -> Options:
    """The demo's options, checked before anything runs; :exc:`UsageError` says what is wrong."""
    options = Options(
        images=_bounded("--images", images, 1, MAX_IMAGES, "distinct images to send; 40 by default"),
        clients=_bounded("--clients", clients, 1, MAX_CLIENTS, "connections at once; 8 by default"),
        kernels=parse_kernels(kernels),
        repeat=_bounded("--repeat", repeat, 1, MAX_REPEAT, "timed runs per kernel; 5 by default"),
        send_mb=_bounded("--send-mb", send_mb, 1, MAX_SEND_MB, "megabytes per timed run; 250 by default"),
        chart=_check_chart(chart) if chart is not None else None,
    )
    check_packages(chart=options.chart is not None)
    return options


# -- the images ------------------------------------------------------------------------


@attrs.frozen
class Picture:
    """One image as it goes on the wire: its bytes, after a header with its length and SHA-256."""

    data: bytes
    header: bytes

    @classmethod
    def of(cls, data: bytes) -> Picture:
        return cls(data, HEADER.pack(len(data), hashlib.sha256(data).digest()))


def source_images() -> list[PILImage.Image]:
    """A few deterministic 'photos': gradients, rings and noise."""
    import numpy as np
    from PIL import Image

    out = []
    for seed, (w, h) in enumerate([(1280, 960), (1024, 768), (1600, 900)]):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(x - w / 2, y - h / 2)
        rgb = np.stack([127 + 127 * np.sin(r / (9 + 3 * seed)), 255 * x / w, 255 * y / h], axis=-1)
        rgb += rng.normal(0, 12, rgb.shape)
        out.append(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"))
    return out


def process(sources: Sequence[PILImage.Image], n: int) -> bytes:
    """Image *n*: a source cropped, resized and maybe turned, then JPEG, WebP or raw RGB.

    Each *n* gives different bytes: the crop moves with it.
    """
    source = sources[n % len(sources)]
    kind = n % 3
    scale = 0.45 + 0.05 * (n % 7) if kind == 2 else 0.8 + 0.05 * (n % 5)
    box = (n % 11, n % 13 + n // 11 % 17, source.width - n % 7, source.height)
    variant = source.resize((int(source.width * scale), int(source.height * scale)), box=box)
    if n % 4 == 3:
        variant = variant.rotate(90, expand=True)
    if kind == 2:
        return variant.tobytes()
    out = io.BytesIO()
    if kind == 1 and _has_webp():
        variant.save(out, "WEBP", quality=90, method=0)
    else:
        variant.save(out, "JPEG", quality=90 + n % 7)
    return out.getvalue()


def _has_webp() -> bool:
    """Whether this Pillow can write WebP (some builds cannot; the demo then makes JPEGs)."""
    from PIL import features

    return bool(features.check("webp"))


def make_images(count: int, step: Callable[[str], None]) -> list[Picture]:
    """*count* distinct processed images."""
    sources = source_images()
    images = []
    for n in range(count):
        step(f"{n + 1} of {count}")
        images.append(Picture.of(process(sources, n)))
    return images


# -- the receiver -------------------------------------------------------------------------


class Receiver:
    """The receiving process: its lagging and prompt ports (see :mod:`trio_zc._demo_receiver`)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trio_zc._demo_receiver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._ports: tuple[int, int] | None = None

    def ports(self) -> tuple[int, int]:
        """(lagging, prompt), once the receiver listens."""
        if self._ports is None:
            assert self.process.stdout is not None
            line = self.process.stdout.readline().split()
            if len(line) != 2:
                raise RuntimeError("the receiver process did not start (see the error above)")
            self._ports = (int(line[0]), int(line[1]))
        return self._ports

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()  # the receiver exits when its stdin closes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a wedged receiver
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


@attrs.frozen
class Tally:
    """What the receiver said about one connection, or several summed."""

    images: int = 0
    intact: int = 0
    nbytes: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.images + other.images, self.intact + other.intact, self.nbytes + other.nbytes)

    @property
    def corrupted(self) -> int:
        return self.images - self.intact

    @classmethod
    def of(cls, answer: bytes) -> Tally:
        return cls(*ANSWER.unpack(answer))


def _shares(images: Sequence[Picture], clients: int) -> list[list[Picture]]:
    """The images dealt round-robin to *clients* connections (none gets nothing)."""
    clients = min(clients, len(images))
    return [list(images[i::clients]) for i in range(clients)]


# -- 1. the naive way ----------------------------------------------------------------------
#
# What the question proposes, in plain Python: one buffer per connection,
# the next image written into it as soon as the send call has returned.


def naive_sendfile(sock: socket.socket, images: list[Picture]) -> None:
    """sendfile each image from a memfd, and rewrite the memfd as soon as sendfile returns."""
    fd = os.memfd_create("naive")
    os.ftruncate(fd, max(len(image.data) for image in images))
    with mmap.mmap(fd, 0) as memory:
        for image in images:
            memory[: len(image.data)] = image.data  # reuse the buffer: sendfile has returned
            sock.sendall(image.header)
            offset = 0
            while offset < len(image.data):
                offset += os.sendfile(sock.fileno(), fd, offset, len(image.data) - offset)
    os.close(fd)


def naive_msg_zerocopy(sock: socket.socket, images: list[Picture]) -> None:
    """send each image with MSG_ZEROCOPY from one buffer, rewritten as soon as send returns.

    The kernel reports when it is done with the memory on the socket's error
    queue; the naive way never reads it.
    """
    sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    memory = bytearray(max(len(image.data) for image in images))
    for image in images:
        memory[: len(image.data)] = image.data  # reuse the buffer: send has returned
        sock.sendall(image.header)
        view = memoryview(memory)[: len(image.data)]
        while view:
            view = view[sock.send(view, MSG_ZEROCOPY) :]


def _receive_answer(sock: socket.socket) -> Tally:
    answer = b""
    while len(answer) < ANSWER.size:
        chunk = sock.recv(ANSWER.size - len(answer))
        if not chunk:
            raise ConnectionError("the receiver closed the connection without answering")
        answer += chunk
    return Tally.of(answer)


def run_naive(
    way: Callable[[socket.socket, list[Picture]], None], port: int, images: Sequence[Picture], clients: int
) -> Tally:
    """Send *images* the naive *way* over *clients* connections at once; what the receiver found."""

    def one(share: list[Picture]) -> Tally:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            way(sock, share)
            sock.shutdown(socket.SHUT_WR)
            return _receive_answer(sock)

    shares = _shares(images, clients)
    with ThreadPoolExecutor(len(shares)) as threads:
        return sum(threads.map(one, shares), Tally())


# -- 2. trio_zc on every kernel --------------------------------------------------------------


def _policy(kernel: str) -> ZeroCopyPolicy:
    # "auto" runs as shipped; a named kernel keeps sending zero-copy although
    # loopback reports every send copied: showing it do so is the point.
    return ZeroCopyPolicy() if kernel == "auto" else ZeroCopyPolicy(copied_streak=0)


def _granule(kernel: str) -> int:
    """The unit the pool hands out memory in: pages, or the sendfile kernel's folios."""
    return shmem_folios().largest if kernel == "sendfile" else PAGE_SIZE


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


async def _receive_answer_async(stream: trio.abc.ReceiveStream) -> Tally:
    answer = b""
    while len(answer) < ANSWER.size:
        chunk = await stream.receive_some(ANSWER.size - len(answer))
        if not chunk:
            raise trio.BrokenResourceError("the receiver closed the connection without answering")
        answer += chunk
    return Tally.of(answer)


@attrs.frozen
class Delivery:
    """One kernel's run in part 2."""

    kernel: str
    tally: Tally
    pool: PoolStatistics


async def deliver(kernel: str, port: int, images: Sequence[Picture], clients: int) -> Delivery:
    """Send *images* with trio_zc over *clients* connections, reusing memory as soon as it may be.

    The pool has as much memory as the naive senders had, one buffer of the
    largest image per connection, so every lease is made of memory that an
    earlier image was sent from.
    """
    shares = _shares(images, clients)
    largest = _round_up(max(len(image.data) for image in images), _granule(kernel))
    tallies: list[Tally] = []
    async with open_pool(max_bytes=len(shares) * largest, kernel=kernel, policy=_policy(kernel)) as pool:

        async def one(share: list[Picture]) -> None:
            stream = await open_tcp_stream("127.0.0.1", port, pool=pool)
            async with stream:
                for image in share:
                    async with pool.lease(len(image.data)) as lease:
                        lease.write(image.data)
                        await stream.send_all(image.header)
                        await stream.send_lease(lease.seal())
                    # Released: the pool reuses this memory once the kernel is done with it.
                await stream.send_eof()
                tallies.append(await _receive_answer_async(stream))

        async with trio.open_nursery() as nursery:
            for share in shares:
                nursery.start_soon(one, share)
        stats = pool.statistics()
    return Delivery(kernel, sum(tallies, Tally()), stats)


# -- 3. the send speed alone -----------------------------------------------------------------


@attrs.frozen
class Timed:
    """One timed run of one case in part 3."""

    case: str
    seconds: float
    nbytes: int
    tally: Tally
    sent: SendStatistics | None = None
    fallbacks: tuple[tuple[str, int], ...] = ()
    note: str | None = None

    @property
    def throughput(self) -> float:
        """GB/s."""
        return self.nbytes / self.seconds / 1e9


async def time_trio_zc(kernel: str, port: int, images: Sequence[Picture], rounds: int) -> Timed:
    """Seal *images* in leases, then time sending them *rounds* times on one connection."""
    granule = _granule(kernel)
    pool_bytes = sum(_round_up(len(image.data), granule) for image in images) + granule
    async with open_pool(max_bytes=pool_bytes, kernel=kernel, policy=_policy(kernel)) as pool:
        sealed = []
        for image in images:
            writable = await pool.acquire(len(image.data))
            writable.write(image.data)
            sealed.append(writable.seal())
        stream = await open_tcp_stream("127.0.0.1", port, pool=pool)
        async with stream:
            # One round untimed: the first sends from a pool set things up
            # (io_uring registers the memory), which a server does once.
            for image, lease in zip(images, sealed):
                await stream.send_all(image.header)
                await stream.send_lease(lease)
            start = time.perf_counter()
            for _ in range(rounds):
                for image, lease in zip(images, sealed):
                    await stream.send_all(image.header)
                    await stream.send_lease(lease)
            await stream.send_eof()
            tally = await _receive_answer_async(stream)
            seconds = time.perf_counter() - start
        for lease in sealed:
            lease.release()
        stats = pool.statistics()
    nbytes = rounds * sum(len(image.data) for image in images)
    return Timed(kernel, seconds, nbytes, tally, stats.sent, stats.fallbacks, stats.kernel_note)


async def time_send_all(port: int, images: Sequence[Picture], rounds: int) -> Timed:
    """The baseline: :meth:`trio.SocketStream.send_all` of the same bytes, timed the same way."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for image in images:
            await stream.send_all(image.header)
            await stream.send_all(image.data)
        start = time.perf_counter()
        for _ in range(rounds):
            for image in images:
                await stream.send_all(image.header)
                await stream.send_all(image.data)
        await stream.send_eof()
        tally = await _receive_answer_async(stream)
        seconds = time.perf_counter() - start
    return Timed(BASELINE, seconds, rounds * sum(len(image.data) for image in images), tally)


def _order(cases: Sequence[str], rep: int) -> list[str]:
    """The cases in one repetition's order: shuffled (reproducibly), so no case always follows the same one."""
    order = list(cases)
    random.Random(f"trio_zc demo {rep}").shuffle(order)
    return order


# -- progress ------------------------------------------------------------------------------


class Progress:
    """One line on standard error that updates in place on a terminal; plain lines otherwise.

    :meth:`phase` starts a part of the demo (a line of its own when not on a
    terminal), :meth:`step` says what it is doing (on a terminal only).
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty()
        self._phase = ""

    def _show(self, text: str) -> None:
        width = shutil.get_terminal_size().columns - 1
        self.out.write("\r\x1b[K" + text[:width])
        self.out.flush()

    def phase(self, text: str) -> None:
        self._phase = text
        if self.tty:
            self._show(text + "...")
        else:
            print(text + "...", file=self.out, flush=True)

    def step(self, text: str) -> None:
        if self.tty:
            self._show(f"{self._phase}: {text}")

    def done(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()


# -- the report ------------------------------------------------------------------------------


def _mb(nbytes: float) -> str:
    """Megabytes, to two significant digits below 10."""
    return f"{nbytes / 1e6:.2g}" if nbytes < 10e6 else f"{nbytes / 1e6:.0f}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


@attrs.frozen
class Row:
    """One case of part 3, summarized over its runs."""

    case: str
    runs: list[Timed]

    @property
    def throughput(self) -> float:
        """Median GB/s."""
        return statistics.median(run.throughput for run in self.runs)

    @property
    def tally(self) -> Tally:
        return sum((run.tally for run in self.runs), Tally())

    @property
    def sent(self) -> SendStatistics | None:
        sent = [run.sent for run in self.runs if run.sent is not None]
        if not sent:
            return None
        return SendStatistics(
            **{field: sum(getattr(s, field) for s in sent) for field in attrs.fields_dict(SendStatistics)}
        )


def _zerocopy_columns(row: Row) -> tuple[str, str]:
    """(zero-copy at send, what the completions said)."""
    sent = row.sent
    if sent is None:
        return "0%", "-"
    taken = sent.bytes_zerocopy + sent.bytes_kernel_copied
    at_send = _share(taken, taken + sent.bytes_copied)
    if not taken:
        return at_send, "-"
    if row.case == "sendfile":
        return at_send, "no completions"
    return at_send, f"{_share(sent.bytes_kernel_copied, taken)} copied"


def table(rows: Sequence[Row]) -> list[str]:
    """Part 3's table, each case's median throughput as a ratio to the baseline's."""
    base = next((row for row in rows if row.case == BASELINE), None)
    head = f"{'kernel':<14} {'zero-copy at send':>17}  {'completions said':<16} {'GB/s':>5}  vs {BASELINE}"
    lines = [head]
    for row in rows:
        at_send, said = _zerocopy_columns(row)
        ratio = f"{row.throughput / base.throughput:.2f}x" if base is not None else "-"
        line = f"{row.case:<14} {at_send:>17}  {said:<16} {row.throughput:5.2f}  {ratio:>5}"
        if row.tally.corrupted:
            line += f"   {row.tally.corrupted} IMAGES CORRUPTED"
        lines.append(line)
    return lines


def _fallback_notes(rows: Sequence[Row]) -> list[str]:
    """Why a kernel copied or ran another kernel, once each (the io_uring probe's sentence included)."""
    notes: dict[str, list[str]] = {}
    for row in rows:
        for run in row.runs:
            for reason, _ in run.fallbacks:
                if row.case != "copy":  # the copy kernel copies: nothing to explain
                    notes.setdefault(reason, []).append(row.case)
            if run.note:
                note = run.note.removeprefix("auto: ")
                notes.setdefault(note, []).append(row.case)
    lines = []
    for note, cases in notes.items():
        if note.startswith("io_uring: "):  # the probe's sentence, the same for every pool
            lines.extend(_wrap("io_uring probe: " + note.removeprefix("io_uring: ")))
        else:
            lines.extend(_wrap(f"{', '.join(dict.fromkeys(cases))}: {note}"))
    return lines


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=100)


def render_chart(rows: Sequence[Row], path: pathlib.Path, title: str) -> None:
    """A PNG bar chart of part 3: each case's median GB/s (min-max whiskers) and its ratio."""
    from PIL import Image, ImageDraw

    from ._demo_drawing import PALETTE, font, put

    width, bar_height, gap, left, top = 1000, 34, 14, 150, 70
    height = top + len(rows) * (bar_height + gap) + 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title_font, label_font, small_font = font(18), font(15), font(13)
    put(draw, width / 2, 26, title, title_font)
    peak = max(max(run.throughput for run in row.runs) for row in rows)
    scale = (width - left - 330) / peak
    base = next((row for row in rows if row.case == BASELINE), None)
    for i, row in enumerate(rows):
        y = top + i * (bar_height + gap)
        colour = (150, 150, 150) if row.case == BASELINE else PALETTE[i % len(PALETTE)]
        draw.rectangle([left, y, left + row.throughput * scale, y + bar_height], fill=colour)
        low = min(run.throughput for run in row.runs)
        high = max(run.throughput for run in row.runs)
        middle = y + bar_height / 2
        draw.line([(left + low * scale, middle), (left + high * scale, middle)], fill=(40, 40, 40), width=2)
        put(draw, left - 10, middle, row.case, label_font, "rm")
        ratio = f"  {row.throughput / base.throughput:.2f}x" if base is not None else ""
        label = f"{row.throughput:.2f} GB/s{ratio}  ({_zerocopy_columns(row)[0]} zero-copy at send)"
        put(draw, left + high * scale + 8, middle, label, small_font, "lm")
    axis_y = top + len(rows) * (bar_height + gap)
    draw.line([(left, top - 6), (left, axis_y)], fill=(40, 40, 40))
    put(
        draw,
        width / 2,
        axis_y + 24,
        f"GB/s, median of {len(rows[0].runs)} (whiskers: min-max); ratio to {BASELINE} in the same run",
        small_font,
    )
    image.save(path, format="PNG")


# -- the demo ----------------------------------------------------------------------------------


async def _trio_parts(
    options: Options, ports: tuple[int, int], images: list[Picture], rounds: int, progress: Progress
) -> tuple[list[Delivery], list[Row]]:
    lagging, prompt = ports
    progress.phase("trio_zc, every kernel")
    deliveries = []
    for kernel in options.kernels:
        progress.step(kernel)
        deliveries.append(await deliver(kernel, lagging, images, options.clients))

    cases = [*options.kernels, BASELINE]
    runs: dict[str, list[Timed]] = {case: [] for case in cases}
    progress.phase(f"timing the sends, {len(cases)} cases x {options.repeat}")
    for rep in range(options.repeat):
        for case in _order(cases, rep):
            progress.step(f"{case}, run {rep + 1}")
            if case == BASELINE:
                runs[case].append(await time_send_all(prompt, images, rounds))
            else:
                runs[case].append(await time_trio_zc(case, prompt, images, rounds))
    return deliveries, [Row(case, runs[case]) for case in cases]


def run_demo(options: Options) -> int:
    """Run the demo and print its report; 0 if trio_zc delivered every image intact, else 1."""
    progress = Progress()
    receiver = Receiver()  # starts while the images are made
    try:
        progress.phase(f"making {options.images} images")
        images = make_images(options.images, progress.step)
        ports = receiver.ports()
        total = sum(len(image.data) for image in images)
        rounds = max(1, round(options.send_mb * 1e6 / total))
        clients = min(options.clients, len(images))

        progress.phase("the naive way")
        naive = []
        for name, way in (
            ("sendfile (memfd rewritten as soon as sendfile returns)", naive_sendfile),
            ("MSG_ZEROCOPY (buffer rewritten as soon as send returns)", naive_msg_zerocopy),
        ):
            progress.step(name.split()[0])
            try:
                naive.append((name, run_naive(way, ports[0], images, clients)))
            except OSError as exc:
                naive.append((f"{name.split()[0]}: could not run here ({exc})", Tally()))
        deliveries, rows = trio.run(_trio_parts, options, ports, images, rounds, progress)
        chart_title = (
            f"trio_zc demo, sending only: {len(images)} sealed images sent {rounds}x over one loopback connection"
        )
        if options.chart is not None:
            progress.phase(f"drawing {options.chart}")
            render_chart(rows, options.chart, chart_title)
    finally:
        progress.done()
        receiver.stop()

    sizes = sorted(len(image.data) for image in images)
    delivered = sum((d.tally for d in deliveries), Tally())
    out = [
        f"trio_zc demo: {len(images)} images of {_mb(sizes[0])}-{_mb(sizes[-1])} MB ({_mb(total)} MB),"
        f" {clients} loopback connection{'s' if clients > 1 else ''}, each image's SHA-256 checked on arrival",
        "",
        "Each connection reuses one image's worth of memory; the receiver lags a little, as across a network:",
    ]
    results = [(f"naive {name}", tally) for name, tally in naive]
    kernels = "every kernel" if len(deliveries) == len(DEMO_KERNELS) else ", ".join(options.kernels)
    results.append((f"trio_zc, {kernels} (reused once the kernel is done)", delivered))
    width = max(len(label) for label, _ in results) + 1
    for label, tally in results:
        if tally.images:
            out.append(f"  {label + ':':<{width}} {tally.corrupted:>4} of {tally.images} images corrupted")
        else:
            out.append(f"  {label}")
    if not any(tally.corrupted for _, tally in naive):
        out.extend(
            "  " + line
            for line in _wrap(
                "(none this time: an image arrives wrong only when its memory is rewritten while the"
                " kernel still holds it, and the last image on each connection never is)"
            )
        )
    out.append("  (the naive code, without the library: naive_sendfile() and naive_msg_zerocopy() in trio_zc/_demo.py)")
    out.append("")
    out.append(
        f"Sending only: the images sealed in leases first, then sent {rounds}x ({_mb(rounds * total)} MB)"
        f" on one connection, median of {options.repeat} run(s):"
    )
    out.extend(table(rows))
    timed = sum((row.tally for row in rows), Tally())
    out.append(f"(the timed runs too: {timed.intact} of {timed.images} images intact)")
    out.append("")
    out.extend(
        _wrap(
            "zero-copy at send: the share of bytes the kernel took straight from the pool's memory,"
            " without copying them, when they were sent. On loopback the kernel then copies MSG_ZEROCOPY"
            " and io_uring data as it delivers it to the local socket (their completions say so), so on"
            " one machine zero-copy cannot beat copying and 'auto' copies; sent through a real network"
            " card, those bytes are never copied by the CPU."
        )
    )
    out.extend(
        _wrap(
            "How would you know when the buffer may be reused? sendfile never says; MSG_ZEROCOPY and"
            " io_uring say so in completions, which the naive code never reads. trio_zc hands memory"
            " out again only after them (sendfile: after replacing the pages it sent)."
        )
    )
    out.extend(_fallback_notes(rows))
    if options.chart is not None:
        out.append(f"chart: {options.chart}")
    failed = delivered.corrupted + timed.corrupted + sum(
        d.tally.images != sum(len(s) for s in _shares(images, clients)) for d in deliveries
    )
    if failed:
        out.append("FAILED: trio_zc delivered an image that was not intact, or not every image")
    print("\n".join(out), flush=True)
    return 1 if failed else 0


__all__ = ["DEMO_KERNELS", "Options", "UsageError", "check_options", "run_demo"]
