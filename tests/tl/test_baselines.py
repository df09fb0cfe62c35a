from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import segger as sg
from segger.io._spatialdata import build_spatialdata

# Two square nuclei 6 µm apart, and transcripts at known distances from them. Row 0 is inside A,
# row 1 is 1 µm from A, and row 2 is 3.5 µm from A and 2.5 µm from B. Row 3 is 5 µm from A, row 4
# is far from both, row 5 is inside B and row 6 is a control probe inside A.
POSITIONS = [(2, 2), (5, 2), (7.5, 2), (2, 9), (30, 30), (12, 2), (2, 2.5)]
GENES = ["g1", "g2", "g1", "g2", "g1", "g2", "NegControlProbe_1"]
EXPECTED = {
    0: ["A", None, None, None, None, "B", "A"],
    3: ["A", "A", "B", None, None, "B", "A"],
    5: ["A", "A", "B", "A", None, "B", "A"],
}


def scene():
    points = pd.DataFrame(
        {
            "x": [float(x) for x, _ in POSITIONS],
            "y": [float(y) for _, y in POSITIONS],
            "feature_name": GENES,
            "transcript_id": np.arange(len(POSITIONS), dtype=np.int64),
            "cell_id": pd.array(["A", None, "B", None, None, "B", "A"], dtype="string"),
            "is_control": [gene.startswith("NegControl") for gene in GENES],
            "qv": 30.0,
        }
    )
    nuclei = gpd.GeoDataFrame(
        geometry=[shapely.box(0, 0, 4, 4), shapely.box(10, 0, 14, 4)], index=pd.Index(["A", "B"])
    )
    return build_spatialdata(points, {"nucleus_boundaries": nuclei})


def cell_ids(sdata, key):
    column = sdata.points["transcripts"].compute()[f"{key}_cell_id"]
    return [None if pd.isna(value) else value for value in column]


@pytest.mark.parametrize("distance", sorted(EXPECTED))
def test_expansion_assigns_within_distance(distance):
    sdata = scene()
    sg.tl.nucleus_expansion(sdata, distance=distance)

    assert cell_ids(sdata, "expansion") == EXPECTED[distance]


def test_expansion_table_and_shapes():
    sdata = scene()
    sg.tl.nucleus_expansion(sdata, distance=5, key_added="exp5")
    table = sdata.tables["exp5_table"]
    shapes = sdata.shapes["exp5_boundaries"]

    assert list(table.obs["cell_id"]) == ["A", "B"]
    assert list(table.obs["n_transcripts"]) == [3, 2]
    assert list(table.obs["prior_id"].astype(str)) == ["A", "B"]
    assert table.uns["exp5"]["params"]["method"] == "nucleus_expansion"
    assert table.uns["exp5"]["params"]["distance"] == 5.0
    assert shapes.loc["A"].geometry.covers(shapely.box(0, 0, 4, 4))
    assert shapes.loc["B"].geometry.covers(shapely.box(10, 0, 14, 4))


def test_expansion_scores_are_nan():
    sdata = scene()
    sg.tl.nucleus_expansion(sdata, distance=3)
    scores = sdata.points["transcripts"].compute()["expansion_score"]

    assert scores.isna().all()


def test_expansion_matches_toy_vendor_column():
    sdata = sg.datasets.toy(n_cells=60, random_state=1)
    sg.tl.nucleus_expansion(sdata, distance=5)
    points = sdata.points["transcripts"].compute()
    vendor = points["cell_id"].astype("string").fillna("")
    expansion = points["expansion_cell_id"].astype("string").fillna("")

    assert (vendor == expansion).mean() >= 0.999


@pytest.mark.parametrize("distance", [-1.0, float("nan"), float("inf"), "5"])
def test_expansion_invalid_distance(distance):
    sdata = scene()
    with pytest.raises(ValueError, match="distance"):
        sg.tl.nucleus_expansion(sdata, distance=distance)

    assert "expansion_boundaries" not in sdata.shapes


def test_expansion_existing_key_rejected():
    sdata = scene()
    sg.tl.nucleus_expansion(sdata, distance=0)
    with pytest.raises(ValueError, match="overwrite"):
        sg.tl.nucleus_expansion(sdata, distance=5)

    sg.tl.nucleus_expansion(sdata, distance=5, overwrite=True)
    assert cell_ids(sdata, "expansion") == EXPECTED[5]


def test_expansion_missing_shapes():
    sdata = scene()
    with pytest.raises(KeyError, match="cell_boundaries"):
        sg.tl.nucleus_expansion(sdata, shapes_key="cell_boundaries")


def test_expansion_failure_leaves_sdata(monkeypatch):
    sdata = scene()
    before = sdata.points["transcripts"].compute()

    def fail(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr("segger.tl._writeback._count_matrix", fail)
    with pytest.raises(RuntimeError, match="injected"):
        sg.tl.nucleus_expansion(sdata, distance=5)

    pd.testing.assert_frame_equal(sdata.points["transcripts"].compute(), before)
    assert list(sdata.shapes) == ["nucleus_boundaries"]
    assert list(sdata.tables) == []


def test_column_copies_vendor_ids():
    sdata = scene()
    sg.tl.from_transcript_column(sdata, column="cell_id")
    table = sdata.tables["vendor_table"]

    assert cell_ids(sdata, "vendor") == ["A", None, "B", None, None, "B", "A"]
    assert list(table.obs["cell_id"]) == ["A", "B"]
    assert list(table.obs["n_transcripts"]) == [1, 2]
    assert table.obs["prior_id"].isna().all()


def test_column_joins_named_shapes():
    sdata = scene()
    sg.tl.from_transcript_column(sdata, column="cell_id", shapes_key="nucleus_boundaries", key_added="v")
    shapes = sdata.shapes["v_boundaries"]

    assert list(sdata.tables["v_table"].obs["prior_id"].astype(str)) == ["A", "B"]
    assert shapes.loc["A"].geometry.covers(shapely.box(0, 0, 4, 4))


def test_column_missing():
    sdata = scene()
    with pytest.raises(KeyError, match="'vendor_id' not found"):
        sg.tl.from_transcript_column(sdata, column="vendor_id")

    assert list(sdata.tables) == []


def test_column_float_measurement_rejected():
    sdata = scene()
    points = sdata.points["transcripts"].compute()
    points["qv_like"] = np.linspace(0.5, 3.5, len(points))
    sdata = build_spatialdata(points.drop(columns=["feature_name"]).assign(feature_name=GENES), {})

    with pytest.raises(ValueError, match="it is a measurement, not a cell id"):
        sg.tl.from_transcript_column(sdata, column="qv_like")


def test_column_no_cell_code_warns(caplog):
    sdata = scene()
    points = sdata.points["transcripts"].compute()
    points["cell_number"] = [0, 0, 0, 0, 0, 2, 3]
    sdata = build_spatialdata(points.drop(columns=["feature_name"]).assign(feature_name=GENES), {})

    with caplog.at_level(logging.WARNING, logger="segger"):
        sg.tl.from_transcript_column(sdata, column="cell_number")

    assert "Cell id '0' of column 'cell_number' covers 71 %" in caplog.text
