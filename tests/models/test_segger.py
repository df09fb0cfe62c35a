from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import HeteroData

from segger.graph import BD, CANDIDATE, TX, TX_BD, TX_TX
from segger.models import UNKNOWN_TOKEN, Segger


def _embed(model: Segger, data: HeteroData) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(
            {TX: data[TX].x, BD: data[BD].x},
            {TX_TX: data[TX_TX].edge_index, TX_BD: data[TX_BD].edge_index},
        )


def test_forward_output_shapes(tiny_model, hand_graph):
    model = tiny_model(out_channels=3, heads=2)
    z = _embed(model, hand_graph)

    assert model.embedding_size == 6
    assert z[TX].shape == (7, 6)
    assert z[BD].shape == (3, 6)


def test_forward_one_layer(tiny_model, hand_graph):
    z = _embed(tiny_model(num_layers=1), hand_graph)

    assert z[TX].shape == (7, 4)
    assert z[BD].shape == (3, 4)


def test_forward_zero_bd_nodes(tiny_model):
    data = HeteroData()
    data[TX].x = torch.tensor([1, 2, 3])
    data[BD].x = torch.zeros((0, 2))
    data[TX_TX].edge_index = torch.tensor([[0, 1], [1, 0]])
    data[TX_BD].edge_index = torch.empty((2, 0), dtype=torch.long)
    z = _embed(tiny_model(), data)

    assert z[TX].shape == (3, 4)
    assert z[BD].shape == (0, 4)
    assert torch.isfinite(z[TX]).all()


def test_forward_zero_belongs_edges(tiny_model, hand_graph):
    hand_graph[TX_BD].edge_index = torch.empty((2, 0), dtype=torch.long)
    z = _embed(tiny_model(), hand_graph)

    assert z[BD].shape == (3, 4)
    assert torch.isfinite(z[BD]).all()


def test_forward_ignores_candidate_edges(tiny_model, hand_graph):
    model = tiny_model()
    edges = {TX_TX: hand_graph[TX_TX].edge_index, TX_BD: hand_graph[TX_BD].edge_index}
    x_dict = {TX: hand_graph[TX].x, BD: hand_graph[BD].x}
    with torch.no_grad():
        plain = model(x_dict, edges)
        extra = model(x_dict, {**edges, CANDIDATE: hand_graph[CANDIDATE].edge_index})

    assert torch.equal(plain[TX], extra[TX])
    assert torch.equal(plain[BD], extra[BD])


def test_decode_manual_dot_products():
    z_tx = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    z_bd = torch.tensor([[2.0, 1.0], [-1.0, 4.0]])
    edge_index = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 0]])

    logits = Segger.decode(z_tx, z_bd, edge_index)

    # 1·2 + 2·1, 1·(-1) + 2·4, 0·(-1) + (-1)·4, 3·2 + 0.5·1
    assert logits.tolist() == [4.0, 7.0, -4.0, 6.5]


def test_decode_empty_links():
    logits = Segger.decode(torch.ones((2, 3)), torch.ones((1, 3)), torch.empty((2, 0), dtype=torch.long))

    assert logits.shape == (0,)


def test_tokenize_known_genes(tiny_model):
    tokens = tiny_model().tokenize(["GeneC", "GeneA", "GeneB", "GeneA"])

    assert tokens.tolist() == [3, 1, 2, 1]
    assert tokens.dtype == np.int64


def test_tokenize_unknown_genes_zero(tiny_model):
    tokens = tiny_model().tokenize(pd.Series(["GeneB", "NotAGene", "genea"]))

    assert UNKNOWN_TOKEN == 0
    assert tokens.tolist() == [2, 0, 0]


def test_tokenize_empty(tiny_model):
    assert tiny_model().tokenize([]).tolist() == []


def test_save_load_same_outputs(tiny_model, hand_graph, tmp_path):
    model = tiny_model()
    model.save(tmp_path / "model.pt")
    loaded = Segger.load(tmp_path / "model.pt")
    before = _embed(model, hand_graph)
    after = _embed(loaded, hand_graph)

    assert torch.equal(before[TX], after[TX])
    assert torch.equal(before[BD], after[BD])


def test_save_load_metadata(tiny_model, tmp_path):
    model = tiny_model(heads=2, dropout=0.1)
    model.settings = {"graph": {"k_tx": 3, "dist_tx": 4.0}, "score_cut": 0.5, "tile_size": 120.0}
    model.history = pd.DataFrame({"epoch": [0, 1], "train_loss": [0.7, 0.6], "val_loss": [np.nan, 0.65]})
    model.save(tmp_path / "model.pt")
    loaded = Segger.load(tmp_path / "model.pt")

    assert loaded.vocabulary == ["GeneA", "GeneB", "GeneC"]
    assert loaded.config() == model.config()
    assert loaded.settings == model.settings
    pd.testing.assert_frame_equal(loaded.history, model.history)


def test_save_load_state_dict(tiny_model, tmp_path):
    model = tiny_model()
    model.save(tmp_path / "model.pt")
    loaded = Segger.load(tmp_path / "model.pt")
    expected = model.state_dict()
    actual = loaded.state_dict()

    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_load_wrong_format_version(tiny_model, tmp_path):
    path = tmp_path / "model.pt"
    tiny_model().save(path)
    state = torch.load(path, weights_only=True)
    state["format_version"] = 99
    torch.save(state, path)

    with pytest.raises(ValueError, match="model format version 99"):
        Segger.load(path)


def test_fixed_gene_embedding_sizes(tiny_model):
    table = np.array([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    model = tiny_model(gene_embedding=table, embedding_dim=16)

    assert model.uses_gene_embedding
    assert model.embedding_dim == 2
    assert torch.equal(model.gene_table, torch.tensor([[0.0, 0.0], [0.2, 0.8], [1.0, 0.0], [0.5, 0.5]]))


def test_fixed_gene_embedding_rows(tiny_model):
    table = np.array([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    model = tiny_model(gene_embedding=table)
    with torch.no_grad():
        encoded = model.encode_genes(torch.tensor([2, 0]))
        expected = model.gene_encoder(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))

    # Token 2 reads the second table row; the unknown token reads a row of zeros.
    assert torch.equal(encoded, expected)


def test_fixed_gene_embedding_not_trained(tiny_model):
    table = np.array([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    model = tiny_model(gene_embedding=table)
    names = [name for name, _ in model.named_parameters()]

    assert "gene_table" not in names
    assert "gene_table" in model.state_dict()


def test_fixed_gene_embedding_round_trip(tiny_model, hand_graph, tmp_path):
    table = np.array([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    model = tiny_model(gene_embedding=table)
    model.save(tmp_path / "model.pt")
    loaded = Segger.load(tmp_path / "model.pt")

    assert loaded.uses_gene_embedding
    assert torch.equal(loaded.gene_table, model.gene_table)
    assert torch.equal(_embed(loaded, hand_graph)[TX], _embed(model, hand_graph)[TX])


def test_reset_parameters_changes_weights(tiny_model):
    model = tiny_model()
    before = {name: value.clone() for name, value in model.named_parameters()}
    model.reset_parameters()
    changed = [name for name, value in model.named_parameters() if not torch.equal(value, before[name])]

    assert "gene_encoder.weight" in changed
    assert "skips.0.tx.weight" in changed
    assert "skips.1.bd.weight" in changed
    assert any(name.startswith("convs.0.") for name in changed)
    assert any(name.startswith("convs.1.") for name in changed)


def test_reset_parameters_keeps_gene_table(tiny_model):
    table = np.array([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    model = tiny_model(gene_embedding=table)
    model.reset_parameters()

    assert torch.equal(model.gene_table[1:], torch.from_numpy(table))


def test_repr_mentions_sizes(tiny_model):
    text = repr(tiny_model(hidden_channels=8, out_channels=4, heads=2))

    assert text.startswith("Segger(")
    assert "n_genes=3" in text
    assert "hidden_channels=8" in text
    assert "out_channels=4" in text
    assert "heads=2" in text
    assert "num_layers=2" in text
    assert "gene_embedding=learned" in text


def test_num_layers_zero_raises(tiny_model):
    with pytest.raises(ValueError, match="num_layers must be at least 1"):
        tiny_model(num_layers=0)


def test_duplicate_vocabulary_raises(tiny_model):
    with pytest.raises(ValueError, match="duplicate gene names"):
        tiny_model(vocabulary=["GeneA", "GeneB", "GeneA"])
