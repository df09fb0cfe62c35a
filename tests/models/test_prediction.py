from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segger.graph import BD, TX, GraphInputs, GraphSettings, TileGrid, build_tile_graph
from segger.models import (
    Segger,
    TilePrediction,
    fragment_cells,
    links_to_measure,
    predict_tile,
    select_candidates,
)


def _sigmoid(value: float) -> float:
    return float(1.0 / (1.0 + np.exp(-value)))


class FixedEmbeddings(nn.Module):
    """Stand-in for Segger whose embeddings are set by hand, so that every logit is known."""

    decode = staticmethod(Segger.decode)

    def __init__(self, z_tx: list[list[float]], z_bd: list[list[float]]) -> None:
        super().__init__()
        self.z = {TX: torch.tensor(z_tx), BD: torch.tensor(z_bd)}

    def forward(self, x_dict, edge_index_dict):
        return self.z


# Embeddings for the hand-placed tile of conftest.py (local t0–t6 and shapes A, B, C; global
# index = local index + 1). Logits are the dot products, listed per candidate with its rank:
#   t0: A (rank 0, owner) -1, C (rank 1) 1      t1: A (rank 0, owner) 2, C (rank 1) -2
#   t2: A (rank 0) -1, C (rank 1) 1             t3: C (rank 0) -2, A (rank 1) 2, B (owner) 1
#   t4: B (rank 0, owner) 0.5                   t5: not core              t6: no candidates
Z_TX = [[-1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [2.0, 1.0], [0.0, 0.5], [5.0, 5.0], [1.0, 1.0]]
Z_BD = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
GA, GB, GC = 1, 2, 3  # global indices of A, B and C

# (global transcript, global shape) → logit of every candidate link of the core transcripts.
ALL_LINKS = {
    (1, GA): -1.0,
    (1, GC): 1.0,
    (2, GA): 2.0,
    (2, GC): -2.0,
    (3, GA): -1.0,
    (3, GC): 1.0,
    (4, GC): -2.0,
    (4, GA): 2.0,
    (4, GB): 1.0,
    (5, GB): 0.5,
}
RANK_ONE = {(4, GA), (1, GC), (2, GC), (3, GC)}


def _predict(hand_graph, k_bd: int) -> TilePrediction:
    return predict_tile(FixedEmbeddings(Z_TX, Z_BD), hand_graph, k_bd=k_bd)


def _scored(prediction: TilePrediction) -> dict[tuple[int, int], float]:
    pairs = zip(prediction.sources.tolist(), prediction.targets.tolist(), strict=True)
    return dict(zip(pairs, prediction.scores.tolist(), strict=True))


def _select(prediction: TilePrediction, *, score_cut: float = 0.0, rule="score", distances=None):
    if distances is None:
        distances = np.zeros(len(prediction.sources))
    return select_candidates(
        prediction.sources,
        prediction.targets,
        prediction.scores,
        distances,
        n_transcripts=8,
        score_cut=score_cut,
        rule=rule,
    )


def test_predict_tile_core_transcripts(hand_graph):
    prediction = _predict(hand_graph, k_bd=2)

    # Global 6 is local t5, which lies in the margin.
    assert prediction.transcripts.tolist() == [1, 2, 3, 4, 5, 7]


def test_predict_tile_core_embeddings(hand_graph):
    prediction = _predict(hand_graph, k_bd=2)
    expected = np.array(Z_TX, dtype=np.float32)[[0, 1, 2, 3, 4, 6]]

    assert prediction.embeddings.dtype == np.float32
    np.testing.assert_array_equal(prediction.embeddings, expected)


def test_predict_tile_all_candidates(hand_graph):
    scored = _predict(hand_graph, k_bd=2)

    assert _scored(scored).keys() == ALL_LINKS.keys()


def test_predict_tile_scores_sigmoid(hand_graph):
    scored = _scored(_predict(hand_graph, k_bd=2))

    for link, logit in ALL_LINKS.items():
        assert scored[link] == pytest.approx(_sigmoid(logit), rel=1e-6), link


def test_predict_tile_rank_below_k_bd(hand_graph):
    scored = _scored(_predict(hand_graph, k_bd=1))

    # Rank-1 candidates are dropped; t3's owner B is kept although its rank would not qualify it.
    assert scored.keys() == ALL_LINKS.keys() - RANK_ONE
    assert (4, GB) in scored


def test_predict_tile_not_core_not_scored(hand_graph):
    prediction = _predict(hand_graph, k_bd=2)

    assert 6 not in prediction.sources.tolist()


def test_predict_tile_real_model(tiny_model, hand_graph):
    model = tiny_model()
    prediction = predict_tile(model, hand_graph, k_bd=2)

    assert prediction.embeddings.shape == (6, model.embedding_size)
    assert len(prediction.scores) == len(ALL_LINKS)
    assert ((prediction.scores > 0.0) & (prediction.scores < 1.0)).all()


def test_select_best_among_k_bd(hand_graph):
    chosen, score = _select(_predict(hand_graph, k_bd=1))

    # With k_bd = 1 only the nearest shape and the owner compete: t3 (global 4) picks its owner B
    # over the nearest C although A, which is not scored, has the highest logit.
    assert chosen.tolist() == [-1, GA, GA, GA, GB, GB, -1, -1]
    assert score[4] == pytest.approx(_sigmoid(1.0), rel=1e-6)


def test_select_best_score(hand_graph):
    chosen, score = _select(_predict(hand_graph, k_bd=2))
    expected_score = [_sigmoid(1.0), _sigmoid(2.0), _sigmoid(1.0), _sigmoid(2.0), _sigmoid(0.5)]

    assert chosen.tolist() == [-1, GC, GA, GC, GA, GB, -1, -1]
    assert score[1:6].tolist() == pytest.approx(expected_score, rel=1e-6)


def test_select_no_candidate_nan(hand_graph):
    chosen, score = _select(_predict(hand_graph, k_bd=2))

    # Global 7 (t6) has no candidate; globals 0 and 6 are not in the tile's core at all.
    for transcript in (0, 6, 7):
        assert chosen[transcript] == -1
        assert np.isnan(score[transcript])


def test_select_score_cut_keeps_best_score(hand_graph):
    chosen, score = _select(_predict(hand_graph, k_bd=2), score_cut=0.7)

    # t4 (global 5) has one candidate at sigmoid(0.5) ≈ 0.62, below the cut.
    assert chosen[5] == -1
    assert score[5] == pytest.approx(_sigmoid(0.5), rel=1e-6)
    assert chosen[2] == GA


def test_select_nearest_rule(hand_graph):
    prediction = _predict(hand_graph, k_bd=2)
    boundary_distance = {GA: 1.0, GB: 0.0, GC: 2.0}
    distances = np.array([boundary_distance[shape] for shape in prediction.targets.tolist()])
    chosen, score = _select(prediction, score_cut=0.1, rule="nearest", distances=distances)

    # t3 (global 4): C, A and B all pass the cut, and B is nearest although A scores higher.
    assert chosen[4] == GB
    assert score[4] == pytest.approx(_sigmoid(1.0), rel=1e-6)


def test_select_nearest_tie_higher_score(hand_graph):
    prediction = _predict(hand_graph, k_bd=2)
    chosen, _ = _select(prediction, score_cut=0.1, rule="nearest")

    # All distances are 0, so the higher score decides: C for t0 (global 1), A for t1 (global 2).
    assert chosen[1] == GC
    assert chosen[2] == GA


def test_select_nearest_skips_rejected(hand_graph):
    prediction = _predict(hand_graph, k_bd=2)
    boundary_distance = {GA: 0.0, GB: 0.0, GC: 5.0}
    distances = np.array([boundary_distance[shape] for shape in prediction.targets.tolist()])
    chosen, _ = _select(prediction, score_cut=0.5, rule="nearest", distances=distances)

    # t0 (global 1): A is nearer but scores sigmoid(-1) < 0.5, so the farther C is chosen.
    assert chosen[1] == GC


def test_select_no_links():
    empty = np.empty(0)
    chosen, score = select_candidates(
        empty.astype(np.int64),
        empty.astype(np.int64),
        empty,
        empty,
        n_transcripts=3,
        score_cut=0.5,
        rule="score",
    )

    assert chosen.tolist() == [-1, -1, -1]
    assert np.isnan(score).all()


def test_select_bad_rule_raises(hand_graph):
    with pytest.raises(ValueError, match="rule must be 'nearest' or 'score'"):
        _select(_predict(hand_graph, k_bd=2), rule="best")


def _select_by_full_sort(sources, targets, scores, distances, n_transcripts, score_cut, rule):
    """Reference choice: sort every link by (source, -score) or (source, distance, -score)."""
    chosen = np.full(n_transcripts, -1, dtype=np.int64)
    best = np.full(n_transcripts, np.nan, dtype=np.float32)
    for source in np.unique(sources):
        links = np.flatnonzero(sources == source)
        by_score = links[np.lexsort((-scores[links],))]
        best[source] = scores[by_score[0]]
        accepted = links[scores[links] >= score_cut]
        if len(accepted) == 0:
            continue
        if rule == "score":
            pick = by_score[0] if scores[by_score[0]] >= score_cut else None
        else:
            pick = accepted[np.lexsort((-scores[accepted], distances[accepted]))][0]
        if pick is not None:
            chosen[source] = targets[pick]
            best[source] = scores[pick]
    return chosen, best


@pytest.mark.parametrize("rule", ["score", "nearest"])
def test_select_matches_full_sort(rule):
    rng = np.random.default_rng(3)
    levels = np.array([0.0, 0.04, 0.05, 0.5, 0.9, 1.0], dtype=np.float32)
    for _ in range(100):
        n = int(rng.integers(1, 40))
        e = int(rng.integers(0, 200))
        sources = rng.integers(0, n, e)
        targets = rng.integers(0, 15, e)
        scores = rng.choice(levels, e)
        distances = rng.choice(np.array([0.0, 0.5, 2.0]), e)
        measured = links_to_measure(sources, scores, n_transcripts=n, score_cut=0.05, rule=rule)
        chosen, best = select_candidates(
            sources,
            targets,
            scores,
            np.where(measured, distances, np.nan),
            n_transcripts=n,
            score_cut=0.05,
            rule=rule,
        )
        expected_chosen, expected_best = _select_by_full_sort(
            sources, targets, scores, distances, n, 0.05, rule
        )
        np.testing.assert_array_equal(chosen, expected_chosen)
        np.testing.assert_array_equal(best, expected_best)


def test_core_scores_independent_of_tiling(tiny_model):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0.0, 60.0, size=(300, 2))
    centroids = np.array([[x, y] for x in (10.0, 30.0, 50.0) for y in (10.0, 30.0, 50.0)])
    distance = np.linalg.norm(xy[:, None, :] - centroids[None, :, :], axis=2)
    prior_index = np.where(distance.min(axis=1) < 4.0, distance.argmin(axis=1), -1)
    inputs = GraphInputs(
        positions=np.column_stack([xy, rng.uniform(0.0, 2.0, len(xy))]),
        tokens=rng.integers(0, 4, len(xy)),
        prior_index=prior_index,
        shape_centroids=centroids,
        shape_features=rng.normal(size=(len(centroids), 2)).astype(np.float32),
    )
    settings = GraphSettings(k_tx=3, dist_tx=3.0, k_bd=2, dist_bd=6.0, max_shape_radius=4.0, num_layers=2)
    model = tiny_model()

    def predict(tile_size: float) -> tuple[dict, np.ndarray]:
        grid = TileGrid.from_positions(xy, tile_size=tile_size, margin=settings.margin)
        scores, embeddings = {}, np.zeros((len(xy), model.embedding_size), dtype=np.float32)
        for tile in grid.tiles(xy, centroids):
            result = predict_tile(model, build_tile_graph(inputs, tile, settings), k_bd=settings.k_bd)
            scores.update(_scored(result))
            embeddings[result.transcripts] = result.embeddings
        return scores, embeddings

    whole_scores, whole_embeddings = predict(tile_size=100.0)
    tiled_scores, tiled_embeddings = predict(tile_size=30.0)

    assert tiled_scores.keys() == whole_scores.keys()
    for link, value in whole_scores.items():
        assert tiled_scores[link] == pytest.approx(value, abs=1e-5), link
    np.testing.assert_allclose(tiled_embeddings, whole_embeddings, atol=1e-5)


# Leftover transcripts for fragment_cells, with k = 2, max_distance = 2 µm, min_similarity = 0.9
# and min_transcripts = 3:
#   rows 0–2: cluster P around (0, 0), ids 5, 9, 7
#   rows 3–5: cluster Q around (10, 0), ids 3, 8, 6 (contains the smallest kept id, so it is cell 0)
#   rows 6–7: pair R around (20, 0), ids 0, 1: too small, left at -1
FRAGMENT_POSITIONS = np.array(
    [
        [0.0, 0.0, 0.0],
        [1.0, 0.1, 0.0],
        [0.2, 1.1, 0.0],
        [10.0, 0.0, 0.0],
        [11.0, 0.2, 0.0],
        [10.3, 1.2, 0.0],
        [20.0, 0.0, 0.0],
        [21.0, 0.3, 0.0],
    ]
)
FRAGMENT_IDS = np.array([5, 9, 7, 3, 8, 6, 0, 1])
FRAGMENT_OPTIONS = {"k": 2, "max_distance": 2.0, "min_similarity": 0.9, "min_transcripts": 3}


def _similar_embeddings(n: int) -> np.ndarray:
    return np.tile([1.0, 0.1], (n, 1))


def test_fragments_two_clusters():
    labels = fragment_cells(FRAGMENT_POSITIONS, _similar_embeddings(8), FRAGMENT_IDS, **FRAGMENT_OPTIONS)

    assert labels.tolist() == [1, 1, 1, 0, 0, 0, -1, -1]


def test_fragments_small_cluster_unassigned():
    options = {**FRAGMENT_OPTIONS, "min_transcripts": 2}
    labels = fragment_cells(FRAGMENT_POSITIONS, _similar_embeddings(8), FRAGMENT_IDS, **options)

    # With min_transcripts = 2 the pair R is kept and, holding id 0, becomes cell 0.
    assert labels.tolist() == [2, 2, 2, 1, 1, 1, 0, 0]


def test_fragments_dissimilar_split():
    positions = np.array([[x, 0.0, 0.0] for x in (0.0, 0.9, 2.0, 3.2, 4.1, 5.3)])
    embeddings = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    ids = np.array([10, 11, 12, 13, 14, 15])
    options = {**FRAGMENT_OPTIONS, "max_distance": 1.5}
    labels = fragment_cells(positions, embeddings, ids, **options)

    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_fragments_similar_chain_joined():
    positions = np.array([[x, 0.0, 0.0] for x in (0.0, 0.9, 2.0, 3.2, 4.1, 5.3)])
    ids = np.array([10, 11, 12, 13, 14, 15])
    options = {**FRAGMENT_OPTIONS, "max_distance": 1.5}
    labels = fragment_cells(positions, _similar_embeddings(6), ids, **options)

    assert labels.tolist() == [0, 0, 0, 0, 0, 0]


def test_fragments_row_order_independent():
    embeddings = _similar_embeddings(8)
    embeddings[3:6] = [0.2, 1.0]  # Q differs from P, which must not matter across clusters
    expected = fragment_cells(FRAGMENT_POSITIONS, embeddings, FRAGMENT_IDS, **FRAGMENT_OPTIONS)
    expected_by_id = dict(zip(FRAGMENT_IDS.tolist(), expected.tolist(), strict=True))

    rng = np.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(len(FRAGMENT_IDS))
        labels = fragment_cells(
            FRAGMENT_POSITIONS[order], embeddings[order], FRAGMENT_IDS[order], **FRAGMENT_OPTIONS
        )
        assert dict(zip(FRAGMENT_IDS[order].tolist(), labels.tolist(), strict=True)) == expected_by_id


def test_fragments_too_few_transcripts():
    labels = fragment_cells(
        FRAGMENT_POSITIONS[:2], _similar_embeddings(2), FRAGMENT_IDS[:2], **FRAGMENT_OPTIONS
    )

    assert labels.tolist() == [-1, -1]


def test_fragments_empty():
    labels = fragment_cells(
        np.empty((0, 3)), np.empty((0, 2)), np.empty(0, dtype=np.int64), **FRAGMENT_OPTIONS
    )

    assert labels.shape == (0,)


def test_fragments_zero_embedding_no_link():
    embeddings = _similar_embeddings(8)
    embeddings[1] = 0.0
    labels = fragment_cells(FRAGMENT_POSITIONS, embeddings, FRAGMENT_IDS, **FRAGMENT_OPTIONS)

    # A zero embedding has cosine similarity 0 with everything, so P loses row 1 and drops below 3.
    assert labels.tolist() == [-1, -1, -1, 0, 0, 0, -1, -1]


@pytest.mark.parametrize("chunk", [1, 3])
def test_fragments_same_in_chunks(monkeypatch, chunk):
    rng = np.random.default_rng(4)
    positions = np.column_stack([rng.uniform(0, 20, size=(300, 2)), np.zeros(300)])
    # Three kinds of transcript, so that some neighbours are similar and some are not.
    embeddings = np.eye(4)[rng.integers(0, 3, size=300)] + rng.normal(scale=0.1, size=(300, 4))
    ids = rng.permutation(300)
    whole = fragment_cells(positions, embeddings, ids, **FRAGMENT_OPTIONS)
    monkeypatch.setattr("segger.models._prediction._FRAGMENT_CHUNK", chunk)

    chunked = fragment_cells(positions, embeddings, ids, **FRAGMENT_OPTIONS)

    assert (whole >= 0).sum() > 10
    assert (whole < 0).sum() > 10
    np.testing.assert_array_equal(chunked, whole)
