"""Plots of segmentations; every function returns its matplotlib axes."""

__all__: list[str] = []
