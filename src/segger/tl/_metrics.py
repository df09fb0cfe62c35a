"""Quality figures of stored segmentations, computed the same way for every method."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree
from sklearn.metrics import adjusted_rand_score

from .. import _constants as C
from ._counts import CellCounts, CountedPoints, cell_counts, counted_points, segmentation_keys
from ._markers import markers_from_points
from ._truth import assignment_accuracy

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

MICRONS2_PER_MM2 = 1e6


def segmentation_metrics(
    sdata: SpatialData,
    *,
    keys: Sequence[str] | None = None,
    points_key: str = C.POINTS_KEY,
    markers: Mapping[str, Sequence[str]] | None = None,
    reference_key: str | None = None,
    truth_column: str | None = C.TRUE_CELL_ID,
    min_qv: float | None = C.DEFAULT_MIN_QV,
    n_area_bins: int = 10,
    n_neighbors: int = 6,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    random_state: int = 0,
) -> pd.DataFrame:
    """Compute quality figures for segmentations stored in ``sdata``, one row per segmentation.

    Every figure is taken from the points column ``{key}_cell_id`` and the polygons
    ``{key}_boundaries``, over the non-control transcripts with ``qv >= min_qv``, so segger and the
    baselines are measured alike.

    Parameters
    ----------
    sdata
        SpatialData object holding the segmentations; it is not modified.
    keys
        Segmentations to measure, by ``key_added``. ``None`` measures every points column that ends
        in ``_cell_id``.
    points_key
        Name of the transcripts element.
    markers
        Marker genes per cell type, such as ``{"epithelial": ["EPCAM", ...], "immune": [...]}``.
        ``None`` finds them with :func:`segger.tl.find_markers` on ``reference_key``.
    reference_key
        Segmentation clustered to find markers when ``markers`` is None; defaults to the first key.
    truth_column
        Points column with the true cell id of each transcript (``true_cell_id`` in
        :func:`segger.datasets.toy`). The ground-truth figures are computed when the column exists;
        a column other than the default must exist.
    min_qv
        Transcripts with a lower quality value are not counted; ``None`` counts all.
    n_area_bins
        Number of cell-area quantile bins for ``mecr_area_matched``.
    n_neighbors
        Number of nearest cells, by centroid, that count as a cell's neighbours for
        ``contamination``.
    n_bootstrap
        Number of bootstrap samples for the MECR interval; 0 skips it.
    confidence
        Coverage of the bootstrap interval.
    random_state
        Seed of the bootstrap and of the marker search.

    Returns
    -------
    A DataFrame indexed by segmentation key, with the columns

    ``n_cells``
        Cells holding at least one counted transcript.
    ``pct_assigned``
        Percentage of counted transcripts assigned to a cell.
    ``median_transcripts``, ``median_genes``
        Median counted transcripts and distinct genes per cell.
    ``median_area``
        Median area of the cells' polygons in µm², NaN when ``{key}_boundaries`` is missing.
    ``cells_per_mm2``
        Cells per mm² of the convex hull of all counted transcripts.
    ``pct_nuclear``
        Percentage of assigned transcripts flagged ``overlaps_nucleus``, NaN without that column.
    ``mecr``, ``mecr_low``, ``mecr_high``
        Mutually exclusive co-expression rate (lower is better) and its bootstrap interval.
    ``mecr_area_matched``
        MECR averaged over cell-area bins shared by all keys.
    ``contamination``
        Mean share of a cell's transcripts that are markers of another type found among its
        neighbours.
    ``ari``, ``pct_correct``, ``pct_wrong``, ``pct_unassigned``
        Only with ground truth: adjusted Rand index over in-cell transcripts, and the percentages of
        them in their true cell, in a wrong cell, or in none.

    ``attrs["markers"]`` stores the markers used, ``attrs["area_bins"]`` the bin edges in µm².

    Notes
    -----
    A cell expresses a gene when it contains at least one of its transcripts. For a pair of markers
    of different types, the rate is the number of cells expressing both over the number expressing
    either. ``mecr`` is the mean over all such pairs. MECR grows with cell size, because a larger
    cell collects more transcripts from its neighbours, so ``mecr_area_matched`` computes it within
    quantile bins of cell area and averages over the bins. The bins come from the areas of all
    measured keys together, so that every key is compared at the same sizes, and its value
    therefore depends on which keys are measured together. The bootstrap resamples cells and marker
    pairs. For ``contamination``, each cell gets the type with the most marker transcripts in it (cells with
    no marker are skipped), and a cell's neighbours are its ``n_neighbors`` nearest cells by
    transcript centroid. In the ground-truth figures an unassigned transcript is its own cluster
    for the ARI, and each predicted cell is matched one to one to the true cell holding most of its
    transcripts.
    """
    start = time.perf_counter()
    keys = _resolve_keys(sdata, keys, points_key)
    truth_column = _resolve_truth_column(sdata, truth_column, points_key)
    _check_options(
        n_area_bins=n_area_bins, n_neighbors=n_neighbors, n_bootstrap=n_bootstrap, confidence=confidence
    )
    logger.info("Measuring segmentations %s of points %r", keys, points_key)

    extra = [C.OVERLAPS_NUCLEUS] + ([truth_column] if truth_column else [])
    reference_key = reference_key or keys[0]
    loaded = keys if markers is not None or reference_key in keys else [*keys, reference_key]
    points = counted_points(sdata, points_key=points_key, keys=loaded, min_qv=min_qv, extra_columns=extra)
    if markers is None:
        markers = markers_from_points(points, key=reference_key, random_state=random_state)
    marker_codes = _marker_codes(markers, points.genes)

    counts = {key: cell_counts(points, key) for key in keys}
    areas = {key: _cell_areas(sdata, key, counts[key].cell_ids) for key in keys}
    area_bins = _area_bins(areas, n_area_bins)
    tissue_mm2 = _tissue_area(points) / MICRONS2_PER_MM2

    rng = np.random.default_rng(random_state)
    rows = {}
    for key in keys:
        row = _summary(points, counts[key], areas[key], key=key, tissue_mm2=tissue_mm2)
        row |= _specificity(
            counts[key],
            areas[key],
            marker_codes,
            area_bins=area_bins,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            rng=rng,
        )
        row["contamination"] = _contamination(points, counts[key], marker_codes, n_neighbors=n_neighbors)
        if truth_column:
            row |= _truth_figures(points, key, truth_column)
        rows[key] = row

    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "key"
    table.attrs["markers"] = {name: list(genes) for name, genes in markers.items()}
    table.attrs["area_bins"] = area_bins.tolist()
    logger.info("Measured %d segmentations in %.1f s", len(keys), time.perf_counter() - start)
    return table


def _resolve_keys(sdata: SpatialData, keys: Sequence[str] | None, points_key: str) -> list[str]:
    stored = segmentation_keys(sdata, points_key)
    if keys is None:
        if not stored:
            msg = (
                f"Points {points_key!r} hold no segmentation (no column ending in '_cell_id'). Run "
                "`sg.tl.segger_fit`, `sg.tl.nucleus_expansion` or `sg.tl.from_transcript_column` first."
            )
            raise ValueError(msg)
        return stored
    if isinstance(keys, str):
        return [keys]
    if len(keys) == 0:
        msg = f"`keys` is empty; pass segmentation keys such as {stored}."
        raise ValueError(msg)
    return list(dict.fromkeys(keys))


def _resolve_truth_column(sdata: SpatialData, truth_column: str | None, points_key: str) -> str | None:
    if truth_column is None:
        return None
    if truth_column in sdata.points[points_key].columns:
        return truth_column
    if truth_column == C.TRUE_CELL_ID:
        return None
    msg = (
        f"Ground-truth column {truth_column!r} not found in points {points_key!r}. Pass an existing "
        "column as `truth_column`, or None to skip the ground-truth figures."
    )
    raise KeyError(msg)


def _check_options(*, n_area_bins: int, n_neighbors: int, n_bootstrap: int, confidence: float) -> None:
    for name, value, minimum in (
        ("n_area_bins", n_area_bins, 1),
        ("n_neighbors", n_neighbors, 1),
        ("n_bootstrap", n_bootstrap, 0),
    ):
        if not isinstance(value, int | np.integer) or value < minimum:
            msg = f"`{name}` must be an integer >= {minimum}, got {value!r}."
            raise ValueError(msg)
    if not 0 < confidence < 1:
        msg = f"`confidence` must lie strictly between 0 and 1, got {confidence!r}."
        raise ValueError(msg)


def _marker_codes(markers: Mapping[str, Sequence[str]], genes: pd.Index) -> dict[str, np.ndarray]:
    """Return the gene positions of each type's markers, raising for genes absent from the panel."""
    codes = {}
    for name, type_genes in markers.items():
        if isinstance(type_genes, str):
            msg = f"Markers of {name!r} must be a list of genes, got the string {type_genes!r}."
            raise TypeError(msg)
        positions = genes.get_indexer(list(type_genes))
        if (positions < 0).any():
            absent = [gene for gene, position in zip(type_genes, positions, strict=True) if position < 0]
            msg = (
                f"Marker gene(s) {absent} of {name!r} are not among the {len(genes)} counted genes of the "
                f"panel, which are {_preview(genes)}. Pass genes of the panel."
            )
            raise ValueError(msg)
        if len(positions):
            codes[str(name)] = np.unique(positions)

    shared = pd.Series(np.concatenate(list(codes.values()) or [np.array([], int)])).duplicated()
    if shared.any():
        msg = "A gene is listed as a marker of more than one type; give each marker to one type only."
        raise ValueError(msg)
    return codes


def _preview(genes: pd.Index, n: int = 10) -> str:
    listed = ", ".join(map(str, genes[:n]))
    return f"{listed}, ..." if len(genes) > n else listed


def _cell_areas(sdata: SpatialData, key: str, cell_ids: np.ndarray) -> np.ndarray:
    boundaries = C.boundaries_key(key)
    if boundaries not in sdata.shapes:
        logger.info("No shapes %r, so the cell areas of %r are unknown.", boundaries, key)
        return np.full(len(cell_ids), np.nan)
    shapes = sdata.shapes[boundaries]
    areas = pd.Series(shapely.area(shapes.geometry.to_numpy()), index=shapes.index.astype(str))
    return areas.reindex(cell_ids).to_numpy(dtype=np.float64)


def _area_bins(areas: Mapping[str, np.ndarray], n_bins: int) -> np.ndarray:
    pooled = np.concatenate(list(areas.values()))
    pooled = pooled[np.isfinite(pooled)]
    if len(pooled) == 0:
        return np.array([])
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, n_bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def _tissue_area(points: CountedPoints) -> float:
    """Return the area in µm² of the convex hull of the counted transcripts."""
    coordinates = points.frame[[C.X, C.Y]].to_numpy(np.float64)
    return float(shapely.area(shapely.convex_hull(shapely.multipoints(coordinates))))


def _summary(
    points: CountedPoints, counts: CellCounts, areas: np.ndarray, *, key: str, tissue_mm2: float
) -> dict[str, float]:
    assigned = counts.cell_codes >= 0
    per_cell = np.asarray(counts.counts.sum(axis=1)).ravel()
    genes_per_cell = np.diff(counts.counts.indptr)
    nuclear = np.nan
    if C.OVERLAPS_NUCLEUS in points.frame.columns and assigned.any():
        flags = points.frame[C.OVERLAPS_NUCLEUS].fillna(False).to_numpy(dtype=bool)
        nuclear = 100 * flags[assigned].mean()

    n_cells = len(counts.cell_ids)
    return {
        "n_cells": n_cells,
        "pct_assigned": 100 * assigned.mean(),
        "median_transcripts": float(np.median(per_cell)) if n_cells else np.nan,
        "median_genes": float(np.median(genes_per_cell)) if n_cells else np.nan,
        "median_area": float(np.median(areas)) if n_cells and np.isfinite(areas).all() else np.nan,
        "cells_per_mm2": n_cells / tissue_mm2 if tissue_mm2 > 0 else np.nan,
        "pct_nuclear": nuclear,
    }


def _specificity(
    counts: CellCounts,
    areas: np.ndarray,
    marker_codes: Mapping[str, np.ndarray],
    *,
    area_bins: np.ndarray,
    n_bootstrap: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    result = {"mecr": np.nan, "mecr_low": np.nan, "mecr_high": np.nan, "mecr_area_matched": np.nan}
    pairs = _marker_pairs(marker_codes)
    if len(pairs) == 0 or len(counts.cell_ids) == 0:
        return result

    genes = np.unique(pairs)
    detected = (counts.counts[:, genes] > 0).astype(np.float64).toarray()
    local = np.searchsorted(genes, pairs)
    result["mecr"] = _mecr(detected, local, np.ones(len(detected)))

    if n_bootstrap:
        samples = [
            _mecr(
                detected,
                local[rng.integers(0, len(local), len(local))],
                rng.multinomial(len(detected), np.full(len(detected), 1 / len(detected))),
            )
            for _ in range(n_bootstrap)
        ]
        tail = 100 * (1 - confidence) / 2
        result["mecr_low"], result["mecr_high"] = np.nanpercentile(samples, [tail, 100 - tail])

    if len(area_bins) and np.isfinite(areas).all():
        bins = np.digitize(areas, area_bins[1:-1])
        per_bin = [_mecr(detected, local, (bins == b).astype(np.float64)) for b in np.unique(bins)]
        result["mecr_area_matched"] = float(np.nanmean(per_bin)) if np.isfinite(per_bin).any() else np.nan
    return result


def _marker_pairs(marker_codes: Mapping[str, np.ndarray]) -> np.ndarray:
    """Return every pair of markers of two different types as an array of shape ``(n_pairs, 2)``."""
    groups = list(marker_codes.values())
    pairs = [
        np.stack(np.meshgrid(first, second, indexing="ij"), axis=-1).reshape(-1, 2)
        for i, first in enumerate(groups)
        for second in groups[i + 1 :]
    ]
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def _mecr(detected: np.ndarray, pairs: np.ndarray, weights: np.ndarray) -> float:
    """Return the mean over ``pairs`` of weighted cells detecting both genes over those detecting either.

    ``weights`` counts each cell (bootstrap multiplicities, or a 0/1 mask); pairs that no weighted
    cell detects are left out of the mean.
    """
    both = detected.T @ (detected * weights[:, None])
    single = np.diag(both)
    together = both[pairs[:, 0], pairs[:, 1]]
    either = single[pairs[:, 0]] + single[pairs[:, 1]] - together
    defined = either > 0
    if not defined.any():
        return np.nan
    return float(np.mean(together[defined] / either[defined]))


def _contamination(
    points: CountedPoints, counts: CellCounts, marker_codes: Mapping[str, np.ndarray], *, n_neighbors: int
) -> float:
    n_cells = len(counts.cell_ids)
    if len(marker_codes) < 2 or n_cells < 2:
        return np.nan

    by_type = np.column_stack(
        [np.asarray(counts.counts[:, codes].sum(axis=1)).ravel() for codes in marker_codes.values()]
    )
    cell_type = np.where(by_type.max(axis=1) > 0, by_type.argmax(axis=1), -1)

    assigned = counts.cell_codes >= 0
    codes = counts.cell_codes[assigned]
    coordinates = points.frame[[C.X, C.Y]].to_numpy(np.float64)[assigned]
    sizes = np.bincount(codes, minlength=n_cells)
    centroids = np.column_stack(
        [np.bincount(codes, coordinates[:, axis], n_cells) / sizes for axis in (0, 1)]
    )
    k = min(n_neighbors, n_cells - 1)
    _, neighbours = cKDTree(centroids).query(centroids, k=k + 1)
    neighbours = neighbours[:, 1:]

    typed = cell_type >= 0
    present = np.zeros((n_cells, len(marker_codes)), dtype=bool)
    rows = np.repeat(np.arange(n_cells), k)
    neighbour_types = cell_type[neighbours.ravel()]
    known = neighbour_types >= 0
    present[rows[known], neighbour_types[known]] = True
    present[np.flatnonzero(typed), cell_type[typed]] = False

    totals = np.asarray(counts.counts.sum(axis=1)).ravel()
    foreign = (by_type * present).sum(axis=1)
    return float(np.mean(foreign[typed] / totals[typed])) if typed.any() else np.nan


def _truth_figures(points: CountedPoints, key: str, truth_column: str) -> dict[str, float]:
    truth = points.frame[truth_column].astype("string")
    predicted = points.frame[C.cell_id_column(key)].astype("string")
    in_cell = truth.notna().to_numpy()
    if not in_cell.any():
        return dict.fromkeys(("ari", "pct_correct", "pct_wrong", "pct_unassigned"), np.nan)

    shares = assignment_accuracy(truth[in_cell], predicted[in_cell])
    true_codes = pd.factorize(truth[in_cell])[0]
    predicted_codes = pd.factorize(predicted[in_cell])[0]
    unassigned = predicted_codes < 0
    predicted_codes[unassigned] = predicted_codes.max() + 1 + np.arange(int(unassigned.sum()))
    return {
        "ari": float(adjusted_rand_score(true_codes, predicted_codes)),
        "pct_correct": 100 * shares["correct"],
        "pct_wrong": 100 * shares["wrong"],
        "pct_unassigned": 100 * shares["unassigned"],
    }
