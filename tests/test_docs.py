"""Build the HTML documentation with Sphinx, treating warnings as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    for module in ("sphinx", "myst_nb", "numpydoc", "sphinx_book_theme"):
        pytest.importorskip(
            module, reason=f"{module} is not installed; install the doc extra: pip install -e '.[doc]'"
        )

    # myst-nb writes notebook outputs to jupyter_execute/ beside the HTML folder, so both stay in tmp_path.
    html_dir = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS_DIR),
            str(html_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr}"
    assert (html_dir / "index.html").is_file()
    assert (html_dir / "api.html").is_file()
    assert (html_dir / "generated" / "segger.tl.segger_fit.html").is_file()
    assert (html_dir / "generated" / "segger.models.Segger.html").is_file()
    assert (html_dir / "tutorials" / "xenium_tutorial.html").is_file()
