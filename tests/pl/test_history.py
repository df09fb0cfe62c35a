from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes

import segger as sg


@pytest.fixture
def history() -> pd.DataFrame:
    """Five epochs in the layout of `sg.models.Segger.history`. The validation loss is lowest at epoch 2."""
    return pd.DataFrame(
        {
            "epoch": [0, 1, 2, 3, 4],
            "step": [10, 20, 30, 40, 50],
            "train_loss": [0.9, 0.7, 0.6, 0.55, 0.5],
            "val_loss": [0.8, 0.65, 0.6, 0.62, 0.6],
            "val_accuracy": [0.6, 0.7, 0.75, np.nan, 0.74],
        }
    )


def _lines(ax: Axes) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


def _legend_labels(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_training_history_draws_losses(history):
    ax = sg.pl.training_history(history)

    lines = _lines(ax)
    assert list(lines["training loss"].get_ydata()) == history["train_loss"].tolist()
    assert list(lines["validation loss"].get_ydata()) == history["val_loss"].tolist()
    assert list(lines["training loss"].get_xdata()) == [0, 1, 2, 3, 4]
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "loss"


def test_training_history_marks_first_best_epoch(history):
    ax = sg.pl.training_history(history)

    # Epochs 2 and 4 tie at 0.6, and training keeps the weights of the first.
    best = _lines(ax)["lowest validation loss (epoch 2)"]
    assert list(best.get_xdata()) == [2, 2]


def test_training_history_accuracy_on_twin_axis(history):
    ax = sg.pl.training_history(history)

    twins = [other for other in ax.figure.axes if other is not ax]
    assert len(twins) == 1
    accuracy = _lines(twins[0])["validation accuracy"]
    assert np.array_equal(accuracy.get_ydata(), history["val_accuracy"].to_numpy(), equal_nan=True)
    assert "validation accuracy" not in _lines(ax)
    assert _legend_labels(ax) == [
        "training loss",
        "validation loss",
        "lowest validation loss (epoch 2)",
        "validation accuracy",
    ]


def test_training_history_without_accuracy(history):
    ax = sg.pl.training_history(history.drop(columns=["val_accuracy"]))

    assert ax.figure.axes == [ax]
    assert "validation accuracy" not in _legend_labels(ax)


def test_training_history_without_validation(history):
    history["val_loss"] = np.nan
    history["val_accuracy"] = np.nan
    ax = sg.pl.training_history(history)

    assert _legend_labels(ax) == ["training loss", "validation loss"]
    assert ax.figure.axes == [ax]


def test_training_history_sorts_epochs(history):
    ax = sg.pl.training_history(history.iloc[::-1])

    assert list(_lines(ax)["training loss"].get_xdata()) == [0, 1, 2, 3, 4]


def test_training_history_from_model_attribute(history):
    model = SimpleNamespace(history=history)
    ax = sg.pl.training_history(model)

    assert list(_lines(ax)["validation loss"].get_ydata()) == history["val_loss"].tolist()


def test_training_history_from_untrained_model():
    model = sg.models.Segger(["A", "B"])

    with pytest.raises(ValueError, match="training history is empty"):
        sg.pl.training_history(model)


def test_training_history_missing_columns(history):
    with pytest.raises(ValueError, match=r"lacks the columns \['val_loss'\]"):
        sg.pl.training_history(history.drop(columns=["val_loss"]))


def test_training_history_rejects_other_types():
    with pytest.raises(TypeError, match="got dict"):
        sg.pl.training_history({"epoch": [0]})


def test_training_history_draws_into_given_axes(history):
    _, own_ax = plt.subplots()

    assert sg.pl.training_history(history, ax=own_ax) is own_ax


def test_training_history_saves_png(history, tmp_path: Path):
    path = tmp_path / "history.png"
    sg.pl.training_history(history, save=path)

    assert path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size > 1000


def test_training_history_saves_from_subfigure(history, tmp_path: Path):
    figure = plt.figure()
    left, _ = figure.subfigures(1, 2)
    path = tmp_path / "history.png"
    sg.pl.training_history(history, ax=left.subplots(), save=path)

    assert path.read_bytes().startswith(b"\x89PNG")
