"""Measure training steps per second and prediction throughput on one device, in a few minutes.

Meant for a GPU when one is available (``--device cuda``), and runs on a CPU as well. The synthetic
tissue is generated in memory first and is not timed.

Usage::

    python benchmarks/device_throughput.py --device cuda --cells 5000 --steps 300
    python benchmarks/device_throughput.py --device cpu --cells 300 --steps 30

It prints a markdown table with the training steps per second (from segger's own "Trained for"
log line, so graph building for the training tiles is not counted) and the transcripts per second
of ``segger_predict``, graph building included.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch
from run_segmentation import machine_facts, markdown_table

import segger as sg


class _TrainingTime(logging.Handler):
    """Keep the seconds reported by segger's "Trained for %d epoch(s) in %.1f s." message."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("Trained for"):
            self.seconds = float(record.args[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure training and prediction throughput on one device.")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1' or 'auto' (default: auto)")
    parser.add_argument(
        "--cells", type=int, default=2000, help="cells of the synthetic tissue (default: 2000)"
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps to time (default: 200)")
    parser.add_argument(
        "--random-state", type=int, default=0, help="seed of the tissue and model (default: 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    sdata = sg.datasets.toy(n_cells=args.cells, random_state=args.random_state)
    n_transcripts = len(sdata.points["transcripts"])

    timer = _TrainingTime()
    segger_logger = logging.getLogger("segger")
    segger_logger.addHandler(timer)
    segger_logger.setLevel(logging.INFO)
    model = sg.tl.segger_fit(
        sdata,
        device=args.device,
        max_epochs=10_000,
        max_steps=args.steps,
        random_state=args.random_state,
        progress=False,
    )
    steps = int(model.history["step"].iloc[-1])

    start = time.perf_counter()
    sg.tl.segger_predict(sdata, model, device=args.device, key_added="timed", progress=False)
    predict_seconds = time.perf_counter() - start

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    rows = [
        ["device", f"{device} ({name})"],
        ["transcripts", f"{n_transcripts:,}"],
        ["training steps", f"{steps}"],
        ["training steps per second", f"{steps / timer.seconds:.2f}" if timer.seconds else "n/a"],
        ["prediction (s)", f"{predict_seconds:.1f}"],
        ["prediction transcripts per second", f"{n_transcripts / predict_seconds:,.0f}"],
    ]
    facts = "\n".join(f"- {key}: {value}" for key, value in machine_facts().items())
    sys.stdout.write(markdown_table(["", "value"], rows) + "\n\n" + facts + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
