from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from geopandas.testing import assert_geodataframe_equal
from scipy.spatial import cKDTree

import segger as sg
from segger import _constants as C
from segger.datasets import _toy
from segger.io._spatialdata import flag_controls

CELL_TYPES = ("epithelial", "fibroblast", "immune", "endothelial")


def _points(sdata) -> pd.DataFrame:
    return sdata[C.POINTS_KEY].compute()


def _vendor_accuracy(points: pd.DataFrame) -> float:
    """Share of transcripts with a true cell whose vendor cell_id is that cell (NA counts as wrong)."""
    in_cell = points[points[C.TRUE_CELL_ID].notna()]
    correct = (in_cell[C.CELL_ID] == in_cell[C.TRUE_CELL_ID]).fillna(False)
    return float(correct.mean())


@pytest.fixture(scope="module")
def sdata():
    return sg.datasets.toy(random_state=0)


@pytest.fixture(scope="module")
def points(sdata) -> pd.DataFrame:
    return _points(sdata)


@pytest.fixture(scope="module")
def nuclei(sdata):
    return sdata[C.NUCLEUS_SHAPES_KEY]


def test_points_dtypes(points):
    assert list(points.columns) == [
        C.X,
        C.Y,
        C.Z,
        C.FEATURE_NAME,
        C.TRANSCRIPT_ID,
        C.CELL_ID,
        C.OVERLAPS_NUCLEUS,
        C.QV,
        C.IS_CONTROL,
        C.TRUE_CELL_ID,
        _toy.TRUE_CELL_TYPE,
    ]
    for column in (C.X, C.Y, C.Z, C.QV):
        assert points[column].dtype == np.float32, column
    assert points[C.TRANSCRIPT_ID].dtype == np.int64
    assert isinstance(points[C.FEATURE_NAME].dtype, pd.CategoricalDtype)
    assert isinstance(points[C.CELL_ID].dtype, pd.StringDtype)
    assert isinstance(points[C.TRUE_CELL_ID].dtype, pd.StringDtype)
    assert points[C.OVERLAPS_NUCLEUS].dtype == bool
    assert points[C.IS_CONTROL].dtype == bool
    assert list(points[_toy.TRUE_CELL_TYPE].cat.categories) == list(CELL_TYPES)


def test_default_size(points):
    assert 10_000 <= len(points) <= 20_000
    assert points[C.TRUE_CELL_ID].nunique() == 150


def test_coordinates_inside_section(points, nuclei):
    xmin, ymin, xmax, ymax = nuclei.total_bounds
    assert xmin >= 0.0
    assert ymin >= 0.0
    assert points[C.X].min() >= 0.0
    assert points[C.Y].min() >= 0.0
    side = max(points[C.X].max(), points[C.Y].max())
    assert xmax <= side + 1e-3
    assert ymax <= side + 1e-3


def test_z_spans_thin_section(points):
    assert points[C.Z].min() >= 0.0
    assert points[C.Z].max() <= _toy.SECTION_THICKNESS
    assert points[C.Z].std() > 0.5


def test_transcript_id_unique(points):
    assert points[C.TRANSCRIPT_ID].is_unique
    assert points[C.TRANSCRIPT_ID].min() >= 0


def test_overlaps_nucleus_is_own_polygon(points, nuclei):
    assigned = points[points[C.CELL_ID].notna()]
    polygons = nuclei.geometry.reindex(assigned[C.CELL_ID].to_numpy()).to_numpy()
    inside = shapely.intersects_xy(
        polygons, assigned[C.X].to_numpy(np.float64), assigned[C.Y].to_numpy(np.float64)
    )
    np.testing.assert_array_equal(assigned[C.OVERLAPS_NUCLEUS].to_numpy(), inside)
    assert not points.loc[points[C.CELL_ID].isna(), C.OVERLAPS_NUCLEUS].any()
    assert assigned[C.OVERLAPS_NUCLEUS].sum() > 0


def test_cell_id_is_nearest_nucleus(points, nuclei):
    xy = shapely.points(points[[C.X, C.Y]].to_numpy(np.float64))
    (point, hit), _ = shapely.STRtree(nuclei.geometry.to_numpy()).query_nearest(
        xy, max_distance=_toy.EXPANSION_DISTANCE, return_distance=True, all_matches=False
    )
    expected = pd.Series(pd.NA, index=points.index, dtype=points[C.CELL_ID].dtype)
    expected.iloc[point] = nuclei.index.to_numpy()[hit]
    pd.testing.assert_series_equal(points[C.CELL_ID], expected, check_names=False)


def test_crowded_points_same_assignment(monkeypatch, points):
    # With two candidates most points fall back to shapely's search, which must agree.
    monkeypatch.setattr(_toy, "_N_NUCLEUS_CANDIDATES", 2)
    pd.testing.assert_frame_equal(_points(sg.datasets.toy(random_state=0)), points)


def test_nuclei_indexed_by_cell_id(points, nuclei):
    assert nuclei.index.name == C.CELL_ID
    assert nuclei.index.is_unique
    assert nuclei.index.str.fullmatch(r"cell-\d{5}").all()
    assert set(points[C.CELL_ID].dropna()) <= set(nuclei.index)
    assert set(nuclei.index) <= set(points[C.TRUE_CELL_ID].dropna())


def test_nuclei_valid_and_disjoint(nuclei):
    geometry = nuclei.geometry.to_numpy()
    assert shapely.is_valid(geometry).all()
    assert (shapely.get_type_id(geometry) == shapely.GeometryType.POLYGON).all()
    left, right = shapely.STRtree(geometry).query(geometry, predicate="intersects")
    assert (left == right).all()


def test_cells_without_nucleus(points, nuclei):
    true_ids = set(points[C.TRUE_CELL_ID].dropna())
    without = true_ids - set(nuclei.index)
    assert 10 <= len(without) <= 20

    theirs = points[points[C.TRUE_CELL_ID].isin(without)]
    assert len(theirs) > 0
    assert not theirs[C.OVERLAPS_NUCLEUS].any()
    assert not points[C.CELL_ID].isin(without).any()


def test_nuclear_share_per_cell(points, nuclei):
    in_nucleated = points[points[C.TRUE_CELL_ID].isin(nuclei.index)]
    share = in_nucleated.groupby(C.TRUE_CELL_ID)[C.OVERLAPS_NUCLEUS].mean()
    assert 0.33 <= share.mean() <= 0.42
    assert 0.33 <= in_nucleated[C.OVERLAPS_NUCLEUS].mean() <= 0.42


def test_markers_exclusive_by_type(points):
    genes = points[~points[C.IS_CONTROL] & points[C.TRUE_CELL_ID].notna()]
    names = genes[C.FEATURE_NAME].astype(str)
    marker_type = names.str.rsplit("_", n=1).str[0]
    is_marker = marker_type.isin(CELL_TYPES)
    assert is_marker.any()
    pd.testing.assert_series_equal(
        marker_type[is_marker], genes.loc[is_marker, _toy.TRUE_CELL_TYPE].astype(str), check_names=False
    )
    assert (marker_type[~is_marker] == "shared").all()


def test_markers_share_of_cells(points):
    genes = points[~points[C.IS_CONTROL] & points[C.TRUE_CELL_ID].notna()]
    is_marker = ~genes[C.FEATURE_NAME].astype(str).str.startswith("shared_")
    share = is_marker.groupby(genes[C.TRUE_CELL_ID]).mean()
    assert 0.5 <= share.mean() <= 0.7
    assert share.min() >= 0.3


def test_every_type_present(points):
    counts = points.drop_duplicates(C.TRUE_CELL_ID)[_toy.TRUE_CELL_TYPE].value_counts()
    for cell_type in CELL_TYPES:
        assert counts[cell_type] >= 10, cell_type


def test_background_share(points):
    background = points[C.TRUE_CELL_ID].isna() & ~points[C.IS_CONTROL]
    assert 0.025 <= background.mean() <= 0.035
    assert points.loc[background, _toy.TRUE_CELL_TYPE].isna().all()


def test_control_share(points):
    controls = points[points[C.IS_CONTROL]]
    assert 0.015 <= len(controls) / len(points) <= 0.025
    assert controls[C.TRUE_CELL_ID].isna().all()
    assert controls[C.FEATURE_NAME].astype(str).str.startswith(C.CONTROL_PREFIXES).all()
    np.testing.assert_array_equal(points[C.IS_CONTROL].to_numpy(), flag_controls(points[C.FEATURE_NAME]))


def test_qv_spread(points):
    qv = points[C.QV]
    assert qv.max() == 40.0
    assert qv.min() >= 5.0
    assert 0.55 <= (qv == 40.0).mean() <= 0.67
    assert 0.10 <= (qv < 20.0).mean() <= 0.18


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vendor_accuracy_default(seed):
    accuracy = _vendor_accuracy(_points(sg.datasets.toy(random_state=seed)))
    assert 0.75 <= accuracy <= 0.85


@pytest.mark.parametrize("seed", [0, 1])
def test_vendor_accuracy_easy(seed):
    sdata = sg.datasets.toy(easy=True, random_state=seed)
    points = _points(sdata)
    assert _vendor_accuracy(points) > 0.9
    assert set(points[C.TRUE_CELL_ID].dropna()) == set(sdata[C.NUCLEUS_SHAPES_KEY].index)


def test_same_seed_identical(points, nuclei):
    again = sg.datasets.toy(random_state=0)
    pd.testing.assert_frame_equal(_points(again), points)
    assert_geodataframe_equal(again[C.NUCLEUS_SHAPES_KEY], nuclei)


def test_different_seed_differs(points, nuclei):
    other = sg.datasets.toy(random_state=1)
    assert not _points(other).equals(points)
    assert not other[C.NUCLEUS_SHAPES_KEY].geometry.equals(nuclei.geometry)


def test_options_change_panel():
    sdata = sg.datasets.toy(n_cells=20, n_genes_per_type=3, n_shared_genes=5, random_state=3)
    names = set(_points(sdata)[C.FEATURE_NAME].astype(str))
    genes = {name for name in names if not name.startswith(C.CONTROL_PREFIXES)}
    assert genes <= {f"{cell_type}_{k:02d}" for cell_type in CELL_TYPES for k in (1, 2, 3)} | {
        f"shared_{k:02d}" for k in range(1, 6)
    }


def test_transcripts_per_cell_scales_size():
    small = _points(sg.datasets.toy(n_cells=40, transcripts_per_cell=50.0))
    large = _points(sg.datasets.toy(n_cells=40, transcripts_per_cell=200.0))
    assert 3.0 <= len(large) / len(small) <= 5.0


def test_single_cell():
    points = _points(sg.datasets.toy(n_cells=1))
    assert points[C.TRUE_CELL_ID].dropna().unique().tolist() == ["cell-00001"]
    assert points[C.OVERLAPS_NUCLEUS].any()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("n_cells", 0),
        ("n_genes_per_type", 0),
        ("n_shared_genes", -1),
        ("transcripts_per_cell", 0.0),
        ("marker_fraction", 0.0),
        ("marker_fraction", 1.5),
        ("background_fraction", -0.1),
        ("control_fraction", 0.5),
    ],
)
def test_invalid_option_raises(option, value):
    with pytest.raises(ValueError, match=option):
        sg.datasets.toy(**{option: value})


def test_module_avoids_torch():
    tree = ast.parse(Path(_toy.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not any(name.split(".")[0] == "torch" for name in imported)


def test_coincident_seeds_get_no_nucleus(caplog):
    rng = np.random.default_rng(0)
    cells = _toy._place_cells(40, _toy._TYPES, rng)
    cells.centre[1] = cells.centre[0]
    cells.tree = cKDTree(cells.centre)

    with caplog.at_level(logging.INFO, logger="segger"):
        nuclei = _toy._draw_nuclei(cells, _toy._TYPES, missing_share=0.0, rng=rng)

    assert 0 not in nuclei.cell
    assert 1 not in nuclei.cell
    assert len(nuclei.cell) == 38
    assert shapely.area(nuclei.polygons).min() > 0
    assert "2 cells share their seed with another cell" in caplog.text


@pytest.mark.slow
def test_large_toy_with_coincident_seeds():
    # Lloyd relaxation moves two seeds of this tissue onto one point.
    sdata = sg.datasets.toy(n_cells=12000, random_state=0)

    nuclei = sdata.shapes["nucleus_boundaries"]
    points = _points(sdata)
    assert len(nuclei) == 10_798
    assert shapely.area(nuclei.geometry.array).min() > 0
    assert len(points) == 1_261_732
    assert set(points[C.CELL_ID].dropna()) <= set(nuclei.index)
