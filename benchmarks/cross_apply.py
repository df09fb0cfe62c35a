"""Apply the model trained on one synthetic tissue to another, independent one.

Generates two independent tissues, ``sg.datasets.toy(n_cells=950)`` and ``(n_cells=9500)``
(about 100k and 1M transcripts, the benchmark's datasets before 2026-12-05), fits segger on each,
applies each model to the other tissue with ``segger_predict``, and prints the share of in-cell
transcripts (non-control, qv >= 20) placed in their true cell. The two tissues draw different
gene panels, which is what this script shows.

Usage::

    python benchmarks/cross_apply.py --random-state 0
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import spatialdata as sd

import segger as sg
from segger.tl._truth import assignment_accuracy

# Cells per independent tissue.
TISSUE_CELLS = {"100k": 950, "1m": 9_500}


def in_true_cell(sdata: sd.SpatialData, key: str) -> float:
    points = sdata.points["transcripts"].compute()
    counted = (~points["is_control"]) & (points["qv"] >= 20) & points["true_cell_id"].notna()
    return (
        100
        * assignment_accuracy(points.loc[counted, "true_cell_id"], points.loc[counted, f"{key}_cell_id"])[
            "correct"
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply each synthetic tissue's model to the other.")
    parser.add_argument("--random-state", type=int, default=0, help="seed of the two tissues (default: 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    data = {
        name: sg.datasets.toy(n_cells=cells, random_state=args.random_state)
        for name, cells in TISSUE_CELLS.items()
    }

    models = {}
    for name, sdata in data.items():
        start = time.perf_counter()
        models[name] = sg.tl.segger_fit(sdata, progress=False)
        print(f"{name}: fit in {time.perf_counter() - start:.0f} s", flush=True)

    for name, sdata in data.items():
        other = next(key for key in data if key != name)
        sg.tl.segger_predict(sdata, models[other], key_added="other", progress=False)
        print(
            f"{name} tissue: own model {in_true_cell(sdata, 'segger'):.1f} %, {other} model {in_true_cell(sdata, 'other'):.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
