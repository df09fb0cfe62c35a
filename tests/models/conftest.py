from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from segger.graph import GraphInputs, GraphSettings, Tile, TileGrid, build_tile_graph
from segger.models import Segger

VOCABULARY = ["GeneA", "GeneB", "GeneC"]
N_SHAPE_FEATURES = 2

# Global index 0 of the transcripts and of the shapes lies far away and outside the tile, so that
# local index i of the tile is global index i + 1. Local layout (µm):
#
#   t0 (0, 0, 0)    inside A      t1 at 1.0; A at 0.5, C at 3.84
#   t1 (1, 0, 0)    inside A      t0 at 1.0, t2 at 1.4; A at 0.5, C at 3.31
#   t2 (2.4, 0, 0)  no shape      t1 at 1.4; A at 1.9, C at 3.0
#   t3 (4, 0, 0)    inside B      C at 3.4, A at 3.5, B at 6.0 (beyond dist_bd)
#   t4 (9, 0, 0)    inside B      B at 1.0
#   t5 (10, 0, 1.2) inside B      margin of the tile: no candidates, not predicted
#   t6 (20, 0, 0)   no shape      no candidates
#
#   A centroid (0.5, 0), B centroid (10, 0), C centroid (2.4, 3) with no transcripts.
#
# Candidate links (transcript, shape, label, rank) with HAND_SETTINGS:
#   (t0, A, 1, 0) (t0, C, 0, 1) (t1, A, 1, 0) (t1, C, 0, 1) (t2, A, 0, 0) (t2, C, 0, 1)
#   (t3, C, 0, 0) (t3, A, 0, 1) (t3, B, 1, 0) (t4, B, 1, 0)
HAND_POSITIONS = np.array(
    [
        [500.0, 500.0, 0.0],
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [2.4, 0.0, 0.0],
        [4.0, 0.0, 0.0],
        [9.0, 0.0, 0.0],
        [10.0, 0.0, 1.2],
        [20.0, 0.0, 0.0],
    ]
)
HAND_PRIOR_INDEX = np.array([0, 1, 1, -1, 2, 2, 2, -1])
HAND_CENTROIDS = np.array([[500.0, 500.0], [0.5, 0.0], [10.0, 0.0], [2.4, 3.0]])
HAND_SETTINGS = GraphSettings(k_tx=2, dist_tx=1.5, k_bd=2, dist_bd=5.0, n_negatives=1)


def _hand_inputs() -> GraphInputs:
    return GraphInputs(
        positions=HAND_POSITIONS,
        tokens=np.array([3, 1, 1, 2, 2, 3, 3, 2], dtype=np.int64),
        prior_index=HAND_PRIOR_INDEX,
        shape_centroids=HAND_CENTROIDS,
        shape_features=np.array([[0.0, 0.0], [1.0, 0.1], [2.0, 0.2], [3.0, 0.3]], dtype=np.float32),
    )


def _hand_graph() -> HeteroData:
    core = np.ones(7, dtype=bool)
    core[5] = False
    tile = Tile(
        index=0,
        bounds=(0.0, 0.0, 20.0, 1.0),
        transcripts=np.arange(1, 8),
        core=core,
        shapes=np.arange(1, 4),
    )
    return build_tile_graph(_hand_inputs(), tile, HAND_SETTINGS)


def _synthetic_tiles(n_tiles: int = 3, seed: int = 0) -> list[HeteroData]:
    """Build tiles of a slide where the gene of a transcript identifies the shape that contains it.

    Every tile is 30 µm wide and contains two prior shapes 10 µm apart. Transcripts inside the left
    shape are GeneA (token 1), inside the right shape GeneB (token 2), and between them GeneC
    (token 3).
    """
    rng = np.random.default_rng(seed)
    positions, tokens, prior_index, centroids = [], [], [], []
    for tile in range(n_tiles):
        left = np.array([30.0 * tile + 10.0, 15.0])
        right = left + np.array([10.0, 0.0])
        for shape, (centre, token) in enumerate([(left, 1), (right, 2)]):
            angle = rng.uniform(0.0, 2.0 * np.pi, 12)
            radius = 3.0 * np.sqrt(rng.uniform(0.0, 1.0, 12))
            xy = centre + np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
            positions.append(xy)
            tokens += [token] * 12
            prior_index += [2 * tile + shape] * 12
            centroids.append(centre)
        between = rng.uniform(left + np.array([4.0, -4.0]), right + np.array([-4.0, 4.0]), size=(4, 2))
        positions.append(between)
        tokens += [3] * 4
        prior_index += [-1] * 4
    xy = np.vstack(positions)
    inputs = GraphInputs(
        positions=np.column_stack([xy, np.zeros(len(xy))]),
        tokens=np.array(tokens, dtype=np.int64),
        prior_index=np.array(prior_index, dtype=np.int64),
        shape_centroids=np.array(centroids),
        shape_features=rng.normal(size=(len(centroids), N_SHAPE_FEATURES)).astype(np.float32),
    )
    settings = GraphSettings(k_tx=3, dist_tx=4.0, k_bd=2, dist_bd=12.0, n_negatives=1, num_layers=1)
    # The slide spans about 80 µm; a tile_size of 30 µm cuts it into one tile per pair of shapes.
    grid = TileGrid.from_positions(xy, tile_size=30.0, margin=2.0)
    return [build_tile_graph(inputs, tile, settings) for tile in grid.tiles(xy, inputs.shape_centroids)]


def _make_tiny_model(**kwargs) -> Segger:
    options = {
        "embedding_dim": 4,
        "hidden_channels": 8,
        "out_channels": 4,
        "heads": 1,
        "num_layers": 2,
        "shape_feature_dim": N_SHAPE_FEATURES,
    }
    options.update(kwargs)
    vocabulary = options.pop("vocabulary", VOCABULARY)
    return Segger(vocabulary, **options)


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., Segger]:
    """Return a factory of small seeded models; keyword arguments override the sizes."""

    def factory(seed: int = 0, **kwargs) -> Segger:
        torch.manual_seed(seed)
        return _make_tiny_model(**kwargs)

    return factory


@pytest.fixture
def hand_graph() -> HeteroData:
    """Return the seven-transcript tile described at the top of this file."""
    return _hand_graph()


@pytest.fixture(scope="session")
def make_training_tiles() -> Callable[[], list[HeteroData]]:
    """Return a factory of three tiles of two prior shapes each, with genes that identify the owner."""
    return _synthetic_tiles


@pytest.fixture
def training_tiles(make_training_tiles) -> list[HeteroData]:
    return make_training_tiles()
