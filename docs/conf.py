"""Sphinx configuration for the segger documentation.

Build from the repository root with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
The build runs offline, because it fetches no intersphinx inventories and executes no notebook.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.errors import ConfigError

import segger

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent

# Tutorials live in the repository's notebooks/ folder, outside the Sphinx source tree, so each
# build copies them into docs/tutorials/ (ignored by git) before Sphinx looks for source files.
TUTORIAL_NOTEBOOKS = ["xenium_tutorial.ipynb"]
NOTEBOOK_SOURCE_DIR = REPO_ROOT / "notebooks"
NOTEBOOK_COPY_DIR = DOCS_DIR / "tutorials"

project = "segger"
author = "segger developers"
copyright = "segger developers"
release = segger.__version__
version = release

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# Stub pages for every entry of an autosummary table with :toctree:, written to docs/generated/.
autosummary_generate = True
autodoc_member_order = "bysource"

# With numpydoc's defaults, class pages would list every member twice and add toctrees for them.
# The class template in _templates/autosummary/ documents members through autodoc instead.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# Notebooks are stored with their outputs and are rendered as they are.
nb_execution_mode = "off"

html_theme = "sphinx_book_theme"
html_title = f"segger {release}"


def copy_tutorial_notebooks(app) -> None:
    """Copy the tutorial notebooks from notebooks/ into the Sphinx source tree.

    Copies of notebooks no longer listed are deleted. A copy is rewritten only when its content
    differs, so an unchanged notebook keeps its modification time and an incremental build does
    not reread it.
    """
    NOTEBOOK_COPY_DIR.mkdir(exist_ok=True)
    for stale in NOTEBOOK_COPY_DIR.glob("*.ipynb"):
        if stale.name not in TUTORIAL_NOTEBOOKS:
            stale.unlink()

    for name in TUTORIAL_NOTEBOOKS:
        source = NOTEBOOK_SOURCE_DIR / name
        if not source.is_file():
            msg = (
                f"Tutorial notebook {source} not found. The documentation includes every notebook "
                f"in TUTORIAL_NOTEBOOKS of docs/conf.py; restore the file, or remove its name there and "
                f"its entry from the toctree in docs/tutorials.md."
            )
            raise ConfigError(msg)
        target = NOTEBOOK_COPY_DIR / name
        if not target.is_file() or target.read_bytes() != source.read_bytes():
            shutil.copy2(source, target)


def setup(app) -> None:
    app.connect("builder-inited", copy_tutorial_notebooks)
