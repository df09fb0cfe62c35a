"""Read a large plain CSV file lazily, in blocks of whole lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from ._spatialdata import VENDOR_FILE_HINT, check_required_columns, raise_no_transcripts

logger = logging.getLogger(__name__)

# Bytes per block of a lazily read CSV file, about 220,000 MERSCOPE rows of 77 bytes. On a
# 2-million-row MERSCOPE file, reading peaked 280 MB above the imported package (700 MB at 100 MiB).
BYTES_PER_BLOCK = 16 * 2**20


@dataclass(frozen=True)
class CsvBlock:
    """A run of whole lines of a CSV file, read on its own with the file's header.

    Attributes
    ----------
    start, stop
        Byte range of the lines in the file.
    first_row
        Row number (0 for the first line after the header) of the block's first row.
    n_rows
        Number of rows in the block.
    """

    start: int
    stop: int
    first_row: int
    n_rows: int


class BlockLayout:
    """Methods shared by the layouts of lazily read files, whose ``blocks`` have ``first_row`` and ``n_rows``.

    Subclasses define ``blocks``, in file order, and ``dtypes``, the type of each column.
    """

    blocks: tuple
    dtypes: dict[str, np.dtype]

    @property
    def n_rows(self) -> int:
        """Number of rows in the file."""
        return sum(block.n_rows for block in self.blocks)

    def empty_frame(self) -> pd.DataFrame:
        """Return a frame without rows that has the file's columns and types."""
        return pd.DataFrame({column: pd.Series([], dtype=dtype) for column, dtype in self.dtypes.items()})

    def to_dask(self, load: Callable[[Any], pd.DataFrame], *, meta: pd.DataFrame, label: str) -> dd.DataFrame:
        """Return a dask DataFrame with one partition per block, made by ``load`` and divided by row number."""
        return dd.from_map(
            load,
            self.blocks,
            meta=meta,
            divisions=(*(block.first_row for block in self.blocks), self.n_rows - 1),
            label=label,
            enforce_metadata=False,
        )


@dataclass(frozen=True)
class CsvLayout(BlockLayout):
    """The blocks of a CSV file and the column types that every block is read with.

    Attributes
    ----------
    file
        The CSV file.
    header
        The header line, as bytes.
    blocks
        The blocks that contain rows, in file order.
    dtypes
        Type of each column, the same in every block (see :func:`scan_csv`).
    """

    file: Path
    header: bytes
    blocks: tuple[CsvBlock, ...]
    dtypes: dict[str, np.dtype]

    def read(self, block: CsvBlock, columns: list[str] | None = None) -> pd.DataFrame:
        """Read one block, or only its ``columns``, with the file's column types, indexed by row number in the file."""
        dtypes = self.dtypes if columns is None else {column: self.dtypes[column] for column in columns}
        frame = _read_lines(
            self.file, self.header, block.start, block.stop, block.first_row, dtype=dtypes, usecols=columns
        )
        frame.index = pd.RangeIndex(block.first_row, block.first_row + len(frame))
        return frame


def csv_columns(file: Path) -> list[str]:
    """Return the column names in the header line of ``file``, or an empty list for an empty file."""
    with open(file, "rb") as handle:
        header = handle.readline()
    if not header.strip():
        return []
    return list(pd.read_csv(io.BytesIO(header), nrows=0).columns)


def scan_transcripts_csv(
    file: Path,
    *,
    required: tuple[str, ...],
    inspect: Callable[[pd.DataFrame], None],
    block_bytes: int | None = None,
) -> CsvLayout:
    """Check that a transcripts CSV has the ``required`` columns and rows, scanning it with :func:`scan_csv`.

    Raises
    ------
    ValueError
        When the file is empty, has only a header, or lacks a required column.
    """
    columns = csv_columns(file)
    if not columns:
        raise_no_transcripts(file)
    check_required_columns(pd.DataFrame(columns=columns), required, source=file.name, hint=VENDOR_FILE_HINT)

    layout = scan_csv(file, inspect=inspect, block_bytes=block_bytes)
    if layout.n_rows == 0:
        raise_no_transcripts(file)
    _warn_if_cut_off(file)
    return layout


def _warn_if_cut_off(file: Path) -> None:
    """Log a warning when ``file`` does not end with a line break, a sign that it was cut off."""
    with open(file, "rb") as handle:
        handle.seek(max(0, file.stat().st_size - 200))
        tail = handle.read()
    if tail.endswith(b"\n"):
        return

    last_line = tail.rsplit(b"\n", 1)[-1].decode(errors="replace")
    logger.warning(
        "%s does not end with a line break, so its last line %r may be cut off, as after an incomplete "
        "download or copy. Compare the file's size with the original's, and copy it again if they differ.",
        file.name,
        last_line,
    )


def scan_csv(
    file: Path, *, inspect: Callable[[pd.DataFrame], None], block_bytes: int | None = None
) -> CsvLayout:
    """Read ``file`` once, block by block, and return the layout to read it lazily.

    Each block is read with pandas' type inference and passed to ``inspect``, which can check or
    count its rows. A column whose inferred type differs between blocks gets one common type:
    float64 where the blocks found only numbers, object (strings) otherwise. So every block then
    reads to the same columns and types, as a lazy frame needs.

    Lines are split at newline bytes, so a quoted field must not span lines; the vendors' files
    have no such fields.

    Parameters
    ----------
    file
        A plain (not compressed) CSV file with a header line.
    inspect
        Called with each block as read, row numbers as index.
    block_bytes
        Approximate size of a block, :data:`BYTES_PER_BLOCK` when ``None``.
    """
    header, ranges = _split_lines(file, block_bytes or BYTES_PER_BLOCK)
    blocks, block_dtypes = [], []
    first_row = 0
    for start, stop in ranges:
        frame = _read_lines(file, header, start, stop, first_row)
        if frame.empty:
            continue
        frame.index = pd.RangeIndex(first_row, first_row + len(frame))
        inspect(frame)
        blocks.append(CsvBlock(start=start, stop=stop, first_row=first_row, n_rows=len(frame)))
        block_dtypes.append(frame.dtypes)
        first_row += len(frame)

    dtypes = {}
    for column in csv_columns(file):
        found = {types[column] for types in block_dtypes}
        dtypes[column] = _common_dtype(found)
    return CsvLayout(file=file, header=header, blocks=tuple(blocks), dtypes=dtypes)


def _split_lines(file: Path, block_bytes: int) -> tuple[bytes, list[tuple[int, int]]]:
    """Return the header line and the byte ranges of blocks of whole lines that follow it."""
    size = file.stat().st_size
    ranges = []
    with open(file, "rb") as handle:
        header = handle.readline()
        start = handle.tell()
        while start < size:
            if start + block_bytes >= size:
                stop = size
            else:
                # Read on to the end of the line that the block's last byte belongs to.
                handle.seek(start + block_bytes - 1)
                handle.readline()
                stop = handle.tell()
            ranges.append((start, stop))
            start = stop
    return header, ranges


def _read_lines(file: Path, header: bytes, start: int, stop: int, first_row: int, **options) -> pd.DataFrame:
    """Read the lines in bytes ``start`` to ``stop`` of ``file`` under its header.

    ``first_row``, the row number of the first line, goes into the error message.
    """
    with open(file, "rb") as handle:
        handle.seek(start)
        lines = handle.read(stop - start)
    if not header.endswith(b"\n"):
        header += b"\n"
    try:
        return pd.read_csv(io.BytesIO(header + lines), **options)
    except pd.errors.ParserError as error:
        # pandas counts rows from the start of the block, so the block's place in the file is given.
        msg = (
            f"{file.name} in {str(file.parent)!r} could not be parsed in the block that starts at data row "
            f"{first_row} (bytes {start} to {stop}): {error}. Check that the export is complete and that "
            "the file was not edited, or replace it with the instrument's original file."
        )
        raise ValueError(msg) from error


def _common_dtype(dtypes: set[np.dtype]) -> np.dtype:
    if len(dtypes) == 1:
        return next(iter(dtypes))
    if dtypes and all(
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) for dtype in dtypes
    ):
        return np.dtype(np.float64)
    return np.dtype(object)
