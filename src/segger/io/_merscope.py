"""Read a Vizgen MERSCOPE output folder into segger's SpatialData layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from os import PathLike
from pathlib import Path

import dask.dataframe as dd
import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import shapely
from spatialdata import SpatialData
from tqdm.auto import tqdm

from .. import _constants as C
from ._csv import CsvBlock, CsvLayout
from ._gzip import check_reader_scratch_dir, is_gzipped, log_read_whole, readable_file
from ._parquet import ParquetLayout, RowGroup, scan_transcript_file
from ._shapes import merge_polygons_by_id
from ._spatialdata import (
    VENDOR_FILE_HINT,
    TranscriptChecks,
    build_spatialdata,
    check_required_columns,
    check_z_step,
    flag_controls,
    read_transcript_table,
    to_cell_id_strings,
)

logger = logging.getLogger(__name__)

TRANSCRIPT_FILES = ("detected_transcripts.parquet", "detected_transcripts.csv", "detected_transcripts.csv.gz")
BOUNDARIES_PARQUET = "cell_boundaries.parquet"
BOUNDARIES_HDF5_FOLDER = "cell_boundaries"
BOUNDARIES_HDF5_PATTERN = "feature_data_*.hdf5"

GENE_COLUMN = "gene"
REQUIRED_COLUMNS = ("global_x", "global_y", GENE_COLUMN)
COORDINATE_COLUMNS = ("global_x", "global_y", "global_z")
# `x` and `y` are pixel positions inside the field of view, renamed to make way for the µm columns.
COLUMN_NAMES = {
    "x": "x_local_px",
    "y": "y_local_px",
    "global_x": C.X,
    "global_y": C.Y,
    "gene": C.FEATURE_NAME,
}
CONTROL_PREFIXES = ("Blank-",)
# A progress bar appears from this many per-FOV HDF5 files on.
PROGRESS_MIN_FILES = 10

# Column names of Vizgen's cell_boundaries.parquet, one row per cell and z plane.
PARQUET_ID_COLUMNS = ("EntityID", "cell_id")
PARQUET_GEOMETRY_COLUMNS = ("Geometry", "geometry")


def merscope(
    path: str | Path, *, z_step: float | None = 1.5, scratch_dir: str | PathLike[str] | None = None
) -> SpatialData:
    """Read a MERSCOPE output folder.

    Parameters
    ----------
    path
        Folder holding ``detected_transcripts.parquet``, ``.csv`` or ``.csv.gz``, tried in this
        order, and the cell polygons,
        either ``cell_boundaries.parquet`` or the older per-FOV files
        ``cell_boundaries/feature_data_*.hdf5``.
    z_step
        Distance in µm between z planes. ``global_z`` is a plane index, and ``z`` becomes
        ``global_z * z_step``. The default of 1.5 µm is the spacing of the z levels that
        MERSCOPE writes with its polygons. ``None`` drops z, so the graph is 2-D.
    scratch_dir
        Existing folder into which a gzipped ``detected_transcripts.csv.gz`` is decompressed,
        so that it is read in blocks like a plain file (see Notes). ``None`` reads a gzipped
        file whole into memory.

    Returns
    -------
    SpatialData with the points element ``"transcripts"`` and the shapes element
    ``"cell_boundaries"``, indexed by MERSCOPE's cell (EntityID) as a string.

    The points carry these columns:

    - ``x``, ``y`` (from ``global_x``, ``global_y``) and ``z`` in µm.
    - ``feature_name`` (from ``gene``).
    - ``transcript_id``: the row number in the source file.
    - ``gene_id``: MERSCOPE's own ``transcript_id`` column, which identifies the gene.
    - ``cell_id``, ``overlaps_nucleus`` (see Notes) and ``is_control`` (``Blank-*`` barcodes).
    - The other vendor columns, unchanged except that the pixel positions ``x`` and ``y``
      inside the field of view are renamed ``x_local_px`` and ``y_local_px``.

    There is no ``qv``, so :func:`segger.tl.segger_fit` skips its quality filter.

    Notes
    -----
    MERSCOPE supplies whole-cell polygons and no nuclei, so the cell polygons are the prior
    shapes, and ``overlaps_nucleus`` marks the transcripts inside the polygon of their cell.
    Where the transcripts file has no ``cell_id`` column, ``cell_id`` becomes the id of the
    polygon containing the transcript (the first in index order where polygons overlap). Training
    on these shapes teaches the model whole-cell membership rather than nuclear membership,
    and the call must name them::

        sg.tl.segger_fit(sdata, shapes_key="cell_boundaries")

    MERSCOPE stores one polygon per cell and z plane, and segger tests the transcripts of all
    planes against one 2-D polygon per cell. Each cell's planes are therefore merged into
    their union, so a cell whose outline changes with depth keeps the transcripts of every
    plane. Where the union falls apart into separate pieces, the largest piece is kept.

    A plain ``detected_transcripts.csv`` or ``detected_transcripts.parquet`` is read lazily
    (see :func:`read_transcripts_lazily`): one pass checks it, and the points element reads
    each block of about 16 MB, or each Parquet row group, again when computed. A gzipped file
    cannot be read from the middle. With ``scratch_dir``, it is first decompressed into a new
    folder ``segger-input-*`` there and read from the copy in blocks. The folder is deleted once
    the points element is garbage-collected or Python exits. Without ``scratch_dir``, a gzipped
    file is read whole.
    """
    folder = Path(path)
    if not folder.is_dir():
        msg = f"MERSCOPE folder {str(folder)!r} does not exist or is not a folder."
        raise FileNotFoundError(msg)
    check_z_step(z_step)
    scratch_dir = check_reader_scratch_dir(scratch_dir)

    transcripts_file = _find_transcripts(folder)
    shapes = read_cell_boundaries(folder)
    if not is_gzipped(transcripts_file) or scratch_dir is not None:
        points, summary = read_transcripts_lazily(
            transcripts_file, shapes, z_step=z_step, scratch_dir=scratch_dir
        )
    else:
        log_read_whole(transcripts_file)
        points = read_transcripts(transcripts_file, z_step=z_step)
        _assign_to_polygons(points, shapes)
        summary = _Summary.from_points(points)

    logger.info(
        "Read %d transcripts of %d features from %s and %d cell polygons from %s. %d transcripts "
        "(%.1f %%) lie inside a polygon.",
        summary.n_transcripts,
        summary.n_features,
        transcripts_file.name,
        len(shapes),
        folder,
        summary.n_inside,
        100.0 * summary.n_inside / summary.n_transcripts,
    )
    return build_spatialdata(points, {C.CELL_SHAPES_KEY: shapes})


@dataclass(frozen=True)
class _Summary:
    """Counts that :func:`merscope` logs about the transcripts it read."""

    n_transcripts: int
    n_features: int
    n_inside: int

    @classmethod
    def from_points(cls, points: pd.DataFrame) -> _Summary:
        """Return the counts of converted points: transcripts, distinct features, and transcripts inside a polygon."""
        return cls(
            n_transcripts=len(points),
            n_features=points[C.FEATURE_NAME].nunique(),
            n_inside=int(points[C.OVERLAPS_NUCLEUS].sum()),
        )


def read_transcripts(file: str | Path, *, z_step: float | None = 1.5) -> pd.DataFrame:
    """Read a MERSCOPE ``detected_transcripts`` file into the points schema as a pandas DataFrame.

    ``overlaps_nucleus`` is left out, because it needs the cell polygons (see :func:`merscope`).
    """
    file = Path(file)
    check_z_step(z_step)
    frame = read_transcript_table(file)
    check_required_columns(frame, REQUIRED_COLUMNS, source=file.name, hint=VENDOR_FILE_HINT)
    frame = frame.reset_index(drop=True)
    checks = TranscriptChecks(COORDINATE_COLUMNS, GENE_COLUMN)
    checks.add(frame)
    checks.check(len(frame), source=file.name)
    _log_dropped_z(frame.columns, z_step, source=file.name)
    return _to_points_schema(frame, z_step=z_step)


def read_transcripts_lazily(
    file: str | Path,
    shapes: gpd.GeoDataFrame,
    *,
    z_step: float | None = 1.5,
    block_bytes: int | None = None,
    scratch_dir: str | PathLike[str] | None = None,
) -> tuple[dd.DataFrame, _Summary]:
    """Read a MERSCOPE ``detected_transcripts.csv`` or ``.parquet`` lazily into the points schema, as a dask DataFrame.

    One pass reads the file block by block to check the coordinates and gene names, collect the
    genes, fix each column's type and count the transcripts inside ``shapes``. The returned frame
    reads, converts and assigns each block to the polygons only when it is computed, so the file
    is never loaded whole.

    Parameters
    ----------
    file
        ``detected_transcripts.csv``, ``.parquet``, or ``.csv.gz`` with ``scratch_dir``.
    shapes
        The cell polygons from :func:`read_cell_boundaries`.
    z_step, scratch_dir
        See :func:`merscope`.
    block_bytes
        Approximate bytes per partition, :data:`segger.io._csv.BYTES_PER_BLOCK` when ``None``.

    Returns
    -------
    The transcripts as :func:`merscope` puts them in its points element, with ``feature_name``
    a categorical of the sorted gene names and the row number as index, and the counts that
    :func:`merscope` logs.
    """
    file = Path(file)
    check_z_step(z_step)
    with readable_file(file, scratch_dir) as readable:
        scan = _Scan(shapes=shapes, z_step=z_step)
        layout = scan_transcript_file(
            readable.path, required=REQUIRED_COLUMNS, inspect=scan, block_bytes=block_bytes
        )
        scan.checks.check(layout.n_rows, source=readable.path.name)
        _log_dropped_z(list(layout.dtypes), z_step, source=readable.path.name)

        genes = tuple(sorted(scan.genes))
        meta = _to_points_schema(layout.empty_frame(), z_step=z_step, genes=genes)
        _assign_to_polygons(meta, shapes)
        load = partial(_load_block, layout=layout, shapes=shapes, z_step=z_step, genes=genes)
        points = layout.to_dask(load, meta=meta, label="merscope-transcripts")
        readable.keep_while(load)
    summary = _Summary(n_transcripts=layout.n_rows, n_features=len(genes), n_inside=scan.n_inside)
    return points, summary


@dataclass
class _Scan:
    """Checks and counts gathered over the blocks of a transcripts file as :func:`~segger.io._csv.scan_csv` reads them."""

    shapes: gpd.GeoDataFrame
    z_step: float | None
    checks: TranscriptChecks = field(
        default_factory=lambda: TranscriptChecks(COORDINATE_COLUMNS, GENE_COLUMN)
    )
    genes: set[str] = field(default_factory=set)
    n_inside: int = 0

    def __call__(self, frame: pd.DataFrame) -> None:
        self.checks.add(frame)
        points = _to_points_schema(frame, z_step=self.z_step)
        self.genes.update(points[C.FEATURE_NAME].unique())
        _assign_to_polygons(points, self.shapes)
        self.n_inside += int(points[C.OVERLAPS_NUCLEUS].sum())


def _load_block(
    block: CsvBlock | RowGroup,
    *,
    layout: CsvLayout | ParquetLayout,
    shapes: gpd.GeoDataFrame,
    z_step: float | None,
    genes: tuple[str, ...],
) -> pd.DataFrame:
    """Read one block of the transcripts file, convert it and assign it to the cell polygons."""
    points = _to_points_schema(layout.read(block), z_step=z_step, genes=genes)
    _assign_to_polygons(points, shapes)
    return points


def _to_points_schema(
    frame: pd.DataFrame, *, z_step: float | None, genes: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Convert checked MERSCOPE rows, indexed by row number, to the points schema.

    ``genes`` makes ``feature_name`` a categorical of those names; ``None`` keeps strings.
    """
    if C.TRANSCRIPT_ID in frame.columns:
        # MERSCOPE's transcript_id identifies the gene (the codebook id), not the transcript.
        frame = frame.rename(columns={C.TRANSCRIPT_ID: "gene_id"})
    frame = frame.rename(columns=COLUMN_NAMES)
    frame[C.FEATURE_NAME] = frame[C.FEATURE_NAME].astype(str)
    if genes is not None:
        frame[C.FEATURE_NAME] = frame[C.FEATURE_NAME].astype(pd.CategoricalDtype(list(genes)))
    frame[C.TRANSCRIPT_ID] = frame.index.to_numpy(dtype=np.int64)

    if "global_z" in frame.columns and z_step is not None:
        frame[C.Z] = frame["global_z"].to_numpy(dtype=np.float64) * z_step

    if C.CELL_ID in frame.columns:
        frame[C.CELL_ID] = to_cell_id_strings(frame[C.CELL_ID])
    frame[C.IS_CONTROL] = flag_controls(frame[C.FEATURE_NAME], CONTROL_PREFIXES)
    return frame


def _log_dropped_z(columns: list[str] | pd.Index, z_step: float | None, *, source: str) -> None:
    if "global_z" not in columns:
        logger.info("%s has no global_z column, so z is dropped and the graph is 2-D.", source)
    elif z_step is None:
        logger.info("z_step is None, so z is dropped and the graph is 2-D.")


def read_cell_boundaries(folder: str | Path) -> gpd.GeoDataFrame:
    """Read MERSCOPE cell polygons, one per cell, merged over z planes (see :func:`merscope`).

    Reads ``cell_boundaries.parquet`` when the folder has it, else every
    ``cell_boundaries/feature_data_*.hdf5``.
    """
    folder = Path(folder)
    parquet_file = folder / BOUNDARIES_PARQUET
    if parquet_file.is_file():
        return _read_boundaries_parquet(parquet_file)

    hdf5_files = sorted((folder / BOUNDARIES_HDF5_FOLDER).glob(BOUNDARIES_HDF5_PATTERN))
    if hdf5_files:
        return _read_boundaries_hdf5(hdf5_files)

    msg = (
        f"No cell polygons were found in {str(folder)!r}: a MERSCOPE folder needs "
        f"{BOUNDARIES_PARQUET!r} or {BOUNDARIES_HDF5_FOLDER}/{BOUNDARIES_HDF5_PATTERN}."
    )
    raise FileNotFoundError(msg)


def _read_boundaries_parquet(file: Path) -> gpd.GeoDataFrame:
    frame = pd.read_parquet(file)
    id_column = next((name for name in PARQUET_ID_COLUMNS if name in frame.columns), None)
    geometry_column = next((name for name in PARQUET_GEOMETRY_COLUMNS if name in frame.columns), None)
    if id_column is None or geometry_column is None:
        msg = (
            f"{file.name} needs a cell id column (one of {list(PARQUET_ID_COLUMNS)}) and a geometry "
            f"column (one of {list(PARQUET_GEOMETRY_COLUMNS)}); it has {list(frame.columns)}."
        )
        raise ValueError(msg)
    if frame.empty:
        msg = f"{file.name} in {str(file.parent)!r} contains no cell polygons."
        raise ValueError(msg)

    values = frame[geometry_column]
    if not isinstance(values.iloc[0], bytes):
        msg = (
            f"Column {geometry_column!r} of {file.name} holds {type(values.iloc[0]).__name__} values; "
            "MERSCOPE stores polygons there as WKB bytes."
        )
        raise ValueError(msg)
    geometries = shapely.from_wkb(values.to_numpy(), on_invalid="ignore")
    ids = to_cell_id_strings(frame[id_column], missing=()).to_numpy(dtype=str)
    unreadable = shapely.is_missing(geometries)
    if unreadable.any():
        logger.warning(
            "Dropped %d unreadable polygon(s) of %s (for example a ring with fewer than 3 vertices), "
            "for example of cell %r.",
            int(unreadable.sum()),
            file.name,
            str(ids[np.flatnonzero(unreadable)[0]]),
        )
        geometries, ids = geometries[~unreadable], ids[~unreadable]
    return merge_polygons_by_id(ids, geometries, source=file.name)


def _read_boundaries_hdf5(files: list[Path]) -> gpd.GeoDataFrame:
    # Layout: featuredata/<cell id>/zIndex_<k>/p_<m>/coordinates, an array of shape
    # (rings, vertices, 2) in µm whose first ring is the outline and the others holes.
    ids: list[str] = []
    polygons: list[shapely.Polygon] = []
    bar = tqdm(files, desc="Reading cell boundaries", disable=len(files) < PROGRESS_MIN_FILES, leave=False)
    for file in bar:
        with h5py.File(file, "r") as handle:
            if "featuredata" not in handle:
                msg = f"{file.name} has no 'featuredata' group; it is not a MERSCOPE cell boundaries file."
                raise ValueError(msg)
            for cell_id, cell in handle["featuredata"].items():
                for plane_name, plane in cell.items():
                    if not plane_name.startswith("zIndex_"):
                        continue
                    for part in plane.values():
                        rings = part["coordinates"][()]
                        polygons.append(shapely.Polygon(rings[0], holes=list(rings[1:])))
                        ids.append(cell_id)
    source = files[0].name if len(files) == 1 else f"{len(files)} feature_data HDF5 files"
    cells = merge_polygons_by_id(np.asarray(ids), np.asarray(polygons, dtype=object), source=source)
    if cells.empty:
        msg = f"{source} in {str(files[0].parent)!r} contains no cell polygons."
        raise ValueError(msg)
    return cells


def _assign_to_polygons(points: pd.DataFrame, shapes: gpd.GeoDataFrame) -> None:
    """Set ``overlaps_nucleus``, and ``cell_id`` where the vendor gave none, by point-in-polygon."""
    locations = gpd.GeoSeries(gpd.points_from_xy(points[C.X].to_numpy(), points[C.Y].to_numpy()))
    point_rows, shape_rows = shapes.sindex.query(locations, predicate="within")

    if C.CELL_ID in points.columns:
        # The vendor's assignment is kept, and a transcript overlaps when it lies inside its own cell.
        shape_ids = shapes.index.to_numpy(dtype=str)[shape_rows]
        own_ids = points[C.CELL_ID].astype("string").fillna("").to_numpy(dtype=str)[point_rows]
        overlaps = np.zeros(len(points), dtype=bool)
        overlaps[point_rows[shape_ids == own_ids]] = True
        points[C.OVERLAPS_NUCLEUS] = overlaps
        return

    containing = np.full(len(points), -1, dtype=np.int64)
    # Writing in reverse index order leaves the first containing polygon for each transcript.
    order = np.lexsort((shape_rows, point_rows))[::-1]
    containing[point_rows[order]] = shape_rows[order]
    inside = containing >= 0
    cell_ids = pd.Series(pd.NA, index=points.index, dtype="string")
    cell_ids[inside] = shapes.index.to_numpy(dtype=str)[containing[inside]]
    points[C.CELL_ID] = cell_ids
    points[C.OVERLAPS_NUCLEUS] = inside


def _find_transcripts(folder: Path) -> Path:
    for name in TRANSCRIPT_FILES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    msg = (
        f"None of {list(TRANSCRIPT_FILES)} was found in {str(folder)!r}; a MERSCOPE folder needs one of them."
    )
    raise FileNotFoundError(msg)
