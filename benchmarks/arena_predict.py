"""Measure ``segger_predict``'s peak memory with glibc's default malloc arenas and with one shared arena.

A model is trained briefly on the 5m store of ``run_segmentation.py`` (the same cached zarr
stores) and saved. Then fresh processes apply it with ``sg.tl.segger_predict``, alternating
between glibc's default, where each tile thread may get an arena of its own, and the
environment variable ``MALLOC_ARENA_MAX=1``, where all threads allocate from the main arena.
Each reports its time and ``VmHWM``. Linux with glibc only.

Usage::

    python benchmarks/arena_predict.py --repeats 3 --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _markdown import replace_section
from run_segmentation import DEFAULT_CACHE, machine_facts, markdown_table, synthetic_stores

logger = logging.getLogger("segger_benchmark")

MODES = {"glibc default": {}, "MALLOC_ARENA_MAX=1": {"MALLOC_ARENA_MAX": "1"}}


def train(store: Path, model_file: Path) -> None:
    """Train a small model on ``store`` and save it; prediction, not the model, is measured."""
    import spatialdata

    import segger as sg

    sdata = spatialdata.read_zarr(store)
    model = sg.tl.segger_fit(sdata, progress=False, max_steps=20, max_train_tiles=8)
    model.save(model_file)


def predict(store: Path, model_file: Path) -> dict[str, Any]:
    """Apply the saved model to ``store`` and return the time and this process's peak memory."""
    import spatialdata

    import segger as sg

    sdata = spatialdata.read_zarr(store)
    model = sg.models.Segger.load(model_file)
    start = time.perf_counter()
    sg.tl.segger_predict(sdata, model, progress=False)
    seconds = time.perf_counter() - start

    peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return {"n_transcripts": len(sdata.points["transcripts"]), "seconds": seconds, "vm_hwm_bytes": peak}


def run_worker(
    task: str, store: Path, model_file: Path, env: dict[str, str], script: str = __file__
) -> dict[str, Any]:
    """Run ``task`` of benchmark ``script`` in a fresh process with ``env`` added to the environment; return its result."""
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder) / "result.json"
        command = [sys.executable, script, "--worker", task, "--store", str(store)]
        command += ["--model", str(model_file), "--result", str(result_file)]
        subprocess.run(command, check=True, env={**os.environ, **env})
        return json.loads(result_file.read_text()) if result_file.exists() else {}


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    """Return the markdown section with one column per mode and one row per repeat and measure."""
    rows = [["transcripts", *[f"{runs[0]['n_transcripts']:,}" for runs in results.values()]]]
    n_repeats = len(next(iter(results.values())))
    for repeat in range(n_repeats):
        rows.append(
            [
                f"run {repeat + 1}: segger_predict (s)",
                *[f"{runs[repeat]['seconds']:.1f}" for runs in results.values()],
            ]
        )
        rows.append(
            [
                f"run {repeat + 1}: VmHWM (GB)",
                *[f"{runs[repeat]['vm_hwm_bytes'] / 1e9:.2f}" for runs in results.values()],
            ]
        )
    medians = [statistics.median(run["vm_hwm_bytes"] for run in runs) / 1e9 for runs in results.values()]
    rows.append(["**median VmHWM (GB)**", *[f"**{median:.2f}**" for median in medians]])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv])
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    text = [
        "## segger_predict memory with a shared malloc arena",
        f"Measured on {date} with\n\n```bash\n{command}\n```",
        markdown_table(["", *results], rows),
        "Each cell is a fresh process, and the modes alternate run by run. Each process opens the cached 5m zarr store, loads the same saved "
        "model and runs `sg.tl.segger_predict` on two tile threads. *VmHWM* is the process's peak "
        "resident memory from `/proc/self/status`. GB means 10⁹ bytes.",
        "### Machine",
        facts,
    ]
    return "\n\n".join(text) + "\n"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--output``, ``--cache-dir`` and the hidden arguments of a worker process to ``parser``."""
    parser.add_argument("--output", type=Path, help="markdown file to write the section into")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"folder of the synthetic zarr stores (default: {DEFAULT_CACHE})",
    )

    # Internal: the parent starts itself with these to train or to predict.
    parser.add_argument("--worker", choices=("train", "predict"), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)


def run_as_worker(args: argparse.Namespace, predict_store: Callable[[Path, Path], dict[str, Any]]) -> bool:
    """Run the worker task that ``args`` name, with ``predict_store`` for prediction; return whether there was one."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.worker == "train":
        train(args.store, args.model)
    elif args.worker == "predict":
        args.result.write_text(json.dumps(predict_store(args.store, args.model)))
    return args.worker is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode, alternating (default: 3)")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if run_as_worker(args, predict):
        return 0

    stores, _ = synthetic_stores(args.cache_dir, random_state=0, regenerate=False)
    with tempfile.TemporaryDirectory() as folder:
        model_file = Path(folder) / "model.pt"
        logger.info("Training a small model on %s.", stores["5m"])
        run_worker("train", stores["5m"], model_file, {})
        results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):
            for mode, env in MODES.items():
                logger.info("Run %d of %d: predicting with %s.", repeat + 1, args.repeats, mode)
                results[mode].append(run_worker("predict", stores["5m"], model_file, env))

    text = report(results)
    if args.output is not None:
        replace_section(args.output, "arena_predict", text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
