"""Prediction: score candidate links, pick each transcript's best prior shape, group the rest."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from torch_geometric.data import HeteroData

from ..graph import BD, CANDIDATE, TX, TX_BD, TX_TX
from ._segger import Segger

logger = logging.getLogger(__name__)


@dataclass
class TilePrediction:
    """Scores of the core transcripts of one tile.

    Attributes
    ----------
    transcripts
        Global indices of the tile's core transcripts, shape ``(n,)``.
    best_shape
        Global index of the best-scoring candidate shape, -1 when there is no candidate.
    best_score
        Sigmoid of the best link logit, NaN when there is no candidate.
    embeddings
        Final transcript embeddings, shape ``(n, d)``, float32.
    """

    transcripts: np.ndarray
    best_shape: np.ndarray
    best_score: np.ndarray
    embeddings: np.ndarray


@torch.no_grad()
def predict_tile(
    model: Segger, data: HeteroData, *, k_bd: int, device: torch.device | str = "cpu"
) -> TilePrediction:
    """Score the candidate shapes of a tile's core transcripts.

    Every ``belongs`` edge carries messages, and only the ``k_bd`` nearest candidates (plus the
    containing shape) are scored, never a dense transcripts × shapes matrix.
    """
    model.eval()
    data = data.to(device)
    z = model(
        {TX: data[TX].x, BD: data[BD].x}, {TX_TX: data[TX_TX].edge_index, TX_BD: data[TX_BD].edge_index}
    )

    candidates = data[CANDIDATE].edge_index
    keep = (data[CANDIDATE].rank < k_bd) | (data[CANDIDATE].edge_label > 0)
    candidates = candidates[:, keep]
    scores = torch.sigmoid(model.decode(z[TX], z[BD], candidates)).cpu().numpy()
    sources = candidates[0].cpu().numpy()
    targets = candidates[1].cpu().numpy()

    core = data[TX].core.cpu().numpy()
    n_local = len(core)
    best_local = np.full(n_local, -1, dtype=np.int64)
    best_score = np.full(n_local, np.nan, dtype=np.float32)
    if len(scores):
        # Sort by transcript, then by descending score; the first row of each transcript is its best.
        order = np.lexsort((-scores, sources))
        first = np.ones(len(order), dtype=bool)
        first[1:] = sources[order][1:] != sources[order][:-1]
        chosen = order[first]
        best_local[sources[chosen]] = targets[chosen]
        best_score[sources[chosen]] = scores[chosen]

    shape_index = data[BD].index.cpu().numpy()
    best_shape = np.where(best_local >= 0, shape_index[np.maximum(best_local, 0)], -1)
    return TilePrediction(
        transcripts=data[TX].index.cpu().numpy()[core],
        best_shape=best_shape[core],
        best_score=best_score[core],
        embeddings=z[TX].cpu().numpy()[core].astype(np.float32),
    )


def fragment_cells(
    positions: np.ndarray,
    embeddings: np.ndarray,
    transcript_ids: np.ndarray,
    *,
    k: int,
    max_distance: float,
    min_similarity: float,
    min_transcripts: int,
) -> np.ndarray:
    """Group transcripts without a prior shape into new cells.

    Two transcripts are linked when one is among the other's ``k`` nearest neighbours within
    ``max_distance`` and the cosine similarity of their embeddings is at least
    ``min_similarity``. Connected components with at least ``min_transcripts`` transcripts
    become cells, numbered 0, 1, … in the order of their smallest transcript id, so that the
    numbering does not depend on tiles or workers.

    Parameters
    ----------
    positions
        Coordinates of the leftover transcripts, shape ``(n, 3)``, µm.
    embeddings
        Their final embeddings, shape ``(n, d)``.
    transcript_ids
        Their unique ``transcript_id`` values, shape ``(n,)``.
    k, max_distance, min_similarity, min_transcripts
        Neighbour count, distance (µm), cosine-similarity threshold and minimum cell size.

    Returns
    -------
    Cell number per transcript, shape ``(n,)``, -1 for transcripts left unassigned.
    """
    n = len(positions)
    labels = np.full(n, -1, dtype=np.int64)
    if n < max(min_transcripts, 2):
        return labels

    k_query = min(k + 1, n)
    distances, neighbours = cKDTree(positions).query(positions, k=k_query, distance_upper_bound=max_distance)
    source = np.repeat(np.arange(n), k_query).reshape(n, k_query)
    valid = np.isfinite(distances) & (neighbours != source)
    source, target = source[valid], neighbours[valid]

    norms = np.linalg.norm(embeddings, axis=1)
    unit = embeddings / np.maximum(norms, 1e-12)[:, None]
    similarity = np.einsum("ij,ij->i", unit[source], unit[target])
    similar = similarity >= min_similarity
    adjacency = coo_matrix((np.ones(int(similar.sum())), (source[similar], target[similar])), shape=(n, n))
    _, component = connected_components(adjacency, directed=True, connection="weak")

    sizes = np.bincount(component)
    large = sizes[component] >= min_transcripts
    if not large.any():
        return labels

    smallest_id = np.full(len(sizes), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest_id, component[large], transcript_ids[large])
    kept = np.flatnonzero(sizes >= min_transcripts)
    number = np.full(len(sizes), -1, dtype=np.int64)
    number[kept[np.argsort(smallest_id[kept], kind="stable")]] = np.arange(len(kept))
    labels[large] = number[component[large]]
    return labels
