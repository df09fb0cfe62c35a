from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer, ErrorbarContainer

import segger as sg

KEYS = ["segger", "segger_0.3", "segger_0.7", "expansion_5", "vendor"]
METHODS = ["segger", "segger", "segger", "expansion", "vendor"]


@pytest.fixture
def table() -> pd.DataFrame:
    """Metrics of five segmentations: a three-point segger sweep, one baseline and the vendor's."""
    return pd.DataFrame(
        {
            "n_cells": [20, 22, 19, 20, 18],
            "pct_assigned": [85.0, 90.0, 70.0, 80.0, 75.0],
            "median_transcripts": [95.0, 99.0, 80.0, 90.0, 85.0],
            "median_area": [110.0, 120.0, 90.0, 130.0, 100.0],
            "mecr": [0.05, 0.08, 0.03, 0.10, 0.06],
            "mecr_low": [0.04, 0.07, np.nan, 0.08, 0.05],
            "mecr_high": [0.06, 0.09, np.nan, 0.12, 0.07],
            "mecr_area_matched": [0.04, 0.07, 0.02, 0.09, 0.05],
            "ari": [np.nan] * 5,
            "method": METHODS,
        },
        index=pd.Index(KEYS, name="key"),
    )


def _legend_labels(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def _labelled_lines(ax: Axes) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_metrics_default_columns(table):
    axes = sg.pl.metrics(table)

    # "ari" has no value and "method" is not a metric, so neither gets a panel.
    assert axes.shape == (6,)
    assert [panel.get_xlabel() for panel in axes] == [
        "Cells",
        "Transcripts assigned (%)",
        "Median transcripts per cell",
        "Median cell area (µm²)",
        "MECR (lower is better)",
        "MECR, area-matched (lower is better)",
    ]
    assert len(axes[0].figure.axes) == 6


def test_metrics_one_bar_per_key(table):
    axes = sg.pl.metrics(table, columns=["mecr", "n_cells"])

    for panel, column in zip(axes, ["mecr", "n_cells"], strict=True):
        bars = [container for container in panel.containers if isinstance(container, BarContainer)]
        assert len(bars) == 1
        assert [patch.get_width() for patch in bars[0]] == pytest.approx(table[column].tolist())
        assert [label.get_text() for label in panel.get_yticklabels()] == KEYS


def test_metrics_same_colour_per_key_across_panels(table):
    axes = sg.pl.metrics(table, columns=["mecr", "n_cells"])

    first = [patch.get_facecolor() for patch in axes[0].patches]
    second = [patch.get_facecolor() for patch in axes[1].patches]
    assert first == second
    assert len(set(first)) == len(KEYS)


def test_metrics_error_bars_from_bounds(table):
    axes = sg.pl.metrics(table, columns=["mecr", "median_area"])

    assert any(isinstance(c, BarContainer) and c.errorbar is not None for c in axes[0].containers)
    assert all(c.errorbar is None for c in axes[1].containers if isinstance(c, BarContainer))


def test_metrics_single_column_string(table):
    axes = sg.pl.metrics(table, columns="ari")

    assert axes.shape == (1,)
    assert axes[0].get_xlabel() == "ARI with truth (higher is better)"


def test_metrics_draws_into_given_axes(table):
    _, grid = plt.subplots(1, 2)
    axes = sg.pl.metrics(table, columns=["mecr", "n_cells"], ax=grid)

    assert list(axes) == list(grid)


def test_metrics_rejects_wrong_number_of_axes(table):
    _, grid = plt.subplots(1, 3)

    with pytest.raises(ValueError, match=r"one matplotlib Axes per metrics column \(2\), got 3"):
        sg.pl.metrics(table, columns=["mecr", "n_cells"], ax=grid)


def test_metrics_rejects_single_axes_for_several_columns(table):
    _, ax = plt.subplots()

    with pytest.raises(ValueError, match=r"per metrics column \(2\), got 1"):
        sg.pl.metrics(table, columns=["mecr", "n_cells"], ax=ax)


def test_metrics_missing_column(table):
    with pytest.raises(ValueError, match=r"no column \['contamination'\]"):
        sg.pl.metrics(table, columns=["mecr", "contamination"])


def test_metrics_non_numeric_column(table):
    with pytest.raises(ValueError, match=r"\['method'\] are not numeric"):
        sg.pl.metrics(table, columns=["method"])


def test_metrics_without_default_columns():
    with pytest.raises(ValueError, match="none of the default columns"):
        sg.pl.metrics(pd.DataFrame({"score": [1.0]}, index=["a"]))


def test_metrics_empty_table():
    with pytest.raises(ValueError, match="no rows"):
        sg.pl.metrics(pd.DataFrame(columns=["mecr"]))


def test_metrics_saves_png(table, tmp_path: Path):
    path = tmp_path / "metrics.png"
    sg.pl.metrics(table, save=path)

    assert path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size > 1000


def test_mecr_vs_assigned_one_line_per_method(table):
    ax = sg.pl.mecr_vs_assigned(table, method="method")

    lines = _labelled_lines(ax)
    assert list(lines) == ["segger", "expansion", "vendor"]
    assert _legend_labels(ax) == ["segger", "expansion", "vendor"]
    assert ax.get_legend().get_title().get_text() == "method"
    assert ax.get_xlabel() == "Transcripts assigned (%)"
    assert ax.get_ylabel() == "MECR (lower is better)"


def test_mecr_vs_assigned_sweep_sorted_by_assigned(table):
    ax = sg.pl.mecr_vs_assigned(table, method="method")

    sweep = _labelled_lines(ax)["segger"]
    assert list(sweep.get_xdata()) == [70.0, 85.0, 90.0]
    assert list(sweep.get_ydata()) == [0.03, 0.05, 0.08]
    assert sweep.get_linestyle() == "-"
    assert _labelled_lines(ax)["vendor"].get_linestyle() == "None"


def test_mecr_vs_assigned_each_key_own_method(table):
    ax = sg.pl.mecr_vs_assigned(table)

    assert list(_labelled_lines(ax)) == KEYS
    assert all(line.get_linestyle() == "None" for line in _labelled_lines(ax).values())


def test_mecr_vs_assigned_method_mapping(table):
    mapping = {key: ("segger" if key.startswith("segger") else "baseline") for key in KEYS}

    from_dict = sg.pl.mecr_vs_assigned(table, method=mapping)
    from_series = sg.pl.mecr_vs_assigned(table, method=pd.Series(mapping))

    assert list(_labelled_lines(from_dict)) == ["segger", "baseline"]
    assert list(_labelled_lines(from_series)) == ["segger", "baseline"]


def test_mecr_vs_assigned_error_bars_where_bounds_finite(table):
    ax = sg.pl.mecr_vs_assigned(table, method="method")

    errorbars = [container for container in ax.containers if isinstance(container, ErrorbarContainer)]
    # segger_0.7 has no bounds, so the segger sweep has error bars at two of its three points.
    assert len(errorbars) == 3
    assert [len(container.lines[2][0].get_segments()) for container in errorbars] == [2, 1, 1]


def test_mecr_vs_assigned_without_bounds(table):
    ax = sg.pl.mecr_vs_assigned(table.drop(columns=["mecr_low", "mecr_high"]))

    assert not [container for container in ax.containers if isinstance(container, ErrorbarContainer)]


def test_mecr_vs_assigned_area_matched(table):
    ax = sg.pl.mecr_vs_assigned(table, method="method", y="mecr_area_matched")

    assert ax.get_ylabel() == "MECR, area-matched (lower is better)"
    assert list(_labelled_lines(ax)["segger"].get_ydata()) == [0.02, 0.04, 0.07]


def test_mecr_vs_assigned_leaves_out_missing_rows(table):
    table.loc["vendor", "mecr"] = np.nan
    ax = sg.pl.mecr_vs_assigned(table, method="method")

    assert list(_labelled_lines(ax)) == ["segger", "expansion"]


def test_mecr_vs_assigned_labels_points(table):
    ax = sg.pl.mecr_vs_assigned(table, method="method", label_points=True)

    assert sorted(text.get_text() for text in ax.texts) == sorted(KEYS)


def test_mecr_vs_assigned_unknown_method_column(table):
    with pytest.raises(ValueError, match="method='tool' is not a column"):
        sg.pl.mecr_vs_assigned(table, method="tool")


def test_mecr_vs_assigned_incomplete_mapping(table):
    with pytest.raises(ValueError, match=r"No method name for segmentation keys \['vendor'\]"):
        sg.pl.mecr_vs_assigned(table, method=dict.fromkeys(KEYS[:-1], "x"))


def test_mecr_vs_assigned_missing_column(table):
    with pytest.raises(ValueError, match=r"no column \['pct_assigned'\]"):
        sg.pl.mecr_vs_assigned(table.drop(columns=["pct_assigned"]))


def test_mecr_vs_assigned_no_complete_row(table):
    table["mecr"] = np.nan

    with pytest.raises(ValueError, match="No row of the metrics table has both"):
        sg.pl.mecr_vs_assigned(table)


def test_mecr_vs_assigned_saves_png(table, tmp_path: Path):
    path = tmp_path / "mecr.png"
    ax = sg.pl.mecr_vs_assigned(table, method="method", save=path)

    assert isinstance(ax, Axes)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size > 1000
