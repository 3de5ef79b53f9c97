"""Sphinx configuration for the trio_zc documentation (built by ``make test``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "trio_zc"
author = "The trio_zc developers"
copyright = "2026, the trio_zc developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

# The documentation is built offline: no intersphinx inventories to fetch.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# No default "members": each entry of reference.rst says which members it shows
# (and tests/test_exports.py that it accounts for every public one).
autodoc_default_options = {"undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "trio_zc"


# Public classes report their public module (trio_zc.PoolStatistics, not
# trio_zc._pool.PoolStatistics; see trio_zc/_exports.py), so autodoc looks for
# the ``#:`` comments of their fields, and of public constants, in the public
# module's source, where they are not: the reference would show fields with
# no description and a constant with the docstring of ``float``. This finds
# each comment where its object is defined (tests/test_exports.py checks it).

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


def _no_constructor_parameters(app, what, name, obj, options, signature, return_annotation):
    # reference.rst writes "autoclass:: Name()" for classes that have no public
    # constructor; the parameters of their private __init__ must not come back
    # as a "Parameters" list (autodoc_typehints = "description" records them).
    if what == "class" and signature == "()":
        document = getattr(app.env, "current_document", None)  # Sphinx 9
        annotations = (
            document.autodoc_annotations if document is not None else app.env.temp_data.get("annotations", {})
        )
        annotations.pop(name, None)


def setup(app):
    app.connect("autodoc-process-docstring", _fill_in_comments)
    # After autodoc's own handler, which records the annotations (priority 500).
    app.connect("autodoc-process-signature", _no_constructor_parameters, priority=900)
