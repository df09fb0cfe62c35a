"""Measure the memory of reading a gzipped MERSCOPE transcripts file whole or, with scratch_dir, in blocks.

The real MERSCOPE crop in ``../shared/data/merscope_ovarian_subset`` (15,160 transcripts) is
repeated side by side until the file has the requested number of rows, and written as
``detected_transcripts.csv.gz`` beside links to the crop's cell polygons. For each size and mode,
a fresh process calls ``sg.io.merscope`` on the folder. Without ``scratch_dir``, pandas reads
the file whole; with one, the file is decompressed there and read in blocks of about 16 MB. The
process then computes every partition of the points element once, one at a time, as
``segger_fit`` does when it prepares the transcripts. A thread samples ``RssAnon`` every 10 ms.
The points of the two modes are compared by a checksum of their columns.

Usage::

    python benchmarks/gzip_read_memory.py --rows 2000000,8000000 --output benchmarks/RESULTS.md
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

from _crops import write_repeated_rows
from _markdown import replace_section
from _process import run_worker_process
from run_segmentation import DEFAULT_CACHE, machine_facts, markdown_table
from scratch_memory import StatusSampler, read_status

logger = logging.getLogger("segger_benchmark")

MODES = ("read whole", "scratch_dir")
CROP = Path(__file__).resolve().parents[2] / "shared" / "data" / "merscope_ovarian_subset"
GAP_UM = 50.0


def gzipped_folder(crop: Path, cache: Path, n_rows: int) -> Path:
    """Return a MERSCOPE folder whose gzipped transcripts file has ``n_rows`` rows, the crop's repeated."""
    import pandas as pd

    folder = cache / f"merscope_gz_{n_rows}"
    file = folder / "detected_transcripts.csv.gz"
    if file.is_file():
        return folder

    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "cell_boundaries"
    if not link.exists():
        link.symlink_to(crop / "cell_boundaries")
    rows = pd.read_csv(crop / "detected_transcripts.csv")
    step = rows["global_x"].max() - rows["global_x"].min() + GAP_UM
    write_repeated_rows(
        rows,
        file,
        n_rows,
        lambda part, copy: part.assign(global_x=part["global_x"] + copy * step),
        gzipped=True,
    )
    return folder


def measure(folder: Path, mode: str) -> dict[str, Any]:
    """Read ``folder`` in ``mode``, compute every partition once, and return the time, memory and a checksum."""
    import gc

    import dask
    import numpy as np

    import segger as sg
    from segger._memory import release_freed_memory

    gc.collect()
    release_freed_memory()
    memory_before = read_status(("RssAnon",))["RssAnon"]
    with tempfile.TemporaryDirectory(prefix="segger-gzip-") as scratch, StatusSampler() as sampler:
        start = time.perf_counter()
        sdata = sg.io.merscope(folder, scratch_dir=scratch if mode == MODES[1] else None)
        read_seconds = time.perf_counter() - start
        copy_bytes = sum(path.stat().st_size for path in Path(scratch).rglob("*") if path.is_file())

        points = sdata.points["transcripts"]
        start = time.perf_counter()
        checksum = np.zeros(3)
        with dask.config.set(scheduler="synchronous"):
            for part in points.partitions:
                frame = part.compute()
                checksum += [frame["x"].sum(), frame["y"].sum(), frame["overlaps_nucleus"].sum()]
        pass_seconds = time.perf_counter() - start
        n_partitions = points.npartitions
        del sdata, points, part, frame
        gc.collect()

    return {
        "read_seconds": read_seconds,
        "pass_seconds": pass_seconds,
        "n_partitions": n_partitions,
        "copy_bytes": copy_bytes,
        "start": memory_before,
        "added": max(sampler.peaks["RssAnon"], memory_before) - memory_before,
        "checksum": [round(float(value), 3) for value in checksum],
    }


def report(results: dict[int, dict[str, dict[str, Any]]], sizes_gz: dict[int, int]) -> str:
    """Return the markdown section: one column per size, the time and memory of each mode."""
    sizes = list(results)
    rows = [
        ["transcripts", *[f"{n:,}" for n in sizes]],
        ["gzipped file (MB)", *[f"{sizes_gz[n] / 1e6:.0f}" for n in sizes]],
    ]
    for mode in MODES:
        rows.append(
            [f"{mode}: memory added (GB)", *[f"{results[n][mode]['added'] / 1e9:.2f}" for n in sizes]]
        )
        rows.append([f"{mode}: read (s)", *[f"{results[n][mode]['read_seconds']:.1f}" for n in sizes]])
        rows.append(
            [f"{mode}: pass over partitions (s)", *[f"{results[n][mode]['pass_seconds']:.1f}" for n in sizes]]
        )
        rows.append([f"{mode}: partitions", *[str(results[n][mode]["n_partitions"]) for n in sizes]])
    rows.append(
        [
            "scratch_dir: decompressed copy (MB)",
            *[f"{results[n][MODES[1]]['copy_bytes'] / 1e6:.0f}" for n in sizes],
        ]
    )
    rows.append(
        [
            "same points (checksum)",
            *[str(results[n][MODES[0]]["checksum"] == results[n][MODES[1]]["checksum"]) for n in sizes],
        ]
    )
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv])
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    text = [
        "## Memory of reading a gzipped transcripts file",
        f"Measured on {date} with\n\n```bash\n{command}\n```",
        markdown_table(["", *[f"{n:,} rows" for n in sizes]], rows),
        "Each cell is a fresh process that reads a MERSCOPE folder whose "
        "`detected_transcripts.csv.gz` repeats the rows of the real ovarian crop side by side, "
        "then computes each partition of the points element once, one at a time, as "
        "`segger_fit` does. *Memory added* is the peak of `RssAnon` during the read and the pass, "
        "sampled every 10 ms, minus its value before. Without `scratch_dir`, pandas reads the "
        "whole file; with it, `sg.io.merscope` decompresses the file into the scratch folder and "
        "reads blocks of about 16 MB. The checksum sums `x`, `y` and `overlaps_nucleus` over all "
        "partitions. GB and MB mean 10⁹ and 10⁶ bytes.",
        "### Machine",
        facts,
    ]
    return "\n\n".join(text) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2000000,8000000", help="comma-separated numbers of rows")
    parser.add_argument("--output", type=Path, help="markdown file to write the report to")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the gzipped folders are kept"
    )
    parser.add_argument("--crop-path", type=Path, default=CROP, help="the real MERSCOPE crop to repeat")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        args.result.write_text(json.dumps(measure(args.folder, args.mode)))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    results: dict[int, dict[str, dict[str, Any]]] = {}
    sizes_gz = {}
    for n_rows in (int(value) for value in args.rows.split(",")):
        logger.info("Writing a gzipped MERSCOPE file of %d rows.", n_rows)
        folder = gzipped_folder(args.crop_path, args.cache_dir, n_rows)
        sizes_gz[n_rows] = (folder / "detected_transcripts.csv.gz").stat().st_size
        results[n_rows] = {}
        for mode in MODES:
            logger.info("Reading %d rows: %s.", n_rows, mode)
            results[n_rows][mode] = run_worker_process(__file__, ["--folder", str(folder), "--mode", mode])

    text = report(results, sizes_gz)
    if args.output is not None:
        replace_section(args.output, "gzip_read", text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
