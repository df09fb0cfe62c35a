from __future__ import annotations

import pandas as pd
import pytest

import segger as sg

FAST = {"max_epochs": 5, "progress": False}


def assigned_share(sdata, key: str = "segger") -> float:
    points = sdata.points["transcripts"].compute()
    counted = ~points["is_control"].to_numpy()
    return float(points.loc[counted, f"{key}_cell_id"].notna().mean())


@pytest.mark.slow
def test_fit_merscope_crop(merscope_ovarian_path):
    sdata = sg.io.merscope(merscope_ovarian_path)
    sg.tl.segger_fit(sdata, shapes_key="cell_boundaries", **FAST)
    table = sdata.tables["segger_table"]
    priors = set(sdata.shapes["cell_boundaries"].index)
    grown = set(table.obs["prior_id"].dropna().astype(str))

    assert grown <= priors
    assert len(grown) >= 20
    assert assigned_share(sdata) >= 0.8
    assert len(sdata.shapes["segger_boundaries"]) == table.n_obs
    assert sdata.shapes["segger_boundaries"].is_valid.all()
    # MERSCOPE has no quality values, so no transcript is held back by the quality filter.
    assert "qv" not in sdata.points["transcripts"].columns


@pytest.mark.slow
@pytest.mark.parametrize("shapes_key", ["nucleus_boundaries", "cell_boundaries"])
def test_fit_cosmx_crop(cosmx_lung_path, shapes_key):
    sdata = sg.io.cosmx(cosmx_lung_path)
    sg.tl.segger_fit(sdata, shapes_key=shapes_key, **FAST)
    table = sdata.tables["segger_table"]
    points = sdata.points["transcripts"].compute()
    grown = table.obs["prior_id"].dropna().astype(str)

    assert set(grown) <= set(sdata.shapes[shapes_key].index)
    assert len(grown) >= 0.8 * len(sdata.shapes[shapes_key])
    assert assigned_share(sdata) >= 0.75
    assert table.X.sum() == points.loc[~points["is_control"], "segger_cell_id"].notna().sum()


@pytest.mark.slow
def test_cosmx_vendor_agreement(cosmx_lung_path):
    sdata = sg.io.cosmx(cosmx_lung_path)
    sg.tl.segger_fit(sdata, **FAST)
    points = sdata.points["transcripts"].compute()
    both = points["cell_id"].notna() & points["segger_cell_id"].notna() & ~points["is_control"]
    same = points.loc[both, "cell_id"].astype(str) == points.loc[both, "segger_cell_id"].astype(str)

    # Cells grown from a nucleus keep the vendor's cell id, so most shared transcripts agree directly.
    assert both.mean() >= 0.7
    assert same.mean() >= 0.6
    assert isinstance(points["segger_cell_id"].dtype, pd.StringDtype)


def test_fit_merscope_without_shapes_key(merscope_ovarian_path):
    sdata = sg.io.merscope(merscope_ovarian_path)

    with pytest.raises(KeyError, match="pass shapes_key='cell_boundaries'"):
        sg.tl.segger_fit(sdata, **FAST)
