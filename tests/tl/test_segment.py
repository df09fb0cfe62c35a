from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from spatialdata.transformations import Scale, set_transformation

import segger as sg
from segger.tl._truth import assignment_accuracy

SMALL = {"max_epochs": 3, "progress": False}


def quality_mask(points: pd.DataFrame) -> np.ndarray:
    return (~points["is_control"] & (points["qv"] >= 20)).to_numpy()


def in_cell_accuracy(points: pd.DataFrame, column: str) -> dict[str, float]:
    keep = quality_mask(points) & points["true_cell_id"].notna().to_numpy()
    return assignment_accuracy(points.loc[keep, "true_cell_id"], points.loc[keep, column])


def snapshot(sdata: sd.SpatialData) -> dict:
    return {
        "elements": sorted(name for _, name, _ in sdata.gen_elements()),
        "points": {name: points.compute() for name, points in sdata.points.items()},
        "shapes": {name: shapes.copy() for name, shapes in sdata.shapes.items()},
    }


def assert_unchanged(sdata: sd.SpatialData, before: dict) -> None:
    after = snapshot(sdata)
    assert after["elements"] == before["elements"]
    for name, frame in before["points"].items():
        pd.testing.assert_frame_equal(after["points"][name], frame)
    for name, frame in before["shapes"].items():
        assert after["shapes"][name].geom_equals(frame).all()


@pytest.fixture(scope="module")
def fitted_toy():
    sdata = sg.datasets.toy(random_state=0)
    model = sg.tl.segger_fit(sdata, progress=False)
    return sdata, model


@pytest.fixture
def small_toy():
    return sg.datasets.toy(n_cells=30, random_state=3)


@pytest.mark.slow
def test_fit_toy_beats_vendor(fitted_toy):
    sdata, _ = fitted_toy
    points = sdata.points["transcripts"].compute()
    segger = in_cell_accuracy(points, "segger_cell_id")
    vendor = in_cell_accuracy(points, "cell_id")

    assert segger["correct"] >= vendor["correct"] + 0.05


@pytest.mark.slow
def test_fit_easy_toy_accuracy():
    sdata = sg.datasets.toy(easy=True, random_state=0)
    sg.tl.segger_fit(sdata, progress=False)
    points = sdata.points["transcripts"].compute()
    segger = in_cell_accuracy(points, "segger_cell_id")
    vendor = in_cell_accuracy(points, "cell_id")

    assert segger["correct"] >= 0.90
    assert segger["correct"] > vendor["correct"]


@pytest.mark.slow
def test_fit_toy_beats_baselines(fitted_toy):
    sdata, _ = fitted_toy
    sdata = sd.SpatialData(points=dict(sdata.points), shapes=dict(sdata.shapes), tables=dict(sdata.tables))
    distances = range(9)
    for distance in distances:
        sg.tl.nucleus_expansion(sdata, distance=distance, key_added=f"expansion_{distance}")
    sg.tl.from_transcript_column(sdata, column="cell_id", key_added="vendor")
    kinds = ("epithelial", "fibroblast", "immune", "endothelial")
    markers = {kind: [f"{kind}_{i:02d}" for i in range(1, 11)] for kind in kinds}
    table = sg.tl.segmentation_metrics(sdata, markers=markers, n_bootstrap=0)
    sweep = table.loc[[f"expansion_{distance}" for distance in distances]]
    segger = table.loc["segger"]

    assert segger["pct_correct"] > sweep["pct_correct"].max()
    assert segger["pct_correct"] > table.loc["vendor", "pct_correct"]
    # Compared at the same share of transcripts assigned, interpolated along the expansion sweep.
    for column in ("mecr", "mecr_area_matched"):
        expansion = np.interp(segger["pct_assigned"], sweep["pct_assigned"], sweep[column])
        assert segger[column] < expansion


def test_fit_writes_contract_outputs(fitted_toy):
    sdata, model = fitted_toy
    points = sdata.points["transcripts"].compute()
    table = sdata.tables["segger_table"]
    boundaries = sdata.shapes["segger_boundaries"]

    assert points["segger_score"].dtype == np.float32
    assert points["segger_cell_id"].dtype == "string"
    assigned = points["segger_cell_id"].dropna()
    assert set(assigned) == set(table.obs["cell_id"])
    assert set(boundaries.index) == set(table.obs_names)
    assert boundaries.is_valid.all()
    assert (boundaries.geom_type == "Polygon").all()
    assert table.X.dtype.kind in "iu"
    assert table.obsm["spatial"].shape == (table.n_obs, 2)
    assert table.uns["segger"]["params"]["score_cut"] == model.settings["score_cut"]
    assert "version" in table.uns["segger"]["params"]

    grown = table.obs["prior_id"].notna()
    assert set(table.obs.loc[grown, "cell_id"]) <= set(sdata.shapes["nucleus_boundaries"].index)
    fragments = table.obs.loc[~grown, "cell_id"].astype(str)
    assert fragments.str.match(r"^segger-\d+$").all()


def test_fit_leaves_controls_unassigned(fitted_toy):
    sdata, _ = fitted_toy
    points = sdata.points["transcripts"].compute()
    filtered = ~quality_mask(points)

    assert points.loc[filtered, "segger_cell_id"].isna().all()
    assert points.loc[filtered, "segger_score"].isna().all()


def test_fit_history_and_settings(fitted_toy):
    _, model = fitted_toy

    assert {"epoch", "train_loss", "val_loss", "val_accuracy"} <= set(model.history.columns)
    assert len(model.history) >= 1
    assert model.settings["graph"]["dist_bd"] > 0


def test_fit_table_feeds_scanpy(fitted_toy):
    import scanpy as sc

    sdata, _ = fitted_toy
    adata = sdata.tables["segger_table"].copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10)

    assert adata.obsm["X_pca"].shape == (adata.n_obs, 10)


def test_fit_zarr_round_trip(fitted_toy, tmp_path):
    sdata, _ = fitted_toy
    sdata.write(tmp_path / "out.zarr")
    read = sd.read_zarr(tmp_path / "out.zarr")

    written = sdata.points["transcripts"].compute()
    reread = read.points["transcripts"].compute()
    pd.testing.assert_series_equal(
        reread["segger_cell_id"].reset_index(drop=True), written["segger_cell_id"].reset_index(drop=True)
    )
    assert read.shapes["segger_boundaries"].geom_equals(sdata.shapes["segger_boundaries"]).all()
    table = read.tables["segger_table"]
    assert (table.X != sdata.tables["segger_table"].X).nnz == 0


def test_fit_same_seed_same_labels(small_toy):
    again = sg.datasets.toy(n_cells=30, random_state=3)
    sg.tl.segger_fit(small_toy, random_state=7, **SMALL)
    sg.tl.segger_fit(again, random_state=7, **SMALL)
    first = small_toy.points["transcripts"].compute()
    second = again.points["transcripts"].compute()

    pd.testing.assert_series_equal(first["segger_cell_id"], second["segger_cell_id"])
    np.testing.assert_array_equal(first["segger_score"].to_numpy(), second["segger_score"].to_numpy())


def test_predict_independent_of_tiles(small_toy):
    model = sg.tl.segger_fit(small_toy, **SMALL)
    sg.tl.segger_predict(small_toy, model, tile_size=25.0, key_added="small_tiles", progress=False)
    sg.tl.segger_predict(small_toy, model, tile_size=1000.0, key_added="one_tile", progress=False)
    points = small_toy.points["transcripts"].compute()

    pd.testing.assert_series_equal(
        points["small_tiles_cell_id"], points["one_tile_cell_id"], check_names=False
    )
    np.testing.assert_allclose(
        points["small_tiles_score"], points["one_tile_score"], atol=1e-5, equal_nan=True
    )


def test_predict_saved_model_other_slide(small_toy, tmp_path, caplog):
    model = sg.tl.segger_fit(small_toy, **SMALL)
    model.save(tmp_path / "model.pt")
    loaded = sg.models.Segger.load(tmp_path / "model.pt")

    other = sg.datasets.toy(n_cells=30, random_state=4)
    points = other.points["transcripts"].compute()
    renamed = points["feature_name"].astype(str).replace({"epithelial_01": "NEWGENE"})
    points["feature_name"] = renamed.astype("category")
    other.points["transcripts"] = sd.models.PointsModel.parse(
        points, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="feature_name"
    )
    with caplog.at_level(logging.WARNING, logger="segger"):
        sg.tl.segger_predict(other, loaded, progress=False)

    assert "never seen" in caplog.text
    assert "NEWGENE" in caplog.text
    result = other.points["transcripts"].compute()
    assert result["segger_cell_id"].notna().mean() > 0.5


def test_fit_existing_key_rejected(small_toy):
    sg.tl.segger_fit(small_toy, **SMALL)
    before = snapshot(small_toy)
    with pytest.raises(ValueError, match="overwrite=True"):
        sg.tl.segger_fit(small_toy, **SMALL)
    assert_unchanged(small_toy, before)

    sg.tl.segger_fit(small_toy, overwrite=True, **SMALL)
    assert "segger_table" in small_toy.tables


def test_fit_failure_leaves_sdata(small_toy, monkeypatch):
    before = snapshot(small_toy)

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure in prediction")

    monkeypatch.setattr("segger.tl._segment.predict_tile", fail)
    with pytest.raises(RuntimeError, match="injected"):
        sg.tl.segger_fit(small_toy, **SMALL)

    assert_unchanged(small_toy, before)


def test_fit_missing_shapes(small_toy):
    with pytest.raises(KeyError, match=r"'cells' not found.*nucleus_boundaries"):
        sg.tl.segger_fit(small_toy, shapes_key="cells", **SMALL)


def test_fit_missing_points(small_toy):
    with pytest.raises(KeyError, match="'spots' not found"):
        sg.tl.segger_fit(small_toy, points_key="spots", **SMALL)


def test_fit_no_transcript_in_nuclei(small_toy):
    points = small_toy.points["transcripts"].compute()
    points["overlaps_nucleus"] = False
    small_toy.points["transcripts"] = sd.models.PointsModel.parse(
        points, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="feature_name"
    )
    with pytest.raises(ValueError, match="no training labels"):
        sg.tl.segger_fit(small_toy, **SMALL)


def test_fit_coordinate_systems_differ(small_toy):
    set_transformation(small_toy.shapes["nucleus_boundaries"], Scale([2.0, 2.0], axes=("x", "y")), "global")
    with pytest.raises(ValueError, match="different transformations"):
        sg.tl.segger_fit(small_toy, **SMALL)


def test_fit_no_shared_coordinate_system(small_toy):
    shapes = small_toy.shapes["nucleus_boundaries"]
    set_transformation(shapes, Scale([1.0, 1.0], axes=("x", "y")), "microscope")
    sd.transformations.remove_transformation(shapes, "global")
    with pytest.raises(ValueError, match="share no coordinate system"):
        sg.tl.segger_fit(small_toy, **SMALL)


def test_fit_only_controls(small_toy):
    points = small_toy.points["transcripts"].compute()
    points["is_control"] = True
    small_toy.points["transcripts"] = sd.models.PointsModel.parse(
        points, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="feature_name"
    )
    with pytest.raises(ValueError, match=r"No transcript .* can enter the graph"):
        sg.tl.segger_fit(small_toy, **SMALL)


def test_fit_fixed_gene_embedding(small_toy):
    points = small_toy.points["transcripts"].compute()
    genes = sorted(points["feature_name"].astype(str).unique())
    rng = np.random.default_rng(0)
    reference = ad.AnnData(
        X=rng.poisson(1.0, size=(40, len(genes))).astype(np.float32),
        obs=pd.DataFrame({"cell_type": np.repeat(["a", "b"], 20)}, index=[f"c{i}" for i in range(40)]),
        var=pd.DataFrame(index=genes),
    )
    table = sg.pp.gene_embedding_from_reference(reference, cell_type_key="cell_type")
    model = sg.tl.segger_fit(small_toy, gene_embedding=table, **SMALL)

    assert model.uses_gene_embedding
    assert small_toy.points["transcripts"].compute()["segger_cell_id"].notna().any()


def test_gene_embedding_detection_fractions():
    reference = ad.AnnData(
        X=np.array([[1, 0], [3, 0], [0, 2], [0, 0]], dtype=np.float32),
        obs=pd.DataFrame({"cell_type": ["t", "t", "b", "b"]}, index=list("wxyz")),
        var=pd.DataFrame(index=["G1", "G2"]),
    )
    table = sg.pp.gene_embedding_from_reference(
        reference, cell_type_key="cell_type", genes=["G2", "G1", "G3"]
    )

    assert table.index.tolist() == ["G2", "G1", "G3"]
    assert table.loc["G1", "t"] == 1.0
    assert table.loc["G1", "b"] == 0.0
    assert table.loc["G2", "b"] == 0.5
    assert table.loc["G3"].tolist() == [0.0, 0.0]


@pytest.mark.slow
def test_fit_xenium_lung_crop(xenium_lung_path):
    sdata = sg.io.xenium(xenium_lung_path)
    sg.tl.segger_fit(sdata, progress=False)
    points = sdata.points["transcripts"].compute()
    usable = quality_mask(points)
    segger = points.loc[usable, "segger_cell_id"]
    vendor = points.loc[usable, "cell_id"]
    both = segger.notna() & vendor.notna()

    assert segger.notna().mean() >= 0.80
    assert both.mean() >= 0.6
    assert (segger[both] == vendor[both]).mean() >= 0.6
    assert len(sdata.tables["segger_table"]) >= 200


def test_fit_nan_coordinates(small_toy):
    points = small_toy.points["transcripts"].compute()
    points.loc[points.index[:3], "y"] = np.nan
    small_toy.points["transcripts"] = sd.models.PointsModel.parse(
        points, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="feature_name"
    )
    with pytest.raises(ValueError, match=r"3 of \d+ transcripts .* 'y' coordinate"):
        sg.tl.segger_fit(small_toy, **SMALL)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("score_cut", 2.0, "score_cut must lie in"),
        ("assignment", "best", "assignment must be 'nearest' or 'score'"),
        ("k_tx", 0, "k_tx must be at least 1"),
        ("max_epochs", 0, "max_epochs must be at least 1"),
        ("min_transcripts", 0, "min_transcripts must be at least 1"),
        ("num_layers", 0, "num_layers must be at least 1"),
        ("dist_bd", -5.0, "dist_bd must be a positive, finite distance"),
        ("dist_tx", float("inf"), "dist_tx must be a positive, finite distance"),
        ("tile_size", float("nan"), "tile_size must be a positive, finite distance"),
    ],
)
def test_fit_invalid_option(small_toy, option, value, message):
    before = snapshot(small_toy)
    with pytest.raises(ValueError, match=message):
        sg.tl.segger_fit(small_toy, **{**SMALL, option: value})
    assert_unchanged(small_toy, before)


def test_predict_no_known_genes(small_toy):
    model = sg.tl.segger_fit(small_toy, **SMALL)
    other = sg.datasets.toy(n_cells=30, random_state=4)
    points = other.points["transcripts"].compute()
    points["feature_name"] = ("other_" + points["feature_name"].astype(str)).astype("category")
    other.points["transcripts"] = sd.models.PointsModel.parse(
        points, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="feature_name"
    )
    with pytest.raises(ValueError, match="None of the slide's genes"):
        sg.tl.segger_predict(other, model, progress=False)
    assert "segger_table" not in other.tables


def test_predict_unknown_genes_warns(small_toy):
    model = sg.tl.segger_fit(small_toy, **SMALL)
    model.vocabulary = [gene for gene in model.vocabulary if gene != "immune_01"]
    with pytest.warns(UserWarning, match=r"immune_01"):
        sg.tl.segger_predict(small_toy, model, key_added="again", progress=False)
