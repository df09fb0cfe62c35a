"""Repeat the transcripts of a real crop into a larger vendor file."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def write_repeated_rows(
    rows: pd.DataFrame,
    file: Path,
    n_rows: int,
    shifted: Callable[[pd.DataFrame, int], pd.DataFrame],
    *,
    gzipped: bool = False,
) -> None:
    """Write ``rows`` as CSV to ``file`` again and again until it has ``n_rows`` rows.

    ``shifted(part, copy)`` returns the rows of copy number ``copy`` (0 for the first), for example
    moved beside the previous copy. With ``gzipped``, the file is gzip-compressed. It is written
    under another name and renamed when complete, so an interrupted run leaves no partial file
    under ``file``.
    """
    unfinished = file.with_name(file.name + ".unfinished")
    written, copy = 0, 0
    with gzip.open(unfinished, "wt", compresslevel=6) if gzipped else open(unfinished, "w") as handle:
        while written < n_rows:
            part = shifted(rows.iloc[: n_rows - written], copy)
            part.to_csv(handle, index=False, header=copy == 0)
            written += len(part)
            copy += 1
    unfinished.rename(file)
