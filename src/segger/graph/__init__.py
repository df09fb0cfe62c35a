"""Graph construction from transcript and prior-shape arrays; independent of SpatialData."""

from ._build import BD, CANDIDATE, TX, TX_BD, TX_TX, GraphInputs, GraphSettings, build_tile_graph
from ._features import SHAPE_FEATURES, fit_feature_scaling, scale_features, shape_features
from ._tiles import Tile, TileGrid

__all__ = [
    "BD",
    "CANDIDATE",
    "SHAPE_FEATURES",
    "TX",
    "TX_BD",
    "TX_TX",
    "GraphInputs",
    "GraphSettings",
    "Tile",
    "TileGrid",
    "build_tile_graph",
    "fit_feature_scaling",
    "scale_features",
    "shape_features",
]
