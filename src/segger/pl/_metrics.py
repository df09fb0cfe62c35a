"""Bar charts of segmentation metrics and the MECR against the share of transcripts assigned."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes

from ._utils import METRIC_LABELS, PCT_ASSIGNED, bound_columns, metric_label, save_figure

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_COLUMNS = tuple(METRIC_LABELS)
"""Columns :func:`metrics` draws by default, in this order, where present with a value."""

_PANEL_COLUMNS = 4
_KEY_COLORS = colormaps["tab10"].colors


def metrics(
    df: pd.DataFrame,
    *,
    columns: Sequence[str] | str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    save: str | Path | None = None,
) -> np.ndarray:
    """Draw one horizontal bar chart per metric, with one bar per segmentation.

    Parameters
    ----------
    df
        Metrics table from :func:`segger.tl.segmentation_metrics`: one row per segmentation key (the
        index) and one numeric column per metric. A column ``c`` with bootstrap bounds in ``c_low``
        and ``c_high`` (such as ``mecr_low`` and ``mecr_high``) gets error bars where both are finite.
    columns
        Metrics to draw, one panel each, in this order. None draws those of ``n_cells``,
        ``pct_assigned``, ``median_transcripts``, ``median_genes``, ``median_area``, ``cells_per_mm2``,
        ``pct_nuclear``, ``mecr``, ``mecr_area_matched``, ``contamination``, ``ari``, ``pct_correct``,
        ``pct_wrong`` and ``pct_unassigned`` that ``df`` has with at least one finite value.
    ax
        As many axes as columns, in the same order (any shape, read row by row). A single axes is
        accepted for a single column. None creates a figure with up to four panels per row.
    save
        Path the figure of the first panel is written to, in the format its suffix names. None writes
        nothing.

    Returns
    -------
    A one-dimensional array of the panels' axes, in the order of ``columns``. Each panel contains one bar
    container with one bar per row of ``df``, each segmentation in the same colour across panels.

    Raises
    ------
    TypeError
        If ``df`` is not a pandas DataFrame.
    ValueError
        If ``df`` has no rows, if a requested column is missing or not numeric, if no default column is
        present, or if the number of axes in ``ax`` differs from the number of columns.
    """
    _check_table(df)
    columns = _metric_columns(df, columns)
    axes = _panel_axes(ax, n_panels=len(columns), n_rows=len(df))

    colors = [_KEY_COLORS[position % len(_KEY_COLORS)] for position in range(len(df))]
    for panel, column in zip(axes, columns, strict=True):
        _draw_bars(panel, df, column, colors=colors)

    save_figure(axes[0], save)
    return axes


def mecr_vs_assigned(
    df: pd.DataFrame,
    *,
    method: str | Mapping[str, str] | pd.Series | None = None,
    y: str = "mecr",
    label_points: bool = False,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Plot the MECR of each segmentation against its share of transcripts assigned.

    A segmentation that assigns fewer transcripts, only the ones closest to a nucleus, has a lower
    MECR, so methods are compared at the same ``pct_assigned``: a method whose curve lies below
    another's at the same x is better.

    Parameters
    ----------
    df
        Metrics table from :func:`segger.tl.segmentation_metrics`, indexed by segmentation key, with the
        columns ``pct_assigned`` and ``y``. Rows where either is missing are left out with a log line.
        Error bars come from ``f"{y}_low"`` and ``f"{y}_high"`` where both are present and finite.
    method
        Method of each row: the name of a column of ``df``, a mapping or Series from segmentation key to
        method name, or None to make every key its own method. Rows of one method (a sweep over a
        parameter) are joined by a line in the order of ``pct_assigned``.
    y
        Column drawn on the y axis, such as ``"mecr_area_matched"``.
    label_points
        Write the segmentation key next to each marker.
    ax
        Axes to draw into. None creates a new figure.
    save
        Path the figure is written to, in the format its suffix names. None writes nothing.

    Returns
    -------
    The axes drawn into, with one line labelled by method name per method, in the order of first
    appearance in ``df``, and a legend of these names.

    Raises
    ------
    TypeError
        If ``df`` is not a pandas DataFrame, or ``method`` is of another type than those listed.
    ValueError
        If ``pct_assigned`` or ``y`` are missing, if ``method`` names no column or leaves keys without a
        method, or if no row has both values.
    """
    _check_table(df)
    _check_columns_present(df, [PCT_ASSIGNED, y])
    methods = _method_names(df, method)
    table = _curve_table(df, y=y, methods=methods)

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for position, (name, rows) in enumerate(table.groupby("method", sort=False)):
        color = _KEY_COLORS[position % len(_KEY_COLORS)]
        _draw_method(ax, rows.sort_values("x", kind="stable"), name=str(name), color=color)
        if label_points:
            _label_points(ax, rows)

    ax.set_xlabel(metric_label(PCT_ASSIGNED))
    ax.set_ylabel(metric_label(y))
    ax.set_title(f"{metric_label(y).split(' (')[0]} at equal share assigned")
    ax.legend(title="method")
    save_figure(ax, save)
    return ax


def _check_table(df: pd.DataFrame) -> None:
    if not isinstance(df, pd.DataFrame):
        msg = (
            f"Expected the metrics table as a pandas DataFrame, got {type(df).__name__}. Pass the result "
            "of `sg.tl.segmentation_metrics`."
        )
        raise TypeError(msg)
    if df.empty:
        msg = "The metrics table has no rows. Pass the result of `sg.tl.segmentation_metrics` for at least one key."
        raise ValueError(msg)


def _check_columns_present(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in df.columns]
    if missing:
        msg = (
            f"The metrics table has no column {missing}. Its columns are {list(df.columns)}. Pass only "
            "columns that it has."
        )
        raise ValueError(msg)
    not_numeric = [column for column in columns if not pd.api.types.is_numeric_dtype(df[column])]
    if not_numeric:
        msg = f"Metrics columns {not_numeric} are not numeric. Pass numeric columns only."
        raise ValueError(msg)


def _metric_columns(df: pd.DataFrame, columns: Sequence[str] | str | None) -> list[str]:
    if isinstance(columns, str):
        columns = [columns]
    if columns is not None:
        columns = list(columns)
        if not columns:
            msg = "columns is empty. Pass at least one metrics column, or None for the default columns."
            raise ValueError(msg)
        _check_columns_present(df, columns)
        return columns

    present = [
        column
        for column in DEFAULT_COLUMNS
        if column in df.columns
        and pd.api.types.is_numeric_dtype(df[column])
        and np.isfinite(df[column]).any()
    ]
    if not present:
        msg = (
            f"The metrics table has none of the default columns {list(DEFAULT_COLUMNS)} with a value. Its "
            f"columns are {list(df.columns)}. Pass the columns to draw as `columns`."
        )
        raise ValueError(msg)
    return present


def _panel_axes(ax: Axes | Sequence[Axes] | None, *, n_panels: int, n_rows: int) -> np.ndarray:
    """Return ``n_panels`` axes: those of ``ax`` after checking their number, or a new figure's."""
    if ax is None:
        return _new_panels(n_panels, n_rows=n_rows)

    axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n_panels or not all(isinstance(panel, Axes) for panel in axes):
        msg = (
            f"ax must contain one matplotlib Axes per metrics column ({n_panels}), got {len(axes)} "
            f"object(s). Pass as many axes as columns, or ax=None to create the figure."
        )
        raise ValueError(msg)
    return _object_array(axes)


def _new_panels(n_panels: int, *, n_rows: int) -> np.ndarray:
    n_columns = min(n_panels, _PANEL_COLUMNS)
    n_lines = math.ceil(n_panels / n_columns)
    panel_height = 0.3 * n_rows + 1.2
    _, grid = plt.subplots(
        n_lines,
        n_columns,
        figsize=(3.8 * n_columns, panel_height * n_lines),
        squeeze=False,
        layout="constrained",
    )
    for unused in grid.flat[n_panels:]:
        unused.remove()
    return _object_array(list(grid.flat[:n_panels]))


def _object_array(items: list[Axes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _draw_bars(ax: Axes, df: pd.DataFrame, column: str, *, colors: list) -> None:
    values = df[column].to_numpy(dtype=float)
    positions = np.arange(len(df))
    container = ax.barh(positions, values, color=colors, xerr=_error_lengths(df, column))
    ax.bar_label(container, labels=[_format_value(value) for value in values], padding=3, fontsize="small")

    ax.set_yticks(positions, labels=df.index.astype(str))
    ax.invert_yaxis()
    ax.margins(x=0.2)
    ax.set_xlabel(metric_label(column))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _error_lengths(df: pd.DataFrame, column: str) -> np.ndarray | None:
    """Return the lengths below and above each value to its bootstrap bounds, or None without bounds."""
    low_column, high_column = bound_columns(column)
    if low_column not in df.columns or high_column not in df.columns:
        return None
    values = df[column].to_numpy(dtype=float)
    low = df[low_column].to_numpy(dtype=float)
    high = df[high_column].to_numpy(dtype=float)
    known = np.isfinite(low) & np.isfinite(high) & np.isfinite(values)
    if not known.any():
        return None
    # Lengths of 0 draw no visible error bar where a bound is missing.
    return np.where(known, [values - low, high - values], 0.0)


def _format_value(value: float) -> str:
    if not np.isfinite(value):
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _method_names(df: pd.DataFrame, method: str | Mapping[str, str] | pd.Series | None) -> pd.Series:
    """Return the method name of every row of ``df`` as strings, indexed like ``df``."""
    if method is None:
        return pd.Series(df.index.astype(str), index=df.index)
    if isinstance(method, str):
        if method not in df.columns:
            msg = (
                f"method={method!r} is not a column of the metrics table. Its columns are {list(df.columns)}. "
                "Pass a column name, a mapping from segmentation key to method, or None."
            )
            raise ValueError(msg)
        names = df[method]
    elif isinstance(method, pd.Series | Mapping):
        names = pd.Series([method.get(key) for key in df.index], index=df.index, dtype=object)
    else:
        msg = (
            f"method must be a column name, a mapping, a pandas Series or None, got {type(method).__name__}."
        )
        raise TypeError(msg)

    missing = names.isna().to_numpy()
    if missing.any():
        msg = (
            f"No method name for segmentation keys {list(df.index[missing])}. Give every row of the metrics "
            "table a method name."
        )
        raise ValueError(msg)
    return names.astype(str)


def _curve_table(df: pd.DataFrame, *, y: str, methods: pd.Series) -> pd.DataFrame:
    """Return x, y, bounds, method and key per row of ``df`` with finite x and y."""
    low_column, high_column = bound_columns(y)
    table = pd.DataFrame(
        {
            "x": df[PCT_ASSIGNED].to_numpy(dtype=float),
            "y": df[y].to_numpy(dtype=float),
            "low": df[low_column].to_numpy(dtype=float) if low_column in df.columns else np.nan,
            "high": df[high_column].to_numpy(dtype=float) if high_column in df.columns else np.nan,
            "method": methods.to_numpy(),
            "key": df.index.astype(str),
        }
    )

    drawn = np.isfinite(table["x"]) & np.isfinite(table["y"])
    if not drawn.any():
        msg = f"No row of the metrics table has both {PCT_ASSIGNED!r} and {y!r}, so there is nothing to draw."
        raise ValueError(msg)
    if not drawn.all():
        logger.info("Leaving out keys %s, which lack %r or %r.", list(table["key"][~drawn]), PCT_ASSIGNED, y)
    return table[drawn]


def _draw_method(ax: Axes, rows: pd.DataFrame, *, name: str, color: tuple) -> None:
    x = rows["x"].to_numpy()
    y = rows["y"].to_numpy()
    ax.plot(x, y, marker="o", linestyle="-" if len(rows) > 1 else "none", color=color, label=name)

    bounded = (np.isfinite(rows["low"]) & np.isfinite(rows["high"])).to_numpy()
    if bounded.any():
        below = y[bounded] - rows["low"].to_numpy()[bounded]
        above = rows["high"].to_numpy()[bounded] - y[bounded]
        ax.errorbar(
            x[bounded],
            y[bounded],
            yerr=[below, above],
            fmt="none",
            ecolor=color,
            capsize=3,
            label="_nolegend_",
        )


def _label_points(ax: Axes, rows: pd.DataFrame) -> None:
    for x, y, key in zip(rows["x"], rows["y"], rows["key"], strict=True):
        ax.annotate(key, (x, y), xytext=(4, 4), textcoords="offset points", fontsize="small")
