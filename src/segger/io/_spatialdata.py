"""Assemble and validate segger's SpatialData layout from plain data frames."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
from spatialdata import SpatialData
from spatialdata.models import PointsModel, ShapesModel
from spatialdata.transformations import Identity

from .. import _constants as C
from ._gzip import GZIP_ERRORS, broken_gzip, unparsable_csv

logger = logging.getLogger(__name__)

REQUIRED_POINTS_COLUMNS = (C.X, C.Y, C.FEATURE_NAME)


def check_coordinates(points: pd.DataFrame, columns: tuple[str, ...], *, source: str) -> None:
    """Raise ValueError when coordinate columns contain NaN or infinite values.

    Parameters
    ----------
    points
        Transcripts, one row each.
    columns
        Coordinate columns to check; absent ones are skipped.
    source
        File or element name used in the message.
    """
    check_nonfinite_counts(count_nonfinite(points, columns), len(points), source=source)


def count_nonfinite(points: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, int]:
    """Return the number of NaN or infinite values in each of ``columns`` that ``points`` has."""
    counts = {}
    for column in columns:
        if column in points.columns:
            values = points[column].to_numpy(dtype=np.float64, na_value=np.nan)
            counts[column] = int((~np.isfinite(values)).sum())
    return counts


def check_nonfinite_counts(
    counts: dict[str, int], n_points: int, *, source: str, in_file: bool = False
) -> None:
    """Raise ValueError for the first column with non-finite values among ``n_points`` transcripts.

    ``counts`` comes from :func:`count_nonfinite`, possibly summed over the partitions of a table.
    With ``in_file``, the message advises on the file that ``source`` names instead of on a
    DataFrame.
    """
    for column, n_bad in counts.items():
        if not n_bad:
            continue

        if in_file:
            advice = "Check that the file is complete and unchanged, or drop those rows from a copy of it."
        else:
            advice = (
                f"Drop them first, for example `df = df[np.isfinite(df[{column!r}])]`, and pass the "
                "cleaned data."
            )
        msg = (
            f"{n_bad} of {n_points} transcripts in {source} have a NaN or infinite {column!r} "
            f"coordinate. {advice}"
        )
        raise ValueError(msg)


@dataclass
class TranscriptChecks:
    """Counts of non-finite coordinates and missing feature names, gathered over the partitions of a file.

    Attributes
    ----------
    coordinates
        Coordinate columns to check; absent ones are skipped.
    name_column
        Column with the feature names.
    nonfinite
        Non-finite values counted in each coordinate column.
    n_missing_names, first_missing_name
        Rows without a feature name, and the data row (0 for the first after the header) of the first.
    """

    coordinates: tuple[str, ...]
    name_column: str
    nonfinite: dict[str, int] = field(default_factory=dict)
    n_missing_names: int = 0
    first_missing_name: int | None = None

    def add(self, frame: pd.DataFrame) -> None:
        """Count the rows of ``frame``, indexed by data row, that fail a check."""
        for column, n_bad in count_nonfinite(frame, self.coordinates).items():
            self.nonfinite[column] = self.nonfinite.get(column, 0) + n_bad

        missing = frame[self.name_column].isna().to_numpy()
        if missing.any() and self.first_missing_name is None:
            self.first_missing_name = int(frame.index[np.argmax(missing)])
        self.n_missing_names += int(missing.sum())

    def check(self, n_points: int, *, source: str) -> None:
        """Raise ValueError for non-finite coordinates, then for missing feature names, among ``n_points``."""
        check_nonfinite_counts(self.nonfinite, n_points, source=source, in_file=True)
        if self.n_missing_names:
            msg = (
                f"{self.n_missing_names} of {n_points} transcripts in {source} have no {self.name_column!r} "
                f"value, the first in data row {self.first_missing_name}. An empty field, or a row cut short "
                "by an incomplete export, reads this way. Check that the file is complete, or drop those "
                "rows from a copy of it."
            )
            raise ValueError(msg)


def check_z_step(z_step: float | None) -> None:
    """Raise ValueError unless ``z_step`` is a positive, finite number of µm per z plane, or None."""
    if z_step is not None and not (math.isfinite(z_step) and z_step > 0):
        msg = f"z_step must be a positive number of µm per z plane, or None to drop z; got {z_step!r}."
        raise ValueError(msg)


def raise_no_transcripts(file: Path) -> NoReturn:
    """Raise ValueError saying that the transcripts file ``file`` has no rows."""
    msg = f"{file.name} in {str(file.parent)!r} contains no transcripts. Check that the export is complete."
    raise ValueError(msg)


VENDOR_FILE_HINT = (
    "Check that the file is the instrument's own output, unchanged: the reader expects its column names."
)


def check_required_columns(
    frame: pd.DataFrame, required: tuple[str, ...], *, source: str, hint: str | None = None
) -> None:
    """Raise ValueError naming every column of ``required`` that ``frame`` lacks.

    ``hint`` ends the message. By default it suits a points element, whose columns can be renamed.
    """
    missing = [column for column in required if column not in frame.columns]
    if missing:
        hint = hint or (
            "Rename the columns to the expected names, or read the vendor folder with the reader "
            "for its instrument (sg.io.xenium, sg.io.merscope or sg.io.cosmx)."
        )
        msg = f"{source} is missing the required column(s) {missing}; it has {list(frame.columns)}. {hint}"
        raise ValueError(msg)


def read_transcript_table(file: Path) -> pd.DataFrame:
    """Read a transcript table from Parquet or (optionally gzipped) CSV.

    Raises ValueError when the file has no rows, including a CSV without even a header line.
    """
    try:
        frame = pd.read_parquet(file) if file.name.endswith(".parquet") else pd.read_csv(file)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except GZIP_ERRORS as error:
        raise broken_gzip(file, error) from error
    except pd.errors.ParserError as error:
        raise unparsable_csv(file, error) from error
    if frame.empty:
        raise_no_transcripts(file)
    return frame


def flag_controls(feature_names: pd.Series, prefixes: tuple[str, ...] = C.CONTROL_PREFIXES) -> np.ndarray:
    """Return a boolean array that is True where a feature name starts with a control prefix."""
    names = feature_names.astype(str)
    return names.str.startswith(prefixes).to_numpy(dtype=bool)


def to_cell_id_strings(values: pd.Series, *, missing: tuple = ("UNASSIGNED", "-1", "0", "")) -> pd.Series:
    """Convert vendor cell ids to a nullable string column with ``pd.NA`` where none was assigned.

    Integer ids -1 and 0 (older Xenium outputs), the string ``"UNASSIGNED"`` and empty strings
    all mean "no cell".
    """
    if pd.api.types.is_numeric_dtype(values.dtype):
        strings = values.astype("Int64").astype("string")
    else:
        strings = values.map(_decode_bytes).astype("string")
    return strings.mask(strings.isin(missing) | strings.isna(), pd.NA)


def _decode_bytes(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def decode_byte_strings(values: pd.Series) -> pd.Series:
    """Return ``values`` with any ``bytes`` entries decoded as UTF-8 (older Xenium parquet files)."""
    if values.dtype == object and len(values) and isinstance(values.iloc[0], bytes):
        return values.map(_decode_bytes)
    return values


def build_spatialdata(
    points: pd.DataFrame | dd.DataFrame,
    shapes: dict[str, gpd.GeoDataFrame],
    *,
    points_key: str = C.POINTS_KEY,
) -> SpatialData:
    """Parse points and shapes with the spatialdata models and return a SpatialData object.

    Parameters
    ----------
    points
        Transcripts in the points schema: ``x``, ``y`` (and optionally ``z``) in µm and
        ``feature_name``. A dask DataFrame is kept lazy; its reader has checked the coordinates
        and made ``feature_name`` categorical.
    shapes
        Prior shapes by element name, each a GeoDataFrame of polygons indexed by cell id.
    points_key
        Name of the points element.

    Returns
    -------
    A SpatialData object whose elements share the identity transformation to ``"global"``. A shapes
    element without any polygon is left out, with a logged warning.
    """
    check_required_columns(points, REQUIRED_POINTS_COLUMNS, source=f"points {points_key!r}")
    if isinstance(points, dd.DataFrame):
        # A lazy reader checks the coordinates as it scans the file and sets the gene categories.
        if not isinstance(points[C.FEATURE_NAME].dtype, pd.CategoricalDtype):
            msg = f"Lazily read points need a categorical {C.FEATURE_NAME!r} column with known categories."
            raise TypeError(msg)
    else:
        check_coordinates(points, (C.X, C.Y, C.Z), source=f"points {points_key!r}")
        points = points.copy()
        points[C.FEATURE_NAME] = points[C.FEATURE_NAME].astype(str).astype("category")
    coordinates = {"x": C.X, "y": C.Y}
    if C.Z in points.columns:
        coordinates["z"] = C.Z
    parsed_points = PointsModel.parse(
        points,
        coordinates=coordinates,
        feature_key=C.FEATURE_NAME,
        transformations={C.COORDINATE_SYSTEM: Identity()},
    )

    empty = [name for name, frame in shapes.items() if len(frame) == 0]
    for name in empty:
        logger.warning("Left out the shapes element %r, because it has no usable polygon.", name)

    # Each element gets its own transformation object, so changing one leaves the others alone.
    parsed_shapes = {
        name: ShapesModel.parse(frame, transformations={C.COORDINATE_SYSTEM: Identity()})
        for name, frame in shapes.items()
        if name not in empty
    }
    return SpatialData(points={points_key: parsed_points}, shapes=parsed_shapes)
