"""Sphinx configuration: MyST Markdown pages, autodoc for the API page."""

import flask_messaging

project = "flask-messaging"
copyright = "The flask-messaging developers"
release = flask_messaging.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx_click",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"flask-messaging {release}"
