"""Steps shared by the plotting functions: saving a figure and labelling metric columns."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

PCT_ASSIGNED = "pct_assigned"

METRIC_LABELS = {
    "n_cells": "Cells",
    PCT_ASSIGNED: "Transcripts assigned (%)",
    "median_transcripts": "Median transcripts per cell",
    "median_genes": "Median genes per cell",
    "median_area": "Median cell area (µm²)",
    "cells_per_mm2": "Cells per mm²",
    "pct_nuclear": "Assigned transcripts in a nucleus (%)",
    "mecr": "MECR (lower is better)",
    "mecr_area_matched": "MECR, area-matched (lower is better)",
    "contamination": "Contamination (lower is better)",
    "ari": "ARI with truth (higher is better)",
    "pct_correct": "Assigned to true cell (%)",
    "pct_wrong": "Assigned to wrong cell (%)",
    "pct_unassigned": "In a cell but unassigned (%)",
}
"""Axis label of each column of :func:`segger.tl.segmentation_metrics`. Other columns keep their name."""


def metric_label(column: str) -> str:
    """Return the axis label of metrics column ``column``."""
    return METRIC_LABELS.get(column, column)


def bound_columns(column: str) -> tuple[str, str]:
    """Return the names of the lower and upper bootstrap bounds of metrics column ``column``."""
    return f"{column}_low", f"{column}_high"


def save_figure(ax: Axes, save: str | Path | None) -> None:
    """Write the figure of ``ax`` to ``save`` with a tight bounding box, or do nothing when ``save`` is None.

    Axes in a subfigure are saved with the whole figure, because a subfigure cannot be saved alone.
    """
    if save is None:
        return
    # `.figure` of a subfigure, nested or not, is the root figure, and a figure's `.figure` is itself.
    ax.figure.figure.savefig(save, bbox_inches="tight")
    logger.info("Saved figure to %s", save)
