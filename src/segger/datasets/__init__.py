"""Synthetic and example datasets in segger's SpatialData layout."""

from ._toy import toy

__all__ = ["toy"]
