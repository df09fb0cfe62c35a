from __future__ import annotations

import gzip
import hashlib
import logging
import re
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import spatialdata
import torch

import segger as sg
from segger.cli import _staged, main
from segger.io._zarr import write_zarr

FAST = ["--max-epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def toy_sdata():
    try:
        return sg.datasets.toy(n_cells=30, random_state=0)
    except NotImplementedError:
        pytest.skip("segger.datasets.toy is not implemented yet")


@pytest.fixture
def xenium_folder(tmp_path, toy_sdata) -> Path:
    """Write the toy tissue as a bare Xenium folder: transcripts and nucleus vertices as parquet."""
    folder = tmp_path / "xenium"
    folder.mkdir()
    points = toy_sdata.points["transcripts"].compute()
    transcripts = pd.DataFrame(
        {
            "transcript_id": points["transcript_id"].to_numpy(dtype=np.uint64),
            "cell_id": points["cell_id"].astype(object).fillna("UNASSIGNED").to_numpy(),
            "overlaps_nucleus": points["overlaps_nucleus"].to_numpy(dtype=np.uint8),
            "feature_name": points["feature_name"].astype(str).to_numpy(),
            "x_location": points["x"].to_numpy(),
            "y_location": points["y"].to_numpy(),
            "z_location": points["z"].to_numpy(),
            "qv": points["qv"].to_numpy(),
        }
    )
    transcripts.to_parquet(folder / "transcripts.parquet")

    nuclei = toy_sdata.shapes["nucleus_boundaries"]
    rings = shapely.get_exterior_ring(nuclei.geometry.to_numpy())
    coordinates, owner = shapely.get_coordinates(rings, return_index=True)
    vertices = pd.DataFrame(
        {
            "cell_id": nuclei.index.to_numpy()[owner],
            "vertex_x": coordinates[:, 0],
            "vertex_y": coordinates[:, 1],
        }
    )
    vertices.to_parquet(folder / "nucleus_boundaries.parquet")
    return folder


@pytest.fixture
def zarr_input(tmp_path, toy_sdata) -> Path:
    path = tmp_path / "input.zarr"
    toy_sdata.write(path)
    return path


def folder_digest(path: Path) -> dict[str, str]:
    """Return the SHA-256 of every file under ``path``, keyed by its relative path."""
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Return the temporary and backup names that a run may leave in ``folder``."""
    return sorted(entry.name for entry in folder.iterdir() if ".tmp-" in entry.name or ".old-" in entry.name)


def check_segmentation(path: Path) -> spatialdata.SpatialData:
    sdata = spatialdata.read_zarr(path)
    assert "segger_table" in sdata.tables
    assert "segger_boundaries" in sdata.shapes
    assert "segger_cell_id" in sdata.points["transcripts"].columns
    assert sdata.tables["segger_table"].n_obs > 0
    return sdata


def test_segment_xenium_folder(xenium_folder, tmp_path, capsys):
    before = folder_digest(xenium_folder)
    handlers = list(logging.getLogger("segger").handlers)
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    output = tmp_path / "out.zarr"

    status = main(["segment", str(xenium_folder), "-o", str(output), *FAST])

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert folder_digest(xenium_folder) == before
    written = check_segmentation(output)
    assert leftovers(tmp_path) == []
    found = re.search(
        r"Found (\d+) cells and assigned (\d+) of (\d+) graph transcripts .* out (\d+) control", captured.err
    )
    assert found is not None, captured.err
    n_cells, n_assigned, n_graph, n_left_out = map(int, found.groups())
    points = written.points["transcripts"].compute()
    assert n_cells == written.tables["segger_table"].n_obs
    assert n_assigned == points["segger_cell_id"].notna().sum()
    min_qv = written.tables["segger_table"].uns["segger"]["params"]["min_qv"]
    left_out = points["is_control"] | (points["qv"] < min_qv)
    assert n_left_out == left_out.sum() > 0
    assert n_graph + n_left_out == len(points)
    assert str(output) in captured.err
    assert captured.out == ""
    assert logging.getLogger("segger").handlers == handlers
    assert signal.getsignal(signal.SIGTERM) == sigterm_handler


def test_segment_zarr_keeps_input_elements(zarr_input, toy_sdata, tmp_path):
    before = folder_digest(zarr_input)
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), *FAST, "-q"])

    assert status == 0
    assert folder_digest(zarr_input) == before
    written = check_segmentation(output)
    assert "nucleus_boundaries" in written.shapes
    assert written["nucleus_boundaries"].index.equals(toy_sdata["nucleus_boundaries"].index)
    input_columns = set(toy_sdata.points["transcripts"].columns)
    assert input_columns <= set(written.points["transcripts"].columns)
    points = written.points["transcripts"].compute()
    expected = toy_sdata.points["transcripts"].compute()
    np.testing.assert_array_equal(points["transcript_id"].to_numpy(), expected["transcript_id"].to_numpy())
    assert "segger_cell_id" not in toy_sdata.points["transcripts"].columns


def test_large_shapes_written_in_chunks(zarr_input, toy_sdata, tmp_path, monkeypatch):
    monkeypatch.setattr("segger.cli.write_zarr", partial(write_zarr, chunk_rows=8))
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), *FAST, "-q"])

    assert status == 0
    written = check_segmentation(output)
    for name in ("nucleus_boundaries", "segger_boundaries"):
        row_groups = pq.ParquetFile(output / "shapes" / name / "shapes.parquet").num_row_groups
        assert row_groups == -(-len(written[name]) // 8)
    nuclei, expected = written["nucleus_boundaries"], toy_sdata["nucleus_boundaries"]
    assert nuclei.index.equals(expected.index)
    np.testing.assert_array_equal(
        shapely.to_wkb(nuclei.geometry.array), shapely.to_wkb(expected.geometry.array)
    )
    table = written.tables["segger_table"]
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    assert sorted(table.obs[instance_key]) == sorted(written["segger_boundaries"].index)
    assert written["segger_boundaries"].index.name == instance_key
    assert shapely.is_valid(written["segger_boundaries"].geometry.array).all()


def test_existing_output_rejected(zarr_input, tmp_path, capsys):
    output = tmp_path / "out.zarr"
    output.mkdir()
    (output / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    before = folder_digest(output)

    status = main(["segment", str(zarr_input), "-o", str(output), *FAST])

    assert status == 2
    assert "already exists" in capsys.readouterr().err
    assert folder_digest(output) == before


def test_overwrite_replaces_store(zarr_input, tmp_path):
    output = tmp_path / "out.zarr"
    output.mkdir()
    (output / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (output / "stale.txt").write_text("from an earlier run")

    status = main(["segment", str(zarr_input), "-o", str(output), "--overwrite", *FAST, "-q"])

    assert status == 0
    assert not (output / "stale.txt").exists()
    check_segmentation(output)
    assert leftovers(tmp_path) == []


def test_overwrite_keeps_non_zarr_folder(zarr_input, tmp_path, capsys):
    output = tmp_path / "results"
    output.mkdir()
    (output / "notes.txt").write_text("not a zarr store")

    status = main(["segment", str(zarr_input), "-o", str(output), "--overwrite", *FAST])

    assert status == 2
    assert "not a zarr store" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "not a zarr store"


@pytest.mark.parametrize(
    ("relative_output", "message"),
    [
        ("input.zarr", "is INPUT"),
        ("input.zarr/inner.zarr", "lies inside INPUT"),
        (".", "contains INPUT"),
    ],
)
def test_output_touching_input_rejected(zarr_input, tmp_path, capsys, relative_output, message):
    before = folder_digest(zarr_input)
    output = tmp_path / relative_output

    status = main(["segment", str(zarr_input), "-o", str(output), "--overwrite", *FAST])

    assert status == 2
    assert message in capsys.readouterr().err
    assert folder_digest(zarr_input) == before


def test_missing_input_reported(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"

    status = main(["segment", str(missing), "-o", str(tmp_path / "out.zarr")])

    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("segger: error: INPUT ")
    assert "does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out.zarr").exists()


def test_unrecognised_input_message(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()

    status = main(["segment", str(folder), "-o", str(tmp_path / "out.zarr")])

    err = capsys.readouterr().err
    assert status == 1
    assert "is neither a SpatialData zarr store" in err
    assert "transcripts.parquet" in err


def test_verbose_error_shows_traceback(tmp_path, capsys):
    status = main(["segment", str(tmp_path / "missing"), "-o", str(tmp_path / "out.zarr"), "-v"])

    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" in err
    assert "segger: error: INPUT " in err


def test_failed_fit_writes_nothing(zarr_input, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        msg = "injected training failure"
        raise ValueError(msg)

    monkeypatch.setattr(sg.tl, "segger_fit", fail)
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), *FAST])

    assert status == 1
    assert "segger: error: injected training failure" in capsys.readouterr().err
    assert not output.exists()
    assert leftovers(tmp_path) == []


def test_interrupted_training_exits_130(zarr_input, tmp_path, monkeypatch, capsys):
    def interrupted_step(self, data, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(sg.models.SeggerModule, "training_step", interrupted_step)
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), *FAST])

    assert status == 130
    assert "segger: interrupted" in capsys.readouterr().err
    assert not output.exists()
    assert leftovers(tmp_path) == []


def test_failed_write_removes_temp_store(zarr_input, tmp_path, monkeypatch, capsys):
    original_write = spatialdata.SpatialData.write
    written = []

    def write_then_fail(self, file_path, *args, **kwargs):
        original_write(self, file_path, *args, **kwargs)
        written.append(Path(file_path))
        msg = "injected write failure"
        raise OSError(msg)

    monkeypatch.setattr(spatialdata.SpatialData, "write", write_then_fail)
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), *FAST, "-q"])

    assert status == 1
    assert "injected write failure" in capsys.readouterr().err
    assert len(written) == 1
    assert written[0].name.startswith("out.zarr.tmp-")
    assert not written[0].exists()
    assert not output.exists()
    assert leftovers(tmp_path) == []


def test_model_option_applies_saved_model(zarr_input, tmp_path, monkeypatch):
    model_file = tmp_path / "model.pt"
    first = tmp_path / "trained.zarr"
    status = main(
        ["segment", str(zarr_input), "-o", str(first), "--save-model", str(model_file), *FAST, "-q"]
    )
    assert status == 0
    assert model_file.is_file()
    assert leftovers(tmp_path) == []

    def fail(*args, **kwargs):
        msg = "segger_fit must not run when --model is given"
        raise AssertionError(msg)

    monkeypatch.setattr(sg.tl, "segger_fit", fail)
    second = tmp_path / "applied.zarr"
    status = main(
        ["segment", str(zarr_input), "-o", str(second), "--model", str(model_file), "-q", "--no-progress"]
    )

    assert status == 0
    trained = check_segmentation(first).points["transcripts"].compute()
    applied = check_segmentation(second).points["transcripts"].compute()
    pd.testing.assert_series_equal(trained["segger_cell_id"], applied["segger_cell_id"])


def test_training_option_with_model_rejected(zarr_input, tmp_path, capsys):
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"")

    status = main(
        [
            "segment",
            str(zarr_input),
            "-o",
            str(tmp_path / "out.zarr"),
            "--model",
            str(model_file),
            "--max-epochs",
            "3",
        ]
    )

    err = capsys.readouterr().err
    assert status == 2
    assert "--max-epochs" in err
    assert "--model" in err


def test_missing_model_reported(zarr_input, tmp_path, capsys):
    status = main(
        ["segment", str(zarr_input), "-o", str(tmp_path / "out.zarr"), "--model", str(tmp_path / "none.pt")]
    )

    assert status == 1
    assert "Model file" in capsys.readouterr().err


def test_invalid_model_file_reported(zarr_input, tmp_path, capsys):
    model_file = tmp_path / "model.pt"
    model_file.write_text("not a model")

    status = main(["segment", str(zarr_input), "-o", str(tmp_path / "out.zarr"), "--model", str(model_file)])

    assert status == 1
    assert "could not be read" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_existing_save_model_rejected(zarr_input, tmp_path, capsys):
    model_file = tmp_path / "model.pt"
    model_file.write_text("keep me")

    status = main(
        ["segment", str(zarr_input), "-o", str(tmp_path / "out.zarr"), "--save-model", str(model_file), *FAST]
    )

    assert status == 2
    assert "--save-model" in capsys.readouterr().err
    assert model_file.read_text() == "keep me"


def test_save_model_inside_output_rejected(zarr_input, tmp_path, capsys):
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), "--save-model", str(output), *FAST])

    assert status == 2
    assert "inside OUTPUT" in capsys.readouterr().err
    assert not output.exists()


def test_existing_key_in_input(zarr_input, tmp_path, capsys):
    segmented = tmp_path / "segmented.zarr"
    assert main(["segment", str(zarr_input), "-o", str(segmented), *FAST, "-q"]) == 0
    before = folder_digest(segmented)

    status = main(["segment", str(segmented), "-o", str(tmp_path / "again.zarr"), *FAST])

    assert status == 2
    assert "--key-added 'segger'" in capsys.readouterr().err
    assert not (tmp_path / "again.zarr").exists()

    status = main(["segment", str(segmented), "-o", str(tmp_path / "again.zarr"), "--overwrite", *FAST, "-q"])

    assert status == 0
    check_segmentation(tmp_path / "again.zarr")
    assert folder_digest(segmented) == before


def test_invalid_option_value(tmp_path, capsys):
    status = main(["segment", "-o", str(tmp_path / "out.zarr"), "--score-cut", "1.5"])

    assert status == 2
    assert "--score-cut" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_float16_on_cpu_rejected(tmp_path, capsys, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    status = main(
        ["segment", "-o", str(tmp_path / "out.zarr"), "--precision", "16-mixed", "--device", device]
    )

    assert status == 2
    err = capsys.readouterr().err
    assert (
        f"--precision 16-mixed needs a CUDA device, but training runs on the CPU (--device {device})" in err
    )
    assert "--precision bf16-mixed" in err
    assert not (tmp_path / "out.zarr").exists()


def test_missing_output_folder(tmp_path, capsys):
    status = main(["segment", "-o", str(tmp_path / "no_such_folder" / "out.zarr")])

    assert status == 2
    assert "does not exist" in capsys.readouterr().err


def test_command_required(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_version(capsys):
    status = main(["--version"])

    assert status == 0
    assert capsys.readouterr().out.strip() == f"segger {sg.__version__}"


def test_help_gives_units(capsys):
    status = main(["segment", "--help"])

    out = capsys.readouterr().out
    assert status == 0
    assert "--tile-size UM" in out
    assert "µm" in out


def test_toy_when_input_omitted(tmp_path):
    output = tmp_path / "toy.zarr"
    try:
        status = main(["segment", "-o", str(output), *FAST, "-q"])
    except NotImplementedError:
        pytest.skip("segger.datasets.toy is not implemented yet")

    assert status == 0
    points = check_segmentation(output).points["transcripts"]
    assert "true_cell_id" in points.columns


@pytest.mark.slow
def test_segment_real_xenium_crop(xenium_lung_path, tmp_path, capsys, monkeypatch):
    before = folder_digest(xenium_lung_path)
    output = tmp_path / "lung.zarr"
    # Small chunks, so that the crop's shapes take the path of a whole slide's.
    monkeypatch.setattr("segger.cli.write_zarr", partial(write_zarr, chunk_rows=64))

    status = main(["segment", str(xenium_lung_path), "-o", str(output), *FAST])

    assert status == 0, capsys.readouterr().err
    assert folder_digest(xenium_lung_path) == before
    sdata = check_segmentation(output)
    nuclei, expected = sdata["nucleus_boundaries"], sg.io.xenium(xenium_lung_path)["nucleus_boundaries"]
    assert nuclei.index.equals(expected.index)
    np.testing.assert_array_equal(
        shapely.to_wkb(nuclei.geometry.array), shapely.to_wkb(expected.geometry.array)
    )
    assert pq.ParquetFile(output / "shapes" / "nucleus_boundaries" / "shapes.parquet").num_row_groups > 1
    assert leftovers(tmp_path) == []


def test_segment_real_merscope_crop(merscope_ovarian_path, tmp_path, capsys, caplog):
    before = folder_digest(merscope_ovarian_path)
    output = tmp_path / "ovary.zarr"

    with caplog.at_level(logging.INFO, logger="segger"):
        status = main(["segment", str(merscope_ovarian_path), "-o", str(output), *FAST])

    assert status == 0, capsys.readouterr().err
    assert folder_digest(merscope_ovarian_path) == before
    assert "Reading the MERSCOPE folder" in caplog.text
    assert "are the prior shapes" in caplog.text
    sdata = check_segmentation(output)
    assert sdata.tables["segger_table"].uns["segger"]["params"]["shapes_key"] == "cell_boundaries"
    assert leftovers(tmp_path) == []


def test_segment_gzipped_merscope_crop_with_scratch_dir(merscope_ovarian_path, tmp_path, capsys, caplog):
    folder = tmp_path / "gzipped"
    folder.mkdir()
    (folder / "cell_boundaries").symlink_to(merscope_ovarian_path / "cell_boundaries")
    with gzip.open(folder / "detected_transcripts.csv.gz", "wb") as handle:
        handle.write((merscope_ovarian_path / "detected_transcripts.csv").read_bytes())
    before = folder_digest(folder)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "ovary.zarr"

    with caplog.at_level(logging.INFO, logger="segger"):
        status = main(["segment", str(folder), "-o", str(output), "--scratch-dir", str(scratch), *FAST])

    assert status == 0, capsys.readouterr().err
    assert "Decompressed detected_transcripts.csv.gz" in caplog.text
    assert folder_digest(folder) == before
    assert list(scratch.iterdir()) == []
    sdata = check_segmentation(output)
    written = sdata.points["transcripts"].compute()
    expected = sg.io.merscope(merscope_ovarian_path).points["transcripts"].compute()
    pd.testing.assert_frame_equal(written[expected.columns], expected)


def test_segment_real_cosmx_crop(cosmx_lung_path, tmp_path, capsys, caplog):
    before = folder_digest(cosmx_lung_path)
    output = tmp_path / "lung9.zarr"

    with caplog.at_level(logging.INFO, logger="segger"):
        status = main(["segment", str(cosmx_lung_path), "-o", str(output), "--pixel-size", "0.18", *FAST])

    assert status == 0, capsys.readouterr().err
    assert folder_digest(cosmx_lung_path) == before
    assert "Reading the CosMx folder" in caplog.text
    sdata = check_segmentation(output)
    assert sdata.tables["segger_table"].uns["segger"]["params"]["shapes_key"] == "nucleus_boundaries"
    assert leftovers(tmp_path) == []


def test_parallel_options_reach_fit(zarr_input, tmp_path, monkeypatch):
    received = {}

    def record(sdata, **kwargs):
        received.update(kwargs)
        msg = "stopped after recording the options"
        raise ValueError(msg)

    monkeypatch.setattr(sg.tl, "segger_fit", record)
    options = ["--devices", "2", "--strategy", "ddp", "--precision", "bf16-mixed"]
    status = main(["segment", str(zarr_input), "-o", str(tmp_path / "out.zarr"), *options, "-q"])

    assert status == 1
    assert received["devices"] == 2
    assert received["strategy"] == "ddp"
    assert received["precision"] == "bf16-mixed"
    assert not (tmp_path / "out.zarr").exists()


def test_invalid_precision_rejected(tmp_path, capsys):
    status = main(["segment", "-o", str(tmp_path / "out.zarr"), "--precision", "16"])

    err = capsys.readouterr().err
    assert status == 2
    assert "--precision" in err
    assert "bf16-mixed" in err


def test_strategy_with_model_rejected(zarr_input, tmp_path, capsys):
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"")
    output = str(tmp_path / "out.zarr")

    status = main(["segment", str(zarr_input), "-o", output, "--model", str(model_file), "--strategy", "ddp"])

    assert status == 2
    assert "--strategy" in capsys.readouterr().err


def test_scratch_dir_run_leaves_it_empty(zarr_input, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), "--scratch-dir", str(scratch), *FAST, "-q"])

    assert status == 0
    check_segmentation(output)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("inside", [".", "points"])
def test_scratch_dir_inside_input_rejected(zarr_input, tmp_path, capsys, inside):
    output = tmp_path / "out.zarr"
    before = folder_digest(zarr_input)

    status = main(
        ["segment", str(zarr_input), "-o", str(output), "--scratch-dir", str(zarr_input / inside), *FAST]
    )

    assert status == 2
    assert "is INPUT or lies inside it" in capsys.readouterr().err
    assert not output.exists()
    assert folder_digest(zarr_input) == before


def test_failed_write_leaves_scratch_empty(zarr_input, tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "out.zarr"

    def fail(sdata, path):
        raise OSError("disk full")

    monkeypatch.setattr("segger.cli._write_store", fail)
    status = main(["segment", str(zarr_input), "-o", str(output), "--scratch-dir", str(scratch), *FAST, "-q"])

    assert status == 1
    assert "disk full" in capsys.readouterr().err
    assert not output.exists()
    assert list(scratch.iterdir()) == []


def test_missing_scratch_dir_reported(zarr_input, tmp_path, capsys):
    missing = tmp_path / "missing"
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), "--scratch-dir", str(missing), *FAST])

    err = capsys.readouterr().err
    assert status == 2
    assert f"--scratch-dir {str(missing)!r} is not an existing folder" in err
    assert "leave out --scratch-dir" in err
    assert not output.exists()
    assert not missing.exists()


def test_scratch_dir_file_rejected(zarr_input, tmp_path, capsys):
    not_folder = tmp_path / "scratch"
    not_folder.write_text("")
    output = tmp_path / "out.zarr"

    status = main(["segment", str(zarr_input), "-o", str(output), "--scratch-dir", str(not_folder), *FAST])

    assert status == 2
    assert f"--scratch-dir {str(not_folder)!r} is a file, not a folder" in capsys.readouterr().err
    assert not output.exists()


def _interrupt_while_writing(target: Path, writers: list) -> None:
    """Start a thread that writes chunks into the staged folder for 0.3 s, then interrupt the block."""

    def write_chunks(folder: Path) -> None:
        end = time.perf_counter() + 0.3
        number = 0
        while time.perf_counter() < end:
            (folder / "points").mkdir(parents=True, exist_ok=True)
            (folder / "points" / f"chunk-{number}").write_bytes(b"0")
            number += 1

    with _staged(target) as staged:
        writer = threading.Thread(target=write_chunks, args=(staged,))
        writers.append(writer)
        writer.start()
        raise KeyboardInterrupt


def test_staged_removed_while_writer_adds_files(tmp_path):
    writers = []

    with pytest.raises(KeyboardInterrupt):
        _interrupt_while_writing(tmp_path / "out.zarr", writers)

    writers[0].join()
    assert list(tmp_path.iterdir()) == []
