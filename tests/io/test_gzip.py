from __future__ import annotations

import gc
import gzip
import logging

import pytest

import segger as sg
from segger.io._gzip import readable_file

TEXT = b"a,b\n1,2\n3,4\n" * 1000


def write_gzipped(path, data=TEXT):
    with gzip.open(path, "wb") as handle:
        handle.write(data)
    return path


class Reader:
    """Stands in for the function that reads a lazy frame's blocks."""


def test_plain_file_read_in_place(tmp_path):
    file = tmp_path / "t.csv"
    file.write_bytes(TEXT)

    with readable_file(file, None) as readable:
        assert readable.path == file
        assert readable.folder is None
        readable.keep_while(Reader())

    assert file.read_bytes() == TEXT


def test_copy_kept_while_owner_lives(tmp_path, caplog):
    source = write_gzipped(tmp_path / "t.csv.gz")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    owner = Reader()

    with caplog.at_level(logging.INFO, logger="segger"), readable_file(source, scratch) as readable:
        readable.keep_while(owner)

    (folder,) = scratch.iterdir()
    assert folder.name.startswith("segger-input-")
    assert readable.path == folder / "t.csv"
    assert readable.path.read_bytes() == TEXT
    assert "Decompressed t.csv.gz" in caplog.text

    del owner
    gc.collect()
    assert list(scratch.iterdir()) == []
    # The input is only read.
    assert gzip.decompress(source.read_bytes()) == TEXT


def test_copy_removed_when_not_kept(tmp_path):
    source = write_gzipped(tmp_path / "t.csv.gz")

    with readable_file(source, tmp_path) as readable:
        assert readable.path.is_file()

    assert not readable.folder.exists()


def test_copy_removed_when_reading_fails(tmp_path):
    source = write_gzipped(tmp_path / "t.csv.gz")
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def read_blocks(path):
        assert path.is_file()
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"), readable_file(source, scratch) as readable:
        read_blocks(readable.path)

    assert list(scratch.iterdir()) == []


def test_truncated_file(tmp_path):
    source = tmp_path / "t.csv.gz"
    whole = gzip.compress(TEXT)
    source.write_bytes(whole[: len(whole) // 2])
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    with (
        pytest.raises(ValueError, match=r"t\.csv\.gz in .* could not be decompressed: .*Copy it again"),
        readable_file(source, scratch),
    ):
        pass

    assert list(scratch.iterdir()) == []


def test_not_gzip_data(tmp_path):
    source = tmp_path / "t.csv.gz"
    source.write_bytes(TEXT)

    with (
        pytest.raises(ValueError, match=r"t\.csv\.gz .* could not be decompressed: Not a gzipped file"),
        readable_file(source, tmp_path),
    ):
        pass

    assert [path.name for path in tmp_path.iterdir()] == ["t.csv.gz"]


def test_write_failure_names_folder(tmp_path, monkeypatch):
    source = write_gzipped(tmp_path / "t.csv.gz")
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def no_space(source, sink, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("segger.io._gzip.shutil.copyfileobj", no_space)
    with (
        pytest.raises(
            OSError, match=r"Decompressing t\.csv\.gz into .*scratch/segger-input-.* No space left"
        ),
        readable_file(source, scratch),
    ):
        pass

    assert list(scratch.iterdir()) == []


def test_gzipped_file_needs_scratch_dir(tmp_path):
    source = write_gzipped(tmp_path / "t.csv.gz")

    with (
        pytest.raises(ValueError, match=r"t\.csv\.gz is gzipped .* pass scratch_dir="),
        readable_file(source, None),
    ):
        pass


def test_missing_scratch_dir(tmp_path):
    source = write_gzipped(tmp_path / "t.csv.gz")

    with (
        pytest.raises(
            ValueError, match=r"is not an existing folder.*to read a gzipped transcripts file whole"
        ),
        readable_file(source, tmp_path / "absent"),
    ):
        pass


def test_scratch_dir_is_file(tmp_path):
    source = write_gzipped(tmp_path / "t.csv.gz")

    with (
        pytest.raises(ValueError, match=r"scratch_dir=.*t\.csv\.gz'\) is a file, not a folder"),
        readable_file(source, source),
    ):
        pass


@pytest.mark.parametrize("reader", ["cosmx", "xenium"])
@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_broken_gzip_read_whole(tmp_path, reader, damage):
    file = tmp_path / {"cosmx": "Run1_tx_file.csv.gz", "xenium": "transcripts.csv.gz"}[reader]
    whole = gzip.compress(TEXT)
    file.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else TEXT)
    # The Xenium reader looks for the nuclei before it reads the transcripts.
    (tmp_path / "nucleus_boundaries.parquet").write_bytes(b"")

    with pytest.raises(ValueError, match=rf"{file.name} in .* could not be decompressed: .*Copy it again"):
        getattr(sg.io, reader)(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [file.name, "nucleus_boundaries.parquet"]
    )


COSMX_HEADER = b"fov,cell_ID,x_global_px,y_global_px,target,CellComp\n"


@pytest.mark.parametrize("content", [b"", COSMX_HEADER])
def test_copy_errors_name_original(tmp_path, content):
    write_gzipped(tmp_path / "Run1_tx_file.csv.gz", content)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    with pytest.raises(ValueError, match=r"^Run1_tx_file\.csv\.gz in '.*' contains no transcripts") as raised:
        sg.io.cosmx(tmp_path, scratch_dir=scratch)

    assert f"in {str(tmp_path)!r}" in str(raised.value)
    assert "segger-input-" not in str(raised.value)
    assert list(scratch.iterdir()) == []


def test_cut_line_read_whole(tmp_path):
    lines = COSMX_HEADER + b"1,0,1.0,2.0,KRT8,Nuclear\n"
    write_gzipped(tmp_path / "Run1_tx_file.csv.gz", lines + b'1,0,"3.0,4.0,KRT8,Nuclear\n')

    with pytest.raises(
        ValueError, match=r"Run1_tx_file\.csv\.gz in .* could not be parsed: .*Check that the export"
    ):
        sg.io.cosmx(tmp_path)
