from __future__ import annotations

import logging
import re

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata as sd
import torch
from scipy.spatial import cKDTree

import segger as sg
from segger.graph import GraphInputs, GraphSettings, Tile, build_tile_graph
from segger.models import Segger, predict_tile
from segger.tl import _segment as segment

TILE_SIZE = 15.0
GAP_Y = (36.0, 52.0)
SUMMARY = re.compile(
    r"Predicted (\d+) of (\d+) tiles: (\d+) contained no transcripts, (\d+) had no prior shape within "
    r"dist_bd = [\d.]+ µm \(their (\d+) transcripts go to the fragment step\)\."
)


def holed_toy() -> sd.SpatialData:
    """Return toy(n_cells=60) without the nuclei of its left half and without transcripts in a band.

    The band ``GAP_Y`` is wider than a tile, so a whole row of tiles contains no transcripts.
    """
    sdata = sg.datasets.toy(n_cells=60, random_state=0)
    points = sdata.points["transcripts"].compute()
    in_gap = points["y"].between(*GAP_Y).to_numpy()
    sdata.points["transcripts"] = sd.models.PointsModel.parse(
        points.loc[~in_gap].reset_index(drop=True),
        coordinates={"x": "x", "y": "y", "z": "z"},
        feature_key="feature_name",
    )

    shapes = sdata.shapes["nucleus_boundaries"]
    centroids = shapely.get_coordinates(shapely.centroid(shapes.geometry.to_numpy()))
    middle = (points["x"].min() + points["x"].max()) / 2
    keep = (centroids[:, 0] >= middle) & ~((centroids[:, 1] >= GAP_Y[0]) & (centroids[:, 1] <= GAP_Y[1]))
    sdata.shapes["nucleus_boundaries"] = shapes.loc[keep]
    return sdata


def expected_counts(points: pd.DataFrame, shapes: gpd.GeoDataFrame, *, min_qv: float, dist_bd: float) -> dict:
    """Count empty tiles and tiles without a shape in reach, without segger's tiling code."""
    graph = points.loc[~points["is_control"] & (points["qv"] >= min_qv)]
    xy = graph[["x", "y"]].to_numpy()
    low = xy.min(axis=0)
    counts = np.maximum(np.ceil((xy.max(axis=0) - low) / TILE_SIZE).astype(int), 1)
    width = (xy.max(axis=0) - low) / counts
    column = np.clip(np.floor((xy[:, 0] - low[0]) / width[0]).astype(int), 0, counts[0] - 1)
    row = np.clip(np.floor((xy[:, 1] - low[1]) / width[1]).astype(int), 0, counts[1] - 1)
    tile = row * counts[0] + column

    centroids = shapely.get_coordinates(shapely.centroid(shapes.geometry.to_numpy()))
    distance, _ = cKDTree(centroids).query(xy, k=1)
    in_shape = graph["overlaps_nucleus"].to_numpy() & graph["cell_id"].isin(shapes.index).to_numpy()
    reached = (distance <= dist_bd) | in_shape

    occupied = np.unique(tile)
    reached_tiles = np.unique(tile[reached])
    unreached_tiles = np.setdiff1d(occupied, reached_tiles)
    unreached = np.isin(tile, unreached_tiles)
    return {
        "n_tiles": int(counts.prod()),
        "predicted": len(occupied),
        "empty": int(counts.prod()) - len(occupied),
        "unreached": len(unreached_tiles),
        "unreached_transcripts": int(unreached.sum()),
        "unreached_index": graph.index[unreached],
    }


def model_counts(sdata: sd.SpatialData, model: Segger) -> dict:
    """Return :func:`expected_counts` of ``sdata`` with the model's ``min_qv`` and ``dist_bd``."""
    return expected_counts(
        sdata.points["transcripts"].compute(),
        sdata.shapes["nucleus_boundaries"],
        min_qv=model.settings["min_qv"],
        dist_bd=model.settings["graph"]["dist_bd"],
    )


@pytest.fixture(scope="module")
def model():
    return sg.tl.segger_fit(sg.datasets.toy(n_cells=60, random_state=0), max_epochs=2, progress=False)


def test_tile_summary_counts_holes(model, caplog):
    sdata = holed_toy()
    shapes = sdata.shapes["nucleus_boundaries"]
    expected = expected_counts(
        sdata.points["transcripts"].compute(),
        shapes,
        min_qv=model.settings["min_qv"],
        dist_bd=model.settings["graph"]["dist_bd"],
    )

    with caplog.at_level(logging.INFO, logger="segger"):
        sg.tl.segger_predict(sdata, model, tile_size=TILE_SIZE, progress=False)
    messages = [SUMMARY.search(record.getMessage()) for record in caplog.records]
    matches = [match for match in messages if match]

    assert len(matches) == 1
    predicted, n_tiles, empty, unreached, unreached_transcripts = map(int, matches[0].groups())
    assert expected["empty"] > 0
    assert expected["unreached"] > 0
    assert n_tiles == expected["n_tiles"]
    assert predicted == expected["predicted"]
    assert empty == expected["empty"]
    assert unreached == expected["unreached"]
    assert unreached_transcripts == expected["unreached_transcripts"]

    result = sdata.points["transcripts"].compute().loc[expected["unreached_index"]]
    cell_ids = result["segger_cell_id"]
    assert (cell_ids.isna() | cell_ids.str.startswith("segger-", na=False)).all()
    assert not cell_ids.isin(shapes.index).any()
    assert result["segger_score"].isna().all()


def test_tile_summary_intact_slide(model, caplog):
    sdata = sg.datasets.toy(n_cells=60, random_state=0)
    expected = model_counts(sdata, model)
    with caplog.at_level(logging.INFO, logger="segger"):
        sg.tl.segger_predict(sdata, model, tile_size=TILE_SIZE, progress=False)
    matches = [SUMMARY.search(record.getMessage()) for record in caplog.records]
    groups = [tuple(map(int, match.groups())) for match in matches if match]

    assert groups == [(expected["n_tiles"], expected["n_tiles"], 0, 0, 0)]


def test_predict_tile_without_shapes():
    rng = np.random.default_rng(0)
    n = 50
    inputs = GraphInputs(
        positions=rng.uniform(0, 10, (n, 3)).astype(np.float32),
        tokens=rng.integers(0, 3, n).astype(np.int64),
        prior_index=np.full(n, -1, dtype=np.int64),
        shape_centroids=np.array([[100.0, 100.0]], dtype=np.float32),
        shape_features=np.zeros((1, 4), dtype=np.float32),
    )
    tile = Tile(
        index=0,
        bounds=(0.0, 0.0, 10.0, 10.0),
        transcripts=np.arange(n),
        core=np.ones(n, dtype=bool),
        shapes=np.empty(0, dtype=np.int64),
    )
    model = Segger(["a", "b"], embedding_dim=4, hidden_channels=8, out_channels=4, heads=1)

    result = predict_tile(model, build_tile_graph(inputs, tile, GraphSettings()), k_bd=4)

    np.testing.assert_array_equal(result.transcripts, np.arange(n))
    assert result.embeddings.shape == (n, model.embedding_size)
    assert np.isfinite(result.embeddings).all()
    assert len(result.sources) == 0
    assert len(result.scores) == 0


def test_schedulers_give_equal_labels(model):
    sdata = sg.datasets.toy(n_cells=60, random_state=1)
    torch_threads = torch.get_num_threads()
    sg.tl.segger_predict(
        sdata, model, key_added="threads", scheduler="threads", tile_size=TILE_SIZE, progress=False
    )
    sg.tl.segger_predict(
        sdata, model, key_added="sync", scheduler="synchronous", tile_size=TILE_SIZE, progress=False
    )
    with dask.config.set(scheduler="single-threaded"):
        sg.tl.segger_predict(sdata, model, key_added="configured", tile_size=TILE_SIZE, progress=False)
    points = sdata.points["transcripts"].compute()

    assert points["threads_cell_id"].notna().sum() > 0
    for key in ("sync", "configured"):
        pd.testing.assert_series_equal(points[f"{key}_cell_id"], points["threads_cell_id"], check_names=False)
        pd.testing.assert_series_equal(points[f"{key}_score"], points["threads_score"], check_names=False)
    assert sdata.tables["threads_table"].uns["threads"]["params"]["scheduler"] == "threads"
    assert sdata.tables["sync_table"].uns["sync"]["params"]["scheduler"] == "synchronous"
    assert sdata.tables["configured_table"].uns["configured"]["params"]["scheduler"] == "synchronous"
    assert torch.get_num_threads() == torch_threads


@pytest.mark.parametrize("configured", [None, "processes"])
def test_default_scheduler_is_threads(model, configured):
    sdata = sg.datasets.toy(n_cells=30, random_state=2)
    with dask.config.set(scheduler=configured):
        sg.tl.segger_predict(sdata, model, progress=False)

    assert sdata.tables["segger_table"].uns["segger"]["params"]["scheduler"] == "threads"


@pytest.mark.parametrize("scheduler", ["processes", "distributed", "thread", 2])
def test_invalid_scheduler_rejected(model, scheduler):
    sdata = sg.datasets.toy(n_cells=30, random_state=2)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        sg.tl.segger_predict(sdata, model, scheduler=scheduler, progress=False)

    assert "segger_cell_id" not in sdata.points["transcripts"].columns


def test_scheduler_and_client_rejected(model):
    sdata = sg.datasets.toy(n_cells=30, random_state=2)
    with pytest.raises(ValueError, match="were both given"):
        sg.tl.segger_predict(sdata, model, scheduler="threads", client=object(), progress=False)

    assert "segger_cell_id" not in sdata.points["transcripts"].columns


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_failed_tile_named_locally(model, monkeypatch, scheduler):
    sdata = sg.datasets.toy(n_cells=60, random_state=1)
    elements = sorted(name for _, name, _ in sdata.gen_elements())
    columns = list(sdata.points["transcripts"].columns)
    build = segment.build_tile_graph

    def fail_on_tile_3(inputs, tile, settings):
        if tile.index == 3:
            raise MemoryError("out of memory")
        return build(inputs, tile, settings)

    monkeypatch.setattr(segment, "build_tile_graph", fail_on_tile_3)
    with pytest.raises(MemoryError, match="out of memory") as raised:
        sg.tl.segger_predict(sdata, model, scheduler=scheduler, tile_size=TILE_SIZE, progress=False)

    assert any("predicting segger tile 3," in note for note in raised.value.__notes__)
    assert sorted(name for _, name, _ in sdata.gen_elements()) == elements
    assert list(sdata.points["transcripts"].columns) == columns


def test_progress_bar_counts_tiles(model, monkeypatch):
    closed = []

    class RecordingBar(segment.tqdm):
        def close(self):
            closed.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(segment, "tqdm", RecordingBar)
    sdata = sg.datasets.toy(n_cells=60, random_state=1)
    expected = model_counts(sdata, model)
    sg.tl.segger_predict(sdata, model, tile_size=TILE_SIZE, progress=True)

    assert closed[0] == ("Predicting tiles", expected["predicted"], expected["predicted"])
