from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET

import pytest


from trio_zc._lifecycle import (
    OWNED_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    LeaseState,
    Lifecycle,
    LifecycleError,
    render_mermaid,
    render_svg,
    render_table,
)

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
SVG = "{http://www.w3.org/2000/svg}"


def test_every_state_is_reachable_and_every_live_state_can_end() -> None:
    reachable = {LeaseState.WRITABLE, LeaseState.SEALED}
    changed = True
    while changed:
        changed = False
        for (state, _), new in TRANSITIONS.items():
            if state in reachable and new not in reachable:
                reachable.add(new)
                changed = True
    assert reachable == set(LeaseState)
    for state in set(LeaseState) - TERMINAL_STATES:
        seen, frontier = {state}, [state]
        while frontier:
            s = frontier.pop()
            for (src, _), new in TRANSITIONS.items():
                if src is s and new not in seen:
                    seen.add(new)
                    frontier.append(new)
        assert seen & TERMINAL_STATES, f"{state} can never end"


def test_terminal_states_have_no_way_out() -> None:
    assert all(new is state for (state, _), new in TRANSITIONS.items() if state in TERMINAL_STATES)


def test_quarantined_lease_absorbs_late_completions() -> None:
    lc = Lifecycle(LeaseState.SEALED)
    lc.send()
    lc.send()
    lc.release()
    lc.quarantine()
    lc.complete()
    lc.complete()
    assert lc.state is LeaseState.QUARANTINED and lc.inflight == 0
    with pytest.raises(LifecycleError):
        lc.complete()


def test_a_lost_send_taints_a_held_lease_which_stays_its_owners() -> None:
    lc = Lifecycle(LeaseState.SEALED)
    lc.send()
    lc.send()
    lc.quarantine()
    assert lc.state is LeaseState.TAINTED and lc.owned and not lc.done
    lc.complete()
    lc.complete()
    assert lc.state is LeaseState.TAINTED and lc.inflight == 0
    # Still sendable (its memory is never reused, so its bytes cannot change) ...
    lc.send()
    lc.complete()
    assert lc.state is LeaseState.TAINTED
    # ... and released into quarantine, never back to the pool.
    lc.release()
    assert lc.state is LeaseState.QUARANTINED and lc.done


def test_fork_ends_every_live_lease_in_the_child() -> None:
    for start in (LeaseState.WRITABLE, LeaseState.SEALED):
        lc = Lifecycle(start)
        lc.fork()
        assert lc.state is LeaseState.FORKED and lc.done and not lc.owned
    for state in set(LeaseState) - TERMINAL_STATES:
        assert TRANSITIONS[(state, Event.FORK)] is LeaseState.FORKED


def test_memory_returns_only_after_release_and_last_completion() -> None:
    lc = Lifecycle()
    lc.seal()
    lc.send()
    lc.send()
    assert lc.state is LeaseState.SENDING and lc.inflight == 2
    lc.release()
    assert lc.state is LeaseState.DRAINING and not lc.done
    lc.complete()
    assert lc.state is LeaseState.DRAINING
    lc.complete()
    assert lc.state is LeaseState.FREE and lc.done and lc.inflight == 0


def test_kernel_finishing_first_returns_the_lease_to_its_owner() -> None:
    lc = Lifecycle()
    lc.seal()
    lc.send()
    lc.complete()
    assert lc.state is LeaseState.SEALED and lc.owned
    lc.release()
    assert lc.state is LeaseState.FREE


def test_writable_leases_cannot_be_sent() -> None:
    lc = Lifecycle()
    with pytest.raises(LifecycleError, match="'send' is not allowed in state 'writable'"):
        lc.send()
    assert lc.state is LeaseState.WRITABLE and lc.inflight == 0


def test_completion_with_nothing_in_flight_is_refused() -> None:
    lc = Lifecycle(LeaseState.SEALED)
    with pytest.raises(LifecycleError):
        lc.complete()
    assert lc.state is LeaseState.SEALED


def test_abandoned_lease_waits_for_its_views() -> None:
    lc = Lifecycle()
    lc.release(views_alive=True)
    assert lc.state is LeaseState.ABANDONED and not lc.owned and not lc.done
    lc.views_gone()
    assert lc.state is LeaseState.FREE


def test_quarantine_only_with_sends_in_flight() -> None:
    lc = Lifecycle(LeaseState.SEALED)
    with pytest.raises(LifecycleError):
        lc.quarantine()
    lc.send()
    lc.release()
    lc.quarantine()
    assert lc.state is LeaseState.QUARANTINED and lc.done
    with pytest.raises(LifecycleError):
        lc.release()


@pytest.mark.parametrize("state", [LeaseState.SENDING, LeaseState.FREE])
def test_leases_start_writable_or_sealed(state: LeaseState) -> None:
    with pytest.raises(ValueError):
        Lifecycle(state)


@pytest.mark.parametrize("state", list(LeaseState))
@pytest.mark.parametrize("inflight", [0, 1, 2])
def test_every_event_method_does_what_the_table_says(state: LeaseState, inflight: int) -> None:
    """The methods look transitions up in columns made from TRANSITIONS; they must agree with it."""
    methods = {
        Event.SEAL: Lifecycle.seal,
        Event.SEND: Lifecycle.send,
        Event.RELEASE: Lifecycle.release,
        Event.ABANDON: lambda lc: lc.release(views_alive=True),
        Event.VIEWS_GONE: Lifecycle.views_gone,
        Event.QUARANTINE: Lifecycle.quarantine,
        Event.FORK: Lifecycle.fork,
        # complete() picks its event from the count of sends in flight.
        Event.LAST_COMPLETE if inflight == 1 else Event.COMPLETE: Lifecycle.complete,
    }
    for event, method in methods.items():
        lc = Lifecycle()
        lc.state, lc.inflight = state, inflight
        expected = TRANSITIONS.get((state, event))
        if event in (Event.COMPLETE, Event.LAST_COMPLETE) and inflight == 0:
            expected = None  # refused whatever the table says (see complete())
        if expected is None:
            with pytest.raises(LifecycleError):
                method(lc)
            assert (lc.state, lc.inflight) == (state, inflight)  # a refusal changes nothing
        else:
            assert method(lc) is expected and lc.state is expected
            assert lc.inflight == inflight + (event is Event.SEND) - (
                event in (Event.COMPLETE, Event.LAST_COMPLETE)
            )


def test_owned_states() -> None:
    assert OWNED_STATES == {LeaseState.WRITABLE, LeaseState.SEALED, LeaseState.SENDING, LeaseState.TAINTED}


def test_rendered_diagram_and_table_cover_every_transition() -> None:
    mermaid = render_mermaid()
    table = render_table()
    for (state, event), new in TRANSITIONS.items():
        assert f"{state.name} --> {new.name}: {event.value}" in mermaid
        assert any(
            line.split("  ")[0] == state.value and event.value in line and line.endswith(new.value)
            for line in table.splitlines()
        )
    assert len(table.splitlines()) == len(TRANSITIONS) + 4
    assert {e.value for e in Event} - {"complete"} <= {k[1].value for k in TRANSITIONS} | {"complete"}


def _between(text: str, begin: str, end: str) -> str:
    start = text.index(begin) + len(begin)
    return text[start : text.index(end, start)]


def test_docs_page_shows_the_diagram_and_table_as_generated() -> None:
    """The diagram (an SVG picture) and the table in the docs are generated from
    TRANSITIONS; regenerate both with ``python -m trio_zc lifecycle --write-docs``
    when the table changes."""
    page = (DOCS / "lifecycle.rst").read_text()
    diagram = _between(page, ".. BEGIN GENERATED DIAGRAM\n", ".. END GENERATED DIAGRAM")
    table = _between(page, ".. BEGIN GENERATED TABLE\n", ".. END GENERATED TABLE")
    # A picture, not Mermaid source shown as text (no Mermaid renderer runs offline).
    assert diagram.strip().startswith(".. image:: _static/lifecycle.svg")
    assert "stateDiagram" not in page
    assert (DOCS / "_static" / "lifecycle.svg").read_text() == render_svg()
    assert table.strip() == render_table()


def _drawn_edges(svg: str) -> set[tuple[str, str, str]]:
    """(from, event, to) for every transition the SVG's arrows say they draw."""
    root = ET.fromstring(svg)
    drawn = set()
    for group in root.iter(f"{SVG}g"):
        if "edge" in group.get("class", "").split():
            for source in group.attrib["data-from"].split():
                for event in group.attrib["data-events"].split("|"):
                    drawn.add((source, event, group.attrib["data-to"]))
    return drawn


def test_svg_diagram_draws_every_transition_and_state_and_nothing_else() -> None:
    svg = render_svg()
    expected = {(s.name, e.value, n.name) for (s, e), n in TRANSITIONS.items()}
    expected |= {("[*]", "acquire", "WRITABLE"), ("[*]", "adopt", "SEALED")}
    assert _drawn_edges(svg) == expected
    root = ET.fromstring(svg)
    boxes = {
        g.attrib["data-state"]: "final" in g.attrib["class"] for g in root.iter(f"{SVG}g") if "data-state" in g.attrib
    }
    assert boxes == {s.name: s in TERMINAL_STATES for s in LeaseState}
    # Every label names events of the table (or the two ways in).
    labels = [t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") == "label"]
    events = {e.value for e in Event} | {"acquire", "adopt"}
    assert labels and all(set(text.split(", ")) <= events for text in labels)


def test_svg_diagram_follows_a_changed_table() -> None:
    """The arrows come from TRANSITIONS, not from a drawing of it."""
    # Changed in place: the compiled build reads the module's dict natively,
    # past any new binding of the name. Restored whole, in its order (the
    # drawings follow it; monkeypatch.delitem would put the key back last).
    saved = dict(TRANSITIONS)
    try:
        del TRANSITIONS[(LeaseState.SEALED, Event.RELEASE)]
        TRANSITIONS[(LeaseState.ABANDONED, Event.RELEASE)] = LeaseState.QUARANTINED
        drawn = _drawn_edges(render_svg())
    finally:
        TRANSITIONS.clear()
        TRANSITIONS.update(saved)
    assert ("SEALED", "release", "FREE") not in drawn
    assert ("ABANDONED", "release", "QUARANTINED") in drawn
    assert list(TRANSITIONS.items()) == list(saved.items())
