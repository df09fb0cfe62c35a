"""Tools that segment cells in a SpatialData object, write the result back and measure it."""

from ._baselines import from_transcript_column, nucleus_expansion
from ._markers import find_markers
from ._metrics import segmentation_metrics
from ._segment import segger_fit, segger_predict

__all__ = [
    "find_markers",
    "from_transcript_column",
    "nucleus_expansion",
    "segger_fit",
    "segger_predict",
    "segmentation_metrics",
]
