"""Measure the memory and time of ``sg.io.cosmx`` on a large CosMx transcripts file.

The real CosMx crop in ``../shared/data/cosmx_lung9_sample1`` (23,844 transcripts, one FOV) is
repeated side by side until ``tx_file.csv`` has the requested number of rows. Each copy gets
its own FOV number, so its cells are distinct, and the folder links the crop's label mask and
FOV positions, so the mask check runs. For each size and mode, a fresh process calls
``sg.io.cosmx`` on the folder, which reads the file in blocks of about 16 MB and builds the
nucleus polygons. The modes are without ``scratch_dir`` and with one, where the positions that
the mask check needs are kept. A thread samples ``RssAnon`` every 10 ms.

Usage::

    python benchmarks/cosmx_read_memory.py --rows 2000000,8000000 --output benchmarks/RESULTS.md
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

MODES = ("in memory", "scratch_dir")

CROP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cosmx_lung9_sample1"
GAP_PX = 500.0
FOV_STEP = 1000


def repeated_folder(crop: Path, cache: Path, n_rows: int) -> Path:
    """Return a CosMx folder whose ``tx_file.csv`` has ``n_rows`` rows, the crop's repeated with new FOVs."""
    import pandas as pd

    folder = cache / f"cosmx_{n_rows}"
    file = folder / "tx_file.csv"
    if file.is_file():
        return folder

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("CellLabels", "fov_positions_file.csv"):
        link = folder / name
        if not link.exists():
            link.symlink_to(crop / name)
    rows = pd.read_csv(crop / "tx_file.csv")
    step = rows["x_global_px"].max() - rows["x_global_px"].min() + GAP_PX
    write_repeated_rows(
        rows,
        file,
        n_rows,
        lambda part, copy: part.assign(
            x_global_px=part["x_global_px"] + copy * step, fov=part["fov"] + copy * FOV_STEP
        ),
    )
    return folder


def measure(folder: Path, mode: str) -> dict[str, Any]:
    """Read ``folder`` with ``sg.io.cosmx`` in ``mode`` and return the time, the memory added and what was read."""
    import gc

    import segger as sg
    from segger._memory import release_freed_memory

    gc.collect()
    release_freed_memory()
    memory_before = read_status(("RssAnon",))["RssAnon"]
    with tempfile.TemporaryDirectory(prefix="segger-cosmx-") as scratch, StatusSampler() as sampler:
        start = time.perf_counter()
        sdata = sg.io.cosmx(folder, scratch_dir=scratch if mode == MODES[1] else None)
        seconds = time.perf_counter() - start
    gc.collect()
    release_freed_memory()
    kept = read_status(("RssAnon",))["RssAnon"] - memory_before
    return {
        "seconds": seconds,
        "added": max(sampler.peaks["RssAnon"], memory_before) - memory_before,
        "kept": kept,
        "n_nuclei": len(sdata.shapes["nucleus_boundaries"]),
        "n_partitions": sdata.points["transcripts"].npartitions,
    }


def report(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    """Return the markdown section: one column per size, the time and memory of each mode."""
    sizes = list(results)
    first = {n: results[n][MODES[0]] for n in sizes}
    rows = [
        ["transcripts", *[f"{n:,}" for n in sizes]],
        ["partitions", *[str(first[n]["n_partitions"]) for n in sizes]],
        ["nuclei", *[f"{first[n]['n_nuclei']:,}" for n in sizes]],
    ]
    for mode in MODES:
        rows.append([f"{mode}: read (s)", *[f"{results[n][mode]['seconds']:.1f}" for n in sizes]])
        rows.append(
            [f"{mode}: peak memory added (GB)", *[f"{results[n][mode]['added'] / 1e9:.2f}" for n in sizes]]
        )
        rows.append(
            [f"{mode}: kept after the call (GB)", *[f"{results[n][mode]['kept'] / 1e9:.2f}" for n in sizes]]
        )
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv])
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    text = [
        "## Memory of reading a large CosMx transcripts file",
        f"Measured on {date} with\n\n```bash\n{command}\n```",
        markdown_table(["", *[f"{n:,} rows" for n in sizes]], rows),
        "Each cell is a fresh process that calls `sg.io.cosmx` on a folder whose `tx_file.csv` "
        "repeats the rows of the real lung crop side by side, each copy with its own FOV number, "
        "without `scratch_dir` or with one, where the positions of the mask check are kept. "
        "*Peak memory added* is the peak of `RssAnon` during the call, sampled every 10 ms, minus "
        "its value before; *kept* is what the returned object still holds after freed memory was "
        "returned to the system. GB means 10⁹ bytes.",
        "### Machine",
        facts,
    ]
    return "\n\n".join(text) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2000000,8000000", help="comma-separated numbers of rows")
    parser.add_argument("--output", type=Path, help="markdown file to write the report to")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the folders are kept")
    parser.add_argument("--crop-path", type=Path, default=CROP, help="the real CosMx crop to repeat")
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
    for n_rows in (int(value) for value in args.rows.split(",")):
        logger.info("Writing a CosMx file of %d rows.", n_rows)
        folder = repeated_folder(args.crop_path, args.cache_dir, n_rows)
        results[n_rows] = {}
        for mode in MODES:
            logger.info("Reading %d rows: %s.", n_rows, mode)
            results[n_rows][mode] = run_worker_process(__file__, ["--folder", str(folder), "--mode", mode])

    text = report(results)
    if args.output is not None:
        replace_section(args.output, "cosmx_read", text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
