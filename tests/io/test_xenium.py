from __future__ import annotations

import gc
import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

import segger as sg
from segger.io._spatialdata import build_spatialdata
from segger.io._xenium import read_transcripts

SQUARE = [(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)]


def write_folder(folder, transcripts: pd.DataFrame, vertices: pd.DataFrame, *, csv: bool = False):
    if csv:
        transcripts.to_csv(folder / "transcripts.csv.gz", index=False)
        vertices.to_csv(folder / "nucleus_boundaries.csv.gz", index=False)
    else:
        transcripts.to_parquet(folder / "transcripts.parquet")
        vertices.to_parquet(folder / "nucleus_boundaries.parquet")
    return folder


def make_transcripts(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transcript_id": np.arange(100, 100 + n, dtype=np.uint64),
            "cell_id": ["a-1", "UNASSIGNED", "b-1", "a-1", "UNASSIGNED", "b-1"][:n],
            "overlaps_nucleus": np.array([1, 0, 1, 0, 0, 1][:n], dtype=np.uint8),
            "feature_name": ["GENE1", "NegControlProbe_1", "GENE2", "GENE1", "BLANK_0003", "GENE2"][:n],
            "x_location": np.linspace(1.0, 11.0, n, dtype=np.float32),
            "y_location": np.linspace(2.0, 3.0, n, dtype=np.float32),
            "z_location": np.full(n, 5.0, dtype=np.float32),
            "qv": np.full(n, 40.0, dtype=np.float32),
        }
    )


def make_vertices(*, closed: bool = True) -> pd.DataFrame:
    rows = []
    for cell, offset in (("a-1", 0.0), ("b-1", 10.0)):
        ring = [(x + offset, y) for x, y in SQUARE]
        if closed:
            ring.append(ring[0])
        rows += [(cell, x, y) for x, y in ring]
    return pd.DataFrame(rows, columns=["cell_id", "vertex_x", "vertex_y"])


def test_xenium_minimal_folder(tmp_path):
    folder = write_folder(tmp_path, make_transcripts(), make_vertices())
    sdata = sg.io.xenium(folder)
    points = sdata.points["transcripts"].compute()

    assert len(points) == 6
    assert points["transcript_id"].dtype == np.int64
    assert points["transcript_id"].tolist() == list(range(100, 106))
    assert points["cell_id"].isna().tolist() == [False, True, False, False, True, False]
    assert points["overlaps_nucleus"].dtype == bool
    assert points["is_control"].tolist() == [False, True, False, False, True, False]
    assert {"x", "y", "z"} <= set(points.columns)
    assert "x_location" not in points.columns
    assert sdata.points["transcripts"].attrs["spatialdata_attrs"]["feature_key"] == "feature_name"

    nuclei = sdata.shapes["nucleus_boundaries"]
    assert nuclei.index.tolist() == ["a-1", "b-1"]
    assert nuclei.area.tolist() == [16.0, 16.0]


def test_xenium_csv_open_rings(tmp_path):
    folder = write_folder(tmp_path, make_transcripts(), make_vertices(closed=False), csv=True)
    sdata = sg.io.xenium(folder)

    assert len(sdata.points["transcripts"].compute()) == 6
    nuclei = sdata.shapes["nucleus_boundaries"]
    assert nuclei.is_valid.all()
    assert nuclei.area.tolist() == [16.0, 16.0]


def test_xenium_interleaved_vertex_rows(tmp_path):
    vertices = make_vertices()
    interleaved = vertices.iloc[[0, 5, 1, 6, 2, 7, 3, 8, 4, 9]]
    folder = write_folder(tmp_path, make_transcripts(), interleaved)
    nuclei = sg.io.xenium(folder).shapes["nucleus_boundaries"]

    assert nuclei.area.tolist() == [16.0, 16.0]


def test_xenium_shuffled_vertices_repaired(tmp_path, caplog):
    vertices = make_vertices(closed=False)
    shuffled = vertices.iloc[[0, 2, 1, 3, 4, 5, 6, 7]]
    folder = write_folder(tmp_path, make_transcripts(), shuffled)

    with caplog.at_level(logging.WARNING, logger="segger"):
        nuclei = sg.io.xenium(folder).shapes["nucleus_boundaries"]

    assert nuclei.is_valid.all()
    assert nuclei.area.tolist() == [16.0, 16.0]
    assert "Repaired 1 invalid polygon" in caplog.text


def test_xenium_integer_ids_and_bytes(tmp_path):
    transcripts = make_transcripts()
    transcripts["cell_id"] = np.array([1, -1, 2, 1, 0, 2], dtype=np.int64)
    transcripts["feature_name"] = [name.encode() for name in transcripts["feature_name"]]
    vertices = make_vertices()
    vertices["cell_id"] = vertices["cell_id"].map({"a-1": 1, "b-1": 2})
    folder = write_folder(tmp_path, transcripts, vertices)

    sdata = sg.io.xenium(folder)
    points = sdata.points["transcripts"].compute()

    assert points["cell_id"].tolist()[0] == "1"
    assert points["cell_id"].isna().tolist() == [False, True, False, False, True, False]
    assert points["feature_name"].astype(str).tolist()[:2] == ["GENE1", "NegControlProbe_1"]
    assert points["is_control"].sum() == 2
    assert sdata.shapes["nucleus_boundaries"].index.tolist() == ["1", "2"]


def test_xenium_codeword_category(tmp_path):
    transcripts = make_transcripts()
    transcripts["codeword_category"] = [
        "predesigned_gene",
        "predesigned_gene",
        "custom_gene",
        "negative_control_probe",
        "unassigned_codeword",
        "predesigned_gene",
    ]
    folder = write_folder(tmp_path, transcripts, make_vertices())
    points = sg.io.xenium(folder).points["transcripts"].compute()

    assert points["is_control"].tolist() == [False, False, False, True, True, False]


def test_xenium_is_gene_column(tmp_path):
    transcripts = make_transcripts()
    transcripts["is_gene"] = [True, True, True, True, False, False]
    folder = write_folder(tmp_path, transcripts, make_vertices())
    points = sg.io.xenium(folder).points["transcripts"].compute()

    assert points["is_control"].tolist() == [False, False, False, False, True, True]


def test_xenium_cell_boundaries_read(tmp_path):
    folder = write_folder(tmp_path, make_transcripts(), make_vertices())
    cells = make_vertices()
    cells["vertex_x"] *= 2
    cells.to_parquet(folder / "cell_boundaries.parquet")
    sdata = sg.io.xenium(folder)

    assert sdata.shapes["cell_boundaries"].area.tolist() == [32.0, 32.0]


def test_xenium_missing_transcripts_file(tmp_path):
    make_vertices().to_parquet(tmp_path / "nucleus_boundaries.parquet")
    with pytest.raises(FileNotFoundError, match=r"transcripts\.parquet.*transcripts\.csv\.gz"):
        sg.io.xenium(tmp_path)


def test_xenium_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sg.io.xenium(tmp_path / "absent")


def test_xenium_missing_columns(tmp_path):
    transcripts = make_transcripts().drop(columns=["y_location", "feature_name"])
    folder = write_folder(tmp_path, transcripts, make_vertices())
    with pytest.raises(ValueError, match=r"\['y_location', 'feature_name'\]"):
        sg.io.xenium(folder)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_xenium_nonfinite_coordinates(tmp_path, bad_value):
    transcripts = make_transcripts()
    transcripts.loc[[1, 3], "x_location"] = bad_value
    folder = write_folder(tmp_path, transcripts, make_vertices())
    with pytest.raises(ValueError, match=r"2 of 6 transcripts .* 'x_location'.*drop those rows from a copy"):
        sg.io.xenium(folder)


def test_xenium_duplicate_transcript_ids(tmp_path):
    transcripts = make_transcripts()
    transcripts.loc[2, "transcript_id"] = 100
    folder = write_folder(tmp_path, transcripts, make_vertices())
    with pytest.raises(ValueError, match="2 rows whose transcript_id another row shares"):
        sg.io.xenium(folder)


def test_xenium_input_files_unchanged(tmp_path):
    folder = write_folder(tmp_path, make_transcripts(), make_vertices())
    before = {file.name: file.read_bytes() for file in folder.iterdir()}
    sg.io.xenium(folder)
    after = {file.name: file.read_bytes() for file in folder.iterdir()}

    assert after == before


def write_row_groups(folder, transcripts: pd.DataFrame, rows: int):
    """Write ``transcripts.parquet`` with ``rows`` rows per parquet row group, and nuclei."""
    transcripts.to_parquet(folder / "transcripts.parquet", row_group_size=rows)
    make_vertices().to_parquet(folder / "nucleus_boundaries.parquet")
    return folder


def test_xenium_parquet_partitions(tmp_path, monkeypatch):
    transcripts = pd.concat([make_transcripts()] * 4, ignore_index=True)
    transcripts["transcript_id"] = np.arange(len(transcripts), dtype=np.uint64)
    folder = write_row_groups(tmp_path, transcripts, rows=5)
    # The pandas reader, which loads the whole file, gives the expected frame.
    whole = read_transcripts(folder / "transcripts.parquet")
    expected = build_spatialdata(whole, {"nucleus_boundaries": gpd.GeoDataFrame(geometry=[])})
    monkeypatch.setattr("segger.io._xenium.ROWS_PER_PARTITION", 10)

    points = sg.io.xenium(folder).points["transcripts"]

    assert points.npartitions == 3
    assert points.divisions == (0, 10, 20, 23)
    pd.testing.assert_frame_equal(points.compute(), expected.points["transcripts"].compute())


def test_xenium_row_numbers_across_partitions(tmp_path, monkeypatch):
    transcripts = pd.concat([make_transcripts()] * 3, ignore_index=True).drop(columns="transcript_id")
    monkeypatch.setattr("segger.io._xenium.ROWS_PER_PARTITION", 6)

    points = sg.io.xenium(write_row_groups(tmp_path, transcripts, rows=6)).points["transcripts"]

    assert points.npartitions == 3
    np.testing.assert_array_equal(points["transcript_id"].compute().to_numpy(), np.arange(18))


def test_xenium_nonfinite_in_later_row_group(tmp_path, monkeypatch):
    transcripts = pd.concat([make_transcripts()] * 3, ignore_index=True)
    transcripts["transcript_id"] = np.arange(len(transcripts), dtype=np.uint64)
    transcripts.loc[[8, 15], "y_location"] = np.nan
    monkeypatch.setattr("segger.io._xenium.ROWS_PER_PARTITION", 6)
    folder = write_row_groups(tmp_path, transcripts, rows=6)

    with pytest.raises(ValueError, match=r"2 of 18 transcripts .* 'y_location'"):
        sg.io.xenium(folder)


@pytest.mark.parametrize("bucket", [None, 5])
def test_xenium_duplicate_ids_across_row_groups(tmp_path, monkeypatch, bucket):
    transcripts = pd.concat([make_transcripts()] * 2, ignore_index=True)
    monkeypatch.setattr("segger.io._xenium.ROWS_PER_PARTITION", 6)
    if bucket is not None:
        # Ids checked in hash buckets, reading the file once per bucket.
        monkeypatch.setattr("segger._repeats.BUCKET_SIZE", bucket)
    folder = write_row_groups(tmp_path, transcripts, rows=6)

    with pytest.raises(ValueError, match="12 rows whose transcript_id another row shares"):
        sg.io.xenium(folder)


# Lazy reading of transcripts.csv and, with scratch_dir, transcripts.csv.gz


def write_csv_folder(folder, transcripts: pd.DataFrame, *, gzipped: bool):
    """Write ``transcripts.csv`` (or ``.csv.gz``) and nuclei."""
    transcripts.to_csv(folder / ("transcripts.csv.gz" if gzipped else "transcripts.csv"), index=False)
    make_vertices().to_parquet(folder / "nucleus_boundaries.parquet")
    return folder


def test_xenium_csv_blocks_equal_whole(tmp_path, monkeypatch):
    transcripts = pd.concat([make_transcripts()] * 4, ignore_index=True)
    transcripts["transcript_id"] = np.arange(len(transcripts), dtype=np.uint64)
    folder = write_csv_folder(tmp_path, transcripts, gzipped=False)
    whole = read_transcripts(folder / "transcripts.csv")
    expected = build_spatialdata(whole, {"nucleus_boundaries": gpd.GeoDataFrame(geometry=[])})
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 200)

    points = sg.io.xenium(folder).points["transcripts"]

    # The 24 rows take 31 to 51 bytes each, so each block of about 200 bytes holds several.
    assert points.npartitions == 4
    pd.testing.assert_frame_equal(points.compute(), expected.points["transcripts"].compute())


@pytest.mark.parametrize("bucket", [None, 5])
def test_xenium_csv_duplicate_ids_across_blocks(tmp_path, monkeypatch, bucket):
    transcripts = pd.concat([make_transcripts()] * 2, ignore_index=True)
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 100)
    if bucket is not None:
        monkeypatch.setattr("segger._repeats.BUCKET_SIZE", bucket)
    folder = write_csv_folder(tmp_path, transcripts, gzipped=False)

    with pytest.raises(ValueError, match="12 rows whose transcript_id another row shares"):
        sg.io.xenium(folder)


def test_xenium_csv_preferred_to_gzip(tmp_path):
    folder = write_csv_folder(tmp_path, make_transcripts(), gzipped=False)
    make_transcripts(3).to_csv(folder / "transcripts.csv.gz", index=False)

    points = sg.io.xenium(folder).points["transcripts"]

    assert len(points.compute()) == 6


def test_xenium_lung_crop_gzipped_in_blocks(xenium_lung_path, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "gzipped"
    folder.mkdir()
    (folder / "nucleus_boundaries.parquet").symlink_to(xenium_lung_path / "nucleus_boundaries.parquet")
    pd.read_parquet(xenium_lung_path / "transcripts.parquet").to_csv(
        folder / "transcripts.csv.gz", index=False
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    whole = sg.io.xenium(folder).points["transcripts"].compute()
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 200_000)

    with caplog.at_level(logging.INFO, logger="segger"):
        sdata = sg.io.xenium(folder, scratch_dir=scratch)

    points = sdata.points["transcripts"]
    assert "Decompressed transcripts.csv.gz" in caplog.text
    assert points.npartitions == 7
    pd.testing.assert_frame_equal(points.compute(), whole)
    # The values equal those read from the crop's own transcripts.parquet.
    from_parquet = sg.io.xenium(xenium_lung_path).points["transcripts"].compute()
    pd.testing.assert_frame_equal(points.compute(), from_parquet, check_dtype=False)

    del sdata, points
    gc.collect()
    assert list(scratch.iterdir()) == []


def test_xenium_zero_byte_parquet(tmp_path):
    folder = write_folder(tmp_path, make_transcripts(), make_vertices())
    (folder / "transcripts.parquet").write_bytes(b"")

    with pytest.raises(ValueError, match=r"transcripts\.parquet in .* is not a readable parquet file"):
        sg.io.xenium(folder)
    assert (folder / "transcripts.parquet").read_bytes() == b""


def test_xenium_lung_crop(xenium_lung_path):
    raw = pd.read_parquet(xenium_lung_path / "transcripts.parquet").reset_index(drop=True)
    sdata = sg.io.xenium(xenium_lung_path)
    points = sdata.points["transcripts"].compute().reset_index(drop=True)
    nuclei = sdata.shapes["nucleus_boundaries"]

    assert len(points) == 15_000
    assert len(nuclei) == 221
    np.testing.assert_array_equal(points["x"].to_numpy(), raw["x_location"].to_numpy())
    np.testing.assert_array_equal(points["y"].to_numpy(), raw["y_location"].to_numpy())
    np.testing.assert_array_equal(points["z"].to_numpy(), raw["z_location"].to_numpy())
    np.testing.assert_array_equal(points["transcript_id"].to_numpy(), raw["transcript_id"].astype(np.int64))
    np.testing.assert_array_equal(points["overlaps_nucleus"].to_numpy(), raw["overlaps_nucleus"] == 1)

    unassigned = raw["cell_id"] == "UNASSIGNED"
    assert points["cell_id"].isna().to_numpy().tolist() == unassigned.tolist()
    assigned = ~unassigned.to_numpy()
    assert points["cell_id"][assigned].tolist() == raw["cell_id"][assigned].tolist()

    controls = points.loc[points["is_control"], "feature_name"].astype(str)
    assert controls.nunique() == 28
    assert controls.str.match(r"^(NegControlProbe_|NegControlCodeword_|BLANK_)").all()

    assert nuclei.is_valid.all()
    assert set(nuclei.index) <= set(raw["cell_id"])
    assert "fov_name" in points.columns
    assert "nucleus_distance" in points.columns


def test_xenium_late_missing_gene(tmp_path, monkeypatch):
    transcripts = pd.concat([make_transcripts()] * 2, ignore_index=True)
    transcripts["transcript_id"] = np.arange(len(transcripts), dtype=np.uint64)
    transcripts.loc[8, "feature_name"] = None
    monkeypatch.setattr("segger.io._xenium.ROWS_PER_PARTITION", 6)
    folder = write_row_groups(tmp_path, transcripts, rows=6)

    with pytest.raises(
        ValueError,
        match=r"1 of 12 transcripts in transcripts\.parquet have no 'feature_name' value, the first in data row 8",
    ):
        sg.io.xenium(folder)


def test_xenium_missing_column_hint(tmp_path):
    folder = write_folder(tmp_path, make_transcripts().drop(columns="feature_name"), make_vertices())

    with pytest.raises(ValueError, match=r"\['feature_name'\].*the instrument's own output") as error:
        sg.io.xenium(folder)

    # Pointing a Xenium user at the Xenium reader, which raised the error, would not help.
    assert "sg.io.xenium" not in str(error.value)
