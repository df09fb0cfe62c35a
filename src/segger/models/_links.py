"""Choose which transcript–shape links are scored and which carry messages in one pass."""

from __future__ import annotations

import torch
from torch_geometric.data import HeteroData

from ..graph import CANDIDATE, TX, TX_BD, TX_TX


def inside_mask(data: HeteroData) -> torch.Tensor:
    """Return a mask over ``tx`` nodes that are inside a prior shape of the tile."""
    mask = torch.zeros(data[TX].num_nodes, dtype=torch.bool, device=data[TX].x.device)
    mask[data[TX_BD].edge_index[0]] = True
    return mask


def split_links(
    data: HeteroData,
    supervised: torch.Tensor,
    excluded: torch.Tensor,
    *,
    n_negatives: int,
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Return the message edges, the scored links and their labels for one forward pass.

    The ``belongs`` edges of every transcript in ``excluded`` are removed from message passing,
    and ``supervised`` must be a subset of ``excluded``: no scored link is also a message edge,
    so the model cannot read a label from its own input.

    Parameters
    ----------
    data
        Tile graph from :func:`segger.graph.build_tile_graph`.
    supervised
        Mask over ``tx`` nodes whose candidate links are scored.
    excluded
        Mask over ``tx`` nodes whose ``belongs`` edges are hidden from message passing.
    n_negatives
        Maximum number of non-owning candidates scored per supervised transcript, nearest first.

    Returns
    -------
    ``edge_index_dict`` for the model, the scored links (shape ``(2, n_links)``) and their
    labels (shape ``(n_links,)``, 1.0 for the containing shape).
    """
    if bool((supervised & ~excluded).any()):
        msg = "every supervised transcript must also be excluded from message passing"
        raise AssertionError(msg)

    belongs = data[TX_BD].edge_index
    message_edges = belongs[:, ~excluded[belongs[0]]]
    edge_index_dict = {TX_TX: data[TX_TX].edge_index, TX_BD: message_edges}

    candidates = data[CANDIDATE].edge_index
    labels = data[CANDIDATE].edge_label
    keep = supervised[candidates[0]] & ((labels > 0) | (_negative_rank(candidates[0], labels) < n_negatives))
    return edge_index_dict, candidates[:, keep], labels[keep]


def _negative_rank(sources: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number the non-owning candidates of each transcript 0, 1, … in their stored (nearest-first) order.

    Candidates are stored sorted by transcript, then by rank. Owning candidates get the count of
    negatives before them, which callers ignore.
    """
    negative = (labels == 0).long()
    before = torch.cumsum(negative, 0) - negative
    starts = torch.ones_like(sources, dtype=torch.bool)
    starts[1:] = sources[1:] != sources[:-1]
    positions = torch.arange(len(sources), device=sources.device)
    group_start = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), 0).values
    return before - before[group_start]
