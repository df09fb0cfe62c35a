"""Read a 10x Xenium output folder into segger's SpatialData layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from spatialdata import SpatialData

from .. import _constants as C
from ._shapes import polygons_from_vertices
from ._spatialdata import (
    build_spatialdata,
    check_coordinates,
    check_required_columns,
    decode_byte_strings,
    flag_controls,
    to_cell_id_strings,
)

logger = logging.getLogger(__name__)

TRANSCRIPT_FILES = ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv")
NUCLEUS_FILES = ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz", "nucleus_boundaries.csv")
CELL_FILES = ("cell_boundaries.parquet", "cell_boundaries.csv.gz", "cell_boundaries.csv")

COLUMN_NAMES = {"x_location": C.X, "y_location": C.Y, "z_location": C.Z}
REQUIRED_COLUMNS = ("x_location", "y_location", "feature_name")

# Xenium's `codeword_category` values that are real genes; every other category is a control.
GENE_CATEGORIES = ("predesigned_gene", "custom_gene")


def xenium(path: str | Path, *, cell_boundaries: bool = True) -> SpatialData:
    """Read a Xenium output folder.

    Works on a full output bundle and on a bare folder holding only the files below.

    Parameters
    ----------
    path
        Folder holding ``transcripts.parquet`` (or ``transcripts.csv.gz``) and
        ``nucleus_boundaries.parquet`` (or ``.csv.gz``), and optionally ``cell_boundaries``.
    cell_boundaries
        Whether to read ``cell_boundaries`` when the folder has them.

    Returns
    -------
    SpatialData with the points element ``"transcripts"`` (columns ``x``, ``y``, ``z`` in µm,
    ``feature_name``, ``transcript_id``, ``cell_id``, ``overlaps_nucleus``, ``qv``,
    ``is_control`` and every other vendor column unchanged) and the shapes elements
    ``"nucleus_boundaries"`` and, when present, ``"cell_boundaries"``, indexed by Xenium's cell id.
    Control probes are flagged in ``is_control`` and kept.
    """
    folder = Path(path)
    if not folder.is_dir():
        msg = f"Xenium folder {str(folder)!r} does not exist or is not a folder."
        raise FileNotFoundError(msg)

    transcripts_file = _find_file(folder, TRANSCRIPT_FILES, required=True)
    nucleus_file = _find_file(folder, NUCLEUS_FILES, required=True)
    cell_file = _find_file(folder, CELL_FILES, required=False) if cell_boundaries else None

    points = read_transcripts(transcripts_file)

    shapes = {C.NUCLEUS_SHAPES_KEY: _read_boundaries(nucleus_file)}
    if cell_file is not None:
        shapes[C.CELL_SHAPES_KEY] = _read_boundaries(cell_file)

    logger.info(
        "Read %d transcripts of %d features and %d nuclei from %s.",
        len(points),
        points[C.FEATURE_NAME].nunique(),
        len(shapes[C.NUCLEUS_SHAPES_KEY]),
        folder,
    )
    return build_spatialdata(points, shapes)


def read_transcripts(file: str | Path) -> pd.DataFrame:
    """Read a Xenium transcripts file into the points schema as a pandas DataFrame."""
    file = Path(file)
    frame = _read_table(file)
    if frame.empty:
        msg = (
            f"{file.name} in {str(file.parent)!r} contains no transcripts. Check that the export is complete."
        )
        raise ValueError(msg)
    check_required_columns(frame, REQUIRED_COLUMNS, source=file.name)
    check_coordinates(frame, ("x_location", "y_location", "z_location"), source=file.name)

    frame = frame.rename(columns=COLUMN_NAMES)
    frame[C.FEATURE_NAME] = decode_byte_strings(frame[C.FEATURE_NAME]).astype(str)

    if C.TRANSCRIPT_ID in frame.columns:
        frame[C.TRANSCRIPT_ID] = frame[C.TRANSCRIPT_ID].astype(np.int64)
    else:
        frame[C.TRANSCRIPT_ID] = np.arange(len(frame), dtype=np.int64)
    _check_unique_ids(frame[C.TRANSCRIPT_ID], source=file.name)

    if C.CELL_ID in frame.columns:
        frame[C.CELL_ID] = to_cell_id_strings(frame[C.CELL_ID])
    if C.OVERLAPS_NUCLEUS in frame.columns:
        frame[C.OVERLAPS_NUCLEUS] = frame[C.OVERLAPS_NUCLEUS].astype(bool)
    frame[C.IS_CONTROL] = _control_flags(frame)

    return frame.reset_index(drop=True)


def _read_boundaries(file: Path):
    vertices = _read_table(file)
    if vertices.empty:
        logger.warning("%s contains no vertices.", file.name)
        vertices = pd.DataFrame({"cell_id": [], "vertex_x": [], "vertex_y": []})
    return polygons_from_vertices(vertices, source=file.name)


def _control_flags(frame: pd.DataFrame) -> np.ndarray:
    if "is_gene" in frame.columns:
        return ~frame["is_gene"].astype(bool).to_numpy()
    if "codeword_category" in frame.columns:
        categories = decode_byte_strings(frame["codeword_category"]).astype(str)
        return ~categories.isin(GENE_CATEGORIES).to_numpy()
    return flag_controls(frame[C.FEATURE_NAME])


def _check_unique_ids(ids: pd.Series, *, source: str) -> None:
    duplicated = ids.duplicated()
    if duplicated.any():
        msg = (
            f"{source} has {int(duplicated.sum())} duplicate transcript_id value(s), for example "
            f"{int(ids[duplicated].iloc[0])}. transcript_id must be a unique key per transcript: "
            "remove the duplicate rows or drop the column so that row numbers are used instead."
        )
        raise ValueError(msg)


def _find_file(folder: Path, names: tuple[str, ...], *, required: bool) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    if required:
        msg = f"None of {list(names)} was found in {str(folder)!r}; a Xenium folder needs one of them."
        raise FileNotFoundError(msg)
    return None


def _read_table(file: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(file) if file.name.endswith(".parquet") else pd.read_csv(file)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
