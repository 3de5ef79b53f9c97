"""What the sources and documents cite exists.

Comments, docstrings and pages point readers at files
(``benchmarks/stale_bytes.py``, ``_thp.py``) and at modules and names
(``trio_zc._lifecycle.Lifecycle``). When a file moves or a module is
renamed, such a pointer rots unseen: this checks every one in the files git
tracks -- in Python files, their comments and docstrings (a test's string
literals may name files that do not exist on purpose). A path resolves from
the repository's root, from the citing file's directory, or from the
package; a bare file name is checked when it is named as this repository
names its modules and tests (an underscore or ``test_`` first); a dotted
``trio_zc...`` name imports. Paths into other projects' source trees are
recognised by their top directories (below), and a page's ``:caption:``
names a file the reader writes.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "trio_zc"

#: Top directories of the source trees the comments cite beside this one:
#: Linux's and CPython's. A path starting with one of these is theirs.
EXTERNAL_TREES = (
    "Documentation/",  # Linux
    "include/",  # Linux
    "io_uring/",  # Linux
    "mm/",  # Linux
    "net/",  # Linux
    "tools/",  # Linux
    "Include/",  # CPython
)
#: Dotted names that are not Python objects.
NOT_OBJECTS = {
    "trio_zc.serve",  # the servers' logger
}

_PATH = re.compile(r"(?<![\w./-])((?:\.\./)*(?:[\w.-]+/)+[\w.-]+\.(?:py|rst|md|txt|json|png|toml|ini|c|h))\b")
_FILE = re.compile(r"(?<![\w./-])((?:_|test_)[\w-]*\.py)\b")
_DOTTED = re.compile(r"(?<![\w.])(trio_zc(?:\.\w+)+)")


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [n for n in out.splitlines() if re.search(r"(\.(py|rst|md|toml|ini|txt)|Makefile|\.ci/\w+)$", n)]
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def _prose_of_python(source: str) -> dict[int, str]:
    """The comments and docstrings of a Python file, by line number."""
    prose: dict[int, list[str]] = {}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                for offset, text in enumerate(first.value.value.splitlines()):
                    prose.setdefault(first.lineno + offset, []).append(text)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            prose.setdefault(token.start[0], []).append(token.string)
    return {number: " ".join(parts) for number, parts in prose.items()}


def _lines() -> list[tuple[str, int, str]]:
    lines = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(ROOT))
        if path.suffix == ".py":
            lines += [(name, number, line) for number, line in sorted(_prose_of_python(text).items())]
        else:
            lines += [
                (name, number, line)
                for number, line in enumerate(text.splitlines(), 1)
                if not line.strip().startswith(":caption:")
            ]
    return lines


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    if re.fullmatch(r"[A-Z]", parts[-1]):
        return True  # a placeholder: trio_zc.X
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def test_cited_paths_exist() -> None:
    missing = []
    for name, number, line in _lines():
        here = (ROOT / name).parent
        for match in _PATH.finditer(line):
            cited = match.group(1)
            if cited.startswith(EXTERNAL_TREES):
                continue
            if not any((base / cited).exists() for base in (ROOT, here, PACKAGE)):
                missing.append(f"{name}:{number}: {cited}")
    assert not missing, "cited files that do not exist:\n" + "\n".join(missing)


def test_cited_file_names_exist() -> None:
    # A bare module or test file name (``_thp.py``, ``test_sendfile.py``)
    # names some file of the repository.
    existing = {path.name for path in _tracked_text_files()}
    missing = [
        f"{name}:{number}: {match.group(1)}"
        for name, number, line in _lines()
        for match in _FILE.finditer(line)
        if match.group(1) not in existing
    ]
    assert not missing, "cited file names that no file has:\n" + "\n".join(missing)


def test_cited_modules_and_names_exist() -> None:
    missing = [
        f"{name}:{number}: {match.group(1)}"
        for name, number, line in _lines()
        for match in _DOTTED.finditer(line)
        if match.group(1).rstrip(".") not in NOT_OBJECTS and not _resolves(match.group(1).rstrip("."))
    ]
    assert not missing, "cited modules or names that do not exist:\n" + "\n".join(missing)
