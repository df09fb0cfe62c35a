"""Measure how accuracy and training time change with the number of training tiles.

``segger_fit`` trains on a seeded random sample of at most ``max_train_tiles`` tiles. For each
value given, a fresh process runs ``sg.tl.segger_fit`` with it on a cached store of
``run_segmentation.py``. By default this is 5m, the synthetic tissue of ``sg.datasets.toy`` in
about 320 tiles of the default 120 µm. The labels are scored against the true cells, as that
script does. Everything
else keeps segger's defaults, so ``max_steps`` grows with the sample: 400 optimiser steps or 15
passes over the training tiles, whichever is more.

Usage::

    python benchmarks/train_tiles.py --tiles 4,8,16,32,64,128 --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _markdown import replace_section
from _process import run_worker_process
from run_segmentation import (
    DEFAULT_CACHE,
    REFERENCE_WINDOW,
    machine_facts,
    markdown_table,
    percent,
    quality,
    synthetic_stores,
)

logger = logging.getLogger("segger_benchmark")

DEFAULT_DATASET = "5m"
SECTION = "train_tiles"


class _TrainingLog(logging.Handler):
    """Log handler that keeps the tile counts and the training time from segger's messages."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.values: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if match := re.match(r"Training on (\d+) tile\(s\), validating on (\d+)", message):
            self.values["training_tiles"] = int(match.group(1))
            self.values["validation_tiles"] = int(match.group(2))
        elif match := re.match(r"Trained for (\d+) epoch\(s\) in ([\d.]+) s", message):
            self.values["epochs"] = int(match.group(1))
            self.values["training_seconds"] = float(match.group(2))


def measure(store: Path, window: list[float], max_train_tiles: int) -> dict[str, Any]:
    """Run segger_fit with ``max_train_tiles`` on ``store`` in this process and score its labels."""
    import spatialdata

    import segger as sg

    segger_logger = logging.getLogger("segger")
    segger_logger.setLevel(logging.INFO)
    log = _TrainingLog()
    segger_logger.addHandler(log)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    sdata = spatialdata.read_zarr(store)

    start = time.perf_counter()
    model = sg.tl.segger_fit(sdata, max_train_tiles=max_train_tiles, progress=False)
    seconds = time.perf_counter() - start

    points = sdata.points["transcripts"].compute()
    scores = quality(points, synthetic=True, window=window)
    return {
        "max_train_tiles": max_train_tiles,
        "max_steps": int(sdata.tables["segger_table"].uns["segger"]["params"]["max_steps"]),
        "steps": int(model.history["step"].max()),
        "fit_seconds": seconds,
        **log.values,
        **scores,
    }


def report(results: list[dict[str, Any]], command: str, dataset: str, n_transcripts: str) -> str:
    """Return the markdown section: one column per ``max_train_tiles``."""
    header = ["", *[str(result["max_train_tiles"]) for result in results]]
    rows = [
        [
            "training / validation tiles",
            *[f"{r['training_tiles']} / {r['validation_tiles']}" for r in results],
        ],
        ["optimiser steps (epochs)", *[f"{r['steps']} ({r['epochs']})" for r in results]],
        ["max_steps", *[str(r["max_steps"]) for r in results]],
        ["training (s)", *[f"{r['training_seconds']:.0f}" for r in results]],
        ["segger_fit (s)", *[f"{r['fit_seconds']:.0f}" for r in results]],
        ["**in true cell**", *[percent(r["segger_correct"]) for r in results]],
        [
            f"in true cell inside the {REFERENCE_WINDOW} window",
            *[percent(r["segger_correct_window"]) for r in results],
        ],
        ["assigned", *[percent(r["segger_assigned"]) for r in results]],
    ]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    return f"""## Accuracy against the number of training tiles

Measured on {now} with

```bash
{command}
```

Columns: `max_train_tiles`. Dataset: the cached {dataset} store of `run_segmentation.py`
({n_transcripts} transcripts).

{markdown_table(header, rows)}

Each column is a fresh process that opens the store and runs `sg.tl.segger_fit(sdata,
max_train_tiles=N, progress=False)` with every other option at its default, so `max_steps` is
400 or 15 passes over the training tiles, whichever is more, and training stops earlier when
the validation loss stops improving. A slide with fewer tiles than `N` that hold labelled
transcripts trains on all of them. *In true cell* is the share of the in-cell, non-control
transcripts with qv of at least 20 that segger assigns to their true cell, computed as in the
segger_fit benchmark above. *Training* is the time that segger logs for Lightning's training.

### Machine

{facts}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiles", default="4,8,16,32,64,128", help="comma-separated values of max_train_tiles"
    )
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="cached synthetic dataset: 100k, 1m or 5m")
    parser.add_argument("--output", type=Path, help="markdown file to write the section into")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="folder of the cached stores")
    parser.add_argument("--random-state", type=int, default=0, help="seed of the synthetic tissue")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--window", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        result = measure(args.store, json.loads(args.window), int(args.tiles))
        args.result.write_text(json.dumps(result))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stores, windows = synthetic_stores(args.cache_dir, random_state=args.random_state, regenerate=False)
    results = []
    for value in [int(text) for text in args.tiles.split(",")]:
        logger.info("segger_fit with max_train_tiles=%d on %s.", value, stores[args.dataset])
        arguments = ["--store", str(stores[args.dataset]), "--window", json.dumps(windows[REFERENCE_WINDOW])]
        results.append(run_worker_process(__file__, [*arguments, "--tiles", str(value)]))
        logger.info("Result: %s", results[-1])

    import spatialdata

    n_transcripts = f"{len(spatialdata.read_zarr(stores[args.dataset]).points['transcripts']):,}"
    command = shlex.join(["python", *sys.argv])
    text = report(results, command, args.dataset, n_transcripts)
    print(text)
    if args.output is not None:
        replace_section(args.output, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
