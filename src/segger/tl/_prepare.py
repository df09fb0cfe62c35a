"""Read and validate the points and prior shapes of a SpatialData object for segmentation."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

from .. import _constants as C
from ..graph import GraphInputs, shape_features
from ..io._spatialdata import check_coordinates
from ._writeback import get_points

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


@dataclass
class PreparedData:
    """Everything segmentation needs from a SpatialData object, as plain arrays and frames.

    Attributes
    ----------
    points
        All transcripts of the points element, in element order.
    shapes
        The prior shapes, valid polygons indexed by cell id.
    in_graph
        Mask over ``points``: non-control transcripts that pass the quality filter.
    genes
        Gene name of each graph transcript.
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

    points: pd.DataFrame
    shapes: gpd.GeoDataFrame
    in_graph: np.ndarray
    genes: np.ndarray
    positions: np.ndarray
    prior_index: np.ndarray
    shape_features: np.ndarray
    shape_centroids: np.ndarray
    feature_key: str

    def graph_inputs(self, tokens: np.ndarray, scaled_shape_features: np.ndarray) -> GraphInputs:
        """Return the arrays for graph building with the given gene tokens and scaled shape features."""
        return GraphInputs(
            positions=self.positions,
            tokens=tokens,
            prior_index=self.prior_index,
            shape_centroids=self.shape_centroids,
            shape_features=scaled_shape_features,
        )


def prepare(
    sdata: SpatialData,
    *,
    points_key: str,
    shapes_key: str,
    min_qv: float | None,
    require_labels: bool,
) -> PreparedData:
    """Validate the input and return the arrays that graph building needs.

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
    """
    points, feature_key = _read_points(sdata, points_key)
    shapes = _read_shapes(sdata, shapes_key)
    _check_coordinate_systems(sdata, points_key, shapes_key)
    _check_overlap(points, shapes, points_key=points_key, shapes_key=shapes_key)
    _warn_if_pixels(shapes, shapes_key)

    in_graph = _graph_mask(points, feature_key, min_qv)
    if not in_graph.any():
        msg = (
            f"No transcript of points {points_key!r} can enter the graph: all {len(points)} are control "
            f"probes or have qv < {min_qv}. Lower `min_qv` or check the `is_control` column."
        )
        raise ValueError(msg)

    graph_points = points.loc[in_graph]
    positions = np.zeros((len(graph_points), 3), dtype=np.float32)
    positions[:, 0] = graph_points[C.X].to_numpy(dtype=np.float32)
    positions[:, 1] = graph_points[C.Y].to_numpy(dtype=np.float32)
    if C.Z in graph_points.columns:
        positions[:, 2] = graph_points[C.Z].to_numpy(dtype=np.float32)

    prior_index = _prior_index(graph_points, shapes)
    _check_labels_inside(graph_points, shapes, prior_index, shapes_key=shapes_key)
    if require_labels and not (prior_index >= 0).any():
        msg = (
            f"No transcript of points {points_key!r} lies inside a shape of {shapes_key!r}, so there "
            f"are no training labels. Check that `shapes_key` names the nuclei, that the "
            f"{C.CELL_ID!r} column uses the shapes' index, and that both elements share coordinates."
        )
        raise ValueError(msg)

    polygons = shapes.geometry.to_numpy()
    centroids = shapely.get_coordinates(shapely.centroid(polygons))
    logger.info(
        "Prepared %d of %d transcripts for the graph (%d inside one of %d prior shapes).",
        len(graph_points),
        len(points),
        int((prior_index >= 0).sum()),
        len(shapes),
    )
    return PreparedData(
        points=points,
        shapes=shapes,
        in_graph=in_graph,
        genes=graph_points[feature_key].astype(str).to_numpy(),
        positions=positions,
        prior_index=prior_index,
        shape_features=shape_features(polygons),
        shape_centroids=centroids,
        feature_key=feature_key,
    )


def _read_points(sdata: SpatialData, points_key: str) -> tuple[pd.DataFrame, str]:
    element = get_points(sdata, points_key)
    feature_key = element.attrs.get("spatialdata_attrs", {}).get("feature_key") or C.FEATURE_NAME
    points = element.compute()
    if len(points) == 0:
        msg = f"Points element {points_key!r} is empty; segmentation needs transcripts."
        raise ValueError(msg)

    missing = [column for column in (C.X, C.Y, feature_key) if column not in points.columns]
    if missing:
        msg = (
            f"Points element {points_key!r} is missing the column(s) {missing}; it has "
            f"{list(points.columns)}. Read vendor data with `sg.io` or parse the points with "
            "`PointsModel.parse(..., feature_key=...)`."
        )
        raise ValueError(msg)

    check_coordinates(points, (C.X, C.Y, C.Z), source=f"points {points_key!r}")
    if C.TRANSCRIPT_ID in points.columns and points[C.TRANSCRIPT_ID].duplicated().any():
        n_duplicated = int(points[C.TRANSCRIPT_ID].duplicated(keep=False).sum())
        msg = (
            f"Column {C.TRANSCRIPT_ID!r} of points {points_key!r} must be a unique key, but "
            f"{n_duplicated} rows share a value with another row. segger numbers new cells by it. "
            f"Make it unique, for example `points[{C.TRANSCRIPT_ID!r}] = np.arange(len(points))`."
        )
        raise ValueError(msg)
    return points, feature_key


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


def _check_overlap(
    points: pd.DataFrame, shapes: gpd.GeoDataFrame, *, points_key: str, shapes_key: str
) -> None:
    """Raise when the transcripts' bounding box and the prior shapes' bounding box do not meet."""
    x, y = points[C.X].to_numpy(), points[C.Y].to_numpy()
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


def _check_labels_inside(
    graph_points: pd.DataFrame, shapes: gpd.GeoDataFrame, prior_index: np.ndarray, *, shapes_key: str
) -> None:
    """Raise when most transcripts flagged inside a shape lie away from it, so the labels are wrong."""
    labelled = np.flatnonzero(prior_index >= 0)
    if len(labelled) == 0:
        return
    locations = shapely.points(graph_points[C.X].to_numpy()[labelled], graph_points[C.Y].to_numpy()[labelled])
    distances = shapely.distance(locations, shapes.geometry.to_numpy()[prior_index[labelled]])
    near = float(np.mean(distances <= MAX_LABEL_DISTANCE_UM))
    if near < MIN_LABELS_NEAR_SHAPE:
        msg = (
            f"Only {100 * near:.1f} % of the {len(labelled)} transcripts that {C.OVERLAPS_NUCLEUS!r} and "
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
    mask = np.ones(len(points), dtype=bool)
    if C.IS_CONTROL in points.columns:
        mask &= ~points[C.IS_CONTROL].fillna(False).to_numpy(dtype=bool)
    else:
        mask &= ~points[feature_key].astype(str).str.startswith(C.CONTROL_PREFIXES).to_numpy()

    if min_qv is not None:
        if C.QV in points.columns:
            mask &= points[C.QV].to_numpy(dtype=np.float64, na_value=np.nan) >= min_qv
        else:
            logger.info("Points have no %r column; the quality filter is skipped.", C.QV)
    return mask


def _prior_index(graph_points: pd.DataFrame, shapes: gpd.GeoDataFrame) -> np.ndarray:
    """Return the position in ``shapes`` of the shape containing each transcript, -1 for none.

    Uses the vendor's ``overlaps_nucleus`` flag with ``cell_id`` where both exist; otherwise
    a point-in-polygon test through geopandas' spatial index.
    """
    if C.OVERLAPS_NUCLEUS in graph_points.columns and C.CELL_ID in graph_points.columns:
        flagged = graph_points[C.OVERLAPS_NUCLEUS].fillna(False).to_numpy(dtype=bool)
        cell_ids = graph_points[C.CELL_ID].astype("string").fillna("").to_numpy(dtype=str)
        positions = shapes.index.get_indexer(cell_ids)
        return np.where(flagged & (positions >= 0), positions, -1).astype(np.int64)

    logger.info(
        "Points lack %r or %r; finding transcripts inside prior shapes by point-in-polygon.",
        C.OVERLAPS_NUCLEUS,
        C.CELL_ID,
    )
    points = gpd.GeoDataFrame(
        geometry=gpd.points_from_xy(graph_points[C.X].to_numpy(), graph_points[C.Y].to_numpy())
    )
    shapes_frame = gpd.GeoDataFrame(geometry=shapes.geometry.to_numpy())
    point_rows, shape_rows = shapes_frame.sindex.query(points.geometry, predicate="within")
    prior = np.full(len(graph_points), -1, dtype=np.int64)
    # A transcript inside overlapping shapes keeps the first shape in index order.
    order = np.lexsort((shape_rows, point_rows))[::-1]
    prior[point_rows[order]] = shape_rows[order]
    return prior
