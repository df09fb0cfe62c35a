"""Baseline segmentations written in the same layout as segger's, so that every method is measured alike."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import shapely

from .. import _constants as C
from ._prepare import _check_coordinate_systems, _read_points, _read_shapes
from ._writeback import check_outputs_free, write_segmentation

if TYPE_CHECKING:
    import geopandas as gpd
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

# One cell holding more than this share of a column's assigned transcripts suggests a "no cell" code.
MAX_SINGLE_CELL_SHARE = 0.2


def nucleus_expansion(
    sdata: SpatialData,
    *,
    distance: float = 5.0,
    points_key: str = C.POINTS_KEY,
    shapes_key: str = C.NUCLEUS_SHAPES_KEY,
    key_added: str = "expansion",
    overwrite: bool = False,
) -> None:
    """Assign each transcript to the nearest nucleus within ``distance``, as vendors expand nuclei.

    Parameters
    ----------
    sdata
        SpatialData object with transcripts and nuclei; the result is added in place.
    distance
        Maximum distance in µm from a transcript to the boundary of its nucleus. ``0`` keeps only the
        transcripts inside a nucleus. Xenium's default expansion is 5 µm.
    points_key
        Name of the transcripts element.
    shapes_key
        Name of the prior shapes to expand, usually the nuclei.
    key_added
        Prefix of the columns and elements written.
    overwrite
        Replace the outputs of an earlier segmentation with the same ``key_added``.

    Returns
    -------
    None. Writes the same columns and elements as :func:`segger.tl.segger_fit`, for example for
    ``key_added="expansion"``: ``sdata.points[points_key]["expansion_cell_id"]`` (the nucleus id,
    ``pd.NA`` beyond ``distance``), ``["expansion_score"]`` (NaN, because the method gives no score),
    ``sdata.shapes["expansion_boundaries"]`` and ``sdata.tables["expansion_table"]``.

    Notes
    -----
    A transcript inside one or more nuclei joins the first of them in the shapes' order. Any other
    transcript joins the nucleus whose boundary is nearest, when that is at most ``distance`` away, so
    neighbouring cells split the space between them as the vendors' expansion does. Every transcript
    is assigned, controls and low-quality ones included, because the vendor's cell id covers them all
    too. The cell polygons are drawn as for segger, the concave hull of the cell's transcripts joined
    with its nucleus, so cell areas are measured the same way for every method.
    """
    start = time.perf_counter()
    if not (isinstance(distance, int | float) and math.isfinite(distance) and distance >= 0):
        msg = f"`distance` must be a finite number of µm >= 0, got {distance!r}."
        raise ValueError(msg)
    check_outputs_free(sdata, key_added=key_added, points_key=points_key, overwrite=overwrite)

    points, _ = _read_points(sdata, points_key)
    nuclei = _read_shapes(sdata, shapes_key)
    _check_coordinate_systems(sdata, points_key, shapes_key)

    nearest = _nearest_shape(points, nuclei, distance=distance)
    shape_ids = nuclei.index.to_numpy(dtype=object)
    cell_ids = pd.Series(pd.NA, index=points.index, dtype="string")
    assigned = nearest >= 0
    cell_ids[assigned] = shape_ids[nearest[assigned]]

    used = pd.unique(shape_ids[nearest[assigned]])
    params = {
        "method": "nucleus_expansion",
        "distance": float(distance),
        "points_key": points_key,
        "shapes_key": shapes_key,
        "key_added": key_added,
    }
    write_segmentation(
        sdata,
        cell_ids,
        key_added=key_added,
        points_key=points_key,
        prior_ids=pd.Series(used, index=used, dtype="string"),
        prior_shapes=nuclei,
        params=params,
        overwrite=overwrite,
        frame=points,
    )
    logger.info(
        "Expanded %d nuclei by %.1f µm: %d of %d transcripts assigned in %.1f s",
        len(used),
        distance,
        int(assigned.sum()),
        len(points),
        time.perf_counter() - start,
    )


def from_transcript_column(
    sdata: SpatialData,
    *,
    column: str = C.CELL_ID,
    points_key: str = C.POINTS_KEY,
    shapes_key: str | None = None,
    key_added: str = "vendor",
    overwrite: bool = False,
) -> None:
    """Turn a per-transcript cell id column, such as the vendor's ``cell_id``, into a segmentation.

    Parameters
    ----------
    sdata
        SpatialData object with transcripts; the result is added in place.
    column
        Points column holding a cell id per transcript, missing (``pd.NA`` or NaN) where unassigned.
        The readers in :mod:`segger.io` store the vendor's assignment as ``cell_id``.
    points_key
        Name of the transcripts element.
    shapes_key
        Optional shapes indexed by the same ids, for example the vendor's ``cell_boundaries``. Each
        cell's polygon is then joined with its shape.
    key_added
        Prefix of the columns and elements written.
    overwrite
        Replace the outputs of an earlier segmentation with the same ``key_added``.

    Returns
    -------
    None. Writes the same columns and elements as :func:`segger.tl.segger_fit`, for example for
    ``key_added="vendor"``: ``sdata.points[points_key]["vendor_cell_id"]`` (the column's values as
    strings), ``["vendor_score"]`` (NaN), ``sdata.shapes["vendor_boundaries"]`` and
    ``sdata.tables["vendor_table"]``.
    """
    check_outputs_free(sdata, key_added=key_added, points_key=points_key, overwrite=overwrite)
    points, _ = _read_points(sdata, points_key)
    if column not in points.columns:
        msg = (
            f"Column {column!r} not found in points {points_key!r}; it has {list(points.columns)}. "
            "Pass the column that holds the cell id of each transcript as `column`."
        )
        raise KeyError(msg)

    _check_id_column(points[column], column=column)
    cell_ids = points[column].astype("string")
    prior_ids = None
    shapes = None
    if shapes_key is not None:
        shapes = _read_shapes(sdata, shapes_key)
        _check_coordinate_systems(sdata, points_key, shapes_key)
        assigned = cell_ids.dropna()
        known = pd.unique(assigned[assigned.isin(shapes.index)])
        prior_ids = pd.Series(known, index=known, dtype="string")
        logger.info("%d of the cells have a polygon in %r.", len(known), shapes_key)

    params = {
        "method": "from_transcript_column",
        "column": column,
        "points_key": points_key,
        "shapes_key": shapes_key,
        "key_added": key_added,
    }
    write_segmentation(
        sdata,
        cell_ids,
        key_added=key_added,
        points_key=points_key,
        prior_ids=prior_ids,
        prior_shapes=shapes,
        params=params,
        overwrite=overwrite,
        frame=points,
    )


def _check_id_column(values: pd.Series, *, column: str) -> None:
    """Reject columns that hold measurements rather than ids, and warn about one id covering most rows."""
    if pd.api.types.is_bool_dtype(values.dtype):
        msg = f"Column {column!r} is boolean, not a cell id per transcript. Pass the column of cell ids."
        raise ValueError(msg)
    if pd.api.types.is_float_dtype(values.dtype):
        present = values.dropna()
        if (present % 1 != 0).any():
            msg = (
                f"Column {column!r} holds fractional numbers such as {present[present % 1 != 0].iloc[0]!r}, "
                "so it is a measurement, not a cell id. Pass the column of cell ids."
            )
            raise ValueError(msg)

    shares = values.dropna().astype(str).value_counts(normalize=True)
    if len(shares) > 1 and shares.iloc[0] > MAX_SINGLE_CELL_SHARE:
        logger.warning(
            "Cell id %r of column %r covers %.0f %% of the assigned transcripts. If it marks transcripts "
            "without a cell (as 0 does in CosMx's cell_ID), set it to missing first.",
            shares.index[0],
            column,
            100 * shares.iloc[0],
        )


def _nearest_shape(points: pd.DataFrame, shapes: gpd.GeoDataFrame, *, distance: float) -> np.ndarray:
    """Return the position in ``shapes`` of each point's containing or nearest shape, -1 for none."""
    locations = shapely.points(points[C.X].to_numpy(np.float64), points[C.Y].to_numpy(np.float64))
    tree = shapely.STRtree(shapes.geometry.to_numpy())
    nearest = np.full(len(points), -1, dtype=np.int64)

    point_rows, shape_rows = tree.query(locations, predicate="within")
    order = np.lexsort((shape_rows, point_rows))[::-1]
    nearest[point_rows[order]] = shape_rows[order]

    outside = np.flatnonzero(nearest < 0)
    if distance > 0 and len(outside):
        rows, found = tree.query_nearest(locations[outside], max_distance=distance, all_matches=False)
        nearest[outside[rows]] = found
    return nearest
