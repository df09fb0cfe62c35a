"""Per-cell counts of a stored segmentation, taken from its points column the same way for every method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as C
from ._prepare import _graph_mask
from ._writeback import get_points

if TYPE_CHECKING:
    from spatialdata import SpatialData


@dataclass(frozen=True)
class CountedPoints:
    """The transcripts that quality figures count: non-control, passing the quality filter.

    Attributes
    ----------
    frame
        The counted transcripts with the columns that were requested.
    feature_key
        Name of the gene column.
    genes
        Sorted gene names; ``gene_codes`` indexes into them.
    gene_codes
        Position of each counted transcript's gene in ``genes``.
    """

    frame: pd.DataFrame
    feature_key: str
    genes: pd.Index
    gene_codes: np.ndarray


@dataclass(frozen=True)
class CellCounts:
    """Cells × genes counts of one segmentation over the counted transcripts.

    Attributes
    ----------
    cell_ids
        Sorted ids of the cells that hold at least one counted transcript.
    cell_codes
        Position of each counted transcript's cell in ``cell_ids``, -1 where unassigned.
    counts
        CSR matrix of shape ``(n_cells, n_genes)``.
    """

    cell_ids: np.ndarray
    cell_codes: np.ndarray
    counts: sp.csr_matrix


def segmentation_keys(sdata: SpatialData, points_key: str) -> list[str]:
    """Return the keys of the segmentations stored in ``sdata``, in the order of their points columns.

    A segmentation ``key`` is a points column ``{key}_cell_id`` together with the table
    ``{key}_table``, so the vendor's own ``cell_id`` column and ``true_cell_id`` are not listed.
    """
    suffix = C.cell_id_column("")
    keys = []
    for column in map(str, get_points(sdata, points_key).columns):
        key = column.removesuffix(suffix)
        if column.endswith(suffix) and key and C.table_key(key) in sdata.tables:
            keys.append(key)
    return keys


def counted_points(
    sdata: SpatialData, *, points_key: str, keys: list[str], min_qv: float | None, extra_columns: list[str]
) -> CountedPoints:
    """Load the columns needed for the segmentations ``keys`` and keep the counted transcripts."""
    points = get_points(sdata, points_key)
    feature_key = points.attrs.get("spatialdata_attrs", {}).get("feature_key") or C.FEATURE_NAME
    missing = [key for key in keys if C.cell_id_column(key) not in points.columns]
    if missing:
        msg = (
            f"No segmentation {missing} in points {points_key!r}: the column(s) "
            f"{[C.cell_id_column(key) for key in missing]} are missing. Stored segmentations: "
            f"{segmentation_keys(sdata, points_key)}."
        )
        raise KeyError(msg)

    requested = [C.X, C.Y, feature_key, C.IS_CONTROL, C.QV, *extra_columns]
    requested += [C.cell_id_column(key) for key in keys]
    columns = [column for column in dict.fromkeys(requested) if column in points.columns]
    frame = points[columns].compute()
    frame = frame.loc[_graph_mask(frame, feature_key, min_qv)]
    if frame.empty:
        msg = f"Points {points_key!r} hold no non-control transcript with qv >= {min_qv}; nothing to count."
        raise ValueError(msg)

    genes = frame[feature_key].astype(str)
    gene_index = pd.Index(np.unique(genes.to_numpy()))
    return CountedPoints(
        frame=frame, feature_key=feature_key, genes=gene_index, gene_codes=gene_index.get_indexer(genes)
    )


def cell_counts(points: CountedPoints, key: str) -> CellCounts:
    """Count the transcripts of each gene in each cell of segmentation ``key``."""
    cell_ids = points.frame[C.cell_id_column(key)].astype("string")
    assigned = cell_ids.notna().to_numpy()
    ids, codes = np.unique(cell_ids[assigned].to_numpy(dtype=str), return_inverse=True)
    cell_codes = np.full(len(cell_ids), -1, dtype=np.int64)
    cell_codes[assigned] = codes

    counts = sp.csr_matrix(
        (np.ones(int(assigned.sum()), dtype=np.int64), (codes, points.gene_codes[assigned])),
        shape=(len(ids), len(points.genes)),
    )
    counts.sum_duplicates()
    return CellCounts(cell_ids=ids, cell_codes=cell_codes, counts=counts)
