"""Read and validate the points and prior shapes of a SpatialData object for segmentation."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

from .. import _constants as C
from .._grouping import row_blocks
from .._memory import release_freed_memory
from .._repeats import find_repeats
from .._scratch import ArrayStore, Column
from ..graph import GraphInputs, shape_features
from ..io._spatialdata import check_nonfinite_counts, count_nonfinite
from ._writeback import PointsArrays, get_points

logger = logging.getLogger(__name__)

# Nuclei are about 4 to 12 µm wide. The median prior shape of the real crops is 4 to 9 µm wide
# (nuclei and vendor cells), so a median above this suggests pixel coordinates, and the pixel size
# is estimated from the nucleus width range.
MAX_MEDIAN_DIAMETER_UM = 16.0
NUCLEUS_DIAMETER_RANGE_UM = (4.0, 12.0)

# Transcripts that the vendor flags as inside a shape must mostly lie within this distance of it. On
# the Xenium lung crop every flagged transcript lies within 0.4 µm of its nucleus polygon.
MAX_LABEL_DISTANCE_UM = 2.0
MIN_LABELS_NEAR_SHAPE = 0.5

# Transcript ids checked for repeats at once, which needs a hash table of them.


@dataclass
class PreparedData:
    """Everything segmentation needs from a SpatialData object, as compact arrays.

    No pandas copy of the points is kept: the transcripts are read one partition at a time.

    Attributes
    ----------
    points
        The columns that write-back needs, for every transcript of the points element.
    shapes
        The prior shapes, valid polygons indexed by cell id.
    in_graph
        Mask over the points: non-control transcripts that pass the quality filter.
    graph_feature_codes
        Position of each graph transcript's gene in ``points.features``, -1 where missing.
    transcript_ids
        ``transcript_id`` of each graph transcript, or its row number without that column.
    positions
        Coordinates of each graph transcript, shape ``(n, 3)``, µm; z is 0 when absent.
    prior_index
        Position in ``shapes`` of the shape that contains each graph transcript, -1 for none.
    shape_features
        Unscaled shape features, shape ``(m, 4)``.
    shape_centroids
        Shape centroids, shape ``(m, 2)``.
    feature_key
        Name of the gene column.
    """

    points: PointsArrays
    shapes: gpd.GeoDataFrame
    in_graph: np.ndarray
    graph_feature_codes: np.ndarray
    transcript_ids: np.ndarray
    positions: np.ndarray
    prior_index: np.ndarray
    shape_features: np.ndarray
    shape_centroids: np.ndarray
    feature_key: str

    @property
    def n_points(self) -> int:
        """Number of transcripts in the points element, graph or not."""
        return len(self.in_graph)

    @property
    def gene_names(self) -> np.ndarray:
        """Gene names indexed by feature code, with ``"nan"`` last so that code -1 reads it."""
        return np.append(self.points.features.astype(str).to_numpy(dtype=object), "nan")

    def graph_genes(self) -> np.ndarray:
        """Return the distinct gene names of the graph transcripts, in feature-code order."""
        used = np.zeros(len(self.gene_names), dtype=bool)
        for block in row_blocks(len(self.graph_feature_codes)):
            # Code -1 (a missing gene) marks the last entry, "nan".
            used[self.graph_feature_codes[block]] = True
        return self.gene_names[used]

    def tokens(self, tokenize: Callable[[np.ndarray], np.ndarray], store: ArrayStore) -> np.ndarray:
        """Return each graph transcript's token as int32, tokenizing every gene name once; kept in ``store``."""
        token_of = tokenize(self.gene_names).astype(np.int32)
        tokens = store.column("tokens")
        for block in row_blocks(len(self.graph_feature_codes)):
            tokens.append(token_of[self.graph_feature_codes[block]])
        return tokens.finish()

    def graph_inputs(self, tokens: np.ndarray, scaled_shape_features: np.ndarray) -> GraphInputs:
        """Return the arrays for graph building with the given gene tokens and scaled shape features."""
        return GraphInputs(
            positions=self.positions,
            tokens=tokens,
            prior_index=self.prior_index,
            shape_centroids=self.shape_centroids,
            shape_features=scaled_shape_features,
        )


@dataclass
class _Partition:
    """Arrays read from one partition of the points element."""

    xy: np.ndarray
    feature_codes: np.ndarray
    is_control: np.ndarray
    transcript_ids: np.ndarray | None
    in_graph: np.ndarray
    positions: np.ndarray
    prior_index: np.ndarray


class _CategoryUnion:
    """Gene categories gathered over partitions, in the order a computed element would have them.

    Categorical columns keep the first partition's categories, followed by categories new in
    later partitions. Other columns are read as strings and their categories sorted at the end,
    as ``astype(str).astype("category")`` does on the whole column.
    """

    def __init__(self) -> None:
        self.categories: list[Any] = []
        self.lookup: dict[Any, int] = {}
        self.sort = False

    def codes(self, values: pd.Series) -> np.ndarray:
        """Return the position of each value in the gathered categories, -1 where missing."""
        if not isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype(str).astype("category")
            self.sort = True
        mapping = np.array([self._add(category) for category in values.cat.categories], dtype=np.int32)
        local = values.cat.codes.to_numpy(dtype=np.int32)
        if len(mapping) == 0:
            return np.full(len(local), -1, dtype=np.int32)
        return np.where(local >= 0, mapping[local], -1).astype(np.int32)

    def finish(self, codes: np.ndarray, store: ArrayStore) -> tuple[pd.Index, np.ndarray]:
        """Return the categories and ``codes`` renumbered for them, kept in ``store`` when renumbered."""
        categories = pd.Index(self.categories)
        if not self.sort or len(categories) == 0:
            return categories, codes
        order = np.argsort(categories.to_numpy(dtype=str), kind="stable")
        # The last entry maps the missing code -1 to itself.
        renumber = np.full(len(order) + 1, -1, dtype=np.int32)
        renumber[order] = np.arange(len(order), dtype=np.int32)
        renumbered = store.column("feature_codes_sorted")
        for block in row_blocks(len(codes)):
            renumbered.append(renumber[codes[block]])
        return categories[order], renumbered.finish()

    def _add(self, category: Any) -> int:
        if category not in self.lookup:
            self.lookup[category] = len(self.categories)
            self.categories.append(category)
        return self.lookup[category]


def prepare(
    sdata: SpatialData,
    *,
    points_key: str,
    shapes_key: str,
    min_qv: float | None,
    require_labels: bool,
    store: ArrayStore | None = None,
) -> PreparedData:
    """Validate the input and return the arrays that graph building and write-back need.

    The points are read one partition at a time and reduced to compact arrays, so a slide is
    never held in memory as a pandas frame.

    Parameters
    ----------
    sdata
        Input; it is not modified.
    points_key, shapes_key
        Names of the transcripts and prior-shape elements.
    min_qv
        Minimum quality value of graph transcripts; ``None`` disables the filter.
    require_labels
        Whether at least one graph transcript must lie inside a prior shape (needed for training).
    store
        Where the per-transcript arrays are kept; in memory by default.
    """
    store = store or ArrayStore()
    element, feature_key = _points_element(sdata, points_key)
    shapes = _read_shapes(sdata, shapes_key)
    _check_coordinate_systems(sdata, points_key, shapes_key)

    if min_qv is not None and C.QV not in element.columns:
        logger.info("Points have no %r column; the quality filter is skipped.", C.QV)
    if C.OVERLAPS_NUCLEUS not in element.columns or C.CELL_ID not in element.columns:
        logger.info(
            "Points lack %r or %r; finding transcripts inside prior shapes by point-in-polygon.",
            C.OVERLAPS_NUCLEUS,
            C.CELL_ID,
        )
    source = f"points {points_key!r}"
    categories = _CategoryUnion()
    shapes_frame = gpd.GeoDataFrame(geometry=shapes.geometry.to_numpy())
    nonfinite: dict[str, int] = {}
    n_near, n_labelled = 0, 0
    columns = {name: store.column(name) for name in _Partition.__dataclass_fields__}
    partition_lengths = []
    for delayed_partition in element.to_delayed():
        frame = delayed_partition.compute()
        for column, n_bad in count_nonfinite(frame, (C.X, C.Y, C.Z)).items():
            nonfinite[column] = nonfinite.get(column, 0) + n_bad
        partition = _read_partition(frame, feature_key, categories, shapes, shapes_frame, min_qv)
        del frame
        near, labelled = _labels_near_shapes(partition, shapes)
        n_near, n_labelled = n_near + near, n_labelled + labelled
        partition_lengths.append(len(partition.in_graph))
        for name, column in columns.items():
            values = getattr(partition, name)
            if values is not None:
                column.append(values)
        del partition

    n_points = sum(partition_lengths)
    if n_points == 0:
        msg = f"Points element {points_key!r} is empty; segmentation needs transcripts."
        raise ValueError(msg)
    check_nonfinite_counts(nonfinite, n_points, source=source)
    if columns["transcript_ids"].n_rows:
        transcript_ids = columns["transcript_ids"].finish()
        _check_unique_ids(transcript_ids, points_key)
    else:
        transcript_ids = None

    xy = columns["xy"].finish()
    _check_overlap(xy, shapes, points_key=points_key, shapes_key=shapes_key)
    _warn_if_pixels(shapes, shapes_key)

    features, feature_codes = categories.finish(columns["feature_codes"].finish(), store)
    in_graph = columns["in_graph"].finish()
    if not in_graph.any():
        msg = (
            f"No transcript of points {points_key!r} can enter the graph: all {n_points} are control "
            f"probes or have qv < {min_qv}. Lower `min_qv` or check the `is_control` column."
        )
        raise ValueError(msg)

    prior_index = columns["prior_index"].finish()
    _check_labels_inside(n_near, n_labelled, shapes_key=shapes_key)
    if require_labels and not (prior_index >= 0).any():
        msg = (
            f"No transcript of points {points_key!r} lies inside a shape of {shapes_key!r}, so there "
            f"are no training labels. Check that `shapes_key` names the nuclei, that the "
            f"{C.CELL_ID!r} column uses the shapes' index, and that both elements share coordinates."
        )
        raise ValueError(msg)

    points = PointsArrays(
        xy=xy,
        feature_codes=feature_codes,
        features=features,
        is_control=columns["is_control"].finish(),
        partition_lengths=tuple(partition_lengths),
    )
    positions = columns["positions"].finish()
    del columns
    # The partitions' pandas frames and arrays are freed, and their pages go back to the system.
    release_freed_memory()

    polygons = shapes.geometry.to_numpy()
    centroids = shapely.get_coordinates(shapely.centroid(polygons))
    logger.info(
        "Prepared %d of %d transcripts for the graph (%d inside one of %d prior shapes).",
        len(positions),
        n_points,
        int((prior_index >= 0).sum()),
        len(shapes),
    )
    return PreparedData(
        points=points,
        shapes=shapes,
        in_graph=in_graph,
        graph_feature_codes=_graph_rows(store.column("graph_feature_codes"), feature_codes, in_graph),
        transcript_ids=_graph_rows(store.column("graph_transcript_ids"), transcript_ids, in_graph),
        positions=positions,
        prior_index=prior_index,
        shape_features=shape_features(polygons),
        shape_centroids=centroids,
        feature_key=feature_key,
    )


def _points_element(sdata: SpatialData, points_key: str) -> tuple[dd.DataFrame, str]:
    """Return the points element and its gene column, after checking that its columns exist."""
    element = get_points(sdata, points_key)
    feature_key = element.attrs.get("spatialdata_attrs", {}).get("feature_key") or C.FEATURE_NAME
    missing = [column for column in (C.X, C.Y, feature_key) if column not in element.columns]
    if missing:
        msg = (
            f"Points element {points_key!r} is missing the column(s) {missing}; it has "
            f"{list(element.columns)}. Read vendor data with `sg.io` or parse the points with "
            "`PointsModel.parse(..., feature_key=...)`."
        )
        raise ValueError(msg)
    return element, feature_key


def _read_points(sdata: SpatialData, points_key: str) -> tuple[pd.DataFrame, str]:
    """Return the whole points element as one checked pandas frame, and its gene column.

    For the baselines, which work on the frame; :func:`prepare` reads by partition instead.
    """
    element, feature_key = _points_element(sdata, points_key)
    points = element.compute()
    if len(points) == 0:
        msg = f"Points element {points_key!r} is empty; segmentation needs transcripts."
        raise ValueError(msg)
    source = f"points {points_key!r}"
    check_nonfinite_counts(count_nonfinite(points, (C.X, C.Y, C.Z)), len(points), source=source)
    ids = points.get(C.TRANSCRIPT_ID)
    if ids is not None and not ids.is_unique:
        # The baselines accept any hashable ids, so these are checked by pandas, not as integers.
        raise ValueError(_duplicate_ids_message(int(ids.duplicated(keep=False).sum()), points_key))
    return points, feature_key


def _read_partition(
    frame: pd.DataFrame,
    feature_key: str,
    categories: _CategoryUnion,
    shapes: gpd.GeoDataFrame,
    shapes_frame: gpd.GeoDataFrame,
    min_qv: float | None,
) -> _Partition:
    """Reduce one computed partition of the points to the arrays that segmentation keeps."""
    xy = frame[[C.X, C.Y]].to_numpy(dtype=np.float64)
    if C.IS_CONTROL in frame.columns:
        is_control = frame[C.IS_CONTROL].fillna(False).to_numpy(dtype=bool)
    else:
        is_control = np.zeros(len(frame), dtype=bool)

    in_graph = _graph_mask(frame, feature_key, min_qv)
    positions = np.zeros((int(in_graph.sum()), 3), dtype=np.float32)
    positions[:, :2] = xy[in_graph]
    if C.Z in frame.columns:
        positions[:, 2] = frame[C.Z].to_numpy(dtype=np.float32)[in_graph]

    ids = _integer_ids(frame[C.TRANSCRIPT_ID]) if C.TRANSCRIPT_ID in frame.columns else None
    return _Partition(
        xy=xy,
        feature_codes=categories.codes(frame[feature_key]),
        is_control=is_control,
        transcript_ids=ids,
        in_graph=in_graph,
        positions=positions,
        prior_index=_prior_index(frame, in_graph, shapes, shapes_frame),
    )


def _integer_ids(ids: pd.Series) -> np.ndarray:
    """Return a partition's ``transcript_id`` values as int64.

    Raises
    ------
    ValueError
        When a value is missing or cannot be read as an integer, naming the first such value.
    """
    try:
        return ids.to_numpy(dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        numbers = pd.to_numeric(ids, errors="coerce")
        bad = ids[numbers.isna() | (numbers != numbers.round())]
        example = bad.iloc[0] if len(bad) else ids.iloc[0]
        msg = (
            f"Column {C.TRANSCRIPT_ID!r} of the points must contain integers, because segger numbers "
            f"new cells by it, but it contains {example!r}. Map the ids to integers, or drop the "
            "column to number the transcripts by row."
        )
        raise ValueError(msg) from None


def _graph_rows(column: Column, values: np.ndarray | None, in_graph: np.ndarray) -> np.ndarray:
    """Return the entries of ``values`` for the graph transcripts, written block by block to ``column``.

    ``None`` stands for the row numbers, the transcript ids of points without that column.
    """
    for block in row_blocks(len(in_graph)):
        part = np.arange(block.start, block.stop, dtype=np.int64) if values is None else values[block]
        column.append(part[in_graph[block]])
    return column.finish()


def _check_unique_ids(ids: np.ndarray, points_key: str) -> None:
    """Raise ValueError when ``ids`` repeat a value, reading them a block of rows at a time."""
    repeats = find_repeats(lambda: (ids[block] for block in row_blocks(len(ids))), len(ids))
    if repeats:
        raise ValueError(_duplicate_ids_message(repeats.n_rows, points_key))


def _duplicate_ids_message(n_duplicated: int, points_key: str) -> str:
    return (
        f"Column {C.TRANSCRIPT_ID!r} of points {points_key!r} must be a unique key, but "
        f"{n_duplicated} rows share a value with another row. segger numbers new cells by it. "
        f"Make it unique, for example `points[{C.TRANSCRIPT_ID!r}] = np.arange(len(points))`."
    )


def _read_shapes(sdata: SpatialData, shapes_key: str) -> gpd.GeoDataFrame:
    if shapes_key not in sdata.shapes:
        msg = (
            f"Prior shapes {shapes_key!r} not found; the SpatialData object has shapes "
            f"{list(sdata.shapes)}. Pass the nuclei (or vendor cells) as `shapes_key`."
        )
        if shapes_key == C.NUCLEUS_SHAPES_KEY and C.CELL_SHAPES_KEY in sdata.shapes:
            msg += f" Without nuclei, as in MERSCOPE data, pass shapes_key={C.CELL_SHAPES_KEY!r}."
        raise KeyError(msg)

    shapes = sdata.shapes[shapes_key]
    if len(shapes) == 0:
        msg = f"Prior shapes {shapes_key!r} are empty; segmentation needs at least one nucleus or cell."
        raise ValueError(msg)

    polygons = shapes.geometry.to_numpy()
    polygonal = np.isin(shapely.get_type_id(polygons), (3, 6))
    if not polygonal.all():
        msg = (
            f"Prior shapes {shapes_key!r} hold {int((~polygonal).sum())} non-polygon geometries "
            "(for example circles stored as points). Pass polygons, such as nucleus boundaries."
        )
        raise ValueError(msg)

    usable = shapely.is_valid(polygons) & (shapely.area(polygons) > 0)
    if not usable.all():
        logger.warning(
            "Ignoring %d invalid or zero-area prior shape(s) of %r, for example %r.",
            int((~usable).sum()),
            shapes_key,
            str(shapes.index[~usable][0]),
        )
    if not usable.any():
        msg = (
            f"All {len(shapes)} prior shapes of {shapes_key!r} are invalid or have zero area. Repair them, "
            "for example with `shapely.make_valid`, or pass other shapes as `shapes_key`."
        )
        raise ValueError(msg)
    shapes = shapes.loc[usable]
    shapes.index = shapes.index.astype(str)
    return shapes


def _check_overlap(xy: np.ndarray, shapes: gpd.GeoDataFrame, *, points_key: str, shapes_key: str) -> None:
    """Raise when the transcripts' bounding box and the prior shapes' bounding box do not meet."""
    x, y = xy[:, 0], xy[:, 1]
    point_box = shapely.box(x.min(), y.min(), x.max(), y.max())
    shape_box = shapely.box(*shapes.total_bounds)
    if not point_box.buffer(1.0).intersects(shape_box):
        msg = (
            f"Points {points_key!r} span x {x.min():.1f}..{x.max():.1f}, y {y.min():.1f}..{y.max():.1f}, "
            f"but shapes {shapes_key!r} span x {shapes.total_bounds[0]:.1f}..{shapes.total_bounds[2]:.1f}, "
            f"y {shapes.total_bounds[1]:.1f}..{shapes.total_bounds[3]:.1f}, so no transcript is near a shape. "
            "Check that both are in µm and in the same coordinate system."
        )
        raise ValueError(msg)


def _warn_if_pixels(shapes: gpd.GeoDataFrame, shapes_key: str) -> None:
    """Warn when the prior shapes are too large for µm, which suggests coordinates in pixels."""
    diameters = 2 * np.sqrt(shapely.area(shapes.geometry.to_numpy()) / np.pi)
    median = float(np.median(diameters))
    if median <= MAX_MEDIAN_DIAMETER_UM:
        return
    msg = (
        f"Prior shapes {shapes_key!r} have a median diameter of {median:.0f} coordinate units, but the "
        f"median nucleus or cell is rarely wider than {MAX_MEDIAN_DIAMETER_UM:.0f} µm, so the coordinates "
        f"look like pixels, of {NUCLEUS_DIAMETER_RANGE_UM[0] / median:.2g} to "
        f"{NUCLEUS_DIAMETER_RANGE_UM[1] / median:.2g} µm each if these are nuclei. segger expects µm: scale the points and shapes by the pixel size (for example with "
        "`spatialdata.transform` and a `Scale` transformation, or the reader's `pixel_size`)."
    )
    logger.warning(msg)
    # The levels are this function, prepare, segger_fit or segger_predict, and their decorator.
    warnings.warn(msg, UserWarning, stacklevel=5)


def _labels_near_shapes(partition: _Partition, shapes: gpd.GeoDataFrame) -> tuple[int, int]:
    """Return how many of a partition's transcripts inside a shape lie near it, and how many there are."""
    labelled = np.flatnonzero(partition.prior_index >= 0)
    if len(labelled) == 0:
        return 0, 0
    xy = partition.positions[labelled, :2].astype(np.float64)
    locations = shapely.points(xy[:, 0], xy[:, 1])
    distances = shapely.distance(locations, shapes.geometry.to_numpy()[partition.prior_index[labelled]])
    return int((distances <= MAX_LABEL_DISTANCE_UM).sum()), len(labelled)


def _check_labels_inside(n_near: int, n_labelled: int, *, shapes_key: str) -> None:
    """Raise when most transcripts flagged inside a shape lie away from it, so the labels are wrong."""
    if n_labelled == 0:
        return
    near = n_near / n_labelled
    if near < MIN_LABELS_NEAR_SHAPE:
        msg = (
            f"Only {100 * near:.1f} % of the {n_labelled} transcripts that {C.OVERLAPS_NUCLEUS!r} and "
            f"{C.CELL_ID!r} place inside a shape of {shapes_key!r} lie within {MAX_LABEL_DISTANCE_UM:g} µm "
            "of that shape, so points and shapes do not line up. Check that both are in µm and share a "
            "coordinate system, and that the shapes' index matches the points' cell ids."
        )
        raise ValueError(msg)


def _check_coordinate_systems(sdata: SpatialData, points_key: str, shapes_key: str) -> None:
    points_systems = get_transformation(sdata.points[points_key], get_all=True)
    shapes_systems = get_transformation(sdata.shapes[shapes_key], get_all=True)
    shared = [name for name in points_systems if name in shapes_systems]
    if not shared:
        msg = (
            f"Points {points_key!r} (coordinate systems {list(points_systems)}) and shapes {shapes_key!r} "
            f"(coordinate systems {list(shapes_systems)}) share no coordinate system. Transform them into "
            "a common one, for example with `spatialdata.transform`."
        )
        raise ValueError(msg)

    name = shared[0]
    points_matrix = points_systems[name].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    shapes_matrix = shapes_systems[name].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    if not np.allclose(points_matrix, shapes_matrix):
        msg = (
            f"Points {points_key!r} and shapes {shapes_key!r} have different transformations to "
            f"{name!r}, so their coordinates are not comparable. Bring both to the same intrinsic "
            "coordinates first, for example with `spatialdata.transform`."
        )
        raise ValueError(msg)


def _graph_mask(points: pd.DataFrame, feature_key: str, min_qv: float | None) -> np.ndarray:
    """Return a mask of the non-control transcripts with ``qv`` of at least ``min_qv``, when that column exists."""
    mask = np.ones(len(points), dtype=bool)
    if C.IS_CONTROL in points.columns:
        mask &= ~points[C.IS_CONTROL].fillna(False).to_numpy(dtype=bool)
    else:
        mask &= ~points[feature_key].astype(str).str.startswith(C.CONTROL_PREFIXES).to_numpy()

    if min_qv is not None and C.QV in points.columns:
        mask &= points[C.QV].to_numpy(dtype=np.float64, na_value=np.nan) >= min_qv
    return mask


def _prior_index(
    frame: pd.DataFrame, in_graph: np.ndarray, shapes: gpd.GeoDataFrame, shapes_frame: gpd.GeoDataFrame
) -> np.ndarray:
    """Return the position in ``shapes`` of the shape containing each graph transcript, -1 for none.

    Uses the vendor's ``overlaps_nucleus`` flag with ``cell_id`` where both exist; otherwise
    a point-in-polygon test through the spatial index of ``shapes_frame``, which has the same
    polygons as ``shapes``.
    """
    if C.OVERLAPS_NUCLEUS in frame.columns and C.CELL_ID in frame.columns:
        flagged = frame[C.OVERLAPS_NUCLEUS].fillna(False).to_numpy(dtype=bool)[in_graph]
        cell_ids = frame[C.CELL_ID].astype("string").fillna("").to_numpy(dtype=str)[in_graph]
        positions = shapes.index.get_indexer(cell_ids)
        return np.where(flagged & (positions >= 0), positions, -1).astype(np.int32)

    x = frame[C.X].to_numpy()[in_graph]
    y = frame[C.Y].to_numpy()[in_graph]
    point_rows, shape_rows = shapes_frame.sindex.query(shapely.points(x, y), predicate="within")
    prior = np.full(len(x), -1, dtype=np.int32)
    # A transcript inside overlapping shapes keeps the first shape in index order.
    order = np.lexsort((shape_rows, point_rows))[::-1]
    prior[point_rows[order]] = shape_rows[order]
    return prior
