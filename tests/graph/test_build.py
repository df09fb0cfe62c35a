from __future__ import annotations

import numpy as np
import pytest
import torch

from segger.graph import BD, CANDIDATE, TX, TX_BD, TX_TX, GraphInputs, GraphSettings, Tile, build_tile_graph

# Seven transcripts on the x axis and three prior shapes, placed so that every distance is easy
# to work out by hand (µm):
#
#   t0 (0, 0, 0)    inside A      t1 at 1.0; A at 0.5, C at 3.84
#   t1 (1, 0, 0)    inside A      t0 at 1.0, t2 at 1.4; A at 0.5, C at 3.31
#   t2 (2.4, 0, 0)  no shape      t1 at 1.4, t3 at 1.6; A at 1.9, C at 3.0
#   t3 (4, 0, 0)    inside B      C at 3.4, A at 3.5, B at 6.0 (beyond dist_bd)
#   t4 (9, 0, 0)    inside B      t5 at 1.56 in 3-D (1.0 in the plane); B at 1.0, C at 7.25
#   t5 (10, 0, 1.2) inside B      in the margin of the tile, so it has no candidates
#   t6 (20, 0, 0)   no shape      nothing within reach
#
#   A centroid (0.5, 0), B centroid (10, 0), C centroid (2.4, 3) with no transcripts.
POSITIONS = np.array(
    [
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [2.4, 0.0, 0.0],
        [4.0, 0.0, 0.0],
        [9.0, 0.0, 0.0],
        [10.0, 0.0, 1.2],
        [20.0, 0.0, 0.0],
    ]
)
PRIOR_INDEX = np.array([0, 0, -1, 1, 1, 1, -1])
CENTROIDS = np.array([[0.5, 0.0], [10.0, 0.0], [2.4, 3.0]])
A, B, C = 0, 1, 2
SETTINGS = GraphSettings(k_tx=2, dist_tx=1.5, k_bd=2, dist_bd=5.0, n_negatives=1)


def _inputs() -> GraphInputs:
    return GraphInputs(
        positions=POSITIONS,
        tokens=np.array([1, 1, 2, 3, 3, 3, 2], dtype=np.int64),
        prior_index=PRIOR_INDEX,
        shape_centroids=CENTROIDS,
        shape_features=np.array([[1.0, 0.1], [2.0, 0.2], [3.0, 0.3]], dtype=np.float32),
    )


def _whole_tile() -> Tile:
    core = np.ones(len(POSITIONS), dtype=bool)
    core[5] = False
    return Tile(
        index=0,
        bounds=(0.0, 0.0, 20.0, 1.0),
        transcripts=np.arange(len(POSITIONS)),
        core=core,
        shapes=np.arange(len(CENTROIDS)),
    )


def _build(settings: GraphSettings = SETTINGS):
    return build_tile_graph(_inputs(), _whole_tile(), settings)


def _edges(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.T.tolist()))


def _candidates(data) -> set[tuple[int, int, float, int]]:
    """Return the candidate links as (transcript, shape, label, rank) tuples."""
    edge_index = data[CANDIDATE].edge_index
    return set(
        zip(
            edge_index[0].tolist(),
            edge_index[1].tolist(),
            data[CANDIDATE].edge_label.tolist(),
            data[CANDIDATE].rank.tolist(),
            strict=True,
        )
    )


def test_tx_edges_knn_within_distance():
    data = _build()

    assert _edges(data[TX_TX].edge_index) == {(1, 0), (0, 1), (2, 1), (1, 2)}


def test_tx_edges_k_limits_neighbours():
    settings = GraphSettings(k_tx=1, dist_tx=1.5, k_bd=2, dist_bd=5.0, n_negatives=1)
    data = _build(settings)

    # t1 keeps only its nearest neighbour t0, while t2 still receives from t1.
    assert _edges(data[TX_TX].edge_index) == {(1, 0), (0, 1), (1, 2)}


def test_tx_edges_neighbour_to_transcript():
    settings = GraphSettings(k_tx=1, dist_tx=1.5, k_bd=2, dist_bd=5.0, n_negatives=1)
    edges = _edges(_build(settings)[TX_TX].edge_index)

    assert (1, 2) in edges
    assert (2, 1) not in edges


def test_tx_edges_no_self_loops():
    edge_index = _build()[TX_TX].edge_index

    assert not (edge_index[0] == edge_index[1]).any()


def test_tx_edges_use_z():
    edges = _edges(_build()[TX_TX].edge_index)

    # t4 and t5 are 1 µm apart in the plane but 1.56 µm apart in 3-D.
    assert (4, 5) not in edges
    assert (5, 4) not in edges


def test_tx_edges_zero_k_empty():
    settings = GraphSettings(k_tx=0, dist_tx=1.5, k_bd=2, dist_bd=5.0, n_negatives=1)

    assert _build(settings)[TX_TX].edge_index.shape == (2, 0)


def test_belongs_edges_follow_prior_index():
    edge_index = _build()[TX_BD].edge_index

    assert edge_index.tolist() == [[0, 1, 3, 4, 5], [A, A, B, B, B]]


def test_candidates_hand_computed():
    expected = {
        (0, A, 1.0, 0),
        (0, C, 0.0, 1),
        (1, A, 1.0, 0),
        (1, C, 0.0, 1),
        (2, A, 0.0, 0),
        (2, C, 0.0, 1),
        (3, C, 0.0, 0),
        (3, A, 0.0, 1),
        (3, B, 1.0, 0),  # the owner, 6 µm away, added beyond dist_bd with rank 0
        (4, B, 1.0, 0),
    }

    assert _candidates(_build()) == expected


def test_candidates_k_nearest():
    settings = GraphSettings(k_tx=2, dist_tx=1.5, k_bd=1, dist_bd=5.0, n_negatives=0)
    expected = {
        (0, A, 1.0, 0),
        (1, A, 1.0, 0),
        (2, A, 0.0, 0),
        (3, C, 0.0, 0),
        (3, B, 1.0, 0),
        (4, B, 1.0, 0),
    }

    assert _candidates(_build(settings)) == expected


def test_candidates_k_covers_negatives():
    settings = GraphSettings(k_tx=2, dist_tx=1.5, k_bd=1, dist_bd=5.0, n_negatives=1)

    # k_bd is 1, but n_negatives + 1 = 2 nearest shapes are kept so that training has a negative.
    assert (2, C, 0.0, 1) in _candidates(_build(settings))


def test_candidates_owner_beyond_dist_bd():
    owners = [(transcript, shape) for transcript, shape, label, _ in _candidates(_build()) if label == 1.0]

    assert (3, B) in owners


def test_candidates_one_label_per_owner():
    data = _build()
    edge_index = data[CANDIDATE].edge_index
    positive = data[CANDIDATE].edge_label == 1.0

    assert edge_index[0, positive].tolist() == [0, 1, 3, 4]
    assert edge_index[1, positive].tolist() == [A, A, B, B]


def test_candidates_core_only():
    sources = set(_build()[CANDIDATE].edge_index[0].tolist())

    assert 5 not in sources


def test_candidates_none_beyond_dist_bd():
    sources = set(_build()[CANDIDATE].edge_index[0].tolist())

    assert 6 not in sources


def test_candidates_sorted_by_transcript_rank():
    data = _build()
    sources = data[CANDIDATE].edge_index[0]
    ranks = data[CANDIDATE].rank
    key = sources * 10 + ranks

    assert (key[1:] >= key[:-1]).all()


def test_candidates_single_shape():
    inputs = _inputs()
    tile = Tile(
        index=0,
        bounds=(0.0, 0.0, 20.0, 1.0),
        transcripts=np.arange(len(POSITIONS)),
        core=np.ones(len(POSITIONS), dtype=bool),
        shapes=np.array([B]),
    )
    data = build_tile_graph(inputs, tile, SETTINGS)

    # Only B is in the tile: t3 (6 µm, its owner), t4 (1 µm) and t5 (0 µm) are linked to it.
    assert _candidates(data) == {(3, 0, 1.0, 0), (4, 0, 1.0, 0), (5, 0, 1.0, 0)}


def test_tile_without_shapes():
    inputs = _inputs()
    tile = Tile(
        index=0,
        bounds=(0.0, 0.0, 20.0, 1.0),
        transcripts=np.arange(len(POSITIONS)),
        core=np.ones(len(POSITIONS), dtype=bool),
        shapes=np.array([], dtype=np.int64),
    )
    data = build_tile_graph(inputs, tile, SETTINGS)

    assert data[BD].x.shape == (0, 2)
    assert data[TX_BD].edge_index.shape == (2, 0)
    assert data[CANDIDATE].edge_index.shape == (2, 0)
    assert data[CANDIDATE].edge_label.shape == (0,)


def test_node_attributes():
    data = _build()

    assert data[TX].x.tolist() == [1, 1, 2, 3, 3, 3, 2]
    assert torch.equal(data[TX].pos, torch.from_numpy(POSITIONS))
    assert data[TX].index.tolist() == list(range(7))
    assert data[TX].core.tolist() == [True, True, True, True, True, False, True]
    assert torch.equal(data[BD].x, torch.tensor([[1.0, 0.1], [2.0, 0.2], [3.0, 0.3]]))
    assert data[BD].index.tolist() == [A, B, C]


def test_subset_tile_global_index():
    tile = Tile(
        index=3,
        bounds=(0.0, 0.0, 10.0, 1.0),
        transcripts=np.array([1, 2, 3, 4]),
        core=np.array([True, True, True, False]),
        shapes=np.array([A, C]),
    )
    data = build_tile_graph(_inputs(), tile, SETTINGS)

    assert data[TX].index.tolist() == [1, 2, 3, 4]
    assert data[TX].x.tolist() == [1, 2, 3, 3]
    assert data[BD].index.tolist() == [A, C]
    assert torch.equal(data[BD].x, torch.tensor([[1.0, 0.1], [3.0, 0.3]]))


def test_subset_tile_local_edges():
    tile = Tile(
        index=3,
        bounds=(0.0, 0.0, 10.0, 1.0),
        transcripts=np.array([1, 2, 3, 4]),
        core=np.array([True, True, True, False]),
        shapes=np.array([A, C]),
    )
    data = build_tile_graph(_inputs(), tile, SETTINGS)

    # Local numbering: t1 → 0, t2 → 1, t3 → 2, t4 → 3; A → 0, C → 1. B is outside the tile, so
    # t3 and t4 have no belongs edge and t3 has no positive candidate.
    assert _edges(data[TX_TX].edge_index) == {(0, 1), (1, 0)}
    assert data[TX_BD].edge_index.tolist() == [[0], [0]]
    assert _candidates(data) == {
        (0, 0, 1.0, 0),
        (0, 1, 0.0, 1),
        (1, 0, 0.0, 0),
        (1, 1, 0.0, 1),
        (2, 1, 0.0, 0),
        (2, 0, 0.0, 1),
    }


def test_edge_index_dtypes():
    data = _build()

    assert data[TX_TX].edge_index.dtype == torch.long
    assert data[TX_BD].edge_index.dtype == torch.long
    assert data[CANDIDATE].edge_index.dtype == torch.long
    assert data[CANDIDATE].rank.dtype == torch.long
    assert data[CANDIDATE].edge_label.dtype == torch.float32


@pytest.mark.parametrize(("num_layers", "expected"), [(1, 32.0), (2, 37.0), (3, 42.0)])
def test_margin_grows_with_layers(num_layers, expected):
    settings = GraphSettings(dist_tx=5.0, dist_bd=12.0, max_shape_radius=10.0, num_layers=num_layers)

    # (dist_bd + max_shape_radius) + (num_layers + 1) · dist_tx
    assert settings.margin == expected


def test_margin_long_tx_distance():
    settings = GraphSettings(dist_tx=30.0, dist_bd=1.0, max_shape_radius=1.0, num_layers=1)

    # dist_tx exceeds dist_bd + max_shape_radius, so it sets the base: 30 + 2 · 30.
    assert settings.margin == 90.0


def test_settings_to_dict_round_trip():
    settings = GraphSettings(k_tx=3, dist_tx=4.0, k_bd=2, dist_bd=9.0, n_negatives=3, num_layers=1)

    assert GraphSettings(**settings.to_dict()) == settings


def test_inputs_n_transcripts():
    assert _inputs().n_transcripts == 7
