"""Scatter plot of transcripts coloured by their cell, with the cell outlines of one segmentation."""

from __future__ import annotations

import logging
import math
from numbers import Real
from typing import TYPE_CHECKING

import dask
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shapely
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba, to_rgba_array
from matplotlib.lines import Line2D
from spatialdata.transformations import get_transformation

from .. import _constants as C
from ._utils import save_figure

if TYPE_CHECKING:
    from pathlib import Path

    import dask.dataframe as dd
    import geopandas as gpd
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

UNASSIGNED_COLOR = "lightgrey"
PRIOR_COLOR = "0.25"
NEIGHBOUR_DISTANCE = 2.0
"""Distance in µm below which two cell outlines count as neighbours and get different colours."""

# tab20 without its two greys, which would look like unassigned transcripts.
_GREYS = {7, 15}
PALETTE = to_rgba_array([c for i, c in enumerate(colormaps["tab20"].colors) if i not in _GREYS])
"""Colours given to cells, 18 RGBA rows."""

Window = tuple[float, float, float, float]


def segmentation(
    sdata: SpatialData,
    *,
    key: str = C.KEY_ADDED,
    points_key: str = C.POINTS_KEY,
    window: Window | None = None,
    shapes_key: str | None = None,
    show_unassigned: bool = True,
    point_size: float = 2.0,
    max_points: int | None = None,
    random_state: int = 0,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Plot the transcripts coloured by their cell in segmentation ``key``, with the cell outlines.

    Parameters
    ----------
    sdata
        SpatialData object containing the transcripts and the outputs of segmentation ``key``.
    key
        Segmentation to plot: the ``key_added`` it was written with. Its points column
        ``f"{key}_cell_id"`` colours the transcripts and its shapes ``f"{key}_boundaries"`` give the
        outlines.
    points_key
        Name of the points element.
    window
        ``(xmin, ymin, xmax, ymax)`` in µm, in the coordinates of the points' ``x`` and ``y`` columns.
        Only transcripts inside it (bounds included) and outlines that intersect it are drawn, and the
        axes show exactly this area. None draws everything.
    shapes_key
        Shapes element with prior shapes, such as ``"nucleus_boundaries"``, drawn as dashed dark grey
        outlines. None draws none.
    show_unassigned
        Draw the transcripts without a cell in light grey. If False, they are hidden.
    point_size
        Marker area of every transcript in points², as ``s`` of :meth:`matplotlib.axes.Axes.scatter`.
    max_points
        Maximum number of transcripts drawn. When the window contains more, a random subset of this
        size is drawn and a log line reports it. None draws all.
    random_state
        Seed of the colour assignment and of the subset drawn under ``max_points``.
    ax
        Axes to draw into. None creates a new figure.
    save
        Path the figure is written to, in the format its suffix names. None writes nothing.

    Returns
    -------
    The axes drawn into. Their collections are labelled: ``"assigned transcripts"`` and
    ``"unassigned transcripts"`` (scatter), ``f"{key}_boundaries"`` and ``shapes_key`` (one path per
    polygon ring, in the colour of its cell and dashed respectively).

    Raises
    ------
    KeyError
        If ``points_key`` is not a points element.
    ValueError
        If the segmentation ``key`` or the shapes ``shapes_key`` are missing, if a shapes element
        shares no coordinate system and transformation with the points, if ``window`` or
        ``max_points`` are invalid, or if no transcript lies in ``window``.

    Notes
    -----
    Coordinates are drawn as stored, without applying the elements' transformations. The y axis points
    down, as in the images of the same section. Each cell gets a colour from an 18-colour palette
    chosen greedily so that cells whose outlines lie within 2 µm of each other differ, unless a cell
    has 18 or more such neighbours. Only the cells in the plot are coloured, so a cell may change colour
    from one window to another.
    """
    column = C.cell_id_column(key)
    points = _get_points(sdata, points_key)
    _check_segmentation(sdata, points, key=key, points_key=points_key)
    outlines = _get_shapes(sdata, points, C.boundaries_key(key))
    priors = None if shapes_key is None else _get_shapes(sdata, points, shapes_key)
    window = _check_window(window)
    _check_max_points(max_points)

    frame = _points_in_window(points, column, window, points_key=points_key)
    frame = _subsample(frame, max_points, random_state=random_state)
    outlines = _select_window(outlines, window)
    colors = _cell_colors(frame[column], outlines, random_state=random_state)

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    _draw_points(ax, frame[[C.X, C.Y]], frame[column], colors, show=show_unassigned, size=point_size)
    _draw_outlines(
        ax, outlines, colors=PALETTE[colors.reindex(outlines.index).to_numpy()], label=C.boundaries_key(key)
    )
    if priors is not None:
        _draw_outlines(ax, _select_window(priors, window), colors=PRIOR_COLOR, label=shapes_key, dashed=True)

    _decorate(ax, key=key, n_cells=len(colors), window=window, shapes_key=shapes_key)
    save_figure(ax, save)
    return ax


def _get_points(sdata: SpatialData, points_key: str) -> dd.DataFrame:
    if points_key not in sdata.points:
        msg = (
            f"Points element {points_key!r} not found. The SpatialData object has points "
            f"{list(sdata.points)}. Pass the name of the transcripts as `points_key`."
        )
        raise KeyError(msg)
    return sdata.points[points_key]


def _check_segmentation(sdata: SpatialData, points: dd.DataFrame, *, key: str, points_key: str) -> None:
    """Raise ValueError naming the segmentations present when ``key``'s column or outlines are missing."""
    column = C.cell_id_column(key)
    boundaries = C.boundaries_key(key)
    if column in points.columns and boundaries in sdata.shapes:
        return

    missing = f"points {points_key!r} have no column {column!r}"
    if column in points.columns:
        missing = f"there is no shapes element {boundaries!r}"
    msg = (
        f"Segmentation key={key!r} not found: {missing}. Segmentations with both: "
        f"{_segmentation_keys(sdata, points)}. Pass one of them as `key`, or segment first, for example "
        f"with `sg.tl.segger_fit(sdata, key_added={key!r})`."
    )
    raise ValueError(msg)


def _segmentation_keys(sdata: SpatialData, points: dd.DataFrame) -> list[str]:
    """Return the keys that have both a ``{key}_cell_id`` points column and ``{key}_boundaries`` shapes."""
    suffix = C.cell_id_column("")
    keys = [str(column)[: -len(suffix)] for column in points.columns if str(column).endswith(suffix)]
    return [key for key in keys if key and C.boundaries_key(key) in sdata.shapes]


def _get_shapes(sdata: SpatialData, points: dd.DataFrame, shapes_key: str) -> gpd.GeoDataFrame:
    """Return shapes element ``shapes_key`` after checking that it is drawn in the points' coordinates."""
    if shapes_key not in sdata.shapes:
        msg = (
            f"Shapes element {shapes_key!r} not found. The SpatialData object has shapes "
            f"{list(sdata.shapes)}. Pass one of them as `shapes_key`, or None to draw no prior shapes."
        )
        raise ValueError(msg)

    shapes = sdata.shapes[shapes_key]
    point_transformations = get_transformation(points, get_all=True)
    shape_transformations = get_transformation(shapes, get_all=True)
    if not any(point_transformations.get(name) == t for name, t in shape_transformations.items()):
        msg = (
            f"Shapes {shapes_key!r} share no coordinate system with an equal transformation with the "
            f"points (shapes: {sorted(shape_transformations)}, points: {sorted(point_transformations)}), so "
            "their stored coordinates cannot be drawn together. Transform them into the points' "
            "coordinates first, for example with `spatialdata.transform`."
        )
        raise ValueError(msg)
    return shapes


def _check_window(window: Window | None) -> Window | None:
    if window is None:
        return None
    values = list(window) if isinstance(window, list | tuple | np.ndarray) else []
    valid = len(values) == 4 and all(isinstance(v, Real) and math.isfinite(v) for v in values)
    if not valid or not (values[0] < values[2] and values[1] < values[3]):
        msg = (
            f"window={window!r} is invalid: expected four finite numbers (xmin, ymin, xmax, ymax) in µm "
            "with xmin < xmax and ymin < ymax, or None to draw everything."
        )
        raise ValueError(msg)
    return tuple(float(v) for v in values)


def _check_max_points(max_points: int | None) -> None:
    if max_points is None:
        return
    if isinstance(max_points, bool) or not isinstance(max_points, int | np.integer) or max_points < 1:
        msg = f"max_points={max_points!r} is invalid: pass a positive integer, or None to draw every transcript."
        raise ValueError(msg)


def _points_in_window(
    points: dd.DataFrame, column: str, window: Window | None, *, points_key: str
) -> pd.DataFrame:
    """Compute the ``x``, ``y`` and cell id columns of the transcripts inside ``window``."""
    selected = points[[C.X, C.Y, column]]
    if window is not None:
        xmin, ymin, xmax, ymax = window
        inside = (
            (selected[C.X] >= xmin)
            & (selected[C.X] <= xmax)
            & (selected[C.Y] >= ymin)
            & (selected[C.Y] <= ymax)
        )
        selected = selected[inside]
    frame = selected.compute()

    if frame.empty:
        msg = (
            f"No transcript of points {points_key!r} lies in window={window!r}. The points span "
            f"{_extent(points)}. Pass a window that overlaps them."
        )
        raise ValueError(msg)
    frame[column] = frame[column].astype("string")
    return frame


def _extent(points: dd.DataFrame) -> str:
    xmin, xmax, ymin, ymax = dask.compute(
        points[C.X].min(), points[C.X].max(), points[C.Y].min(), points[C.Y].max()
    )
    return f"x from {xmin:.1f} to {xmax:.1f} µm and y from {ymin:.1f} to {ymax:.1f} µm"


def _subsample(frame: pd.DataFrame, max_points: int | None, *, random_state: int) -> pd.DataFrame:
    if max_points is None or len(frame) <= max_points:
        return frame
    logger.info(
        "Drawing a random %d of the %d transcripts in the window (max_points).", max_points, len(frame)
    )
    return frame.sample(n=max_points, random_state=random_state)


def _select_window(shapes: gpd.GeoDataFrame, window: Window | None) -> gpd.GeoSeries:
    """Return the polygons of ``shapes`` that intersect ``window``, indexed by id as strings.

    Circles (points with a ``radius`` column, as :class:`spatialdata.models.ShapesModel` stores them)
    become polygons.
    """
    geometry = shapes.geometry
    if "radius" in shapes.columns:
        is_point = (shapes.geom_type == "Point").to_numpy()
        geometry = geometry.copy()
        geometry[is_point] = shapely.buffer(
            geometry[is_point].to_numpy(), shapes["radius"][is_point].to_numpy()
        )
    geometry.index = geometry.index.astype(str)

    if window is None:
        return geometry
    return geometry[shapely.intersects(geometry.to_numpy(), shapely.box(*window))]


def _cell_colors(cell_ids: pd.Series, outlines: gpd.GeoSeries, *, random_state: int) -> pd.Series:
    """Return a row of :data:`PALETTE` for every cell with transcripts or an outline in the plot.

    Cells are visited in a seeded random order, and each takes the least used colour that none of its
    neighbours (outlines within :data:`NEIGHBOUR_DISTANCE`) has taken, or the least used colour when all
    are taken. Ties go to the first colour in a seeded shuffle of the palette.
    """
    cells = sorted(set(cell_ids.dropna().astype(str)) | set(outlines.index))
    neighbours = _neighbours(outlines)
    rng = np.random.default_rng(random_state)
    palette_order = rng.permutation(len(PALETTE))
    usage = np.zeros(len(PALETTE), dtype=np.int64)

    chosen: dict[str, int] = {}
    for position in rng.permutation(len(cells)):
        cell = cells[position]
        neighbour_colors = {chosen[other] for other in neighbours.get(cell, ()) if other in chosen}
        free = [color for color in palette_order if color not in neighbour_colors] or list(palette_order)
        color = min(free, key=lambda candidate: usage[candidate])
        chosen[cell] = int(color)
        usage[color] += 1
    return pd.Series(chosen, dtype=np.int64).reindex(cells)


def _neighbours(outlines: gpd.GeoSeries) -> dict[str, list[str]]:
    geometries = outlines.to_numpy()
    pairs = shapely.STRtree(geometries).query(geometries, predicate="dwithin", distance=NEIGHBOUR_DISTANCE)
    ids = outlines.index.to_numpy()
    neighbours: dict[str, list[str]] = {}
    for first, second in pairs[:, pairs[0] != pairs[1]].T:
        neighbours.setdefault(ids[first], []).append(ids[second])
    return neighbours


def _draw_points(
    ax: Axes, xy: pd.DataFrame, cell_ids: pd.Series, colors: pd.Series, *, show: bool, size: float
) -> None:
    assigned = cell_ids.notna().to_numpy()
    if show and not assigned.all():
        unassigned = xy[~assigned]
        ax.scatter(
            unassigned[C.X],
            unassigned[C.Y],
            s=size,
            color=UNASSIGNED_COLOR,
            linewidths=0,
            rasterized=True,
            label="unassigned transcripts",
        )

    rows = colors.reindex(cell_ids[assigned].astype(str)).to_numpy()
    ax.scatter(
        xy[C.X][assigned],
        xy[C.Y][assigned],
        s=size,
        c=PALETTE[rows],
        linewidths=0,
        rasterized=True,
        label="assigned transcripts",
    )


def _draw_outlines(
    ax: Axes, outlines: gpd.GeoSeries, *, colors: np.ndarray | str, label: str, dashed: bool = False
) -> None:
    """Draw every ring of every polygon in ``outlines`` as one path, coloured by its polygon."""
    parts, part_owner = shapely.get_parts(outlines.to_numpy(), return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coordinates, coordinate_ring = shapely.get_coordinates(rings, return_index=True)
    starts = np.searchsorted(coordinate_ring, np.arange(1, len(rings)))
    segments = np.split(coordinates, starts) if len(rings) else []

    if not isinstance(colors, str):
        colors = colors[part_owner[ring_part]]
    ax.add_collection(
        LineCollection(
            segments,
            colors=colors,
            linewidths=0.8,
            linestyles="--" if dashed else "-",
            label=label,
        ),
        autolim=True,
    )


def _decorate(ax: Axes, *, key: str, n_cells: int, window: Window | None, shapes_key: str | None) -> None:
    ax.set_aspect("equal")
    if window is None:
        ax.autoscale_view()
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
    else:
        ax.set_xlim(window[0], window[2])
        ax.set_ylim(window[3], window[1])

    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(f"Segmentation {key!r}: {n_cells} cells")
    ax.legend(
        handles=_legend_handles(ax, key=key, shapes_key=shapes_key),
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
    )


def _legend_handles(ax: Axes, *, key: str, shapes_key: str | None) -> list[Line2D]:
    labels = {collection.get_label() for collection in ax.collections}
    handles = []
    if "unassigned transcripts" in labels:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="none",
                color=to_rgba(UNASSIGNED_COLOR),
                label="unassigned transcripts",
            )
        )
    handles.append(Line2D([], [], color="black", linewidth=0.8, label=f"cells ({C.boundaries_key(key)})"))
    if shapes_key is not None:
        handles.append(Line2D([], [], color=PRIOR_COLOR, linewidth=0.8, linestyle="--", label=shapes_key))
    return handles
