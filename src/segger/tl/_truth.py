"""Agreement of a segmentation with a ground-truth or reference cell assignment."""

from __future__ import annotations

import pandas as pd


def match_cells(true_ids: pd.Series, predicted_ids: pd.Series) -> pd.Series:
    """Match each predicted cell to the true cell that contains most of its transcripts, one to one.

    A true cell claimed by several predicted cells keeps only the one that shares the most
    transcripts with it, so that splitting a cell into fragments is not rewarded.

    Parameters
    ----------
    true_ids, predicted_ids
        Cell id per transcript, aligned; missing values mean "no cell".

    Returns
    -------
    The matched true cell id per predicted cell id (only matched cells are listed).
    """
    frame = pd.DataFrame({"true": true_ids.to_numpy(), "predicted": predicted_ids.to_numpy()}).dropna()
    if frame.empty:
        return pd.Series(dtype=object)
    overlap = frame.groupby(["predicted", "true"], observed=True).size().rename("n").reset_index()
    overlap = overlap.sort_values(["n", "predicted", "true"], ascending=[False, True, True], kind="stable")
    majority = overlap.drop_duplicates("predicted")
    one_to_one = majority.drop_duplicates("true")
    return pd.Series(one_to_one["true"].to_numpy(), index=one_to_one["predicted"].to_numpy())


def assignment_accuracy(true_ids: pd.Series, predicted_ids: pd.Series) -> dict[str, float]:
    """Return the shares of in-cell transcripts assigned to their true cell, a wrong cell, or none.

    Shares are taken over the transcripts whose true id is not missing. A transcript counts
    as correct when its predicted cell is matched to its true cell by :func:`match_cells`.
    """
    true_ids = true_ids.reset_index(drop=True)
    predicted_ids = predicted_ids.reset_index(drop=True)
    in_cell = true_ids.notna().to_numpy()
    if not in_cell.any():
        msg = "No transcript has a true cell id, so accuracy is undefined."
        raise ValueError(msg)

    matches = match_cells(true_ids, predicted_ids)
    matched_true = predicted_ids.map(matches)
    assigned = predicted_ids.notna().to_numpy() & in_cell
    correct = assigned & (matched_true.astype(object).to_numpy() == true_ids.astype(object).to_numpy())
    n = int(in_cell.sum())
    return {
        "correct": float(correct.sum() / n),
        "wrong": float((assigned & ~correct).sum() / n),
        "unassigned": float((in_cell & ~assigned).sum() / n),
    }
