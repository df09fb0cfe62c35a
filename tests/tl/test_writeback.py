from __future__ import annotations

import anndata as ad
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import shapely
import spatialdata
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale, get_transformation, set_transformation

import segger
from segger.io._spatialdata import build_spatialdata
from segger.tl import _writeback
from segger.tl._writeback import points_frame, write_segmentation

# Four cells laid out so that their outlines can be computed by hand (unit radius for flat cells):
# c1        square [0, 2]² joined with nucleus n1 = [1, 3]²: area 4 + 4 - 1 = 7, centroid (1.5, 1.5)
# c2        two transcripts on a 2 µm line: a stadium of area 2·2 + π
# c3        one transcript: a disc of area π
# segger-1  triangle (30,0) (32,0) (30,2) apart from nucleus n2 = [34, 36] × [0, 2]: convex hull
#           [30, 36] × [0, 2], area 12, centroid (33, 1)
ASSIGNED = [
    (0.0, 0.0, "A", "c1"),
    (2.0, 0.0, "A", "c1"),
    (2.0, 2.0, "B", "c1"),
    (0.0, 2.0, "NegControlProbe_1", "c1"),
    (10.0, 0.0, "C", "c2"),
    (12.0, 0.0, "C", "c2"),
    (20.0, 20.0, "A", "c3"),
    (30.0, 0.0, "B", "segger-1"),
    (32.0, 0.0, "C", "segger-1"),
    (30.0, 2.0, "NegControlProbe_1", "segger-1"),
]
UNASSIGNED_GENES = ["A", "B", "C", "D", "NegControlProbe_1"] * 2
CELLS = ["c1", "c2", "c3", "segger-1"]
GENES = ["A", "B", "C", "D"]
EXPECTED_COUNTS = np.array(
    [
        [2, 1, 0, 0],
        [0, 0, 2, 0],
        [1, 0, 0, 0],
        [0, 1, 1, 0],
    ]
)
PRIOR_IDS = pd.Series({"c1": "n1", "segger-1": "n2"})


def _points_and_ids() -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    rows = list(ASSIGNED)
    rows += [(50.0 + i, 50.0 - i, gene, None) for i, gene in enumerate(UNASSIGNED_GENES)]
    points = pd.DataFrame(rows, columns=["x", "y", "feature_name", "cell"])
    points["is_control"] = points["feature_name"].str.startswith("NegControl")
    points["transcript_id"] = np.arange(len(points), dtype=np.int64)
    cell_ids = points.pop("cell").astype("string")

    scores = np.full(len(points), np.nan, dtype=np.float32)
    scores[: len(ASSIGNED)] = np.linspace(0.0, 1.0, len(ASSIGNED), dtype=np.float32)
    return points, cell_ids, scores


def _nuclei() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        geometry=[shapely.box(1, 1, 3, 3), shapely.box(34, 0, 36, 2), shapely.box(100, 100, 101, 101)],
        index=["n1", "n2", "n3"],
    )


@pytest.fixture
def sdata() -> spatialdata.SpatialData:
    points, _, _ = _points_and_ids()
    return build_spatialdata(points, {"nucleus_boundaries": _nuclei()})


@pytest.fixture
def cell_ids(sdata: spatialdata.SpatialData) -> pd.Series:
    _, ids, _ = _points_and_ids()
    return pd.Series(ids.to_numpy(), index=points_frame(sdata).index, dtype="string")


@pytest.fixture
def scores() -> np.ndarray:
    return _points_and_ids()[2]


def _write(sdata: spatialdata.SpatialData, cell_ids: pd.Series, scores: np.ndarray, **kwargs) -> None:
    write_segmentation(
        sdata,
        cell_ids,
        scores=scores,
        prior_ids=PRIOR_IDS,
        prior_shapes=sdata.shapes["nucleus_boundaries"],
        params={"max_distance": 5.0, "hull": "concave"},
        **kwargs,
    )


def _snapshot(sdata: spatialdata.SpatialData) -> dict[str, object]:
    """Return copies of every element's content, for comparing before and after a call."""
    snapshot: dict[str, object] = {}
    for name, points in sdata.points.items():
        snapshot[f"points/{name}"] = points.compute()
        snapshot[f"points/{name}/attrs"] = repr(dict(points.attrs))
    for name, shapes in sdata.shapes.items():
        snapshot[f"shapes/{name}"] = shapes.copy()
    for name, table in sdata.tables.items():
        snapshot[f"tables/{name}"] = table.copy()
    return snapshot


def _assert_same_snapshot(before: dict[str, object], after: dict[str, object]) -> None:
    assert list(before) == list(after)
    for key, old in before.items():
        new = after[key]
        if isinstance(old, gpd.GeoDataFrame):
            assert old.index.equals(new.index), key
            assert shapely.equals(old.geometry.to_numpy(), new.geometry.to_numpy()).all(), key
        elif isinstance(old, pd.DataFrame):
            pd.testing.assert_frame_equal(old, new, obj=key)
        elif isinstance(old, ad.AnnData):
            pd.testing.assert_frame_equal(old.obs, new.obs, obj=key)
            assert (old.X != new.X).nnz == 0, key
        else:
            assert old == new, key


def test_points_columns_added(sdata, cell_ids, scores):
    before = points_frame(sdata)

    _write(sdata, cell_ids, scores)

    points = sdata.points["transcripts"]
    assert isinstance(points, dd.DataFrame)
    after = points.compute()
    pd.testing.assert_frame_equal(after[before.columns], before)
    assert pd.api.types.is_string_dtype(after["segger_cell_id"])
    assert after["segger_cell_id"].isna().tolist() == cell_ids.isna().tolist()
    assert after["segger_cell_id"].dropna().tolist() == cell_ids.dropna().tolist()
    assert after["segger_score"].dtype == np.float32
    np.testing.assert_array_equal(after["segger_score"].to_numpy(), scores)


def test_points_metadata_kept(sdata, cell_ids, scores):
    set_transformation(
        sdata.points["transcripts"], Scale([2.0, 2.0], axes=("x", "y")), to_coordinate_system="scaled"
    )

    _write(sdata, cell_ids, scores)

    points = sdata.points["transcripts"]
    assert points.attrs["spatialdata_attrs"]["feature_key"] == "feature_name"
    transformations = get_transformation(points, get_all=True)
    assert transformations == {"global": Identity(), "scaled": Scale([2.0, 2.0], axes=("x", "y"))}


def test_scores_default_to_nan(sdata, cell_ids):
    write_segmentation(sdata, cell_ids)

    stored = sdata.points["transcripts"].compute()["segger_score"]
    assert stored.dtype == np.float32
    assert stored.isna().all()


def test_boundaries_one_polygon_per_cell(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)

    shapes = sdata.shapes["segger_boundaries"]
    assert shapes.index.tolist() == CELLS
    assert shapes.index.name == "cell_id"
    assert (shapes.geometry.geom_type == "Polygon").all()
    assert shapes.geometry.is_valid.all()
    assert get_transformation(shapes, get_all=True) == {"global": Identity()}


def test_boundaries_areas(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)

    area = sdata.shapes["segger_boundaries"].geometry.area
    assert area["c1"] == pytest.approx(7.0)
    assert area["segger-1"] == pytest.approx(12.0)
    # Buffers approximate circles with 32-gons, so these areas are a little below the exact ones.
    assert area["c2"] == pytest.approx(4.0 + np.pi, rel=1e-2)
    assert area["c3"] == pytest.approx(np.pi, rel=1e-2)


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_boundaries_and_counts_same_in_chunks(sdata, cell_ids, scores, monkeypatch, chunk):
    _write(sdata, cell_ids, scores)
    whole = sdata.shapes["segger_boundaries"].copy()
    whole_counts = sdata.tables["segger_table"].X.copy()
    monkeypatch.setattr("segger.tl._writeback._CELL_CHUNK", chunk)
    monkeypatch.setattr("segger._grouping.BLOCK_ROWS", chunk)

    _write(sdata, cell_ids, scores, overwrite=True)

    chunked = sdata.shapes["segger_boundaries"]
    assert chunked.index.equals(whole.index)
    assert chunked.geom_equals(whole).all()
    counts = sdata.tables["segger_table"].X
    assert counts.dtype == whole_counts.dtype
    assert (counts != whole_counts).nnz == 0
    assert counts.has_canonical_format


def test_boundaries_cover_transcripts(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)

    shapes = sdata.shapes["segger_boundaries"]
    points = points_frame(sdata).dropna(subset=["segger_cell_id"])
    polygons = shapes.geometry.loc[points["segger_cell_id"].to_numpy()].to_numpy()
    assert shapely.covers(polygons, shapely.points(points[["x", "y"]].to_numpy())).all()


def test_point_radius_sizes_flat_cells(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores, point_radius=2.0)

    area = sdata.shapes["segger_boundaries"].geometry.area
    assert area["c3"] == pytest.approx(4 * np.pi, rel=1e-2)


def test_table_counts(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)

    table = sdata.tables["segger_table"]
    assert isinstance(table.X, sp.csr_matrix)
    assert np.issubdtype(table.X.dtype, np.integer)
    assert table.var_names.tolist() == GENES
    assert table.obs_names.tolist() == CELLS
    np.testing.assert_array_equal(table.X.toarray(), EXPECTED_COUNTS)


def test_table_obs(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)

    obs = sdata.tables["segger_table"].obs
    assert obs["cell_id"].tolist() == CELLS
    assert isinstance(obs["region"].dtype, pd.CategoricalDtype)
    assert obs["region"].cat.categories.tolist() == ["segger_boundaries"]
    assert obs["n_transcripts"].tolist() == [3, 2, 1, 2]
    assert np.issubdtype(obs["n_transcripts"].dtype, np.integer)
    assert obs["area"].to_numpy() == pytest.approx([7.0, 4.0 + np.pi, np.pi, 12.0], rel=1e-2)
    assert isinstance(obs["prior_id"].dtype, pd.CategoricalDtype)
    assert obs["prior_id"].isna().tolist() == [False, True, True, False]
    assert obs["prior_id"].dropna().tolist() == ["n1", "n2"]


def test_table_centroids(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)

    spatial = sdata.tables["segger_table"].obsm["spatial"]
    assert spatial.shape == (4, 2)
    np.testing.assert_allclose(spatial[0], [1.5, 1.5])
    np.testing.assert_allclose(spatial[1], [11.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(spatial[2], [20.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(spatial[3], [33.0, 1.0])


def test_table_metadata(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)

    table = sdata.tables["segger_table"]
    assert table.uns["segger"]["params"] == {
        "max_distance": 5.0,
        "hull": "concave",
        "version": segger.__version__,
    }
    assert table.uns["spatialdata_attrs"] == {
        "region": "segger_boundaries",
        "region_key": "region",
        "instance_key": "cell_id",
    }


def test_table_without_is_control(cell_ids, scores):
    points, _, _ = _points_and_ids()
    sdata = build_spatialdata(points.drop(columns="is_control"), {"nucleus_boundaries": _nuclei()})

    _write(sdata, cell_ids, scores)

    table = sdata.tables["segger_table"]
    assert table.var_names.tolist() == [*GENES, "NegControlProbe_1"]
    assert table.obs["n_transcripts"].tolist() == [4, 2, 1, 3]


def test_key_added_names_outputs(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores, key_added="expansion")

    assert "expansion_boundaries" in sdata.shapes
    assert "expansion_table" in sdata.tables
    table = sdata.tables["expansion_table"]
    assert table.obs["region"].cat.categories.tolist() == ["expansion_boundaries"]
    assert "expansion" in table.uns
    columns = sdata.points["transcripts"].columns
    assert "expansion_cell_id" in columns
    assert "expansion_score" in columns
    assert "segger_cell_id" not in columns


def test_without_prior_shapes(sdata, cell_ids, scores):
    write_segmentation(sdata, cell_ids, scores=scores, prior_ids=PRIOR_IDS)

    area = sdata.shapes["segger_boundaries"].geometry.area
    assert area["c1"] == pytest.approx(4.0)
    assert area["segger-1"] == pytest.approx(2.0)
    assert sdata.tables["segger_table"].obs["prior_id"].dropna().tolist() == ["n1", "n2"]


def test_inputs_not_mutated(sdata, cell_ids, scores):
    nuclei = sdata.shapes["nucleus_boundaries"]
    nuclei_before = nuclei.copy()
    ids_before = cell_ids.copy()
    scores_before = scores.copy()
    prior_before = PRIOR_IDS.copy()

    _write(sdata, cell_ids, scores)

    pd.testing.assert_series_equal(cell_ids, ids_before)
    np.testing.assert_array_equal(scores, scores_before)
    pd.testing.assert_series_equal(PRIOR_IDS, prior_before)
    assert shapely.equals(nuclei.geometry.to_numpy(), nuclei_before.geometry.to_numpy()).all()


@pytest.mark.parametrize("name", ["segger_cell_id", "segger_score", "segger_boundaries", "segger_table"])
def test_existing_output_raises(sdata, cell_ids, scores, name):
    _write(sdata, cell_ids, scores)
    # Keep only the output `name`, so the error has to come from that one.
    for element in {"segger_boundaries", "segger_table"} - {name}:
        del sdata[element]
    columns = [column for column in ("segger_cell_id", "segger_score") if column != name]
    sdata.points["transcripts"] = sdata.points["transcripts"].drop(columns=columns)

    with pytest.raises(ValueError, match=rf"{name}.*overwrite=True"):
        _write(sdata, cell_ids, scores)


def test_overwrite_replaces_outputs(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)
    new_ids = cell_ids.mask(cell_ids == "c3", pd.NA)

    _write(sdata, new_ids, scores, overwrite=True)

    assert sdata.shapes["segger_boundaries"].index.tolist() == ["c1", "c2", "segger-1"]
    assert sdata.tables["segger_table"].n_obs == 3
    stored = sdata.points["transcripts"].compute()["segger_cell_id"]
    assert int(stored.notna().sum()) == 9
    assert list(sdata.points["transcripts"].columns).count("segger_cell_id") == 1


def test_name_taken_by_other_element_raises(sdata, cell_ids, scores):
    sdata.shapes["Segger_table"] = sdata.shapes["nucleus_boundaries"]

    with pytest.raises(ValueError, match="Segger_table"):
        _write(sdata, cell_ids, scores, overwrite=True)


def test_failure_leaves_sdata_unchanged(sdata, cell_ids, scores, monkeypatch):
    before = _snapshot(sdata)

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(TableModel, "parse", fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        _write(sdata, cell_ids, scores)

    _assert_same_snapshot(before, _snapshot(sdata))


def test_failed_overwrite_keeps_earlier_result(sdata, cell_ids, scores, monkeypatch):
    _write(sdata, cell_ids, scores)
    before = _snapshot(sdata)

    monkeypatch.setattr(_writeback, "_cell_table", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _write(sdata, cell_ids.mask(cell_ids == "c3", pd.NA), scores, overwrite=True)

    _assert_same_snapshot(before, _snapshot(sdata))


def test_cell_ids_wrong_length(sdata, cell_ids):
    with pytest.raises(ValueError, match=r"19 entries.*20 rows"):
        write_segmentation(sdata, cell_ids.iloc[:-1])


def test_cell_ids_wrong_index(sdata, cell_ids):
    shuffled = cell_ids.iloc[::-1]

    with pytest.raises(ValueError, match="index of cell_ids"):
        write_segmentation(sdata, shuffled)


def test_cell_ids_not_series(sdata, cell_ids):
    with pytest.raises(TypeError, match="pandas Series"):
        write_segmentation(sdata, cell_ids.to_numpy())


def test_no_assigned_transcript(sdata, cell_ids):
    with pytest.raises(ValueError, match="No transcript is assigned"):
        write_segmentation(sdata, pd.Series(pd.NA, index=cell_ids.index, dtype="string"))


@pytest.mark.parametrize("bad", [1.5, -0.1, np.inf])
def test_scores_out_of_range(sdata, cell_ids, scores, bad):
    scores[3] = bad

    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        write_segmentation(sdata, cell_ids, scores=scores)


def test_scores_wrong_length(sdata, cell_ids, scores):
    with pytest.raises(ValueError, match=r"shape \(19,\)"):
        write_segmentation(sdata, cell_ids, scores=scores[:-1])


def test_prior_id_missing_from_shapes(sdata, cell_ids):
    prior_ids = pd.Series({"c1": "n1", "c2": "n9"})

    with pytest.raises(ValueError, match="n9"):
        write_segmentation(sdata, cell_ids, prior_ids=prior_ids, prior_shapes=_nuclei())


def test_missing_points_key(sdata, cell_ids):
    with pytest.raises(KeyError, match="'spots' not found"):
        write_segmentation(sdata, cell_ids, points_key="spots")


@pytest.mark.parametrize(("option", "value"), [("hull_ratio", 1.5), ("point_radius", 0.0)])
def test_invalid_hull_options(sdata, cell_ids, option, value):
    with pytest.raises(ValueError, match=option):
        write_segmentation(sdata, cell_ids, **{option: value})


def test_zarr_round_trip(sdata, cell_ids, scores, tmp_path):
    _write(sdata, cell_ids, scores)
    sdata.write(tmp_path / "out.zarr")

    read = spatialdata.read_zarr(tmp_path / "out.zarr")

    points = read.points["transcripts"].compute()
    expected = sdata.points["transcripts"].compute()
    assert points["segger_cell_id"].isna().tolist() == expected["segger_cell_id"].isna().tolist()
    assert points["segger_cell_id"].dropna().tolist() == expected["segger_cell_id"].dropna().tolist()
    np.testing.assert_array_equal(points["segger_score"].to_numpy(), expected["segger_score"].to_numpy())
    assert get_transformation(read.points["transcripts"], get_all=True) == {"global": Identity()}

    shapes = read.shapes["segger_boundaries"]
    assert shapes.index.tolist() == CELLS
    assert shapely.equals(
        shapes.geometry.to_numpy(), sdata.shapes["segger_boundaries"].geometry.to_numpy()
    ).all()

    table = read.tables["segger_table"]
    np.testing.assert_array_equal(table.X.toarray(), EXPECTED_COUNTS)
    assert table.obs_names.tolist() == CELLS
    assert table.obs["cell_id"].tolist() == CELLS
    assert table.obs["n_transcripts"].tolist() == [3, 2, 1, 2]
    np.testing.assert_allclose(table.obs["area"], sdata.tables["segger_table"].obs["area"])
    assert table.obs["prior_id"].isna().tolist() == [False, True, True, False]
    assert table.obs["prior_id"].dropna().tolist() == ["n1", "n2"]
    np.testing.assert_allclose(table.obsm["spatial"], sdata.tables["segger_table"].obsm["spatial"])
    assert table.uns["segger"]["params"]["version"] == segger.__version__


def test_scanpy_preprocessing_runs(sdata, cell_ids, scores):
    _write(sdata, cell_ids, scores)
    table = sdata.tables["segger_table"].copy()

    sc.pp.normalize_total(table, target_sum=10)
    sc.pp.log1p(table)

    assert np.isfinite(table.X.toarray()).all()
    np.testing.assert_allclose(np.expm1(table.X.toarray()).sum(axis=1), 10.0, rtol=1e-5)


def test_prior_shapes_other_transformation(sdata, cell_ids):
    nuclei = ShapesModel.parse(_nuclei(), transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))})

    with pytest.raises(ValueError, match=r"different transformations to the coordinate systems \['global'\]"):
        write_segmentation(sdata, cell_ids, prior_ids=PRIOR_IDS, prior_shapes=nuclei)


def test_prior_shapes_other_coordinate_system(sdata, cell_ids):
    nuclei = ShapesModel.parse(_nuclei(), transformations={"aligned": Identity()})

    with pytest.raises(ValueError, match="share no coordinate system"):
        write_segmentation(sdata, cell_ids, prior_ids=PRIOR_IDS, prior_shapes=nuclei)


def test_prior_shapes_extra_coordinate_system(sdata, cell_ids):
    nuclei = ShapesModel.parse(_nuclei(), transformations={"global": Identity(), "aligned": Identity()})

    write_segmentation(sdata, cell_ids, prior_ids=PRIOR_IDS, prior_shapes=nuclei)

    assert sdata.shapes["segger_boundaries"].geometry.area["c1"] == pytest.approx(7.0)
