"""The stream's end of a mock connection: the transport a mock stream's channel sends through.

A mock stream's channel is the library's own
:class:`~trio_zc._kernels._completion.CompletionChannel`, the same as the
msg_zerocopy kernel's: only the transport differs. This one offers what a
socket with SO_ZEROCOPY offers -- copying sends, zero-copy calls, and
completion records as its error queue would hold them -- over the simulated
wire (:mod:`._wire`), plus the mock's own check: every zero-copy call keeps
a copy of the bytes it was given, and when the call is released the memory
must still hold them, or :class:`~trio_zc.testing.PrematureReuseError` is
raised (after the release, so the pool stays sound and only the test fails).
"""

from __future__ import annotations

import errno as errno_module
import os
from collections.abc import Iterator

import trio

from .._mypyc import caused, mypyc_attr, own_abc_state

from .._kernels._base import Transport
from .._kernels._completion import Ancdata, Call
from .._kernels._errqueue import pack_zerocopy_record
from ._sends import _NOT_RECORDED, MockSend, PrematureReuseError, _call_site
from ._wire import _Connection, _Segment


@mypyc_attr(allow_interpreted_subclasses=True)
class MockTransport(Transport):
    """The stream's end of a mock connection (made by :meth:`MockKernel.open_stream`)."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        # The view of the memory the last zero-copy call accepted, and of
        # the head it took with it (None: no head), until the channel
        # records the call (accepted() takes them).
        self._accepted: memoryview | None = None
        self._accepted_head: memoryview | None = None
        # Sends found changed at their release (and whether it was the head
        # that changed), reported after it.
        self._stale: list[tuple[MockSend, bool]] = []

    def _check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self.conn.reset:
            raise caused(
                trio.BrokenResourceError("connection reset by peer (mock)"),
                OSError(errno_module.ECONNRESET, "Connection reset by peer"),
            )
        if self.conn.to_peer.broken:
            raise caused(
                trio.BrokenResourceError("the peer closed the connection (mock)"),
                OSError(errno_module.EPIPE, "Broken pipe"),
            )

    # -- copying ----------------------------------------------------------------

    def send(self, data: memoryview) -> int:
        conn = self.conn
        self._check_open()
        n = min(len(data), conn.room)
        if not n:
            raise BlockingIOError(errno_module.EAGAIN, "mock socket buffer full")
        conn.queued.append(_Segment(bytes(data[:n]), None, n))
        conn.queued_bytes += n
        conn.kernel.wake(conn)
        return n

    def send_with_head(self, head: memoryview, data: memoryview) -> int:
        conn = self.conn
        self._check_open()
        n = min(len(head) + len(data), conn.room)
        if not n:
            raise BlockingIOError(errno_module.EAGAIN, "mock socket buffer full")
        h = min(n, len(head))
        conn.queued.append(_Segment(bytes(head[:h]) + bytes(data[: n - h]), None, n))
        conn.queued_bytes += n
        conn.kernel.wake(conn)
        return n

    async def wait_writable(self) -> None:
        conn = self.conn
        while True:
            self._check_open()
            if conn.room > 0:
                await trio.lowlevel.checkpoint()
                return
            await conn.to_peer.wait()

    def shutdown_write(self) -> None:
        self._check_open()
        self.conn.to_peer.eof = True
        self.conn.to_peer.wake()

    # -- receiving --------------------------------------------------------------

    def recv(self, max_bytes: int) -> bytes:
        if self.closed:
            raise trio.ClosedResourceError("the stream was closed")
        pipe = self.conn.to_stream
        if pipe.buffer:
            data = bytes(pipe.buffer[:max_bytes])
            del pipe.buffer[:max_bytes]
            pipe.wake()
            return data
        if self.conn.reset:
            raise trio.BrokenResourceError("connection reset by peer (mock)")
        if pipe.eof:
            return b""
        raise BlockingIOError(errno_module.EAGAIN, "nothing to receive yet")

    async def wait_readable(self) -> None:
        await self.conn.to_stream.wait()

    # -- zero-copy: what a socket with SO_ZEROCOPY offers --------------------------

    def zerocopy_send(self, data: memoryview) -> int:
        n = self._zerocopy_accepts(len(data))
        # Keep a view of what was accepted; the bytes are read at transmission.
        self._accepted = data[:n]
        return n

    def zerocopy_send_with_head(self, head: memoryview, data: memoryview) -> int:
        n = self._zerocopy_accepts(len(head) + len(data))
        h = min(n, len(head))
        # The head is read at transmission too, as Linux reads it: a head
        # that changed meanwhile is caught at the release, as the body is.
        self._accepted_head = head[:h]
        self._accepted = data[: n - h]
        return n

    def _zerocopy_accepts(self, nbytes: int) -> int:
        """How many of *nbytes* one zero-copy call takes now (the test's controls apply)."""
        conn = self.conn
        self._check_open()
        if conn.failures and conn.fail_after == 0:
            err = conn.failures.popleft()
            if err == errno_module.EAGAIN:
                raise BlockingIOError(err, os.strerror(err))
            if err in (errno_module.ECONNRESET, errno_module.EPIPE):
                conn.break_connection()
            raise OSError(err, os.strerror(err))
        if conn.fail_after:
            conn.fail_after -= 1
        n = min(nbytes, conn.room)
        if conn.accept_limit is not None:
            n = min(n, conn.accept_limit)
        if n <= 0:
            raise BlockingIOError(errno_module.EAGAIN, "mock socket buffer full")
        return n

    def completion_records(self) -> Iterator[tuple[Ancdata, bool]]:
        # A generator, not a list: each record leaves the queue only when the
        # parser takes it, so a PrematureReuseError raised by one record
        # leaves the rest queued, and a hold set meanwhile is respected.
        conn = self.conn
        records = conn.records
        while records and not conn.hold_completions:
            lo, hi, copied = records.popleft()
            assert isinstance(lo, int) and isinstance(hi, int)
            yield [pack_zerocopy_record(lo, hi, bool(copied))], False

    def accepted(self, call: Call, counter: int) -> None:
        lease, nbytes, _ = call
        view, self._accepted = self._accepted, None
        head, self._accepted_head = self._accepted_head, None
        assert view is not None and len(view) == nbytes
        conn = self.conn
        send = MockSend(
            counter,
            nbytes,
            conn.name,
            view,
            # A copy, not a hash: copying and comparing cost a few percent
            # of hashing (SHA-256 ran at under 2 GB/s here), and the copy is
            # exact. It holds at most what is in flight, which the pool bounds.
            view.tobytes(),
            lease,
            _call_site() if conn.kernel.call_sites else _NOT_RECORDED,
            head,
        )
        conn.sends[counter] = send
        wire = nbytes if head is None else len(head) + nbytes
        conn.queued.append(_Segment(None, send, wire))
        conn.queued_bytes += wire
        if conn.hold_transmission:
            conn.kernel.wake(conn)
        else:
            conn.kernel.wake_busy(conn)  # what wake() decides, known here: it has work

    def releasing(self, calls: list[Call], first: int) -> None:
        sends = self.conn.sends
        stale = []
        for k in range(len(calls)):
            send = sends.pop((first + k) & 0xFFFFFFFF, None)
            if send is None:  # pragma: no cover - every call is registered
                continue
            view = send.view
            assert view is not None
            head_view = send.head_view
            head_changed = head_view is not None and head_view.tobytes() != send.head
            if head_changed or view.tobytes() != send.snapshot:
                stale.append((send, head_changed))
            if not send.transmitted:
                # Completed before it went out (a test delivered the record
                # early): keep what it held, since the memory is about to go.
                for seg in self.conn.queued:
                    if seg.send is send:
                        seg.data = send.read(0, seg.nbytes)
            view.release()
            send.view = None
            if head_view is not None:
                head_view.release()
                send.head_view = None
        if stale:
            # Reported after the release: the test fails, but the pool stays sound.
            self._stale.extend(stale)

    def after_completion(self) -> None:
        if self._stale:
            stale, self._stale = self._stale, []
            raise _premature(stale)

    # -- closing ----------------------------------------------------------------

    def abort(self) -> None:
        if self.closed:
            # Closed: what is queued still goes out, then EOF (as for a real
            # socket, whose descriptor may serve another connection by now).
            return
        self.conn.break_connection()
        channel = self.conn.channel
        if channel is not None:
            channel.drain()  # the sends a reset drops are reported at once, as Linux does

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        # Whatever is still queued goes out as the peer makes room (the
        # kernel's task keeps pumping); then the peer sees EOF.
        conn.to_peer.eof = True
        conn.to_peer.wake()
        conn.to_stream.wake()
        conn.kernel.wake(conn)


def _premature(stale: list[tuple[MockSend, bool]]) -> PrematureReuseError:
    first, head_changed = stale[0]
    more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
    record = first.record
    if head_changed:
        # The library's own promise: a head is copied or held immutable.
        return PrematureReuseError(
            f"the head sent with {first.lease} changed while the kernel was still reading it:"
            f" zero-copy send #{first.counter} on {first.connection}, made at {first.where}{more}."
            " A head must be copied or held as immutable bytes until the send completes."
        )
    if record is not None and record.adopted is None:
        advice = (
            "Pool memory changed under a send: something wrote through a view, array or"
            " pointer kept from before the lease was sealed."
        )
    else:
        advice = "Do not write an adopted buffer before wait_reusable() returns."
    return PrematureReuseError(
        f"{first.lease} changed while the kernel was still reading it: zero-copy send"
        f" #{first.counter} of {first.nbytes} bytes on {first.connection}, made at"
        f" {first.where}{more}. {advice}"
    )


own_abc_state(MockTransport)  # the compiled build: see own_abc_state
