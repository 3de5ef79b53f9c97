"""Sphinx configuration for the trio_zc documentation (built by ``make test``).

``make docs`` builds with ``-n -W``: every cross-reference must resolve,
offline. Trio's, Python's, NumPy's and Pillow's names resolve through small
inventories made from ``_intersphinx.py`` at build time, linking to those
projects' real pages; trio_zc's private names never appear in the reference.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(HERE.parent))
sys.path.insert(0, os.fspath(HERE))

import _intersphinx  # noqa: E402  (after the path is set)

project = "trio_zc"
author = "The trio_zc developers"
copyright = "2026, the trio_zc developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

# No network: the inventories are written here, from _intersphinx.py.
intersphinx_mapping = _intersphinx.write_inventories(HERE / "_build" / "inventories")
intersphinx_timeout = 1

default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Parameters are described in each docstring's prose; listing their types as
# well showed the private classes behind constructors meant for the library
# (BufferPool, the leases), so only return types are added.
autodoc_typehints_description_target = "documented_params"
# No default "members": each entry of reference.rst says which members it shows
# (and tests/tools/test_exports.py that it accounts for every public one).
autodoc_default_options = {"undoc-members": False, "show-inheritance": False}
nitpicky = True
# The type variable of LeaseCache's keys (the application's own type), shown as K.
nitpick_ignore = [("py:class", "trio_zc._cache.K"), ("py:obj", "trio_zc._cache.K")]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "trio_zc"
html_static_path = ["_static"]
html_css_files = ["wide.css"]
html_theme_options = {
    # The default (940 px) cut code lines off at 1280 px screens. Narrower
    # windows than this get alabaster's one-column layout.
    "page_width": "1240px",
    "sidebar_width": "220px",
    # 110-character lines (ruff's limit here) fit beside the sidebar at 1280 px;
    # longer ones wrap (wide.css).
    "code_font_size": "0.8em",
}

# Names that autodoc or trio's inherited docstrings write short, and where they live.
_ALIASES = {
    "Image.Image": "PIL.Image.Image",
    "AsyncResource": "trio.abc.AsyncResource",
    "AsyncResource.aclose": "trio.abc.AsyncResource.aclose",
    "SendStream": "trio.abc.SendStream",
    "SendStream.send_all": "trio.abc.SendStream.send_all",
    "SendStream.wait_send_all_might_not_block": "trio.abc.SendStream.wait_send_all_might_not_block",
    "ReceiveStream": "trio.abc.ReceiveStream",
    "ReceiveStream.receive_some": "trio.abc.ReceiveStream.receive_some",
    "Stream": "trio.abc.Stream",
    "HalfCloseableStream": "trio.abc.HalfCloseableStream",
    "HalfCloseableStream.send_eof": "trio.abc.HalfCloseableStream.send_eof",
    "Listener": "trio.abc.Listener",
}
# Private classes in public signatures, shown as the public name an application uses.
_PUBLIC_FOR_PRIVATE = {
    # open_pool(kernel=...): a kernel's name, or the only public Kernel, the mock.
    "trio_zc._kernels._base.Kernel": "trio_zc.testing.MockKernel",
    # What a kernel sees of a lease (the boundary protocol): a sealed lease.
    "SendableLease": "trio_zc.SealedLease",
    "trio_zc._kernels._base.SendableLease": "trio_zc.SealedLease",
}


# Public type aliases (documented as data) by the short name a signature may show.
_PUBLIC_DATA = {"Body": "trio_zc.http.Body", "Handler": "trio_zc.http.Handler"}


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve the names above; leave every other miss to ``-n`` to report."""
    from docutils import nodes
    from sphinx.ext import intersphinx

    target = node.get("reftarget", "")
    public = _PUBLIC_FOR_PRIVATE.get(target)
    if public is not None:
        domain = env.get_domain("py")
        builder = app.builder
        new = node.deepcopy()
        new["reftarget"] = public
        text = nodes.literal(public.rsplit(".", 1)[1], public.rsplit(".", 1)[1])
        return domain.resolve_xref(env, node["refdoc"], builder, "class", public, new, text)
    data = _PUBLIC_DATA.get(target)
    if data is not None:
        # Python 3.10's autodoc leaves these aliases' short names in signatures.
        new = node.deepcopy()
        new["reftarget"] = data
        return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, "obj", data, new, contnode)
    alias = _ALIASES.get(target)
    if alias is not None:
        new = node.deepcopy()
        new["reftarget"] = alias
        return intersphinx.missing_reference(app, env, new, contnode)
    return None


# Public classes report their public module (trio_zc.PoolStatistics, not
# trio_zc._pool.PoolStatistics; see trio_zc/_exports.py), so autodoc looks for
# the ``#:`` comments of their fields, and of public constants, in the public
# module's source, where they are not: the reference would show fields with
# no description and a constant with the docstring of ``float``. This finds
# each comment where its object is defined (tests/tools/test_exports.py checks it).

_attr_docs = None


def _package_attr_docs():
    """``{module: {(class qualname or "", name): comment lines}}`` for every module of trio_zc."""
    global _attr_docs
    if _attr_docs is None:
        import pkgutil

        from sphinx.pycode import ModuleAnalyzer

        import trio_zc

        _attr_docs = {
            info.name: ModuleAnalyzer.for_module(info.name).find_attr_docs()
            for info in pkgutil.walk_packages(trio_zc.__path__, "trio_zc.")
        }
    return _attr_docs


def _resolve(dotted, start=None):
    """The object at *dotted*: a path from *start*, or from the longest importable module."""
    import importlib

    parts = dotted.split(".")
    if start is not None:
        obj = start
    else:
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            parts = parts[i:]
            break
        else:
            raise ImportError(dotted)
    for part in parts:
        obj = getattr(obj, part, None)
    return obj


def source_comment(name):
    """The ``#:`` comment of the public field or constant *name* (dotted), or None."""
    owner_name, _, attr = name.rpartition(".")
    owner = _resolve(owner_name)
    if isinstance(owner, type):
        # A field: the class, or one of its bases, defines it.
        wanted = [(cls.__qualname__, cls) for cls in owner.__mro__]
    else:
        # A constant: its module defines it.
        wanted = [("", getattr(owner, attr))]
    for modname, docs in _package_attr_docs().items():
        for qualname, obj in wanted:
            lines = docs.get((qualname, attr))
            if lines is not None and _resolve(qualname or attr, _resolve(modname)) is obj:
                return list(lines)
    return None


def _fill_in_comments(app, what, name, obj, options, lines):
    if what not in ("attribute", "data"):
        return
    own = "\n".join(lines).strip()
    if own and own != (type(obj).__doc__ or "").strip():
        return  # documented already, not just by the docstring of the value's type
    comment = source_comment(name)
    if comment is not None:
        lines[:] = comment


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_alias)
    app.connect("autodoc-process-docstring", _fill_in_comments)
