"""Segmentation of points elements split into several partitions, in memory and on disk."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from spatialdata.models import PointsModel

import segger as sg
from segger.tl._writeback import Cells, _OutputNames, _points_with_columns

N_PARTITIONS = 4


@pytest.fixture(scope="module")
def fitted():
    return sg.tl.segger_fit(sg.datasets.toy(n_cells=40, random_state=0), max_epochs=2, progress=False)


def split_points(sdata: sd.SpatialData, npartitions: int) -> sd.SpatialData:
    """Return a copy of ``sdata`` whose points element has ``npartitions`` partitions."""
    frame = sdata.points["transcripts"].compute()
    frame.attrs = {}
    points = PointsModel.parse(
        dd.from_pandas(frame, npartitions=npartitions),
        coordinates={"x": "x", "y": "y", "z": "z"},
        feature_key="feature_name",
    )
    return sd.SpatialData(points={"transcripts": points}, shapes=dict(sdata.shapes))


def test_partitions_give_same_labels(fitted):
    sdata = sg.datasets.toy(n_cells=40, random_state=1)
    split = split_points(sdata, N_PARTITIONS)
    assert split.points["transcripts"].npartitions == N_PARTITIONS

    sg.tl.segger_predict(sdata, fitted, progress=False)
    sg.tl.segger_predict(split, fitted, progress=False)
    whole = sdata.points["transcripts"].compute()
    parts = split.points["transcripts"].compute()

    assert whole["segger_cell_id"].notna().sum() > 0
    pd.testing.assert_series_equal(parts["segger_cell_id"], whole["segger_cell_id"])
    pd.testing.assert_series_equal(parts["segger_score"], whole["segger_score"])
    assert split.points["transcripts"].npartitions == N_PARTITIONS
    assert list(split.tables["segger_table"].var_names) == list(sdata.tables["segger_table"].var_names)
    assert (split.tables["segger_table"].X != sdata.tables["segger_table"].X).nnz == 0


def test_partitioned_zarr_round_trip(fitted, tmp_path):
    split = split_points(sg.datasets.toy(n_cells=40, random_state=2), N_PARTITIONS)
    split.write(tmp_path / "input.zarr")
    backed = sd.read_zarr(tmp_path / "input.zarr")

    sg.tl.segger_predict(backed, fitted, progress=False)
    backed.write(tmp_path / "output.zarr")
    written = sd.read_zarr(tmp_path / "output.zarr").points["transcripts"].compute()
    in_memory = backed.points["transcripts"].compute()

    assert backed.points["transcripts"].npartitions == N_PARTITIONS
    assert written["segger_cell_id"].notna().sum() > 0
    pd.testing.assert_series_equal(
        written["segger_cell_id"].reset_index(drop=True), in_memory["segger_cell_id"].reset_index(drop=True)
    )
    np.testing.assert_array_equal(written["segger_score"].to_numpy(), in_memory["segger_score"].to_numpy())


def test_columns_follow_partition_rows():
    frame = pd.DataFrame(
        {"x": np.arange(6.0), "y": np.zeros(6), "feature_name": pd.Categorical(list("aabbcc"))}
    )
    points = PointsModel.parse(dd.from_pandas(frame, npartitions=2), feature_key="feature_name")
    lengths = tuple(int(n) for n in points.map_partitions(len).compute())
    cells = Cells(ids=np.array(["c1", "c2"], dtype=object), codes=np.array([0, -1, 1, 1, 0, -1]))
    scores = np.linspace(0, 1, 6, dtype=np.float32)

    extended = _points_with_columns(points, cells, scores, lengths, names=_OutputNames.from_key("t"))
    result = extended.compute()

    assert extended.npartitions == 2
    assert result["t_cell_id"].tolist() == ["c1", pd.NA, "c2", "c2", "c1", pd.NA]
    np.testing.assert_array_equal(result["t_score"].to_numpy(), scores)


def test_changed_partitions_raise():
    frame = pd.DataFrame(
        {"x": np.arange(6.0), "y": np.zeros(6), "feature_name": pd.Categorical(list("aabbcc"))}
    )
    points = PointsModel.parse(dd.from_pandas(frame, npartitions=2), feature_key="feature_name")
    cells = Cells(ids=np.array(["c1"], dtype=object), codes=np.zeros(6, dtype=np.int64))
    scores = np.zeros(6, dtype=np.float32)
    names = _OutputNames.from_key("t")

    with pytest.raises(RuntimeError, match=r"has 2 partition\(s\)"):
        _points_with_columns(points, cells, scores, (6,), names=names)
    extended = _points_with_columns(points, cells, scores, (1, 5), names=names)
    with pytest.raises(
        RuntimeError, match=r"Partition [01] of the points element has 3 rows, but it had [15] when"
    ):
        extended.compute()
