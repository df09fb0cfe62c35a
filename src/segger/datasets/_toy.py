"""Seeded synthetic tissue in the Xenium layout, with the true cell of every transcript."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree
from spatialdata import SpatialData

from .. import _constants as C
from ..io._spatialdata import build_spatialdata, flag_controls, to_cell_id_strings

logger = logging.getLogger(__name__)

TRUE_CELL_TYPE = "true_cell_type"

# Distance (µm) by which the vendor-like assignment expands nuclei, as Xenium's nuclear expansion does.
EXPANSION_DISTANCE = 5.0
SECTION_THICKNESS = 5.0  # µm, so z lies between 0 and this value
NUCLEUS_VERTICES = 16
NUCLEAR_SHARE = 0.375  # mean share of a nucleated cell's transcripts that lie in its nucleus
MISSING_NUCLEUS_SHARE = 0.1  # share of cells whose nucleus lies outside the section
CONTROL_NAMES = tuple(
    [f"NegControlProbe_{i:05d}" for i in range(1, 5)]
    + [f"NegControlCodeword_{i:04d}" for i in range(500, 504)]
    + [f"BLANK_{i:04d}" for i in range(1, 5)]
)

# Seeds are compared with this many nearest centres (Euclidean) when a point picks its cell.
_N_CANDIDATES = 8
_LLOYD_ITERATIONS = 3
_CHUNK = 250_000
# Nuclei measured per point before falling back to shapely, and point-polygon pairs per batch.
_N_NUCLEUS_CANDIDATES = 8
_PAIR_CHUNK = 50_000
# Smallest contact scale (a share of the cell's semi-axes) at which a cell still gets a nucleus.
_MIN_NUCLEUS_SCALE = 1e-3


@dataclass(frozen=True)
class _CellType:
    """Shape, size and expression of one synthetic cell type.

    A cell grows as an ellipse with ``elongation`` as the ratio of its major to its minor axis, and
    ``area`` (µm²) is the area of its unit ellipse. ``nucleus_axes`` (along and across the major
    axis) and ``nucleus_offset`` (along it) are fractions of the cell's semi-axes, taken at the size
    at which the cell first touches a neighbour. ``density`` scales the cytoplasmic transcript density.
    """

    name: str
    proportion: float
    area: float
    area_cv: float
    elongation: float
    nucleus_axes: tuple[float, float]
    nucleus_offset: float
    density: float


_TYPES = (
    _CellType("epithelial", 0.35, 130.0, 0.25, 1.3, (0.70, 0.75), 0.15, 1.0),
    _CellType("fibroblast", 0.25, 100.0, 0.30, 3.5, (0.50, 0.70), 0.20, 0.8),
    _CellType("immune", 0.25, 45.0, 0.20, 1.1, (0.80, 0.80), 0.05, 1.2),
    _CellType("endothelial", 0.15, 90.0, 0.30, 3.0, (0.50, 0.70), 0.20, 0.8),
)

_EASY_TYPES = (
    _CellType("epithelial", 0.35, 110.0, 0.10, 1.0, (0.60, 0.60), 0.0, 1.0),
    _CellType("fibroblast", 0.25, 90.0, 0.10, 1.0, (0.60, 0.60), 0.0, 1.0),
    _CellType("immune", 0.25, 60.0, 0.10, 1.0, (0.70, 0.70), 0.0, 1.0),
    _CellType("endothelial", 0.15, 90.0, 0.10, 1.0, (0.60, 0.60), 0.0, 1.0),
)


@dataclass
class _Cells:
    """Seeds of the tissue's cells, one row each, with their ellipses' semi-axes in µm."""

    centre: np.ndarray
    type_code: np.ndarray
    semi_major: np.ndarray
    semi_minor: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    side: float
    area: np.ndarray | None = None
    tree: cKDTree | None = None


@dataclass
class _Nuclei:
    """Nucleus polygons and the cell (row of ``_Cells``) each belongs to.

    ``vertices`` has shape (n, NUCLEUS_VERTICES, 2) without the closing vertex, and ``radius``
    the distance from each centre to its farthest vertex, so every nucleus lies in that disk.
    """

    cell: np.ndarray
    centre: np.ndarray
    vertices: np.ndarray
    polygons: np.ndarray
    radius: np.ndarray
    centre_tree: cKDTree | None


@dataclass
class _Transcripts:
    """Transcripts before genes are drawn, one row each.

    ``true_cell`` is a row of ``_Cells``, or -1 outside any cell. ``nucleus`` is the nearest row of
    ``_Nuclei`` within EXPANSION_DISTANCE, or -1, and ``distance`` its distance (0 inside, inf if none).
    """

    xy: np.ndarray
    true_cell: np.ndarray
    nucleus: np.ndarray
    distance: np.ndarray
    is_control: np.ndarray


def toy(
    *,
    n_cells: int = 150,
    easy: bool = False,
    n_genes_per_type: int = 10,
    n_shared_genes: int = 20,
    transcripts_per_cell: float = 100.0,
    marker_fraction: float = 0.6,
    background_fraction: float = 0.03,
    control_fraction: float = 0.02,
    random_state: int = 0,
) -> SpatialData:
    """Generate a synthetic tissue section in the layout of :func:`segger.io.xenium`.

    Cells of four types (epithelial, fibroblast, immune, endothelial) tile a square without gaps.
    Each type has its own marker genes and all types share the remaining genes. The points carry a
    Xenium-like ``cell_id``, computed by expanding the nuclei by 5 µm, and the ground truth in
    ``true_cell_id`` and ``true_cell_type``.

    Parameters
    ----------
    n_cells
        Number of cells. The section's side grows with the square root of this number.
    easy
        If True, cells are round and compact around centred nuclei and every cell has a nucleus.
        If False, cells differ in size and shape, fibroblasts and endothelial cells are elongated
        with off-centre nuclei, and 10 % of the cells have no nucleus in the section. With the other
        options at their defaults, the vendor-like ``cell_id`` puts 93-95 % (easy) or 77-81 %
        (default) of the transcripts of cells in their true cell, measured for random_state 0-19.
    n_genes_per_type
        Marker genes per cell type, named ``"<type>_<k>"``. Only cells of that type express them.
    n_shared_genes
        Genes expressed by every type, named ``"shared_<k>"``.
    transcripts_per_cell
        Mean number of transcripts of a cell with a nucleus.
    marker_fraction
        Share of a cell's transcripts that come from its type's marker genes.
    background_fraction
        Share of all transcripts that are free RNA outside any cell.
    control_fraction
        Share of all transcripts that are control probes (``NegControlProbe_*``,
        ``NegControlCodeword_*``, ``BLANK_*``), spread uniformly and outside any cell.
    random_state
        Seed of the random number generator; the same seed returns the same data.

    Returns
    -------
    A SpatialData object with

    - points ``"transcripts"``: ``x``, ``y``, ``z`` (float32, µm), ``feature_name``,
      ``transcript_id`` (unique int64), ``cell_id`` (vendor-like assignment to the nearest nucleus
      polygon within 5 µm, ``pd.NA`` otherwise), ``overlaps_nucleus`` (inside the polygon of that
      nucleus), ``qv`` (float32), ``is_control``, ``true_cell_id`` (``pd.NA`` for background and
      controls) and ``true_cell_type`` (categorical, missing where ``true_cell_id`` is);
    - shapes ``"nucleus_boundaries"``: one polygon per cell with a nucleus in the section, indexed
      by the cell id (index name ``cell_id``).

    Cell ids are ``"cell-00001"``, ``"cell-00002"``, and so on. With the defaults the section is
    about 115 µm wide and contains 15,000 to 16,300 transcripts.

    Notes
    -----
    Cells are the regions of an anisotropic, multiplicatively weighted Voronoi diagram: every cell
    grows as an ellipse of its own size and orientation, and each point belongs to the cell whose
    ellipse reaches it first. The seeds are spread by a few Lloyd iterations. Cytoplasmic
    transcripts are a Poisson process with a density per type. About 37.5 % of a nucleated cell's
    transcripts lie in its nucleus. Background and control transcripts are spread uniformly over
    the section, so some of them lie over cells and receive a vendor-like ``cell_id``. ``z`` is
    drawn independently of the position, and ``qv`` has about 61 % of values at 40 and 14 % below 20.

    Examples
    --------
    >>> import segger as sg
    >>> sdata = sg.datasets.toy(n_cells=50, random_state=1)
    >>> points = sdata["transcripts"].compute()
    >>> in_cell = points[points["true_cell_id"].notna()]
    >>> accuracy = (in_cell["cell_id"] == in_cell["true_cell_id"]).fillna(False).mean()
    """
    _check_options(
        n_cells=n_cells,
        n_genes_per_type=n_genes_per_type,
        n_shared_genes=n_shared_genes,
        transcripts_per_cell=transcripts_per_cell,
        marker_fraction=marker_fraction,
        background_fraction=background_fraction,
        control_fraction=control_fraction,
    )
    start = time.perf_counter()
    rng = np.random.default_rng(random_state)
    types = _EASY_TYPES if easy else _TYPES
    logger.info(
        "Generating a toy tissue with %d cells (easy=%s, random_state=%d).", n_cells, easy, random_state
    )

    cells = _place_cells(n_cells, types, rng)
    missing = 0.0 if easy else MISSING_NUCLEUS_SHARE
    nuclei = _draw_nuclei(cells, types, missing_share=missing, rng=rng)
    gene_names, profiles = _gene_panel(types, n_genes_per_type, n_shared_genes, marker_fraction, rng)

    transcripts = _sample_transcripts(
        cells,
        nuclei,
        types,
        transcripts_per_cell=transcripts_per_cell,
        background_fraction=background_fraction,
        control_fraction=control_fraction,
        rng=rng,
    )

    features = _draw_features(transcripts, cells.type_code, profiles, gene_names, rng)
    points = _points_frame(transcripts, features, cells, nuclei, types, rng)
    shapes = {C.NUCLEUS_SHAPES_KEY: _nucleus_frame(nuclei, n_cells)}
    sdata = build_spatialdata(points, shapes)

    logger.info(
        "Generated %d transcripts in %d cells (%d with a nucleus) in %.2f s.",
        len(points),
        n_cells,
        len(nuclei.cell),
        time.perf_counter() - start,
    )
    return sdata


def _check_options(
    *,
    n_cells: int,
    n_genes_per_type: int,
    n_shared_genes: int,
    transcripts_per_cell: float,
    marker_fraction: float,
    background_fraction: float,
    control_fraction: float,
) -> None:
    """Raise ValueError naming the first option that is out of range."""
    if n_cells < 1:
        msg = f"n_cells must be at least 1, got {n_cells}. Pass a positive number of cells."
        raise ValueError(msg)
    if n_genes_per_type < 1:
        msg = f"n_genes_per_type must be at least 1, got {n_genes_per_type}; every type needs a marker gene."
        raise ValueError(msg)
    if n_shared_genes < 0:
        msg = f"n_shared_genes must be 0 or more, got {n_shared_genes}."
        raise ValueError(msg)
    if not transcripts_per_cell > 0:
        msg = f"transcripts_per_cell must be positive, got {transcripts_per_cell}."
        raise ValueError(msg)
    if not 0.0 < marker_fraction <= 1.0:
        msg = f"marker_fraction must lie in (0, 1], got {marker_fraction}."
        raise ValueError(msg)
    if n_shared_genes == 0 and marker_fraction < 1.0:
        msg = (
            f"marker_fraction={marker_fraction} leaves room for shared genes, but n_shared_genes=0. "
            "Set marker_fraction=1.0 or add shared genes."
        )
        raise ValueError(msg)
    for name, value in (("background_fraction", background_fraction), ("control_fraction", control_fraction)):
        if not 0.0 <= value < 0.5:
            msg = f"{name} must lie in [0, 0.5), got {value}."
            raise ValueError(msg)


def _place_cells(n_cells: int, types: tuple[_CellType, ...], rng: np.random.Generator) -> _Cells:
    """Draw cell types, sizes and orientations, then spread the seeds by Lloyd iterations."""
    proportions = np.array([cell_type.proportion for cell_type in types])
    type_code = rng.choice(len(types), size=n_cells, p=proportions / proportions.sum())

    mean_area = np.array([cell_type.area for cell_type in types])[type_code]
    area_cv = np.array([cell_type.area_cv for cell_type in types])[type_code]
    area = mean_area * rng.lognormal(-0.5 * area_cv**2, area_cv)
    elongation = np.array([cell_type.elongation for cell_type in types])[type_code]
    angle = rng.uniform(0.0, np.pi, n_cells)
    radius = np.sqrt(area / np.pi)

    side = float(np.sqrt(area.sum()))
    cells = _Cells(
        centre=rng.uniform(0.0, side, size=(n_cells, 2)),
        type_code=type_code,
        semi_major=radius * np.sqrt(elongation),
        semi_minor=radius / np.sqrt(elongation),
        cos=np.cos(angle),
        sin=np.sin(angle),
        side=side,
    )
    _relax(cells, mean_area=float(area.mean()))
    return cells


def _relax(cells: _Cells, *, mean_area: float) -> None:
    """Move every seed to the centroid of its region a few times and store the regions' areas.

    Regions are measured on a grid of about 16 points per cell, so the areas are estimates, taken
    before the last move.
    """
    spacing = np.sqrt(mean_area) / 4.0
    steps = np.arange(spacing / 2.0, cells.side, spacing)
    grid_x, grid_y = np.meshgrid(steps, steps)
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()])
    n_cells = len(cells.centre)

    for _ in range(_LLOYD_ITERATIONS):
        cells.tree = cKDTree(cells.centre)
        label = _assign_to_cells(grid, cells)
        counts = np.bincount(label, minlength=n_cells)
        occupied = counts > 0
        for axis in (0, 1):
            sums = np.bincount(label, weights=grid[:, axis], minlength=n_cells)
            cells.centre[occupied, axis] = sums[occupied] / counts[occupied]

    cells.area = counts * spacing**2
    cells.tree = cKDTree(cells.centre)


def _scaled_length(offset: np.ndarray, cell: np.ndarray, cells: _Cells) -> np.ndarray:
    """Return the length of ``offset`` vectors (..., 2) in units of the ellipses of ``cell`` (...).

    A vector that ends on the cell's unit ellipse has length 1.
    """
    along = offset[..., 0] * cells.cos[cell] + offset[..., 1] * cells.sin[cell]
    across = -offset[..., 0] * cells.sin[cell] + offset[..., 1] * cells.cos[cell]
    return np.hypot(along / cells.semi_major[cell], across / cells.semi_minor[cell])


def _assign_to_cells(xy: np.ndarray, cells: _Cells) -> np.ndarray:
    """Return, per point, the cell whose ellipse reaches it first among its nearest seeds.

    Only the ``_N_CANDIDATES`` seeds nearest in Euclidean distance compete, which keeps large
    cells from claiming points far beyond their neighbours.
    """
    k = min(_N_CANDIDATES, len(cells.centre))
    label = np.empty(len(xy), dtype=np.int64)
    for begin in range(0, len(xy), _CHUNK):
        chunk = xy[begin : begin + _CHUNK]
        _, candidates = cells.tree.query(chunk, k=k, workers=-1)
        candidates = candidates.reshape(len(chunk), k)
        offset = chunk[:, None, :] - cells.centre[candidates]
        length = _scaled_length(offset, candidates, cells)
        label[begin : begin + _CHUNK] = candidates[np.arange(len(chunk)), length.argmin(axis=1)]
    return label


def _contact_scale(cells: _Cells) -> np.ndarray:
    """Estimate, per cell, the ellipse scale at which the cell first touches a neighbour.

    On the segment between seeds i and j the boundary lies where both scaled distances are equal,
    at scale ``n_i * n_j / (n_i + n_j)`` for the scaled lengths ``n_i``, ``n_j`` of the segment.
    Off the segment the cells can touch earlier, so this is an upper bound.
    """
    n_cells = len(cells.centre)
    if n_cells == 1:
        return np.ones(1)

    k = min(_N_CANDIDATES, n_cells)
    _, neighbour = cells.tree.query(cells.centre, k=k)
    neighbour = neighbour[:, 1:]
    own = np.broadcast_to(np.arange(n_cells)[:, None], neighbour.shape)
    offset = cells.centre[neighbour] - cells.centre[:, None, :]
    length_own = _scaled_length(offset, own, cells)
    length_other = _scaled_length(-offset, neighbour, cells)
    contact = length_own * length_other / (length_own + length_other)
    return contact.min(axis=1)


def _draw_nuclei(
    cells: _Cells, types: tuple[_CellType, ...], *, missing_share: float, rng: np.random.Generator
) -> _Nuclei:
    """Draw one star-shaped nucleus polygon per cell, except for a share of cells left without."""
    n_cells = len(cells.centre)
    has_nucleus = np.ones(n_cells, dtype=bool)
    has_nucleus[rng.choice(n_cells, size=round(missing_share * n_cells), replace=False)] = False
    cell = np.flatnonzero(has_nucleus)

    # 0.9 leaves a margin because the contact scale is an upper bound.
    scale = 0.9 * _contact_scale(cells)[cell]
    # Lloyd relaxation can move two seeds onto one point, which leaves no room for a nucleus.
    has_room = scale > _MIN_NUCLEUS_SCALE
    if not has_room.all():
        logger.info("%d cells share their seed with another cell and get no nucleus.", int((~has_room).sum()))
        cell, scale = cell[has_room], scale[has_room]
    code = cells.type_code[cell]
    axes = np.array([cell_type.nucleus_axes for cell_type in types])[code]
    sign = rng.choice([-1.0, 1.0], size=len(cell))
    shift = (
        np.array([cell_type.nucleus_offset for cell_type in types])[code]
        * sign
        * scale
        * cells.semi_major[cell]
    )
    direction = np.column_stack([cells.cos[cell], cells.sin[cell]])
    centre = cells.centre[cell] + shift[:, None] * direction

    outline = _unit_outline(len(cell), rng)
    along = outline[..., 0] * (axes[:, 0] * scale * cells.semi_major[cell])[:, None]
    across = outline[..., 1] * (axes[:, 1] * scale * cells.semi_minor[cell])[:, None]
    cos = cells.cos[cell][:, None]
    sin = cells.sin[cell][:, None]
    spokes = np.stack([along * cos - across * sin, along * sin + across * cos], axis=-1)

    centre = _move_inside(centre, spokes, cells.side)
    vertices, polygons = _separate_nuclei(centre, spokes)
    spoke_length = np.hypot(vertices[..., 0] - centre[:, None, 0], vertices[..., 1] - centre[:, None, 1])
    return _Nuclei(
        cell=cell,
        centre=centre,
        vertices=vertices,
        polygons=polygons,
        radius=spoke_length.max(axis=1),
        centre_tree=cKDTree(centre) if len(cell) else None,
    )


def _unit_outline(n_nuclei: int, rng: np.random.Generator) -> np.ndarray:
    """Return (n_nuclei, NUCLEUS_VERTICES, 2) vertices of slightly irregular unit circles.

    The radius varies smoothly with the angle and stays positive, so every outline is star-shaped
    around the origin and its polygon is valid.
    """
    steps = 2.0 * np.pi * np.arange(NUCLEUS_VERTICES) / NUCLEUS_VERTICES
    angle = rng.uniform(0.0, 2.0 * np.pi, (n_nuclei, 1)) + steps
    radius = np.ones_like(angle)
    for harmonic in (2, 3):
        amplitude = rng.uniform(0.0, 0.06, (n_nuclei, 1))
        phase = rng.uniform(0.0, 2.0 * np.pi, (n_nuclei, 1))
        radius += amplitude * np.cos(harmonic * angle + phase)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


def _move_inside(centre: np.ndarray, spokes: np.ndarray, side: float) -> np.ndarray:
    """Shift nuclei that cross the edge of the section back inside the square [0, side]²."""
    low = centre + spokes.min(axis=1)
    high = centre + spokes.max(axis=1)
    return centre + np.clip(-low, 0.0, None) - np.clip(high - side, 0.0, None)


def _separate_nuclei(centre: np.ndarray, spokes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shrink nuclei that touch another nucleus until none do, and return vertices and polygons.

    Each nucleus shrinks towards its centre, so it stays inside the section.
    """
    scale = np.ones(len(centre))
    for _ in range(50):
        vertices = centre[:, None, :] + scale[:, None, None] * spokes
        polygons = _polygons(vertices)
        left, right = shapely.STRtree(polygons).query(polygons, predicate="intersects")
        touching = np.unique(left[left != right])
        if len(touching) == 0:
            return vertices, polygons
        scale[touching] *= 0.9
    msg = "Nuclei still overlap after 50 shrinking steps; this is a bug in segger.datasets.toy."
    raise RuntimeError(msg)


def _polygons(vertices: np.ndarray) -> np.ndarray:
    """Return shapely polygons from (n, V, 2) vertices, closing each ring."""
    rings = np.concatenate([vertices, vertices[:, :1, :]], axis=1)
    return shapely.polygons(rings)


def _gene_panel(
    types: tuple[_CellType, ...],
    n_genes_per_type: int,
    n_shared_genes: int,
    marker_fraction: float,
    rng: np.random.Generator,
) -> tuple[list[str], np.ndarray]:
    """Name the genes and draw one expression profile per type, plus one for free RNA.

    Returns the gene names and a (n_types + 1, n_genes) array whose rows sum to 1. Row ``t`` gives
    type ``t`` its own block of marker genes with total weight ``marker_fraction``. The last row is
    the proportion-weighted mean of the types.
    """
    n_types = len(types)
    width = max(2, len(str(max(n_genes_per_type, n_shared_genes))))
    names = [f"{cell_type.name}_{k:0{width}d}" for cell_type in types for k in range(1, n_genes_per_type + 1)]
    names += [f"shared_{k:0{width}d}" for k in range(1, n_shared_genes + 1)]

    profiles = np.zeros((n_types + 1, len(names)))
    shared_level = rng.lognormal(0.0, 1.0, n_shared_genes)
    for t in range(n_types):
        markers = rng.lognormal(0.0, 0.7, n_genes_per_type)
        profiles[t, t * n_genes_per_type : (t + 1) * n_genes_per_type] = (
            marker_fraction * markers / markers.sum()
        )
        if n_shared_genes:
            shared = shared_level * rng.lognormal(0.0, 0.5, n_shared_genes)
            profiles[t, n_types * n_genes_per_type :] = (1.0 - marker_fraction) * shared / shared.sum()

    proportions = np.array([cell_type.proportion for cell_type in types])
    profiles[n_types] = proportions @ profiles[:n_types] / proportions.sum()
    return names, profiles


def _sample_transcripts(
    cells: _Cells,
    nuclei: _Nuclei,
    types: tuple[_CellType, ...],
    *,
    transcripts_per_cell: float,
    background_fraction: float,
    control_fraction: float,
    rng: np.random.Generator,
) -> _Transcripts:
    """Draw cytoplasmic, nuclear, background and control transcripts and find their nearest nuclei."""
    cytoplasm_xy, cytoplasm_cell, cytoplasm_nucleus, cytoplasm_distance = _sample_cytoplasm(
        cells, nuclei, types, transcripts_per_cell, rng
    )
    cytoplasm_counts = np.bincount(cytoplasm_cell, minlength=len(cells.centre))
    nuclear_xy, nuclear_cell = _sample_nuclei(nuclei, cytoplasm_counts, rng)

    n_in_cells = len(cytoplasm_xy) + len(nuclear_xy)
    cell_share = 1.0 - background_fraction - control_fraction
    n_background = round(n_in_cells * background_fraction / cell_share)
    n_control = round(n_in_cells * control_fraction / cell_share)
    background_xy = _uniform_points(n_background, cells.side, rng)
    control_xy = _uniform_points(n_control, cells.side, rng)

    other_xy = np.concatenate([nuclear_xy, background_xy, control_xy])
    other_nucleus, other_distance = _nearest_nucleus(other_xy, nuclei)
    n_free = n_background + n_control
    n_points = n_in_cells + n_free
    is_control = np.zeros(n_points, dtype=bool)
    is_control[n_points - n_control :] = True
    return _Transcripts(
        xy=np.concatenate([cytoplasm_xy, other_xy]),
        true_cell=np.concatenate([cytoplasm_cell, nuclear_cell, np.full(n_free, -1, dtype=np.int64)]),
        nucleus=np.concatenate([cytoplasm_nucleus, other_nucleus]),
        distance=np.concatenate([cytoplasm_distance, other_distance]),
        is_control=is_control,
    )


def _uniform_points(n_points: int, side: float, rng: np.random.Generator) -> np.ndarray:
    """Return (n_points, 2) uniform positions in the square, rounded to float32."""
    return _as_float32(rng.uniform(0.0, side, size=(n_points, 2)))


def _as_float32(xy: np.ndarray) -> np.ndarray:
    """Round positions to float32, the precision the points are stored at, before any geometry test.

    Otherwise a transcript near a polygon edge could cross it when the frame is written.
    """
    return xy.astype(np.float32).astype(np.float64)


def _nearest_nucleus(xy: np.ndarray, nuclei: _Nuclei) -> tuple[np.ndarray, np.ndarray]:
    """Return, per point, the nearest nucleus within EXPANSION_DISTANCE (-1 if none) and the distance.

    The distance is 0 inside a nucleus and infinite where no nucleus is near enough. Candidates are
    the ``_N_NUCLEUS_CANDIDATES`` nuclei with the nearest centres. A candidate is measured only if
    its centre distance minus its radius, a lower bound of its distance, could beat the best so
    far. Points where an unlisted nucleus could still be nearer are measured again with shapely,
    so the result is exact.
    """
    n_nuclei = len(nuclei.cell)
    nucleus = np.full(len(xy), -1, dtype=np.int64)
    distance = np.full(len(xy), np.inf)
    if len(xy) == 0 or n_nuclei == 0:
        return nucleus, distance

    edges = _polygon_edges(nuclei.vertices)
    k = min(_N_NUCLEUS_CANDIDATES, n_nuclei)
    reach = EXPANSION_DISTANCE + float(nuclei.radius.max())
    crowded = []
    for begin in range(0, len(xy), _CHUNK):
        chunk = xy[begin : begin + _CHUNK]
        centre_distance, candidates = nuclei.centre_tree.query(
            chunk, k=k, distance_upper_bound=reach, workers=-1
        )
        centre_distance = centre_distance.reshape(len(chunk), k)
        candidates = candidates.reshape(len(chunk), k)
        best, best_distance = _nearest_candidate(chunk, centre_distance, candidates, nuclei.radius, edges)

        near = best_distance <= EXPANSION_DISTANCE
        rows = np.arange(begin, begin + len(chunk))
        nucleus[rows[near]] = best[near]
        distance[rows[near]] = best_distance[near]
        if k < n_nuclei:
            bound = np.minimum(best_distance, EXPANSION_DISTANCE)
            unlisted_may_win = centre_distance[:, -1] - nuclei.radius.max() <= bound
            crowded.append(rows[unlisted_may_win])

    crowded = np.concatenate(crowded) if crowded else np.empty(0, dtype=np.int64)
    if len(crowded):
        _nearest_nucleus_shapely(xy, crowded, nuclei, nucleus, distance)
    return nucleus, distance


def _nearest_candidate(
    xy: np.ndarray,
    centre_distance: np.ndarray,
    candidates: np.ndarray,
    radius: np.ndarray,
    edges: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Return the nearest of each point's candidate nuclei and its distance (-1 and inf if none).

    ``candidates`` is (m, k) sorted by centre distance, with ``len(radius)`` marking a missing one.
    """
    n_points, k = candidates.shape
    found = candidates < len(radius)
    best = np.where(found[:, 0], candidates[:, 0], -1)
    best_distance = np.full(n_points, np.inf)
    first = np.flatnonzero(found[:, 0])
    best_distance[first] = _point_polygon_distance(xy[first], best[first], edges)
    if k == 1:
        return best, best_distance

    others = np.where(found[:, 1:], candidates[:, 1:], 0)
    lower_bound = centre_distance[:, 1:] - radius[others]
    bound = np.minimum(best_distance, EXPANSION_DISTANCE)
    rows, columns = np.nonzero(found[:, 1:] & (lower_bound <= bound[:, None]))
    other_distance = np.full((n_points, k - 1), np.inf)
    other_distance[rows, columns] = _point_polygon_distance(xy[rows], others[rows, columns], edges)

    column = other_distance.argmin(axis=1)
    nearest_other = other_distance[np.arange(n_points), column]
    better = nearest_other < best_distance
    best[better] = others[better, column[better]]
    best_distance[better] = nearest_other[better]
    return best, best_distance


def _polygon_edges(vertices: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return edge starts, edge vectors and inverse squared edge lengths, each (n, V)."""
    start_x, start_y = vertices[..., 0], vertices[..., 1]
    edge_x = np.roll(start_x, -1, axis=1) - start_x
    edge_y = np.roll(start_y, -1, axis=1) - start_y
    return start_x, start_y, edge_x, edge_y, 1.0 / (edge_x**2 + edge_y**2)


def _point_polygon_distance(xy: np.ndarray, polygon: np.ndarray, edges: tuple[np.ndarray, ...]) -> np.ndarray:
    """Return the distance from point ``xy[i]`` to polygon ``polygon[i]``, 0 inside."""
    distance = np.empty(len(xy))
    for begin in range(0, len(xy), _PAIR_CHUNK):
        rows = slice(begin, begin + _PAIR_CHUNK)
        px = xy[rows, 0, None]
        py = xy[rows, 1, None]
        start_x, start_y, edge_x, edge_y, inverse_length2 = (array[polygon[rows]] for array in edges)
        dx = px - start_x
        dy = py - start_y

        t = np.clip((dx * edge_x + dy * edge_y) * inverse_length2, 0.0, 1.0)
        squared = np.min((dx - t * edge_x) ** 2 + (dy - t * edge_y) ** 2, axis=1)

        # Even-odd rule: count the edges that a ray from the point towards +x crosses.
        straddles = (start_y > py) != (start_y + edge_y > py)
        crossing_x = start_x + dy * edge_x / np.where(straddles, edge_y, 1.0)
        inside = np.count_nonzero(straddles & (px < crossing_x), axis=1) % 2 == 1
        distance[rows] = np.where(inside, 0.0, np.sqrt(squared))
    return distance


def _nearest_nucleus_shapely(
    xy: np.ndarray, rows: np.ndarray, nuclei: _Nuclei, nucleus: np.ndarray, distance: np.ndarray
) -> None:
    """Overwrite ``nucleus`` and ``distance`` at ``rows`` with shapely's nearest-polygon search."""
    (point, hit), hit_distance = shapely.STRtree(nuclei.polygons).query_nearest(
        shapely.points(xy[rows]), max_distance=EXPANSION_DISTANCE, return_distance=True, all_matches=False
    )
    nucleus[rows] = -1
    distance[rows] = np.inf
    nucleus[rows[point]] = hit
    distance[rows[point]] = hit_distance


def _sample_cytoplasm(
    cells: _Cells,
    nuclei: _Nuclei,
    types: tuple[_CellType, ...],
    transcripts_per_cell: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw cytoplasmic transcripts as a Poisson process thinned by each type's density.

    Transcripts that fall inside any nucleus are dropped, because nuclei get their own. Returns
    positions, true cells, and the nearest nucleus and its distance as from ``_nearest_nucleus``.
    """
    density = np.array([cell_type.density for cell_type in types])
    cell_density = density[cells.type_code]
    nucleus_area = np.zeros(len(cells.centre))
    nucleus_area[nuclei.cell] = shapely.area(nuclei.polygons)
    cytoplasm_area = np.clip(cells.area - nucleus_area, 0.0, None)
    nucleated = nuclei.cell if len(nuclei.cell) else np.arange(len(cells.centre))
    mean_weighted_area = max(float(np.mean(cell_density[nucleated] * cytoplasm_area[nucleated])), 1e-9)
    rate = transcripts_per_cell * (1.0 - NUCLEAR_SHARE) / mean_weighted_area

    n_candidates = rng.poisson(rate * density.max() * cells.side**2)
    xy = _uniform_points(n_candidates, cells.side, rng)
    cell = _assign_to_cells(xy, cells)
    keep = rng.random(len(xy)) * density.max() < cell_density[cell]
    xy, cell = xy[keep], cell[keep]

    nucleus, distance = _nearest_nucleus(xy, nuclei)
    outside = distance > 0
    return xy[outside], cell[outside], nucleus[outside], distance[outside]


def _sample_nuclei(
    nuclei: _Nuclei, cytoplasm_counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw nuclear transcripts uniformly inside each nucleus polygon.

    The count per nucleus makes its share of the cell's transcripts about ``NUCLEAR_SHARE``. A
    point is drawn in a triangle of the fan from the nucleus centre, picked by area.
    """
    n_nuclei = len(nuclei.cell)
    if n_nuclei == 0:
        return np.empty((0, 2)), np.empty(0, dtype=np.int64)

    concentration = 40.0
    share = rng.beta(NUCLEAR_SHARE * concentration, (1.0 - NUCLEAR_SHARE) * concentration, n_nuclei)
    count = rng.poisson(cytoplasm_counts[nuclei.cell] * share / (1.0 - share))
    owner = np.repeat(np.arange(n_nuclei), count)

    first = nuclei.vertices - nuclei.centre[:, None, :]
    second = np.roll(first, -1, axis=1)
    area = 0.5 * np.abs(first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0])
    cumulative = np.cumsum(area, axis=1) / area.sum(axis=1, keepdims=True)
    cumulative[:, -1] = 1.0
    # Each row rises to exactly 1, so adding the row number makes the flattened array increasing.
    offsets = (cumulative + np.arange(n_nuclei)[:, None]).ravel()
    flat = np.searchsorted(offsets, owner + rng.random(len(owner)))
    triangle = np.minimum(flat - owner * NUCLEUS_VERTICES, NUCLEUS_VERTICES - 1)

    u, v = rng.random(len(owner)), rng.random(len(owner))
    folded = u + v > 1.0
    u[folded], v[folded] = 1.0 - u[folded], 1.0 - v[folded]
    xy = nuclei.centre[owner] + u[:, None] * first[owner, triangle] + v[:, None] * second[owner, triangle]
    return _as_float32(xy), nuclei.cell[owner]


def _draw_features(
    transcripts: _Transcripts,
    type_code: np.ndarray,
    profiles: np.ndarray,
    gene_names: list[str],
    rng: np.random.Generator,
) -> pd.Categorical:
    """Draw a gene per transcript from its cell type's profile, or a control probe name."""
    n_types = len(profiles) - 1
    true_cell = transcripts.true_cell
    is_control = transcripts.is_control
    row = np.full(len(true_cell), n_types)
    in_cell = true_cell >= 0
    row[in_cell] = type_code[true_cell[in_cell]]

    codes = np.empty(len(true_cell), dtype=np.int64)
    for profile in range(n_types + 1):
        selected = (row == profile) & ~is_control
        codes[selected] = rng.choice(len(gene_names), size=int(selected.sum()), p=profiles[profile])
    codes[is_control] = len(gene_names) + rng.integers(len(CONTROL_NAMES), size=int(is_control.sum()))
    return pd.Categorical.from_codes(codes, categories=[*gene_names, *CONTROL_NAMES])


def _quality_values(n_points: int, rng: np.random.Generator) -> np.ndarray:
    """Draw Phred-like quality values: about 61 % at 40, the rest spread from 5 to 40.

    The tail puts about 14 % of all values below 20.
    """
    qv = np.full(n_points, 40.0, dtype=np.float32)
    tail = rng.random(n_points) < 0.39
    qv[tail] = 5.0 + 35.0 * rng.beta(1.2, 1.0, int(tail.sum()))
    return qv


def _cell_ids(n_cells: int) -> list[str]:
    """Return ids ``cell-00001``, ``cell-00002``, ... with at least five digits."""
    width = max(5, len(str(n_cells)))
    return [f"cell-{i:0{width}d}" for i in range(1, n_cells + 1)]


def _id_column(cell: np.ndarray, ids: list[str]) -> pd.Series:
    """Return cell ids as a nullable string column, with ``pd.NA`` where ``cell`` is -1."""
    return to_cell_id_strings(pd.Series(pd.Categorical.from_codes(cell, categories=ids)))


def _points_frame(
    transcripts: _Transcripts,
    features: pd.Categorical,
    cells: _Cells,
    nuclei: _Nuclei,
    types: tuple[_CellType, ...],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Assemble the transcripts in the points schema, in random row order."""
    n_points = len(transcripts.xy)
    order = rng.permutation(n_points)
    xy, features, nucleus = transcripts.xy[order], features[order], transcripts.nucleus[order]
    distance, true_cell = transcripts.distance[order], transcripts.true_cell[order]

    ids = _cell_ids(len(cells.centre))
    vendor_cell = np.full(n_points, -1, dtype=np.int64)
    assigned = nucleus >= 0
    vendor_cell[assigned] = nuclei.cell[nucleus[assigned]]
    true_type = np.full(n_points, -1, dtype=np.int64)
    in_cell = true_cell >= 0
    true_type[in_cell] = cells.type_code[true_cell[in_cell]]

    return pd.DataFrame(
        {
            C.X: xy[:, 0].astype(np.float32),
            C.Y: xy[:, 1].astype(np.float32),
            C.Z: (SECTION_THICKNESS * rng.beta(2.0, 2.0, n_points)).astype(np.float32),
            C.FEATURE_NAME: features,
            C.TRANSCRIPT_ID: np.arange(n_points, dtype=np.int64),
            C.CELL_ID: _id_column(vendor_cell, ids),
            C.OVERLAPS_NUCLEUS: distance == 0.0,
            C.QV: _quality_values(n_points, rng),
            C.IS_CONTROL: _flag_control_codes(features),
            C.TRUE_CELL_ID: _id_column(true_cell, ids),
            TRUE_CELL_TYPE: pd.Categorical.from_codes(true_type, categories=[t.name for t in types]),
        }
    )


def _flag_control_codes(features: pd.Categorical) -> np.ndarray:
    """Flag control probes by name, testing each category once rather than every transcript."""
    is_control_category = flag_controls(pd.Series(features.categories))
    return is_control_category[features.codes]


def _nucleus_frame(nuclei: _Nuclei, n_cells: int) -> gpd.GeoDataFrame:
    """Return the nucleus polygons indexed by their cell's id."""
    ids = np.array(_cell_ids(n_cells), dtype=object)
    index = pd.Index(ids[nuclei.cell], name=C.CELL_ID)
    return gpd.GeoDataFrame(geometry=nuclei.polygons, index=index)
