"""Write a finished segmentation into SpatialData: points columns, cell polygons and a count table.

Every segmentation method (segger's GNN and the baselines) ends with :func:`write_segmentation`, so all
of them store their result in the same layout and are measured the same way.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anndata as ad
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely
from spatialdata.models import PointsModel, ShapesModel, TableModel
from spatialdata.transformations import get_transformation

from .. import _constants as C
from .._grouping import group_rows, row_blocks
from .._scratch import ArrayStore

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

DEFAULT_HULL_RATIO = 0.5
"""Default ``ratio`` of :func:`shapely.concave_hull`: 0 is the most concave outline, 1 the convex hull."""

DEFAULT_POINT_RADIUS = 1.0
"""Default radius in µm of the buffer drawn around cells whose transcripts span no area."""

# The string dtype that dask gives string columns (its default ``dataframe.convert-string``), so
# the column reads back from zarr with the dtype it was written with.
_CELL_ID_DTYPE = pd.StringDtype("pyarrow")

# Transcripts whose cell hulls and counts are built at once.
_CELL_CHUNK = 200_000

_POLYGON_TYPE_ID = 3  # shapely.get_type_id of a Polygon


@dataclass(frozen=True)
class _OutputNames:
    """Names of the two points columns and two elements that one segmentation writes."""

    cell_id_column: str
    score_column: str
    boundaries_key: str
    table_key: str

    @classmethod
    def from_key(cls, key_added: str) -> _OutputNames:
        return cls(
            cell_id_column=C.cell_id_column(key_added),
            score_column=C.score_column(key_added),
            boundaries_key=C.boundaries_key(key_added),
            table_key=C.table_key(key_added),
        )


@dataclass(frozen=True)
class Cells:
    """Sorted cell ids and, for every transcript, the position of its cell in them (-1 when unassigned)."""

    ids: np.ndarray
    codes: np.ndarray


@dataclass(frozen=True)
class _CellRows:
    """The assigned transcripts grouped by cell, to be read a range of whole cells at a time.

    Attributes
    ----------
    rows
        Positions of the assigned transcripts in the points element, by cell code and then
        ascending.
    starts
        Position in ``rows`` where each cell's transcripts start, shape ``(n_cells + 1,)``.
    """

    rows: np.ndarray
    starts: np.ndarray

    @classmethod
    def group(cls, cells: Cells, store: ArrayStore) -> _CellRows:
        """Group the transcripts of ``cells``; the grouped positions go to ``store``."""
        dtype = np.int32 if len(cells.codes) <= np.iinfo(np.int32).max else np.int64
        rows, starts = group_rows(
            lambda block: cells.codes[block],
            len(cells.codes),
            len(cells.ids),
            lambda n: store.empty("cell_rows", n, dtype),
        )
        return cls(rows=rows, starts=starts)

    def chunks(self, size: int) -> Iterator[tuple[int, int]]:
        """Yield ranges ``(first, last)`` of whole cells holding about ``size`` transcripts each, covering every cell."""
        n_cells = len(self.starts) - 1
        firsts = np.searchsorted(self.starts, np.arange(0, self.starts[-1], size), side="right") - 1
        bounds = np.unique(np.concatenate([[0], firsts, [n_cells]]))
        yield from itertools.pairwise(bounds.tolist())

    def rows_of(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the transcripts of cells ``first`` to ``last - 1`` and each one's cell relative to ``first``."""
        rows = np.asarray(self.rows[self.starts[first] : self.starts[last]])
        local = np.repeat(np.arange(last - first), np.diff(self.starts[first : last + 1]))
        return rows, local


@dataclass
class PointsArrays:
    """Columns of a points element that write-back reads, as compact arrays in element order.

    Attributes
    ----------
    xy
        Transcript coordinates, shape ``(n, 2)``, float64.
    feature_codes
        Position of each transcript's gene in ``features``, -1 where missing, int32.
    features
        Categories of the ``feature_key`` column.
    is_control
        Whether each transcript is a control probe (the ``is_control`` column, all False without it).
    partition_lengths
        Number of rows in each partition of the element.
    """

    xy: np.ndarray
    feature_codes: np.ndarray
    features: pd.Index
    is_control: np.ndarray
    partition_lengths: tuple[int, ...]

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, feature_key: str, partition_lengths: tuple[int, ...]
    ) -> PointsArrays:
        """Return the arrays of a computed points element."""
        features = frame[feature_key]
        if not isinstance(features.dtype, pd.CategoricalDtype):
            features = features.astype(str).astype("category")
        if C.IS_CONTROL in frame.columns:
            is_control = frame[C.IS_CONTROL].fillna(False).to_numpy(dtype=bool)
        else:
            is_control = np.zeros(len(frame), dtype=bool)
        return cls(
            xy=frame[[C.X, C.Y]].to_numpy(dtype=np.float64),
            feature_codes=features.cat.codes.to_numpy(dtype=np.int32),
            features=features.cat.categories,
            is_control=is_control,
            partition_lengths=partition_lengths,
        )


def points_frame(sdata: SpatialData, points_key: str = C.POINTS_KEY) -> pd.DataFrame:
    """Compute the points element ``points_key`` into one pandas DataFrame.

    The rows keep the order and index of the dask DataFrame, which is the order that
    :func:`write_segmentation` expects its ``cell_ids`` and ``scores`` in.

    Parameters
    ----------
    sdata
        SpatialData object containing the transcripts.
    points_key
        Name of the points element.

    Returns
    -------
    The transcripts, one row each.
    """
    return get_points(sdata, points_key).compute()


def check_outputs_free(sdata: SpatialData, *, key_added: str, points_key: str, overwrite: bool) -> None:
    """Raise ValueError when the outputs of ``key_added`` are invalid names or exist and ``overwrite`` is False.

    Segmentation methods call this before their expensive steps, so that a name clash fails fast.
    """
    names = _OutputNames.from_key(key_added)
    points = get_points(sdata, points_key)
    _check_output_names(sdata, names, key_added=key_added)
    if not overwrite:
        _check_outputs_absent(sdata, points, names, key_added=key_added)


def write_segmentation(
    sdata: SpatialData,
    cell_ids: pd.Series,
    *,
    key_added: str = C.KEY_ADDED,
    points_key: str = C.POINTS_KEY,
    scores: np.ndarray | None = None,
    prior_ids: pd.Series | None = None,
    prior_shapes: gpd.GeoDataFrame | None = None,
    params: dict[str, Any] | None = None,
    hull_ratio: float = DEFAULT_HULL_RATIO,
    point_radius: float = DEFAULT_POINT_RADIUS,
    overwrite: bool = False,
    frame: pd.DataFrame | None = None,
) -> None:
    """Store a transcript-to-cell assignment in ``sdata`` with cell polygons and a count table.

    Everything is computed and validated before ``sdata`` is changed, so an exception leaves it as it
    was.

    Parameters
    ----------
    sdata
        SpatialData object containing the transcripts; changed in place.
    cell_ids
        Cell id of every transcript, ``pd.NA`` where unassigned, with the index and row order of
        ``sdata.points[points_key].compute()`` (see :func:`points_frame`). Values are stored as strings.
    key_added
        Prefix of the columns and elements written.
    points_key
        Name of the points element; its ``feature_key`` column gives the genes.
    scores
        Assignment score of every transcript in [0, 1], NaN where none exists, in the same order as
        ``cell_ids``. None stores NaN for every transcript.
    prior_ids
        Id of the prior shape (e.g. nucleus) each cell grew from, indexed by cell id. Cells missing from
        the index or with ``pd.NA`` have none. Entries for ids that are not cells are ignored.
    prior_shapes
        Prior polygons indexed by prior id, in the coordinates of the points. Each cell's polygon is
        joined with the prior shape named by ``prior_ids``; unused without ``prior_ids``.
    params
        Parameters of the method, stored in the table's ``uns[key_added]["params"]`` together with the
        package version under ``"version"``, which replaces any ``"version"`` entry given.
    hull_ratio
        ``ratio`` of :func:`shapely.concave_hull` for the cell outlines, from 0 (most concave) to 1
        (convex hull).
    point_radius
        Radius in µm of the buffer drawn around cells whose transcripts span no area (one or two
        transcripts, or all on one line).
    overwrite
        Replace the outputs of an earlier segmentation with the same ``key_added``.
    frame
        The points element already computed into pandas by the caller, in element order, so
        that it is not read a second time. ``None`` computes it here.

    Returns
    -------
    None. Writes, for ``key_added="segger"``:

    ``sdata.points[points_key]["segger_cell_id"]``
        Cell id as a string, ``pd.NA`` where unassigned.
    ``sdata.points[points_key]["segger_score"]``
        float32 assignment score, NaN where none exists.
    ``sdata.shapes["segger_boundaries"]``
        One polygon per cell, indexed by cell id, with the points' transformations.
    ``sdata.tables["segger_table"]``
        Cells × genes AnnData. ``X`` is a CSR matrix of integer counts of non-control transcripts.
        ``obs`` has ``cell_id``, ``region``, ``n_transcripts`` (non-control transcripts), ``area``
        (µm²) and ``prior_id`` (categorical, missing where the cell grew from no prior shape).
        ``obsm["spatial"]`` contains the polygon centroids and ``uns[key_added]["params"]`` the
        parameters. The table annotates ``segger_boundaries`` through ``region`` and ``cell_id``.

    Raises
    ------
    ValueError
        If an output already exists and ``overwrite`` is False, if ``cell_ids`` or ``scores`` do not match
        the points, if no transcript is assigned, or if a prior id is missing from ``prior_shapes``.

    Notes
    -----
    Each cell's outline is the concave hull of all its transcripts, controls included. A hull with zero
    area is replaced by its buffer of ``point_radius``. The result is joined with the cell's prior shape
    and made valid. Where this leaves more than one part (a prior shape apart from the transcripts), the
    convex hull of all parts is kept, so the polygon still covers every transcript and the prior shape.
    Holes are filled. Outlines are 2-D, from ``x`` and ``y`` only. Cells are sorted by id as plain
    strings, so ``"segger-10"`` comes before ``"segger-2"``.
    """
    names = _OutputNames.from_key(key_added)
    points = get_points(sdata, points_key)
    _check_output_names(sdata, names, key_added=key_added)
    if not overwrite:
        _check_outputs_absent(sdata, points, names, key_added=key_added)
    _check_hull_options(hull_ratio, point_radius)

    if frame is None:
        frame = points.compute()
    cell_ids = _check_cell_ids(cell_ids, frame, points_key=points_key)
    scores = _check_scores(scores, len(frame))
    cells = _index_cells(cell_ids)
    feature_key = points.attrs[PointsModel.ATTRS_KEY][PointsModel.FEATURE_KEY]
    partition_lengths = _partition_lengths(points, frame)
    arrays = PointsArrays.from_frame(frame, feature_key, partition_lengths)
    del frame, cell_ids
    write_cells(
        sdata,
        cells,
        scores,
        arrays,
        key_added=key_added,
        points_key=points_key,
        prior_ids=prior_ids,
        prior_shapes=prior_shapes,
        params=params,
        overwrite=overwrite,
        hull_ratio=hull_ratio,
        point_radius=point_radius,
    )


def _partition_lengths(points: dd.DataFrame, frame: pd.DataFrame) -> tuple[int, ...]:
    """Return the rows of each partition of ``points``, whose computed rows are ``frame``."""
    if points.npartitions == 1:
        return (len(frame),)
    return tuple(int(n) for n in points.map_partitions(len).compute())


def write_cells(
    sdata: SpatialData,
    cells: Cells,
    scores: np.ndarray,
    arrays: PointsArrays,
    *,
    key_added: str,
    points_key: str,
    prior_ids: pd.Series | None,
    prior_shapes: gpd.GeoDataFrame | None,
    params: dict[str, Any] | None,
    overwrite: bool,
    hull_ratio: float = DEFAULT_HULL_RATIO,
    point_radius: float = DEFAULT_POINT_RADIUS,
    store: ArrayStore | None = None,
    outputs: ArrayStore | None = None,
) -> None:
    """Store a segmentation given as cell codes, as :func:`write_segmentation` does with cell ids.

    This is segger's own path: it never builds a string per transcript or a pandas copy of the
    points, because ``arrays`` come from the reading pass and the points columns are added
    lazily, one partition at a time.

    Parameters
    ----------
    sdata
        SpatialData object containing the transcripts; changed in place.
    cells
        Sorted cell ids and the code of every transcript of ``points_key``, in element order.
    scores
        Assignment score of every transcript, NaN where none exists.
    arrays
        Coordinates, genes and partition lengths of the same points element.
    key_added, points_key, prior_ids, prior_shapes, params, overwrite, hull_ratio, point_radius
        As in :func:`write_segmentation`.
    store
        Where the transcripts grouped by cell are kept while the polygons and counts are built;
        in memory by default.
    outputs
        The store that contains ``cells.codes`` and ``scores``. Its folder, if any, is deleted once
        the new points element no longer reads them.
    """
    start = time.perf_counter()
    names = _OutputNames.from_key(key_added)
    points = get_points(sdata, points_key)
    _check_output_names(sdata, names, key_added=key_added)
    if not overwrite:
        _check_outputs_absent(sdata, points, names, key_added=key_added)
    _check_any_cell(len(cells.ids))
    _check_hull_options(hull_ratio, point_radius)
    scores = _check_scores(scores, len(cells.codes))

    logger.info(
        "Writing segmentation %r: %d cells from %d of %d transcripts",
        key_added,
        len(cells.ids),
        int((cells.codes >= 0).sum()),
        len(cells.codes),
    )

    transformations = get_transformation(points, get_all=True)
    cell_prior_ids = _align_prior_ids(prior_ids, cells.ids)
    priors = _prior_geometries(cell_prior_ids, prior_shapes, transformations)
    grouped = _CellRows.group(cells, store or ArrayStore())
    polygons = _cell_polygons(arrays.xy, grouped, priors, hull_ratio=hull_ratio, point_radius=point_radius)
    counts, genes = _count_matrix(arrays, grouped)
    del grouped

    new_points = _points_with_columns(
        points, cells, scores, arrays.partition_lengths, names=names, outputs=outputs
    )
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=polygons, index=pd.Index(cells.ids, dtype=object, name=C.CELL_ID)),
        transformations=copy.deepcopy(transformations),
    )
    table = _cell_table(
        cells, counts, genes, polygons, cell_prior_ids, names=names, key_added=key_added, params=params
    )

    sdata.points[points_key] = new_points
    sdata.shapes[names.boundaries_key] = shapes
    sdata.tables[names.table_key] = table
    logger.info(
        "Finished segmentation %r in %.1f s: added points columns %r and %r, shapes %r, table %r",
        key_added,
        time.perf_counter() - start,
        names.cell_id_column,
        names.score_column,
        names.boundaries_key,
        names.table_key,
    )


def get_points(sdata: SpatialData, points_key: str) -> dd.DataFrame:
    """Return the points element ``points_key``, raising KeyError with the available names when absent."""
    if points_key not in sdata.points:
        msg = (
            f"Points element {points_key!r} not found; the SpatialData object has points "
            f"{list(sdata.points)}. Pass the name of the transcripts as `points_key`."
        )
        raise KeyError(msg)
    return sdata.points[points_key]


def _check_output_names(sdata: SpatialData, names: _OutputNames, *, key_added: str) -> None:
    """Raise ValueError when an output element name is invalid or differs only in case from another element.

    These are the name rules that ``SpatialData`` applies when an element is added. Checking them first
    keeps the final assignments from failing on a name after some outputs were already stored.
    """
    for name in (names.boundaries_key, names.table_key):
        if not all(character.isalnum() or character in "_-." for character in name) or name.startswith("__"):
            msg = (
                f"Element name {name!r} made from key_added={key_added!r} is invalid: SpatialData element "
                "names contain only letters, digits, '_', '-' and '.' and do not start with '__'. "
                "Choose another `key_added`."
            )
            raise ValueError(msg)

    existing = {name.lower(): (element_type, name) for element_type, name, _ in sdata.gen_elements()}
    for element_type, name in (("shapes", names.boundaries_key), ("tables", names.table_key)):
        found = existing.get(name.lower())
        if found is not None and found != (element_type, name):
            msg = (
                f"Cannot add {element_type} element {name!r}: the {found[0]} element {found[1]!r} has the "
                "same name up to case, which SpatialData does not allow. Choose another `key_added`."
            )
            raise ValueError(msg)


def _check_outputs_absent(
    sdata: SpatialData, points: dd.DataFrame, names: _OutputNames, *, key_added: str
) -> None:
    columns = (names.cell_id_column, names.score_column)
    existing = [f"points column {column!r}" for column in columns if column in points.columns]
    if names.boundaries_key in sdata.shapes:
        existing.append(f"shapes element {names.boundaries_key!r}")
    if names.table_key in sdata.tables:
        existing.append(f"table element {names.table_key!r}")
    if existing:
        msg = (
            f"The outputs of key_added={key_added!r} already exist: {', '.join(existing)}. Pass "
            "`overwrite=True` to replace them or choose another `key_added`."
        )
        raise ValueError(msg)


def _check_hull_options(hull_ratio: float, point_radius: float) -> None:
    if not 0 <= hull_ratio <= 1:
        msg = (
            f"hull_ratio={hull_ratio!r} is outside [0, 1]. Pass a value from 0 (most concave outline) to 1 "
            "(convex hull)."
        )
        raise ValueError(msg)
    if not point_radius > 0:
        msg = f"point_radius={point_radius!r} must be positive so that every cell polygon has an area."
        raise ValueError(msg)


def _check_cell_ids(cell_ids: pd.Series, frame: pd.DataFrame, *, points_key: str) -> pd.Series:
    """Return ``cell_ids`` as a nullable string column after checking that it matches the points rows."""
    if not isinstance(cell_ids, pd.Series):
        msg = (
            f"cell_ids must be a pandas Series, got {type(cell_ids).__name__}. Wrap the values as "
            "`pd.Series(values, index=points.index, dtype='string')` with `points = points_frame(sdata)`."
        )
        raise TypeError(msg)
    if len(cell_ids) != len(frame):
        msg = (
            f"cell_ids has {len(cell_ids)} entries but points {points_key!r} has {len(frame)} rows. "
            "Pass one cell id (or pd.NA) per transcript."
        )
        raise ValueError(msg)
    if not cell_ids.index.equals(frame.index):
        msg = (
            f"The index of cell_ids differs from the index of points {points_key!r}. Pass the ids in the "
            "row order of `points_frame(sdata)` with its index, for example "
            "`pd.Series(values, index=points.index)`."
        )
        raise ValueError(msg)
    return cell_ids.astype("string")


def _check_scores(scores: np.ndarray | None, n_points: int) -> np.ndarray:
    """Return ``scores`` as float32 after checking its length and range; None becomes all NaN."""
    if scores is None:
        return np.full(n_points, np.nan, dtype=np.float32)

    values = np.asarray(scores, dtype=np.float32)
    if values.shape != (n_points,):
        msg = (
            f"scores has shape {values.shape} but the points have {n_points} rows. Pass one score per "
            "transcript."
        )
        raise ValueError(msg)

    n_outside, low, high = 0, np.inf, -np.inf
    for block in row_blocks(n_points):
        # NaN fails both comparisons and is ignored by fmin and fmax.
        part = values[block]
        n_outside += int(((part < 0) | (part > 1)).sum())
        low = min(low, float(np.fmin.reduce(part, initial=np.inf)))
        high = max(high, float(np.fmax.reduce(part, initial=-np.inf)))
    if n_outside:
        msg = (
            f"{n_outside} scores lie outside [0, 1] (min {low}, max {high}). Pass probabilities, with "
            "NaN where no score exists."
        )
        raise ValueError(msg)
    return values


def _index_cells(cell_ids: pd.Series) -> Cells:
    codes, ids = pd.factorize(cell_ids, sort=True, use_na_sentinel=True)
    _check_any_cell(len(ids))
    return Cells(ids=np.asarray(ids, dtype=object), codes=np.asarray(codes, dtype=np.int64))


def _check_any_cell(n_cells: int) -> None:
    if n_cells == 0:
        msg = (
            "No transcript is assigned to a cell, so there is no cell to write; every entry of cell_ids "
            "is missing. Check the segmentation's input and parameters."
        )
        raise ValueError(msg)


def _align_prior_ids(prior_ids: pd.Series | None, cell_ids: np.ndarray) -> pd.Series:
    """Return the prior id of every cell in ``cell_ids`` order, ``pd.NA`` where it has none."""
    if prior_ids is None:
        return pd.Series(pd.NA, index=cell_ids, dtype="string")
    if not prior_ids.index.is_unique:
        duplicated = prior_ids.index[prior_ids.index.duplicated()].unique()[:5].tolist()
        msg = f"prior_ids has repeated cell ids, for example {duplicated}. Pass one prior id per cell."
        raise ValueError(msg)
    aligned = prior_ids.astype("string")
    aligned.index = aligned.index.astype(str)
    return aligned.reindex(cell_ids)


def _prior_geometries(
    cell_prior_ids: pd.Series, prior_shapes: gpd.GeoDataFrame | None, transformations: dict[str, Any]
) -> np.ndarray:
    """Return the valid prior polygon of every cell, None where it has none."""
    has_prior = cell_prior_ids.notna().to_numpy()
    priors = np.full(len(cell_prior_ids), None, dtype=object)
    if prior_shapes is None or not has_prior.any():
        return priors

    if ShapesModel.TRANSFORM_KEY in prior_shapes.attrs:
        _check_same_coordinates(get_transformation(prior_shapes, get_all=True), transformations)

    used_ids = cell_prior_ids[has_prior]
    shape_index = prior_shapes.index.astype(str)
    missing = ~used_ids.isin(shape_index).to_numpy()
    if missing.any():
        examples = used_ids[missing].unique()[:5].tolist()
        msg = (
            f"{int(missing.sum())} prior ids are missing from the index of prior_shapes, for example "
            f"{examples}. Pass the prior shapes that the cells grew from, indexed by prior id."
        )
        raise ValueError(msg)

    geometry = pd.Series(prior_shapes.geometry.to_numpy(), index=shape_index)
    used = geometry.loc[used_ids.to_numpy()].to_numpy()
    # Valid shapes are kept as they are: a repaired copy of every prior shape would double their memory.
    invalid = ~shapely.is_valid(used)
    used[invalid] = shapely.make_valid(used[invalid])
    priors[has_prior] = used
    return priors


def _check_same_coordinates(
    shape_transformations: dict[str, Any], point_transformations: dict[str, Any]
) -> None:
    """Raise ValueError unless the shapes and points share a coordinate system and agree in every shared one."""
    shared = shape_transformations.keys() & point_transformations.keys()
    differing = sorted(name for name in shared if shape_transformations[name] != point_transformations[name])
    if not shared:
        msg = (
            f"prior_shapes (coordinate systems {sorted(shape_transformations)}) and the points (coordinate "
            f"systems {sorted(point_transformations)}) share no coordinate system, so their coordinates "
            "cannot be joined. Pass prior shapes in the coordinates of the points."
        )
        raise ValueError(msg)
    if differing:
        msg = (
            f"prior_shapes and the points have different transformations to the coordinate systems "
            f"{differing}, so their coordinates cannot be joined. Pass prior shapes in the coordinates of "
            "the points."
        )
        raise ValueError(msg)


def _cell_polygons(
    xy: np.ndarray,
    grouped: _CellRows,
    priors: np.ndarray,
    *,
    hull_ratio: float,
    point_radius: float,
) -> np.ndarray:
    """Return one valid Polygon per cell: its transcripts' concave hull joined with its prior shape.

    Whole cells are built in chunks of about :data:`_CELL_CHUNK` transcripts, from the hull to
    the final polygon, so only the final polygons are kept for every cell. Shapely makes a
    geometry of each transcript, of about a hundred bytes (an estimate), before it forms a
    cell's hull.
    """
    polygons = np.empty(len(grouped.starts) - 1, dtype=object)
    for first, last in grouped.chunks(_CELL_CHUNK):
        rows, local = grouped.rows_of(first, last)
        hulls = shapely.concave_hull(shapely.multipoints(xy[rows], indices=local), ratio=hull_ratio)
        polygons[first:last] = _join_priors(hulls, priors[first:last], point_radius=point_radius)
    return polygons


def _join_priors(outlines: np.ndarray, priors: np.ndarray, *, point_radius: float) -> np.ndarray:
    """Return each outline, buffered when it has no area, joined with its prior shape as one valid Polygon."""
    flat = shapely.area(outlines) <= 0
    outlines[flat] = shapely.buffer(outlines[flat], point_radius)

    # Where the outline already covers the prior shape the union would not change it, and the covers
    # test is several times cheaper than the union.
    to_join = ~shapely.is_missing(priors)
    to_join[to_join] = ~shapely.covers(outlines[to_join], priors[to_join])
    outlines[to_join] = shapely.union(outlines[to_join], priors[to_join])
    outlines = shapely.make_valid(outlines)

    several_parts = shapely.get_type_id(outlines) != _POLYGON_TYPE_ID
    outlines[several_parts] = shapely.convex_hull(outlines[several_parts])
    return shapely.polygons(shapely.get_exterior_ring(outlines))


def _count_matrix(arrays: PointsArrays, grouped: _CellRows) -> tuple[sp.csr_matrix, pd.Index]:
    """Count the non-control transcripts of every cell per gene, a range of cells at a time.

    A category of the feature column is a control when any of its transcripts has ``is_control``
    set; all other categories, used or not, are genes.
    """
    is_gene = np.ones(len(arrays.features), dtype=bool)
    for block in row_blocks(len(arrays.feature_codes)):
        feature_codes = arrays.feature_codes[block]
        is_gene[np.unique(feature_codes[arrays.is_control[block] & (feature_codes >= 0)])] = False
    gene_codes = np.append(np.where(is_gene, np.cumsum(is_gene) - 1, -1), -1).astype(np.int32)
    genes = pd.Index(arrays.features[is_gene].astype(str), dtype=object)

    parts = []
    for first, last in grouped.chunks(_CELL_CHUNK):
        rows, local = grouped.rows_of(first, last)
        # Code -1 (a missing gene) reads the -1 appended to gene_codes.
        row_gene = gene_codes[arrays.feature_codes[rows]]
        counted = (row_gene >= 0) & ~arrays.is_control[rows]
        part = sp.csr_matrix(
            (np.ones(int(counted.sum()), dtype=np.int32), (local[counted], row_gene[counted])),
            shape=(last - first, len(genes)),
        )
        part.sum_duplicates()
        parts.append(part)
    counts = sp.vstack(parts, format="csr", dtype=np.int32)
    counts.sum_duplicates()
    return counts, genes


def _points_with_columns(
    points: dd.DataFrame,
    cells: Cells,
    scores: np.ndarray,
    partition_lengths: tuple[int, ...],
    *,
    names: _OutputNames,
    outputs: ArrayStore | None = None,
) -> dd.DataFrame:
    """Return ``points`` with the cell id and score columns added lazily, partition by partition.

    The result keeps the element's partitions, divisions and attrs. Nothing is computed here:
    each partition gets its slice of the columns when it is computed or written. The folder of
    ``outputs``, which contains the columns' arrays, is deleted with the function that reads them.
    """
    if sum(partition_lengths) != len(cells.codes) or len(partition_lengths) != points.npartitions:
        msg = (
            f"The segmentation covers {len(cells.codes)} transcripts in {len(partition_lengths)} "
            f"partition(s), but the points element has {points.npartitions} partition(s); it was "
            "changed after it was read. Run the segmentation again."
        )
        raise RuntimeError(msg)

    filler = _ColumnFiller(cells, scores, partition_lengths, names)
    if outputs is not None:
        outputs.remove_with(filler)
    meta = points._meta.assign(
        **{
            names.cell_id_column: pd.Series(dtype=_CELL_ID_DTYPE),
            names.score_column: pd.Series(dtype=np.float32),
        }
    )
    extended = points.map_partitions(filler, meta=meta, align_dataframes=False)
    extended.attrs.update(copy.deepcopy(dict(points.attrs)))
    PointsModel.validate(extended)
    return extended


class _ColumnFiller:
    """Map-partitions function that adds one partition's slice of the cell ids and scores."""

    def __init__(
        self, cells: Cells, scores: np.ndarray, partition_lengths: tuple[int, ...], names: _OutputNames
    ) -> None:
        self.cells = cells
        self.scores = scores
        self.offsets = np.concatenate([[0], np.cumsum(partition_lengths)]).astype(np.int64)
        self.names = names
        # Dask names the task by this token. Hashing the captured arrays instead would cost a
        # pass over every transcript.
        self.token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self.token

    def __call__(self, part: pd.DataFrame, partition_info: dict | None = None) -> pd.DataFrame:
        number = 0 if partition_info is None else partition_info["number"]
        start, stop = int(self.offsets[number]), int(self.offsets[number + 1])
        if len(part) != stop - start:
            msg = (
                f"Partition {number} of the points element has {len(part)} rows, but it had "
                f"{stop - start} when segger read it; the element changed since. Run the "
                "segmentation again."
            )
            raise RuntimeError(msg)

        codes = self.cells.codes[start:stop]
        assigned = codes >= 0
        ids = np.full(len(codes), None, dtype=object)
        ids[assigned] = self.cells.ids[codes[assigned]]
        return part.assign(
            **{
                self.names.cell_id_column: pd.array(ids, dtype=_CELL_ID_DTYPE),
                self.names.score_column: self.scores[start:stop],
            }
        )


def _cell_table(
    cells: Cells,
    counts: sp.csr_matrix,
    genes: pd.Index,
    polygons: np.ndarray,
    cell_prior_ids: pd.Series,
    *,
    names: _OutputNames,
    key_added: str,
    params: dict[str, Any] | None,
) -> ad.AnnData:
    # Imported here because `segger/__init__.py` imports `tl` before it sets `__version__`.
    from segger import __version__

    obs = pd.DataFrame(
        {
            C.CELL_ID: cells.ids,
            "region": pd.Categorical(
                [names.boundaries_key] * len(cells.ids), categories=[names.boundaries_key]
            ),
            "n_transcripts": np.asarray(counts.sum(axis=1)).ravel().astype(np.int64),
            "area": shapely.area(polygons),
            # Categorical, because anndata 0.12 writes nullable string columns only when
            # `anndata.settings.allow_write_nullable_strings` is set.
            "prior_id": pd.Categorical(cell_prior_ids.to_numpy(dtype=object, na_value=None)),
        },
        index=pd.Index(cells.ids, dtype=object),
    )

    table = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes))
    table.obsm["spatial"] = shapely.get_coordinates(shapely.centroid(polygons))
    table.uns[key_added] = {"params": {**copy.deepcopy(params or {}), "version": __version__}}
    return TableModel.parse(table, region=names.boundaries_key, region_key="region", instance_key=C.CELL_ID)
