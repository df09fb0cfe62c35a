"""Build and repair prior-shape polygons from vendor vertex tables."""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

logger = logging.getLogger(__name__)


def polygons_from_vertices(
    vertices: pd.DataFrame,
    *,
    id_column: str = "cell_id",
    x_column: str = "vertex_x",
    y_column: str = "vertex_y",
    source: str = "vertex table",
) -> gpd.GeoDataFrame:
    """Build one polygon per id from a table with one row per vertex.

    Rings may be open or closed, and the rows of different ids may be interleaved: the
    vertices of each id are taken in their order of appearance. Invalid polygons are
    repaired (see :func:`repair_polygons`). Shapes with a NaN or infinite vertex, or fewer than 3
    vertices, are dropped with a logged warning.

    Parameters
    ----------
    vertices
        One row per vertex.
    id_column, x_column, y_column
        Columns holding the shape id and the vertex coordinates (µm).
    source
        File name used in messages.

    Returns
    -------
    Polygons indexed by the shape id as a string (index name ``"cell_id"``).
    """
    missing = [column for column in (id_column, x_column, y_column) if column not in vertices.columns]
    if missing:
        msg = (
            f"{source} is missing the column(s) {missing}; it has {list(vertices.columns)}. "
            "A vertex table needs one row per vertex with the shape id and its x and y coordinates."
        )
        raise ValueError(msg)

    ids = _ids_as_strings(vertices[id_column])
    finite = np.isfinite(vertices[[x_column, y_column]].to_numpy(dtype=np.float64)).all(axis=1)
    if not finite.all():
        broken = pd.unique(ids[~finite])
        logger.warning(
            "Dropped %d shape(s) from %s with NaN or infinite vertex coordinates, for example %r.",
            len(broken),
            source,
            str(broken[0]),
        )
        keep = ~np.isin(ids, broken)
        vertices, ids = vertices.loc[keep], ids[keep]

    codes, unique_ids = pd.factorize(ids, sort=False)
    order = np.argsort(codes, kind="stable")
    coords = vertices[[x_column, y_column]].to_numpy(dtype=np.float64)[order]
    codes = codes[order]

    n_vertices = np.bincount(codes, minlength=len(unique_ids))
    too_few = n_vertices < 3
    if too_few.any():
        logger.warning(
            "Dropped %d shape(s) from %s with fewer than 3 vertices, for example %r.",
            int(too_few.sum()),
            source,
            str(unique_ids[np.flatnonzero(too_few)[0]]),
        )
    keep_rows = ~too_few[codes]
    kept_ids = np.asarray(unique_ids)[~too_few]
    remapped = np.cumsum(~too_few) - 1

    rings = shapely.linearrings(coords[keep_rows], indices=remapped[codes[keep_rows]])
    polygons = shapely.polygons(rings)
    polygons = repair_polygons(polygons, ids=kept_ids, source=source)

    index = pd.Index(kept_ids.astype(str), name="cell_id")
    frame = gpd.GeoDataFrame(geometry=polygons, index=index)
    return frame[~frame.geometry.is_empty]


def repair_polygons(polygons: np.ndarray, *, ids: np.ndarray, source: str) -> np.ndarray:
    """Return valid, single-part polygons, repairing the invalid ones.

    An invalid ring is first reordered by angle around its vertices' mean, which fixes
    vertex rows that were shuffled in a star-shaped outline. A ring that is still invalid is
    passed through :func:`shapely.make_valid`, keeping its largest polygon. Polygons with zero
    area become empty, so the caller can drop them. Every repair is counted in the log.
    """
    polygons = np.asarray(polygons, dtype=object).copy()
    invalid = ~shapely.is_valid(polygons)
    if not invalid.any():
        return polygons

    reordered = _reorder_by_angle(polygons[invalid])
    fixed = shapely.is_valid(reordered) & (shapely.area(reordered) > 0)
    invalid_positions = np.flatnonzero(invalid)
    polygons[invalid_positions[fixed]] = reordered[fixed]

    still_invalid = invalid_positions[~fixed]
    made_valid = [_largest_polygon(shapely.make_valid(polygon)) for polygon in polygons[still_invalid]]
    if made_valid:
        polygons[still_invalid] = np.asarray(made_valid, dtype=object)

    n_empty = int(shapely.is_empty(polygons[still_invalid]).sum()) if len(still_invalid) else 0
    logger.warning(
        "Repaired %d invalid polygon(s) in %s (%d by vertex reordering, %d by make_valid); "
        "%d had zero area and were dropped, for example %r.",
        int(invalid.sum()),
        source,
        int(fixed.sum()),
        len(still_invalid) - n_empty,
        n_empty,
        str(ids[invalid_positions[0]]),
    )
    return polygons


def _reorder_by_angle(polygons: np.ndarray) -> np.ndarray:
    reordered = []
    for polygon in polygons:
        coords = np.asarray(polygon.exterior.coords)[:-1]
        center = coords.mean(axis=0)
        angles = np.arctan2(coords[:, 1] - center[1], coords[:, 0] - center[0])
        coords = coords[np.argsort(angles, kind="stable")]
        reordered.append(shapely.Polygon(coords) if len(coords) >= 3 else shapely.Polygon())
    return np.asarray(reordered, dtype=object)


def _largest_polygon(geometry: shapely.Geometry) -> shapely.Polygon:
    parts = [part for part in shapely.get_parts(geometry) if isinstance(part, shapely.Polygon)]
    if not parts:
        return shapely.Polygon()
    return max(parts, key=lambda part: part.area)


def _ids_as_strings(ids: pd.Series) -> pd.Series:
    if ids.dtype == object and len(ids) and isinstance(ids.iloc[0], bytes):
        ids = ids.map(lambda value: value.decode("utf-8"))
    if pd.api.types.is_float_dtype(ids.dtype):
        ids = ids.astype("Int64")
    return ids.astype(str)


def merge_polygons_by_id(ids: np.ndarray, geometries: np.ndarray, *, source: str) -> gpd.GeoDataFrame:
    """Merge the polygons of each id into one valid polygon.

    Polygons sharing an id (one per z plane of a cell, or one per pixel run of a label) are
    combined by a union. Invalid inputs are first passed through :func:`shapely.make_valid`.
    Where a union has several separate parts, only the largest is kept, and the number of such
    ids is logged.

    Parameters
    ----------
    ids
        Shape id of each geometry; converted to strings.
    geometries
        Polygons or multipolygons, one per entry of ``ids``. Missing and empty ones are skipped.
    source
        File name used in messages.

    Returns
    -------
    Polygons indexed by the id as a string (index name ``"cell_id"``), in order of first appearance.
    """
    ids = np.asarray(ids).astype(str)
    geometries = np.asarray(geometries, dtype=object)
    present = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
    ids, geometries = ids[present], geometries[present]
    if len(ids) == 0:
        return gpd.GeoDataFrame(geometry=[], index=pd.Index([], dtype=str, name="cell_id"))

    invalid = ~shapely.is_valid(geometries)
    if invalid.any():
        geometries = geometries.copy()
        geometries[invalid] = shapely.make_valid(geometries[invalid])
        logger.warning("Repaired %d invalid polygon(s) in %s with make_valid.", int(invalid.sum()), source)

    # The planes of a cell often repeat one outline, so dropping exact repeats saves most unions.
    repeated = pd.DataFrame({"id": ids, "wkb": shapely.to_wkb(geometries)}).duplicated().to_numpy()
    ids, geometries = ids[~repeated], geometries[~repeated]

    codes, unique_ids = pd.factorize(ids, sort=False)
    order = np.argsort(codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    merged = np.empty(len(unique_ids), dtype=object)
    for position, group in enumerate(np.split(order, boundaries)):
        merged[position] = geometries[group[0]] if len(group) == 1 else shapely.union_all(geometries[group])

    not_polygon = shapely.get_type_id(merged) != shapely.GeometryType.POLYGON
    several_parts = not_polygon & (shapely.get_num_geometries(merged) > 1)
    if not_polygon.any():
        merged[not_polygon] = [_largest_part(geometry) for geometry in merged[not_polygon]]
    if several_parts.any():
        logger.info(
            "Kept the largest part of %d shape(s) in %s made of separate parts, for example %r.",
            int(several_parts.sum()),
            source,
            str(unique_ids[np.flatnonzero(several_parts)[0]]),
        )

    index = pd.Index(np.asarray(unique_ids).astype(str), name="cell_id")
    frame = gpd.GeoDataFrame(geometry=merged, index=index)
    return frame[~frame.geometry.is_empty]


def _largest_part(geometry: shapely.Geometry) -> shapely.Polygon:
    # Two levels of get_parts also open a multipolygon nested in a geometry collection.
    parts = shapely.get_parts(shapely.get_parts(geometry))
    polygons = parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON]
    if len(polygons) == 0:
        return shapely.Polygon()
    return polygons[np.argmax(shapely.area(polygons))]
