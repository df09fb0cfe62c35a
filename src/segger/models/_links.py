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
    ranks = data[CANDIDATE].rank
    keep = supervised[candidates[0]] & ((labels > 0) | (ranks < n_negatives + 1))
    return edge_index_dict, candidates[:, keep], labels[keep]
