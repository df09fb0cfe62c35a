"""Training curves of a segger model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ._utils import save_figure

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
ACCURACY_COLOR = "tab:green"


def training_history(
    model_or_history: Any,
    *,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Plot the training and validation loss per epoch, and the validation accuracy on a second y axis.

    Parameters
    ----------
    model_or_history
        A trained :class:`segger.models.Segger`, or any object whose ``history`` attribute is a pandas
        DataFrame, or that DataFrame itself: one row per epoch with the columns ``epoch``,
        ``train_loss`` and ``val_loss``, and optionally ``val_accuracy``. Missing values (NaN) leave
        gaps.
    ax
        Axes to draw the losses into. None creates a new figure.
    save
        Path the figure is written to, in the format its suffix names. None writes nothing.

    Returns
    -------
    The axes with the losses, holding the lines ``"training loss"`` and ``"validation loss"`` and a
    dotted vertical line at the first epoch with the lowest validation loss, whose weights training
    keeps. When ``val_accuracy`` has a value, a twin axes sharing x contains the line
    ``"validation accuracy"``. The legend lists all of them.

    Raises
    ------
    TypeError
        If ``model_or_history`` is neither a DataFrame nor has a DataFrame ``history`` attribute.
    ValueError
        If the history has no rows or lacks ``epoch``, ``train_loss`` or ``val_loss``.
    """
    history = _history_frame(model_or_history)

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(history[EPOCH], history[TRAIN_LOSS], marker="o", label="training loss")
    ax.plot(history[EPOCH], history[VAL_LOSS], marker="o", label="validation loss")
    _mark_best_epoch(ax, history)
    twin = _draw_accuracy(ax, history)

    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Training history")
    _legend(ax, twin)
    save_figure(ax, save)
    return ax


def _history_frame(model_or_history: Any) -> pd.DataFrame:
    """Return the history sorted by epoch after checking its type, rows and columns."""
    history = model_or_history
    if not isinstance(history, pd.DataFrame):
        history = getattr(model_or_history, "history", None)
    if not isinstance(history, pd.DataFrame):
        msg = (
            "Expected a trained sg.models.Segger (or another object with a `history` DataFrame) or the "
            f"history DataFrame itself, got {type(model_or_history).__name__}."
        )
        raise TypeError(msg)

    missing = [column for column in (EPOCH, TRAIN_LOSS, VAL_LOSS) if column not in history.columns]
    if history.empty:
        msg = (
            "The training history is empty, so the model has not been trained. Train it with "
            "`sg.tl.segger_fit`, or pass a history with one row per epoch."
        )
        raise ValueError(msg)
    if missing:
        msg = (
            f"The training history lacks the columns {missing}. Its columns are {list(history.columns)}. "
            f"Pass a history with {EPOCH!r}, {TRAIN_LOSS!r} and {VAL_LOSS!r} per epoch."
        )
        raise ValueError(msg)
    return history.sort_values(EPOCH, kind="stable")


def _mark_best_epoch(ax: Axes, history: pd.DataFrame) -> None:
    """Draw a vertical line at the first epoch with the lowest validation loss, if any has a value."""
    val_loss = history[VAL_LOSS].to_numpy(dtype=float)
    if not np.isfinite(val_loss).any():
        logger.info("The history has no validation loss, so no best epoch is marked.")
        return
    best_epoch = history[EPOCH].to_numpy()[np.nanargmin(val_loss)]
    ax.axvline(
        best_epoch,
        color="0.4",
        linestyle=":",
        label=f"lowest validation loss (epoch {best_epoch})",
    )


def _draw_accuracy(ax: Axes, history: pd.DataFrame) -> Axes | None:
    """Draw the validation accuracy on a twin y axis and return it, or None without accuracy values."""
    if (
        VAL_ACCURACY not in history.columns
        or not np.isfinite(history[VAL_ACCURACY].to_numpy(dtype=float)).any()
    ):
        return None
    twin = ax.twinx()
    twin.plot(
        history[EPOCH],
        history[VAL_ACCURACY],
        marker="s",
        linestyle="--",
        color=ACCURACY_COLOR,
        label="validation accuracy",
    )
    twin.set_ylabel("validation accuracy")
    return twin


def _legend(ax: Axes, twin: Axes | None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        twin_handles, twin_labels = twin.get_legend_handles_labels()
        handles += twin_handles
        labels += twin_labels
        # A twin axes is drawn over its parent, which would hide the losses and the legend behind it.
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    # Below the x axis, where it covers neither axes' lines.
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)
