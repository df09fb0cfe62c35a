"""The Segger network: heterogeneous GATv2 encoder and dot-product link decoder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch_geometric.nn import GATv2Conv, HeteroConv

from ..graph import BD, TX, TX_BD, TX_TX

logger = logging.getLogger(__name__)

UNKNOWN_TOKEN = 0
FORMAT_VERSION = 1


class Segger(nn.Module):
    """Heterogeneous GATv2 network that embeds transcripts (``tx``) and prior shapes (``bd``).

    Messages flow from transcripts to their nearest transcripts and from transcripts to the
    prior shape that contains them. The link logit of a transcript and a prior shape is the dot
    product of their final embeddings.

    Parameters
    ----------
    vocabulary
        Gene names; gene ``vocabulary[i]`` has token ``i + 1`` and token 0 stands for genes the
        model has not seen.
    gene_embedding
        Optional fixed genes × d table, rows in ``vocabulary`` order (for example the fraction
        of cells of each type that detect the gene, from a single-cell reference). When given,
        it replaces the learned gene embedding.
    embedding_dim
        Size of the learned gene embedding.
    hidden_channels
        Channels per attention head in the hidden layers.
    out_channels
        Channels per attention head in the last layer; embeddings have ``out_channels * heads``.
    heads
        Attention heads per layer, concatenated.
    num_layers
        Number of message-passing layers (at least 1).
    shape_feature_dim
        Number of prior-shape features.
    dropout
        Dropout on attention coefficients.
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        *,
        gene_embedding: np.ndarray | None = None,
        embedding_dim: int = 16,
        hidden_channels: int = 32,
        out_channels: int = 16,
        heads: int = 2,
        num_layers: int = 2,
        shape_feature_dim: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            msg = f"num_layers must be at least 1, got {num_layers}."
            raise ValueError(msg)
        if len(set(vocabulary)) != len(vocabulary):
            msg = "vocabulary contains duplicate gene names; pass each gene once."
            raise ValueError(msg)

        self.vocabulary = [str(gene) for gene in vocabulary]
        self.embedding_dim = embedding_dim if gene_embedding is None else int(gene_embedding.shape[1])
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.heads = heads
        self.num_layers = num_layers
        self.shape_feature_dim = shape_feature_dim
        self.dropout = dropout
        self.uses_gene_embedding = gene_embedding is not None

        if gene_embedding is None:
            self.gene_encoder = nn.Embedding(len(self.vocabulary) + 1, embedding_dim)
        else:
            table = np.vstack([np.zeros((1, gene_embedding.shape[1])), np.asarray(gene_embedding)])
            self.register_buffer("gene_table", torch.as_tensor(table, dtype=torch.float32))
            self.gene_encoder = nn.Linear(self.embedding_dim, self.embedding_dim)

        self.convs = nn.ModuleList()
        self.skips = nn.ModuleList()
        in_tx, in_bd = self.embedding_dim, shape_feature_dim
        for layer in range(num_layers):
            last = layer == num_layers - 1
            channels = out_channels if last else hidden_channels
            conv_kwargs = {"heads": heads, "add_self_loops": False, "dropout": dropout}
            self.convs.append(
                HeteroConv(
                    {
                        TX_TX: GATv2Conv(in_tx, channels, **conv_kwargs),
                        TX_BD: GATv2Conv((in_tx, in_bd), channels, **conv_kwargs),
                    },
                    aggr="sum",
                )
            )
            self.skips.append(
                nn.ModuleDict(
                    {TX: nn.Linear(in_tx, channels * heads), BD: nn.Linear(in_bd, channels * heads)}
                )
            )
            in_tx = in_bd = channels * heads

        self.history = pd.DataFrame()
        self.settings: dict[str, Any] = {}

    @property
    def embedding_size(self) -> int:
        """Size of the final transcript and prior-shape embeddings."""
        return self.out_channels * self.heads

    def reset_parameters(self) -> None:
        """Reinitialise every learnable parameter."""
        self.gene_encoder.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
        for skip in self.skips:
            for linear in skip.values():
                linear.reset_parameters()

    def encode_genes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map gene tokens, shape ``(n,)``, to input features, shape ``(n, embedding_dim)``."""
        if self.uses_gene_embedding:
            return self.gene_encoder(self.gene_table[tokens])
        return self.gene_encoder(tokens)

    def forward(
        self,
        x_dict: dict[str, torch.Tensor],
        edge_index_dict: dict[tuple[str, str, str], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Embed transcripts and prior shapes.

        Parameters
        ----------
        x_dict
            ``"tx"``: gene tokens, shape ``(n_tx,)``, int64; ``"bd"``: shape features,
            shape ``(n_bd, shape_feature_dim)``.
        edge_index_dict
            ``("tx", "neighbors", "tx")`` and ``("tx", "belongs", "bd")`` edge indices, shape
            ``(2, n_edges)``, directed from source to target. Other edge types are ignored.

        Returns
        -------
        Embeddings ``{"tx": (n_tx, embedding_size), "bd": (n_bd, embedding_size)}``.
        """
        h = {TX: self.encode_genes(x_dict[TX]), BD: x_dict[BD]}
        edges = {TX_TX: edge_index_dict[TX_TX], TX_BD: edge_index_dict[TX_BD]}

        for layer, (conv, skip) in enumerate(zip(self.convs, self.skips, strict=True)):
            messages = conv(h, edges)
            h = {
                node_type: messages.get(node_type, 0) + skip[node_type](h[node_type])
                for node_type in (TX, BD)
            }
            if layer < self.num_layers - 1:
                h = {node_type: torch.relu(value) for node_type, value in h.items()}
        return h

    @staticmethod
    def decode(z_tx: torch.Tensor, z_bd: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Return the link logits of the transcript–shape pairs in ``edge_index``, shape ``(n_edges,)``."""
        return (z_tx[edge_index[0]] * z_bd[edge_index[1]]).sum(dim=-1)

    def tokenize(self, genes: Sequence[str] | pd.Series) -> np.ndarray:
        """Return the token of each gene name; genes not in the vocabulary get the unknown token 0."""
        lookup = pd.Index(self.vocabulary)
        positions = lookup.get_indexer(pd.Index(np.asarray(genes, dtype=str)))
        return (positions + 1).astype(np.int64)

    def config(self) -> dict[str, Any]:
        """Return the constructor arguments, except the vocabulary and the gene table."""
        return {
            "embedding_dim": self.embedding_dim,
            "hidden_channels": self.hidden_channels,
            "out_channels": self.out_channels,
            "heads": self.heads,
            "num_layers": self.num_layers,
            "shape_feature_dim": self.shape_feature_dim,
            "dropout": self.dropout,
        }

    def save(self, path: str | Path) -> None:
        """Save configuration, weights, gene vocabulary, settings and training history to one file."""
        state = {
            "format_version": FORMAT_VERSION,
            "config": self.config(),
            "vocabulary": self.vocabulary,
            "uses_gene_embedding": self.uses_gene_embedding,
            "state_dict": self.state_dict(),
            "settings": self.settings,
            "history": {column: self.history[column].tolist() for column in self.history.columns},
        }
        torch.save(state, Path(path))

    @classmethod
    def load(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> Segger:
        """Load a model written by :meth:`save`."""
        state = torch.load(Path(path), map_location=map_location, weights_only=True)
        if state.get("format_version") != FORMAT_VERSION:
            msg = (
                f"{path} has model format version {state.get('format_version')!r}, but this segger "
                f"reads version {FORMAT_VERSION}; retrain the model or use the segger version that saved it."
            )
            raise ValueError(msg)

        gene_embedding = None
        if state["uses_gene_embedding"]:
            table = state["state_dict"]["gene_table"]
            gene_embedding = np.zeros((table.shape[0] - 1, table.shape[1]), dtype=np.float32)
        model = cls(state["vocabulary"], gene_embedding=gene_embedding, **state["config"])
        model.load_state_dict(state["state_dict"])
        model.settings = state["settings"]
        model.history = pd.DataFrame(state["history"])
        return model

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_genes={len(self.vocabulary)}, embedding_dim={self.embedding_dim}, "
            f"hidden_channels={self.hidden_channels}, out_channels={self.out_channels}, heads={self.heads}, "
            f"num_layers={self.num_layers}, gene_embedding={'fixed' if self.uses_gene_embedding else 'learned'})"
        )
