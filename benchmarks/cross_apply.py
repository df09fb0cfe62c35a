"""Apply the model trained on one synthetic tissue to the other, to compare 100k and 1M training.

Reads the 100k and 1M toy stores that ``run_segmentation.py`` caches, fits segger on each, applies
each model to the other tissue with ``segger_predict``, and prints the share of in-cell transcripts
(non-control, qv >= 20) placed in their true cell.

Usage::

    python benchmarks/run_segmentation.py --datasets 100k,1m   # writes the cached stores
    python benchmarks/cross_apply.py --random-state 0
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import spatialdata as sd
from run_segmentation import DEFAULT_CACHE, SYNTHETIC_CELLS

import segger as sg
from segger.tl._truth import assignment_accuracy


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
    parser.add_argument(
        "--random-state", type=int, default=0, help="seed of the cached toy stores (default: 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    version = sg.__version__
    stores = {
        name: DEFAULT_CACHE / f"toy_{cells}cells_seed{args.random_state}_segger{version}.zarr"
        for name, cells in SYNTHETIC_CELLS.items()
    }
    data = {name: sd.read_zarr(path) for name, path in stores.items()}

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
