"""Preprocessing helpers."""

from ._reference import gene_embedding_from_reference

__all__ = ["gene_embedding_from_reference"]
