"""Per-transcript arrays kept as memory-mapped files in a scratch folder."""

from __future__ import annotations

import gc
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import spatialdata

import segger as sg
import segger.tl._segment as segment
from segger import _constants as C
from segger._scratch import ArrayStore, MappedArray, open_mapped
from segger.tl._prepare import prepare


@pytest.fixture(scope="module")
def model():
    return sg.tl.segger_fit(sg.datasets.toy(n_cells=40, random_state=0), max_epochs=2, progress=False)


def _segmentation(sdata) -> tuple[pd.DataFrame, object, object]:
    points = sdata.points["transcripts"].compute()
    return (
        points[["segger_cell_id", "segger_score"]],
        sdata.shapes["segger_boundaries"],
        sdata.tables["segger_table"],
    )


def test_column_in_memory_concatenates():
    column = ArrayStore().column("values")
    column.append(np.arange(3))
    column.append(np.arange(2))

    result = column.finish()

    assert not isinstance(result, np.memmap)
    np.testing.assert_array_equal(result, [0, 1, 2, 0, 1])


def test_column_on_disk_maps_rows(tmp_path):
    store = ArrayStore(tmp_path)
    column = store.column("positions")
    parts = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.zeros((0, 3), np.float32),
        np.ones((1, 3), np.float32),
    ]
    for part in parts:
        column.append(part)

    result = column.finish()

    assert isinstance(result, np.memmap)
    assert result.shape == (3, 3)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.concatenate(parts))
    assert (tmp_path / "positions.npy").stat().st_size == 9 * 4


def test_empty_column_on_disk(tmp_path):
    column = ArrayStore(tmp_path).column("ids")
    column.append(np.zeros((0, 2), dtype=np.int64))

    result = column.finish()

    assert result.shape == (0, 2)
    assert result.dtype == np.int64


def test_column_without_parts_is_empty():
    result = ArrayStore().column("ids").finish()

    assert result.shape == (0,)


def test_keep_and_full_on_disk(tmp_path):
    store = ArrayStore(tmp_path)

    tokens = store.keep("tokens", np.array([3, 1, 2], dtype=np.int32))
    filled = store.full("score", 4, np.nan, np.float32)
    filled[1] = 0.5

    assert isinstance(tokens, np.memmap)
    np.testing.assert_array_equal(tokens, [3, 1, 2])
    with pytest.raises(ValueError, match="read-only"):
        tokens[0] = 0
    assert isinstance(filled, np.memmap)
    np.testing.assert_array_equal(filled, [np.nan, 0.5, np.nan, np.nan])
    with pytest.raises(RuntimeError, match="written twice"):
        store.keep("tokens", tokens)


def _fill_and_fail(scratch_dir, seen: list) -> None:
    with ArrayStore.open(scratch_dir) as store:
        seen.append((store.on_disk, store.folder.parent))
        store.keep("values", np.arange(3))
        raise KeyError("stop")


@dataclass(frozen=True)
class _Arrays:
    stored: np.ndarray
    appended: np.ndarray
    filled: np.ndarray
    view: np.ndarray
    in_memory: np.ndarray


def test_portable_arrays_map_in_other_process(tmp_path):
    with ArrayStore.open(tmp_path) as store:
        column = store.column("appended")
        column.append(np.arange(6, dtype=np.float32).reshape(3, 2))
        filled = store.full("filled", 1000, 7, np.int32)
        stored = store.keep("stored", np.arange(1000, dtype=np.int64))
        arrays = _Arrays(stored, column.finish(), filled, stored[::2], np.ones(3))

        portable = store.portable(arrays)
        message = pickle.dumps(portable)
        opened = open_mapped(pickle.loads(message))

        for name in ("stored", "appended", "filled"):
            assert isinstance(getattr(portable, name), MappedArray)
        assert portable.view is arrays.view
        assert portable.in_memory is arrays.in_memory
        # The three mapped arrays take 12 kB and travel as references of a few hundred bytes,
        # while the view and the array in memory travel as data.
        assert len(message) < len(pickle.dumps((arrays.view, arrays.in_memory))) + 1000
        for name in ("stored", "appended", "filled", "view", "in_memory"):
            np.testing.assert_array_equal(getattr(opened, name), getattr(arrays, name))
        assert isinstance(opened.stored, np.memmap)


def test_portable_in_memory_unchanged():
    arrays = _Arrays(*(np.arange(4),) * 5)

    assert ArrayStore().portable(arrays) is arrays


def test_store_folder_removed_after_error(tmp_path):
    seen = []

    with pytest.raises(KeyError):
        _fill_and_fail(tmp_path, seen)

    assert seen == [(True, tmp_path)]
    assert list(tmp_path.iterdir()) == []


def test_missing_scratch_dir_raises(tmp_path):
    sdata = sg.datasets.toy(n_cells=20, random_state=0)
    missing = tmp_path / "missing"

    with pytest.raises(ValueError, match="is not an existing folder"):
        sg.tl.segger_fit(sdata, scratch_dir=missing, max_epochs=1, progress=False)

    assert "segger_boundaries" not in sdata.shapes
    assert "segger_cell_id" not in sdata.points["transcripts"].columns
    assert not missing.exists()


def test_read_only_scratch_dir_raises(tmp_path, monkeypatch):
    # Root may write to a folder whatever its mode, so the permission check is what is replaced.
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if path == tmp_path else writable(path, mode))

    with pytest.raises(ValueError, match="is not writable"), ArrayStore.open(tmp_path):
        pass

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValueError, "is empty"),
        (5, TypeError, "is not a folder path"),
        (b"/tmp", TypeError, "is not a folder path"),
    ],
)
def test_invalid_scratch_dir_named(value, error, message):
    with pytest.raises(error, match=message) as raised, ArrayStore.open(value):
        pass

    assert f"scratch_dir={value!r}" in str(raised.value)
    assert "scratch_dir=None" in str(raised.value)


def test_scratch_dir_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))

    with ArrayStore.open("~") as store:
        assert store.folder.parent == tmp_path

    assert list(tmp_path.iterdir()) == []


def test_full_disk_names_scratch_dir(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with ArrayStore.open(tmp_path) as store:
        monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
        with pytest.raises(OSError, match=r"'score' to .* failed: .*No space left") as raised:
            store.full("score", 10, np.nan, np.float32)
        monkeypatch.setattr(np, "save", no_space)
        with pytest.raises(OSError, match=r"'tokens' to .* failed"):
            store.keep("tokens", np.arange(3))

    assert str(tmp_path) in str(raised.value)
    assert "80 bytes per transcript" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_prepare_maps_arrays_from_scratch(tmp_path):
    sdata = sg.datasets.toy(n_cells=40, random_state=1)
    options = {"points_key": "transcripts", "shapes_key": "nucleus_boundaries", "min_qv": C.DEFAULT_MIN_QV}
    in_memory = prepare(sdata, require_labels=True, **options)

    with ArrayStore.open(tmp_path) as store:
        on_disk = prepare(sdata, require_labels=True, store=store, **options)
        files = sorted(path.name for path in store.folder.iterdir())

        for name in ("in_graph", "positions", "prior_index", "graph_feature_codes", "transcript_ids"):
            assert isinstance(getattr(on_disk, name), np.memmap), name
            np.testing.assert_array_equal(getattr(on_disk, name), getattr(in_memory, name))
        assert isinstance(on_disk.points.xy, np.memmap)
        np.testing.assert_array_equal(on_disk.points.xy, in_memory.points.xy)
        np.testing.assert_array_equal(on_disk.points.feature_codes, in_memory.points.feature_codes)
        np.testing.assert_array_equal(on_disk.points.is_control, in_memory.points.is_control)
        assert list(on_disk.points.features) == list(in_memory.points.features)

    assert "positions.npy" in files
    assert "graph_transcript_ids.npy" in files
    assert list(tmp_path.iterdir()) == []


def test_fit_with_scratch_equals_in_memory(tmp_path, monkeypatch):
    options = {"max_epochs": 2, "random_state": 0, "progress": False}
    in_memory = sg.datasets.toy(n_cells=40, random_state=2)
    on_disk = sg.datasets.toy(n_cells=40, random_state=2)
    mapped = []
    leftover_sizes = []
    finish = segment._TileResults.finish

    def record_finish(results):
        predicted = finish(results)
        mapped.append(isinstance(predicted.shape, np.memmap))
        mapped.append(isinstance(predicted.leftover_embeddings, np.memmap))
        leftover_sizes.append(len(predicted.leftover))
        return predicted

    sg.tl.segger_fit(in_memory, **options)
    monkeypatch.setattr(segment._TileResults, "finish", record_finish)
    sg.tl.segger_fit(on_disk, scratch_dir=tmp_path, **options)

    columns, shapes, table = _segmentation(on_disk)
    expected_columns, expected_shapes, expected_table = _segmentation(in_memory)
    assert mapped == [True, True]
    assert leftover_sizes[0] > 0
    assert columns["segger_cell_id"].notna().sum() > 0
    pd.testing.assert_frame_equal(columns, expected_columns)
    assert shapes.geometry.geom_equals_exact(expected_shapes.geometry, tolerance=0).all()
    assert (table.X != expected_table.X).nnz == 0
    assert table.uns["segger"]["params"]["scratch_dir"] == str(tmp_path)


def test_output_columns_kept_until_points_freed(model, tmp_path):
    sdata = sg.datasets.toy(n_cells=40, random_state=3)
    sg.tl.segger_predict(sdata, model, scratch_dir=tmp_path, progress=False)

    folders = list(tmp_path.iterdir())
    assert len(folders) == 1
    assert folders[0].name.startswith("segger-output-")
    assert sorted(path.name for path in folders[0].iterdir()) == ["cell_codes.npy", "scores.npy"]
    written = tmp_path / "written.zarr"
    sdata.write(written)
    points = spatialdata.read_zarr(written).points["transcripts"].compute()
    assert points["segger_cell_id"].notna().sum() > 0

    del sdata
    gc.collect()

    assert list(tmp_path.iterdir()) == [written]


def test_predict_with_scratch_equals_in_memory(model, tmp_path):
    in_memory = sg.datasets.toy(n_cells=40, random_state=3)
    on_disk = sg.datasets.toy(n_cells=40, random_state=3)

    sg.tl.segger_predict(in_memory, model, progress=False)
    sg.tl.segger_predict(on_disk, model, scratch_dir=str(tmp_path), progress=False)

    columns, _, table = _segmentation(on_disk)
    expected_columns, _, expected_table = _segmentation(in_memory)
    pd.testing.assert_frame_equal(columns, expected_columns)
    assert (table.X != expected_table.X).nnz == 0


def test_failed_predict_removes_scratch(model, tmp_path, monkeypatch):
    sdata = sg.datasets.toy(n_cells=40, random_state=4)

    def fail(*args, **kwargs):
        raise RuntimeError("write-back failed")

    monkeypatch.setattr(segment, "write_cells", fail)
    with pytest.raises(RuntimeError, match="write-back failed"):
        sg.tl.segger_predict(sdata, model, scratch_dir=tmp_path, progress=False)

    assert list(tmp_path.iterdir()) == []
    assert "segger_cell_id" not in sdata.points["transcripts"].columns
    assert "segger_table" not in sdata.tables
