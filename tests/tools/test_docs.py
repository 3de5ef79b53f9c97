"""The documentation works as written: every code block, and the build.

Every code block of ``docs/*.rst`` and ``README.md`` is found and accounted
for, so a newcomer can copy any of them:

- a Python block is a complete program, and is run (``python -W error``,
  with a timeout, in a temporary folder);
- a block marked ``.. doc-test: server PORT`` is a server: it is started,
  the block marked ``.. doc-test: client PORT`` after it is run against it
  (both on a free loopback port instead of PORT), and the server is stopped
  with SIGINT (Ctrl+C) and must exit cleanly;
- on a page marked ``.. doc-test: project``, the blocks with a ``:caption:``
  are the files of one project (``pyproject.toml``, ``tests/...``): the
  project is written to a temporary folder and its tests run with pytest
  there, in a subprocess, as a newcomer's project would;
- a ``literalinclude`` of Python code includes an example from
  ``examples/`` that the test suite runs;
- any other block says what it is (``sh``, ``console``, ``text``,
  ``toml``...), and is not run. A bare ``::`` literal block, which says
  nothing, fails.

Blocks in Markdown are fenced; a ``<!-- doc-test: ... -->`` line marks them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"

PYTHON = {"python", "py", "python3"}
NOT_RUN = {"sh", "shell", "bash", "console", "text", "none", "toml", "ini"}


@dataclasses.dataclass(frozen=True)
class Block:
    """One code block of a page."""

    page: str  # relative to the repository
    line: int  # 1-based, of the directive or fence
    kind: str  # "code", "include" or "bare"
    language: str
    text: str = ""
    caption: str | None = None
    mark: str | None = None  # the doc-test mark just before it
    include: str | None = None  # a literalinclude's path, relative to the page
    options: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?P<name>code-block|code|sourcecode|literalinclude):: *(?P<arg>.*)$")
_OPTION = re.compile(r"^ +:(?P<name>[\w-]+):(?: +(?P<value>.*))?$")
_RST_MARK = re.compile(r"^ *\.\. doc-test: *(?P<mark>.+?) *$")
_MD_MARK = re.compile(r"^<!-- *doc-test: *(?P<mark>.+?) *-->$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _mark_before(lines: list[str], index: int, pattern: re.Pattern[str]) -> str | None:
    """The doc-test mark on the last non-blank line before *index*, if any."""
    for line in reversed(lines[:index]):
        if line.strip():
            found = pattern.match(line)
            return found["mark"] if found else None
    return None


def rst_blocks(path: pathlib.Path) -> list[Block]:
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        line = lines[i]
        found = _DIRECTIVE.match(line)
        if found:
            indent = _indent(line)
            j = i + 1
            options = []
            while j < len(lines) and _indent(lines[j]) > indent and (option := _OPTION.match(lines[j])):
                options.append((option["name"], option["value"] or ""))
                j += 1
            body = []
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
                body.append(lines[j])
                j += 1
            text = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
            named = dict(options)
            include = found["name"] == "literalinclude"
            blocks.append(
                Block(
                    page,
                    i + 1,
                    "include" if include else "code",
                    (named.get("language", "") if include else found["arg"]).strip(),
                    "" if include else text,
                    named.get("caption"),
                    _mark_before(lines, i, _RST_MARK),
                    found["arg"].strip() if include else None,
                    tuple(options),
                )
            )
            i = j
            continue
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            blocks.append(Block(page, i + 1, "bare", ""))
        i += 1
    return blocks


def markdown_blocks(path: pathlib.Path) -> list[Block]:
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language = lines[i][3:].strip()
            end = i + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            text = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(page, i + 1, "code", language, text, None, _mark_before(lines, i, _MD_MARK)))
            i = end + 1
            continue
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    blocks = []
    for path in sorted(DOCS.glob("*.rst")):
        blocks += rst_blocks(path)
    blocks += markdown_blocks(ROOT / "README.md")
    return blocks


def project_pages() -> list[str]:
    """Pages marked as one project (their captioned blocks are its files)."""
    pages = []
    for path in sorted(DOCS.glob("*.rst")):
        marks = [_RST_MARK.match(line) for line in path.read_text().splitlines()]
        if any(mark and mark["mark"] == "project" for mark in marks):
            pages.append(path.relative_to(ROOT).as_posix())
    return pages


BLOCKS = all_blocks()
PROJECT_PAGES = project_pages()


def _role(block: Block) -> str:
    """What the suite does with *block*: program, server, client, project-file, include, shown."""
    if block.kind == "include":
        return "include"
    if block.language not in PYTHON:
        return "shown"
    if block.page in PROJECT_PAGES and block.caption:
        return "project-file"
    if block.mark and block.mark.split()[0] in {"server", "client"}:
        return block.mark.split()[0]
    return "program"


def _examples_the_suite_runs() -> set[str]:
    """Example files named by a test module other than this one."""
    named = set()
    for test in TESTS.rglob("test_*.py"):
        if test.name in {pathlib.Path(__file__).name, "test_packaging.py"}:  # these only name them
            continue
        text = test.read_text()
        named |= {example.name for example in EXAMPLES.glob("*.py") if example.name in text}
    return named


def test_every_block_says_what_it_is_and_is_accounted_for() -> None:
    problems = []
    run_examples = _examples_the_suite_runs()
    for block in BLOCKS:
        role = _role(block)
        if block.kind == "bare":
            problems.append(f"{block.where}: a bare '::' block; say what it is (.. code-block:: python, sh, text...)")
        elif role == "include":
            assert block.include is not None
            target = (ROOT / block.page).parent / block.include
            if target.suffix == ".py":
                if target.parent.resolve() != EXAMPLES.resolve():
                    problems.append(f"{block.where}: includes {block.include}, which is not an example")
                elif target.name not in run_examples:
                    problems.append(f"{block.where}: includes {target.name}, which no test runs")
                pyobject = dict(block.options).get("pyobject")
                if pyobject and not re.search(rf"^(async def|def|class) {pyobject}\b", target.read_text(), re.M):
                    problems.append(f"{block.where}: {target.name} has no {pyobject}")
            elif block.language not in NOT_RUN:
                problems.append(f"{block.where}: includes {block.include} without saying it is output (:language:)")
        elif block.language not in PYTHON | NOT_RUN:
            problems.append(f"{block.where}: unknown language {block.language!r}")
        elif block.language in PYTHON:
            try:
                compile(block.text, block.where, "exec")
            except SyntaxError as exc:
                problems.append(f"{block.where}: not a complete program: {exc}")
    servers = [b for b in BLOCKS if _role(b) == "server"]
    clients = [b for b in BLOCKS if _role(b) == "client"]
    for server in servers:
        if not _clients_of(server):
            problems.append(f"{server.where}: a server with no client block after it")
    for client in clients:
        if not any(client in _clients_of(server) for server in servers):
            problems.append(f"{client.where}: a client with no server block before it")
    assert problems == []


def test_the_parser_finds_the_blocks_a_reader_sees() -> None:
    """Guard the guard: as many blocks as directives and fences, on every page."""
    for path in [*DOCS.glob("*.rst")]:
        text = path.read_text()
        page = path.relative_to(ROOT).as_posix()
        directives = len(re.findall(r"^ *\.\. (?:code-block|code|sourcecode|literalinclude)::", text, re.M))
        assert len([b for b in BLOCKS if b.page == page and b.kind != "bare"]) == directives, page
    fences = (ROOT / "README.md").read_text().count("\n```") // 2
    assert len([b for b in BLOCKS if b.page == "README.md"]) == fences
    # The pages a newcomer follows have programs the suite runs.
    for page in ("docs/tutorial.rst", "docs/recipes.rst", "README.md"):
        assert [b for b in BLOCKS if b.page == page and _role(b) in {"program", "server", "include"}], page
    assert "docs/testing.rst" in PROJECT_PAGES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_program(path: pathlib.Path, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", str(path)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("block", [b for b in BLOCKS if _role(b) == "program"], ids=lambda b: b.where)
def test_python_block_runs_as_a_program(block: Block, tmp_path: pathlib.Path) -> None:
    program = tmp_path / (block.caption or "program.py")
    program.write_text(block.text)
    result = _run_program(program, tmp_path)
    assert result.returncode == 0, f"{block.where}:\n{result.stdout}\n{result.stderr}"
    assert result.stderr == ""


def _clients_of(server: Block) -> list[Block]:
    """The client blocks after *server* on its page, for its port, up to the next server."""
    port = server.mark.split()[1] if server.mark and len(server.mark.split()) > 1 else None
    out = []
    for block in BLOCKS:
        if block.page != server.page or block.line <= server.line:
            continue
        if _role(block) == "server":
            break
        if _role(block) == "client" and block.mark and block.mark.split()[1:] == [port]:
            out.append(block)
    return out


@pytest.mark.parametrize("server", [b for b in BLOCKS if _role(b) == "server"], ids=lambda b: b.where)
def test_server_block_serves_its_client_blocks_and_stops_on_ctrl_c(server: Block, tmp_path: pathlib.Path) -> None:
    assert server.mark is not None
    documented = server.mark.split()[1]
    port = str(_free_port())

    def on_port(text: str) -> str:
        changed = re.sub(rf"\b{documented}\b", port, text)
        assert changed != text, "the block does not use the port its mark names"
        return changed

    (tmp_path / "server.py").write_text(on_port(server.text))
    process = subprocess.Popen(
        [sys.executable, "-W", "error", "server.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.1)
        for n, client in enumerate(_clients_of(server)):
            program = tmp_path / f"client{n}.py"
            program.write_text(on_port(client.text))
            result = _run_program(program, tmp_path)
            assert result.returncode == 0, f"{client.where}:\n{result.stdout}\n{result.stderr}"
            assert result.stderr == ""
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, f"{server.where} did not stop cleanly on Ctrl+C:\n{out}\n{err}"
    assert err == ""


def _write_project(page: str, where: pathlib.Path) -> list[Block]:
    files = [b for b in BLOCKS if b.page == page and b.caption and b.kind == "code"]
    for block in files:
        assert block.caption is not None
        target = where / block.caption
        assert target.resolve().is_relative_to(where.resolve()), block.where
        assert not target.exists(), f"{block.where}: {block.caption} twice"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text)
    return files


def _pytest_in(project: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A newcomer's project: its own folder and configuration, this environment's
    # installed packages (trio_zc with its plugin, pytest, pytest-trio).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize("page", PROJECT_PAGES)
def test_project_page_builds_a_project_whose_tests_pass(page: str, tmp_path: pathlib.Path) -> None:
    project = tmp_path / "project"
    files = _write_project(page, project)
    assert any(b.caption in {"pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini"} for b in files)
    tests = sum(len(re.findall(r"^(?:async )?def test_", b.text, re.M)) for b in files)
    assert tests > 0
    result = _pytest_in(project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(rf"\b{tests} passed\b", output), output


def test_testing_page_says_truly_what_happens_without_trio_mode(tmp_path: pathlib.Path) -> None:
    """docs/testing.rst: without trio mode, a marked test runs and an unmarked one is refused as quoted."""
    page = "docs/testing.rst"
    project = tmp_path / "project"
    _write_project(page, project)
    config = project / "pyproject.toml"
    config.write_text(config.read_text().replace("trio_mode = true", ""))
    marked = _pytest_in(project, "tests/test_marked.py")
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert re.search(r"\b1 passed\b", marked.stdout), marked.stdout
    unmarked = _pytest_in(project, "tests/test_hello.py")
    output = " ".join((unmarked.stdout + unmarked.stderr).split())
    assert unmarked.returncode != 0
    quoted = re.search(r'"(requested an async fixture .mock_pool.[^"]*)"', " ".join((ROOT / page).read_text().split()))
    assert quoted is not None
    assert quoted.group(1) in output, output


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The HTML docs, built as ``make docs`` builds them (-n -W: every reference resolves, offline)."""
    out = tmp_path_factory.mktemp("html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return out


def _visible_text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_docs_build_clean_and_the_reference_shows_no_private_names(built_docs: pathlib.Path) -> None:
    reference = _visible_text((built_docs / "reference.html").read_text())
    assert "open_pool" in reference
    assert not re.findall(r"trio_zc\._\w+", reference)
    for private in ("_Slot", "_Connection", "Arena", "Counters", "Channel"):
        assert not re.search(rf"\b{private}\b", reference), private
    # Other projects' names link to their documentation (from the offline inventories).
    assert "https://trio.readthedocs.io/en/stable/reference-core.html#trio.ClosedResourceError" in (
        built_docs / "reference.html"
    ).read_text()


def test_lifecycle_page_shows_the_diagram_as_a_picture(built_docs: pathlib.Path) -> None:
    html = (built_docs / "lifecycle.html").read_text()
    image = re.search(r'<img [^>]*src="(_images/lifecycle\.svg)"', html)
    assert image, "no picture of the life cycle"
    assert (built_docs / image.group(1)).read_text().startswith("<svg ")
    assert "stateDiagram" not in html


def test_code_is_not_cut_off_on_a_1280_pixel_screen(built_docs: pathlib.Path) -> None:
    """alabaster's 940 px page hid the ends of code lines at 1280 px; now the page is
    wider and code wraps (checked by eye with headless Chromium at 1280x900)."""
    conf = (DOCS / "conf.py").read_text()
    assert '"page_width": "1240px"' in conf
    css = (built_docs / "_static" / "wide.css").read_text()
    assert "white-space: pre-wrap" in css
    for page in ("recipes.html", "tutorial.html", "testing.html"):
        assert 'href="_static/wide.css' in (built_docs / page).read_text()


def test_the_tour_of_the_source_names_every_module() -> None:
    """docs/howitworks.rst's module map stays true: every module of the package is in it, and
    every module it names exists (a name may be a glob such as ``_bench*.py``)."""
    import fnmatch

    tour = (ROOT / "docs" / "howitworks.rst").read_text()
    tour = tour[tour.index("A tour of the source") :]
    named = set(re.findall(r"``([\w*/]+\.py)``", tour))
    package = ROOT / "trio_zc"
    modules = {path.name for path in package.rglob("*.py") if path.name != "__init__.py"}
    missing = sorted(m for m in modules if not any(fnmatch.fnmatch(m, pattern.rsplit("/", 1)[-1]) for pattern in named))
    assert not missing, f"modules the tour does not name: {missing}"
    dangling = sorted(
        pattern for pattern in named
        if not pattern.endswith("__init__.py") and not pattern.startswith("tests/")
        and not any(fnmatch.fnmatch(m, pattern.rsplit("/", 1)[-1]) for m in modules)
    )
    assert not dangling, f"the tour names modules that do not exist: {dangling}"
