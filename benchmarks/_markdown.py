"""Write a benchmark's report into its own section of a shared markdown file."""

from __future__ import annotations

from pathlib import Path

TITLE = "# Benchmark results\n\nEach section below is written by the script it names; text outside the sections is kept.\n"


def replace_section(path: Path, name: str, text: str) -> None:
    """Replace the section ``name`` of the markdown file ``path`` with ``text``, or append it.

    A section runs from the line ``<!-- begin NAME -->`` to the line ``<!-- end NAME -->``, so a
    script rewrites its own figures and leaves the other sections and hand-written notes as they
    are. A missing file is created with a title.
    """
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n\n{text.strip()}\n\n{end}"
    content = path.read_text() if path.exists() else TITLE

    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        _, tail = rest.split(end, 1)
        content = head + block + tail
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
