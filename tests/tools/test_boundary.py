"""The package's architecture, checked from its source: a one-way kernel boundary, no import cycle, one copy of each shared piece.

Imports are read with :mod:`ast` from every module of ``trio_zc``: the
module-level ones, those under ``if TYPE_CHECKING:`` and those inside
functions all count, since each is a dependency a reader must follow.

1. Kernels (``trio_zc/_kernels/``) see a lease only through
   ``SendableLease`` and import nothing from the lease or pool modules,
   directly or through another module (issue 19). Nor do they import the
   layers above them: the stream, the high-level API, the package's public
   face or the test helpers.
2. The import graph has no cycle.
3. What the kernels share is written once: libc is loaded in one place, the
   close protocol (the drain wait) and the refusal retry live in
   ``_kernels/_closing.py``, the connection reset in ``_kernels/_socket.py``,
   each argument check in ``_validate.py``.
4. Every package directory is one the project ships.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import trio_zc

PACKAGE = Path(trio_zc.__file__).resolve().parent
ROOT = PACKAGE.parent

#: What a kernel module may not reach, directly or through other modules (rule 1).
ABOVE_THE_KERNELS = ("trio_zc", "trio_zc._lease", "trio_zc._pool", "trio_zc._stream", "trio_zc._highlevel")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str] | dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The package's modules that the module *name* imports, with the line of each import.

    ``from .x import y`` names the submodule ``x.y`` if there is one, else
    the module ``x``; ``import a.b`` names ``a.b``.
    """
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    yield submodule, node.lineno
                elif target in known:
                    yield target, node.lineno


def import_graph() -> dict[str, set[str]]:
    """Module name -> the package's modules it imports (itself left out)."""
    known = modules()
    return {name: {t for t, _ in imported(name, path, known) if t != name} for name, path in known.items()}


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module *start* reaches, each with the module that imports it on the way."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for target in graph[current]:
            if target not in seen and target != start:
                seen[target] = current
                todo.append(target)
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of *graph* (its modules, the first repeated at the end), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for root in sorted(graph):
        if colour[root] != WHITE:
            continue
        path = [root]
        colour[root] = GREY
        stack = [iter(sorted(graph[root]))]
        while stack:
            for target in stack[-1]:
                if colour[target] == GREY:
                    return path[path.index(target) :] + [target]
                if colour[target] == WHITE:
                    colour[target] = GREY
                    path.append(target)
                    stack.append(iter(sorted(graph[target])))
                    break
            else:
                colour[path.pop()] = BLACK
                stack.pop()
    return None


# -- rule 1 ---------------------------------------------------------------------------


def kernel_modules() -> list[str]:
    return [name for name in modules() if name.startswith("trio_zc._kernels.")]


def test_the_kernels_are_where_the_checks_look() -> None:
    for kernel in ("_base", "_copy", "_msg_zerocopy", "_io_uring", "_sendfile", "_closing", "_socket"):
        assert f"trio_zc._kernels.{kernel}" in kernel_modules(), kernel


def test_no_kernel_module_imports_the_lease_or_pool_modules() -> None:
    known = modules()
    direct = [
        f"{name} imports {target} (line {line})"
        for name in kernel_modules()
        for target, line in imported(name, known[name], known)
        if target in ("trio_zc._lease", "trio_zc._pool")
    ]
    assert not direct, direct


def test_no_kernel_module_reaches_the_layers_above_it() -> None:
    graph = import_graph()
    found = []
    for name in kernel_modules():
        via = reachable(graph, name)
        for target in ABOVE_THE_KERNELS:
            if target in via:
                chain = [target]
                while chain[-1] != name:
                    chain.append(via[chain[-1]] if chain[-1] in via else name)
                found.append(" <- ".join(chain))
    assert not found, found


# -- rule 2 ---------------------------------------------------------------------------


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


# -- that the checks above can fail ---------------------------------------------------


def test_the_reader_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "trio_zc._kernels._base" in graph["trio_zc._stream"]  # from ._kernels._base import ...
    assert "trio_zc._lifecycle" in graph["trio_zc._kernels._base"]  # from .._lifecycle import ...
    assert "trio_zc._kernels._completion" in graph["trio_zc.testing._wire"]  # only under TYPE_CHECKING
    assert "trio_zc.testing" in graph["trio_zc._bench_cycles"]  # only inside a function
    assert "trio_zc._pool" in graph["trio_zc.testing._kernel"]
    assert len(graph) == len(list(PACKAGE.rglob("*.py")))


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    # The package with the wire importing the mock kernel back (as it did): a cycle.
    graph = import_graph()
    graph["trio_zc.testing._wire"].add("trio_zc.testing._kernel")
    assert find_cycle(graph) is not None
    # And a kernel importing the lease module: the boundary test's own finding.
    graph = import_graph()
    graph["trio_zc._kernels._completion"].add("trio_zc._lease")
    assert "trio_zc._lease" in reachable(graph, "trio_zc._kernels._msg_zerocopy")


# -- rule 3 ---------------------------------------------------------------------------


def sources() -> dict[str, str]:
    """Every module's source, by path relative to the package (comments and docstrings included)."""
    return {str(path.relative_to(PACKAGE)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def places(pattern: str) -> list[str]:
    """The modules whose source matches *pattern*."""
    return [name for name, text in sources().items() if re.search(pattern, text, re.MULTILINE)]


def test_libc_is_loaded_once() -> None:
    assert places(r"\bCDLL\(") == ["_libc.py"]


def test_one_close_protocol_and_one_refusal_retry() -> None:
    assert places(r"^\s*(async )?def wait_drained\b") == ["_kernels/_closing.py"]
    assert places(r"^class RefusalRetry\b") == ["_kernels/_closing.py"]
    assert places(r"^ZEROCOPY_REFUSED\b") == ["_kernels/_closing.py"]
    assert places(r"\bforget_outstanding\b") == []
    # Every zero-copy channel that can be refused goes through the one retry.
    assert sorted(places(r"\bRefusalRetry\(\)")) == ["_kernels/_completion.py", "_kernels/_io_uring.py"]


def test_one_connection_reset() -> None:
    assert places(r"\babort_connection\b") == ["_kernels/_socket.py"]


def test_each_argument_check_is_written_once() -> None:
    for message in ("drain_timeout must", "send_timeout must", "max_in_flight must", "must be True or False"):
        assert places(re.escape(message)) == ["_validate.py"], message
    assert places(r"^def exact_int\b") == ["_validate.py"]


def test_every_package_directory_ships() -> None:
    """pyproject.toml lists every package of the tree, or a wheel leaves it out (an editable install hides that)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    listed = re.search(r"^packages = \[(.*)\]$", pyproject, re.MULTILINE)
    assert listed is not None
    shipped = set(re.findall(r'"([\w.]+)"', listed.group(1)))
    directories = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    assert all((directory / "__init__.py").exists() for directory in directories), sorted(directories)
    assert shipped == {module_name(directory / "__init__.py") for directory in directories}
