"""Names of the elements and columns that segger reads and writes in SpatialData."""

from __future__ import annotations

# Elements
POINTS_KEY = "transcripts"
NUCLEUS_SHAPES_KEY = "nucleus_boundaries"
CELL_SHAPES_KEY = "cell_boundaries"
KEY_ADDED = "segger"
COORDINATE_SYSTEM = "global"

# Points columns (the schema every reader produces)
X = "x"
Y = "y"
Z = "z"
FEATURE_NAME = "feature_name"
TRANSCRIPT_ID = "transcript_id"
CELL_ID = "cell_id"
OVERLAPS_NUCLEUS = "overlaps_nucleus"
QV = "qv"
IS_CONTROL = "is_control"
TRUE_CELL_ID = "true_cell_id"

# Feature names with these prefixes are negative controls or other non-gene probes.
CONTROL_PREFIXES = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "BLANK_",
    "antisense_",
    "DeprecatedCodeword_",
    "UnassignedCodeword_",
    "Intergenic_Region_",
)

DEFAULT_MIN_QV = 20.0


def cell_id_column(key_added: str) -> str:
    """Return the points column that stores the cell id of segmentation ``key_added``."""
    return f"{key_added}_cell_id"


def score_column(key_added: str) -> str:
    """Return the points column that stores the assignment score of segmentation ``key_added``."""
    return f"{key_added}_score"


def boundaries_key(key_added: str) -> str:
    """Return the shapes element that stores the cell polygons of segmentation ``key_added``."""
    return f"{key_added}_boundaries"


def table_key(key_added: str) -> str:
    """Return the table element that stores the count matrix of segmentation ``key_added``."""
    return f"{key_added}_table"
