from __future__ import annotations

import gc
import gzip
import logging

import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from scipy import ndimage

import segger as sg
from conftest import shared_dataset

PIXEL_SIZE = 0.5
FOV_ORIGIN = (100.0, 200.0)  # global pixel position of FOV 3's bottom-left corner

# FOV 3's label mask in image orientation (row 0 at the top): label 5 fills the top-left
# 3 x 4 pixels, label 6 the bottom-right 3 x 4 pixels. In global pixels, label 5 covers
# x 100-104, y 203-206 and label 6 covers x 104-108, y 200-203.
LABELS = np.zeros((6, 8), dtype=np.uint16)
LABELS[0:3, 0:4] = 5
LABELS[3:6, 4:8] = 6


def make_transcripts() -> pd.DataFrame:
    rows = [
        # fov, cell_ID, x_global_px, y_global_px, z, target, CellComp
        (3, 5, 101.5, 205.0, 0, "KRT8", "Nuclear"),
        (3, 5, 102.5, 204.5, 1, "KRT8", "Nuclear"),
        (3, 5, 101.0, 203.5, 2, "EPCAM", "Nuclear"),
        (3, 5, 103.5, 205.5, 3, "EPCAM", "Cytoplasm"),
        (3, 6, 105.0, 201.0, 4, "CD3E", "Nuclear"),
        (3, 6, 106.0, 202.0, 5, "NegPrb3", "Nuclear"),
        (3, 6, 107.0, 201.5, 6, "CD3E", "Membrane"),
        (3, 0, 104.5, 205.0, 7, "SystemControl12", "Nuclear"),
        (3, 0, 150.0, 150.0, 8, "CD3E", "0"),
        # Cell 5 of FOV 4 is another cell than cell 5 of FOV 3. Its nuclear transcripts are collinear.
        (4, 5, 300.0, 300.0, 0, "KRT8", "Nuclear"),
        (4, 5, 301.0, 300.0, 0, "KRT8", "Nuclear"),
        (4, 5, 302.0, 300.0, 0, "FalseCode7", "Nuclear"),
    ]
    frame = pd.DataFrame(
        rows, columns=["fov", "cell_ID", "x_global_px", "y_global_px", "z", "target", "CellComp"]
    )
    frame.insert(4, "x_local_px", frame["x_global_px"] - 50.0)
    frame.insert(5, "y_local_px", frame["y_global_px"] - 60.0)
    return frame


def write_folder(folder, transcripts=None, *, labels=LABELS, mask_fov=3, positions=None):
    transcripts = make_transcripts() if transcripts is None else transcripts
    transcripts.to_csv(folder / "Run1_tx_file.csv", index=False)
    if labels is not None:
        (folder / "CellLabels").mkdir()
        tifffile.imwrite(
            folder / "CellLabels" / f"CellLabels_F{mask_fov:03d}.tif", labels, compression="zlib"
        )
    if positions is None:
        positions = pd.DataFrame(
            {
                "fov": [mask_fov, 4],
                "x_global_px": [FOV_ORIGIN[0], 290.0],
                "y_global_px": [FOV_ORIGIN[1], 290.0],
            }
        )
    if len(positions):
        positions.to_csv(folder / "Run1_fov_positions_file.csv", index=False)
    return folder


def read(folder, **kwargs):
    sdata = sg.io.cosmx(folder, pixel_size=PIXEL_SIZE, **kwargs)
    return sdata, sdata.points["transcripts"].compute().reset_index(drop=True)


def test_cosmx_points_schema(tmp_path):
    sdata, points = read(write_folder(tmp_path))
    raw = make_transcripts()

    assert len(points) == 12
    assert points["transcript_id"].dtype == np.int64
    assert points["transcript_id"].tolist() == list(range(12))
    np.testing.assert_allclose(points["x"], raw["x_global_px"] * PIXEL_SIZE)
    np.testing.assert_allclose(points["y"], raw["y_global_px"] * PIXEL_SIZE)
    assert points["cell_id"].tolist()[:5] == ["3_5", "3_5", "3_5", "3_5", "3_6"]
    assert points["cell_id"].isna().sum() == 2
    assert points["cell_id"].tolist()[-1] == "4_5"
    assert points["feature_name"].astype(str).tolist() == raw["target"].tolist()
    assert sdata.points["transcripts"].attrs["spatialdata_attrs"]["feature_key"] == "feature_name"
    assert points["is_control"].tolist() == [False] * 5 + [True, False, True, False, False, False, True]
    assert "qv" not in points.columns
    for column in (
        "fov",
        "cell_ID",
        "x_global_px",
        "y_global_px",
        "x_local_px",
        "y_local_px",
        "target",
        "CellComp",
    ):
        assert points[column].tolist() == raw[column].tolist(), column


def test_cosmx_overlaps_nucleus(tmp_path):
    _, points = read(write_folder(tmp_path))

    assert points["overlaps_nucleus"].dtype == bool
    # Row 7 is nuclear but has cell_ID 0, so it has no nucleus to lie in.
    expected = [True, True, True, False, True, True, False, False, False, True, True, True]
    assert points["overlaps_nucleus"].tolist() == expected


def test_cosmx_z_dropped_by_default(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segger"):
        _, points = read(write_folder(tmp_path))

    assert "z" not in points.columns
    assert points["z_plane"].tolist() == make_transcripts()["z"].tolist()
    assert "z_step is None, so z is dropped" in caplog.text


def test_cosmx_z_step(tmp_path):
    _, points = read(write_folder(tmp_path), z_step=0.8)

    np.testing.assert_allclose(points["z"], make_transcripts()["z"] * 0.8)


def test_cosmx_nucleus_polygons(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segger"):
        sdata, points = read(write_folder(tmp_path))
    nuclei = sdata.shapes["nucleus_boundaries"]

    # Cell 3_6 has only 2 nuclear transcripts, fewer than min_nuclear_transcripts=3.
    assert nuclei.index.tolist() == ["3_5", "4_5"]
    assert "Skipped 1 cell(s) with fewer than 3 nuclear transcripts" in caplog.text
    assert nuclei.is_valid.all()
    assert (shapely.get_type_id(nuclei.geometry.to_numpy()) == shapely.GeometryType.POLYGON).all()
    for cell_id, polygon in nuclei.geometry.items():
        own = points[points["overlaps_nucleus"] & (points["cell_id"] == cell_id)]
        assert shapely.contains_xy(polygon, own["x"].to_numpy(), own["y"].to_numpy()).all(), cell_id

    # The collinear cell becomes a capsule: a 1 µm segment grown by 0.5 µm.
    assert 1.0 < nuclei.area["4_5"] <= 1.0 + np.pi * 0.25


def test_cosmx_nucleus_settings(tmp_path):
    sdata, _ = read(write_folder(tmp_path), min_nuclear_transcripts=1, nucleus_buffer=1.0)
    nuclei = sdata.shapes["nucleus_boundaries"]

    assert nuclei.index.tolist() == ["3_5", "3_6", "4_5"]
    assert nuclei.is_valid.all()
    assert nuclei.area["4_5"] > 2.0


def test_cosmx_no_nuclear_transcripts(tmp_path, caplog):
    transcripts = make_transcripts()
    transcripts["CellComp"] = "Cytoplasm"
    with caplog.at_level(logging.WARNING, logger="segger"):
        sdata, points = read(write_folder(tmp_path, transcripts))

    assert "nucleus_boundaries" not in sdata.shapes
    assert not points["overlaps_nucleus"].any()
    assert "No cell in Run1_tx_file.csv has 3 or more nuclear transcripts" in caplog.text


def test_cosmx_invalid_min_nuclear_transcripts(tmp_path):
    with pytest.raises(ValueError, match="min_nuclear_transcripts must be at least 1"):
        read(write_folder(tmp_path), min_nuclear_transcripts=0)


def test_cosmx_invalid_nucleus_buffer(tmp_path):
    with pytest.raises(ValueError, match="nucleus_buffer must be a positive distance"):
        read(write_folder(tmp_path), nucleus_buffer=0.0)


def test_cosmx_mask_cell_boundaries(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segger"):
        sdata, _ = read(write_folder(tmp_path))
    cells = sdata.shapes["cell_boundaries"]

    assert cells.index.tolist() == ["3_5", "3_6"]
    assert cells.is_valid.all()
    assert cells.area.tolist() == [12 * PIXEL_SIZE**2, 12 * PIXEL_SIZE**2]
    assert cells.geometry["3_5"].equals(shapely.box(50.0, 101.5, 52.0, 103.0))
    assert cells.geometry["3_6"].equals(shapely.box(52.0, 100.0, 54.0, 101.5))
    assert "100.0 % of the 7 assigned transcripts" in caplog.text


def test_cosmx_mask_label_with_two_parts(tmp_path):
    labels = LABELS.copy()
    labels[5, 0] = 5  # a one-pixel island of label 5, away from its main block
    sdata, _ = read(write_folder(tmp_path, labels=labels))

    assert sdata.shapes["cell_boundaries"].area["3_5"] == 12 * PIXEL_SIZE**2


def test_cosmx_misaligned_mask_left_out(tmp_path, caplog):
    # Without the flip from image rows to the upward global y axis, no label matches.
    with caplog.at_level(logging.WARNING, logger="segger"):
        sdata, _ = read(write_folder(tmp_path, labels=np.flipud(LABELS)))

    assert "cell_boundaries" not in sdata.shapes
    assert "nucleus_boundaries" in sdata.shapes
    assert "only 0.0 % of the 7 assigned transcripts" in caplog.text
    assert "min_mask_agreement is 90 %" in caplog.text


def test_cosmx_min_mask_agreement(tmp_path):
    labels = LABELS.copy()
    labels[0:3, 0:4] = 9  # cell 5's pixels carry another label: 3 of 7 transcripts match
    folder = write_folder(tmp_path, labels=labels)

    assert "cell_boundaries" not in read(folder)[0].shapes
    assert "cell_boundaries" in read(folder, min_mask_agreement=0.3)[0].shapes


def test_cosmx_invalid_min_mask_agreement(tmp_path):
    with pytest.raises(ValueError, match="min_mask_agreement must lie between 0 and 1"):
        read(write_folder(tmp_path), min_mask_agreement=1.5)


def test_cosmx_mask_without_fov_position(tmp_path, caplog):
    positions = pd.DataFrame({"FOV": [8], "x_global_px": [0.0], "y_global_px": [0.0]})
    with caplog.at_level(logging.WARNING, logger="segger"):
        sdata, _ = read(write_folder(tmp_path, positions=positions))

    assert "cell_boundaries" not in sdata.shapes
    assert "FOV 3 has no position" in caplog.text
    assert "lists the FOVs [8] but not the FOV(s) [3, 4]" in caplog.text


def test_cosmx_mask_without_positions_file(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="segger"):
        sdata, _ = read(write_folder(tmp_path, positions=pd.DataFrame()))

    assert "cell_boundaries" not in sdata.shapes
    assert "no fov_positions_file.csv" in caplog.text


def test_cosmx_mask_named_for_other_fov(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="segger"):
        sdata, _ = read(write_folder(tmp_path, mask_fov=1))

    assert sdata.shapes["cell_boundaries"].index.tolist() == ["3_5", "3_6"]
    assert "named for FOV 1, but the assigned transcripts in its area come from FOV(s) [3]" in caplog.text


def test_cosmx_mask_over_no_transcripts(tmp_path, caplog):
    positions = pd.DataFrame({"fov": [3], "x_global_px": [5000.0], "y_global_px": [5000.0]})
    with caplog.at_level(logging.WARNING, logger="segger"):
        sdata, _ = read(write_folder(tmp_path, positions=positions))

    assert "cell_boundaries" not in sdata.shapes
    assert "no assigned transcript lies in its area" in caplog.text


def test_cosmx_empty_mask_left_out(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="segger"):
        sdata, _ = read(write_folder(tmp_path, labels=np.zeros_like(LABELS)), min_mask_agreement=0.0)

    assert "cell_boundaries" not in sdata.shapes
    assert "hold no labels" in caplog.text


def test_cosmx_cell_labels_off(tmp_path):
    sdata, _ = read(write_folder(tmp_path), cell_labels=False)

    assert "cell_boundaries" not in sdata.shapes


def test_cosmx_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sg.io.cosmx(tmp_path / "absent")


def test_cosmx_missing_transcripts_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\*tx_file\.csv"):
        sg.io.cosmx(tmp_path)


def test_cosmx_several_transcript_files(tmp_path):
    write_folder(tmp_path)
    make_transcripts().to_csv(tmp_path / "Run2_tx_file.csv", index=False)
    with pytest.raises(ValueError, match=r"several files matching '\*tx_file\.csv'"):
        sg.io.cosmx(tmp_path)


def test_cosmx_parquet_preferred_to_gzip(tmp_path, caplog):
    write_folder(tmp_path)
    transcripts = make_transcripts()
    (tmp_path / "Run1_tx_file.csv").unlink()
    transcripts.to_parquet(tmp_path / "Run1_tx_file.parquet", index=False)
    transcripts.iloc[:3].to_csv(tmp_path / "Run1_tx_file.csv.gz", index=False)

    with caplog.at_level(logging.INFO, logger="segger"):
        sdata = sg.io.cosmx(tmp_path, pixel_size=PIXEL_SIZE)

    assert len(sdata.points["transcripts"].compute()) == 12
    assert "gzipped" not in caplog.text


def test_cosmx_missing_columns(tmp_path):
    transcripts = make_transcripts().drop(columns=["y_global_px", "CellComp"])
    with pytest.raises(ValueError, match=r"\['y_global_px', 'CellComp'\]; it has \['fov'"):
        sg.io.cosmx(write_folder(tmp_path, transcripts))


def test_cosmx_nan_coordinates(tmp_path):
    transcripts = make_transcripts()
    transcripts.loc[3, "y_global_px"] = np.nan
    with pytest.raises(ValueError, match=r"1 of 12 transcripts .* 'y_global_px'"):
        sg.io.cosmx(write_folder(tmp_path, transcripts))


@pytest.mark.parametrize("content", ["", "fov,cell_ID,x_global_px,y_global_px,z,target,CellComp\n"])
def test_cosmx_empty_transcripts(tmp_path, content):
    (tmp_path / "tx_file.csv").write_text(content)
    with pytest.raises(ValueError, match=r"tx_file\.csv .* contains no transcripts"):
        sg.io.cosmx(tmp_path)


@pytest.mark.parametrize("pixel_size", [0.0, -0.18, np.inf])
def test_cosmx_invalid_pixel_size(tmp_path, pixel_size):
    with pytest.raises(ValueError, match="pixel_size must be a positive number"):
        sg.io.cosmx(write_folder(tmp_path), pixel_size=pixel_size)


def test_cosmx_lung_crop(caplog):
    folder = shared_dataset("cosmx_lung9_sample1")
    raw = pd.read_csv(folder / "tx_file.csv")
    with caplog.at_level(logging.INFO, logger="segger"):
        sdata = sg.io.cosmx(folder)
    points = sdata.points["transcripts"].compute().reset_index(drop=True)
    nuclei = sdata.shapes["nucleus_boundaries"]
    cells = sdata.shapes["cell_boundaries"]

    assert len(points) == 23_844
    np.testing.assert_allclose(points["x"], raw["x_global_px"] * 0.18)
    assert points["cell_id"].notna().sum() == 19_855
    assert points["cell_id"].nunique() == 85
    assert int(points["overlaps_nucleus"].sum()) == 9_315
    assert int(points["is_control"].sum()) == 78
    assert "z" not in points.columns

    # Every cell has at least 7 nuclear transcripts on this crop, so all 70 get a nucleus.
    nuclear = points[points["overlaps_nucleus"]]
    assert sorted(nuclei.index) == sorted(nuclear["cell_id"].unique())
    assert len(nuclei) == 70
    assert nuclei.is_valid.all()
    for cell_id, group in nuclear.groupby("cell_id"):
        assert shapely.contains_xy(nuclei.geometry[cell_id], group["x"], group["y"]).all(), cell_id

    # The FOV positions name FOVs 1 and 2 and the transcripts FOV 9. F002, a copy of F001, does not align.
    assert "lists the FOVs [1, 2] but not the FOV(s) [9]" in caplog.text
    assert "CellLabels_F001.tif: 98.3 % of the 15745 assigned transcripts" in caplog.text
    assert "CellLabels_F002.tif is left out: only 0.0 % of the 4110" in caplog.text

    # Independent check of F001 with numpy: flipped rows, placed at FOV 1's position.
    labels = tifffile.imread(folder / "CellLabels" / "CellLabels_F001.tif").astype(np.int64)
    columns = np.floor(raw["x_global_px"].to_numpy() - 5133.33333333333).astype(int)
    rows_from_bottom = np.floor(raw["y_global_px"].to_numpy() - 146055.555555556).astype(int)
    covered = (columns >= 0) & (columns < 300) & (rows_from_bottom >= 0) & (rows_from_bottom < 600)
    checked = covered & (raw["cell_ID"].to_numpy() > 0)
    agrees = np.zeros(len(raw), dtype=bool)
    agrees[checked] = (
        labels[599 - rows_from_bottom[checked], columns[checked]] == raw["cell_ID"].to_numpy()[checked]
    )
    assert int(checked.sum()) == 15_745
    assert int(agrees.sum()) == 15_474

    assert len(cells) == 58
    assert cells.is_valid.all()
    assert set(cells.index) == {f"9_{label}" for label in np.unique(labels[labels > 0])}

    # Polygon areas equal the pixel counts, except for the one label in two separate pieces,
    # which keeps only its larger piece.
    pixel_counts = pd.Series(labels[labels > 0]).value_counts()
    areas = cells.area / 0.18**2
    differing = [label for label, count in pixel_counts.items() if not np.isclose(areas[f"9_{label}"], count)]
    assert differing == [1230]
    assert ndimage.label(labels == 1230)[1] == 2
    assert areas["9_1230"] < pixel_counts[1230]

    # Each transcript that agrees with the mask lies in or on the edge of its cell's polygon.
    n_covered = 0
    for cell_number in np.unique(raw.loc[agrees, "cell_ID"]):
        own = agrees & (raw["cell_ID"].to_numpy() == cell_number)
        polygon = cells.geometry[f"9_{cell_number}"]
        n_covered += int(shapely.intersects_xy(polygon, points["x"][own], points["y"][own]).sum())
    assert n_covered == 15_474


# Lazy reading of *tx_file.csv


def read_eagerly(folder, file_name="Run1_tx_file.csv", **kwargs):
    """The points and nuclei of a CosMx folder, read whole with pandas instead of block by block."""
    from segger.io._cosmx import nucleus_polygons, read_transcripts

    points = read_transcripts(folder / file_name, **kwargs)
    return points, nucleus_polygons(points)


@pytest.mark.parametrize(("block_bytes", "n_partitions"), [(1, 12), (10**6, 1)])
def test_cosmx_csv_blocks_equal_eager(tmp_path, monkeypatch, caplog, block_bytes, n_partitions):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", block_bytes)
    write_folder(tmp_path)
    with caplog.at_level(logging.INFO, logger="segger"):
        sdata = sg.io.cosmx(tmp_path, pixel_size=PIXEL_SIZE)
    element = sdata.points["transcripts"]
    points, nuclei = read_eagerly(tmp_path, pixel_size=PIXEL_SIZE)

    assert element.npartitions == n_partitions
    pd.testing.assert_frame_equal(
        element.compute(), sg.io._spatialdata.build_spatialdata(points, {}).points["transcripts"].compute()
    )
    assert sdata.shapes["nucleus_boundaries"].index.tolist() == nuclei.index.tolist()
    assert sdata.shapes["nucleus_boundaries"].geom_equals(nuclei).all()
    assert "Mask CellLabels_F003.tif: 100.0 % of the 7 assigned transcripts" in caplog.text


def test_cosmx_csv_late_bad_cell_id(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 1)
    transcripts = make_transcripts()
    transcripts["cell_ID"] = transcripts["cell_ID"].astype(object)
    transcripts.loc[10, "cell_ID"] = "c5"

    with pytest.raises(ValueError, match=r"'cell_ID' of Run1_tx_file\.csv must hold whole numbers .* 'c5'"):
        sg.io.cosmx(write_folder(tmp_path, transcripts))


def test_cosmx_lung_crop_in_blocks(monkeypatch, caplog):
    folder = shared_dataset("cosmx_lung9_sample1")
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 200_000)
    with caplog.at_level(logging.INFO, logger="segger"):
        sdata = sg.io.cosmx(folder)
    element = sdata.points["transcripts"]
    points, nuclei = read_eagerly(folder, "tx_file.csv")

    # The crop's file is 2.2 MB.
    assert element.npartitions == 12
    pd.testing.assert_frame_equal(
        element.compute(), sg.io._spatialdata.build_spatialdata(points, {}).points["transcripts"].compute()
    )
    assert sdata.shapes["nucleus_boundaries"].index.tolist() == nuclei.index.tolist()
    assert sdata.shapes["nucleus_boundaries"].geom_equals(nuclei).all()
    assert len(sdata.shapes["cell_boundaries"]) == 58
    assert "CellLabels_F001.tif: 98.3 % of the 15745 assigned transcripts" in caplog.text


def test_hull_vertices_give_same_nuclei(caplog):
    from segger.io._cosmx import hull_vertices, nucleus_polygons

    rng = np.random.default_rng(1)
    n = 20_000
    cells = rng.integers(0, 300, n)
    # Coordinates rounded to 0.1 µm, so that many transcripts repeat or line up.
    points = pd.DataFrame(
        {
            "cell_id": pd.array(cells.astype(str), dtype="string"),
            "x": np.round(rng.normal(cells % 20 * 20.0, 2.0), 1),
            "y": np.round(rng.normal(cells // 20 * 20.0, 2.0), 1),
            "overlaps_nucleus": rng.random(n) < 0.05,
        }
    )
    with caplog.at_level(logging.INFO, logger="segger"):
        whole = nucleus_polygons(points, min_transcripts=3)
    whole_log, _ = caplog.text, caplog.clear()

    blocks = [hull_vertices(points.iloc[start : start + 997]) for start in range(0, n, 997)]
    with caplog.at_level(logging.INFO, logger="segger"):
        from_blocks = nucleus_polygons(pd.concat(blocks), min_transcripts=3)

    assert "Skipped" in whole_log
    assert caplog.text == whole_log
    assert from_blocks.index.equals(whole.index)
    np.testing.assert_array_equal(
        shapely.to_wkb(from_blocks.geometry.array), shapely.to_wkb(whole.geometry.array)
    )
    assert sum(block["n_transcripts"].sum() for block in blocks) == points["overlaps_nucleus"].sum()


@pytest.mark.parametrize("on_disk", [False, True])
def test_cosmx_lung_crop_keeps_hull_vertices(tmp_path, on_disk):
    from segger._scratch import ArrayStore
    from segger.io._cosmx import MaskPixels, nucleus_polygons, read_transcripts_lazily

    file = shared_dataset("cosmx_lung9_sample1") / "tx_file.csv"
    points, nuclei = read_eagerly(file.parent, "tx_file.csv")
    store = ArrayStore(tmp_path) if on_disk else ArrayStore()

    _, inputs = read_transcripts_lazily(file, block_bytes=20_000, pixels=MaskPixels(store))

    # 1,647 hull vertices of 20 kB blocks stand for the 9,315 nuclear transcripts of the crop.
    assert points["overlaps_nucleus"].sum() == 9_315
    assert len(inputs.nuclear) == 1_647
    from_blocks = nucleus_polygons(inputs.nuclear)
    assert from_blocks.index.equals(nuclei.index)
    np.testing.assert_array_equal(
        shapely.to_wkb(from_blocks.geometry.array), shapely.to_wkb(nuclei.geometry.array)
    )
    # Only the assigned transcripts are kept for the mask checks, sorted by x.
    assigned = points[points["cell_ID"] > 0].sort_values("x_global_px", kind="stable")
    for name in ("x_global_px", "y_global_px", "fov", "cell_ID"):
        np.testing.assert_array_equal(inputs.pixels.columns[name], assigned[name].to_numpy())
        assert isinstance(inputs.pixels.columns[name], np.memmap) == on_disk
    assert inputs.fovs == [9]


def test_cosmx_mask_positions_in_scratch_dir(tmp_path, monkeypatch):
    from segger.io import _cosmx

    folder = shared_dataset("cosmx_lung9_sample1")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    seen = []

    def record(self):
        seen.extend(path.name for path in scratch.glob("segger-*/*"))
        return sorted_pixels(self)

    sorted_pixels = _cosmx.MaskPixels.sorted
    monkeypatch.setattr(_cosmx.MaskPixels, "sorted", record)
    plain = sg.io.cosmx(folder)

    sdata = sg.io.cosmx(folder, scratch_dir=scratch)

    # The unsorted columns were on disk while the masks were read, and the folder is gone after.
    assert sorted(seen) == [
        f"mask_{name}_unsorted.npy" for name in ("cell_ID", "fov", "x_global_px", "y_global_px")
    ]
    assert list(scratch.iterdir()) == []
    assert sdata.shapes["cell_boundaries"].index.equals(plain.shapes["cell_boundaries"].index)
    assert sdata.shapes["cell_boundaries"].geom_equals(plain.shapes["cell_boundaries"]).all()


def test_cosmx_pixels_kept_only_for_masks(tmp_path, monkeypatch):
    from segger.io import _cosmx

    requested = []

    def spy(*args, **kwargs):
        requested.append(kwargs["pixels"] is not None)
        return read_lazily(*args, **kwargs)

    read_lazily = _cosmx.read_transcripts_lazily
    monkeypatch.setattr(_cosmx, "read_transcripts_lazily", spy)
    with_masks = tmp_path / "masks"
    with_masks.mkdir()
    write_folder(with_masks)
    without = tmp_path / "no_masks"
    without.mkdir()
    write_folder(without, labels=None)

    sg.io.cosmx(with_masks, pixel_size=PIXEL_SIZE)
    sg.io.cosmx(with_masks, pixel_size=PIXEL_SIZE, cell_labels=False)
    sg.io.cosmx(without, pixel_size=PIXEL_SIZE)

    assert requested == [True, False, False]
    _, inputs = read_lazily(without / "Run1_tx_file.csv")
    assert inputs.pixels is None
    assert inputs.fovs == [3, 4]


def test_mask_check_reads_nearby_columns(caplog):
    from segger.io._cosmx import MaskPixels, _check_mask

    rng = np.random.default_rng(2)
    n = 50_000
    labels = rng.integers(0, 4, (40, 30))
    # Half the transcripts lie on pixel edges, and some on the mask's first and last columns.
    x = np.where(rng.random(n) < 0.5, rng.integers(0, 200, n).astype(float), rng.uniform(0, 200, n))
    points = pd.DataFrame(
        {
            "fov": rng.integers(1, 4, n),
            "cell_ID": rng.integers(0, 4, n),
            "x_global_px": x,
            "y_global_px": rng.uniform(0, 100, n),
        }
    )
    collected = MaskPixels()
    collected.add(points)
    pixels = collected.sorted()
    for origin in [(0.0, 0.0), (50.0, 20.0), (100.5, 60.0), (170.0, 0.0), (400.0, 0.0)]:
        with caplog.at_level(logging.INFO, logger="segger"):
            expected = _check_mask(labels, origin, 2, points, min_agreement=0.2, name="m")
        expected_log, _ = caplog.text, caplog.clear()
        with caplog.at_level(logging.INFO, logger="segger"):
            found = _check_mask(
                labels,
                origin,
                2,
                pixels.columns_near(origin[0], labels.shape[1]),
                min_agreement=0.2,
                name="m",
            )

        assert found == expected, origin
        assert caplog.text == expected_log, origin
        caplog.clear()


def test_cosmx_csv_missing_target(tmp_path, monkeypatch):
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 1)
    transcripts = make_transcripts()
    transcripts.loc[[7, 10], "target"] = None

    with pytest.raises(
        ValueError,
        match=r"2 of 12 transcripts in Run1_tx_file\.csv have no 'target' value, the first in data row 7",
    ):
        sg.io.cosmx(write_folder(tmp_path, transcripts))


# Lazy reading of *tx_file.parquet


# The 12 transcripts of make_transcripts in row groups of 5 rows, or in one.
@pytest.mark.parametrize(("row_group_size", "n_partitions"), [(5, 3), (10**6, 1)])
def test_cosmx_parquet_row_groups_equal_eager(tmp_path, row_group_size, n_partitions):
    transcripts = make_transcripts()
    write_folder(tmp_path, transcripts)
    (tmp_path / "Run1_tx_file.csv").unlink()
    transcripts.to_parquet(tmp_path / "Run1_tx_file.parquet", index=False, row_group_size=row_group_size)
    sdata = sg.io.cosmx(tmp_path, pixel_size=PIXEL_SIZE)
    element = sdata.points["transcripts"]
    points, nuclei = read_eagerly(tmp_path, "Run1_tx_file.parquet", pixel_size=PIXEL_SIZE)

    assert element.npartitions == n_partitions
    pd.testing.assert_frame_equal(
        element.compute(), sg.io._spatialdata.build_spatialdata(points, {}).points["transcripts"].compute()
    )
    assert sdata.shapes["nucleus_boundaries"].index.tolist() == nuclei.index.tolist()
    assert sdata.shapes["nucleus_boundaries"].geom_equals(nuclei).all()


def test_cosmx_lung_crop_parquet_equals_csv(tmp_path):
    folder = shared_dataset("cosmx_lung9_sample1")
    # Links to the crop's files, the label-mask folder included.
    for name in ("CellLabels", "fov_positions_file.csv"):
        (tmp_path / name).symlink_to(folder / name)
    pd.read_csv(folder / "tx_file.csv").to_parquet(tmp_path / "tx_file.parquet", row_group_size=5_000)
    from_csv = sg.io.cosmx(folder)

    from_parquet = sg.io.cosmx(tmp_path)

    element = from_parquet.points["transcripts"]
    # The crop has 23,844 transcripts.
    assert element.npartitions == 5
    pd.testing.assert_frame_equal(element.compute(), from_csv.points["transcripts"].compute())
    assert list(from_parquet.shapes) == list(from_csv.shapes)
    for key in from_csv.shapes:
        assert from_parquet.shapes[key].index.equals(from_csv.shapes[key].index)
        assert from_parquet.shapes[key].geom_equals(from_csv.shapes[key]).all()


def test_cosmx_gzipped_crop_in_blocks_with_scratch_dir(tmp_path, monkeypatch, caplog):
    folder = shared_dataset("cosmx_lung9_sample1")
    gzipped = tmp_path / "gzipped"
    gzipped.mkdir()
    for name in ("CellLabels", "fov_positions_file.csv"):
        (gzipped / name).symlink_to(folder / name)
    with gzip.open(gzipped / "tx_file.csv.gz", "wb") as handle:
        handle.write((folder / "tx_file.csv").read_bytes())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("segger.io._csv.BYTES_PER_BLOCK", 200_000)
    plain = sg.io.cosmx(folder)

    with caplog.at_level(logging.INFO, logger="segger"):
        sdata = sg.io.cosmx(gzipped, scratch_dir=scratch)

    element = sdata.points["transcripts"]
    # As from the plain file, of 2.2 MB.
    assert element.npartitions == 12
    assert "Decompressed tx_file.csv.gz" in caplog.text
    assert "CellLabels_F001.tif: 98.3 % of the 15745 assigned transcripts" in caplog.text
    pd.testing.assert_frame_equal(element.compute(), plain.points["transcripts"].compute())
    assert list(sdata.shapes) == list(plain.shapes)
    for key in plain.shapes:
        assert sdata.shapes[key].index.equals(plain.shapes[key].index)
        assert sdata.shapes[key].geom_equals(plain.shapes[key]).all()

    del sdata, element
    gc.collect()
    assert list(scratch.iterdir()) == []


def test_cosmx_parquet_without_rows(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "Run1_tx_file.csv").unlink()
    make_transcripts().iloc[:0].to_parquet(tmp_path / "Run1_tx_file.parquet", index=False)

    with pytest.raises(ValueError, match=r"Run1_tx_file\.parquet.*no transcripts"):
        sg.io.cosmx(tmp_path, pixel_size=PIXEL_SIZE)
