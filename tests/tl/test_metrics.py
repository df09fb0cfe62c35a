from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import segger as sg
from segger.io._spatialdata import build_spatialdata
from segger.tl._writeback import write_segmentation

# Four cells on a line. Gene "a" marks type A, "b" marks type B and "x" marks nothing.
# c1 contains a, a, x. c2 contains b, x. c3 contains a, b. c4 contains x. One x is unassigned, one control
# sits in c1 and one low-quality b in c2. Neither of the last two is counted.
ROWS = [
    # x, y, gene, cell, overlaps_nucleus, qv
    (0.0, 0.0, "a", "c1", True, 30),
    (1.0, 0.5, "a", "c1", True, 30),
    (0.5, 1.0, "x", "c1", False, 30),
    (20.0, 0.0, "b", "c2", True, 30),
    (21.0, 1.0, "x", "c2", False, 30),
    (45.0, 0.0, "a", "c3", True, 30),
    (46.0, 1.0, "b", "c3", False, 30),
    (100.0, 0.0, "x", "c4", False, 30),
    (70.0, 30.0, "x", None, False, 30),
    (0.5, 0.5, "NegControlProbe_1", "c1", False, 30),
    (20.5, 0.5, "b", "c2", False, 5),
]
MARKERS = {"A": ["a"], "B": ["b"]}


@pytest.fixture
def scene():
    points = pd.DataFrame(ROWS, columns=["x", "y", "feature_name", "truth", "overlaps_nucleus", "qv"])
    points["qv"] = points["qv"].astype(float)
    points["truth"] = points["truth"].astype("string")
    points["is_control"] = points["feature_name"].str.startswith("NegControl")
    nuclei = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], index=pd.Index(["c1"]))
    sdata = build_spatialdata(points, {"nucleus_boundaries": nuclei})
    write_segmentation(sdata, points["truth"], key_added="hand")
    return sdata


def measure(sdata, **kwargs):
    options = {"markers": MARKERS, "n_bootstrap": 0, "truth_column": None} | kwargs
    return sg.tl.segmentation_metrics(sdata, **options)


def test_metrics_counts(scene):
    row = measure(scene).loc["hand"]

    assert row["n_cells"] == 4
    assert row["pct_assigned"] == pytest.approx(100 * 8 / 9)
    assert row["median_transcripts"] == 2
    assert row["median_genes"] == 2
    assert row["pct_nuclear"] == pytest.approx(50.0)


def test_metrics_density_and_area(scene):
    row = measure(scene).loc["hand"]
    counted = [(x, y) for x, y, gene, _, _, qv in ROWS if not gene.startswith("NegControl") and qv >= 20]
    hull = shapely.convex_hull(shapely.multipoints(counted)).area
    areas = scene.shapes["hand_boundaries"].area

    assert row["cells_per_mm2"] == pytest.approx(4 / hull * 1e6)
    assert row["median_area"] == pytest.approx(np.median(areas))


def test_metrics_mecr_by_hand(scene):
    row = measure(scene).loc["hand"]

    # Cells expressing a and b: c3; expressing either: c1, c2, c3.
    assert row["mecr"] == pytest.approx(1 / 3)


def test_metrics_one_area_bin_equals_mecr(scene):
    row = measure(scene, n_area_bins=1).loc["hand"]

    assert row["mecr_area_matched"] == pytest.approx(row["mecr"])


def test_metrics_contamination_by_hand(scene):
    row = measure(scene, n_neighbors=1).loc["hand"]

    # c1 (type A) and c2 (type B) contain no marker of their nearest cell's type. c3 ties a and b,
    # so it takes type A, the first listed. Its nearest cell c2 is of type B, and b is half of c3.
    assert row["contamination"] == pytest.approx(0.5 / 3)


def test_metrics_bootstrap_interval(scene):
    first = measure(scene, n_bootstrap=50, random_state=1).loc["hand"]
    second = measure(scene, n_bootstrap=50, random_state=1).loc["hand"]

    assert first["mecr_low"] <= first["mecr"] <= first["mecr_high"]
    assert first["mecr_low"] < first["mecr_high"]
    assert first["mecr_low"] == second["mecr_low"]
    assert first["mecr_high"] == second["mecr_high"]


def test_metrics_without_bootstrap(scene):
    row = measure(scene).loc["hand"]

    assert np.isnan(row["mecr_low"])
    assert np.isnan(row["mecr_high"])


def test_metrics_truth_perfect(scene):
    row = measure(scene, truth_column="truth").loc["hand"]

    assert row["ari"] == pytest.approx(1.0)
    assert row["pct_correct"] == pytest.approx(100.0)
    assert row["pct_unassigned"] == 0


def test_metrics_truth_split_cell(scene):
    # c1 split in two: its larger part stays correct, the smaller one is wrong.
    split = scene.points["transcripts"].compute()["truth"].copy()
    split.iloc[2] = "c1b"
    write_segmentation(scene, split, key_added="split")
    row = measure(scene, keys=["split"], truth_column="truth").loc["split"]

    assert row["pct_correct"] == pytest.approx(100 * 7 / 8)
    assert row["pct_wrong"] == pytest.approx(100 * 1 / 8)
    # Pairs together in both: 3 of 28, expected 15/28 by chance, maximum 4, so ARI = 69/97.
    assert row["ari"] == pytest.approx(69 / 97)


def test_metrics_default_keys_skip_plain_columns(scene):
    table = measure(scene)

    assert list(table.index) == ["hand"]
    assert table.attrs["markers"] == MARKERS


def test_metrics_missing_key(scene):
    with pytest.raises(KeyError, match="Stored segmentations: \\['hand'\\]"):
        measure(scene, keys=["segger"])


def test_metrics_missing_truth_column(scene):
    with pytest.raises(KeyError, match="'label' not found"):
        measure(scene, truth_column="label")


def test_metrics_marker_not_in_panel(scene):
    with pytest.raises(ValueError, match=r"\['GAPDH'\] of 'A' are not among the 3 counted genes .* a, b, x"):
        measure(scene, markers={"A": ["a", "GAPDH"], "B": ["b"]})


def test_metrics_marker_in_two_types(scene):
    with pytest.raises(ValueError, match="more than one type"):
        measure(scene, markers={"A": ["a"], "B": ["a", "b"]})


def test_metrics_markers_as_string(scene):
    with pytest.raises(TypeError, match="list of genes"):
        measure(scene, markers={"A": "a", "B": ["b"]})


@pytest.mark.parametrize(
    ("option", "value"), [("n_area_bins", 0), ("n_neighbors", 0), ("n_bootstrap", -1), ("confidence", 1.0)]
)
def test_metrics_invalid_option(scene, option, value):
    with pytest.raises(ValueError, match=option):
        measure(scene, **{option: value})


def test_metrics_leave_sdata(scene):
    before = scene.points["transcripts"].compute()
    elements = sorted(name for _, name, _ in scene.gen_elements())
    measure(scene, n_bootstrap=10)

    pd.testing.assert_frame_equal(scene.points["transcripts"].compute(), before)
    assert sorted(name for _, name, _ in scene.gen_elements()) == elements


def test_metrics_toy_baselines():
    sdata = sg.datasets.toy(n_cells=80, random_state=2)
    for distance in (0, 3, 6):
        sg.tl.nucleus_expansion(sdata, distance=distance, key_added=f"expansion_{distance}")
    sg.tl.from_transcript_column(sdata, column="true_cell_id", key_added="truth")
    markers = {kind: [f"{kind}_{i:02d}" for i in range(1, 11)] for kind in ("epithelial", "immune")}
    table = sg.tl.segmentation_metrics(sdata, markers=markers, n_bootstrap=0)

    assert table.loc["truth", "mecr"] == 0
    assert table.loc["truth", "pct_correct"] == pytest.approx(100.0)
    # Larger expansions assign more transcripts and mix more cell types.
    assert list(table["pct_assigned"].iloc[:3]) == sorted(table["pct_assigned"].iloc[:3])
    assert list(table["mecr"].iloc[:3]) == sorted(table["mecr"].iloc[:3])
    assert table.loc["expansion_0", "pct_nuclear"] == pytest.approx(100.0)


def test_find_markers_toy():
    sdata = sg.datasets.toy(n_cells=150, random_state=0)
    sg.tl.from_transcript_column(sdata, column="cell_id", key_added="vendor")
    markers = sg.tl.find_markers(sdata, key="vendor")
    kinds = {name: {gene.split("_")[0] for gene in genes} for name, genes in markers.items()}

    assert len(markers) == 4
    assert all(len(found) == 1 for found in kinds.values())
    assert {next(iter(found)) for found in kinds.values()} == {
        "epithelial",
        "fibroblast",
        "immune",
        "endothelial",
    }


def test_find_markers_too_few_cells(scene):
    with pytest.raises(ValueError, match="clustering needs at least 3"):
        sg.tl.find_markers(scene, key="hand")
