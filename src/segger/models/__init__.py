"""The Segger network, its training and prediction; independent of SpatialData."""

from ._prediction import TilePrediction, fragment_cells, links_to_measure, predict_tile, select_candidates
from ._segger import UNKNOWN_TOKEN, Segger
from ._training import SeggerModule, TrainingSettings, train

__all__ = [
    "UNKNOWN_TOKEN",
    "Segger",
    "SeggerModule",
    "TilePrediction",
    "TrainingSettings",
    "fragment_cells",
    "links_to_measure",
    "predict_tile",
    "select_candidates",
    "train",
]
