"""Measure segger_fit's memory with the per-transcript arrays in memory and in a scratch folder.

For each synthetic dataset of ``run_segmentation.py`` (the same cached zarr stores), a fresh
Python process runs ``sg.tl.segger_fit`` twice over: once with ``scratch_dir=None`` and once with
a scratch folder. A thread samples ``/proc/self/status`` every 10 ms during the fit and keeps the
peaks of ``RssAnon`` (memory the process itself holds: heap, torch and numpy buffers) and
``RssFile`` (mapped file pages, which the kernel can drop and read again). ``VmHWM`` is their
combined peak, the figure of ``run_segmentation.py``.

With ``--memory-limit-gb``, every fit also runs in a cgroup with that memory limit, which counts
the process's anonymous memory and its file cache but reclaims cache first, to show whether a
run fits on a machine with that much memory. It needs a writable cgroup file system (Linux,
usually as root). Linux only.

Usage::

    python benchmarks/scratch_memory.py --datasets 1m,5m --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _markdown import replace_section
from run_segmentation import (
    DEFAULT_CACHE,
    SYNTHETIC_AREA,
    machine_facts,
    markdown_table,
    synthetic_stores,
)

logger = logging.getLogger("segger_benchmark")

MODES = ("memory", "scratch")
DEFAULT_MAX_STEPS = 50
SAMPLE_SECONDS = 0.01
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CGROUP_V2 = Path("/sys/fs/cgroup")


class StatusSampler:
    """Sample the peaks of ``RssAnon`` and ``RssFile`` of this process in a background thread."""

    def __init__(self) -> None:
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, value in read_status(tuple(self.peaks)).items():
                self.peaks[name] = max(self.peaks[name], value)
            time.sleep(SAMPLE_SECONDS)


def read_status(names: tuple[str, ...]) -> dict[str, int]:
    """Return the named fields of ``/proc/self/status`` in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in names:
            values[name] = int(rest.split()[0]) * 1024
    return values


def measure(store: Path, mode: str, max_steps: int) -> dict[str, Any]:
    """Run segger_fit on ``store`` in this process and return its time, memory peaks and label hash."""
    import spatialdata

    import segger as sg

    logging.getLogger("segger").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    sdata = spatialdata.read_zarr(store)

    with tempfile.TemporaryDirectory(prefix="segger-scratch-benchmark-") as scratch:
        start = time.perf_counter()
        with StatusSampler() as sampler:
            sg.tl.segger_fit(
                sdata,
                progress=False,
                max_steps=max_steps,
                scratch_dir=scratch if mode == "scratch" else None,
            )
        seconds = time.perf_counter() - start
        files_left = len(os.listdir(scratch))

    labels = sdata.points["transcripts"]["segger_cell_id"].compute()
    digest = hashlib.sha256("\n".join(labels.astype(str)).encode()).hexdigest()
    return {
        "mode": mode,
        "n_transcripts": len(labels),
        "seconds": seconds,
        "peak_anon_bytes": sampler.peaks["RssAnon"],
        "peak_file_bytes": sampler.peaks["RssFile"],
        "vm_hwm_bytes": read_status(("VmHWM",))["VmHWM"],
        "labels_sha256": digest,
        "scratch_files_left": files_left,
    }


@contextmanager
def memory_cgroup(limit_bytes: int | None) -> Iterator[Path | None]:
    """Yield the folder of a new cgroup limited to ``limit_bytes``, removed afterwards; None without a limit."""
    if limit_bytes is None:
        yield None
        return

    name = f"segger-benchmark-{os.getpid()}"
    if (CGROUP_V1 / "memory.limit_in_bytes").exists():
        folder, limit_file = CGROUP_V1 / name, "memory.limit_in_bytes"
    else:
        folder, limit_file = CGROUP_V2 / name, "memory.max"
    folder.mkdir()
    try:
        (folder / limit_file).write_text(str(limit_bytes))
        yield folder
    finally:
        folder.rmdir()


def run_child(store: Path, mode: str, max_steps: int, limit_bytes: int | None) -> dict[str, Any]:
    """Measure one store and mode in a fresh process, inside the memory limit when given."""
    with tempfile.TemporaryDirectory() as folder, memory_cgroup(limit_bytes) as cgroup:
        result_file = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--worker", "--store", str(store), "--mode", mode]
        command += ["--max-steps", str(max_steps), "--result", str(result_file)]
        if cgroup is not None:
            command += ["--cgroup", str(cgroup)]
        status = subprocess.run(command, check=False).returncode
        if status != 0 or not result_file.exists():
            logger.error("segger_fit on %s with %s arrays exited with status %d.", store.name, mode, status)
            error = (
                "killed (SIGKILL, out of memory in the cgroup)" if status == -9 else f"exit status {status}"
            )
            return {"mode": mode, "error": error}
        return json.loads(result_file.read_text())


def report(results: dict[str, list[dict[str, Any]]], limit_gb: float | None, max_steps: int) -> str:
    """Return the markdown section with one column per dataset and mode."""
    header = [""]
    columns = []
    for dataset, runs in results.items():
        for run in runs:
            header.append(f"{dataset}, {run['mode']}")
            columns.append(run)

    def row(label: str, value: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label, *["–" if "error" in run else value(run) for run in columns]]

    rows = [
        [
            "transcripts",
            *[run["error"] if "error" in run else f"{run['n_transcripts']:,}" for run in columns],
        ],
        row("segger_fit (s)", lambda run: f"{run['seconds']:.1f}"),
        row("**peak RssAnon (GB)**", lambda run: f"{run['peak_anon_bytes'] / 1e9:.2f}"),
        row("peak RssFile (GB)", lambda run: f"{run['peak_file_bytes'] / 1e9:.2f}"),
        row("VmHWM (GB)", lambda run: f"{run['vm_hwm_bytes'] / 1e9:.2f}"),
        row("labels equal to the in-memory run's", lambda run: str(same_labels(results, run))),
        row("files left in the scratch folder", lambda run: str(run["scratch_files_left"])),
    ]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv])
    limit = f"a cgroup memory limit of {limit_gb:g} GB" if limit_gb is not None else "no memory limit"
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    text = [
        "## Memory with and without scratch_dir",
        f"Measured on {date}, with {limit} and `max_steps={max_steps}`, with\n\n```bash\n{command}\n```",
        markdown_table(header, rows),
        "Each column is a fresh process that opens the cached zarr store and runs `sg.tl.segger_fit`. "
        "Peaks are sampled every 10 ms from `/proc/self/status` during the fit. *RssAnon* is memory "
        "the process holds itself; *RssFile* counts mapped file pages, including the memory-mapped "
        "arrays of the scratch folder and the libraries, which the kernel can drop and read again. "
        "*VmHWM* is the peak of their sum, the figure of the segger_fit benchmark above. GB means "
        "10⁹ bytes.",
        "### Machine",
        facts,
    ]
    return "\n\n".join(text) + "\n"


def same_labels(results: dict[str, list[dict[str, Any]]], run: dict[str, Any]) -> bool | str:
    """Return whether ``run`` wrote the labels of the in-memory run of its dataset."""
    for runs in results.values():
        if run in runs:
            reference = next((other for other in runs if other["mode"] == "memory"), None)
            if reference is run:
                return "(reference)"
            if reference is None or "error" in reference:
                return "–"
            return reference["labels_sha256"] == run["labels_sha256"]
    return "–"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        default="1m,5m",
        help=f"comma-separated synthetic datasets, from {', '.join(SYNTHETIC_AREA)} (default: 1m,5m)",
    )
    parser.add_argument("--output", type=Path, help="markdown file to write the section into")

    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"folder of the synthetic zarr stores (default: {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        help=f"training steps of each fit, few to reach prediction soon (default: {DEFAULT_MAX_STEPS})",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        help="run every fit in a cgroup limited to this many GB (10⁹ bytes); needs a writable cgroup",
    )

    # Internal: the parent starts itself with these to measure one store and mode.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cgroup", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.worker:
        if args.cgroup is not None:
            # Joined before segger is imported, so that all of the fit's memory is counted.
            (args.cgroup / "cgroup.procs").write_text(str(os.getpid()))
        args.result.write_text(json.dumps(measure(args.store, args.mode, args.max_steps), indent=2))
        return 0

    datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = sorted(set(datasets) - set(SYNTHETIC_AREA))
    if unknown:
        msg = f"unknown dataset(s) {unknown}; choose from {', '.join(SYNTHETIC_AREA)}"
        raise SystemExit(msg)
    stores, _ = synthetic_stores(args.cache_dir, random_state=0, regenerate=False)
    limit = None if args.memory_limit_gb is None else int(args.memory_limit_gb * 1e9)

    results = {}
    for dataset in datasets:
        results[dataset] = []
        for mode in MODES:
            logger.info("Measuring %s with %s arrays.", dataset, mode)
            results[dataset].append(run_child(stores[dataset], mode, args.max_steps, limit))

    text = report(results, args.memory_limit_gb, args.max_steps)
    if args.output is not None:
        section = "scratch_memory" if limit is None else "scratch_memory_limited"
        replace_section(args.output, section, text)
    sys.stdout.write(text)
    return 1 if any("error" in run for runs in results.values() for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
