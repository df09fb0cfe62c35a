"""Property-based tests of the vendor readers on generated tables, bad input included.

Each property writes a small vendor-like folder into a temporary directory, reads it with the
public reader and checks either the points schema or that the reader raises ValueError with a
message that names the problem. Cases that fail because of a known reader bug are kept as
explicit tests marked ``xfail(strict=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

import segger as sg

# Properties that read whole folders get 25 examples, and those that reach one input check get 10.
# With these counts, this file and tests/graph/test_graph_properties.py ran in about 15 s of test
# time plus 10 s of imports on a shared 2-core machine.
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)
ERROR_SETTINGS = settings(max_examples=10, deadline=None)

# Feature-name prefixes that mark non-gene probes, per vendor (the readers' documented rules).
XENIUM_CONTROL_PREFIXES = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "BLANK_",
    "antisense_",
    "DeprecatedCodeword_",
    "UnassignedCodeword_",
    "Intergenic_Region_",
)
MERSCOPE_CONTROL_PREFIXES = ("Blank-",)
COSMX_CONTROL_PREFIXES = ("NegPrb", "Negative", "SystemControl", "FalseCode")

# Vendor cell ids that mean "no cell": Xenium writes UNASSIGNED (older outputs -1 or 0), MERSCOPE -1,
# and an empty CSV field reads as missing.
NO_CELL_MARKERS = ("UNASSIGNED", "-1", "0", "")
GENE_EXAMPLES = ("ACTB", "CD3E", "KRT8", "HLA-DRA", "MT-CO1", "Ptprc", "IL7R α", "基因7", "Gene with spaces")
# Strings that pandas.read_csv turns into NaN or a non-string value by default.
CSV_SPECIAL_STRINGS = {
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
}
BAD_VALUES = (np.nan, np.inf, -np.inf)


# Strategies


def _survives_csv(text: str) -> bool:
    """Return whether read_csv gives ``text`` back unchanged in a column of such strings."""
    if not any(character.isalpha() for character in text) or text in CSV_SPECIAL_STRINGS:
        return False
    if text.lower() in ("true", "false"):
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False


def feature_names(n: int, control_prefixes: tuple[str, ...], *, csv: bool) -> st.SearchStrategy:
    """Lists of ``n`` gene and control-probe names, sometimes genes only or controls only."""
    free_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=10)
    if csv:
        free_text = free_text.filter(_survives_csv)
    genes = st.one_of(st.sampled_from(GENE_EXAMPLES), free_text)
    suffix = st.from_regex(r"[0-9A-Za-z]{0,5}", fullmatch=True)
    controls = st.builds(str.__add__, st.sampled_from(control_prefixes), suffix)
    panel = st.sampled_from(
        [st.one_of(genes, controls), genes, controls],
    )
    return panel.flatmap(lambda names: st.lists(names, min_size=n, max_size=n))


def coordinate_lists(n: int) -> st.SearchStrategy:
    """Lists of ``n`` finite coordinates in a 50 µm window near 0, -1000 or 100,000."""
    offset = st.sampled_from([0.0, -1000.0, 1e5])
    values = st.floats(0.0, 50.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    return offset.flatmap(
        lambda start: st.lists(values.map(lambda value: start + value), min_size=n, max_size=n)
    )


@st.composite
def xenium_cell_ids(draw, n: int, *, csv: bool) -> list:
    """Xenium cell ids: strings, integers with gaps (None) or, in CSV only, a mix of both."""
    named = st.sampled_from(["aaabcdef-1", "ffkpbaba-1", "cell ü", *NO_CELL_MARKERS])
    numbered = st.one_of(st.integers(-1, 6), st.none())
    kinds = [named, numbered]
    if csv:
        kinds.append(st.one_of(st.integers(-1, 6), named))
    kind = draw(st.sampled_from(kinds))
    return draw(st.lists(kind, min_size=n, max_size=n))


@st.composite
def xenium_tables(draw, *, csv: bool) -> pd.DataFrame:
    """A Xenium transcripts table of 1 to 40 rows."""
    n = draw(st.integers(1, 40))
    frame = pd.DataFrame(
        {
            # Object dtype keeps the drawn values, None and integers included, for the expectation.
            "cell_id": pd.Series(draw(xenium_cell_ids(n, csv=csv)), dtype=object),
            "overlaps_nucleus": np.asarray(
                draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.uint8
            ),
            "feature_name": draw(feature_names(n, XENIUM_CONTROL_PREFIXES, csv=csv)),
            "x_location": draw(coordinate_lists(n)),
            "y_location": draw(coordinate_lists(n)),
            "qv": draw(st.lists(st.floats(0.0, 40.0, allow_subnormal=False), min_size=n, max_size=n)),
        }
    )
    if draw(st.booleans()):
        frame["z_location"] = draw(coordinate_lists(n))
    if not csv and draw(st.booleans()):
        # Xenium writes float32 coordinates, which the reader may keep as float32.
        frame = frame.astype(dict.fromkeys(("x_location", "y_location", "qv"), np.float32))
    if draw(st.booleans()):
        ids = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n, unique=True))
        frame.insert(0, "transcript_id", np.asarray(ids, dtype=np.uint64))
    if not csv and draw(st.booleans()):
        # Older Xenium parquet files store strings as bytes.
        frame["feature_name"] = [name.encode() for name in frame["feature_name"]]
    return frame


@st.composite
def merscope_tables(draw, *, csv: bool, cell_ids: list[int]) -> pd.DataFrame:
    """A MERSCOPE detected_transcripts table of 1 to 40 rows, with a cell_id column or without."""
    n = draw(st.integers(1, 40))
    frame = pd.DataFrame(
        {
            "barcode_id": np.arange(n) % 7,
            "global_x": draw(st.lists(st.floats(0.0, 50.0, allow_subnormal=False), min_size=n, max_size=n)),
            "global_y": draw(st.lists(st.floats(0.0, 50.0, allow_subnormal=False), min_size=n, max_size=n)),
            "global_z": draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)),
            "x": np.arange(n) * 10.0,
            "y": np.arange(n) * 5.0,
            "fov": 7,
            "gene": draw(feature_names(n, MERSCOPE_CONTROL_PREFIXES, csv=csv)),
            # MERSCOPE's transcript_id identifies the gene, so it repeats.
            "transcript_id": [f"ENST{i % 3}" for i in range(n)],
        }
    )
    assignment = draw(st.sampled_from(["none", "int", "mixed"] if csv else ["none", "int"]))
    if assignment == "int":
        frame["cell_id"] = draw(st.lists(st.sampled_from([-1, *cell_ids]), min_size=n, max_size=n))
    elif assignment == "mixed":
        values = st.sampled_from([-1, "UNASSIGNED", *cell_ids, *map(str, cell_ids)])
        frame["cell_id"] = draw(st.lists(values, min_size=n, max_size=n))
    return frame


@st.composite
def cosmx_tables(draw, *, csv: bool) -> pd.DataFrame:
    """A CosMx transcript table of 1 to 40 rows from up to three FOVs."""
    n = draw(st.integers(1, 40))
    frame = pd.DataFrame(
        {
            "fov": draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)),
            "cell_ID": draw(st.lists(st.integers(-1, 4), min_size=n, max_size=n)),
            "x_global_px": draw(coordinate_lists(n)),
            "y_global_px": draw(coordinate_lists(n)),
            "target": draw(feature_names(n, COSMX_CONTROL_PREFIXES, csv=csv)),
            "CellComp": draw(
                st.lists(st.sampled_from(["Nuclear", "Cytoplasm", "Membrane", "0"]), min_size=n, max_size=n)
            ),
        }
    )
    if draw(st.booleans()):
        frame["z"] = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    if draw(st.booleans()):
        frame["cell_id"] = [
            f"c_1_{fov}_{cell}" for fov, cell in zip(frame["fov"], frame["cell_ID"], strict=True)
        ]
    return frame


# Writing and reading folders


def write_table(frame: pd.DataFrame, file: Path) -> Path:
    if file.name.endswith(".parquet"):
        frame.to_parquet(file)
    else:
        frame.to_csv(file, index=False)
    return file


def box_vertices(cell_id: object, x0: float = 0.0, y0: float = 0.0, size: float = 4.0) -> pd.DataFrame:
    """A square nucleus as a Xenium vertex table with a closed ring."""
    xs = [x0, x0 + size, x0 + size, x0, x0]
    ys = [y0, y0, y0 + size, y0 + size, y0]
    return pd.DataFrame({"cell_id": [cell_id] * 5, "vertex_x": xs, "vertex_y": ys})


def multipolygon_wkb(rings: list[list[tuple[float, float]]]) -> bytes:
    """Encode one polygon per ring as a little-endian WKB MultiPolygon, without any validity check."""
    parts = []
    for ring in rings:
        points = b"".join(struct.pack("<dd", x, y) for x, y in ring)
        parts.append(struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + points)
    return struct.pack("<BII", 1, 6, len(parts)) + b"".join(parts)


def box_ring(x0: float, y0: float, size: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size), (x0, y0)]


def write_merscope_boundaries(folder: Path, rows: list[tuple[int, list[list[tuple[float, float]]]]]) -> None:
    """Write cell_boundaries.parquet with one row per (EntityID, rings of one z plane)."""
    frame = pd.DataFrame(
        {
            "ID": np.arange(len(rows)),
            "EntityID": np.asarray([cell for cell, _ in rows], dtype=np.int64),
            "ZIndex": np.arange(len(rows)) % 7,
            "Geometry": [multipolygon_wkb(rings) for _, rings in rows],
        }
    )
    frame.to_parquet(folder / "cell_boundaries.parquet")


def read_points(sdata) -> pd.DataFrame:
    return sdata.points["transcripts"].compute().reset_index(drop=True)


def read_or_error(reader, folder: Path, **options):
    """Return ``(sdata, None)`` or ``(None, error)`` for a ValueError or FileNotFoundError."""
    try:
        return reader(folder, **options), None
    except (ValueError, FileNotFoundError) as error:
        return None, error


class _RecordCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def segger_warnings():
    """Collect the WARNING records of the ``segger`` logger.

    pytest's caplog fixture is function-scoped, so it is not reset between hypothesis examples.
    """
    logger = logging.getLogger("segger")
    collector = _RecordCollector()
    previous_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield collector.records
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous_level)


# Expectations and schema checks


def expected_cell_ids(values: list) -> list:
    """Return the vendor ids as strings, with None for the "no cell" markers."""
    expected = []
    for value in values:
        text = None if value is None else str(value)
        expected.append(None if text is None or text in NO_CELL_MARKERS else text)
    return expected


def as_optional_strings(values: pd.Series) -> list:
    return [None if pd.isna(value) else value for value in values.astype(object)]


def check_points_schema(points: pd.DataFrame, n_rows: int) -> None:
    """Assert the column types that every reader promises."""
    assert len(points) == n_rows
    assert pd.api.types.is_float_dtype(points["x"].dtype)
    assert pd.api.types.is_float_dtype(points["y"].dtype)
    assert isinstance(points["feature_name"].dtype, pd.CategoricalDtype)
    assert points["transcript_id"].dtype == np.int64
    assert points["transcript_id"].is_unique
    assert points["is_control"].dtype == bool
    if "overlaps_nucleus" in points.columns:
        assert points["overlaps_nucleus"].dtype == bool
    if "cell_id" in points.columns:
        assert pd.api.types.is_string_dtype(points["cell_id"].dtype)


def assert_coordinates_equal(actual: pd.Series, expected: np.ndarray, *, csv: bool) -> None:
    # CSV stores the shortest repr of each float, which read_csv parses back to within rounding.
    if csv:
        np.testing.assert_allclose(actual.to_numpy(), expected, rtol=1e-12, atol=0.0)
    else:
        np.testing.assert_array_equal(actual.to_numpy(), expected)


def is_control_by_prefix(names: list[str], prefixes: tuple[str, ...]) -> list[bool]:
    return [name.startswith(prefixes) for name in names]


# Xenium


def write_xenium(folder: Path, transcripts: pd.DataFrame, vertices: pd.DataFrame, *, csv: bool) -> Path:
    write_table(transcripts, folder / ("transcripts.csv" if csv else "transcripts.parquet"))
    write_table(vertices, folder / ("nucleus_boundaries.csv" if csv else "nucleus_boundaries.parquet"))
    return folder


@PROPERTY_SETTINGS
@given(data=st.data())
def test_xenium_tables_follow_schema(data):
    csv = data.draw(st.booleans(), label="csv")
    frame = data.draw(xenium_tables(csv=csv), label="transcripts")

    with tempfile.TemporaryDirectory() as name:
        folder = write_xenium(Path(name), frame, box_vertices("aaabcdef-1"), csv=csv)
        points = read_points(sg.io.xenium(folder))

    names = [value.decode() if isinstance(value, bytes) else value for value in frame["feature_name"]]
    check_points_schema(points, len(frame))
    assert_coordinates_equal(points["x"], frame["x_location"].to_numpy(np.float64), csv=csv)
    assert_coordinates_equal(points["y"], frame["y_location"].to_numpy(np.float64), csv=csv)
    if "z_location" in frame.columns:
        assert_coordinates_equal(points["z"], frame["z_location"].to_numpy(np.float64), csv=csv)
    assert points["feature_name"].astype(str).tolist() == names
    if "transcript_id" in frame.columns:
        assert points["transcript_id"].tolist() == frame["transcript_id"].astype(np.int64).tolist()
    else:
        assert points["transcript_id"].tolist() == list(range(len(frame)))
    assert as_optional_strings(points["cell_id"]) == expected_cell_ids(frame["cell_id"].tolist())
    assert points["overlaps_nucleus"].tolist() == (frame["overlaps_nucleus"] != 0).tolist()
    assert points["is_control"].tolist() == is_control_by_prefix(names, XENIUM_CONTROL_PREFIXES)
    assert_coordinates_equal(points["qv"], frame["qv"].to_numpy(np.float64), csv=csv)


@ERROR_SETTINGS
@given(data=st.data())
def test_xenium_nonfinite_coordinate_raises(data):
    csv = data.draw(st.booleans(), label="csv")
    frame = data.draw(xenium_tables(csv=csv), label="transcripts")
    frame["z_location"] = 1.0
    column = data.draw(st.sampled_from(["x_location", "y_location", "z_location"]), label="column")
    row = data.draw(st.integers(0, len(frame) - 1), label="row")
    frame.loc[row, column] = data.draw(st.sampled_from(BAD_VALUES), label="value")

    with tempfile.TemporaryDirectory() as name:
        folder = write_xenium(Path(name), frame, box_vertices("aaabcdef-1"), csv=csv)
        with pytest.raises(ValueError, match=f"NaN or infinite '{column}'"):
            sg.io.xenium(folder)


@ERROR_SETTINGS
@given(data=st.data())
def test_xenium_missing_column_raises(data):
    frame = data.draw(xenium_tables(csv=False), label="transcripts")
    column = data.draw(st.sampled_from(["x_location", "y_location", "feature_name"]), label="column")

    with tempfile.TemporaryDirectory() as name:
        folder = write_xenium(Path(name), frame.drop(columns=column), box_vertices("c"), csv=False)
        with pytest.raises(ValueError, match=rf"missing the required column\(s\) \['{column}'\]"):
            sg.io.xenium(folder)


@ERROR_SETTINGS
@given(data=st.data())
def test_xenium_duplicate_transcript_id_raises(data):
    n = data.draw(st.integers(2, 30), label="n")
    ids = data.draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n, unique=True), label="ids")
    first, second = data.draw(
        st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True), label="duplicate rows"
    )
    ids[second] = ids[first]
    frame = pd.DataFrame(
        {
            "transcript_id": np.asarray(ids, dtype=np.uint64),
            "feature_name": "ACTB",
            "x_location": np.arange(n, dtype=np.float64),
            "y_location": 0.0,
        }
    )

    with tempfile.TemporaryDirectory() as name:
        folder = write_xenium(Path(name), frame, box_vertices("c"), csv=False)
        with pytest.raises(
            ValueError, match=rf"2 rows whose transcript_id another row shares, for example {ids[first]}"
        ):
            sg.io.xenium(folder)


@st.composite
def vertex_shapes(draw) -> tuple[str, list[tuple[float, float]], float]:
    """One nucleus outline as vertex rows (valid, repairable, degenerate or broken), with its kind and size."""
    kind = draw(
        st.sampled_from(
            [
                "box",
                "shuffled_box",
                "multi_part",
                "collinear",
                "all_equal",
                "one_vertex",
                "two_vertices",
                "two_vertices_closed",
                "nan_vertex",
            ]
        )
    )
    x0 = draw(st.sampled_from([0.0, 37.5, -120.0, 1e5]))
    y0 = draw(st.sampled_from([0.0, 12.25, 1e5]))
    size = draw(st.floats(0.5, 20.0))
    square = box_ring(x0, y0, size)[:4]
    if kind == "box":
        ring = square
    elif kind == "shuffled_box":
        # A bow-tie: the square's corners in the order 0, 2, 1, 3.
        ring = [square[0], square[2], square[1], square[3]]
    elif kind == "multi_part":
        # Two squares side by side in one ring, so the edges joining them cross.
        gap = draw(st.floats(1.0, 10.0))
        ring = square + [(x + size + gap, y) for x, y in square]
    elif kind == "collinear":
        # On one horizontal line, so that rounding cannot give the triangle a tiny area.
        ring = [(x0, y0), (x0 + size, y0), (x0 + 2 * size, y0)]
    elif kind == "all_equal":
        ring = [(x0, y0)] * draw(st.integers(3, 5))
    elif kind == "one_vertex":
        ring = [(x0, y0)]
    elif kind == "two_vertices":
        ring = [(x0, y0), (x0 + size, y0)]
    elif kind == "two_vertices_closed":
        ring = [(x0, y0), (x0 + size, y0), (x0, y0)]
    else:
        ring = [*square[:3], (np.nan, square[3][1])]
    if kind in ("box", "shuffled_box", "multi_part") and draw(st.booleans()):
        ring = [*ring, ring[0]]
    return kind, ring, size


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@PROPERTY_SETTINGS
@given(data=st.data())
def test_xenium_nuclei_valid_or_dropped(data):
    csv = data.draw(st.booleans(), label="csv")
    shapes = data.draw(st.lists(vertex_shapes(), min_size=0, max_size=5), label="shapes")
    # One valid square keeps the nucleus table non-empty (an empty one is a known bug, below).
    shapes = [("box", box_ring(500.0, 500.0, 3.0)[:4], 3.0), *shapes]
    numbered = data.draw(
        st.sampled_from(["strings", "integers", "mixed"] if csv else ["strings", "integers"])
    )
    ids = []
    for position in range(len(shapes)):
        as_integer = numbered == "integers" or (numbered == "mixed" and position % 2 == 1)
        ids.append(position + 1 if as_integer else f"cell-{position + 1}")
    rows = [(cell, x, y) for cell, (_, ring, _) in zip(ids, shapes, strict=True) for x, y in ring]
    vertices = pd.DataFrame(rows, columns=["cell_id", "vertex_x", "vertex_y"])
    transcripts = pd.DataFrame({"feature_name": ["ACTB"], "x_location": [501.0], "y_location": [501.0]})

    with tempfile.TemporaryDirectory() as name, segger_warnings() as logged_warnings:
        folder = write_xenium(Path(name), transcripts, vertices, csv=csv)
        nuclei = sg.io.xenium(folder).shapes["nucleus_boundaries"]

    id_strings = [str(cell) for cell in ids]
    assert set(nuclei.index) <= set(id_strings)
    assert (nuclei.geometry.geom_type == "Polygon").all()
    assert nuclei.is_valid.all()
    assert (nuclei.area > 0).all()
    for cell, (kind, _, size) in zip(id_strings, shapes, strict=True):
        if kind in ("box", "shuffled_box"):
            # A valid square is kept as it is, and a shuffled one is restored by reordering.
            assert cell in nuclei.index
            assert nuclei.loc[cell].geometry.area == pytest.approx(size**2, rel=1e-9)
        elif kind in ("collinear", "all_equal", "one_vertex", "two_vertices", "two_vertices_closed"):
            assert cell not in nuclei.index
    repaired_or_dropped = any(kind != "box" for kind, _, _ in shapes)
    assert bool(logged_warnings) == repaired_or_dropped


def test_xenium_all_nuclei_degenerate():
    transcripts = pd.DataFrame({"feature_name": ["ACTB"], "x_location": [1.0], "y_location": [1.0]})
    vertices = pd.DataFrame({"cell_id": ["a", "a"], "vertex_x": [0.0, 1.0], "vertex_y": [0.0, 1.0]})

    with tempfile.TemporaryDirectory() as name:
        folder = write_xenium(Path(name), transcripts, vertices, csv=False)
        sdata, error = read_or_error(sg.io.xenium, folder)

    if error is not None:
        assert "nucleus_boundaries.parquet" in str(error)
    else:
        assert len(sdata.shapes.get("nucleus_boundaries", ())) == 0


def test_xenium_header_only_nuclei():
    transcripts = pd.DataFrame({"feature_name": ["ACTB"], "x_location": [1.0], "y_location": [1.0]})
    vertices = pd.DataFrame({"cell_id": [], "vertex_x": [], "vertex_y": []})

    with tempfile.TemporaryDirectory() as name:
        folder = write_xenium(Path(name), transcripts, vertices, csv=True)
        sdata, error = read_or_error(sg.io.xenium, folder)

    if error is not None:
        assert "nucleus_boundaries.csv" in str(error)
    else:
        assert len(sdata.shapes.get("nucleus_boundaries", ())) == 0


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_xenium_infinite_vertex():
    transcripts = pd.DataFrame({"feature_name": ["ACTB"], "x_location": [1.0], "y_location": [1.0]})
    vertices = pd.concat(
        [
            box_vertices("good", 10.0, 10.0),
            pd.DataFrame(
                {"cell_id": "bad", "vertex_x": [0.0, 4.0, 4.0, np.inf], "vertex_y": [0.0, 0.0, 4.0, 4.0]}
            ),
        ]
    )

    with tempfile.TemporaryDirectory() as name, segger_warnings() as logged_warnings:
        folder = write_xenium(Path(name), transcripts, vertices, csv=False)
        sdata, error = read_or_error(sg.io.xenium, folder)

    # Either a ValueError that names the file, or the broken nucleus dropped with a warning.
    if error is not None:
        assert "nucleus_boundaries.parquet" in str(error)
    else:
        assert sdata.shapes["nucleus_boundaries"].index.tolist() == ["good"]
        assert logged_warnings


# Empty transcript tables


def _xenium_header_only(folder: Path, suffix: str) -> None:
    empty = pd.DataFrame(
        {
            "transcript_id": pd.Series([], dtype=np.uint64),
            "feature_name": pd.Series([], dtype=object),
            "x_location": pd.Series([], dtype=np.float32),
            "y_location": pd.Series([], dtype=np.float32),
        }
    )
    write_table(empty, folder / f"transcripts.{suffix}")
    box_vertices("c").to_parquet(folder / "nucleus_boundaries.parquet")


def _merscope_header_only(folder: Path, suffix: str) -> None:
    empty = pd.DataFrame({column: [] for column in ("global_x", "global_y", "global_z", "gene")})
    write_table(
        empty.astype({"global_x": float, "global_y": float}), folder / f"detected_transcripts.{suffix}"
    )
    write_merscope_boundaries(folder, [(1, [box_ring(0.0, 0.0, 4.0)])])


def _cosmx_header_only(folder: Path, suffix: str) -> None:
    columns = ("fov", "cell_ID", "x_global_px", "y_global_px", "target", "CellComp")
    empty = pd.DataFrame({column: [] for column in columns})
    write_table(empty.astype({"x_global_px": float, "y_global_px": float}), folder / f"Run1_tx_file.{suffix}")


EMPTY_CASES = [
    pytest.param(sg.io.xenium, _xenium_header_only, "parquet", id="xenium-parquet"),
    pytest.param(sg.io.xenium, _xenium_header_only, "csv", id="xenium-csv"),
    pytest.param(sg.io.merscope, _merscope_header_only, "csv", id="merscope-csv"),
    pytest.param(sg.io.merscope, _merscope_header_only, "parquet", id="merscope-parquet"),
    pytest.param(sg.io.cosmx, _cosmx_header_only, "csv", id="cosmx-csv"),
    pytest.param(sg.io.cosmx, _cosmx_header_only, "parquet", id="cosmx-parquet"),
]


@pytest.mark.parametrize(("reader", "write_folder", "suffix"), EMPTY_CASES)
def test_header_only_table(reader, write_folder, suffix):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_folder(folder, suffix)
        sdata, error = read_or_error(reader, folder)

    # An empty table is either read as zero transcripts or rejected with a message stating that.
    if error is not None:
        assert isinstance(error, ValueError)
        assert "contains no transcripts" in str(error)
    else:
        check_points_schema(read_points(sdata), 0)


# MERSCOPE

MERSCOPE_CELLS = [1001, 1002, 1003]


def write_merscope(folder: Path, transcripts: pd.DataFrame, *, csv: bool) -> Path:
    write_table(transcripts, folder / ("detected_transcripts.csv" if csv else "detected_transcripts.parquet"))
    return folder


def expected_polygon_assignment(points: pd.DataFrame, cells) -> tuple[list, list[bool]]:
    """Return the first cell (in index order) whose polygon contains each transcript, and whether one does."""
    first_cell = [None] * len(points)
    for cell, polygon in zip(cells.index, cells.geometry, strict=True):
        inside = shapely.contains_xy(polygon, points["x"].to_numpy(), points["y"].to_numpy())
        for row in np.flatnonzero(inside):
            if first_cell[row] is None:
                first_cell[row] = cell
    return first_cell, [cell is not None for cell in first_cell]


@PROPERTY_SETTINGS
@given(data=st.data())
def test_merscope_tables_follow_schema(data):
    csv = data.draw(st.booleans(), label="csv")
    frame = data.draw(merscope_tables(csv=csv, cell_ids=MERSCOPE_CELLS), label="transcripts")
    z_step = data.draw(st.one_of(st.none(), st.floats(0.1, 3.0)), label="z_step")
    corners = data.draw(
        st.lists(st.tuples(st.floats(0.0, 40.0), st.floats(0.0, 40.0)), min_size=3, max_size=3),
        label="corners",
    )
    sizes = data.draw(st.lists(st.floats(1.0, 20.0), min_size=3, max_size=3), label="sizes")
    # A CSV file is read in blocks of about this many bytes: one row each, a few, or all.
    block_bytes = data.draw(st.sampled_from([1, 200, 10**6]), label="block_bytes")
    rows = [
        (cell, [box_ring(x0, y0, size)])
        for cell, (x0, y0), size in zip(MERSCOPE_CELLS, corners, sizes, strict=True)
    ]

    with tempfile.TemporaryDirectory() as name, mock.patch("segger.io._csv.BYTES_PER_BLOCK", block_bytes):
        folder = write_merscope(Path(name), frame, csv=csv)
        write_merscope_boundaries(folder, rows)
        sdata = sg.io.merscope(folder, z_step=z_step)
        points = read_points(sdata)
    cells = sdata.shapes["cell_boundaries"]

    check_points_schema(points, len(frame))
    assert cells.index.tolist() == [str(cell) for cell in MERSCOPE_CELLS]
    assert_coordinates_equal(points["x"], frame["global_x"].to_numpy(np.float64), csv=csv)
    assert_coordinates_equal(points["y"], frame["global_y"].to_numpy(np.float64), csv=csv)
    if z_step is None:
        assert "z" not in points.columns
    else:
        np.testing.assert_allclose(points["z"].to_numpy(), frame["global_z"].to_numpy() * z_step, rtol=1e-12)
    assert points["x_local_px"].tolist() == frame["x"].tolist()
    assert points["feature_name"].astype(str).tolist() == frame["gene"].tolist()
    assert points["transcript_id"].tolist() == list(range(len(frame)))
    assert points["gene_id"].tolist() == frame["transcript_id"].tolist()
    assert points["is_control"].tolist() == is_control_by_prefix(
        frame["gene"].tolist(), MERSCOPE_CONTROL_PREFIXES
    )

    first_cell, inside = expected_polygon_assignment(points, cells)
    if "cell_id" in frame.columns:
        # The vendor's assignment is kept, and a transcript overlaps when it lies inside its own cell.
        vendor_cells = expected_cell_ids(frame["cell_id"].tolist())
        assert as_optional_strings(points["cell_id"]) == vendor_cells
        own_polygon = [
            cell is not None and bool(shapely.contains_xy(cells.geometry[cell], x, y))
            for cell, x, y in zip(vendor_cells, points["x"], points["y"], strict=True)
        ]
        assert points["overlaps_nucleus"].tolist() == own_polygon
    else:
        assert as_optional_strings(points["cell_id"]) == first_cell
        assert points["overlaps_nucleus"].tolist() == inside


@ERROR_SETTINGS
@given(data=st.data())
def test_merscope_nonfinite_coordinate_raises(data):
    csv = data.draw(st.booleans(), label="csv")
    frame = data.draw(merscope_tables(csv=csv, cell_ids=MERSCOPE_CELLS), label="transcripts")
    frame["global_z"] = frame["global_z"].astype(np.float64)
    column = data.draw(st.sampled_from(["global_x", "global_y", "global_z"]), label="column")
    row = data.draw(st.integers(0, len(frame) - 1), label="row")
    frame.loc[row, column] = data.draw(st.sampled_from(BAD_VALUES), label="value")

    with tempfile.TemporaryDirectory() as name:
        folder = write_merscope(Path(name), frame, csv=csv)
        write_merscope_boundaries(folder, [(1001, [box_ring(0.0, 0.0, 4.0)])])
        with pytest.raises(ValueError, match=f"NaN or infinite '{column}'"):
            sg.io.merscope(folder)


@ERROR_SETTINGS
@given(data=st.data())
def test_merscope_missing_column_raises(data):
    frame = data.draw(merscope_tables(csv=True, cell_ids=MERSCOPE_CELLS), label="transcripts")
    column = data.draw(st.sampled_from(["global_x", "global_y", "gene"]), label="column")

    with tempfile.TemporaryDirectory() as name:
        folder = write_merscope(Path(name), frame.drop(columns=column), csv=True)
        write_merscope_boundaries(folder, [(1001, [box_ring(0.0, 0.0, 4.0)])])
        with pytest.raises(ValueError, match=rf"missing the required column\(s\) \['{column}'\]"):
            sg.io.merscope(folder)


@st.composite
def merscope_planes(draw) -> tuple[str, list[list[tuple[float, float]]], float]:
    """The rings of one cell on one z plane, and the area of its valid square (0 when it has none)."""
    kind = draw(
        st.sampled_from(["box", "bow_tie", "collinear", "all_equal", "closed_two_vertices", "multi_part"])
    )
    x0 = draw(st.sampled_from([0.0, 20.0, -300.0, 1e5]))
    y0 = draw(st.sampled_from([0.0, 7.5, 1e5]))
    size = draw(st.floats(0.5, 20.0))
    square = box_ring(x0, y0, size)
    if kind == "box":
        return kind, [square], size**2
    if kind == "bow_tie":
        return kind, [[square[0], square[2], square[1], square[3], square[0]]], 0.0
    if kind == "collinear":
        return kind, [[(x0, y0), (x0 + size, y0), (x0 + 2 * size, y0), (x0, y0)]], 0.0
    if kind == "all_equal":
        return kind, [[(x0, y0)] * 4], 0.0
    if kind == "closed_two_vertices":
        return kind, [[(x0, y0), (x0 + size, y0 + size), (x0, y0)]], 0.0
    # Two separate squares of one cell, of which the reader keeps the larger.
    second = box_ring(x0 + 2 * size + 1.0, y0, size / 2)
    return kind, [square, second], size**2


@PROPERTY_SETTINGS
@given(data=st.data())
def test_merscope_cells_valid_or_dropped(data):
    cells = data.draw(
        st.lists(st.lists(merscope_planes(), min_size=1, max_size=3), min_size=0, max_size=4), label="cells"
    )
    # One valid square keeps the polygon table non-empty (an empty one is a known bug, below).
    cells = [[("box", [box_ring(500.0, 500.0, 3.0)], 9.0)], *cells]
    ids = list(range(2001, 2001 + len(cells)))
    rows = [(cell, rings) for cell, planes in zip(ids, cells, strict=True) for _, rings, _ in planes]
    transcripts = pd.DataFrame({"global_x": [501.0, 0.1], "global_y": [501.0, 0.1], "gene": ["ACTB", "KRT8"]})

    with tempfile.TemporaryDirectory() as name, segger_warnings() as logged_warnings:
        folder = write_merscope(Path(name), transcripts, csv=True)
        write_merscope_boundaries(folder, rows)
        sdata = sg.io.merscope(folder)
        points = read_points(sdata)
    polygons = sdata.shapes["cell_boundaries"]

    assert set(polygons.index) <= {str(cell) for cell in ids}
    assert (polygons.geometry.geom_type == "Polygon").all()
    assert polygons.is_valid.all()
    assert (polygons.area > 0).all()
    for cell, planes in zip(ids, cells, strict=True):
        kinds = {kind for kind, _, _ in planes}
        largest_square = max(area for _, _, area in planes)
        if largest_square > 0:
            assert str(cell) in polygons.index
            assert polygons.loc[str(cell)].geometry.area >= largest_square * (1 - 1e-9)
        elif kinds <= {"collinear", "all_equal", "closed_two_vertices"}:
            assert str(cell) not in polygons.index
    invalid_input = any(kind not in ("box", "multi_part") for planes in cells for kind, _, _ in planes)
    assert bool(logged_warnings) == invalid_input

    # Every transcript that the reader places in a cell lies inside that cell's polygon.
    check_points_schema(points, 2)
    for cell, x, y in zip(points["cell_id"], points["x"], points["y"], strict=True):
        if not pd.isna(cell):
            assert shapely.contains_xy(polygons.geometry[cell], x, y)


def test_merscope_all_cells_zero_area():
    transcripts = pd.DataFrame({"global_x": [1.0], "global_y": [1.0], "gene": ["ACTB"]})

    with tempfile.TemporaryDirectory() as name:
        folder = write_merscope(Path(name), transcripts, csv=True)
        write_merscope_boundaries(folder, [(1, [[(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (0.0, 0.0)]])])
        sdata, error = read_or_error(sg.io.merscope, folder)

    if error is not None:
        assert "cell_boundaries.parquet" in str(error)
    else:
        assert len(sdata.shapes.get("cell_boundaries", ())) == 0


def test_merscope_two_vertex_ring():
    transcripts = pd.DataFrame({"global_x": [1.0], "global_y": [1.0], "gene": ["ACTB"]})
    rows = [(1, [box_ring(0.0, 0.0, 4.0)]), (2, [[(10.0, 10.0), (11.0, 11.0)]])]

    with tempfile.TemporaryDirectory() as name, segger_warnings() as logged_warnings:
        folder = write_merscope(Path(name), transcripts, csv=True)
        write_merscope_boundaries(folder, rows)
        sdata, error = read_or_error(sg.io.merscope, folder)

    # Either a ValueError that names the file, or the broken cell dropped with a warning.
    if error is not None:
        assert "cell_boundaries.parquet" in str(error)
    else:
        assert sdata.shapes["cell_boundaries"].index.tolist() == ["1"]
        assert logged_warnings


# CosMx


def write_cosmx(folder: Path, transcripts: pd.DataFrame, *, csv: bool) -> Path:
    write_table(transcripts, folder / ("Run1_tx_file.csv" if csv else "Run1_tx_file.parquet"))
    return folder


@PROPERTY_SETTINGS
@given(data=st.data())
def test_cosmx_tables_follow_schema(data):
    csv = data.draw(st.booleans(), label="csv")
    frame = data.draw(cosmx_tables(csv=csv), label="transcripts")
    pixel_size = data.draw(st.floats(0.05, 1.0), label="pixel_size")
    z_step = data.draw(st.one_of(st.none(), st.floats(0.1, 3.0)), label="z_step")
    min_nuclear = data.draw(st.integers(1, 4), label="min_nuclear_transcripts")
    # A CSV file is read in blocks of about this many bytes: one row each, a few, or all.
    block_bytes = data.draw(st.sampled_from([1, 200, 10**6]), label="block_bytes")

    with tempfile.TemporaryDirectory() as name, mock.patch("segger.io._csv.BYTES_PER_BLOCK", block_bytes):
        folder = write_cosmx(Path(name), frame, csv=csv)
        sdata = sg.io.cosmx(folder, pixel_size=pixel_size, z_step=z_step, min_nuclear_transcripts=min_nuclear)
        points = read_points(sdata)

    assigned = (frame["cell_ID"] > 0).to_numpy()
    cell_ids = [
        f"{fov}_{cell}" if cell > 0 else None
        for fov, cell in zip(frame["fov"], frame["cell_ID"], strict=True)
    ]
    check_points_schema(points, len(frame))
    np.testing.assert_allclose(
        points["x"].to_numpy(), frame["x_global_px"].to_numpy() * pixel_size, rtol=1e-12
    )
    np.testing.assert_allclose(
        points["y"].to_numpy(), frame["y_global_px"].to_numpy() * pixel_size, rtol=1e-12
    )
    if "z" in frame.columns and z_step is not None:
        np.testing.assert_allclose(points["z"].to_numpy(), frame["z"].to_numpy() * z_step, rtol=1e-12)
    else:
        assert "z" not in points.columns
    if "z" in frame.columns:
        assert points["z_plane"].tolist() == frame["z"].tolist()
    if "cell_id" in frame.columns:
        assert points["vendor_cell_id"].tolist() == frame["cell_id"].tolist()
    assert points["feature_name"].astype(str).tolist() == frame["target"].tolist()
    assert points["transcript_id"].tolist() == list(range(len(frame)))
    assert as_optional_strings(points["cell_id"]) == cell_ids
    nuclear = (frame["CellComp"] == "Nuclear").to_numpy() & assigned
    assert points["overlaps_nucleus"].tolist() == nuclear.tolist()
    assert points["is_control"].tolist() == is_control_by_prefix(
        frame["target"].tolist(), COSMX_CONTROL_PREFIXES
    )

    # Each cell with enough nuclear transcripts gets one valid polygon that covers all of them.
    nuclear_points = points[points["overlaps_nucleus"]]
    counts = nuclear_points["cell_id"].value_counts()
    expected_nuclei = set(counts.index[counts >= min_nuclear])
    if not expected_nuclei:
        assert "nucleus_boundaries" not in sdata.shapes
        return
    nuclei = sdata.shapes["nucleus_boundaries"]
    assert set(nuclei.index) == expected_nuclei
    assert (nuclei.geometry.geom_type == "Polygon").all()
    assert nuclei.is_valid.all()
    assert (nuclei.area > 0).all()
    for cell, group in nuclear_points.groupby("cell_id"):
        if cell in expected_nuclei:
            locations = shapely.points(group["x"].to_numpy(), group["y"].to_numpy())
            assert (shapely.distance(nuclei.geometry[cell], locations) <= 1e-6).all()


@ERROR_SETTINGS
@given(data=st.data())
def test_cosmx_nonfinite_coordinate_raises(data):
    csv = data.draw(st.booleans(), label="csv")
    frame = data.draw(cosmx_tables(csv=csv), label="transcripts")
    frame["z"] = 0.0
    column = data.draw(st.sampled_from(["x_global_px", "y_global_px", "z"]), label="column")
    row = data.draw(st.integers(0, len(frame) - 1), label="row")
    frame.loc[row, column] = data.draw(st.sampled_from(BAD_VALUES), label="value")

    with tempfile.TemporaryDirectory() as name:
        folder = write_cosmx(Path(name), frame, csv=csv)
        with pytest.raises(ValueError, match=f"NaN or infinite '{column}'"):
            sg.io.cosmx(folder)


@ERROR_SETTINGS
@given(data=st.data())
def test_cosmx_missing_column_raises(data):
    frame = data.draw(cosmx_tables(csv=True), label="transcripts")
    required = ["fov", "cell_ID", "x_global_px", "y_global_px", "target", "CellComp"]
    column = data.draw(st.sampled_from(required), label="column")

    with tempfile.TemporaryDirectory() as name:
        folder = write_cosmx(Path(name), frame.drop(columns=column), csv=True)
        with pytest.raises(ValueError, match=rf"missing the required column\(s\) \['{re.escape(column)}'\]"):
            sg.io.cosmx(folder)


def test_cosmx_text_cell_id_error():
    frame = pd.DataFrame(
        {
            "fov": [1, 1, 1],
            "cell_ID": [1, "c2", 0],
            "x_global_px": [1.0, 2.0, 3.0],
            "y_global_px": [1.0, 2.0, 3.0],
            "target": ["KRT8", "NegPrb1", "CD3E"],
            "CellComp": ["Nuclear", "Nuclear", "Membrane"],
        }
    )

    with tempfile.TemporaryDirectory() as name:
        folder = write_cosmx(Path(name), frame, csv=True)
        _, error = read_or_error(sg.io.cosmx, folder)

    assert isinstance(error, ValueError)
    assert "cell_ID" in str(error)


def test_cosmx_unsorted_cells_nuclei():
    # Cells 2 and 10 of FOV 1, in numeric order, each with one nuclear transcript.
    frame = pd.DataFrame(
        {
            "fov": [1, 1],
            "cell_ID": [2, 10],
            "x_global_px": [0.0, 50.0],
            "y_global_px": [0.0, 50.0],
            "target": ["KRT8", "CD3E"],
            "CellComp": ["Nuclear", "Nuclear"],
        }
    )

    with tempfile.TemporaryDirectory() as name:
        folder = write_cosmx(Path(name), frame, csv=True)
        sdata = sg.io.cosmx(folder, min_nuclear_transcripts=1)

    assert sorted(sdata.shapes["nucleus_boundaries"].index) == ["1_10", "1_2"]
