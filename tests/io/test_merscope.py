from __future__ import annotations

import gc
import gzip
import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import shapely

import segger as sg
from conftest import shared_dataset

# Cell "101" is the square [0, 4] x [0, 4] on plane 0 and [0, 5] x [0, 4] on plane 1, so the
# union over planes is 20 µm². Cell "202" is the square [10, 14] x [0, 4] on both planes.
CELL_PLANES = {
    "101": [shapely.box(0.0, 0.0, 4.0, 4.0), shapely.box(0.0, 0.0, 5.0, 4.0)],
    "202": [shapely.box(10.0, 0.0, 14.0, 4.0), shapely.box(10.0, 0.0, 14.0, 4.0)],
}


def make_transcripts() -> pd.DataFrame:
    """Six transcripts: two in cell 101 (one only inside its plane-1 outline), two in cell 202, two outside."""
    return pd.DataFrame(
        {
            "Unnamed: 0": [10, 11, 12, 13, 14, 15],
            "barcode_id": [0, 1, 2, 0, 3, 1],
            "global_x": [1.0, 4.5, 11.0, 12.0, 7.0, 20.0],
            "global_y": [1.0, 2.0, 2.0, 3.0, 2.0, 2.0],
            "global_z": [0, 1, 2, 3, 4, 6],
            "x": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
            "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "fov": [7, 7, 7, 7, 7, 7],
            "gene": ["PDK4", "ACTB", "Blank-0001", "PDK4", "ACTB", "Blank-0002"],
            "transcript_id": ["ENST1", "ENST2", "Blank-0001", "ENST1", "ENST2", "Blank-0002"],
        }
    )


def write_hdf5_boundaries(folder, planes=CELL_PLANES, *, name="feature_data_7.hdf5"):
    (folder / "cell_boundaries").mkdir(exist_ok=True)
    with h5py.File(folder / "cell_boundaries" / name, "w") as handle:
        features = handle.create_group("featuredata")
        for cell_id, polygons in planes.items():
            cell = features.create_group(cell_id)
            for z_index, polygon in enumerate(polygons):
                ring = np.asarray(polygon.exterior.coords)[np.newaxis]
                cell.create_dataset(f"zIndex_{z_index}/p_0/coordinates", data=ring)
            cell.create_dataset("z_coordinates", data=1.5 * np.arange(1, len(polygons) + 1))


def write_parquet_boundaries(folder, planes=CELL_PLANES):
    rows = []
    for cell_id, polygons in planes.items():
        for z_index, polygon in enumerate(polygons):
            rows.append(
                {
                    "ID": len(rows),
                    "EntityID": np.int64(cell_id),
                    "ZIndex": z_index,
                    "Geometry": shapely.to_wkb(shapely.MultiPolygon([polygon])),
                    "ZLevel": 1.5 * (z_index + 1),
                    "Type": "cell",
                }
            )
    pd.DataFrame(rows).to_parquet(folder / "cell_boundaries.parquet")


def write_folder(folder, transcripts=None, *, boundaries="hdf5"):
    transcripts = make_transcripts() if transcripts is None else transcripts
    transcripts.to_csv(folder / "detected_transcripts.csv", index=False)
    if boundaries == "hdf5":
        write_hdf5_boundaries(folder)
    elif boundaries == "parquet":
        write_parquet_boundaries(folder)
    return folder


def read_points(sdata) -> pd.DataFrame:
    return sdata.points["transcripts"].compute().reset_index(drop=True)


def test_merscope_hdf5_points_schema(tmp_path):
    sdata = sg.io.merscope(write_folder(tmp_path))
    points = read_points(sdata)

    assert len(points) == 6
    assert points["transcript_id"].dtype == np.int64
    assert points["transcript_id"].tolist() == list(range(6))
    assert points["gene_id"].tolist() == make_transcripts()["transcript_id"].tolist()
    assert points["feature_name"].astype(str).tolist()[:3] == ["PDK4", "ACTB", "Blank-0001"]
    assert sdata.points["transcripts"].attrs["spatialdata_attrs"]["feature_key"] == "feature_name"
    np.testing.assert_array_equal(points["x"], [1.0, 4.5, 11.0, 12.0, 7.0, 20.0])
    np.testing.assert_array_equal(points["z"], [0.0, 1.5, 3.0, 4.5, 6.0, 9.0])
    assert points["global_z"].tolist() == [0, 1, 2, 3, 4, 6]
    assert points["x_local_px"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert points["is_control"].tolist() == [False, False, True, False, False, True]
    assert "qv" not in points.columns
    assert {"Unnamed: 0", "barcode_id", "fov"} <= set(points.columns)
    assert not {"global_x", "global_y", "gene"} & set(points.columns)


def test_merscope_hdf5_cells_from_polygons(tmp_path):
    sdata = sg.io.merscope(write_folder(tmp_path))
    points = read_points(sdata)
    cells = sdata.shapes["cell_boundaries"]

    assert "nucleus_boundaries" not in sdata.shapes
    assert cells.index.tolist() == ["101", "202"]
    assert cells.area.tolist() == [20.0, 16.0]
    assert cells.is_valid.all()
    assert points["overlaps_nucleus"].dtype == bool
    assert points["overlaps_nucleus"].tolist() == [True, True, True, True, False, False]
    assert points["cell_id"].tolist()[:4] == ["101", "101", "202", "202"]
    assert points["cell_id"].isna().tolist() == [False, False, False, False, True, True]


def test_merscope_parquet_boundaries(tmp_path):
    transcripts = make_transcripts()
    transcripts.to_parquet(tmp_path / "detected_transcripts.parquet", index=False)
    write_parquet_boundaries(tmp_path)
    sdata = sg.io.merscope(tmp_path)
    cells = sdata.shapes["cell_boundaries"]

    assert cells.index.tolist() == ["101", "202"]
    assert cells.area.tolist() == [20.0, 16.0]
    assert read_points(sdata)["overlaps_nucleus"].tolist() == [True, True, True, True, False, False]


def test_merscope_vendor_cell_id_kept(tmp_path):
    transcripts = make_transcripts()
    # The third transcript lies inside cell 202, but MERSCOPE assigned it to cell 101.
    transcripts["cell_id"] = np.array([101, -1, 101, 202, -1, 202], dtype=np.int64)
    write_folder(tmp_path, transcripts, boundaries="parquet")
    points = read_points(sg.io.merscope(tmp_path))

    assert points["cell_id"].tolist()[0] == "101"
    assert points["cell_id"].isna().tolist() == [False, True, False, False, True, False]
    assert points["overlaps_nucleus"].tolist() == [True, False, False, True, False, False]


def test_merscope_parquet_preferred_over_hdf5(tmp_path):
    write_folder(tmp_path)
    bigger = {
        cell: [shapely.affinity.scale(p, 2, 1, origin=(0, 0)) for p in ps] for cell, ps in CELL_PLANES.items()
    }
    write_parquet_boundaries(tmp_path, bigger)
    cells = sg.io.merscope(tmp_path).shapes["cell_boundaries"]

    assert cells.area.tolist() == [40.0, 32.0]


def test_merscope_multipart_union_keeps_largest(tmp_path, caplog):
    planes = {"7": [shapely.box(0, 0, 4, 4), shapely.box(10, 0, 11, 1)]}
    write_folder(tmp_path, boundaries=None)
    write_hdf5_boundaries(tmp_path, planes)
    with caplog.at_level(logging.INFO, logger="segger"):
        cells = sg.io.merscope(tmp_path).shapes["cell_boundaries"]

    assert cells.area.tolist() == [16.0]
    assert "Kept the largest part of 1 shape(s)" in caplog.text


def test_merscope_z_step_none_drops_z(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segger"):
        points = read_points(sg.io.merscope(write_folder(tmp_path), z_step=None))

    assert "z" not in points.columns
    assert points["global_z"].tolist() == [0, 1, 2, 3, 4, 6]
    assert "z is dropped" in caplog.text


def test_merscope_custom_z_step(tmp_path):
    points = read_points(sg.io.merscope(write_folder(tmp_path), z_step=2.0))

    np.testing.assert_array_equal(points["z"], [0.0, 2.0, 4.0, 6.0, 8.0, 12.0])


@pytest.mark.parametrize("z_step", [0.0, -1.5, np.nan])
def test_merscope_invalid_z_step(tmp_path, z_step):
    with pytest.raises(ValueError, match="z_step must be a positive number"):
        sg.io.merscope(write_folder(tmp_path), z_step=z_step)


def test_merscope_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sg.io.merscope(tmp_path / "absent")


def test_merscope_missing_transcripts_file(tmp_path):
    write_hdf5_boundaries(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"detected_transcripts\.parquet.*detected_transcripts\.csv"):
        sg.io.merscope(tmp_path)


def test_merscope_missing_boundaries(tmp_path):
    write_folder(tmp_path, boundaries=None)
    with pytest.raises(FileNotFoundError, match=r"cell_boundaries\.parquet.*feature_data_\*\.hdf5"):
        sg.io.merscope(tmp_path)


def test_merscope_missing_columns(tmp_path):
    transcripts = make_transcripts().drop(columns=["global_y", "gene"])
    write_folder(tmp_path, transcripts)
    with pytest.raises(ValueError, match=r"\['global_y', 'gene'\]; it has \['Unnamed: 0'"):
        sg.io.merscope(tmp_path)


def test_merscope_nan_coordinates(tmp_path):
    transcripts = make_transcripts()
    transcripts.loc[[0, 4], "global_x"] = np.nan
    write_folder(tmp_path, transcripts)
    with pytest.raises(ValueError, match=r"2 of 6 transcripts .* 'global_x'") as raised:
        sg.io.merscope(tmp_path)

    assert "Check that the file is complete and unchanged" in str(raised.value)
    assert "df = df" not in str(raised.value)


@pytest.mark.parametrize("content", ["", "global_x,global_y,global_z,gene\n"])
def test_merscope_empty_transcripts(tmp_path, content):
    write_hdf5_boundaries(tmp_path)
    (tmp_path / "detected_transcripts.csv").write_text(content)
    with pytest.raises(ValueError, match=r"detected_transcripts\.csv .* contains no transcripts"):
        sg.io.merscope(tmp_path)


def test_merscope_hdf5_without_cells(tmp_path):
    write_folder(tmp_path, boundaries=None)
    write_hdf5_boundaries(tmp_path, {})
    with pytest.raises(ValueError, match=r"feature_data_7\.hdf5 .* contains no cell polygons"):
        sg.io.merscope(tmp_path)


def test_merscope_parquet_without_geometry(tmp_path):
    write_folder(tmp_path, boundaries=None)
    pd.DataFrame({"EntityID": [1], "ZIndex": [0]}).to_parquet(tmp_path / "cell_boundaries.parquet")
    with pytest.raises(ValueError, match=r"geometry column \(one of \['Geometry', 'geometry'\]\)"):
        sg.io.merscope(tmp_path)


def test_merscope_ovarian_crop():
    folder = shared_dataset("merscope_ovarian_subset")
    raw = pd.read_csv(folder / "detected_transcripts.csv")
    sdata = sg.io.merscope(folder)
    points = read_points(sdata)
    cells = sdata.shapes["cell_boundaries"]

    assert len(points) == 15_160
    assert len(cells) == 24
    assert cells.is_valid.all()
    assert int(points["overlaps_nucleus"].sum()) == 8_322
    assert points["cell_id"].nunique() == 24
    assert int(points["is_control"].sum()) == 60
    assert points.loc[points["is_control"], "feature_name"].astype(str).str.startswith("Blank-").all()
    assert points["transcript_id"].is_unique
    assert points["gene_id"].nunique() == 486
    np.testing.assert_array_equal(points["x"], raw["global_x"])
    np.testing.assert_array_equal(points["z"], raw["global_z"] * 1.5)

    # Independent check: the crop's planes are identical, so test against plane 3 with shapely alone.
    inside_any = np.zeros(len(raw), dtype=bool)
    with h5py.File(folder / "cell_boundaries" / "feature_data_1753.hdf5", "r") as handle:
        for cell_id, cell in handle["featuredata"].items():
            polygon = shapely.Polygon(cell["zIndex_3/p_0/coordinates"][0])
            inside = shapely.contains_xy(polygon, raw["global_x"].to_numpy(), raw["global_y"].to_numpy())
            assert (points.loc[inside, "cell_id"] == cell_id).all()
            inside_any |= inside
    assert int(inside_any.sum()) == 8_322
    np.testing.assert_array_equal(points["overlaps_nucleus"], inside_any)


# Lazy reading of detected_transcripts.csv


def read_eagerly(folder, *, z_step=1.5) -> pd.DataFrame:
    """The points of a MERSCOPE folder, read whole with pandas instead of block by block."""
    from segger.io._merscope import _assign_to_polygons, read_cell_boundaries, read_transcripts
    from segger.io._spatialdata import build_spatialdata

    shapes = read_cell_boundaries(folder)
    points = read_transcripts(folder / "detected_transcripts.csv", z_step=z_step)
    _assign_to_polygons(points, shapes)
    return build_spatialdata(points, {"cell_boundaries": shapes}).points["transcripts"].compute()


@pytest.mark.parametrize(("block_bytes", "n_partitions"), [(1, 6), (100, 2), (10_000, 1)])
def test_merscope_csv_blocks_equal_eager(tmp_path, monkeypatch, block_bytes, n_partitions):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", block_bytes)
    write_folder(tmp_path)
    file = tmp_path / "detected_transcripts.csv"
    element = sg.io.merscope(tmp_path).points["transcripts"]

    # The rows are 37 to 49 bytes long, so a block of 100 bytes ends in its third row.
    assert [len(line) for line in file.read_bytes().splitlines(keepends=True)[1:]] == [37, 37, 49, 38, 37, 49]
    assert element.npartitions == n_partitions
    pd.testing.assert_frame_equal(element.compute(), read_eagerly(tmp_path))


def test_merscope_csv_block_types_agree(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 1)
    transcripts = make_transcripts()
    # Integers in the first blocks, a string and a missing value in later ones.
    transcripts["cell_id"] = [101, -1, 202, "UNASSIGNED", 202, 101]
    transcripts["fov"] = [7, 7, 7, 7, None, 7]
    write_folder(tmp_path, transcripts)
    points = sg.io.merscope(tmp_path).points["transcripts"].compute()

    assert points["fov"].dtype == np.float64
    assert points["fov"].isna().tolist() == [False, False, False, False, True, False]
    assert points["cell_id"].tolist()[:3] == ["101", pd.NA, "202"]
    assert points["cell_id"].isna().tolist() == [False, True, False, True, False, False]
    pd.testing.assert_frame_equal(points, read_eagerly(tmp_path))


def test_merscope_csv_late_nan(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 1)
    transcripts = make_transcripts()
    transcripts.loc[[3, 5], "global_y"] = np.nan
    write_folder(tmp_path, transcripts)
    before = (tmp_path / "detected_transcripts.csv").read_bytes()

    with pytest.raises(ValueError, match=r"2 of 6 transcripts .* 'global_y'"):
        sg.io.merscope(tmp_path)
    assert (tmp_path / "detected_transcripts.csv").read_bytes() == before


def test_merscope_csv_windows_line_ends(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 100)
    write_folder(tmp_path)
    make_transcripts().to_csv(tmp_path / "detected_transcripts.csv", index=False, lineterminator="\r\n")
    element = sg.io.merscope(tmp_path).points["transcripts"]

    assert element.npartitions > 1
    pd.testing.assert_frame_equal(element.compute(), read_eagerly(tmp_path))


def test_merscope_csv_trailing_blank_lines(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 20)
    write_folder(tmp_path)
    with open(tmp_path / "detected_transcripts.csv", "a") as handle:
        handle.write("\n\n\n")
    points = sg.io.merscope(tmp_path).points["transcripts"].compute()

    assert points["transcript_id"].tolist() == list(range(6))
    pd.testing.assert_frame_equal(points, read_eagerly(tmp_path))


def test_merscope_csv_cut_off_warns(tmp_path, caplog):
    write_folder(tmp_path)
    file = tmp_path / "detected_transcripts.csv"
    file.write_bytes(file.read_bytes().rstrip(b"\n")[:-4])
    with caplog.at_level(logging.WARNING, logger="segger"):
        points = sg.io.merscope(tmp_path).points["transcripts"].compute()

    assert len(points) == 6
    assert "does not end with a line break" in caplog.text
    assert "'15,1,20.0,2.0,6,60.0,6.0,7,Blank-0002,Blank-'" in caplog.text


def test_merscope_csv_complete_no_warning(tmp_path, caplog):
    write_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="segger"):
        sg.io.merscope(tmp_path)

    assert "line break" not in caplog.text


def test_merscope_ovarian_crop_in_blocks(monkeypatch):
    folder = shared_dataset("merscope_ovarian_subset")
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 100_000)
    element = sg.io.merscope(folder).points["transcripts"]

    # The crop's file is 1.17 MB.
    assert element.npartitions == 12
    pd.testing.assert_frame_equal(element.compute(), read_eagerly(folder))


def test_merscope_csv_unclosed_quote(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 1)
    transcripts = make_transcripts()
    write_folder(tmp_path, transcripts)
    file = tmp_path / "detected_transcripts.csv"
    lines = file.read_text().splitlines(keepends=True)
    lines[5] = lines[5].replace("ACTB", '"ACTB')
    file.write_text("".join(lines))

    with pytest.raises(
        ValueError, match=r"detected_transcripts\.csv .* block that starts at data row 4 .*EOF inside"
    ):
        sg.io.merscope(tmp_path)


def test_merscope_csv_empty_gene(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 1)
    transcripts = make_transcripts()
    transcripts.loc[3, "gene"] = ""
    write_folder(tmp_path, transcripts)

    with pytest.raises(
        ValueError,
        match=r"1 of 6 transcripts in detected_transcripts\.csv have no 'gene' value, the first in data row 3",
    ):
        sg.io.merscope(tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "csv.gz"])
def test_merscope_last_row_cut_short(tmp_path, suffix):
    write_folder(tmp_path)
    file = tmp_path / "detected_transcripts.csv"
    # The last row loses its gene and gene id, as an export interrupted after the fov field would.
    text = file.read_text()
    cut = text[: text.rstrip("\n").rindex(",Blank-0002,")] + ","
    file.unlink()
    if suffix == "csv.gz":
        with gzip.open(tmp_path / "detected_transcripts.csv.gz", "wt") as handle:
            handle.write(cut)
    else:
        file.write_text(cut)

    with pytest.raises(ValueError, match=r"1 of 6 transcripts .* no 'gene' value, the first in data row 5"):
        sg.io.merscope(tmp_path)


# Lazy reading of detected_transcripts.parquet


@pytest.mark.parametrize(("row_group_size", "n_partitions"), [(2, 3), (10**6, 1)])
def test_merscope_parquet_row_groups_equal_eager(tmp_path, row_group_size, n_partitions):
    write_folder(tmp_path)
    csv_points = read_eagerly(tmp_path)
    transcripts = pd.read_csv(tmp_path / "detected_transcripts.csv")
    (tmp_path / "detected_transcripts.csv").unlink()
    transcripts.to_parquet(tmp_path / "detected_transcripts.parquet", row_group_size=row_group_size)

    element = sg.io.merscope(tmp_path).points["transcripts"]

    # write_folder writes 6 transcripts.
    assert element.npartitions == n_partitions
    pd.testing.assert_frame_equal(element.compute(), csv_points)


def test_merscope_ovarian_crop_parquet_equals_csv(tmp_path):
    folder = shared_dataset("merscope_ovarian_subset")
    (tmp_path / "cell_boundaries").mkdir()
    for file in (folder / "cell_boundaries").iterdir():
        (tmp_path / "cell_boundaries" / file.name).symlink_to(file)
    pd.read_csv(folder / "detected_transcripts.csv").to_parquet(
        tmp_path / "detected_transcripts.parquet", row_group_size=4_000
    )
    from_csv = sg.io.merscope(folder)

    from_parquet = sg.io.merscope(tmp_path)

    element = from_parquet.points["transcripts"]
    # The crop has 15,160 transcripts.
    assert element.npartitions == 4
    pd.testing.assert_frame_equal(element.compute(), from_csv.points["transcripts"].compute())
    assert from_parquet.shapes["cell_boundaries"].geom_equals(from_csv.shapes["cell_boundaries"]).all()


# Gzipped detected_transcripts.csv.gz


def gzip_transcripts(source, folder):
    """Write ``source``'s detected_transcripts.csv gzipped into ``folder``, with links to its cell polygons."""
    folder.mkdir()
    (folder / "cell_boundaries").mkdir()
    for file in (source / "cell_boundaries").iterdir():
        (folder / "cell_boundaries" / file.name).symlink_to(file)
    with gzip.open(folder / "detected_transcripts.csv.gz", "wb") as handle:
        handle.write((source / "detected_transcripts.csv").read_bytes())
    return folder


def test_merscope_gzipped_crop_in_blocks_with_scratch_dir(tmp_path, monkeypatch, caplog):
    folder = shared_dataset("merscope_ovarian_subset")
    gzipped = gzip_transcripts(folder, tmp_path / "gzipped")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 100_000)

    with caplog.at_level(logging.INFO, logger="segger"):
        sdata = sg.io.merscope(gzipped, scratch_dir=scratch)

    element = sdata.points["transcripts"]
    # As from the plain file, of 1.17 MB.
    assert element.npartitions == 12
    (copy,) = scratch.iterdir()
    assert [file.name for file in copy.iterdir()] == ["detected_transcripts.csv"]
    assert "Decompressed detected_transcripts.csv.gz" in caplog.text
    assert "8322 transcripts (54.9 %) lie inside a polygon" in caplog.text
    pd.testing.assert_frame_equal(element.compute(), read_eagerly(folder))

    # A frame derived from the element still reads the copy after the element is gone.
    derived = element[["x", "y", "feature_name"]]
    del sdata, element
    gc.collect()
    assert len(derived.compute()) == 15_160
    del derived
    gc.collect()
    assert list(scratch.iterdir()) == []


def test_merscope_gzipped_read_whole_without_scratch_dir(tmp_path, caplog):
    folder = write_folder(tmp_path)
    transcripts = folder / "detected_transcripts.csv"
    with gzip.open(folder / "detected_transcripts.csv.gz", "wb") as handle:
        handle.write(transcripts.read_bytes())
    transcripts.unlink()

    with caplog.at_level(logging.INFO, logger="segger"):
        element = sg.io.merscope(folder).points["transcripts"]

    assert "Reading the gzipped detected_transcripts.csv.gz whole into memory" in caplog.text
    assert element.npartitions == 1
    assert len(element.compute()) == 6


def test_merscope_gzipped_bad_rows_leave_scratch_dir_empty(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 1)
    transcripts = make_transcripts()
    transcripts.loc[3, "gene"] = ""
    folder = tmp_path / "input"
    folder.mkdir()
    write_folder(folder, transcripts)
    with gzip.open(folder / "detected_transcripts.csv.gz", "wb") as handle:
        handle.write((folder / "detected_transcripts.csv").read_bytes())
    (folder / "detected_transcripts.csv").unlink()
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    with pytest.raises(
        ValueError, match=r"1 of 6 transcripts in detected_transcripts\.csv\.gz have no 'gene' value"
    ):
        sg.io.merscope(folder, scratch_dir=scratch)

    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("scratch", [False, True])
def test_merscope_truncated_gzip(tmp_path, scratch):
    folder = tmp_path / "input"
    folder.mkdir()
    write_folder(folder)
    whole = gzip.compress((folder / "detected_transcripts.csv").read_bytes())
    (folder / "detected_transcripts.csv").unlink()
    (folder / "detected_transcripts.csv.gz").write_bytes(whole[: len(whole) // 2])
    scratch_dir = tmp_path / "scratch"
    scratch_dir.mkdir()

    with pytest.raises(ValueError, match=r"detected_transcripts\.csv\.gz in .* could not be decompressed"):
        sg.io.merscope(folder, scratch_dir=scratch_dir if scratch else None)

    assert list(scratch_dir.iterdir()) == []


def test_merscope_missing_scratch_dir(tmp_path):
    with pytest.raises(ValueError, match=r"scratch_dir=.* is not an existing folder"):
        sg.io.merscope(write_folder(tmp_path), scratch_dir=tmp_path / "absent")


def test_merscope_parquet_missing_column(tmp_path):
    write_folder(tmp_path)
    transcripts = pd.read_csv(tmp_path / "detected_transcripts.csv").drop(columns="gene")
    (tmp_path / "detected_transcripts.csv").unlink()
    transcripts.to_parquet(tmp_path / "detected_transcripts.parquet")

    with pytest.raises(ValueError, match=r"detected_transcripts\.parquet.*'gene'"):
        sg.io.merscope(tmp_path)
