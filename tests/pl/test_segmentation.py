from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba

import segger as sg
from segger.pl._segmentation import NEIGHBOUR_DISTANCE
from segger.tl._writeback import points_frame, write_segmentation

KEY = "truth"
WINDOW = (10.0, 10.0, 30.0, 25.0)


@pytest.fixture(scope="module")
def sdata() -> spatialdata.SpatialData:
    """Toy section with its ground truth written as segmentation "truth"."""
    data = sg.datasets.toy(n_cells=20, random_state=0)
    write_segmentation(data, points_frame(data)["true_cell_id"], key_added=KEY)
    return data


@pytest.fixture(scope="module")
def frame(sdata: spatialdata.SpatialData) -> pd.DataFrame:
    return points_frame(sdata)


def _collection(ax: Axes, label: str):
    matches = [collection for collection in ax.collections if collection.get_label() == label]
    assert len(matches) == 1, f"expected one collection labelled {label!r}, got {len(matches)}"
    return matches[0]


def _legend_labels(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def _in_window(frame: pd.DataFrame, window: tuple[float, float, float, float]) -> pd.DataFrame:
    xmin, ymin, xmax, ymax = window
    inside = frame["x"].between(xmin, xmax) & frame["y"].between(ymin, ymax)
    return frame[inside]


def test_segmentation_draws_every_transcript_and_cell(sdata, frame):
    ax = sg.pl.segmentation(sdata, key=KEY, shapes_key="nucleus_boundaries")

    assigned = frame["truth_cell_id"].notna()
    assert isinstance(ax, Axes)
    assert len(_collection(ax, "assigned transcripts").get_offsets()) == int(assigned.sum())
    assert len(_collection(ax, "unassigned transcripts").get_offsets()) == int((~assigned).sum())
    assert len(_collection(ax, "truth_boundaries").get_paths()) == len(sdata.shapes["truth_boundaries"])
    assert len(_collection(ax, "nucleus_boundaries").get_paths()) == len(sdata.shapes["nucleus_boundaries"])
    assert ax.get_title() == "Segmentation 'truth': 20 cells"
    assert ax.get_xlabel() == "x (µm)"
    assert ax.get_ylabel() == "y (µm)"


def test_segmentation_unassigned_points_light_grey(sdata):
    ax = sg.pl.segmentation(sdata, key=KEY)

    colors = _collection(ax, "unassigned transcripts").get_facecolors()
    assert np.allclose(colors, to_rgba("lightgrey"))


def test_segmentation_hides_unassigned(sdata, frame):
    ax = sg.pl.segmentation(sdata, key=KEY, show_unassigned=False)

    labels = [collection.get_label() for collection in ax.collections]
    assert "unassigned transcripts" not in labels
    assert len(_collection(ax, "assigned transcripts").get_offsets()) == int(
        frame["truth_cell_id"].notna().sum()
    )
    assert _legend_labels(ax) == ["cells (truth_boundaries)"]


def test_segmentation_legend_labels(sdata):
    ax = sg.pl.segmentation(sdata, key=KEY, shapes_key="nucleus_boundaries")

    assert _legend_labels(ax) == ["unassigned transcripts", "cells (truth_boundaries)", "nucleus_boundaries"]


def test_segmentation_window_clips_points(sdata, frame):
    ax = sg.pl.segmentation(sdata, key=KEY, window=WINDOW, shapes_key="nucleus_boundaries")

    inside = _in_window(frame, WINDOW)
    n_assigned = int(inside["truth_cell_id"].notna().sum())
    assert 0 < n_assigned < frame["truth_cell_id"].notna().sum()
    assert len(_collection(ax, "assigned transcripts").get_offsets()) == n_assigned
    assert len(_collection(ax, "unassigned transcripts").get_offsets()) == len(inside) - n_assigned
    offsets = _collection(ax, "assigned transcripts").get_offsets()
    assert offsets[:, 0].min() >= WINDOW[0]
    assert offsets[:, 1].max() <= WINDOW[3]


def test_segmentation_window_selects_outlines(sdata):
    ax = sg.pl.segmentation(sdata, key=KEY, window=WINDOW, shapes_key="nucleus_boundaries")

    box = shapely.box(*WINDOW)
    n_cells = int(sdata.shapes["truth_boundaries"].intersects(box).sum())
    n_nuclei = int(sdata.shapes["nucleus_boundaries"].intersects(box).sum())
    assert 0 < n_cells < len(sdata.shapes["truth_boundaries"])
    assert len(_collection(ax, "truth_boundaries").get_paths()) == n_cells
    assert len(_collection(ax, "nucleus_boundaries").get_paths()) == n_nuclei
    assert ax.get_xlim() == (WINDOW[0], WINDOW[2])
    assert ax.get_ylim() == (WINDOW[3], WINDOW[1])


def test_segmentation_one_colour_per_cell(sdata, frame):
    ax = sg.pl.segmentation(sdata, key=KEY, show_unassigned=False)

    colors = _collection(ax, "assigned transcripts").get_facecolors()
    cell_ids = frame["truth_cell_id"].dropna().to_numpy()
    per_cell = pd.DataFrame(colors).groupby(cell_ids).nunique()
    assert (per_cell == 1).all().all()

    outline_colors = _collection(ax, "truth_boundaries").get_colors()
    point_colors = pd.DataFrame(colors).groupby(cell_ids).first()
    expected = point_colors.loc[sdata.shapes["truth_boundaries"].index.astype(str)].to_numpy()
    assert np.allclose(outline_colors, expected)


def test_segmentation_neighbours_differ_in_colour(sdata):
    ax = sg.pl.segmentation(sdata, key=KEY)

    outlines = sdata.shapes["truth_boundaries"].geometry.to_numpy()
    colors = _collection(ax, "truth_boundaries").get_colors()
    first, second = shapely.STRtree(outlines).query(
        outlines, predicate="dwithin", distance=NEIGHBOUR_DISTANCE
    )
    pairs = first < second
    assert pairs.sum() > 0
    assert not np.all(colors[first[pairs]] == colors[second[pairs]], axis=1).any()


def test_segmentation_colours_follow_random_state(sdata):
    first = sg.pl.segmentation(sdata, key=KEY, random_state=1)
    again = sg.pl.segmentation(sdata, key=KEY, random_state=1)
    other = sg.pl.segmentation(sdata, key=KEY, random_state=2)

    colors = _collection(first, "truth_boundaries").get_colors()
    assert np.array_equal(colors, _collection(again, "truth_boundaries").get_colors())
    assert not np.array_equal(colors, _collection(other, "truth_boundaries").get_colors())


def test_segmentation_max_points_subsamples(sdata, frame):
    ax = sg.pl.segmentation(sdata, key=KEY, max_points=100)

    n_drawn = sum(len(collection.get_offsets()) for collection in ax.collections[:2])
    assert n_drawn == 100
    assert len(frame) > 100


def test_segmentation_draws_into_given_axes(sdata):
    _, own_ax = plt.subplots()
    ax = sg.pl.segmentation(sdata, key=KEY)

    assert sg.pl.segmentation(sdata, key=KEY, ax=own_ax) is own_ax
    assert ax is not own_ax


def test_segmentation_saves_png(sdata, tmp_path: Path):
    path = tmp_path / "segmentation.png"
    sg.pl.segmentation(sdata, key=KEY, window=WINDOW, save=path)

    content = path.read_bytes()
    assert content.startswith(b"\x89PNG")
    assert len(content) > 1000


def test_segmentation_leaves_sdata_unchanged(sdata, frame):
    shapes_before = {name: element.copy() for name, element in sdata.shapes.items()}
    tables_before = set(sdata.tables)

    sg.pl.segmentation(sdata, key=KEY, window=WINDOW, shapes_key="nucleus_boundaries", max_points=50)

    pd.testing.assert_frame_equal(points_frame(sdata), frame)
    assert set(sdata.shapes) == set(shapes_before)
    for name, element in shapes_before.items():
        assert sdata.shapes[name].geom_equals(element).all()
        assert sdata.shapes[name].index.equals(element.index)
    assert set(sdata.tables) == tables_before


def test_segmentation_unknown_key_lists_keys(sdata):
    with pytest.raises(ValueError, match=r"no column 'other_cell_id'.*\['truth'\]"):
        sg.pl.segmentation(sdata, key="other")


def test_segmentation_missing_boundaries(sdata):
    # "true" has the points column true_cell_id but no shapes true_boundaries.
    with pytest.raises(ValueError, match="no shapes element 'true_boundaries'"):
        sg.pl.segmentation(sdata, key="true")


def test_segmentation_missing_points_element(sdata):
    with pytest.raises(KeyError, match="'spots' not found"):
        sg.pl.segmentation(sdata, key=KEY, points_key="spots")


def test_segmentation_missing_prior_shapes(sdata):
    with pytest.raises(ValueError, match="'cell_boundaries' not found"):
        sg.pl.segmentation(sdata, key=KEY, shapes_key="cell_boundaries")


@pytest.mark.parametrize(
    "window",
    [(0.0, 0.0, 10.0), (10.0, 0.0, 5.0, 10.0), (0.0, 10.0, 10.0, 10.0), (0.0, 0.0, np.nan, 10.0), "0,0,1,1"],
)
def test_segmentation_rejects_malformed_window(sdata, window):
    with pytest.raises(ValueError, match=r"window=.* is invalid: expected four finite numbers"):
        sg.pl.segmentation(sdata, key=KEY, window=window)


def test_segmentation_empty_window(sdata):
    with pytest.raises(
        ValueError, match=r"No transcript of points 'transcripts' lies in window=.*span x from"
    ):
        sg.pl.segmentation(sdata, key=KEY, window=(1000.0, 1000.0, 1010.0, 1010.0))


@pytest.mark.parametrize("max_points", [0, -5, 2.5, True])
def test_segmentation_rejects_invalid_max_points(sdata, max_points):
    with pytest.raises(ValueError, match=r"max_points=.* is invalid"):
        sg.pl.segmentation(sdata, key=KEY, max_points=max_points)
