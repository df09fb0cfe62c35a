"""Plots of segmentations, their metrics and training curves, drawn with matplotlib.

Every function takes its data first and all options as keywords, draws into ``ax`` (a new figure when
None), writes the figure to ``save`` when given, and returns the axes it drew into.

- :func:`segmentation`: transcripts coloured by cell, with the cell outlines, in a window of the section.
- :func:`metrics`: one bar chart per column of :func:`segger.tl.segmentation_metrics`.
- :func:`mecr_vs_assigned`: MECR against the share of transcripts assigned, one curve per method.
- :func:`training_history`: training and validation loss per epoch of a trained model.
"""

from ._history import training_history
from ._metrics import mecr_vs_assigned, metrics
from ._segmentation import segmentation

__all__ = ["mecr_vs_assigned", "metrics", "segmentation", "training_history"]
