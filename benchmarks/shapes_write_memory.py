"""Measure the memory that writing a large shapes element takes, encoded whole or a chunk of rows at a time.

The nuclei of the cached 5m store of ``run_segmentation.py`` are repeated side by side, one to
sixteen times, with distinct ids, to make shapes elements of 42,750 to 684,000 polygons. For each
size and writer, a fresh process builds a SpatialData with that one element and returns freed
memory to the system. It then writes the element to a new zarr store with ``SpatialData.write``,
which encodes every polygon to WKB at once, or with the ``segger`` command's writer
(``segger.io._zarr.write_zarr``), which encodes ``SHAPES_CHUNK_ROWS`` rows at a time. A thread
samples ``RssAnon`` every 10 ms during the write. The chunked store is read back and compared
with the element polygon by polygon.

Usage::

    python benchmarks/shapes_write_memory.py --copies 1,4,16 --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _markdown import replace_section
from _process import run_worker_process
from run_segmentation import DEFAULT_CACHE, machine_facts, markdown_table, synthetic_stores
from scratch_memory import StatusSampler, read_status

logger = logging.getLogger("segger_benchmark")

WRITERS = ("SpatialData.write", "segger chunked writer")
GAP_UM = 50.0


def repeated_nuclei(store: Path, copies: int) -> Any:
    """Return the nuclei of ``store`` repeated ``copies`` times in a row, with ids made distinct."""
    import geopandas as gpd
    import pandas as pd
    import spatialdata
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    nuclei = spatialdata.read_zarr(store, selection=("shapes",)).shapes["nucleus_boundaries"]
    x_min, _, x_max, _ = nuclei.total_bounds
    step = x_max - x_min + GAP_UM
    parts = [
        gpd.GeoDataFrame(
            geometry=nuclei.geometry.translate(copy * step, 0).to_numpy(), index=nuclei.index + f"-{copy}"
        )
        for copy in range(copies)
    ]
    return ShapesModel.parse(pd.concat(parts), transformations=get_transformation(nuclei, get_all=True))


def measure(store: Path, copies: int, writer: str) -> dict[str, Any]:
    """Write the repeated nuclei with ``writer`` and return the polygons, seconds and memory added."""
    import gc

    import numpy as np
    import shapely
    import spatialdata

    from segger._memory import release_freed_memory
    from segger.io._zarr import write_zarr

    sdata = spatialdata.SpatialData(shapes={"nuclei": repeated_nuclei(store, copies)})
    gc.collect()
    release_freed_memory()
    memory_before = read_status(("RssAnon",))["RssAnon"]
    sampler = StatusSampler()
    with tempfile.TemporaryDirectory(prefix="segger-shapes-") as folder:
        target = Path(folder) / "shapes.zarr"
        with sampler:
            start = time.perf_counter()
            if writer == WRITERS[0]:
                sdata.write(target)
            else:
                write_zarr(sdata, target)
            seconds = time.perf_counter() - start
        written = spatialdata.read_zarr(target).shapes["nuclei"]
        expected = sdata.shapes["nuclei"]
        equal = bool(
            written.index.equals(expected.index)
            and np.array_equal(
                shapely.to_wkb(written.geometry.array), shapely.to_wkb(expected.geometry.array)
            )
        )
    return {
        "n_polygons": len(sdata.shapes["nuclei"]),
        "seconds": seconds,
        "start": memory_before,
        "added": max(sampler.peaks["RssAnon"], memory_before) - memory_before,
        "read_back_equal": equal,
    }


def report(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    """Return the markdown section: one column per size, the time and memory of each writer."""
    sizes = list(results)
    rows = [["polygons", *[f"{results[copies][WRITERS[0]]['n_polygons']:,}" for copies in sizes]]]
    for writer in WRITERS:
        rows.append(
            [f"{writer}: memory added (GB)", *[f"{results[c][writer]['added'] / 1e9:.3f}" for c in sizes]]
        )
        rows.append([f"{writer}: time (s)", *[f"{results[c][writer]['seconds']:.1f}" for c in sizes]])
    rows.append(
        [
            "chunked store read back equal",
            *[str(results[c][WRITERS[1]]["read_back_equal"]) for c in sizes],
        ]
    )
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv])
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    text = [
        "## Memory of writing a large shapes element",
        f"Measured on {date} with\n\n```bash\n{command}\n```",
        markdown_table(["", *[f"{c} × 5m nuclei" for c in sizes]], rows),
        "Each cell is a fresh process that holds one shapes element, the 42,750 nuclei of the 5m "
        "store repeated side by side, and writes it to a new zarr store. *Memory added* is the "
        "peak of `RssAnon` during the write minus its value just before, after freed memory was "
        "returned to the system, sampled every 10 ms. `SpatialData.write` encodes every polygon "
        "to WKB at once, so its figure grows with the polygons. The `segger` command writes "
        "shapes elements with `segger.io._zarr.write_zarr`, which encodes 10,000 rows at a time. "
        "*Read back equal* compares the chunked store's polygons (as WKB) and ids with the element "
        "written. GB means 10⁹ bytes.",
        "### Machine",
        facts,
    ]
    return "\n\n".join(text) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", default="1,4,16", help="comma-separated copies of the 5m nuclei")
    parser.add_argument("--output", type=Path, help="markdown file to write the report to")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="cache of the synthetic stores")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--writer", choices=WRITERS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        args.result.write_text(json.dumps(measure(args.store, int(args.copies), args.writer)))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    stores, _ = synthetic_stores(args.cache_dir, random_state=0, regenerate=False)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for copies in (int(value) for value in args.copies.split(",")):
        results[copies] = {}
        for writer in WRITERS:
            logger.info("Writing %d copies of the 5m nuclei with %s.", copies, writer)
            arguments = ["--store", str(stores["5m"]), "--copies", str(copies), "--writer", writer]
            results[copies][writer] = run_worker_process(__file__, arguments)

    text = report(results)
    if args.output is not None:
        replace_section(args.output, "shapes_write", text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
