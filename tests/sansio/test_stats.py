"""The send counters (trio_zc/_stats.py): typed fields, one method per event, sums kept by the parent.

Kernels count through methods named for what happened (``refused()``,
``malformed()``, ``quarantined()``...), never through a counter's name
in a string: a misspelt name is a type error now, not a new attribute at
run time (or an AttributeError in a close path).
"""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import pytest

import trio_zc
from trio_zc._stats import Counters, SendStatistics

PACKAGE = Path(trio_zc.__file__).resolve().parent

#: Each event, and what it must change (everything else stays 0).
EVENTS = [
    ("copied", (100,), {"bytes_copied": 100}),
    ("zerocopy_call", (100,), {"zerocopy_calls": 1, "bytes_in_flight": 100}),
    ("completed", (2, 100, 90, False), {"completions": 2, "bytes_in_flight": -100, "bytes_zerocopy": 90}),
    ("completed", (2, 100, 90, True), {"completions": 2, "bytes_in_flight": -100, "bytes_kernel_copied": 90}),
    ("sent_by_reference", (100,), {"bytes_zerocopy": 100}),
    ("refused", (), {"enobufs": 1}),
    ("malformed", (), {"malformed_records": 1}),
    ("quarantined", (3, 100), {"quarantined_sends": 3, "bytes_in_flight": -100}),
]


def _values(counters: Counters) -> dict[str, int]:
    return {name: getattr(counters, name) for name in Counters.FIELDS}


def test_the_counters_and_the_statistics_have_the_same_fields() -> None:
    assert list(Counters.FIELDS) == [f.name for f in attrs.fields(SendStatistics)]
    # Each of FIELDS starts at 0, and a name not among them is no counter
    # (__slots__ in the pure build, a native class in the compiled one).
    counters = Counters()
    assert all(type(value) is int and value == 0 for value in _values(counters).values())
    assert counters.parent is None
    with pytest.raises(AttributeError):
        counters.bytes_sent = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("event", "args", "changes"), EVENTS, ids=[f"{e}{a}" for e, a, _ in EVENTS])
def test_each_event_changes_its_fields_in_the_stream_and_the_pool(
    event: str, args: tuple[object, ...], changes: dict[str, int]
) -> None:
    pool = Counters()
    stream = Counters(parent=pool)
    getattr(stream, event)(*args)
    expected = {name: changes.get(name, 0) for name in _values(stream)}
    assert _values(stream) == expected
    assert _values(pool) == expected


def test_a_snapshot_is_every_counter() -> None:
    counters = Counters()
    for i, name in enumerate(_values(counters)):
        setattr(counters, name, i + 1)
    assert attrs.asdict(SendStatistics.of(counters)) == _values(counters)


def test_no_module_counts_by_name() -> None:
    """No call of a counters object's method with a string argument (the old ``count("enobufs")``)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr in ("counters", "_counters")
                and any(isinstance(arg, ast.Constant) and isinstance(arg.value, str) for arg in node.args)
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, found
    assert not hasattr(Counters, "count")
