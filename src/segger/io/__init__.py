"""Readers that turn vendor output folders into segger's SpatialData layout."""

from ._xenium import xenium

__all__ = ["xenium"]
