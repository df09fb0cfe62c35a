"""Read a 10x Xenium output folder into segger's SpatialData layout."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from os import PathLike
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from spatialdata import SpatialData

from .. import _constants as C
from .._repeats import Repeats, find_repeats
from ._csv import CsvBlock, CsvLayout, scan_transcripts_csv
from ._gzip import (
    GZIP_ERRORS,
    broken_gzip,
    check_reader_scratch_dir,
    is_gzipped,
    log_read_whole,
    readable_file,
    unparsable_csv,
)
from ._shapes import polygons_from_vertices
from ._spatialdata import (
    VENDOR_FILE_HINT,
    TranscriptChecks,
    build_spatialdata,
    check_required_columns,
    decode_byte_strings,
    flag_controls,
    raise_no_transcripts,
    to_cell_id_strings,
)

logger = logging.getLogger(__name__)

# Tried in this order: the first two are read in blocks, a gzipped file only with scratch_dir.
TRANSCRIPT_FILES = ("transcripts.parquet", "transcripts.csv", "transcripts.csv.gz")
NUCLEUS_FILES = ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz", "nucleus_boundaries.csv")
CELL_FILES = ("cell_boundaries.parquet", "cell_boundaries.csv.gz", "cell_boundaries.csv")

COLUMN_NAMES = {"x_location": C.X, "y_location": C.Y, "z_location": C.Z}
REQUIRED_COLUMNS = ("x_location", "y_location", "feature_name")
COORDINATE_COLUMNS = ("x_location", "y_location", "z_location")
# Rows per partition of a lazily read transcripts.parquet. With Xenium's dozen columns, one
# partition takes an estimated one to a few hundred MB in pandas.
ROWS_PER_PARTITION = 1_000_000

# Xenium's `codeword_category` values that are real genes; every other category is a control.
GENE_CATEGORIES = ("predesigned_gene", "custom_gene")


def xenium(
    path: str | Path, *, cell_boundaries: bool = True, scratch_dir: str | PathLike[str] | None = None
) -> SpatialData:
    """Read a Xenium output folder.

    Works on a full output bundle and on a bare folder holding only the files below.

    Parameters
    ----------
    path
        Folder holding ``transcripts.parquet``, ``.csv`` or ``.csv.gz``, tried in this order, and
        ``nucleus_boundaries.parquet`` (or ``.csv.gz``), and optionally ``cell_boundaries``.
    cell_boundaries
        Whether to read ``cell_boundaries`` when the folder has them.
    scratch_dir
        Existing folder into which a gzipped ``transcripts.csv.gz`` is decompressed, so that it
        is read in blocks like a plain file, when the folder has no ``transcripts.parquet``.
        The copy is deleted once the points element is garbage-collected or Python exits.
        ``None`` reads a gzipped file whole into memory.

    Returns
    -------
    SpatialData with the points element ``"transcripts"`` (columns ``x``, ``y``, ``z`` in µm,
    ``feature_name``, ``transcript_id``, ``cell_id``, ``overlaps_nucleus``, ``qv``,
    ``is_control`` and every other vendor column unchanged) and the shapes elements
    ``"nucleus_boundaries"`` and, when present, ``"cell_boundaries"``, indexed by Xenium's cell id.
    Control probes are flagged in ``is_control`` and kept.

    ``transcripts.parquet`` is read lazily, a group of row groups at a time, and so is a plain
    ``transcripts.csv``, in blocks of about 16 MB, or a gzipped one with ``scratch_dir``.
    """
    folder = Path(path)
    if not folder.is_dir():
        msg = f"Xenium folder {str(folder)!r} does not exist or is not a folder."
        raise FileNotFoundError(msg)
    scratch_dir = check_reader_scratch_dir(scratch_dir)

    transcripts_file = _find_file(folder, TRANSCRIPT_FILES, required=True)
    nucleus_file = _find_file(folder, NUCLEUS_FILES, required=True)
    cell_file = _find_file(folder, CELL_FILES, required=False) if cell_boundaries else None

    if transcripts_file.name.endswith(".parquet"):
        points = read_parquet_transcripts(transcripts_file)
        n_features = len(points[C.FEATURE_NAME].cat.categories)
    elif not is_gzipped(transcripts_file) or scratch_dir is not None:
        points = read_csv_transcripts_lazily(transcripts_file, scratch_dir=scratch_dir)
        n_features = len(points[C.FEATURE_NAME].cat.categories)
    else:
        log_read_whole(transcripts_file)
        points = read_transcripts(transcripts_file)
        n_features = points[C.FEATURE_NAME].nunique()

    shapes = {C.NUCLEUS_SHAPES_KEY: _read_boundaries(nucleus_file)}
    if cell_file is not None:
        shapes[C.CELL_SHAPES_KEY] = _read_boundaries(cell_file)

    logger.info(
        "Read %d transcripts of %d features from %s and %d nuclei from %s.",
        len(points),
        n_features,
        transcripts_file.name,
        len(shapes[C.NUCLEUS_SHAPES_KEY]),
        folder,
    )
    return build_spatialdata(points, shapes)


def read_transcripts(file: str | Path) -> pd.DataFrame:
    """Read a Xenium transcripts file into the points schema as a pandas DataFrame."""
    file = Path(file)
    frame = _read_table(file)
    if frame.empty:
        raise_no_transcripts(file)
    check_required_columns(frame, REQUIRED_COLUMNS, source=file.name, hint=VENDOR_FILE_HINT)
    frame = frame.reset_index(drop=True)
    checks = TranscriptChecks(COORDINATE_COLUMNS, C.FEATURE_NAME)
    checks.add(frame)
    checks.check(len(frame), source=file.name)
    if C.TRANSCRIPT_ID in frame.columns:
        ids = frame[C.TRANSCRIPT_ID].to_numpy(dtype=np.int64)
        _raise_for_repeats(find_repeats(lambda: [ids], len(ids)), source=file.name)
    return _to_points_schema(frame, row_offset=0)


def read_parquet_transcripts(file: str | Path, *, rows_per_partition: int | None = None) -> dd.DataFrame:
    """Read a Xenium ``transcripts.parquet`` lazily into the points schema, as a dask DataFrame.

    One pass reads only the coordinates, ids and gene names, one group of parquet row groups at
    a time, to check them and to collect the genes. The returned frame reads and converts each
    partition, of about ``rows_per_partition`` rows, only when it is computed. So a slide is
    never loaded whole.

    Parameters
    ----------
    file
        The ``transcripts.parquet`` file.
    rows_per_partition
        Rows per partition, :data:`ROWS_PER_PARTITION` when ``None``; row groups are never split.

    Returns
    -------
    The transcripts, with ``feature_name`` a categorical of the sorted gene names and the row
    number as index, as :func:`read_transcripts` returns them.
    """
    file = Path(file)
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as error:
        msg = (
            f"{file.name} in {str(file.parent)!r} is not a readable parquet file ({error}). Check that "
            "the export is complete, or replace it with the instrument's original file."
        )
        raise ValueError(msg) from error
    columns = parquet.schema_arrow.names
    if parquet.metadata.num_rows == 0:
        raise_no_transcripts(file)
    check_required_columns(
        pd.DataFrame(columns=columns), REQUIRED_COLUMNS, source=file.name, hint=VENDOR_FILE_HINT
    )

    partitions = _row_group_partitions(parquet, rows_per_partition or ROWS_PER_PARTITION)
    genes = _scan_transcripts(parquet, partitions, source=file.name)
    load = partial(_load_partition, file=str(file), genes=tuple(genes))
    meta = _to_points_schema(parquet.schema_arrow.empty_table().to_pandas(), row_offset=0, genes=genes)
    offsets = [offset for _, offset in partitions]
    return dd.from_map(
        load,
        partitions,
        meta=meta,
        divisions=(*offsets, parquet.metadata.num_rows - 1),
        label="xenium-transcripts",
        enforce_metadata=False,
    )


def read_csv_transcripts_lazily(
    file: str | Path, *, scratch_dir: str | PathLike[str] | None = None, block_bytes: int | None = None
) -> dd.DataFrame:
    """Read a Xenium ``transcripts.csv`` lazily into the points schema, as a dask DataFrame.

    One pass reads the file block by block to check the coordinates and gene names and to
    collect the genes, and a second reads only ``transcript_id`` to check that no id repeats.
    The returned frame reads and converts each block only when it is computed.

    Parameters
    ----------
    file
        ``transcripts.csv``, or ``transcripts.csv.gz`` with ``scratch_dir``.
    scratch_dir
        See :func:`xenium`.
    block_bytes
        Approximate bytes per partition, :data:`segger.io._csv.BYTES_PER_BLOCK` when ``None``.

    Returns
    -------
    The transcripts as :func:`read_transcripts` returns them, with ``feature_name`` a
    categorical of the sorted gene names.
    """
    file = Path(file)
    with readable_file(file, scratch_dir) as readable:
        checks = TranscriptChecks(COORDINATE_COLUMNS, C.FEATURE_NAME)
        genes: set[str] = set()

        def inspect(frame: pd.DataFrame) -> None:
            checks.add(frame)
            genes.update(frame[C.FEATURE_NAME].dropna().astype(str).unique())

        layout = scan_transcripts_csv(
            readable.path, required=REQUIRED_COLUMNS, inspect=inspect, block_bytes=block_bytes
        )
        checks.check(layout.n_rows, source=readable.path.name)
        if C.TRANSCRIPT_ID in layout.dtypes:
            _check_unique_csv_ids(layout, source=readable.path.name)

        ordered = tuple(sorted(genes))
        meta = _to_points_schema(layout.empty_frame(), row_offset=0, genes=ordered)
        load = partial(_load_csv_block, layout=layout, genes=ordered)
        points = layout.to_dask(load, meta=meta, label="xenium-transcripts")
        readable.keep_while(load)
    return points


def _check_unique_csv_ids(layout: CsvLayout, *, source: str) -> None:
    """Raise ValueError when ``transcript_id`` repeats a value, reading only that column a block at a time."""

    def read_blocks() -> Iterator[np.ndarray]:
        for block in layout.blocks:
            yield layout.read(block, columns=[C.TRANSCRIPT_ID])[C.TRANSCRIPT_ID].to_numpy().astype(np.int64)

    _raise_for_repeats(find_repeats(read_blocks, layout.n_rows), source=source)


def _load_csv_block(block: CsvBlock, *, layout: CsvLayout, genes: tuple[str, ...]) -> pd.DataFrame:
    """Read one block of ``transcripts.csv`` and convert it to the points schema."""
    return _to_points_schema(layout.read(block), row_offset=block.first_row, genes=genes)


def _row_group_partitions(
    parquet: pq.ParquetFile, rows_per_partition: int
) -> list[tuple[tuple[int, ...], int]]:
    """Group consecutive row groups into partitions of about ``rows_per_partition`` rows.

    Returns each partition's row groups and the row number of its first row.
    """
    partitions, groups, offset, rows = [], [], 0, 0
    for group in range(parquet.num_row_groups):
        groups.append(group)
        rows += parquet.metadata.row_group(group).num_rows
        if rows >= rows_per_partition:
            partitions.append((tuple(groups), offset))
            groups, offset, rows = [], offset + rows, 0
    if groups:
        partitions.append((tuple(groups), offset))
    return partitions


def _scan_transcripts(
    parquet: pq.ParquetFile, partitions: list[tuple[tuple[int, ...], int]], *, source: str
) -> list[str]:
    """Check the coordinates and transcript ids of every partition, and return the sorted gene names."""
    needed = [*COORDINATE_COLUMNS, C.TRANSCRIPT_ID, C.FEATURE_NAME]
    columns = [column for column in needed if column in parquet.schema_arrow.names]
    checks = TranscriptChecks(COORDINATE_COLUMNS, C.FEATURE_NAME)
    genes: set[str] = set()
    for groups, offset in partitions:
        frame = parquet.read_row_groups(list(groups), columns=columns).to_pandas()
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        checks.add(frame)
        genes.update(decode_byte_strings(frame[C.FEATURE_NAME]).astype(str).unique())

    checks.check(parquet.metadata.num_rows, source=source)
    if C.TRANSCRIPT_ID in columns:
        _check_unique_file_ids(parquet, partitions, source=source)
    return sorted(genes)


def _check_unique_file_ids(
    parquet: pq.ParquetFile, partitions: list[tuple[tuple[int, ...], int]], *, source: str
) -> None:
    """Raise ValueError when ``transcript_id`` repeats a value, reading the column a partition at a time."""

    def read_blocks() -> Iterator[np.ndarray]:
        for groups, _ in partitions:
            table = parquet.read_row_groups(list(groups), columns=[C.TRANSCRIPT_ID])
            yield table.column(0).to_numpy().astype(np.int64)

    _raise_for_repeats(find_repeats(read_blocks, parquet.metadata.num_rows), source=source)


def _load_partition(
    partition: tuple[tuple[int, ...], int], *, file: str, genes: tuple[str, ...]
) -> pd.DataFrame:
    """Read one partition's row groups and convert them to the points schema."""
    groups, offset = partition
    frame = pq.ParquetFile(file).read_row_groups(list(groups)).to_pandas()
    return _to_points_schema(frame, row_offset=offset, genes=genes)


def _to_points_schema(
    frame: pd.DataFrame, *, row_offset: int, genes: tuple[str, ...] | list[str] | None = None
) -> pd.DataFrame:
    """Convert checked Xenium rows to the points schema; their first row has number ``row_offset``.

    ``genes`` makes ``feature_name`` a categorical of those names; ``None`` keeps strings.
    """
    frame = frame.rename(columns=COLUMN_NAMES)
    frame[C.FEATURE_NAME] = decode_byte_strings(frame[C.FEATURE_NAME]).astype(str)
    if genes is not None:
        frame[C.FEATURE_NAME] = frame[C.FEATURE_NAME].astype(pd.CategoricalDtype(list(genes)))

    if C.TRANSCRIPT_ID in frame.columns:
        frame[C.TRANSCRIPT_ID] = frame[C.TRANSCRIPT_ID].astype(np.int64)
    else:
        frame[C.TRANSCRIPT_ID] = np.arange(row_offset, row_offset + len(frame), dtype=np.int64)

    if C.CELL_ID in frame.columns:
        frame[C.CELL_ID] = to_cell_id_strings(frame[C.CELL_ID])
    if C.OVERLAPS_NUCLEUS in frame.columns:
        frame[C.OVERLAPS_NUCLEUS] = frame[C.OVERLAPS_NUCLEUS].astype(bool)
    frame[C.IS_CONTROL] = _control_flags(frame)

    frame.index = pd.RangeIndex(row_offset, row_offset + len(frame))
    return frame


def _read_boundaries(file: Path):
    vertices = _read_table(file)
    if vertices.empty:
        logger.warning("%s contains no vertices.", file.name)
        vertices = pd.DataFrame({"cell_id": [], "vertex_x": [], "vertex_y": []})
    return polygons_from_vertices(vertices, source=file.name)


def _control_flags(frame: pd.DataFrame) -> np.ndarray:
    if "is_gene" in frame.columns:
        return ~frame["is_gene"].astype(bool).to_numpy()
    if "codeword_category" in frame.columns:
        categories = decode_byte_strings(frame["codeword_category"]).astype(str)
        return ~categories.isin(GENE_CATEGORIES).to_numpy()
    return flag_controls(frame[C.FEATURE_NAME])


def _raise_for_repeats(repeats: Repeats, *, source: str) -> None:
    if repeats:
        msg = (
            f"{source} has {repeats.n_rows} rows whose transcript_id another row shares, for example "
            f"{repeats.example}. transcript_id must be a unique key per transcript: "
            "remove the duplicate rows or drop the column so that row numbers are used instead."
        )
        raise ValueError(msg)


def _find_file(folder: Path, names: tuple[str, ...], *, required: bool) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    if required:
        msg = f"None of {list(names)} was found in {str(folder)!r}; a Xenium folder needs one of them."
        raise FileNotFoundError(msg)
    return None


def _read_table(file: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(file) if file.name.endswith(".parquet") else pd.read_csv(file)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except GZIP_ERRORS as error:
        raise broken_gzip(file, error) from error
    except pd.errors.ParserError as error:
        raise unparsable_csv(file, error) from error
