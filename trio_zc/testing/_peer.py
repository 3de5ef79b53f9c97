"""The far end of a mock connection, and the test's controls for it."""

from __future__ import annotations

import errno as errno_module
from typing import Final, NoReturn

import trio

from .._conflict import ConflictDetector
from .._validate import check_at_least, check_bool, check_receive_size, exact_int
from ._sends import MockSend
from ._wire import _MASK, _Connection

#: The send errors a test may inject.
INJECTABLE_ERRNOS: Final = frozenset(
    {errno_module.ENOBUFS, errno_module.EAGAIN, errno_module.ECONNRESET, errno_module.EPIPE}
)


class MockPeer(trio.abc.HalfCloseableStream):
    """The far end of a mock connection, and the test's controls for it.

    Read what the stream "transmitted" with :meth:`receive_some`; send to
    the stream with :meth:`send_all`. The control methods act on this
    connection only; the same controls on :class:`MockKernel` act on all.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._closed = False
        self._eof_sent = False
        self._receive_conflict = ConflictDetector("another task is receiving on this MockPeer")
        self._send_conflict = ConflictDetector("another task is sending on this MockPeer")

    def __repr__(self) -> str:
        return f"<trio_zc.testing.MockPeer {self._conn.name}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # A copy would share the connection but not the checks that refuse
        # two sends (or two receives) at once, nor the closed flag: as with
        # ZeroCopyStream. Deep copies and pickles went on into the kernel and
        # failed there, with an error that named the kernel (pure build) or a
        # constructor's missing argument (compiled).
        raise TypeError(
            "a MockPeer cannot be copied or pickled: it is one end of its mock connection;"
            " pass the peer itself (MockKernel.open_stream() makes another connection)"
        )

    # -- the stream interface ---------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_receive_size(max_bytes)
        with self._receive_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            conn = self._conn
            pipe = conn.to_peer
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this MockPeer was closed")
                if conn.peer_reading:
                    buffer = pipe.buffer
                    if buffer:
                        if len(buffer) <= max_bytes:
                            data = bytes(buffer)
                            buffer.clear()
                        else:
                            data = bytes(buffer[:max_bytes])
                            del buffer[:max_bytes]
                        pipe.wake()
                        conn.kernel.wake(conn)
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return data
                    if pipe.broken:
                        raise trio.BrokenResourceError("connection reset (mock)")
                    if pipe.eof and not conn.queued:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return b""
                await pipe.wait()

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this MockPeer was closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        channel = self._conn.channel
        if self._conn.reset or (channel is not None and channel.transport.closed):
            raise trio.BrokenResourceError("the stream's end of the connection is closed (mock)")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            conn = self._conn
            with memoryview(data) as view, view.cast("B") as flat:
                sent = 0
                while True:
                    self._check_sendable()
                    n = min(len(flat) - sent, conn.peer_room)
                    if n:
                        conn.to_stream.buffer += flat[sent : sent + n]
                        conn.to_stream.wake()
                        sent += n
                    if sent == len(flat):
                        return
                    await conn.to_stream.wait()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            conn = self._conn
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this MockPeer was closed")
                if conn.peer_room or conn.reset or (conn.channel is not None and conn.channel.transport.closed):
                    return
                await conn.to_stream.wait()

    async def send_eof(self) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this MockPeer was closed")
            if not self._eof_sent:
                self._eof_sent = True
                self._conn.to_stream.eof = True
                self._conn.to_stream.wake()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            conn = self._conn
            conn.to_peer.broken = True
            conn.to_stream.eof = True
            # Unread data is dropped, and its zero-copy sends reported done
            # (the kernel frees them when the peer goes away).
            conn.drop_queued()
            conn.to_peer.buffer.clear()
            conn.to_peer.wake()
            conn.to_stream.wake()
            conn.kernel.wake(conn)
        await trio.lowlevel.checkpoint()

    async def receive_exactly(self, nbytes: int) -> bytes:
        """Receive exactly *nbytes*; :class:`EOFError` if the stream ends first."""
        buf = bytearray()
        while len(buf) < nbytes:
            chunk = await self.receive_some(nbytes - len(buf))
            if not chunk:
                raise EOFError(f"EOF after {len(buf)} of {nbytes} bytes")
            buf += chunk
        return bytes(buf)

    # -- controls ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The connection's name (as in :attr:`MockSend.connection`)."""
        return self._conn.name

    @property
    def sends(self) -> list[MockSend]:
        """Zero-copy sends of this connection not yet completed, oldest first."""
        return sorted(self._conn.sends.values(), key=lambda s: s.counter)

    @property
    def buffered(self) -> int:
        """Bytes queued for transmission plus bytes transmitted but not yet read."""
        return self._conn.queued_bytes + len(self._conn.to_peer.buffer)

    @property
    def discarded(self) -> int:
        """Bytes dropped on arrival since :meth:`discard`."""
        return self._conn.discarded

    def discard(self) -> None:
        """Make this peer a sink: every byte is dropped as it arrives.

        As a client that reads as fast as the kernel delivers, without a
        task doing the reading: for tests (and benchmarks) that only need
        the other end to keep up. Bytes already waiting are dropped too;
        :meth:`receive_some` returns only ``b""``, at EOF. Sends still
        complete only once transmitted, and a lease written while in
        flight is still reported.
        """
        conn = self._conn
        conn.discarding = True
        conn.discarded += len(conn.to_peer.buffer)
        conn.to_peer.buffer.clear()
        conn.to_peer.wake()
        conn.kernel.wake(conn)

    def stop_reading(self) -> None:
        """Make :meth:`receive_some` wait; the connection's buffer fills and senders block."""
        self._conn.peer_reading = False

    def resume_reading(self) -> None:
        """Undo :meth:`stop_reading`: :meth:`receive_some` takes what arrives again."""
        self._conn.peer_reading = True
        self._conn.to_peer.wake()

    def hold_transmission(self) -> None:
        """Leave zero-copy sends accepted but unread until :meth:`transmit`."""
        self._conn.hold_transmission = True

    def transmit(self, nbytes: int | None = None) -> int:
        """Transmit queued sends (at least *nbytes*, default all); bytes moved.

        Reads each zero-copy send's memory now, as a NIC would. Also lifts
        :meth:`hold_transmission`'s hold if *nbytes* is None.
        """
        if nbytes is None:
            self._conn.hold_transmission = False
        else:
            nbytes = check_at_least("transmit's nbytes", nbytes, 0)
        moved = self._conn.transmit(nbytes)
        self._conn.kernel.wake(self._conn)
        return moved

    def hold_completions(self) -> None:
        """Queue completions instead of delivering them."""
        self._conn.hold_completions = True

    def release_completions(
        self, *, coalesce: bool = False, reverse: bool = False, copied: bool | None = None
    ) -> int:
        """Deliver the queued completions now (and stop holding); records delivered.

        *coalesce* merges them into ranges as long as possible, *reverse*
        delivers them newest first, *copied* overrides the COPIED flag.
        """
        coalesce, reverse, copied = check_flags(coalesce=coalesce, reverse=reverse, copied=copied)
        conn = self._conn
        records = list(conn.records)
        conn.records.clear()
        if copied is not None:
            for record in records:
                record[2] = copied
        if coalesce:
            records = _coalesce(records)
        if reverse:
            records.reverse()
        conn.records.extend(records)
        conn.hold_completions = False
        n = len(records)
        if conn.channel is not None:
            conn.channel.drain()
        return n

    def complete(self, lo: int, hi: int, *, copied: bool = False) -> None:
        """Deliver one completion record ``[lo, hi]`` now, whatever it says.

        Ranges that are not outstanding are refused by the library (and
        counted as malformed), exactly as garbage from a real kernel would be.
        """
        lo = exact_int("lo", lo)
        hi = exact_int("hi", hi)
        copied = check_bool("copied", copied)
        conn = self._conn
        # Held records keep what this one does not report (each call is
        # reported once), even where they wrap or overlap it only in part.
        held = [part for r in conn.records for part in _outside(r, lo, hi)]
        conn.records.clear()
        conn.records.append([lo & _MASK, hi & _MASK, copied])
        hold, conn.hold_completions = conn.hold_completions, False
        if conn.channel is not None:
            conn.channel.drain()
        conn.hold_completions = hold
        conn.records.extend(held)

    def lose_completions(self) -> None:
        """Drop every completion from now on, as after a closed socket."""
        self._conn.lose_completions = True
        self._conn.records.clear()

    def mark_copied(self, copied: bool = True) -> None:
        """Mark completions produced from now on COPIED (as loopback does)."""
        self._conn.copied = check_bool("copied", copied)

    def accept_at_most(self, nbytes: int | None) -> None:
        """Make each send call accept at most *nbytes* (None: no limit)."""
        if nbytes is not None:
            nbytes = exact_int("accept_at_most's nbytes", nbytes)
        if nbytes is not None and nbytes < 1:
            raise ValueError("accept_at_most needs a positive size or None")
        self._conn.accept_limit = nbytes

    def fail_sends(self, err: int, *, count: int = 1, after: int = 0) -> None:
        """Fail *count* zero-copy send calls with *err*, after *after* more succeed.

        *err* is one of ENOBUFS, EAGAIN, ECONNRESET or EPIPE. ECONNRESET and
        EPIPE also break the connection, as they do for real.
        """
        if err not in INJECTABLE_ERRNOS:
            raise ValueError(f"fail_sends takes ENOBUFS, EAGAIN, ECONNRESET or EPIPE, not {err!r}")
        count = check_at_least("count", count, 1)
        after = check_at_least("after", after, 0)
        self._conn.failures.extend([err] * count)
        self._conn.fail_after = after

    def reset(self) -> None:
        """Reset the connection, as a peer that crashed would."""
        self._conn.break_connection()


def _outside(record: list[object], lo: int, hi: int) -> list[list[object]]:
    """The parts of a record ``[rlo, rhi, copied]`` outside ``[lo, hi]``, modulo 2**32."""
    rlo, rhi, copied = record
    assert isinstance(rlo, int) and isinstance(rhi, int)
    # Offsets from rlo: the record is [0, n); the range may wrap past 2**32.
    n = ((rhi - rlo) & _MASK) + 1
    start = (lo - rlo) & _MASK
    end = start + ((hi - lo) & _MASK) + 1
    keep = [(0, n)]
    for a, b in ((start, min(end, _MASK + 1)), (0, max(end - _MASK - 1, 0))):
        keep = [(k0, k1) for k0, k1 in ((k, min(e, a)) for k, e in keep) if k0 < k1] + [
            (k0, k1) for k0, k1 in ((max(k, b), e) for k, e in keep) if k0 < k1
        ]
    return [[(rlo + k0) & _MASK, (rlo + k1 - 1) & _MASK, copied] for k0, k1 in sorted(keep)]


def _coalesce(records: list[list[object]]) -> list[list[object]]:
    out: list[list[object]] = []
    for record in records:
        if out:
            tail = out[-1]
            hi, lo = tail[1], record[0]
            assert isinstance(hi, int) and isinstance(lo, int)
            if (hi + 1) & _MASK == lo and tail[2] == record[2]:
                tail[1] = record[1]
                continue
        out.append(list(record))
    return out


def check_flags(*, coalesce: object, reverse: object, copied: object) -> tuple[bool, bool, bool | None]:
    """The flags of :meth:`MockPeer.release_completions`, each True or False (*copied*: or None).

    Checked before anything changes, and here rather than by the parameters'
    ``bool`` annotations: compiled, those refused 1 with mypyc's own message
    where the pure build took it (docs/bad_input.rst).
    """
    return (
        check_bool("coalesce", coalesce),
        check_bool("reverse", reverse),
        None if copied is None else check_bool("copied", copied),
    )
