"""Marker genes per cell type, found by clustering a reference segmentation, for the specificity figures."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from .. import _constants as C
from ._counts import CountedPoints, cell_counts, counted_points

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)


def find_markers(
    sdata: SpatialData,
    *,
    key: str,
    points_key: str = C.POINTS_KEY,
    min_qv: float | None = C.DEFAULT_MIN_QV,
    min_transcripts: int = 20,
    resolution: float = 1.0,
    min_detection: float = 0.5,
    max_other_detection: float = 0.2,
    n_markers: int = 5,
    random_state: int = 0,
) -> dict[str, list[str]]:
    """Find marker genes of the cell types in a reference segmentation by clustering its cells.

    The markers feed :func:`segger.tl.segmentation_metrics`: genes that mark different types should
    rarely share a cell, so co-detection in one segmented cell points to transcripts from a
    neighbour.

    Parameters
    ----------
    sdata
        SpatialData object holding the segmentation ``key``; it is not modified.
    key
        Reference segmentation, stored as the points column ``{key}_cell_id`` (for example the
        vendor's, written by :func:`segger.tl.from_transcript_column`).
    points_key
        Name of the transcripts element.
    min_qv
        Transcripts with a lower quality value are not counted; ``None`` counts all.
    min_transcripts
        Cells with fewer counted transcripts are left out of the clustering.
    resolution
        Resolution of the Leiden clustering; higher values give more clusters.
    min_detection
        Minimum share of a cluster's cells that must detect a marker (at least one transcript).
    max_other_detection
        Maximum share of the cells outside the cluster that may detect a marker.
    n_markers
        Maximum number of markers kept per cluster, those with the largest detection difference.
    random_state
        Seed of the PCA, neighbour graph and Leiden clustering.

    Returns
    -------
    Marker genes per cluster, as ``{"cluster_0": [...], ...}``. Clusters without a marker are left
    out, so there may be fewer entries than clusters.

    Notes
    -----
    The cells are clustered with scanpy: ``normalize_total``, ``log1p``, ``pca``, ``neighbors`` and
    ``leiden`` (igraph flavour). A gene is a marker of a cluster when at least ``min_detection`` of
    the cluster's cells and at most ``max_other_detection`` of all other cells detect it. A gene
    that qualifies for several clusters goes to the one where the difference is largest. A marker
    detected in most cells of two large clusters fails ``max_other_detection``. Two clusters of
    one cell type can still each keep markers of their own, and their pairs then count as pairs
    of different types.
    """
    _check_shares(min_detection=min_detection, max_other_detection=max_other_detection)
    points = counted_points(sdata, points_key=points_key, keys=[key], min_qv=min_qv, extra_columns=[])
    return markers_from_points(
        points,
        key=key,
        min_transcripts=min_transcripts,
        resolution=resolution,
        min_detection=min_detection,
        max_other_detection=max_other_detection,
        n_markers=n_markers,
        random_state=random_state,
    )


def markers_from_points(
    points: CountedPoints,
    *,
    key: str,
    min_transcripts: int = 20,
    resolution: float = 1.0,
    min_detection: float = 0.5,
    max_other_detection: float = 0.2,
    n_markers: int = 5,
    random_state: int = 0,
) -> dict[str, list[str]]:
    """Run :func:`find_markers` on transcripts already loaded with :func:`counted_points`."""
    counts = cell_counts(points, key)
    clustered = np.asarray(counts.counts.sum(axis=1)).ravel() >= min_transcripts
    if clustered.sum() < 3:
        msg = (
            f"Segmentation {key!r} has {int(clustered.sum())} cells with at least {min_transcripts} "
            "transcripts; clustering needs at least 3. Lower `min_transcripts` or pick another `key`."
        )
        raise ValueError(msg)

    matrix = counts.counts[clustered]
    clusters = _leiden_clusters(matrix, resolution=resolution, random_state=random_state)
    markers = _select_markers(
        matrix,
        clusters,
        points.genes,
        min_detection=min_detection,
        max_other_detection=max_other_detection,
        n_markers=n_markers,
    )
    logger.info(
        "Found markers for %d of %d clusters of %d cells in %r: %s",
        len(markers),
        len(np.unique(clusters)),
        int(clustered.sum()),
        key,
        markers,
    )
    if len(markers) < 2:
        logger.warning(
            "Only %d cluster(s) of %r have markers, so no marker pair exists and MECR is undefined. "
            "Lower `min_detection`, raise `max_other_detection` or `resolution`.",
            len(markers),
            key,
        )
    return markers


def _check_shares(*, min_detection: float, max_other_detection: float) -> None:
    for name, value in (("min_detection", min_detection), ("max_other_detection", max_other_detection)):
        if not 0 <= value <= 1:
            msg = f"`{name}` is a share of cells between 0 and 1, got {value!r}."
            raise ValueError(msg)


def _leiden_clusters(matrix, *, resolution: float, random_state: int) -> np.ndarray:
    """Return the Leiden cluster of each cell (row of ``matrix``) as integers."""
    adata = ad.AnnData(X=matrix.astype(np.float32))
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    n_components = min(30, adata.n_obs - 1, adata.n_vars - 1)
    sc.pp.pca(adata, n_comps=n_components, random_state=random_state)
    sc.pp.neighbors(adata, n_neighbors=min(15, adata.n_obs - 1), random_state=random_state)
    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=random_state,
    )
    return adata.obs["leiden"].astype(int).to_numpy()


def _select_markers(
    matrix,
    clusters: np.ndarray,
    genes: pd.Index,
    *,
    min_detection: float,
    max_other_detection: float,
    n_markers: int,
) -> dict[str, list[str]]:
    """Return the genes detected in most cells of one cluster and few cells of the others."""
    detected = (matrix > 0).astype(np.float64).tocsc()
    labels = np.unique(clusters)
    inside = np.zeros((len(labels), len(genes)))
    outside = np.zeros((len(labels), len(genes)))
    for row, label in enumerate(labels):
        members = clusters == label
        inside[row] = np.asarray(detected[members].mean(axis=0)).ravel()
        outside[row] = np.asarray(detected[~members].mean(axis=0)).ravel() if (~members).any() else 1.0

    difference = np.where(
        (inside >= min_detection) & (outside <= max_other_detection), inside - outside, -np.inf
    )
    best_cluster = np.argmax(difference, axis=0)
    markers: dict[str, list[str]] = {}
    for row, label in enumerate(labels):
        candidates = np.flatnonzero((best_cluster == row) & np.isfinite(difference[row]))
        ranked = candidates[np.argsort(-difference[row, candidates], kind="stable")][:n_markers]
        if len(ranked):
            markers[f"cluster_{label}"] = [str(gene) for gene in genes[ranked]]
    return markers
