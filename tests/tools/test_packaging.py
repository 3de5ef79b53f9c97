"""The package as a newcomer gets it: the sdist, a wheel built from it, installs.

Each test works in a temporary directory and throwaway virtual environments
and needs no network: builds run without isolation (on this environment's
setuptools, which the ``dev`` extra pins), pip installs with ``--no-index
--no-deps``, and the throwaway environments reach trio_zc's dependencies
through a ``.pth`` file naming a directory of links to this environment's
installed packages -- every one except trio_zc itself, so that what they
import is the copy under test.
"""

from __future__ import annotations

import email.parser
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(
    *args: str | os.PathLike[str],
    cwd: pathlib.Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> str:
    result = subprocess.run(
        [os.fspath(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output}"
    return output


def _dependencies_view(where: pathlib.Path, without: tuple[str, ...] = ()) -> pathlib.Path:
    """A directory of links to every package installed here, except trio_zc (and those named *without*)."""
    view = where / "deps"
    view.mkdir()
    paths = sysconfig.get_paths()
    for site in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        for entry in pathlib.Path(site).iterdir():
            name = entry.name
            if name.startswith(("trio_zc", "__editable__", "__pycache__", *without)) or name.endswith(".pth"):
                continue
            if not (view / name).exists():
                (view / name).symlink_to(entry)
    return view


def _throwaway_venv(where: pathlib.Path, deps: pathlib.Path) -> pathlib.Path:
    """A new virtual environment that sees *deps*; returns its python."""
    _run(sys.executable, "-m", "venv", "--without-pip", where)
    python = where / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    (pathlib.Path(purelib) / "trio_zc_test_deps.pth").write_text(f"{deps}\n")
    return python


def _pip_install(
    python: pathlib.Path, *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 300
) -> str:
    # This environment's pip, installing into the throwaway one.
    return _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-deps", "--no-build-isolation",
        *args,
        env=env,
        timeout=timeout,
    )


def _build(kind: str, source: pathlib.Path, out: pathlib.Path) -> tuple[pathlib.Path, str]:
    output = _run(sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", out, source)
    (built,) = out.glob("*.tar.gz" if kind == "sdist" else "*.whl")
    return built, output


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path, str]:
    """(the sdist, its unpacked tree, the build's output)."""
    where = tmp_path_factory.mktemp("sdist")
    built, output = _build("sdist", ROOT, where / "dist")
    with tarfile.open(built) as tar:
        tar.extractall(where / "unpacked", filter="data")
    (tree,) = (where / "unpacked").iterdir()
    return built, tree, output


def test_sdist_carries_the_docs_examples_tests_and_license(sdist: tuple[pathlib.Path, pathlib.Path, str]) -> None:
    built, tree, output = sdist
    # setuptools < 77 printed a deprecation banner for the license table, three times a build.
    assert "deprecated" not in output.lower(), output
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    ).stdout.split()
    if tracked:  # in a git checkout: every tracked file a user needs is there
        wanted = {
            f for f in tracked if f.split("/")[0] in {"docs", "examples", "tests", "benchmarks", "trio_zc"}
        } | {"LICENSE", "README.md", "Makefile", "pyproject.toml"}
        assert wanted - files == set()
    for needed in ("LICENSE", "trio_zc/py.typed", "tests/conftest.py", "tests/streams.py", "tests/bad_inputs.py",
                   "docs/conf.py", "docs/tutorial.rst", "examples/send_images.py"):
        assert needed in files
    assert not [f for f in files if "__pycache__" in f or f.startswith("docs/_build/")]
    metadata = email.parser.Parser().parsestr((tree / "PKG-INFO").read_text())
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert "testing" in metadata.get_all("Provides-Extra")


def test_wheel_built_from_the_sdist_installs_and_the_sdists_tests_pass(
    sdist: tuple[pathlib.Path, pathlib.Path, str], tmp_path: pathlib.Path
) -> None:
    _, tree, _ = sdist
    wheel, output = _build("wheel", tree, tmp_path / "dist")
    assert "deprecated" not in output.lower(), output
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "trio_zc/py.typed" in names
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert b"MIT License" in zf.read(license_file)
        # Only the package: no tests, docs or examples at the top of site-packages.
        assert {n.split("/")[0] for n in names} == {"trio_zc", license_file.split("/")[0]}
    # README and the tutorial name the wheel a newcomer gets.
    for page in ("README.md", "docs/tutorial.rst"):
        assert f"dist/{wheel.name}[images]" in (ROOT / page).read_text(), page
    # `pip wheel` (the other way they give) builds the same files.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp_path / "pip-wheel", tree)
    (other,) = (tmp_path / "pip-wheel").glob("*.whl")
    assert other.name == wheel.name
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(other) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
    python = _throwaway_venv(tmp_path / "venv", _dependencies_view(tmp_path))
    _pip_install(python, wheel)
    # -P: the unpacked tree (the working directory) must not shadow the installed package.
    where = _run(python, "-P", "-c", "import trio_zc; print(trio_zc.__file__)", cwd=tree)
    assert pathlib.Path(where.strip()).is_relative_to(tmp_path / "venv")
    # The sdist's own tests, from the unpacked tree, on the installed wheel (a fast subset).
    output = _run(
        python, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "tests/sansio/test_lifecycle.py", "tests/api/test_lease.py", "tests/tools/test_examples.py", "tests/tools/test_docs.py",
        "-m", "not slow",
        cwd=tree,
    )
    assert " passed" in output and "failed" not in output and "error" not in output.lower(), output


def test_install_from_a_checkout_plain_and_editable(
    sdist: tuple[pathlib.Path, pathlib.Path, str], tmp_path: pathlib.Path
) -> None:
    """README's ``pip install '.[images]'`` and ``pip install -e .``, in a checkout (the unpacked sdist)."""
    _, tree, _ = sdist
    deps = _dependencies_view(tmp_path)
    plain = _throwaway_venv(tmp_path / "plain", deps)
    _pip_install(plain, f"{tree}[images]")
    readme = (ROOT / "README.md").read_text()
    program = readme.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "first.py").write_text(program)
    assert "bytes ready to send" in _run(plain, "-P", tmp_path / "first.py", cwd=tmp_path)
    editable = _throwaway_venv(tmp_path / "editable", deps)
    # As `make venv` installs: without setuptools' banners (the license's deprecation,
    # which setuptools>=77 and the SPDX form end, and the editable install's).
    quiet = re.search(r'^EDITABLE_QUIET := PYTHONWARNINGS="([^"]+)"$', (tree / "Makefile").read_text(), re.M)
    assert quiet is not None
    output = _pip_install(editable, "-e", tree, env={"PYTHONWARNINGS": quiet.group(1)})
    assert "Warning" not in output and "!!" not in output, output
    where = _run(editable, "-c", "import trio_zc; print(trio_zc.__file__)", cwd=tmp_path)
    assert pathlib.Path(where.strip()) == tree / "trio_zc" / "__init__.py"
    # The CLI works outside a checkout, from the installed package.
    assert "stateDiagram" in _run(editable, "-m", "trio_zc", "lifecycle", cwd=tmp_path)


#: docs/install.rst's command for the compiled build, and its check of which build is installed.
COMPILE_COMMAND = "TRIO_ZC_COMPILE=1 pip install --no-build-isolation '.[images]'"


def _which_build_check() -> str:
    from .test_docs import rst_blocks

    (check,) = [b.text for b in rst_blocks(ROOT / "docs" / "install.rst") if b.language == "python"]
    return check


def _cannot_compile() -> str | None:
    """What this machine lacks to compile the package (as the Makefile's pytest-compiled asks), if anything."""
    import shlex
    import shutil

    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    missing = [f"a C compiler ({compiler})"] if shutil.which(compiler) is None else []
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        missing.append("Python.h")
    return " and ".join(missing) or None


def test_the_compiled_build_as_the_install_page_asks_for_it(
    sdist: tuple[pathlib.Path, pathlib.Path, str], tmp_path: pathlib.Path
) -> None:
    """docs/install.rst, "The compiled build": its command compiles, and its check says so.

    Skipped, as ``make pytest-compiled`` is, on a machine that cannot compile,
    unless REQUIRE_COMPILED=1 (CI).
    """
    missing = _cannot_compile()
    if missing and os.environ.get("REQUIRE_COMPILED") != "1":
        pytest.skip(f"the compiled build cannot be built here: this machine lacks {missing}")
    _, tree, _ = sdist
    assert COMPILE_COMMAND in (ROOT / "docs" / "install.rst").read_text()
    venv = _throwaway_venv(tmp_path / "venv", _dependencies_view(tmp_path))
    _pip_install(venv, f"{tree}[images]", env={"TRIO_ZC_COMPILE": "1"}, timeout=900)
    (tmp_path / "check.py").write_text(_which_build_check())
    where, build = _run(venv, "-P", tmp_path / "check.py", cwd=tmp_path).splitlines()
    assert build == "compiled" and pathlib.Path(where).is_relative_to(tmp_path / "venv"), where
    # It works: README's first program, on the compiled pool and leases.
    readme = (ROOT / "README.md").read_text()
    (tmp_path / "first.py").write_text(readme.split("```python\n", 1)[1].split("```", 1)[0])
    assert "bytes ready to send" in _run(venv, "-P", tmp_path / "first.py", cwd=tmp_path)


def test_the_compiled_build_falls_back_to_pure_python_or_fails_when_required(
    sdist: tuple[pathlib.Path, pathlib.Path, str], tmp_path: pathlib.Path
) -> None:
    """Without mypyc, TRIO_ZC_COMPILE=1 says why and installs the pure package; ``required`` fails."""
    _, tree, _ = sdist
    deps = _dependencies_view(tmp_path, without=("mypy", "mypyc"))  # mypy, mypyc, mypy_extensions
    venv = _throwaway_venv(tmp_path / "venv", deps)
    output = _pip_install(venv, "-v", f"{tree}[images]", env={"TRIO_ZC_COMPILE": "1"})
    assert "trio_zc: mypyc is not installed" in output and "pure Python" in output, output
    (tmp_path / "check.py").write_text(_which_build_check())
    assert _run(venv, "-P", tmp_path / "check.py", cwd=tmp_path).splitlines()[1] == "pure Python"
    other = _throwaway_venv(tmp_path / "other", deps)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", other, "install", "--no-index", "--no-deps",
         "--no-build-isolation", tree],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "TRIO_ZC_COMPILE": "required"},
    )
    assert result.returncode != 0 and "mypyc" in result.stdout + result.stderr, result
