from __future__ import annotations

import logging
import re

import dask
import pandas as pd
import pytest

import segger as sg

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

FAST = {"max_epochs": 3, "progress": False, "tile_size": 25.0}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as connected:
        yield connected
    cluster.close()


@pytest.fixture(scope="module")
def fitted():
    sdata = sg.datasets.toy(n_cells=40, random_state=5)
    model = sg.tl.segger_fit(sdata, **FAST)
    return sdata, model


def test_predict_on_cluster_equals_serial(fitted, client):
    sdata, model = fitted
    sg.tl.segger_predict(sdata, model, key_added="cluster", client=client, progress=False)
    points = sdata.points["transcripts"].compute()

    assert points["segger_cell_id"].notna().sum() > 0
    pd.testing.assert_series_equal(points["cluster_cell_id"], points["segger_cell_id"], check_names=False)
    pd.testing.assert_series_equal(points["cluster_score"], points["segger_score"], check_names=False)


@pytest.mark.parametrize("shared", [True, False])
def test_predict_on_cluster_with_scratch(fitted, client, tmp_path, monkeypatch, caplog, shared):
    sdata, model = fitted
    key = f"scratch{int(shared)}"
    if not shared:
        # As if the workers ran on other machines that do not see the folder.
        monkeypatch.setattr("segger.tl._segment._workers_read_file", lambda *args: False)
    with caplog.at_level(logging.INFO, logger="segger"):
        sg.tl.segger_predict(sdata, model, key_added=key, client=client, scratch_dir=tmp_path, progress=False)
    points = sdata.points["transcripts"].compute()

    pd.testing.assert_series_equal(points[f"{key}_cell_id"], points["segger_cell_id"], check_names=False)
    pd.testing.assert_series_equal(points[f"{key}_score"], points["segger_score"], check_names=False)
    # Only the folder of the new points columns is left, which the points element still reads.
    assert [path.name.startswith("segger-output-") for path in tmp_path.iterdir()] == [True]
    assert ("The Dask workers map the per-transcript arrays" in caplog.text) is shared
    assert ("Not every Dask worker can read the scratch folder" in caplog.text) is not shared


def test_fit_on_cluster_equals_serial(client):
    serial = sg.datasets.toy(n_cells=40, random_state=6)
    on_cluster = sg.datasets.toy(n_cells=40, random_state=6)
    sg.tl.segger_fit(serial, **FAST)
    sg.tl.segger_fit(on_cluster, client=client, **FAST)

    pd.testing.assert_series_equal(
        on_cluster.points["transcripts"].compute()["segger_cell_id"],
        serial.points["transcripts"].compute()["segger_cell_id"],
    )


def test_failed_tile_names_tile(fitted, client, monkeypatch):
    sdata, model = fitted

    def fail(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr("segger.tl._segment._predict_tile_task", fail)
    with pytest.raises(RuntimeError, match=r"Prediction failed on the Dask cluster for tile\(s\) \[0, 1, "):
        sg.tl.segger_predict(sdata, model, key_added="broken", client=client, progress=False)

    assert "broken_cell_id" not in sdata.points["transcripts"].columns


def test_tasks_freeze_worker_objects(fitted, client, monkeypatch, tmp_path):
    sdata, model = fitted
    record = tmp_path / "freeze_counts.txt"

    def task_recording_freeze(tile, **kwargs):
        import gc

        from segger.tl import _segment

        predict = _segment.predict_tile

        def predict_and_record(*args, **options):
            with record.open("a") as file:
                file.write(f"during {gc.get_freeze_count()}\n")
            return predict(*args, **options)

        _segment.predict_tile = predict_and_record
        try:
            return _segment._predict_tile_task(tile, **kwargs)
        finally:
            _segment.predict_tile = predict
            with record.open("a") as file:
                file.write(f"after {gc.get_freeze_count()}\n")

    monkeypatch.setattr("segger.tl._segment._predict_tile_task", task_recording_freeze)
    sg.tl.segger_predict(sdata, model, key_added="frozen", client=client, progress=False)

    lines = [line.split() for line in record.read_text().splitlines()]
    during = [int(count) for moment, count in lines if moment == "during"]
    after = [int(count) for moment, count in lines if moment == "after"]
    assert len(during) > 1
    assert len(after) == len(during)
    assert min(during) > 0
    assert max(after) == 0
    points = sdata.points["transcripts"].compute()
    pd.testing.assert_series_equal(points["frozen_cell_id"], points["segger_cell_id"], check_names=False)


def test_dead_worker_names_tile(fitted, monkeypatch):
    sdata, model = fitted
    columns = list(sdata.points["transcripts"].columns)
    elements = sorted(name for _, name, _ in sdata.gen_elements())
    doomed = 4

    def exit_on_doomed_tile(tile, **kwargs):
        import os

        from segger.tl._segment import _predict_tile_task

        if tile == doomed:
            os._exit(1)
        return _predict_tile_task(tile, **kwargs)

    monkeypatch.setattr("segger.tl._segment._predict_tile_task", exit_on_doomed_tile)
    # The scheduler reads allowed-failures when it starts, so this test gets a cluster of its own.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
        pytest.raises(
            RuntimeError, match=r"Prediction failed on the Dask cluster for tile\(s\) \["
        ) as raised,
    ):
        sg.tl.segger_predict(sdata, model, key_added="dead", client=client, progress=False)

    failed = re.search(r"tile\(s\) \[([\d, ]*)\]", str(raised.value)).group(1)
    assert doomed in [int(index) for index in failed.split(", ")]
    assert "worker process running these tiles died" in str(raised.value)
    assert isinstance(raised.value.__cause__, distributed.KilledWorker)
    assert list(sdata.points["transcripts"].columns) == columns
    assert sorted(name for _, name, _ in sdata.gen_elements()) == elements


def test_default_client_not_used_without_client(fitted, client):
    sdata, model = fitted
    assert dask.config.get("scheduler") == "dask.distributed"
    sg.tl.segger_predict(sdata, model, key_added="local", progress=False)
    points = sdata.points["transcripts"].compute()

    params = sdata.tables["local_table"].uns["local"]["params"]
    assert params["scheduler"] == "threads"
    pd.testing.assert_series_equal(points["local_cell_id"], points["segger_cell_id"], check_names=False)


def test_closed_client_rejected(no_reading):
    sdata = sg.datasets.toy(n_cells=30, random_state=3)
    closed = distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    closed.close()

    with pytest.raises(ValueError, match=r"is closed, not running.*leave out client="):
        sg.tl.segger_fit(sdata, client=closed, **FAST)

    assert "segger_table" not in sdata.tables


@pytest.mark.parametrize("client", ["tcp://127.0.0.1:8786", 4])
def test_wrong_client_type_rejected(fitted, no_reading, client):
    sdata, model = fitted

    with pytest.raises(ValueError, match=rf"client must be a dask.distributed.Client, got {client!r}"):
        sg.tl.segger_predict(sdata, model, key_added="wrong", client=client, progress=False)

    assert "wrong_table" not in sdata.tables
