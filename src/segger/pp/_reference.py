"""Gene features derived from a single-cell reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def gene_embedding_from_reference(
    adata: AnnData,
    *,
    cell_type_key: str,
    layer: str | None = None,
    genes: list[str] | None = None,
) -> pd.DataFrame:
    """Derive a genes × cell types table from a single-cell reference.

    Each entry is the fraction of cells of a type that detect the gene (count > 0). Pass the
    result as ``gene_embedding`` to :func:`segger.tl.segger_fit` to use it as fixed transcript
    features in place of a learned gene embedding.

    Parameters
    ----------
    adata
        Reference cells × genes with raw counts.
    cell_type_key
        Column of ``adata.obs`` with the cell-type labels.
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    genes
        Genes to keep, in this order; genes absent from the reference get a row of zeros.
        ``None`` keeps all of ``adata.var_names``.

    Returns
    -------
    DataFrame indexed by gene, one column per cell type, values in [0, 1].
    """
    if cell_type_key not in adata.obs.columns:
        msg = (
            f"cell_type_key {cell_type_key!r} is not a column of adata.obs; available columns are "
            f"{list(adata.obs.columns)}."
        )
        raise KeyError(msg)

    counts = adata.X if layer is None else adata.layers[layer]
    detected = sparse.csr_matrix(counts > 0).astype(np.float32)
    cell_types = adata.obs[cell_type_key].astype("category")
    indicator = sparse.csr_matrix(
        (np.ones(adata.n_obs, dtype=np.float32), (cell_types.cat.codes.to_numpy(), np.arange(adata.n_obs))),
        shape=(len(cell_types.cat.categories), adata.n_obs),
    )
    cells_per_type = np.asarray(indicator.sum(axis=1)).ravel()
    fractions = np.asarray((indicator @ detected).todense()) / np.maximum(cells_per_type, 1)[:, None]

    table = pd.DataFrame(
        fractions.T, index=adata.var_names.astype(str), columns=cell_types.cat.categories.astype(str)
    )
    if genes is not None:
        table = table.reindex([str(gene) for gene in genes], fill_value=0.0)
    return table
