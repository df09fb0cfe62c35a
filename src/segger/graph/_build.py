"""Build the heterogeneous transcript–prior-shape graph of one tile."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch_geometric.data import HeteroData

from ._tiles import Tile

TX = "tx"
BD = "bd"
TX_TX = (TX, "neighbors", TX)
TX_BD = (TX, "belongs", BD)
CANDIDATE = (TX, "candidate", BD)


@dataclass
class GraphSettings:
    """Distances (µm) and neighbour counts that define the graph.

    Attributes
    ----------
    k_tx
        Number of nearest transcripts each transcript receives messages from.
    dist_tx
        Maximum distance of a transcript neighbour, µm.
    k_bd
        Number of nearest prior shapes (by centroid) that are candidates for a transcript at prediction.
    dist_bd
        Maximum centroid distance of a candidate prior shape, µm.
    n_negatives
        Maximum number of nearby non-owning prior shapes scored per positive link in training.
    num_layers
        Number of message-passing layers of the model, used to size the tile margin.
    max_shape_radius
        Largest distance from a prior shape's centroid to its boundary, µm, used to size the margin.
    """

    k_tx: int = 5
    dist_tx: float = 5.0
    k_bd: int = 4
    dist_bd: float = 12.0
    n_negatives: int = 5
    num_layers: int = 2
    max_shape_radius: float = 10.0

    @property
    def margin(self) -> float:
        """Context margin (µm) so that a core transcript's scores do not depend on the tiling.

        A candidate shape's centroid lies within ``dist_bd`` of the transcript, and its member
        transcripts lie within ``max_shape_radius`` of the centroid. Each layer of message
        passing reaches one more ``dist_tx`` away. One extra ``dist_tx`` completes the neighbour
        lists of the outermost transcripts that still matter.
        """
        reach = self.dist_bd + self.max_shape_radius
        return float(max(reach, self.dist_tx) + (self.num_layers + 1) * self.dist_tx)

    def to_dict(self) -> dict:
        """Return the settings as a plain dictionary."""
        return asdict(self)


@dataclass
class GraphInputs:
    """Arrays that the graph is built from, for the transcripts that take part in it.

    Attributes
    ----------
    positions
        Transcript coordinates, shape ``(n, 3)``, µm (z is 0 for 2-D data).
    tokens
        Gene token per transcript, shape ``(n,)``, any integer type (int32 in segger, to save memory);
        0 is the unknown-gene token.
    prior_index
        Index of the prior shape that contains the transcript, shape ``(n,)``, -1 for none.
    shape_centroids
        Prior-shape centroids, shape ``(m, 2)``, µm.
    shape_features
        Scaled prior-shape features, shape ``(m, f)``.
    """

    positions: np.ndarray
    tokens: np.ndarray
    prior_index: np.ndarray
    shape_centroids: np.ndarray
    shape_features: np.ndarray

    @property
    def n_transcripts(self) -> int:
        """Number of transcripts."""
        return len(self.tokens)


def build_tile_graph(inputs: GraphInputs, tile: Tile, settings: GraphSettings) -> HeteroData:
    """Build the graph of one tile.

    Parameters
    ----------
    inputs
        Arrays of the whole slide.
    tile
        The tile: its transcripts and prior shapes.
    settings
        Neighbour counts and distances.

    Returns
    -------
    A :class:`~torch_geometric.data.HeteroData` with

    - ``data["tx"]``: ``x`` (gene tokens, ``(n,)``), ``pos`` (``(n, 3)``), ``index`` (global
      transcript index), ``core`` (bool);
    - ``data["bd"]``: ``x`` (shape features, ``(m, f)``), ``index`` (global shape index);
    - ``data["tx", "neighbors", "tx"].edge_index``: k nearest transcripts within ``dist_tx``,
      directed from neighbour to transcript;
    - ``data["tx", "belongs", "bd"].edge_index``: transcripts inside a prior shape, the only
      transcript→shape message edges;
    - ``data["tx", "candidate", "bd"]``: ``edge_index`` of the nearest shapes within ``dist_bd``
      (always including the shape containing the transcript), ``edge_label`` (1.0 for the
      containing shape), and ``rank`` (0 for the nearest centroid). The containing shape gets
      rank 0 as well when it is added beyond the nearest ones. Candidates are kept for core
      transcripts only.
    """
    transcripts = tile.transcripts
    shapes = tile.shapes
    positions = inputs.positions[transcripts]

    data = HeteroData()
    data[TX].x = torch.from_numpy(inputs.tokens[transcripts].astype(np.int64))
    data[TX].pos = torch.from_numpy(positions)
    data[TX].index = torch.from_numpy(transcripts.astype(np.int64))
    data[TX].core = torch.from_numpy(tile.core)
    data[BD].x = torch.from_numpy(inputs.shape_features[shapes]).reshape(
        len(shapes), inputs.shape_features.shape[1]
    )
    data[BD].index = torch.from_numpy(shapes.astype(np.int64))

    data[TX_TX].edge_index = _transcript_edges(positions, settings)

    local_prior = _local_prior_index(inputs.prior_index[transcripts], shapes, len(inputs.shape_centroids))
    inside = np.flatnonzero(local_prior >= 0)
    data[TX_BD].edge_index = torch.from_numpy(np.vstack([inside, local_prior[inside]]).astype(np.int64))

    candidate_index, label, rank = _candidate_edges(
        positions[:, :2], inputs.shape_centroids[shapes], local_prior, tile.core, settings
    )
    data[CANDIDATE].edge_index = candidate_index
    data[CANDIDATE].edge_label = label
    data[CANDIDATE].rank = rank
    return data


def _transcript_edges(positions: np.ndarray, settings: GraphSettings) -> torch.Tensor:
    n = len(positions)
    if n < 2 or settings.k_tx < 1:
        return torch.empty((2, 0), dtype=torch.long)

    k = min(settings.k_tx + 1, n)
    distances, neighbours = cKDTree(positions).query(positions, k=k, distance_upper_bound=settings.dist_tx)
    target = np.repeat(np.arange(n), k).reshape(n, k)
    valid = np.isfinite(distances) & (neighbours != target)
    # Where more than k transcripts share a position, the query may return k others and not the
    # transcript itself, so at most k_tx neighbours are kept per transcript.
    valid &= np.cumsum(valid, axis=1) <= settings.k_tx
    edge_index = np.vstack([neighbours[valid], target[valid]]).astype(np.int64)
    return torch.from_numpy(edge_index)


def _local_prior_index(prior_index: np.ndarray, shapes: np.ndarray, n_shapes: int) -> np.ndarray:
    """Map global prior-shape indices to positions within ``shapes`` (-1 when absent)."""
    lookup = np.full(n_shapes + 1, -1, dtype=np.int64)
    lookup[shapes] = np.arange(len(shapes))
    return lookup[np.where(prior_index >= 0, prior_index, n_shapes)]


def _candidate_edges(
    xy: np.ndarray,
    centroids: np.ndarray,
    local_prior: np.ndarray,
    core: np.ndarray,
    settings: GraphSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    core_positions = np.flatnonzero(core)
    n_shapes = len(centroids)
    k = min(max(settings.k_bd, settings.n_negatives + 1), n_shapes)
    if k == 0 or len(core_positions) == 0:
        empty = torch.empty((2, 0), dtype=torch.long)
        return empty, torch.empty(0), torch.empty(0, dtype=torch.long)

    distances, nearest = cKDTree(centroids).query(
        xy[core_positions], k=k, distance_upper_bound=settings.dist_bd
    )
    distances = distances.reshape(len(core_positions), k)
    nearest = nearest.reshape(len(core_positions), k)
    rank = np.broadcast_to(np.arange(k), nearest.shape)
    valid = np.isfinite(distances)

    source = np.repeat(core_positions, k).reshape(-1, k)[valid]
    target = nearest[valid]
    ranks = rank[valid]

    owner = local_prior[core_positions]
    owner_found = (nearest == owner[:, None]) & valid
    missing_owner = (owner >= 0) & ~owner_found.any(axis=1)
    source = np.concatenate([source, core_positions[missing_owner]])
    target = np.concatenate([target, owner[missing_owner]])
    ranks = np.concatenate([ranks, np.zeros(int(missing_owner.sum()), dtype=ranks.dtype)])

    label = (target == local_prior[source]).astype(np.float32)
    order = np.lexsort((ranks, source))
    edge_index = np.vstack([source[order], target[order]]).astype(np.int64)
    return (
        torch.from_numpy(edge_index),
        torch.from_numpy(label[order]),
        torch.from_numpy(ranks[order].astype(np.int64)),
    )
