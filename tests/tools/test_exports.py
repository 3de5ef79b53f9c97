"""The public API is what ``__all__`` says, and the reference documents exactly that.

For every public module of the package (no name in its dotted path starts
with an underscore): ``__all__`` lists the names the module defines or
re-exports explicitly (``from ._x import Y as Y``); each has a docstring
(a ``#:`` comment for a constant); each class and function reports the
public module as its ``__module__``; and ``docs/reference.rst`` has one
autodoc entry for each, and for nothing else. The last test builds the
reference and checks that what it shows of fields and constants is their
own documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import trio_zc

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.rst"


def _public_module_names() -> list[str]:
    names = ["trio_zc"]
    for info in pkgutil.walk_packages(trio_zc.__path__, "trio_zc."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


PUBLIC_MODULES = _public_module_names()


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def _conf() -> types.ModuleType:
    """docs/conf.py, where the reference finds the comments of fields and constants."""
    spec = importlib.util.spec_from_file_location("_trio_zc_docs_conf", ROOT / "docs" / "conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def declared_public_names(module: types.ModuleType) -> set[str]:
    """The names *module*'s source makes public: defined at its top level, or
    imported under the same name (``from x import Y as Y``, the explicit
    re-export that mypy and type checkers honour), and not starting with an
    underscore. A plain ``import`` or ``from x import Y`` is for the module's
    own use."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update(a.name for a in node.names if a.asname is not None and a.asname == a.name)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return {name for name in names if not name.startswith("_")}


@dataclasses.dataclass
class Entry:
    """One autodoc directive of docs/reference.rst."""

    line: int
    module: str
    name: str
    #: ``None`` without a ``:members:`` option, ``"all"`` for a bare one, else the names listed.
    members: None | str | list[str]
    excluded: list[str]
    #: Written "Name()": a class with no public constructor, shown without one.
    no_constructor: bool = False


def reference_entries() -> list[Entry]:
    current = None
    entries = []
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\.\. (?:current)?module:: (\S+)$", line):
            current = m.group(1)
            continue
        # "Name()" shows no constructor arguments: for classes the application
        # gets from the library, not by calling them.
        m = re.match(r"\.\. auto(module|class|function|exception|data|decorator):: ([\w.]+)(?:\(\))?$", line)
        if not m:
            continue
        options: dict[str, str] = {}
        for option in lines[i + 1 :]:
            if not (om := re.match(r"   :([\w-]+):(.*)$", option)):
                break
            options[om.group(1)] = om.group(2).strip()
        members: None | str | list[str] = None
        if "members" in options:
            members = [n.strip() for n in options["members"].split(",")] if options["members"] else "all"
        excluded = [n.strip() for n in options.get("exclude-members", "").split(",") if n.strip()]
        if m.group(1) == "module":
            # Its members by name, or none (each then has an entry of its own).
            current = m.group(2)
            if "no-members" in options:
                continue
            assert isinstance(members, list), f"reference.rst line {i + 1}: list the members of {current} by name"
            entries.extend(Entry(i + 1, current, name, None, []) for name in members)
            continue
        module, _, short = m.group(2).rpartition(".")
        if not module:
            assert current is not None, f"reference.rst line {i + 1}: {short} before any module directive"
            module = current
        entries.append(Entry(i + 1, module, short, members, excluded, line.endswith("()")))
    return entries


def documented_names() -> set[tuple[str, str]]:
    """``(module, name)`` of every autodoc entry of docs/reference.rst."""
    return {(entry.module, entry.name) for entry in reference_entries()}


def test_the_public_modules_are_the_ones_the_reference_covers() -> None:
    assert PUBLIC_MODULES == ["trio_zc", "trio_zc.asgi", "trio_zc.http", "trio_zc.images", "trio_zc.testing"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = _module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    declared = declared_public_names(module)
    assert set(exported) == declared, (
        f"{name}: in __all__ only: {sorted(set(exported) - declared)};"
        f" public in the source only: {sorted(declared - set(exported))}"
    )
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"


def _is_class_or_function(obj: object) -> bool:
    """A class or a function, not a type alias such as ``Callable[[X], Y]``.

    On Python 3.10, ``isinstance(list[int], type)`` is true (the alias passes
    its origin's class on), so the type of the object is what is asked.
    """
    return issubclass(type(obj), type) or isinstance(obj, types.FunctionType)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(name: str) -> None:
    module = _module(name)
    conf = _conf()
    undocumented = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if _is_class_or_function(obj):
            doc = vars(obj).get("__doc__") if isinstance(obj, type) else obj.__doc__
        else:
            # A constant's documentation is the #: comment where it is defined.
            comment = conf.source_comment(f"{name}.{attr}")
            doc = "\n".join(comment) if comment else None
        if not (doc and doc.strip()):
            undocumented.append(attr)
    assert not undocumented, f"{name}: no docstring: {undocumented}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_names_report_their_public_module(name: str) -> None:
    module = _module(name)
    wrong = {
        attr: obj.__module__
        for attr in module.__all__
        if _is_class_or_function(obj := getattr(module, attr)) and obj.__module__ != name
    }
    assert not wrong, f"{name}: these report another module: {wrong}"
    for attr in module.__all__:
        obj = getattr(module, attr)
        if issubclass(type(obj), type):
            assert repr(obj) == f"<class '{name}.{attr}'>"


def test_the_reference_documents_exactly_the_exports() -> None:
    exported = {(name, attr) for name in PUBLIC_MODULES for attr in _module(name).__all__}
    documented = documented_names()
    assert documented == exported, (
        f"exported but not in docs/reference.rst: {sorted(exported - documented)};"
        f" in docs/reference.rst but not exported: {sorted(documented - exported)}"
    )


def _member_doc(cls: type, name: str, conf: types.ModuleType, dotted: str) -> str | None:
    """What the reference can show for member *name* of *cls*: its docstring or #: comment."""
    # inspect.getdoc, as autodoc: a method's docstring may be its base's,
    # and a slot's is in the class's __slots__ dict.
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, (staticmethod, classmethod)):
        raw = raw.__func__
    if isinstance(raw, types.FunctionType):
        raw = getattr(cls, name)
    if isinstance(raw, (types.FunctionType, types.MethodType, property, types.MemberDescriptorType)):
        doc = inspect.getdoc(raw)
        if doc:
            return doc
    comment = conf.source_comment(f"{dotted}.{name}")
    return "\n".join(comment) if comment else None


def test_the_reference_accounts_for_every_public_member() -> None:
    # Each public member a public class defines is shown by its entry (listed
    # in :members:, or :members: bare for all) or excluded by name
    # (:exclude-members:), and whatever is shown has documentation: autodoc
    # shows a member with none as a bare name, or not at all.
    conf = _conf()
    problems = []
    for entry in reference_entries():
        cls = getattr(_module(entry.module), entry.name)
        if not isinstance(cls, type):
            continue
        dotted = f"{entry.module}.{entry.name}"
        own = {n for n in vars(cls) if not n.startswith("_")} | (_known_attributes(cls) & set(vars(cls).get("__annotations__", {})))
        listed = set(entry.members) if isinstance(entry.members, list) else set()
        for name in sorted(listed - own - set(dir(cls))):
            problems.append(f"{dotted}: lists {name}, which it does not have")
        for name in sorted(own):
            shown = entry.members == "all" or name in listed
            if name in entry.excluded:
                continue
            if not shown:
                problems.append(f"{dotted}.{name}: public, but neither listed nor excluded (reference.rst line {entry.line})")
            elif name in vars(cls) and not _member_doc(cls, name, conf, dotted):
                problems.append(f"{dotted}.{name}: shown with no documentation")
    assert not problems, "\n".join(problems)


def _known_attributes(cls: type) -> set[str]:
    """Names a class declares as data: annotations and slots, its bases' too."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(vars(klass).get("__annotations__", {}))
        slots = vars(klass).get("__slots__", ())
        names.update([slots] if isinstance(slots, str) else slots)
    return {n for n in names if not n.startswith("_")}


def _words(text: str) -> list[str]:
    """The first words of *text*, as reST source or as Sphinx's text output."""
    # A :meth: or :func: role renders with "()" after the name: not a difference.
    return re.sub(r":\w+:|[`*\"'~]|\(\)", "", text).split()[:3]


def test_the_reference_shows_the_comments_of_fields_and_constants(tmp_path: Path) -> None:
    # Public classes report the public module, where Sphinx would look for
    # their fields' #: comments (and a constant's), and find none: fields
    # showed with no description and DEFAULT_DRAIN_TIMEOUT with float's
    # docstring. Built as plain text; -W and the HTML are `make docs`'.
    # Nitpicky (-n), to hear of every reference that leads nowhere.
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-E", "-n", "-b", "text", str(ROOT / "docs"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    text = (tmp_path / "reference.txt").read_text(encoding="utf-8").splitlines()

    # A reference to a public name resolves (a page that names :class:`SealedLease`
    # without saying the module gets no link, silently, without -n).
    public = {attr for name in PUBLIC_MODULES for attr in _module(name).__all__}
    dangling = []
    for target in re.findall(r"reference target not found: (\S+)", build.stderr):
        for prefix in sorted(PUBLIC_MODULES, key=len, reverse=True):
            if target.startswith(prefix + "."):
                target = target[len(prefix) + 1 :]
                break
        if target.split(".")[0] in public:
            dangling.append(target)
    assert not dangling, f"references to public names that lead nowhere: {sorted(set(dangling))}"
    # Napoleon reads "X: y" on the first line of a property's docstring as a
    # type X: the reference then shows "Type: X" and loses the start of the text.
    assert not [line for line in text if line.strip() == "Type:"], "a docstring's first line was taken for a type"
    # The entries at the left margin: "class trio_zc.X(...)", "trio_zc.Y = 1.0", ...
    starts = [
        (i, m.group(1))
        for i, line in enumerate(text)
        if (m := re.match(r"^(?:class |exception |async )?(trio_zc(?:\.\w+)+)\b", line))
    ]
    sections = {
        name: text[start : (starts[k + 1][0] if k + 1 < len(starts) else len(text))]
        for k, (start, name) in enumerate(starts)
    }
    conf = _conf()
    checked = 0
    for module, attr in sorted(documented_names()):
        dotted = f"{module}.{attr}"
        obj = getattr(_module(module), attr)
        section = sections.get(dotted)
        assert section is not None, f"{dotted} is not in the built reference"
        if isinstance(obj, type):
            entry = next(e for e in reference_entries() if (e.module, e.name) == (module, attr))
            if entry.no_constructor:
                # Class-level "Parameters" would be its private __init__'s.
                assert "   Parameters:" not in section, f"{dotted} shows its private constructor's parameters"
            for field in sorted(_known_attributes(obj)):
                heads = [i for i, line in enumerate(section) if re.match(rf"^   {field}: ", line)]
                if not heads:
                    continue  # not among the members shown
                description = []
                for line in section[heads[0] + 1 :]:
                    if line.strip() and not line.startswith("      "):
                        break
                    description.append(line)
                shown = " ".join(description)
                assert shown.strip(), f"{dotted}.{field} shows no description"
                # A #: comment, or (for a slot) the slot's own docstring.
                comment = conf.source_comment(f"{dotted}.{field}")
                if comment is not None:
                    assert _words(shown) == _words(" ".join(comment)), f"{dotted}.{field} shows {shown.strip()!r}"
                checked += 1
        elif not isinstance(obj, types.FunctionType):
            shown = " ".join(line for line in section[1:] if line.strip())
            comment = conf.source_comment(dotted)
            assert comment, f"{dotted}: no #: comment where it is defined"
            assert _words(shown) == _words(" ".join(comment)), f"{dotted} shows {shown[:80]!r}"
            checked += 1
    assert checked >= 20  # the statistics' fields, at least
