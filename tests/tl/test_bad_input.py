from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata as sd

import segger as sg
from segger.io._spatialdata import build_spatialdata

FAST = {"max_epochs": 2, "progress": False}

# Every phase of segger_fit and segger_predict, by the module attribute that runs it.
PHASES = [
    "segger.tl._segment.prepare",
    "segger.tl._segment.build_tile_graph",
    "segger.tl._segment.train",
    "segger.tl._segment.predict_tile",
    "segger.tl._segment.select_candidates",
    "segger.tl._segment.fragment_cells",
    "segger.tl._writeback._cell_polygons",
    "segger.tl._writeback._count_matrix",
    "segger.tl._writeback._points_with_columns",
    "segger.tl._writeback._cell_table",
    "segger.tl._writeback.ShapesModel.parse",
]


@pytest.fixture(scope="module")
def toy():
    return sg.datasets.toy(n_cells=30, random_state=3)


def rebuild(points: pd.DataFrame, shapes: gpd.GeoDataFrame) -> sd.SpatialData:
    """Return a new SpatialData from plain copies of a points frame and nucleus polygons."""
    points = points.copy()
    points.attrs = {}
    shapes = gpd.GeoDataFrame(geometry=shapes.geometry.to_numpy(), index=shapes.index.copy())
    return build_spatialdata(points, {"nucleus_boundaries": shapes})


def parts(toy) -> tuple[pd.DataFrame, gpd.GeoDataFrame]:
    return toy.points["transcripts"].compute(), toy.shapes["nucleus_boundaries"]


def snapshot(sdata: sd.SpatialData) -> dict:
    return {
        "elements": sorted(name for _, name, _ in sdata.gen_elements()),
        "points": {name: points.compute() for name, points in sdata.points.items()},
        "shapes": {name: shapes.copy() for name, shapes in sdata.shapes.items()},
        "tables": {name: table.copy() for name, table in sdata.tables.items()},
    }


def assert_unchanged(sdata: sd.SpatialData, before: dict) -> None:
    after = snapshot(sdata)
    assert after["elements"] == before["elements"]
    for name, frame in before["points"].items():
        pd.testing.assert_frame_equal(after["points"][name], frame)
    for name, frame in before["shapes"].items():
        assert after["shapes"][name].index.equals(frame.index)
        assert after["shapes"][name].geom_equals(frame).all()
    for name, table in before["tables"].items():
        assert (after["tables"][name].X != table.X).nnz == 0
        pd.testing.assert_frame_equal(after["tables"][name].obs, table.obs)


def store_digest(path: Path) -> dict[str, str]:
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def fail(*args, **kwargs):
    raise RuntimeError("injected failure")


@pytest.mark.parametrize("phase", PHASES)
def test_fit_failure_at_phase_leaves_sdata(toy, monkeypatch, phase):
    sdata = rebuild(*parts(toy))
    sg.tl.nucleus_expansion(sdata, distance=3)
    before = snapshot(sdata)
    monkeypatch.setattr(phase, fail)

    with pytest.raises(RuntimeError, match="injected failure"):
        sg.tl.segger_fit(sdata, **FAST)

    assert_unchanged(sdata, before)


@pytest.fixture(scope="module")
def trained(toy):
    return sg.tl.segger_fit(rebuild(*parts(toy)), **FAST)


@pytest.mark.parametrize("phase", [phase for phase in PHASES if not phase.endswith((".prepare", ".train"))])
def test_predict_failure_at_phase_leaves_sdata(toy, trained, monkeypatch, phase):
    sdata = rebuild(*parts(toy))
    before = snapshot(sdata)
    monkeypatch.setattr(phase, fail)

    with pytest.raises(RuntimeError, match="injected failure"):
        sg.tl.segger_predict(sdata, trained, progress=False)

    assert_unchanged(sdata, before)


def test_zarr_input_store_never_written(toy, trained, tmp_path):
    store = tmp_path / "input.zarr"
    rebuild(*parts(toy)).write(store)
    before = store_digest(store)
    sdata = sd.read_zarr(store)

    sg.tl.segger_fit(sdata, **FAST)
    sg.tl.segger_predict(sdata, trained, key_added="applied", progress=False)
    sg.tl.nucleus_expansion(sdata, distance=5)
    sg.tl.segmentation_metrics(sdata, markers={"a": ["epithelial_01"], "b": ["immune_01"]}, n_bootstrap=5)

    assert store_digest(store) == before


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("phase", ["segger.tl._segment.train", "segger.tl._writeback._points_with_columns"])
def test_interrupted_fit_keeps_zarr_store(toy, tmp_path, monkeypatch, phase):
    store = tmp_path / "input.zarr"
    rebuild(*parts(toy)).write(store)
    files_before = store_digest(store)
    sdata = sd.read_zarr(store)
    before = snapshot(sdata)
    monkeypatch.setattr(phase, interrupt)

    with pytest.raises(KeyboardInterrupt):
        sg.tl.segger_fit(sdata, **FAST)
    monkeypatch.undo()

    assert store_digest(store) == files_before
    assert_unchanged(sdata, before)
    assert_unchanged(sd.read_zarr(store), before)
    sg.tl.segger_fit(sdata, **FAST)
    assert sdata.points["transcripts"].compute()["segger_cell_id"].notna().sum() > 0


def test_fit_empty_points(toy):
    points, shapes = parts(toy)
    with pytest.raises(ValueError, match="is empty"):
        sg.tl.segger_fit(rebuild(points.iloc[:0], shapes), **FAST)


def test_fit_one_transcript(toy):
    points, shapes = parts(toy)
    single = points[points["overlaps_nucleus"] & ~points["is_control"]].iloc[:1]
    sdata = rebuild(single, shapes)

    with pytest.raises(ValueError, match="Training scored no transcript-to-shape link: the 1 transcript"):
        sg.tl.segger_fit(sdata, **FAST)

    assert "segger_table" not in sdata.tables


def test_predict_one_transcript(toy, trained):
    points, shapes = parts(toy)
    single = points[points["overlaps_nucleus"] & ~points["is_control"]].iloc[:1]
    sdata = rebuild(single, shapes)
    sg.tl.segger_predict(sdata, trained, progress=False)
    result = sdata.points["transcripts"].compute()

    # A lone transcript inside a nucleus joins it, because that nucleus is its only candidate.
    assert result["segger_cell_id"].tolist() == [str(single["cell_id"].iloc[0])]


@pytest.mark.parametrize("bucket", [None, 7])
def test_fit_duplicate_transcript_ids(toy, monkeypatch, bucket):
    if bucket is not None:
        # Checked in several hash buckets, which must still find every repeat.
        monkeypatch.setattr("segger._repeats.BUCKET_SIZE", bucket)
    points, shapes = parts(toy)
    points = points.copy()
    points.loc[points.index[:5], "transcript_id"] = points["transcript_id"].iloc[0]
    points.loc[points.index[-3:], "transcript_id"] = points["transcript_id"].iloc[-1]

    with pytest.raises(ValueError, match="must be a unique key, but 8 rows"):
        sg.tl.segger_fit(rebuild(points, shapes), **FAST)


@pytest.mark.parametrize("in_scratch", [False, True])
def test_fit_text_transcript_ids(toy, tmp_path, in_scratch):
    points, shapes = parts(toy)
    points = points.assign(transcript_id="t" + points["transcript_id"].astype(str))
    sdata = rebuild(points, shapes)
    before = snapshot(sdata)

    with pytest.raises(ValueError, match=r"must contain integers.*'t0'"):
        sg.tl.segger_fit(sdata, scratch_dir=tmp_path if in_scratch else None, **FAST)

    assert_unchanged(sdata, before)
    assert list(tmp_path.iterdir()) == []


def test_fit_disjoint_points_and_shapes(toy):
    points, shapes = parts(toy)
    far = gpd.GeoDataFrame(geometry=shapes.geometry.translate(10_000, 10_000), index=shapes.index)

    with pytest.raises(ValueError, match="so no transcript is near a shape"):
        sg.tl.segger_fit(rebuild(points, far), **FAST)


def test_fit_shifted_shapes_rejected(toy):
    # The shapes still overlap the points, but each flagged transcript's own nucleus moved away.
    points, shapes = parts(toy)
    shifted = gpd.GeoDataFrame(geometry=shapes.geometry.translate(15, 0), index=shapes.index)

    with pytest.raises(ValueError, match="points and shapes do not line up"):
        sg.tl.segger_fit(rebuild(points, shifted), **FAST)


def test_fit_pixel_coordinates_warn(toy, caplog):
    points, shapes = parts(toy)
    pixel_size = 0.2125
    points = points.copy()
    points[["x", "y"]] = points[["x", "y"]] / pixel_size
    pixels = gpd.GeoDataFrame(
        geometry=shapes.geometry.scale(1 / pixel_size, 1 / pixel_size, origin=(0, 0)), index=shapes.index
    )

    with (
        caplog.at_level(logging.WARNING, logger="segger"),
        pytest.warns(UserWarning, match="look like pixels"),
    ):
        sg.tl.segger_fit(rebuild(points, pixels), **FAST)

    low, high = map(float, re.search(r"pixels, of ([\d.]+) to ([\d.]+) µm", caplog.text).groups())
    assert low <= pixel_size <= high


def test_fit_micron_coordinates_do_not_warn(toy, recwarn):
    sg.tl.segger_fit(rebuild(*parts(toy)), **FAST)

    assert not [warning for warning in recwarn if "look like pixels" in str(warning.message)]


@pytest.mark.parametrize(
    "kind",
    ["self-intersecting", "zero-area", "too few vertices"],
)
def test_fit_ignores_unusable_shape(toy, caplog, kind):
    points, shapes = parts(toy)
    geometries = shapes.geometry.to_numpy().copy()
    centre = shapely.centroid(geometries[0])
    x, y = centre.x, centre.y
    if kind == "self-intersecting":
        geometries[0] = shapely.Polygon([(x - 3, y - 3), (x + 3, y + 3), (x + 3, y - 3), (x - 3, y + 3)])
    elif kind == "zero-area":
        geometries[0] = shapely.Polygon([(x, y), (x + 1, y), (x + 2, y)])
    else:
        geometries[0] = shapely.polygons(shapely.linearrings([(x, y), (x + 1, y), (x, y)]))
    broken = gpd.GeoDataFrame(geometry=geometries, index=shapes.index)
    sdata = rebuild(points, broken)

    with caplog.at_level(logging.WARNING, logger="segger"):
        sg.tl.segger_fit(sdata, **FAST)
    table = sdata.tables["segger_table"]

    assert f"for example {shapes.index[0]!r}" in caplog.text
    assert shapes.index[0] not in set(table.obs["prior_id"].dropna().astype(str))
    assert sdata.shapes["segger_boundaries"].is_valid.all()


def test_fit_multipart_shape_used(toy):
    points, shapes = parts(toy)
    geometries = shapes.geometry.to_numpy().copy()
    extra = shapely.box(-30, -30, -25, -25)
    geometries[0] = shapely.MultiPolygon([geometries[0], extra])
    sdata = rebuild(points, gpd.GeoDataFrame(geometry=geometries, index=shapes.index))
    sg.tl.segger_fit(sdata, **FAST)
    table = sdata.tables["segger_table"]
    boundaries = sdata.shapes["segger_boundaries"]

    # The cell grows from the multi-part nucleus and its polygon stays one valid polygon.
    assert shapes.index[0] in set(table.obs["prior_id"].dropna().astype(str))
    cell = table.obs.loc[table.obs["prior_id"].astype(str) == shapes.index[0], "cell_id"].iloc[0]
    assert boundaries.loc[cell].geometry.geom_type == "Polygon"
    assert boundaries.is_valid.all()


def test_fit_only_invalid_shapes(toy):
    points, shapes = parts(toy)
    flat = [shapely.Polygon([(0, 0), (1, 0), (2, 0)])] * len(shapes)
    sdata = rebuild(points, gpd.GeoDataFrame(geometry=flat, index=shapes.index))

    with pytest.raises(
        ValueError, match=f"All {len(shapes)} prior shapes of 'nucleus_boundaries' are invalid"
    ):
        sg.tl.segger_fit(sdata, **FAST)


def test_fit_infinite_coordinate(toy):
    points, shapes = parts(toy)
    sdata = rebuild(points, shapes)
    bad = sdata.points["transcripts"].compute()
    bad.loc[bad.index[3], "y"] = np.inf
    sdata.points["transcripts"] = sd.models.PointsModel.parse(
        bad, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="feature_name"
    )

    with pytest.raises(ValueError, match="inf"):
        sg.tl.segger_fit(sdata, **FAST)
