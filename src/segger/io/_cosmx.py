"""Read a NanoString CosMx flat-file export into segger's SpatialData layout."""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from dataclasses import dataclass, field
from functools import partial
from os import PathLike
from pathlib import Path

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import tifffile
from spatialdata import SpatialData
from tqdm.auto import tqdm

from .. import _constants as C
from .._grouping import row_blocks
from .._scratch import ArrayStore
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
)

logger = logging.getLogger(__name__)

# Tried in this order: the first two are read in blocks, a gzipped file only with scratch_dir.
TRANSCRIPT_PATTERNS = ("*tx_file.csv", "*tx_file.parquet", "*tx_file.csv.gz")
FOV_POSITION_PATTERNS = ("*fov_positions_file.csv", "*fov_positions_file.csv.gz")
LABEL_MASK_NAME = re.compile(r"^CellLabels_F(\d+)\.tiff?$")

REQUIRED_COLUMNS = ("fov", "cell_ID", "x_global_px", "y_global_px", "target", "CellComp")
COORDINATE_COLUMNS = ("x_global_px", "y_global_px", "z")
# Columns of the converted points that the nucleus polygons and the label-mask checks read.
NUCLEAR_COLUMNS = (C.CELL_ID, C.X, C.Y, C.OVERLAPS_NUCLEUS)
PIXEL_DTYPES = {"x_global_px": np.float64, "y_global_px": np.float64, "fov": np.int64, "cell_ID": np.int64}
# Column of hull_vertices with the number of nuclear transcripts that a row represents.
N_TRANSCRIPTS = "n_transcripts"
CONTROL_PREFIXES = ("NegPrb", "Negative", "SystemControl", "FalseCode")
NUCLEAR_COMPARTMENT = "Nuclear"
# Tracing a 4256 x 4256 px mask with 3,000 labels took about 10 s on 2 shared CPU cores.
# A progress bar appears from this many masks on.
PROGRESS_MIN_FILES = 10
# Vendor columns whose names the points schema takes over are kept under these names.
RENAMED_VENDOR_COLUMNS = {
    "z": "z_plane",
    C.CELL_ID: "vendor_cell_id",
    C.TRANSCRIPT_ID: "vendor_transcript_id",
}


def cosmx(
    path: str | Path,
    *,
    pixel_size: float = 0.18,
    z_step: float | None = None,
    nucleus_buffer: float = 0.5,
    min_nuclear_transcripts: int = 3,
    cell_labels: bool = True,
    min_mask_agreement: float = 0.9,
    scratch_dir: str | PathLike[str] | None = None,
) -> SpatialData:
    """Read a CosMx flat-file export folder.

    Parameters
    ----------
    path
        Folder holding the transcript file ``*tx_file.csv``, ``.parquet`` or ``.csv.gz``, tried
        in this order. Optional: label masks ``CellLabels_F<fov>.tif`` anywhere below it, placed
        by ``*fov_positions_file.csv`` in the folder itself.
    pixel_size
        µm per pixel of the global coordinates. The default 0.18 µm fits the original CosMx
        instrument, which produced the public NSCLC data. Newer runs use 0.12028 µm per pixel;
        pass that value for them.
    z_step
        Distance in µm between z planes. The ``z`` column of the export is a plane index, and
        NanoString gives it no physical unit, so the default ``None`` drops z and the graph is
        2-D. With a step, ``z`` becomes ``z_plane * z_step``.
    nucleus_buffer
        Distance in µm by which each nucleus outline (the convex hull of the cell's nuclear
        transcripts) is grown.
    min_nuclear_transcripts
        Cells with fewer nuclear transcripts get no nucleus polygon; at least 1.
    cell_labels
        Whether to turn the label masks into ``"cell_boundaries"``.
    min_mask_agreement
        Minimum share of a mask's assigned transcripts whose pixel carries their own
        ``cell_ID`` for the mask to be used.
    scratch_dir
        Existing folder into which a gzipped ``*tx_file.csv.gz`` is decompressed, so that it is
        read in blocks like a plain file (see Notes), and where the positions that the label mask
        check needs are kept until it ends. ``None`` reads a gzipped file whole into memory and
        keeps the positions in memory.

    Returns
    -------
    SpatialData with the points element ``"transcripts"``, the shapes element
    ``"nucleus_boundaries"`` (left out, with a warning, when no cell has enough nuclear
    transcripts) and, when a label mask passes the alignment check, ``"cell_boundaries"``.
    Shapes are indexed by cell id.

    The points carry these columns:

    - ``x``, ``y`` in µm (``x_global_px``, ``y_global_px`` times ``pixel_size``), and ``z`` in
      µm when ``z_step`` is given.
    - ``feature_name`` (from ``target``).
    - ``transcript_id``: the row number in the source file.
    - ``cell_id``: ``"<fov>_<cell_ID>"``, missing where ``cell_ID`` is 0.
    - ``overlaps_nucleus`` (see Notes).
    - ``is_control``: targets starting with ``NegPrb``, ``Negative``, ``SystemControl`` or
      ``FalseCode``.
    - The other vendor columns unchanged, the pixel coordinates included. The export's ``z``
      column is kept as ``z_plane``, and a ``cell_id`` or ``transcript_id`` column of the
      export is kept as ``vendor_cell_id`` or ``vendor_transcript_id``.

    There is no ``qv``, so :func:`segger.tl.segger_fit` skips its quality filter.

    Notes
    -----
    ``overlaps_nucleus`` is ``CellComp == "Nuclear"`` for transcripts assigned to a cell.
    Exports also mark some unassigned transcripts as nuclear; these stay False, because they
    have no cell whose nucleus they could lie in.

    CosMx ships no nucleus outlines, so each nucleus polygon is the convex hull of its cell's
    nuclear transcripts, grown by ``nucleus_buffer``. The growth also turns collinear
    transcripts into a valid polygon. Cells with fewer than ``min_nuclear_transcripts``
    nuclear transcripts are skipped, because so few points do not outline a nucleus. Their
    nuclear transcripts then have no prior shape and are not used as training labels.

    A label mask covers one field of view (FOV) in image orientation: row 0 is the top, while
    the global y axis points up. Its place in global pixels is the FOV's row in
    ``fov_positions_file.csv``. Before use, each mask is checked against the transcripts
    inside it: the share of assigned transcripts whose mask pixel contains their ``cell_ID``
    must reach ``min_mask_agreement``. A mask that fails, has no FOV position or covers no
    assigned transcript is left out with a warning that gives the figures. The mask's
    polygons are the exact pixel outlines of each label, named after the FOV of the
    transcripts they were checked against. When that FOV differs from the one in the mask's
    file name, a warning names both.

    A plain ``*tx_file.csv`` or a ``*tx_file.parquet`` is read lazily (see
    :func:`read_transcripts_lazily`): one pass checks it and keeps the columns that the nuclei
    and the masks need, and the points element reads each block of about 16 MB, or each Parquet
    row group, again when computed. A gzipped file cannot be read from the middle. With
    ``scratch_dir``, it is first decompressed into a new folder ``segger-input-*`` there and read
    from the copy in blocks. The folder is deleted once the points element is garbage-collected
    or Python exits. Without ``scratch_dir``, a gzipped file is read whole.
    """
    folder = Path(path)
    if not folder.is_dir():
        msg = f"CosMx folder {str(folder)!r} does not exist or is not a folder."
        raise FileNotFoundError(msg)
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        msg = f"pixel_size must be a positive number of µm per pixel; got {pixel_size!r}."
        raise ValueError(msg)
    if min_nuclear_transcripts < 1:
        msg = f"min_nuclear_transcripts must be at least 1; got {min_nuclear_transcripts!r}."
        raise ValueError(msg)
    if not 0.0 <= min_mask_agreement <= 1.0:
        msg = f"min_mask_agreement must lie between 0 and 1; got {min_mask_agreement!r}."
        raise ValueError(msg)
    scratch_dir = check_reader_scratch_dir(scratch_dir)

    transcripts_file = _find_one(folder, TRANSCRIPT_PATTERNS, required=True)
    masks = _find_label_masks(folder) if cell_labels else {}
    # The mask positions are needed only until the masks are checked, so their scratch folder
    # is deleted when this block ends.
    with ArrayStore.open(scratch_dir) as store:
        pixels = MaskPixels(store) if masks else None
        if not is_gzipped(transcripts_file) or scratch_dir is not None:
            points, shape_inputs = read_transcripts_lazily(
                transcripts_file, pixel_size=pixel_size, z_step=z_step, scratch_dir=scratch_dir, pixels=pixels
            )
        else:
            log_read_whole(transcripts_file)
            points = read_transcripts(transcripts_file, pixel_size=pixel_size, z_step=z_step)
            shape_inputs = _ShapeInputs.from_points(points, pixels)
        shapes = _shapes(
            folder,
            transcripts_file,
            shape_inputs,
            masks=masks,
            nucleus_buffer=nucleus_buffer,
            min_nuclear_transcripts=min_nuclear_transcripts,
            pixel_size=pixel_size,
            min_mask_agreement=min_mask_agreement,
        )

    logger.info(
        "Read %d transcripts of %d features from %s, %d nuclei and %d cell polygons from %s.",
        shape_inputs.n_transcripts,
        shape_inputs.n_features,
        transcripts_file.name,
        len(shapes.get(C.NUCLEUS_SHAPES_KEY, ())),
        len(shapes.get(C.CELL_SHAPES_KEY, ())),
        folder,
    )
    return build_spatialdata(points, shapes)


def _shapes(
    folder: Path,
    transcripts_file: Path,
    shape_inputs: _ShapeInputs,
    *,
    masks: dict[int, Path],
    nucleus_buffer: float,
    min_nuclear_transcripts: int,
    pixel_size: float,
    min_mask_agreement: float,
) -> dict[str, gpd.GeoDataFrame]:
    """Build the nucleus polygons and, when ``shape_inputs`` has mask positions, the polygons of the masks that pass."""
    shapes = {}
    nuclei = nucleus_polygons(
        shape_inputs.nuclear, buffer=nucleus_buffer, min_transcripts=min_nuclear_transcripts
    )
    if nuclei.empty:
        logger.warning(
            "No cell in %s has %d or more nuclear transcripts, so nucleus_boundaries is left out.",
            transcripts_file.name,
            min_nuclear_transcripts,
        )
    else:
        shapes[C.NUCLEUS_SHAPES_KEY] = nuclei
    if shape_inputs.pixels is not None:
        cells = read_label_masks(
            folder,
            shape_inputs.pixels,
            pixel_size=pixel_size,
            min_agreement=min_mask_agreement,
            fovs=shape_inputs.fovs,
            masks=masks,
        )
        if cells is not None:
            shapes[C.CELL_SHAPES_KEY] = cells
    return shapes


@dataclass
class _ShapeInputs:
    """The few columns of the transcripts that the nucleus polygons and the mask checks need.

    Attributes
    ----------
    nuclear
        ``cell_id``, ``x``, ``y`` and ``overlaps_nucleus`` (all True) of the nuclear transcripts,
        or, when read in blocks, of the hull vertices of each block's cells, with the
        ``n_transcripts`` column (see :func:`hull_vertices`).
    pixels
        The pixel positions of the transcripts assigned to a cell, which the label masks are
        checked against, or ``None`` where no mask is checked.
    fovs
        The FOVs of all transcripts, ascending.
    n_transcripts, n_features
        Numbers of transcripts and of distinct features.
    """

    nuclear: pd.DataFrame
    pixels: SortedPixels | None
    fovs: list[int]
    n_transcripts: int
    n_features: int

    @classmethod
    def from_points(cls, points: pd.DataFrame, pixels: MaskPixels | None = None) -> _ShapeInputs:
        """Select the columns from points converted by :func:`read_transcripts`, and the mask positions into ``pixels``."""
        if pixels is not None:
            pixels.add(points)
        return cls(
            nuclear=points.loc[points[C.OVERLAPS_NUCLEUS], list(NUCLEAR_COLUMNS)],
            pixels=None if pixels is None else pixels.sorted(),
            fovs=sorted(points["fov"].unique().tolist()),
            n_transcripts=len(points),
            n_features=points[C.FEATURE_NAME].nunique(),
        )


def read_transcripts(
    file: str | Path, *, pixel_size: float = 0.18, z_step: float | None = None
) -> pd.DataFrame:
    """Read a CosMx transcript file into the points schema as a pandas DataFrame (see :func:`cosmx`)."""
    file = Path(file)
    check_z_step(z_step)
    frame = read_transcript_table(file)
    check_required_columns(frame, REQUIRED_COLUMNS, source=file.name, hint=VENDOR_FILE_HINT)
    frame = frame.reset_index(drop=True)
    checks = TranscriptChecks(COORDINATE_COLUMNS, "target")
    checks.add(frame)
    checks.check(len(frame), source=file.name)
    _log_dropped_z(frame.columns, z_step, source=file.name)
    return _to_points_schema(frame, pixel_size=pixel_size, z_step=z_step, source=file.name)


def read_transcripts_lazily(
    file: str | Path,
    *,
    pixel_size: float = 0.18,
    z_step: float | None = None,
    block_bytes: int | None = None,
    scratch_dir: str | PathLike[str] | None = None,
    pixels: MaskPixels | None = None,
) -> tuple[dd.DataFrame, _ShapeInputs]:
    """Read a CosMx ``*tx_file.csv`` or ``*tx_file.parquet`` lazily into the points schema, as a dask DataFrame.

    One pass reads the file block by block to check it, collect the features, fix each column's
    type, and keep the few columns that the nucleus polygons and the label-mask checks need.
    The returned frame reads and converts each block only when it is computed, so the file is
    never loaded whole.

    Parameters
    ----------
    file
        The CSV or Parquet transcript file, or a gzipped CSV one with ``scratch_dir``.
    pixel_size, z_step, scratch_dir
        See :func:`cosmx`.
    block_bytes
        Approximate bytes per partition, :data:`segger.io._csv.BYTES_PER_BLOCK` when ``None``.
    pixels
        Where to keep the pixel positions of the assigned transcripts, which only the label
        mask checks need; ``None`` keeps none.

    Returns
    -------
    The transcripts as :func:`cosmx` puts them in its points element, with ``feature_name`` a
    categorical of the sorted feature names and the row number as index, and the columns kept
    for the shapes. Each block's nuclear transcripts are reduced to the hull vertices of its
    cells, so they grow with the cells rather than with the transcripts.
    """
    file = Path(file)
    check_z_step(z_step)
    with readable_file(file, scratch_dir) as readable:
        source = readable.path.name
        scan = _Scan(pixel_size=pixel_size, z_step=z_step, source=source, pixels=pixels)
        layout = scan_transcript_file(
            readable.path, required=REQUIRED_COLUMNS, inspect=scan, block_bytes=block_bytes
        )
        scan.checks.check(layout.n_rows, source=source)
        _log_dropped_z(list(layout.dtypes), z_step, source=source)

        features = tuple(sorted(scan.features))
        meta = _to_points_schema(
            layout.empty_frame(), pixel_size=pixel_size, z_step=z_step, source=source, features=features
        )
        load = partial(_load_block, layout=layout, pixel_size=pixel_size, z_step=z_step, features=features)
        points = layout.to_dask(load, meta=meta, label="cosmx-transcripts")
        readable.keep_while(load)
    shape_inputs = _ShapeInputs(
        nuclear=pd.concat(scan.nuclear),
        pixels=None if pixels is None else pixels.sorted(),
        fovs=sorted(scan.fovs),
        n_transcripts=layout.n_rows,
        n_features=len(features),
    )
    return points, shape_inputs


@dataclass
class _Scan:
    """Checks and columns gathered over the blocks of a transcript file as :func:`~segger.io._csv.scan_csv` reads them."""

    pixel_size: float
    z_step: float | None
    source: str
    pixels: MaskPixels | None = None
    checks: TranscriptChecks = field(default_factory=lambda: TranscriptChecks(COORDINATE_COLUMNS, "target"))
    features: set[str] = field(default_factory=set)
    fovs: set[int] = field(default_factory=set)
    nuclear: list[pd.DataFrame] = field(default_factory=list)

    def __call__(self, frame: pd.DataFrame) -> None:
        self.checks.add(frame)
        points = _to_points_schema(frame, pixel_size=self.pixel_size, z_step=self.z_step, source=self.source)
        self.features.update(points[C.FEATURE_NAME].unique())
        self.fovs.update(points["fov"].unique().tolist())
        self.nuclear.append(hull_vertices(points))
        if self.pixels is not None:
            self.pixels.add(points)


def _load_block(
    block: CsvBlock | RowGroup,
    *,
    layout: CsvLayout | ParquetLayout,
    pixel_size: float,
    z_step: float | None,
    features: tuple[str, ...],
) -> pd.DataFrame:
    """Read one block of the transcript file and convert it to the points schema."""
    return _to_points_schema(
        layout.read(block), pixel_size=pixel_size, z_step=z_step, source=layout.file.name, features=features
    )


def _to_points_schema(
    frame: pd.DataFrame,
    *,
    pixel_size: float,
    z_step: float | None,
    source: str,
    features: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Convert checked CosMx rows, indexed by row number, to the points schema.

    ``features`` makes ``feature_name`` a categorical of those names; ``None`` keeps strings.
    """
    renamed = {old: new for old, new in RENAMED_VENDOR_COLUMNS.items() if old in frame.columns}
    frame = frame.rename(columns=renamed)
    frame[C.X] = frame["x_global_px"].to_numpy(dtype=np.float64) * pixel_size
    frame[C.Y] = frame["y_global_px"].to_numpy(dtype=np.float64) * pixel_size
    if "z_plane" in frame.columns and z_step is not None:
        frame[C.Z] = frame["z_plane"].to_numpy(dtype=np.float64) * z_step

    frame[C.FEATURE_NAME] = frame["target"].astype(str)
    if features is not None:
        frame[C.FEATURE_NAME] = frame[C.FEATURE_NAME].astype(pd.CategoricalDtype(list(features)))
    frame[C.TRANSCRIPT_ID] = frame.index.to_numpy(dtype=np.int64)

    numbers = pd.to_numeric(frame["cell_ID"], errors="coerce")
    not_integer = numbers.isna() | (numbers % 1 != 0)
    if not_integer.any():
        msg = (
            f"Column 'cell_ID' of {source} must hold whole numbers (0 for no cell), but "
            f"{int(not_integer.sum())} rows do not, for example {frame['cell_ID'][not_integer].iloc[0]!r}. "
            "Check that the file is an unmodified CosMx export."
        )
        raise ValueError(msg)
    frame["cell_ID"] = numbers.astype(np.int64)
    cell_numbers = frame["cell_ID"].to_numpy(dtype=np.int64)
    assigned = cell_numbers > 0
    cell_ids = frame["fov"].astype(str) + "_" + pd.Series(cell_numbers, index=frame.index).astype(str)
    frame[C.CELL_ID] = cell_ids.astype("string").mask(~assigned, pd.NA)
    frame[C.OVERLAPS_NUCLEUS] = (frame["CellComp"].astype(str) == NUCLEAR_COMPARTMENT).to_numpy() & assigned
    frame[C.IS_CONTROL] = flag_controls(frame[C.FEATURE_NAME], CONTROL_PREFIXES)
    return frame


def _log_dropped_z(columns: list[str] | pd.Index, z_step: float | None, *, source: str) -> None:
    if "z_plane" not in columns and "z" not in columns:
        logger.info("%s has no z column, so z is dropped and the graph is 2-D.", source)
    elif z_step is None:
        logger.info("z_step is None, so z is dropped and the graph is 2-D. Pass z_step in µm to keep it.")


def hull_vertices(points: pd.DataFrame) -> pd.DataFrame:
    """Reduce the nuclear transcripts of ``points`` to the vertices of each cell's convex hull.

    The convex hull of a cell's nuclear transcripts equals the hull of the vertices of the
    hulls of any parts of them, so :func:`nucleus_polygons` gives the same polygons from the
    vertices of every block as from all the transcripts.

    Returns
    -------
    ``cell_id``, ``x``, ``y`` and ``overlaps_nucleus`` (all True) of the vertices, and
    ``n_transcripts``: the cell's number of nuclear transcripts on its first vertex, 0 on the
    others.
    """
    nuclear = points.loc[points[C.OVERLAPS_NUCLEUS], [C.CELL_ID, C.X, C.Y]]
    coordinates = nuclear[[C.X, C.Y]].to_numpy(dtype=np.float64)
    # Rows with a non-finite position are left out here, because the reader's checks reject
    # the file for them after the pass, and GEOS cannot take them.
    finite = np.isfinite(coordinates).all(axis=1)
    codes, cell_ids = pd.factorize(nuclear[C.CELL_ID][finite].astype(str), sort=True)
    order = np.argsort(codes, kind="stable")
    hulls = shapely.convex_hull(shapely.multipoints(coordinates[finite][order], indices=codes[order]))

    # A hull is a point, a segment or a polygon, and each vertex keeps its original coordinates.
    vertices, cell = shapely.get_coordinates(hulls, return_index=True)
    first = np.ones(len(cell), dtype=bool)
    first[1:] = cell[1:] != cell[:-1]
    counts = np.bincount(codes, minlength=len(cell_ids))
    return pd.DataFrame(
        {
            C.CELL_ID: pd.array(np.asarray(cell_ids)[cell], dtype="string"),
            C.X: vertices[:, 0],
            C.Y: vertices[:, 1],
            C.OVERLAPS_NUCLEUS: np.ones(len(cell), dtype=bool),
            N_TRANSCRIPTS: np.where(first, counts[cell], 0),
        }
    )


def nucleus_polygons(
    points: pd.DataFrame, *, buffer: float = 0.5, min_transcripts: int = 3
) -> gpd.GeoDataFrame:
    """Build one nucleus polygon per cell from its nuclear transcripts (see :func:`cosmx`).

    Parameters
    ----------
    points
        Transcripts in the points schema, with ``cell_id`` and ``overlaps_nucleus``, or the
        output of :func:`hull_vertices` for parts of them.
    buffer
        Distance in µm by which each convex hull is grown; must be positive.
    min_transcripts
        Cells with fewer nuclear transcripts are skipped.

    Returns
    -------
    Polygons indexed by cell id (index name ``"cell_id"``).
    """
    if not (math.isfinite(buffer) and buffer > 0):
        msg = f"nucleus_buffer must be a positive distance in µm; got {buffer!r}."
        raise ValueError(msg)

    nuclear = points.loc[points[C.OVERLAPS_NUCLEUS]]
    codes, cell_ids = pd.factorize(nuclear[C.CELL_ID].astype(str), sort=True)
    weights = nuclear[N_TRANSCRIPTS].to_numpy() if N_TRANSCRIPTS in nuclear.columns else None
    counts = np.bincount(codes, weights=weights, minlength=len(cell_ids)).astype(np.int64)
    keep = counts >= min_transcripts
    n_skipped = int((~keep).sum())
    if n_skipped:
        logger.info(
            "Skipped %d cell(s) with fewer than %d nuclear transcripts when building nucleus polygons.",
            n_skipped,
            min_transcripts,
        )

    rows = keep[codes]
    new_codes = (np.cumsum(keep) - 1)[codes[rows]]
    coordinates = nuclear[[C.X, C.Y]].to_numpy(dtype=np.float64)[rows]
    # shapely.multipoints needs the rows grouped by cell, in increasing cell order.
    order = np.argsort(new_codes, kind="stable")
    hulls = shapely.convex_hull(shapely.multipoints(coordinates[order], indices=new_codes[order]))
    polygons = shapely.buffer(hulls, buffer)
    index = pd.Index(np.asarray(cell_ids)[keep].astype(str), name="cell_id")
    return gpd.GeoDataFrame(geometry=polygons, index=index)


def read_label_masks(
    folder: str | Path,
    points: pd.DataFrame | SortedPixels,
    *,
    pixel_size: float = 0.18,
    min_agreement: float = 0.9,
    fovs: list[int] | None = None,
    masks: dict[int, Path] | None = None,
) -> gpd.GeoDataFrame | None:
    """Turn the aligned ``CellLabels_F*.tif`` masks of a CosMx folder into cell polygons.

    Parameters
    ----------
    folder
        The CosMx folder.
    points
        ``fov``, ``cell_ID``, ``x_global_px`` and ``y_global_px`` of the transcripts, of which
        only those assigned to a cell (``cell_ID`` above 0) are used, or these already sorted.
    pixel_size, min_agreement
        As ``pixel_size`` and ``min_mask_agreement`` of :func:`cosmx`.
    fovs
        The FOVs of all transcripts, for the warning about FOVs without a position; those of
        ``points`` when ``None``.
    masks
        The mask file of each FOV, when the caller has already searched ``folder`` for them.

    Returns
    -------
    The polygons, or None, with a warning, when no mask passes the checks described in
    :func:`cosmx` or no mask has a label, and quietly when the folder has no masks.
    """
    folder = Path(folder)
    masks = _find_label_masks(folder) if masks is None else masks
    if not masks:
        return None

    positions_file = _find_one(folder, FOV_POSITION_PATTERNS, required=False)
    if positions_file is None:
        logger.warning(
            "Found %d CellLabels mask(s) in %s but no fov_positions_file.csv to place them, "
            "so the masks are left out.",
            len(masks),
            folder,
        )
        return None
    positions = _read_fov_positions(positions_file)

    if isinstance(points, pd.DataFrame):
        fovs = sorted(points["fov"].unique().tolist()) if fovs is None else fovs
        collected = MaskPixels()
        collected.add(points)
        points = collected.sorted()
    transcript_fovs = points.fovs() if fovs is None else fovs
    unlisted = sorted(set(transcript_fovs) - set(positions.index))
    if unlisted:
        logger.warning(
            "%s lists the FOVs %s but not the FOV(s) %s that the transcripts come from. Label masks are "
            "placed by the positions it lists and checked against the transcripts they cover.",
            positions_file.name,
            positions.index.tolist(),
            unlisted,
        )

    frames = []
    bar = tqdm(
        sorted(masks.items()),
        desc="Reading CellLabels masks",
        disable=len(masks) < PROGRESS_MIN_FILES,
        leave=False,
    )
    for fov, mask_file in bar:
        if fov not in positions.index:
            logger.warning(
                "Mask %s is left out: FOV %d has no position in %s.", mask_file.name, fov, positions_file.name
            )
            continue
        origin = (float(positions.at[fov, "x_global_px"]), float(positions.at[fov, "y_global_px"]))
        labels = _read_labels(mask_file)
        nearby = points.columns_near(origin[0], labels.shape[1])
        matched_fov = _check_mask(
            labels, origin, fov, nearby, min_agreement=min_agreement, name=mask_file.name
        )
        if matched_fov is not None:
            frames.append(mask_polygons(labels, origin, fov=matched_fov, pixel_size=pixel_size))

    if not frames:
        logger.warning(
            "No CellLabels mask in %s passed the alignment check; cell_boundaries is left out.", folder
        )
        return None
    polygons = pd.concat(frames)
    if polygons.empty:
        logger.warning("The CellLabels masks in %s hold no labels; cell_boundaries is left out.", folder)
        return None
    return merge_polygons_by_id(
        polygons.index.to_numpy(), polygons.geometry.to_numpy(), source="CellLabels masks"
    )


class SortedPixels:
    """The pixel columns of the transcripts assigned to a cell, sorted by ``x_global_px``.

    A mask's check then reads only the transcripts within its columns, instead of every
    transcript of the slide once per mask.

    Attributes
    ----------
    columns
        ``fov``, ``cell_ID``, ``x_global_px`` and ``y_global_px``, as arrays in the order of
        ``x_global_px``.
    """

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns

    def fovs(self) -> list[int]:
        """Return the FOVs of these transcripts, ascending."""
        return np.unique(self.columns["fov"]).tolist()

    def columns_near(self, x_origin: float, width: int) -> pd.DataFrame:
        """Return the transcripts whose x lies within one pixel of the ``width`` columns from ``x_origin``.

        The one-pixel margin keeps every transcript that :func:`_check_mask` could place inside
        the mask after rounding, and that function applies the exact bounds.
        """
        x = self.columns["x_global_px"]
        start, stop = np.searchsorted(x, [x_origin - 1.0, x_origin + width + 1.0])
        return pd.DataFrame({name: values[start:stop] for name, values in self.columns.items()})


class MaskPixels:
    """The pixel columns of the transcripts assigned to a cell, gathered block by block for the mask checks.

    The columns are kept in an :class:`~segger._scratch.ArrayStore`: with a scratch folder,
    each block is written to disk as it comes, and the sorted columns are memory maps too.
    """

    def __init__(self, store: ArrayStore | None = None) -> None:
        self.store = store or ArrayStore()
        self.columns = {name: self.store.column(f"mask_{name}_unsorted") for name in PIXEL_DTYPES}

    def add(self, points: pd.DataFrame) -> None:
        """Append the pixel columns of the assigned transcripts of ``points``."""
        assigned = points["cell_ID"].to_numpy(dtype=np.int64) > 0
        for name, dtype in PIXEL_DTYPES.items():
            self.columns[name].append(points[name].to_numpy(dtype=dtype)[assigned])

    def sorted(self) -> SortedPixels:
        """Return the gathered columns sorted by x, one column at a time; nothing can be added afterwards."""
        x = self.columns["x_global_px"].finish()
        order = np.argsort(x, kind="stable")
        columns = {"x_global_px": self._gather(x, order, "x_global_px")}
        del x
        for name in PIXEL_DTYPES:
            if name != "x_global_px":
                columns[name] = self._gather(self.columns[name].finish(), order, name)
        return SortedPixels(columns)

    def _gather(self, values: np.ndarray, order: np.ndarray, name: str) -> np.ndarray:
        """Return ``values`` in ``order``, written a block of rows at a time into the store."""
        gathered = self.store.empty(f"mask_{name}", len(order), PIXEL_DTYPES[name])
        for block in row_blocks(len(order)):
            gathered[block] = values[order[block]]
        return gathered


def mask_polygons(
    labels: np.ndarray, origin: tuple[float, float], *, fov: int, pixel_size: float
) -> gpd.GeoDataFrame:
    """Trace the exact pixel outline of every label in a CosMx mask, in global µm.

    Each row of the mask is cut into runs of one label. Each run becomes a rectangle, and the
    rectangles of a label are merged. ``origin`` is the global pixel position of the mask's
    bottom-left corner, because image row 0 is the top and the global y axis points up.
    Polygons are named ``"<fov>_<label>"``; a label in separate pieces keeps its largest.
    """
    height, width = labels.shape
    run_start = np.ones(labels.shape, dtype=bool)
    run_start[:, 1:] = labels[:, 1:] != labels[:, :-1]
    rows, starts = np.nonzero(run_start)
    ends = np.append(starts[1:], width)
    ends[np.append(rows[1:] != rows[:-1], True)] = width
    run_labels = labels[rows, starts]

    labelled = run_labels > 0
    rows, starts, ends, run_labels = rows[labelled], starts[labelled], ends[labelled], run_labels[labelled]
    # Edges come from integer pixel positions, so neighbouring rectangles share exactly equal
    # coordinates and their union leaves no slivers.
    bottoms = height - 1 - rows
    x0, y0 = origin
    boxes = shapely.box(
        (x0 + starts) * pixel_size,
        (y0 + bottoms) * pixel_size,
        (x0 + ends) * pixel_size,
        (y0 + bottoms + 1) * pixel_size,
    )
    ids = np.char.add(f"{fov}_", run_labels.astype(str))
    frame = merge_polygons_by_id(ids, boxes, source=f"CellLabels mask of FOV {fov}")
    # Drop the vertices in the middle of straight pixel edges.
    frame.geometry = shapely.simplify(frame.geometry.to_numpy(), 0.0)
    return frame


def _check_mask(
    labels: np.ndarray,
    origin: tuple[float, float],
    fov: int,
    points: pd.DataFrame,
    *,
    min_agreement: float,
    name: str,
) -> int | None:
    """Return the FOV whose transcripts the mask matches, or None (with a warning) when it fails."""
    height, width = labels.shape
    columns = np.floor(points["x_global_px"].to_numpy(dtype=np.float64) - origin[0]).astype(np.int64)
    rows_from_bottom = np.floor(points["y_global_px"].to_numpy(dtype=np.float64) - origin[1]).astype(np.int64)
    inside = (columns >= 0) & (columns < width) & (rows_from_bottom >= 0) & (rows_from_bottom < height)
    checked = inside & (points["cell_ID"].to_numpy(dtype=np.int64) > 0)

    transcript_fovs = points["fov"].to_numpy()
    matched_fov = fov
    if not (checked & (transcript_fovs == fov)).any() and checked.any():
        fovs, counts = np.unique(transcript_fovs[checked], return_counts=True)
        matched_fov = int(fovs[np.argmax(counts)])
        logger.warning(
            "Mask %s is named for FOV %d, but the assigned transcripts in its area come from FOV(s) %s. "
            "It is checked against FOV %d and its cells are named after that FOV.",
            name,
            fov,
            fovs.tolist(),
            matched_fov,
        )
    checked &= transcript_fovs == matched_fov

    n_checked = int(checked.sum())
    if n_checked == 0:
        logger.warning(
            "Mask %s is left out: no assigned transcript lies in its area, so its alignment cannot be checked.",
            name,
        )
        return None

    pixel_labels = labels[height - 1 - rows_from_bottom[checked], columns[checked]]
    agreement = float(np.mean(pixel_labels == points["cell_ID"].to_numpy(dtype=np.int64)[checked]))
    if agreement < min_agreement:
        logger.warning(
            "Mask %s is left out: only %.1f %% of the %d assigned transcripts in its area fall on a pixel "
            "labelled with their cell_ID (min_mask_agreement is %.0f %%). The mask does not line up with "
            "the transcripts. Check that it belongs to FOV %d and to this run.",
            name,
            100.0 * agreement,
            n_checked,
            100.0 * min_agreement,
            matched_fov,
        )
        return None
    logger.info(
        "Mask %s: %.1f %% of the %d assigned transcripts in its area fall on a pixel labelled with their cell_ID.",
        name,
        100.0 * agreement,
        n_checked,
    )
    return matched_fov


def _read_labels(file: Path) -> np.ndarray:
    image = np.squeeze(tifffile.imread(file))
    if image.ndim != 2:
        msg = f"{file.name} has shape {image.shape}; a CellLabels mask must be a 2-D image."
        raise ValueError(msg)
    labels = image.astype(np.int64)
    if not np.array_equal(labels, image):
        msg = f"{file.name} holds non-integer values; a CellLabels mask must hold integer cell labels."
        raise ValueError(msg)
    return labels


def _read_fov_positions(file: Path) -> pd.DataFrame:
    frame = pd.read_csv(file)
    # Newer exports name the column "FOV".
    frame = frame.rename(columns={"FOV": "fov"})
    check_required_columns(
        frame, ("fov", "x_global_px", "y_global_px"), source=file.name, hint=VENDOR_FILE_HINT
    )
    return frame.set_index(frame["fov"].astype(int))


def _find_label_masks(folder: Path) -> dict[int, Path]:
    masks: dict[int, Path] = {}
    # glob follows symbolic links to folders, which Path.rglob does not by default.
    pattern = os.path.join(glob.escape(str(folder)), "**", "CellLabels_F*.tif*")
    for file in sorted(map(Path, glob.glob(pattern, recursive=True))):
        match = LABEL_MASK_NAME.match(file.name)
        if match is not None:
            masks.setdefault(int(match.group(1)), file)
    return masks


def _find_one(folder: Path, patterns: tuple[str, ...], *, required: bool) -> Path | None:
    for pattern in patterns:
        matches = sorted(folder.glob(pattern))
        if len(matches) > 1:
            msg = f"{str(folder)!r} holds several files matching {pattern!r}: {[m.name for m in matches]}. Keep one."
            raise ValueError(msg)
        if matches:
            return matches[0]
    if required:
        msg = f"No file matching {list(patterns)} was found in {str(folder)!r}; a CosMx folder needs one."
        raise FileNotFoundError(msg)
    return None
