"""A closed stream's descriptor number is never used again: not to reset, not to send.

Closing a stream closes its socket, and the next socket the process opens
gets the same descriptor number. Code that goes on using the number after
another task closed the stream acts on a stranger's connection: a reset
through it (``send_timeout``'s abort, ``connect(fd, AF_UNSPEC)``) breaks
that connection, and a send through it (sendfile's next call, io_uring's
next request of a lease split in two) puts the lease's bytes on it.

Each test makes the close happen at the worst moment, deterministically: a
hook in the sending task's own wait runs the real ``aclose()`` and then
opens a new loopback connection on the freed number, as if another task had
run between the end of the wait and the send's next step. The send must
then fail with :class:`trio.ClosedResourceError`, and the new connection
must carry exactly its own bytes. On the mock kernel (no descriptors) the
peer must see the stream's bytes and then an end of stream, not a reset.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import trio_zc
import trio_zc.testing
from trio_zc import ZeroCopyPolicy, open_pool
from trio_zc._kernels import _io_uring
from trio_zc._kernels._io_uring import IoUringChannel, IoUringKernel

from ..builds import pure_only
from ..streams import KERNELS, clog, kernel, stop_reading, stream_pair

MiB = 1 << 20
ALWAYS_ZC = ZeroCopyPolicy(copied_streak=0)
#: What the stranger's connection carries, and nothing else.
PAYLOAD = b"the stranger's own bytes " * 1000

Hook = Callable[[], Awaitable[None]]


class Stranger:
    """A loopback TCP connection whose client end has descriptor number *fd*."""

    def __init__(self, fd: int) -> None:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if client.fileno() != fd:
            # Normally the lowest free number is the one just freed; make sure.
            with pytest.raises(OSError):
                os.fstat(fd)  # it must be free
            os.dup2(client.fileno(), fd, inheritable=False)
            client.close()
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=fd)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client.connect(listener.getsockname())
            server, _ = listener.accept()
        # Non-blocking, so that a stray send through the number (the bug)
        # cannot block the test's thread.
        client.setblocking(False)
        self.fd = fd
        self.client = client
        self.server = server

    def carried(self) -> bytes | str:
        """Send PAYLOAD and end; what the far end received (or what went wrong)."""
        try:
            self.client.settimeout(10)
            self.client.sendall(PAYLOAD)
            self.client.shutdown(socket.SHUT_WR)
        except OSError as exc:
            return f"the client could not send: {exc!r}"
        received = bytearray()
        self.server.settimeout(10)
        try:
            while chunk := self.server.recv(MiB):
                received += chunk
        except OSError as exc:
            return f"the server's receive failed after {len(received)} bytes: {exc!r}"
        return bytes(received)

    def close(self) -> None:
        self.client.close()
        self.server.close()


def hook_next_wait(stream: trio_zc.ZeroCopyStream, *, on_cancel: bool, action: Hook) -> None:
    """Run *action* in the sending task's next wait, then let the send go on.

    With *on_cancel*, when the wait is cancelled (a send_timeout ran out),
    before the cancellation goes on; otherwise when the wait ends normally.
    The wait is the channel's ``wait_writable``, or for an io_uring
    zero-copy send the wait for its request's result.
    """
    done = False

    def should_run(cancelled: bool) -> bool:
        nonlocal done
        if done or cancelled != on_cancel:
            return False
        done = True
        return True

    async def around(wait: Callable[[], Awaitable[Any]]) -> None:
        try:
            await wait()
        except trio.Cancelled:
            if should_run(True):
                with trio.CancelScope(shield=True):
                    await action()
            raise
        if should_run(False):
            await action()

    channel: Any = stream._channel
    # A compiled class (the copy kernel's Channel, in the compiled build) has
    # no instance dictionary, and its own calls would not look one up: hook
    # its transport instead (an interpreted class), one level down. Channel's
    # wait_writable is the transport's wait after before_wait(), so the hook
    # runs at the same moment for the sending task.
    waiter = channel if hasattr(channel, "__dict__") else channel.transport
    assert hasattr(waiter, "__dict__"), f"{type(waiter).__name__}.wait_writable cannot be hooked"
    original = waiter.wait_writable

    async def wait_writable() -> None:
        await around(original)

    waiter.wait_writable = wait_writable
    if isinstance(channel, IoUringChannel):
        make_call = _io_uring._Call

        class HookedEvent:
            def __init__(self, event: trio.Event) -> None:
                self.event = event

            def set(self) -> None:
                self.event.set()

            def is_set(self) -> bool:
                return self.event.is_set()

            async def wait(self) -> None:
                await around(self.event.wait)

        def hooked_call(*args: Any) -> Any:
            call = make_call(*args)
            call.done = HookedEvent(call.done)
            return call

        # Restored by the test's monkeypatch: see the tests.
        _io_uring._Call = hooked_call  # type: ignore[assignment,misc]


def close_and_reuse(stream: trio_zc.ZeroCopyStream, strangers: list[Stranger | None]) -> Hook:
    """The hook: close *stream*, then open a stranger's connection on its descriptor number.

    Appends the stranger to *strangers* (None on the mock kernel, which has no descriptors).
    """
    sock = getattr(stream._channel.transport, "sock", None)
    fd = sock.fileno() if sock is not None else None

    async def action() -> None:
        await stream.aclose()
        strangers.append(None if fd is None else Stranger(fd))

    return action


async def read_until_end(peer: trio.abc.ReceiveStream, into: bytearray) -> BaseException | None:
    """Read everything *peer* gets until its end; the error that ended it, if any."""
    try:
        while chunk := await peer.receive_some(MiB):
            into += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        return exc
    return None


def check_strangers(strangers: list[Stranger | None], name: str) -> None:
    assert len(strangers) == 1, "the close did not happen where the test meant it to"
    stranger = strangers[0]
    if name == "mock":
        assert stranger is None
        return
    assert stranger is not None
    try:
        carried = stranger.carried()
        assert carried == PAYLOAD, (
            "the new connection on the closed stream's descriptor number was touched: "
            + (carried if isinstance(carried, str) else f"it carried {len(carried)} bytes, not {len(PAYLOAD)}")
        )
    finally:
        stranger.close()


#: The mock's channel and transport are both compiled in the compiled build,
#: so hook_next_wait has nothing there to hook (the same stream code is
#: checked there on the real kernels).
MOCK_HOOKABLE = pure_only(
    "the mock's CompletionChannel and MockTransport are compiled classes: their wait_writable"
    " cannot be replaced on an instance, so the close cannot be put inside the sending task's wait"
)


def _marks(name: str) -> list[pytest.MarkDecorator]:
    return [MOCK_HOOKABLE] if name == "mock" else []


SEND_PATHS = [
    *[pytest.param(name, "send_all", id=f"{name}-send_all", marks=_marks(name)) for name in KERNELS],
    *[
        pytest.param(name, "send_lease", id=f"{name}-send_lease", marks=_marks(name))
        for name in KERNELS
        if name != "copy"
    ],
]


@pytest.mark.parametrize(("name", "path"), SEND_PATHS)
async def test_a_send_timeout_after_another_task_closed_the_stream_resets_nothing(
    name: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout's abort runs after the close: it must not reset the new owner of the number."""
    monkeypatch.setattr(_io_uring, "_Call", _io_uring._Call)  # restored after the hook patches it
    strangers: list[Stranger | None] = []
    async with open_pool(
        max_bytes=8 * MiB, kernel=kernel(name), policy=ALWAYS_ZC, send_timeout=0.5, drain_timeout=0.5
    ) as pool:
        stream, peer = await stream_pair(pool)
        stop_reading(peer)
        await clog(stream)
        hook_next_wait(stream, on_cancel=True, action=close_and_reuse(stream, strangers))
        with trio.fail_after(30):
            with pytest.raises((trio.ClosedResourceError, trio.BrokenResourceError)) as info:
                if path == "send_all":
                    await stream.send_all(b"x" * MiB)
                else:
                    async with pool.lease(MiB) as lease:
                        lease.write(b"x" * MiB)
                        await stream.send_lease(lease.seal())
        # The stream's own peer: what was queued arrives, then the end (or,
        # on a real socket, the reset the drain deadline made), never more.
        received = bytearray()
        if isinstance(peer, trio_zc.testing.MockPeer):
            peer.resume_reading()
            with trio.fail_after(10):
                ended_by = await read_until_end(peer, received)
            assert ended_by is None, f"the mock peer saw {ended_by!r} after the stream's close"
        else:
            await peer.aclose()
        assert set(received) <= {ord("x")}
        check_strangers(strangers, name)
        assert isinstance(info.value, trio.ClosedResourceError), info.value
        assert "closed while send" in str(info.value)


@pytest.mark.parametrize(
    "name", ["sendfile", "io_uring", "msg_zerocopy", pytest.param("mock", marks=MOCK_HOOKABLE)]
)
async def test_a_send_that_goes_on_after_another_task_closed_the_stream_sends_nowhere(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close comes while a lease's send waits between two kernel calls.

    sendfile calls ``sendfile(fd, ...)`` again after waiting for room, and
    io_uring sends a lease that crosses a registered buffer's end as two
    requests (the chunk size is made 1 MiB here, so that a small lease
    crosses one), each naming the socket by number.
    """
    monkeypatch.setattr(_io_uring, "_Call", _io_uring._Call)
    monkeypatch.setattr(_io_uring, "_MAX_FIXED_BUFFER", MiB)
    strangers: list[Stranger | None] = []
    # Small buffers (see below), so that the send waits for room.
    the_kernel = trio_zc.testing.MockKernel(socket_buffer=64 * 1024) if name == "mock" else name
    async with open_pool(max_bytes=8 * MiB, kernel=the_kernel, policy=ALWAYS_ZC, drain_timeout=5) as pool:
        if name == "io_uring" and not isinstance(pool._kernel, IoUringKernel):
            pytest.skip(f"io_uring is not usable here: {pool.statistics().kernel_note}")
        stream, peer = await stream_pair(pool)
        if name == "io_uring":
            # The lease starts 64 KiB before the first 1 MiB buffer ends.
            filler = await pool.acquire(MiB - 64 * 1024)
            size = 128 * 1024
        else:
            # Larger than the sockets take at once, so the send waits for room.
            filler = None
            stop_reading(peer, rcvbuf=64 * 1024)
            sock = getattr(stream._channel.transport, "sock", None)
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            size = 6 * MiB
        image = os.urandom(size)
        hook_next_wait(stream, on_cancel=False, action=close_and_reuse(stream, strangers))
        received = bytearray()
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_until_end, peer, received)
            with trio.fail_after(30):
                try:
                    async with pool.lease(size) as lease:
                        lease.write(image)
                        await stream.send_lease(lease.seal())
                except Exception as exc:
                    error = exc
        if filler is not None:
            filler.release()
        await peer.aclose()
        # The stream's own peer got a prefix of the image, nothing else.
        assert bytes(received) == image[: len(received)]
        check_strangers(strangers, name)
        assert isinstance(error, trio.ClosedResourceError), repr(error)
