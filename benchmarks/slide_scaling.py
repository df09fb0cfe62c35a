"""Measure how segger_predict's peak memory grows with the slide when the arrays are kept on disk.

A small model is trained on the cached 1m store of ``run_segmentation.py`` and saved. Then, for
each dataset and repeat, a fresh process applies it with ``sg.tl.segger_predict(...,
scratch_dir=...)`` while a thread samples ``RssAnon`` (memory that belongs to the process itself) every
10 ms and a log handler marks where each phase ends. The table gives the peak of each phase,
so a growth that one phase causes is not hidden by the run-to-run spread of another.

Besides the cached 1m and 5m stores, ``20m`` is the 5m slide repeated two by two, with the copies
side by side, 50 µm apart, and their ids made distinct. It is written next to the cache on first use.

Usage::

    python benchmarks/slide_scaling.py --datasets 1m,5m,20m --repeats 2 --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _markdown import replace_section
from arena_predict import add_common_arguments, run_as_worker, run_worker
from run_segmentation import machine_facts, markdown_table, synthetic_stores
from scratch_memory import SAMPLE_SECONDS, read_status

logger = logging.getLogger("segger_benchmark")

# Phases of segger_predict, each ending with the first segger log message that starts with the text.
PHASES = {
    "read and prepare": "Prepared ",
    "tile index and prediction": "Predicted and scored ",
    "fragments and cell codes": "Writing segmentation ",
    "polygons, counts and table": "Finished segmentation ",
    "rest": None,
}
GAP_UM = 50.0


class PhaseSampler(logging.Handler):
    """Sample ``RssAnon`` in a thread and keep its peak per phase, moving on at segger's log messages."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.names = list(PHASES)
        self.phase = 0
        self.peaks = dict.fromkeys(PHASES, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def emit(self, record: logging.LogRecord) -> None:
        ending = PHASES[self.names[self.phase]]
        if ending is not None and record.getMessage().startswith(ending):
            self._sample()
            self.phase += 1

    def __enter__(self) -> PhaseSampler:
        logging.getLogger("segger").addHandler(self)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        logging.getLogger("segger").removeHandler(self)

    def _sample(self) -> None:
        name = self.names[self.phase]
        self.peaks[name] = max(self.peaks[name], read_status(("RssAnon",))["RssAnon"])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(SAMPLE_SECONDS)


def tiled_store(source: Path, target: Path) -> None:
    """Write the slide of ``source`` repeated two by two to ``target``, by way of a temporary name."""
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import spatialdata
    from run_segmentation import _split_points
    from spatialdata.models import PointsModel, ShapesModel
    from spatialdata.transformations import get_transformation

    from segger import _constants as C

    sdata = spatialdata.read_zarr(source)
    element = sdata.points[C.POINTS_KEY]
    points = element.compute()
    nuclei = sdata.shapes[C.NUCLEUS_SHAPES_KEY]
    width = float(points[C.X].max() - points[C.X].min()) + GAP_UM
    height = float(points[C.Y].max() - points[C.Y].min()) + GAP_UM
    id_step = int(points[C.TRANSCRIPT_ID].max()) + 1

    point_copies, nucleus_copies = [], []
    for copy, (dx, dy) in enumerate([(0, 0), (width, 0), (0, height), (width, height)]):
        moved = points.copy()
        moved[C.X] += np.float32(dx)
        moved[C.Y] += np.float32(dy)
        moved[C.TRANSCRIPT_ID] += copy * id_step
        for column in (C.CELL_ID, C.TRUE_CELL_ID):
            moved[column] = (moved[column] + f"-{copy}").astype(points[column].dtype)
        point_copies.append(moved)
        shifted = nuclei.geometry.translate(dx, dy)
        nucleus_copies.append(gpd.GeoDataFrame(geometry=shifted.to_numpy(), index=nuclei.index + f"-{copy}"))

    frame = pd.concat(point_copies, ignore_index=True)
    frame.attrs = {}
    transformations = get_transformation(element, get_all=True)
    tiled = spatialdata.SpatialData(
        points={
            C.POINTS_KEY: PointsModel.parse(
                frame, feature_key=C.FEATURE_NAME, transformations=transformations
            )
        },
        shapes={
            C.NUCLEUS_SHAPES_KEY: ShapesModel.parse(
                pd.concat(nucleus_copies), transformations=get_transformation(nuclei, get_all=True)
            )
        },
    )
    tiled = _split_points(tiled, int(element.map_partitions(len).compute().max()))
    partial = target.with_name(target.name + ".partial")
    tiled.write(partial, overwrite=True)
    partial.rename(target)


def predict(store: Path, model_file: Path) -> dict[str, Any]:
    """Apply the saved model to ``store`` with a scratch folder; return the time and the peaks per phase."""
    import spatialdata

    import segger as sg

    logging.getLogger("segger").setLevel(logging.INFO)
    sdata = spatialdata.read_zarr(store)
    model = sg.models.Segger.load(model_file)
    before = _live_memory()
    with tempfile.TemporaryDirectory(prefix="segger-scaling-") as scratch:
        start = time.perf_counter()
        with PhaseSampler() as sampler:
            sg.tl.segger_predict(sdata, model, progress=False, scratch_dir=scratch)
        seconds = time.perf_counter() - start
    return {
        "n_transcripts": len(sdata.points["transcripts"]),
        "seconds": seconds,
        "peaks": sampler.peaks,
        "phases_seen": sampler.phase,
        "before": before,
        "after": _live_memory(),
    }


def _live_memory() -> int:
    """Return ``RssAnon`` once the garbage is collected and the allocators have returned freed memory."""
    import gc

    from segger._memory import release_freed_memory

    gc.collect()
    release_freed_memory()
    return read_status(("RssAnon",))["RssAnon"]


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    """Return the markdown section: per dataset, the median over repeats of each phase's peak."""
    datasets = list(results)
    rows = [
        ["transcripts", *[f"{results[name][0]['n_transcripts']:,}" for name in datasets]],
        [
            "segger_predict (s), each run",
            *[", ".join(f"{run['seconds']:.0f}" for run in results[name]) for name in datasets],
        ],
    ]
    for phase in PHASES:
        rows.append(
            [
                f"{phase}: peak RssAnon (GB), each run",
                *[", ".join(_gigabytes(run["peaks"][phase]) for run in results[name]) for name in datasets],
            ]
        )
    overall = {
        name: statistics.median(max(run["peaks"].values()) for run in results[name]) for name in datasets
    }
    rows.append(["**peak RssAnon (GB), median**", *[f"**{overall[name] / 1e9:.2f}**" for name in datasets]])
    memory_rows = {
        "before the call: store opened, model loaded (GB), median": lambda run: run["before"],
        "added by the call: peak minus before (GB), median": lambda run: (
            max(run["peaks"].values()) - run["before"]
        ),
        "kept after the call: outputs (GB), median": lambda run: run["after"] - run["before"],
    }
    medians = {
        label: {name: statistics.median(value(run) for run in results[name]) for name in datasets}
        for label, value in memory_rows.items()
    }
    rows.extend([label, *[f"{medians[label][name] / 1e9:.2f}" for name in datasets]] for label in memory_rows)

    first, last = datasets[0], datasets[-1]
    extra_transcripts = results[last][0]["n_transcripts"] - results[first][0]["n_transcripts"]
    if extra_transcripts > 0:
        growth = {
            label: (values[last] - values[first]) / extra_transcripts for label, values in medians.items()
        }
        before, added, kept = growth.values()
        summary = (
            f"From {first} to {last}, the median peak grows by "
            f"**{(overall[last] - overall[first]) / extra_transcripts:.0f} bytes per transcript**: "
            f"{before:.0f} in what the process held before the call, {added:.0f} in what the call "
            f"added at its peak, and the outputs it kept grow by {kept:.0f}."
        )
    else:
        summary = "Growth per transcript needs at least two datasets of different sizes."
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv])
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    text = [
        "## segger_predict memory as the slide grows, with scratch_dir",
        f"Measured on {date} with\n\n```bash\n{command}\n```",
        markdown_table(["", *datasets], rows),
        summary,
        "Each run is a fresh process that opens the zarr store, loads the same saved model and runs "
        "`sg.tl.segger_predict` with a scratch folder and the default tile size. A thread samples "
        "`RssAnon` (the process's own memory, not mapped file pages) every 10 ms, and the "
        "phases end at segger's log messages; a dash marks a phase too short for a sample. The 20m "
        "slide is the 5m slide repeated two by two. Before and after the call, the garbage is "
        "collected and glibc and Arrow are asked to return freed memory, so those two figures "
        "count live memory only. GB means 10⁹ bytes.",
        "### Machine",
        facts,
    ]
    return "\n\n".join(text) + "\n"


def _gigabytes(peak: int) -> str:
    """Return ``peak`` bytes in GB, or a dash when no sample fell into a phase too short to sample."""
    return f"{peak / 1e9:.2f}" if peak else "–"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="1m,5m,20m", help="comma-separated, smallest first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per dataset (default: 2)")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if run_as_worker(args, predict):
        return 0

    stores, _ = synthetic_stores(args.cache_dir, random_state=0, regenerate=False)
    stores["20m"] = stores["5m"].with_name(stores["5m"].name.replace("_5m", "_20m_tiled"))
    datasets = args.datasets.split(",")
    if "20m" in datasets and not stores["20m"].exists():
        logger.info("Writing the 5m slide repeated two by two to %s.", stores["20m"])
        tiled_store(stores["5m"], stores["20m"])

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in datasets}
    with tempfile.TemporaryDirectory() as folder:
        model_file = Path(folder) / "model.pt"
        logger.info("Training a small model on %s.", stores["1m"])
        run_worker("train", stores["1m"], model_file, {}, script=__file__)
        for repeat in range(args.repeats):
            for name in datasets:
                logger.info("Run %d of %d: predicting %s.", repeat + 1, args.repeats, name)
                results[name].append(run_worker("predict", stores[name], model_file, {}, script=__file__))

    text = report(results)
    if args.output is not None:
        replace_section(args.output, "slide_scaling", text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
