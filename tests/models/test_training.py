from __future__ import annotations

import signal
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import HeteroData

from segger.graph import TX
from segger.models import SeggerModule, TrainingSettings, _training, train
from segger.models._links import inside_mask
from segger.models._training import _top_candidate_accuracy, assign_validation

HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_accuracy"]


def _settings(**kwargs) -> TrainingSettings:
    options = {"max_epochs": 3, "patience": 10, "n_negatives": 1, "supervision_ratio": 0.5}
    options.update(kwargs)
    return TrainingSettings(**options)


def _train(model, tiles, settings=None, random_state: int = 0) -> pd.DataFrame:
    return train(
        model,
        tiles,
        settings or _settings(),
        accelerator="cpu",
        random_state=random_state,
        progress_bar=False,
    )


def _bare_tiles(sizes: list[int]) -> list[HeteroData]:
    tiles = []
    for size in sizes:
        data = HeteroData()
        data[TX].x = torch.zeros(size, dtype=torch.long)
        tiles.append(data)
    return tiles


@pytest.fixture(scope="module")
def trained(tiny_model, make_training_tiles):
    """Train one tiny model for three epochs on the synthetic tiles, shared by several tests."""
    model = tiny_model()
    tiles = make_training_tiles()
    history = _train(model, tiles)
    return model, tiles, history


def test_history_columns(trained):
    _, _, history = trained

    assert history.columns.tolist() == HISTORY_COLUMNS


def test_history_one_row_per_epoch(trained):
    _, _, history = trained

    assert history["epoch"].tolist() == [0, 1, 2]


def test_history_steps_one_per_tile(trained):
    _, _, history = trained

    # Links mode with three tiles: every tile is a training step, so three steps per epoch.
    assert history["step"].tolist() == [3, 6, 9]


def test_history_validation_finite(trained):
    _, _, history = trained

    assert np.isfinite(history["val_loss"]).all()
    assert history["val_accuracy"].between(0.0, 1.0).all()


def test_history_train_loss_every_epoch(trained):
    _, _, history = trained

    assert np.isfinite(history["train_loss"]).all()


def test_train_changes_weights(trained, tiny_model, training_tiles):
    first, _, _ = trained
    # A learning rate of 0 leaves the weights where train() reset them after seeding.
    start = tiny_model()
    _train(start, training_tiles, _settings(learning_rate=0.0, weight_decay=0.0, max_epochs=1))
    changed = [
        name for name, value in first.state_dict().items() if not torch.equal(value, start.state_dict()[name])
    ]

    assert "gene_encoder.weight" in changed
    assert "skips.1.tx.weight" in changed


def test_train_deterministic(trained, tiny_model, training_tiles):
    first, _, first_history = trained
    second = tiny_model(seed=123)
    second_history = _train(second, training_tiles)

    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name
    pd.testing.assert_frame_equal(second_history, first_history)


def test_train_random_state_matters(trained, tiny_model, training_tiles):
    first, _, _ = trained
    other = tiny_model()
    _train(other, training_tiles, random_state=1)

    assert not torch.equal(other.gene_encoder.weight, first.gene_encoder.weight)


def test_train_marks_validation(trained):
    _, tiles, _ = trained

    for data in tiles:
        assert data[TX].validation.dtype == torch.bool
        assert data[TX].validation.shape == (data[TX].num_nodes,)


def test_train_interrupt_raises_keyboard_interrupt(tiny_model, training_tiles, monkeypatch):
    def interrupted_step(self, data, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(SeggerModule, "training_step", interrupted_step)
    handler = signal.getsignal(signal.SIGINT)

    # Lightning alone would set SIGINT to be ignored and raise SystemExit(1).
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model(), training_tiles)

    assert signal.getsignal(signal.SIGINT) is handler


def test_train_hides_leafspec_warning(tiny_model, training_tiles):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(tiny_model(), training_tiles, _settings(max_epochs=1))

    assert not [warning for warning in caught if "LeafSpec" in str(warning.message)]


def test_train_without_validation_links(tiny_model, training_tiles):
    history = _train(tiny_model(), training_tiles, _settings(validation_share=0.0, max_epochs=2))

    assert history["epoch"].tolist() == [0, 1]
    assert history["val_loss"].isna().all()


def test_assign_validation_tiles_mode():
    tiles = _bare_tiles([1000, 1000, 1000, 1000])
    training, validation, kind = assign_validation(tiles, share=0.25, min_tiles=3, random_state=0)

    assert kind == "tiles"
    assert len(training) == 3
    assert len(validation) == 1
    assert all(data not in training for data in validation)


def test_assign_validation_tiles_masks():
    tiles = _bare_tiles([1000, 1000, 1000, 1000])
    training, validation, _ = assign_validation(tiles, share=0.25, min_tiles=3, random_state=0)
    held_out_share = validation[0][TX].validation.float().mean().item()

    for data in training:
        assert not data[TX].validation.any()
    # A fixed random 30 % of a held-out tile's transcripts is scored in validation.
    assert 0.25 < held_out_share < 0.35


def test_assign_validation_tiles_count_rounds():
    tiles = _bare_tiles([10] * 10)
    training, validation, _ = assign_validation(tiles, share=0.15, min_tiles=10, random_state=0)

    # round(0.15 · 10) = 2 tiles are held out.
    assert len(validation) == 2
    assert len(training) == 8


def test_assign_validation_links_mode():
    tiles = _bare_tiles([1000, 1000])
    training, validation, kind = assign_validation(tiles, share=0.2, min_tiles=10, random_state=0)

    assert kind == "links"
    assert training == tiles
    assert validation == tiles


def test_assign_validation_links_share():
    tiles = _bare_tiles([2000, 2000])
    assign_validation(tiles, share=0.2, min_tiles=10, random_state=0)

    for data in tiles:
        assert 0.17 < data[TX].validation.float().mean().item() < 0.23


@pytest.mark.parametrize(("share", "expected"), [(0.0, False), (1.0, True)])
def test_assign_validation_links_extremes(share, expected):
    tiles = _bare_tiles([50, 30])
    assign_validation(tiles, share=share, min_tiles=10, random_state=0)

    for data in tiles:
        assert (data[TX].validation == expected).all()


def test_assign_validation_deterministic():
    first = _bare_tiles([100, 100, 100])
    second = _bare_tiles([100, 100, 100])
    assign_validation(first, share=0.3, min_tiles=10, random_state=7)
    assign_validation(second, share=0.3, min_tiles=10, random_state=7)

    for a, b in zip(first, second, strict=True):
        assert torch.equal(a[TX].validation, b[TX].validation)


def test_assign_validation_clears_old_marks():
    tiles = _bare_tiles([100, 100, 100, 100])
    for data in tiles:
        data[TX].validation = torch.ones(100, dtype=torch.bool)
    training, _, _ = assign_validation(tiles, share=0.25, min_tiles=3, random_state=0)

    for data in training:
        assert not data[TX].validation.any()


def test_training_step_hides_validation(tiny_model, training_tiles, monkeypatch):
    calls = []

    def spy(data, supervised, excluded, *, n_negatives):
        calls.append((data, supervised.clone(), excluded.clone()))
        return split_links(data, supervised, excluded, n_negatives=n_negatives)

    split_links = _training.split_links
    monkeypatch.setattr(_training, "split_links", spy)
    monkeypatch.setattr(SeggerModule, "log", lambda *args, **kwargs: None)
    assign_validation(training_tiles, share=0.3, min_tiles=10, random_state=0)
    module = SeggerModule(tiny_model(), _settings())
    for data in training_tiles:
        module.training_step(data, 0)

    assert len(calls) == len(training_tiles)
    for data, supervised, excluded in calls:
        validation = data[TX].validation
        eligible = inside_mask(data) & data[TX].core & ~validation
        assert supervised.any()
        assert not (supervised & ~eligible).any()
        assert not (validation & ~excluded).any()
        assert not (excluded & ~(supervised | validation)).any()


def test_validation_step_scores_validation(tiny_model, training_tiles, monkeypatch):
    calls = []

    def spy(data, supervised, excluded, *, n_negatives):
        calls.append((supervised.clone(), excluded.clone(), data[TX].validation.clone()))
        return split_links(data, supervised, excluded, n_negatives=n_negatives)

    split_links = _training.split_links
    monkeypatch.setattr(_training, "split_links", spy)
    monkeypatch.setattr(SeggerModule, "log", lambda *args, **kwargs: None)
    assign_validation(training_tiles, share=0.3, min_tiles=10, random_state=0)
    module = SeggerModule(tiny_model(), _settings())
    module.validation_step(training_tiles[0], 0)

    [(supervised, excluded, validation)] = calls
    assert torch.equal(excluded, validation)
    assert supervised.any()
    assert not (supervised & ~validation).any()


def test_top_candidate_accuracy_hand_computed():
    logits = torch.tensor([2.0, 1.0, 0.0, 3.0, 5.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    sources = torch.tensor([0, 0, 1, 1, 3])

    # Transcripts 0 and 3 rank their owner first, transcript 1 does not.
    assert _top_candidate_accuracy(logits, labels, sources).item() == pytest.approx(2.0 / 3.0)


def test_best_weights_keeps_lowest_loss():
    from types import SimpleNamespace

    from segger.models._training import _BestWeights

    network = torch.nn.Linear(1, 1)
    module = SimpleNamespace(model=network)
    callback = _BestWeights()
    for loss, weight in ((0.5, 1.0), (0.2, 2.0), (0.4, 3.0)):
        network.weight.data.fill_(weight)
        trainer = SimpleNamespace(
            callback_metrics={"val_loss": torch.tensor(loss)},
            sanity_checking=False,
            strategy=SimpleNamespace(broadcast=lambda value, src=0: value),  # one process
        )
        callback.on_validation_epoch_end(trainer, module)

    assert callback.best_loss == pytest.approx(0.2)
    assert callback.state["weight"].item() == 2.0
