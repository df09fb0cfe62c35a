"""Tools that segment cells in a SpatialData object and write the result back."""

from ._segment import segger_fit, segger_predict

__all__ = ["segger_fit", "segger_predict"]
