"""Sphinx configuration for the trio_zc documentation (built by ``make test``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

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
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "trio_zc"
