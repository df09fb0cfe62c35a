from __future__ import annotations

import pytest
import torch

from segger.graph import BD, TX, TX_BD, TX_TX
from segger.models._links import inside_mask, split_links

# The hand-placed tile of conftest.py: local transcripts t0–t6, shapes A = 0, B = 1, C = 2.
A, B, C = 0, 1, 2


def _mask(indices: list[int], n: int = 7) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[indices] = True
    return mask


def _links(links: torch.Tensor, labels: torch.Tensor) -> set[tuple[int, int, float]]:
    return set(zip(links[0].tolist(), links[1].tolist(), labels.tolist(), strict=True))


def _logits(model, data, edge_index_dict, links) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        z = model({TX: data[TX].x, BD: data[BD].x}, edge_index_dict)
    return model.decode(z[TX], z[BD], links)


def test_inside_mask(hand_graph):
    assert inside_mask(hand_graph).tolist() == [True, True, False, True, True, True, False]


def test_supervised_not_excluded_raises(hand_graph):
    with pytest.raises(AssertionError, match="must also be excluded"):
        split_links(hand_graph, _mask([0, 3]), _mask([0]), n_negatives=1)


def test_excluded_belongs_edges_removed(hand_graph):
    edge_index_dict, _, _ = split_links(hand_graph, _mask([]), _mask([0, 3]), n_negatives=1)

    assert edge_index_dict[TX_BD].tolist() == [[1, 4, 5], [A, B, B]]


def test_tx_edges_kept(hand_graph):
    edge_index_dict, _, _ = split_links(hand_graph, _mask([0, 3]), _mask([0, 3]), n_negatives=1)

    assert torch.equal(edge_index_dict[TX_TX], hand_graph[TX_TX].edge_index)


def test_nothing_supervised_no_links(hand_graph):
    edge_index_dict, links, labels = split_links(hand_graph, _mask([]), _mask([]), n_negatives=1)

    assert links.shape == (2, 0)
    assert labels.shape == (0,)
    assert torch.equal(edge_index_dict[TX_BD], hand_graph[TX_BD].edge_index)


def test_scored_links_supervised_only(hand_graph):
    _, links, _ = split_links(hand_graph, _mask([0, 4]), _mask([0, 3, 4]), n_negatives=1)

    assert set(links[0].tolist()) == {0, 4}


def test_scored_links_hand_computed(hand_graph):
    _, links, labels = split_links(hand_graph, _mask([0, 1, 4]), _mask([0, 1, 4]), n_negatives=1)

    assert _links(links, labels) == {(0, A, 1.0), (0, C, 0.0), (1, A, 1.0), (1, C, 0.0), (4, B, 1.0)}


def test_zero_negatives_scores_owner(hand_graph):
    _, links, labels = split_links(hand_graph, _mask([0, 1]), _mask([0, 1]), n_negatives=0)

    assert _links(links, labels) == {(0, A, 1.0), (1, A, 1.0)}


def test_negatives_limited_far_owner(hand_graph):
    # t3's candidates by rank: C (3.4 µm), A (3.5 µm), and its owner B (6 µm, added beyond dist_bd).
    _, links, labels = split_links(hand_graph, _mask([3]), _mask([3]), n_negatives=1)

    assert _links(links, labels) == {(3, C, 0.0), (3, B, 1.0)}


@pytest.mark.parametrize("seed", range(5))
def test_no_scored_link_carries_messages(training_tiles, seed):
    generator = torch.Generator().manual_seed(seed)
    for data in training_tiles:
        n = data[TX].num_nodes
        supervised = inside_mask(data) & (torch.rand(n, generator=generator) < 0.3)
        excluded = supervised | (torch.rand(n, generator=generator) < 0.2)
        edge_index_dict, links, _ = split_links(data, supervised, excluded, n_negatives=1)

        scored = set(links[0].tolist())
        messages = set(edge_index_dict[TX_BD][0].tolist())
        assert scored
        assert scored.isdisjoint(messages)


def test_split_links_input_unchanged(hand_graph):
    belongs = hand_graph[TX_BD].edge_index.clone()
    split_links(hand_graph, _mask([0, 3]), _mask([0, 3]), n_negatives=1)

    assert torch.equal(hand_graph[TX_BD].edge_index, belongs)


def _move_t3_to_a(data):
    """Return a copy of the tile in which t3's belongs edge points to A instead of its owner B."""
    moved = data.clone()
    belongs = moved[TX_BD].edge_index.clone()
    belongs[1, belongs[0] == 3] = A
    moved[TX_BD].edge_index = belongs
    return moved


T3_LINKS = torch.tensor([[3, 3, 3], [A, B, C]])


def test_excluded_owner_edge_not_read(tiny_model, hand_graph):
    """Moving only t3's own belongs edge from B to A leaves the logits of t3's links unchanged."""
    model = tiny_model()
    moved = _move_t3_to_a(hand_graph)
    supervised = _mask([3])
    edges, links, _ = split_links(hand_graph, supervised, supervised, n_negatives=1)
    moved_edges, moved_links, _ = split_links(moved, supervised, supervised, n_negatives=1)

    assert torch.equal(links, moved_links)
    assert torch.equal(
        _logits(model, hand_graph, edges, T3_LINKS), _logits(model, moved, moved_edges, T3_LINKS)
    )


def test_owner_edge_read_without_exclusion(tiny_model, hand_graph):
    """Control for the test above: with t3's belongs edge in message passing, moving it changes the logits."""
    model = tiny_model()
    moved = _move_t3_to_a(hand_graph)
    edges = {TX_TX: hand_graph[TX_TX].edge_index, TX_BD: hand_graph[TX_BD].edge_index}
    moved_edges = {TX_TX: moved[TX_TX].edge_index, TX_BD: moved[TX_BD].edge_index}
    before = _logits(model, hand_graph, edges, T3_LINKS)
    after = _logits(model, moved, moved_edges, T3_LINKS)

    # A gains t3 and B loses it; C has no members, so only its logit stays.
    assert not torch.isclose(after[0], before[0])
    assert not torch.isclose(after[1], before[1])
    assert torch.equal(after[2], before[2])
