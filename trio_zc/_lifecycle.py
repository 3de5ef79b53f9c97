"""The lease life cycle: one state machine, with no I/O.

Rules
=====

1. Memory may be written only while its lease is WRITABLE, and a WRITABLE
   lease is never sent.
2. Memory may be sent only while its lease is SEALED or SENDING, and only
   through the sealed handle, which has no way to write.
3. Memory goes back to the pool (FREE) only when *both* its owner released it
   *and* the kernel reported every send of it complete. Neither one alone is
   enough: the owner may release a lease the kernel is still reading
   (DRAINING), and the kernel may finish with a lease its owner still holds
   (SENDING back to SEALED).
4. Memory the kernel may still be reading when nobody can tell us any more
   that it stopped (a socket closed with sends in flight, or the pool's
   drain deadline passed) is never reused. Losing a send's completion is a
   fact about the *memory*, not about its owner: a lease its owner still
   holds becomes TAINTED, and stays sendable and releasable like any sealed
   lease (its bytes can never change again, since its memory is never
   reused); when it is released, or when a lease already released loses a
   send, it ends QUARANTINED: never handed out again and never unmapped.
   Later completions of the lease's other sends are counted and change
   nothing.
5. A lease released while writable views of it are still alive, or while
   another thread is writing into it, is ABANDONED: it cannot go back to
   the pool (a forgotten view could write into the next image) until the
   pool sees that those views and that write are gone.
6. After ``fork()``, the child's copies of the pool and its leases are
   FORKED: the memory is the parent's, and nothing in the child may write,
   send or reuse it. Every handle the child holds is stale from then on.

Theory of operation
===================

Each lease has one :class:`Lifecycle`. Everything that happens to a lease is
an *event* (:class:`Event`); the pair (state, event) is looked up in
:data:`TRANSITIONS`, and a pair that is not in the table is a bug in the
caller, reported as :class:`LifecycleError` with the state and the event.
The only state besides the enum is the number of sends in flight, because
rule 3 needs to know whether a completion was the last one: the machine
picks COMPLETE or LAST_COMPLETE itself from that count, so callers cannot
get it wrong.

The machine does no I/O and knows nothing of Trio, mappings or the kernel;
:mod:`trio_zc._lease` and :mod:`trio_zc._pool` drive it and act on the
state it reaches (give the memory back to the allocator or withhold it,
punch out pages a socket may hold, wake waiters). Adopted buffers (memory the
application owns) follow the same machine, starting at SEALED; for them FREE
means "yours again".

The documentation's diagram is generated from :data:`TRANSITIONS` by
:func:`render_mermaid` and :func:`render_table`, and a test checks that the
page matches, so the picture cannot drift from the code.
"""

from __future__ import annotations

import enum
from typing import Final


class LeaseState(enum.Enum):
    """Where a lease is in its life cycle."""

    # Members are singletons, so identity hashing is right, and it is done
    # in C: Enum's own __hash__ is Python code, run on every transition.
    __hash__ = object.__hash__

    #: The owner holds write access; the lease has never been sent.
    WRITABLE = "writable"
    #: Read-only, held by its owner, no send in flight.
    SEALED = "sealed"
    #: Read-only, held by its owner, at least one send in flight.
    SENDING = "sending"
    #: Released by its owner; waiting for the kernel to finish its sends.
    DRAINING = "draining"
    #: Released while writable views were alive (or a thread was writing); waiting for them to go.
    ABANDONED = "abandoned"
    #: Held by its owner and sendable, but a send of it was lost (its
    #: connection closed before the kernel was done): its memory is never reused.
    TAINTED = "tainted"
    #: Back in the pool (or, for an adopted buffer, the application's again).
    FREE = "free"
    #: The kernel never confirmed it was done; the memory is withheld forever.
    QUARANTINED = "quarantined"
    #: In a process forked from the pool's: the memory is the parent's, never used here.
    FORKED = "forked"


class Event(enum.Enum):
    """Something that happens to a lease."""

    __hash__ = object.__hash__  # as for LeaseState

    #: The owner sealed the lease (no writable view was alive).
    SEAL = "seal"
    #: A send of the lease was handed to the kernel.
    SEND = "send"
    #: The kernel finished one send; others are still in flight.
    COMPLETE = "complete"
    #: The kernel finished the last send in flight.
    LAST_COMPLETE = "last complete"
    #: The owner gave the lease up, with no writable view alive.
    RELEASE = "release"
    #: The owner gave up a writable lease while views of it were alive.
    ABANDON = "abandon"
    #: The pool found that an abandoned lease's views (and writing thread) are gone.
    VIEWS_GONE = "views gone"
    #: One send of the lease will never be reported complete: its socket
    #: closed first, or the pool's drain deadline passed.
    QUARANTINE = "quarantine"
    #: The process forked, and this is the child's copy of the lease.
    FORK = "fork"


S = LeaseState
E = Event

#: The whole life cycle: (state, event) -> next state.
TRANSITIONS: Final[dict[tuple[LeaseState, Event], LeaseState]] = {
    (S.WRITABLE, E.SEAL): S.SEALED,
    (S.WRITABLE, E.RELEASE): S.FREE,
    (S.WRITABLE, E.ABANDON): S.ABANDONED,
    (S.ABANDONED, E.VIEWS_GONE): S.FREE,
    (S.SEALED, E.SEND): S.SENDING,
    (S.SEALED, E.RELEASE): S.FREE,
    (S.SENDING, E.SEND): S.SENDING,
    (S.SENDING, E.COMPLETE): S.SENDING,
    (S.SENDING, E.LAST_COMPLETE): S.SEALED,
    (S.SENDING, E.RELEASE): S.DRAINING,
    # The owner still holds it: it may go on sending and must still release.
    (S.SENDING, E.QUARANTINE): S.TAINTED,
    # A send that was already running when the owner let go goes on: it
    # holds the memory itself until it returns (see ZeroCopyStream.send_lease).
    (S.DRAINING, E.SEND): S.DRAINING,
    (S.DRAINING, E.COMPLETE): S.DRAINING,
    (S.DRAINING, E.LAST_COMPLETE): S.FREE,
    (S.DRAINING, E.QUARANTINE): S.QUARANTINED,
    # Tainted memory is never reused, so its bytes stay the sealed ones for
    # good: sending it again is safe, and no completion can free it.
    (S.TAINTED, E.SEND): S.TAINTED,
    (S.TAINTED, E.COMPLETE): S.TAINTED,
    (S.TAINTED, E.LAST_COMPLETE): S.TAINTED,
    (S.TAINTED, E.QUARANTINE): S.TAINTED,
    (S.TAINTED, E.RELEASE): S.QUARANTINED,
    # Quarantine is decided per send (one socket went away with its
    # completions); the lease's other sends may still complete, and change
    # nothing.
    (S.QUARANTINED, E.COMPLETE): S.QUARANTINED,
    # A send already running (waiting for room) when another stream's close
    # quarantined the lease may still hand it to the kernel: quarantined
    # memory is never reused, so its bytes stay the sealed ones for good.
    (S.QUARANTINED, E.SEND): S.QUARANTINED,
    (S.QUARANTINED, E.LAST_COMPLETE): S.QUARANTINED,
    (S.QUARANTINED, E.QUARANTINE): S.QUARANTINED,
    # In a forked child, every lease the pool still tracked.
    (S.WRITABLE, E.FORK): S.FORKED,
    (S.SEALED, E.FORK): S.FORKED,
    (S.SENDING, E.FORK): S.FORKED,
    (S.DRAINING, E.FORK): S.FORKED,
    (S.ABANDONED, E.FORK): S.FORKED,
    (S.TAINTED, E.FORK): S.FORKED,
}

#: States in which the application still holds a valid handle.
OWNED_STATES: Final = frozenset({S.WRITABLE, S.SEALED, S.SENDING, S.TAINTED})
#: States in which a sealed handle is valid (it can be sent and released).
SENDABLE_STATES: Final = frozenset({S.SEALED, S.SENDING, S.TAINTED})
#: States that never lead anywhere else.
TERMINAL_STATES: Final = frozenset({S.FREE, S.QUARANTINED, S.FORKED})

del S, E


class LifecycleError(RuntimeError):
    """An event that the life cycle does not allow in the current state."""

    def __init__(self, state: LeaseState, event: Event) -> None:
        super().__init__(f"event {event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


class Lifecycle:
    """The state of one lease, advanced only through :data:`TRANSITIONS`."""

    __slots__ = ("state", "inflight")

    def __init__(self, state: LeaseState = LeaseState.WRITABLE) -> None:
        if state is not LeaseState.WRITABLE and state is not LeaseState.SEALED:
            raise ValueError(f"a lease starts writable or sealed, not {state.value}")
        self.state: LeaseState = state
        #: Sends handed to the kernel and not yet reported complete.
        self.inflight = 0

    def _fire(self, event: Event) -> LeaseState:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LifecycleError(self.state, event)
        self.state = new
        return new

    def seal(self) -> LeaseState:
        return self._fire(Event.SEAL)

    # send() and complete() run for every send and every completion, so they
    # look the table up themselves: a call to _fire() costs as much as the
    # lookup. The table still decides.

    def send(self) -> LeaseState:
        new = TRANSITIONS.get((self.state, Event.SEND))
        if new is None:
            raise LifecycleError(self.state, Event.SEND)
        self.state = new
        self.inflight += 1
        return new

    def complete(self) -> LeaseState:
        """Record that the kernel finished one send of this lease."""
        if self.inflight == 0:
            # Not in the table on purpose: a completion with nothing in flight
            # means the caller's accounting is wrong, whatever the state.
            raise LifecycleError(self.state, Event.COMPLETE)
        event = Event.LAST_COMPLETE if self.inflight == 1 else Event.COMPLETE
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LifecycleError(self.state, event)
        self.state = new
        self.inflight -= 1
        return new

    def release(self, *, views_alive: bool = False) -> LeaseState:
        return self._fire(Event.ABANDON if views_alive else Event.RELEASE)

    def views_gone(self) -> LeaseState:
        return self._fire(Event.VIEWS_GONE)

    def quarantine(self) -> LeaseState:
        return self._fire(Event.QUARANTINE)

    def fork(self) -> LeaseState:
        return self._fire(Event.FORK)

    @property
    def owned(self) -> bool:
        """Whether the application still holds a valid handle."""
        return self.state in OWNED_STATES

    @property
    def done(self) -> bool:
        """Whether the lease reached its end (FREE or QUARANTINED)."""
        return self.state in TERMINAL_STATES


def render_table() -> str:
    """The transition table as reStructuredText, for the docs."""
    rows = [(s.value, e.value, n.value) for (s, e), n in TRANSITIONS.items()]
    headers = ("state", "event", "next state")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: tuple[str, str, str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule])


def render_mermaid() -> str:
    """The life cycle as a Mermaid state diagram, for the docs."""
    lines = ["stateDiagram-v2"]
    lines.append(f"    [*] --> {LeaseState.WRITABLE.name}: acquire")
    lines.append(f"    [*] --> {LeaseState.SEALED.name}: adopt")
    for (state, event), new in TRANSITIONS.items():
        lines.append(f"    {state.name} --> {new.name}: {event.value}")
    for state in sorted(TERMINAL_STATES, key=lambda s: s.name):
        lines.append(f"    {state.name} --> [*]")
    return "\n".join(lines)
