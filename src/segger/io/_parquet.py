"""Read a large Parquet transcript file lazily, one row group at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ._csv import BlockLayout, CsvLayout, scan_transcripts_csv
from ._spatialdata import VENDOR_FILE_HINT, check_required_columns, raise_no_transcripts

logger = logging.getLogger(__name__)

# A row group with more rows than this is still read whole, with a warning.
LARGE_ROW_GROUP = 20_000_000


@dataclass(frozen=True)
class RowGroup:
    """One row group of a Parquet file.

    Attributes
    ----------
    index
        Position of the row group in the file.
    first_row
        Row number (0 for the file's first row) of the group's first row.
    n_rows
        Number of rows in the group.
    """

    index: int
    first_row: int
    n_rows: int


@dataclass(frozen=True)
class ParquetLayout(BlockLayout):
    """The non-empty row groups of a Parquet file and its column types, as :class:`~segger.io._csv.CsvLayout` for CSV.

    Attributes
    ----------
    file
        The Parquet file.
    blocks
        The row groups that contain rows, in file order.
    dtypes
        Pandas type of each column, from the file's schema.
    """

    file: Path
    blocks: tuple[RowGroup, ...]
    dtypes: dict[str, np.dtype]

    def read(self, block: RowGroup) -> pd.DataFrame:
        """Read one row group, indexed by row number in the file."""
        return _read_row_group(self.file, list(self.dtypes), block)


def scan_transcript_file(
    file: Path,
    *,
    required: tuple[str, ...],
    inspect: Callable[[pd.DataFrame], None],
    block_bytes: int | None = None,
) -> CsvLayout | ParquetLayout:
    """Check a plain CSV or Parquet transcript file in one pass and return the layout to read it lazily.

    Parameters
    ----------
    file
        A ``.csv`` file (see :func:`~segger.io._csv.scan_transcripts_csv`) or a ``.parquet`` file
        (see :func:`scan_transcripts_parquet`).
    required
        Columns the file must have.
    inspect
        Called with each block or row group as read, row numbers as index.
    block_bytes
        Approximate size of a CSV block; unused for Parquet, whose row groups are the blocks.
    """
    if file.name.endswith(".parquet"):
        return scan_transcripts_parquet(file, required=required, inspect=inspect)
    return scan_transcripts_csv(file, required=required, inspect=inspect, block_bytes=block_bytes)


def scan_transcripts_parquet(
    file: Path, *, required: tuple[str, ...], inspect: Callable[[pd.DataFrame], None]
) -> ParquetLayout:
    """Read a Parquet transcript file once, row group by row group, and return the layout to read it lazily.

    Raises
    ------
    ValueError
        When the file has no rows or lacks a required column.
    """
    parquet = pq.ParquetFile(file)
    schema = parquet.schema_arrow
    columns = [name for name in schema.names if not name.startswith("__index_level_")]
    check_required_columns(pd.DataFrame(columns=columns), required, source=file.name, hint=VENDOR_FILE_HINT)

    blocks = []
    first_row = 0
    for index in range(parquet.num_row_groups):
        n_rows = parquet.metadata.row_group(index).num_rows
        if n_rows == 0:
            continue
        if n_rows > LARGE_ROW_GROUP:
            logger.warning(
                "Row group %d of %s has %d rows and is read whole. Files written with smaller row "
                "groups, for example `row_group_size=1_000_000` in pandas' `to_parquet`, are read "
                "in smaller pieces.",
                index,
                file.name,
                n_rows,
            )
        block = RowGroup(index=index, first_row=first_row, n_rows=n_rows)
        inspect(_read_row_group(file, columns, block))
        blocks.append(block)
        first_row += n_rows
    if first_row == 0:
        raise_no_transcripts(file)

    empty = schema.empty_table().select(columns).to_pandas()
    return ParquetLayout(file=file, blocks=tuple(blocks), dtypes=dict(empty.dtypes))


def _read_row_group(file: Path, columns: list[str], block: RowGroup) -> pd.DataFrame:
    """Read ``columns`` of one row group of ``file``, indexed by row number in the file."""
    frame = pq.ParquetFile(file).read_row_group(block.index, columns=columns).to_pandas()
    frame.index = pd.RangeIndex(block.first_row, block.first_row + len(frame))
    return frame
