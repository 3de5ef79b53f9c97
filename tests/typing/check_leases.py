"""Mistakes with leases that mypy must reject (see README.md here)."""

from __future__ import annotations

import hashlib

import trio_zc


async def misuse(pool: trio_zc.BufferPool, stream: trio_zc.ZeroCopyStream) -> None:
    writable = await pool.acquire(4096)
    sealed = writable.seal()

    # Sending a writable lease.
    await stream.send_lease(writable)  # type: ignore[call-overload]
    # Sending anything else as a lease.
    await stream.send_lease(b"bytes")  # type: ignore[call-overload]
    # A head is bytes-like: not text, not a lease, and only by keyword.
    await stream.send_lease(sealed, head="HTTP/1.1 200 OK\r\n\r\n")  # type: ignore[call-overload]
    await stream.send_lease(sealed, head=sealed)  # type: ignore[call-overload]
    await stream.send_lease(sealed, 0, None, b"head")  # type: ignore[call-overload]

    # Writing through a sealed lease: it has no write API...
    sealed.write(b"new image")  # type: ignore[attr-defined]
    sealed.ndarray((64, 64))  # type: ignore[attr-defined]
    # ...and its view is read-only to the checker too.
    sealed.view()[0] = 1  # type: ignore[index]
    sealed.view()[0:4] = b"abcd"  # type: ignore[index]

    # Sealing twice through the sealed type.
    sealed.seal()  # type: ignore[attr-defined]

    # No public constructors.
    trio_zc.SealedLease()  # type: ignore[call-arg]
    trio_zc.WritableLease()  # type: ignore[call-arg]

    # Adopted buffers come back sealed, not writable.
    adopted = pool.adopt(bytearray(16))
    adopted.view()[0] = 0  # type: ignore[index]

    # What must keep type-checking: reading a sealed lease and sending it.
    hashlib.sha256(sealed.view()).hexdigest()
    bytes(sealed.view())
    await stream.send_lease(sealed)
    await stream.send_lease(adopted, offset=1, nbytes=4)
    await stream.send_lease(sealed, head=b"HTTP/1.1 200 OK\r\n\r\n")
    await stream.send_lease(sealed, 10, 100, head=bytearray(b"frame header"))
    await stream.send_lease(sealed, head=memoryview(b"head"))
    sealed.release()
    await adopted.wait_reusable()
