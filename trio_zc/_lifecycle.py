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

The documentation's diagram (an SVG picture) and table are generated from
:data:`TRANSITIONS` by :func:`render_svg` and :func:`render_table`
(``python -m trio_zc lifecycle --write-docs``), and a test checks that the
page and the picture match, so they cannot drift from the code.
:func:`render_mermaid` gives the same diagram as Mermaid source.
"""

from __future__ import annotations

import enum
from typing import Final

from ._mypyc import mypyc_attr


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

# The members the per-image methods below use, as module globals: reading
# ``Event.SEND`` goes through the enum class (about 50 ns on CPython 3.11),
# a global costs a few. Several run for every image.
_WRITABLE, _SEALED = LeaseState.WRITABLE, LeaseState.SEALED
_SEAL, _SEND, _RELEASE, _ABANDON = Event.SEAL, Event.SEND, Event.RELEASE, Event.ABANDON
_COMPLETE, _LAST_COMPLETE = Event.COMPLETE, Event.LAST_COMPLETE


def _column(event: Event) -> dict[LeaseState, LeaseState]:
    """The rows of :data:`TRANSITIONS` for *event*, keyed by state alone.

    For the methods that run per image: a lookup by state costs half of one
    by a (state, event) tuple, which must be built and hashed first, and
    whose time varied from process to process with where the members
    happened to lie in memory (their hashes are their addresses).
    """
    return {state: new for (state, e), new in TRANSITIONS.items() if e is event}


_ON_SEAL, _ON_SEND = _column(_SEAL), _column(_SEND)
_ON_RELEASE, _ON_ABANDON = _column(_RELEASE), _column(_ABANDON)
_ON_COMPLETE, _ON_LAST_COMPLETE = _column(_COMPLETE), _column(_LAST_COMPLETE)


@mypyc_attr(native_class=False)
class LifecycleError(RuntimeError):
    """An event that the life cycle does not allow in the current state."""

    def __init__(self, state: LeaseState, event: Event) -> None:
        super().__init__(f"event {event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


class Lifecycle:
    """The state of one lease, advanced only through :data:`TRANSITIONS`."""

    __slots__ = ("state", "inflight")

    def __init__(self, state: LeaseState = _WRITABLE) -> None:
        if state is not _WRITABLE and state is not _SEALED:
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

    # seal(), send(), complete() and release() run for every image, so they
    # look the table up themselves (in its columns, made from it at import):
    # a call to _fire() costs as much as the lookup. The table still decides.

    def seal(self) -> LeaseState:
        new = _ON_SEAL.get(self.state)
        if new is None:
            raise LifecycleError(self.state, _SEAL)
        self.state = new
        return new

    def send(self) -> LeaseState:
        new = _ON_SEND.get(self.state)
        if new is None:
            raise LifecycleError(self.state, _SEND)
        self.state = new
        self.inflight += 1
        return new

    def complete(self) -> LeaseState:
        """Record that the kernel finished one send of this lease."""
        if self.inflight == 0:
            # Not in the table on purpose: a completion with nothing in flight
            # means the caller's accounting is wrong, whatever the state.
            raise LifecycleError(self.state, _COMPLETE)
        new = (_ON_LAST_COMPLETE if self.inflight == 1 else _ON_COMPLETE).get(self.state)
        if new is None:
            raise LifecycleError(self.state, _LAST_COMPLETE if self.inflight == 1 else _COMPLETE)
        self.state = new
        self.inflight -= 1
        return new

    def release(self, *, views_alive: bool = False) -> LeaseState:
        new = (_ON_ABANDON if views_alive else _ON_RELEASE).get(self.state)
        if new is None:
            raise LifecycleError(self.state, _ABANDON if views_alive else _RELEASE)
        self.state = new
        return new

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


# Where each state sits in the SVG diagram (the centre of its box), in
# pixels. The layout is fixed by hand -- the edges and their labels are
# generated from TRANSITIONS -- so a new state must get a place here, and
# render_svg() refuses to draw without one.
_SVG_PLACES: Final = {
    LeaseState.WRITABLE: (130, 170),
    LeaseState.SEALED: (420, 170),
    LeaseState.SENDING: (700, 170),
    LeaseState.TAINTED: (950, 170),
    LeaseState.ABANDONED: (130, 340),
    LeaseState.DRAINING: (700, 340),
    LeaseState.QUARANTINED: (950, 340),
    LeaseState.FREE: (420, 480),
    LeaseState.FORKED: (950, 580),
}
# Self-loops drawn above the box (the others below).
_SVG_LOOPS_ABOVE: Final = frozenset({LeaseState.SENDING, LeaseState.TAINTED})
_SVG_START: Final = (130, 40)
_SVG_SIZE: Final = (1060, 640)
_BOX_W, _BOX_H = 136, 40
# Average width of a character of the labels' font, to size their backgrounds.
_CHAR_W = 7.0


def _svg_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _label_lines(events: list[str]) -> list[str]:
    """Event names for one label, two to a line."""
    return [", ".join(events[i : i + 2]) for i in range(0, len(events), 2)]


def _svg_label(x: float, y: float, lines: list[str], *, css: str = "label") -> str:
    """Centred text on a white background, the middle line at *y*."""
    height = 16 * len(lines)
    width = max(len(line) for line in lines) * _CHAR_W + 8
    top = y - height / 2
    out = [f'<rect class="label-bg" x="{x - width / 2:.0f}" y="{top:.0f}" width="{width:.0f}" height="{height}"/>']
    for i, line in enumerate(lines):
        out.append(f'<text class="{css}" x="{x:.0f}" y="{top + 12 + 16 * i:.0f}">{_svg_escape(line)}</text>')
    return "".join(out)


def _box_exit(cx: float, cy: float, tx: float, ty: float, half_w: float, half_h: float) -> tuple[float, float]:
    """Where the line from the box's centre (cx, cy) towards (tx, ty) leaves the box."""
    dx, dy = tx - cx, ty - cy
    if dx == 0 and dy == 0:
        return cx, cy
    scale = min(half_w / abs(dx) if dx else float("inf"), half_h / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


def _svg_edges() -> list[tuple[list[LeaseState], LeaseState, list[str]]]:
    """TRANSITIONS as drawn: (sources, target, events), one per arrow.

    Transitions between the same two states share an arrow. Where one event
    leads from many states to the same state (``fork``), the sources are
    gathered into one box with one arrow, instead of arrows across the page.
    """
    pairs: dict[tuple[LeaseState, LeaseState], list[str]] = {}
    for (state, event), new in TRANSITIONS.items():
        pairs.setdefault((state, new), []).append(event.value)
    fanned: dict[tuple[str, LeaseState], list[LeaseState]] = {}
    for (state, new), events in pairs.items():
        if len(events) == 1 and state is not new:
            fanned.setdefault((events[0], new), []).append(state)
    gathered = {key: sources for key, sources in fanned.items() if len(sources) > 2}
    edges: list[tuple[list[LeaseState], LeaseState, list[str]]] = []
    for (state, new), events in pairs.items():
        if len(events) == 1 and (events[0], new) in gathered:
            continue
        edges.append(([state], new, events))
    for (name, new), sources in gathered.items():
        edges.append((sources, new, [name]))
    return edges


def render_svg() -> str:
    """The life cycle as an SVG state diagram, for the docs.

    The states' places are fixed (:data:`_SVG_PLACES`); every arrow and
    label comes from :data:`TRANSITIONS`. Each arrow is a ``<g>`` element
    whose ``data-from``, ``data-to`` and ``data-events`` attributes say
    which transitions it draws, so a test can read the picture back.
    """
    missing = [s.value for s in LeaseState if s not in _SVG_PLACES]
    if missing:
        raise ValueError(f"the diagram has no place for the state(s) {', '.join(missing)}")
    width, height = _SVG_SIZE
    hw, hh = _BOX_W / 2 + 3, _BOX_H / 2 + 3  # arrows end just outside the box
    pairs = {(s[0], t) for s, t, _ in _svg_edges() if len(s) == 1}
    body: list[str] = []
    labels: list[str] = []

    def edge_group(sources: list[str], target: str, events: list[str], path: str, dashed: bool = False) -> None:
        css = "edge dashed" if dashed else "edge"
        body.append(
            f'<g class="{css}" data-from="{" ".join(sources)}" data-to="{target}"'
            f' data-events="{_svg_escape("|".join(events))}"><path d="{path}" marker-end="url(#arrow)"/></g>'
        )

    # The two ways in: acquire (a new writable lease) and adopt (a sealed one).
    sx, sy = _SVG_START
    body.append(f'<circle class="start" cx="{sx}" cy="{sy}" r="9"/>')
    for target, event in ((LeaseState.WRITABLE, "acquire"), (LeaseState.SEALED, "adopt")):
        tx, ty = _SVG_PLACES[target]
        ex, ey = _box_exit(tx, ty, sx, sy, hw, hh)
        ax, ay = _box_exit(sx, sy, tx, ty, 11, 11)
        edge_group(["[*]"], target.name, [event], f"M{ax:.1f},{ay:.1f} L{ex:.1f},{ey:.1f}")
        labels.append(_svg_label((ax + ex) / 2 + (0 if ax == ex else 10), (ay + ey) / 2 - (0 if ax == ex else 12), [event]))

    for sources, target, events in _svg_edges():
        lines = _label_lines(events)
        tx, ty = _SVG_PLACES[target]
        if len(sources) > 1:
            # One box for all the sources, one arrow from it.
            names = ", ".join(s.value for s in sources)
            gw = len(names) * _CHAR_W + 24
            gx, gy = 420, ty
            body.append(
                f'<rect class="group" x="{gx - gw / 2:.0f}" y="{gy - hh:.0f}" width="{gw:.0f}"'
                f' height="{_BOX_H + 6}" rx="8"/><text class="group" x="{gx}" y="{gy + 5}">{names}</text>'
            )
            x0 = gx + gw / 2 + 2
            x1 = tx - hw
            edge_group([s.name for s in sources], target.name, events, f"M{x0:.1f},{gy} L{x1:.1f},{ty}", dashed=True)
            labels.append(_svg_label((x0 + x1) / 2, ty - 14, lines))
            continue
        (source,) = sources
        x, y = _SVG_PLACES[source]
        if source is target:
            above = source in _SVG_LOOPS_ABOVE
            sign = -1 if above else 1
            y0 = y + sign * (_BOX_H / 2)
            path = (
                f"M{x - 22},{y0} C{x - 50},{y0 + sign * 62} {x + 50},{y0 + sign * 62} {x + 22},{y0 + sign * 4}"
            )
            edge_group([source.name], target.name, events, path)
            ly = y0 + sign * (52 + 8 * len(lines))
            labels.append(_svg_label(x, ly, lines))
            continue
        if (target, source) in pairs:
            # Both ways between two states: two arcs, each bent to its own side.
            dx, dy = tx - x, ty - y
            length = (dx * dx + dy * dy) ** 0.5
            nx, ny = -dy / length * 34, dx / length * 34
            mx, my = (x + tx) / 2 + nx, (y + ty) / 2 + ny
            ax, ay = _box_exit(x, y, mx, my, hw, hh)
            ex, ey = _box_exit(tx, ty, mx, my, hw, hh)
            edge_group([source.name], target.name, events, f"M{ax:.1f},{ay:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}")
            labels.append(_svg_label(mx, my + (ny / 34) * 4, lines))
            continue
        ax, ay = _box_exit(x, y, tx, ty, hw, hh)
        ex, ey = _box_exit(tx, ty, x, y, hw, hh)
        edge_group([source.name], target.name, events, f"M{ax:.1f},{ay:.1f} L{ex:.1f},{ey:.1f}")
        labels.append(_svg_label((ax + ex) / 2, (ay + ey) / 2, lines))

    for state, (x, y) in _SVG_PLACES.items():
        final = state in TERMINAL_STATES
        body.append(
            f'<g class="state{" final" if final else ""}" data-state="{state.name}">'
            f'<rect x="{x - _BOX_W / 2}" y="{y - _BOX_H / 2}" width="{_BOX_W}" height="{_BOX_H}" rx="10"/>'
            + (
                f'<rect class="inner" x="{x - _BOX_W / 2 + 4}" y="{y - _BOX_H / 2 + 4}" width="{_BOX_W - 8}"'
                f' height="{_BOX_H - 8}" rx="7"/>'
                if final
                else ""
            )
            + f'<text x="{x}" y="{y + 5}">{state.value}</text></g>'
        )
    legend = (
        f'<text class="legend" x="20" y="{height - 16}">filled circle: where a lease begins (acquire, or adopt of'
        " your own buffer); double border: where it ends. Generated from trio_zc's transition table.</text>"
    )
    style = (
        "text{font-family:'DejaVu Sans',Verdana,Arial,sans-serif;font-size:13px;fill:#1b1b1b;text-anchor:middle}"
        ".state rect{fill:#eef4fb;stroke:#2c5d8f;stroke-width:1.6}"
        ".state text{font-weight:bold;font-size:14px}"
        ".state.final rect{fill:#f3f3f3;stroke:#444}.state.final rect.inner{fill:none}"
        ".edge path{fill:none;stroke:#444;stroke-width:1.4}.edge.dashed path{stroke-dasharray:6 4}"
        ".label-bg{fill:#fff;opacity:0.92}.label{font-size:12.5px;fill:#7a2e0e}"
        ".start{fill:#1b1b1b}.group{fill:#fafafa;stroke:#888;stroke-dasharray:5 3}"
        "text.group{fill:#333;stroke:none;font-style:italic}"
        "text.legend{text-anchor:start;font-size:12px;fill:#555}"
    )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
            f' viewBox="0 0 {width} {height}" role="img" aria-labelledby="title">',
            "<title id=\"title\">The lease life cycle: states and transitions</title>",
            f"<style>{style}</style>",
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8"'
            ' orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>',
            *body,
            *labels,
            legend,
            "</svg>",
            "",
        ]
    )
