"""Group the rows of a slide-sized array by a key, with working memory bounded by a block of rows.

Sorting the transcripts of a whole slide by tile or by cell with :func:`numpy.argsort` needs
several temporary arrays of one entry per transcript. Here the keys are computed block by block,
twice: once to count each key's rows and once to place the rows, so only the result, which the
caller may keep on disk, grows with the slide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

BLOCK_ROWS = 1 << 20
"""Rows handled at once by :func:`row_blocks` and :func:`group_rows`."""


def row_blocks(n_rows: int, size: int | None = None) -> Iterator[slice]:
    """Yield consecutive slices of at most ``size`` rows (default :data:`BLOCK_ROWS`) covering ``n_rows``."""
    size = BLOCK_ROWS if size is None else size
    for start in range(0, n_rows, size):
        yield slice(start, min(start + size, n_rows))


def group_rows(
    keys_of: Callable[[slice], np.ndarray],
    n_rows: int,
    n_groups: int,
    allocate: Callable[[int], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows ordered by key, as a stable sort would order them, and where each key starts.

    Parameters
    ----------
    keys_of
        Returns the integer keys of the rows in a block, in ``range(n_groups)``, or negative
        for rows to leave out. Called twice for every block.
    n_rows
        Number of rows.
    n_groups
        Number of distinct keys.
    allocate
        Returns an empty integer array of the given length to hold the result, for example a
        memory map.

    Returns
    -------
    rows
        The rows with a key, sorted by key and ascending within a key.
    starts
        Position in ``rows`` where each key's rows start, shape ``(n_groups + 1,)``, int64.
    """
    sizes = np.zeros(n_groups, dtype=np.int64)
    for block in row_blocks(n_rows):
        keys = keys_of(block)
        sizes += np.bincount(keys[keys >= 0], minlength=n_groups)
    starts = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])

    rows = allocate(int(starts[-1]))
    next_free = starts[:-1].copy()
    for block in row_blocks(n_rows):
        keys = keys_of(block)
        with_key = np.flatnonzero(keys >= 0)
        keys = keys[with_key]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        rank = np.arange(len(keys)) - np.searchsorted(sorted_keys, sorted_keys, side="left")
        rows[next_free[sorted_keys] + rank] = block.start + with_key[order]
        next_free += np.bincount(keys, minlength=n_groups)
    return rows, starts
