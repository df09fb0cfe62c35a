"""Readers that turn vendor output folders into segger's SpatialData layout."""

from ._cosmx import cosmx
from ._merscope import merscope
from ._xenium import xenium

__all__ = ["cosmx", "merscope", "xenium"]
