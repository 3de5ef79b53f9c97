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
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
nitpicky = True

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
    alias = _ALIASES.get(target)
    if alias is not None:
        new = node.deepcopy()
        new["reftarget"] = alias
        return intersphinx.missing_reference(app, env, new, contnode)
    return None


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_alias)
